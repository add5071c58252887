"""Which reader a file needs, from its first bytes. Filenames and extensions
are never trusted: uploads are often renamed, and attackers rename on purpose."""

from __future__ import annotations

IMAGE = "image"
PDF = "pdf"
# Audio/video containers: whether it is a video or audio is decided by the
# streams inside (an MP4 or WebM may hold either), once opened.
AV = "av"

_IMAGE_MAGIC = (
    b"\xff\xd8\xff",  # JPEG
    b"\x89PNG\r\n\x1a\n",
    b"BM",
    b"II*\x00",  # TIFF little-endian
    b"MM\x00*",  # TIFF big-endian
)
_AV_MAGIC = (
    b"\x1a\x45\xdf\xa3",  # Matroska / WebM
    b"OggS",
    b"fLaC",
    b"ID3",  # MP3 with an ID3 tag
    b"#!AMR",
    b"FLV",
    b"\x30\x26\xb2\x75",  # ASF / WMV / WMA
)


def sniff(head: bytes) -> str:
    """IMAGE, PDF, AV, or "" when no reader we have knows the format."""
    if head.startswith(_IMAGE_MAGIC):
        return IMAGE
    if head.startswith((b"GIF87a", b"GIF89a")):
        return IMAGE  # an animated GIF is turned into a video by the image reader's caller
    if head[:4] == b"RIFF":
        kind = head[8:12]
        if kind == b"WEBP":
            return IMAGE
        if kind in (b"AVI ", b"WAVE"):
            return AV
        return ""
    # A PDF header may follow some junk; readers accept it within the first KiB.
    if b"%PDF-" in head[:1024]:
        return PDF
    if head[4:8] == b"ftyp":  # ISO BMFF: MP4, MOV, M4A, 3GP
        return AV
    if head[4:8] in (b"moov", b"mdat", b"wide", b"free"):  # old QuickTime
        return AV
    if head.startswith(_AV_MAGIC):
        return AV
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0:
        return AV  # MPEG audio frame sync (MP3 without a tag, AAC ADTS)
    if head[:1] == b"\x47" and len(head) > 188 and head[188:189] == b"\x47":
        return AV  # MPEG transport stream
    if head.startswith(b"\x00\x00\x01\xba"):
        return AV  # MPEG program stream
    return ""
