"""Hostile files made by hand, byte by byte: decompression bombs, images,
videos, audio and PDFs whose headers claim absurd sizes, and PDFs that
inflate or loop (the corpus in hashsvc_testing/hostile.py sends them)."""

from __future__ import annotations

import io
import random
import struct
import zlib

from PIL import Image

# ------------------------------------------------------------------ pictures


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(width: int, height: int | None = None, rows: int | None = None) -> bytes:
    """A small PNG that claims width x height 1-bit pixels (decodes to
    width*height*3 bytes as RGB); `rows` of real zero rows (all by default)."""
    height = height or width
    row = b"\x00" * (1 + (width + 7) // 8)
    comp = zlib.compressobj(9)
    rows = height if rows is None else rows
    idat = b"".join(comp.compress(row * 1000) for _ in range(rows // 1000))
    idat += comp.compress(row * (rows % 1000)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def gif_bomb(frames: int = 1) -> bytes:
    """A 65535 x 65535 screen and frames of the same size with a few bytes of data."""
    header = b"GIF89a" + struct.pack("<HHBBB", 65535, 65535, 0, 0, 0)
    frame = b"\x2c" + struct.pack("<HHHHB", 0, 0, 65535, 65535, 0) + b"\x02\x02\x44\x01\x00"
    return header + frame * frames + b"\x3b"


def webp_bomb(seed_webp: bytes) -> bytes:
    """A lossless WebP whose header claims 16383 x 16383 (1 GB as RGBA)."""
    img = Image.open(io.BytesIO(seed_webp)).convert("RGB").resize((64, 64))
    buf = io.BytesIO()
    img.save(buf, "WEBP", lossless=True)
    data = bytearray(buf.getvalue())
    at = data.find(b"VP8L") + 8  # chunk id, size; then 0x2f and 14+14 bits of size
    assert data[at] == 0x2F
    bits = int.from_bytes(data[at + 1 : at + 5], "little")
    bits = (bits & ~((1 << 28) - 1)) | 16382 | (16382 << 14)
    data[at + 1 : at + 5] = bits.to_bytes(4, "little")
    return bytes(data)


def jpeg_claiming(seed_jpeg: bytes, width: int, height: int) -> bytes:
    """A JPEG whose frame header (SOF) claims width x height."""
    data = bytearray(seed_jpeg)
    at = next(data.find(m) for m in (b"\xff\xc0", b"\xff\xc2") if data.find(m) > 0)
    data[at + 5 : at + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def bmp_claiming(width: int, height: int) -> bytes:
    """A 54-byte BMP header claiming width x height 24-bit pixels, and 1 KB."""
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 54 + 1024, 0, 0, 54) + info + b"\x00" * 1024


def tiff_claiming(width: int, height: int) -> bytes:
    """A baseline TIFF claiming width x height 8-bit grey, strip of 1 KB."""
    tags = [(256, 4, width), (257, 4, height), (258, 3, 8), (259, 3, 1), (262, 3, 1),
            (273, 4, 8 + 2 + 12 * 8 + 4), (278, 4, height), (279, 4, 1024)]  # fmt: skip
    ifd = struct.pack("<H", len(tags))
    ifd += b"".join(struct.pack("<HHII", tag, kind, 1, value) for tag, kind, value in tags)
    return b"II*\x00" + struct.pack("<I", 8) + ifd + b"\x00" * 4 + b"\x00" * 1024


# ------------------------------------------------------------------ video


class _Bits:
    """An H.264 RBSP writer (Exp-Golomb codes, emulation prevention)."""

    def __init__(self) -> None:
        self.bits: list[int] = []

    def u(self, n: int, value: int) -> _Bits:
        self.bits += [(value >> (n - 1 - i)) & 1 for i in range(n)]
        return self

    def ue(self, value: int) -> _Bits:
        n = (value + 1).bit_length()
        return self.u(n - 1, 0).u(n, value + 1)

    def rbsp(self) -> bytes:
        bits = [*self.bits, 1] + [0] * (-(len(self.bits) + 1) % 8)
        raw = bytes(int("".join(map(str, bits[i : i + 8])), 2) for i in range(0, len(bits), 8))
        out, zeros = bytearray(), 0
        for byte in raw:
            if zeros >= 2 and byte <= 3:
                out.append(3)
                zeros = 0
            out.append(byte)
            zeros = zeros + 1 if byte == 0 else 0
        return bytes(out)


def h264_claiming(width: int, height: int) -> tuple[bytes, bytes, list[bytes]]:
    """(SPS, PPS, IDR slices) of a baseline H.264 stream claiming width x height."""
    sps = _Bits().u(8, 66).u(8, 0).u(8, 51).ue(0).ue(0).ue(2).ue(1).u(1, 0)
    sps.ue(width // 16 - 1).ue(height // 16 - 1).u(1, 1).u(1, 1).u(1, 0).u(1, 0)
    pps = _Bits().ue(0).ue(0).u(1, 0).u(1, 0).ue(0).ue(0).ue(0).u(1, 0).u(2, 0)
    pps.ue(0).ue(0).ue(0).u(1, 1).u(1, 0).u(1, 0)  # qp, qs, chroma offsets as se(0)
    slices = []
    for n in range(3):
        s = _Bits().ue(0).ue(7).ue(0).u(4, n).ue(n).u(1, 0).u(1, 0).ue(0).ue(1)
        s.u(256, int.from_bytes(random.Random(n).randbytes(32), "big"))
        slices.append(b"\x65" + s.rbsp())
    return b"\x67" + sps.rbsp(), b"\x68" + pps.rbsp(), slices


def _ebml(element_id: int, payload: bytes) -> bytes:
    head = element_id.to_bytes((element_id.bit_length() + 7) // 8, "big")
    return head + b"\x01" + len(payload).to_bytes(7, "big")


def _el(element_id: int, payload: bytes | int | str | float) -> bytes:
    if isinstance(payload, str):
        payload = payload.encode()
    elif isinstance(payload, float):
        payload = struct.pack(">d", payload)
    elif isinstance(payload, int):
        payload = payload.to_bytes(8, "big")
    return _ebml(element_id, payload) + payload


def mkv(codec: str, private: bytes, width: int, height: int,
        frames: list[tuple[int, bytes]], duration_ms: float = 0.0) -> bytes:  # fmt: skip
    """A Matroska file written by hand (FFmpeg's muxer refuses what we need):
    one video track with the claimed size, frames as (milliseconds, data)."""
    header = _el(0x1A45DFA3, b"".join([_el(0x4286, 1), _el(0x42F7, 1), _el(0x42F2, 4),
                                        _el(0x42F3, 8), _el(0x4282, "matroska"),
                                        _el(0x4287, 4), _el(0x4285, 2)]))  # fmt: skip
    info = [_el(0x2AD7B1, 1_000_000), _el(0x4D80, "hostile"), _el(0x5741, "hostile")]
    if duration_ms:
        info.append(_el(0x4489, float(duration_ms)))
    video = _el(0xE0, _el(0xB0, width) + _el(0xBA, height))
    track = _el(0xAE, b"".join([_el(0xD7, 1), _el(0x73C5, 1), _el(0x83, 1), _el(0x86, codec),
                                _el(0x63A2, private) if private else b"", video]))  # fmt: skip
    body = _el(0x1549A966, b"".join(info)) + _el(0x1654AE6B, track)
    for ms, data in frames:
        block = b"\x81\x00\x00\x80" + data  # track 1, relative time 0, keyframe
        body += _el(0x1F43B675, _el(0xE7, ms) + _el(0xA3, block))
    segment = b"\x18\x53\x80\x67\x01\xff\xff\xff\xff\xff\xff\xff"  # size unknown
    return header + segment + body


def h264_mkv(width: int, height: int, duration_ms: float = 0.0) -> bytes:
    sps, pps, slices = h264_claiming(width, height)
    avcc = bytes([1, 66, 0, 51, 0xFF, 0xE1]) + struct.pack(">H", len(sps)) + sps
    avcc += b"\x01" + struct.pack(">H", len(pps)) + pps
    frames = [(40 * n, struct.pack(">I", len(s)) + s) for n, s in enumerate(slices)]
    return mkv("V_MPEG4/ISO/AVC", avcc, width, height, frames, duration_ms)


def mjpeg_mkv(seed_jpeg: bytes, width: int, height: int, count: int = 3) -> bytes:
    """Motion JPEG whose container says 160x120 and whose frames claim width x height."""
    small = Image.open(io.BytesIO(seed_jpeg)).convert("RGB").resize((160, 120))
    buf = io.BytesIO()
    small.save(buf, "JPEG")
    frame = jpeg_claiming(buf.getvalue(), width, height)
    return mkv("V_MJPEG", b"", 160, 120, [(40 * n, frame) for n in range(count)])


# ------------------------------------------------------------------ audio


def wav_claiming(rate: int, channels: int, bits: int = 16, data_bytes: int = 4096,
                 claimed_bytes: int | None = None, fmt_tag: int = 1) -> bytes:  # fmt: skip
    block = max(1, channels * bits // 8) & 0xFFFF
    fmt = struct.pack("<HHIIHH", fmt_tag, channels & 0xFFFF, rate & 0xFFFFFFFF,
                      (rate * block) & 0xFFFFFFFF, block, bits)  # fmt: skip
    claimed = data_bytes if claimed_bytes is None else claimed_bytes
    data = random.Random(rate ^ channels).randbytes(data_bytes)
    body = (
        b"WAVE"
        + b"fmt "
        + struct.pack("<I", 16)
        + fmt
        + b"data"
        + struct.pack("<I", claimed)
        + data
    )
    return b"RIFF" + struct.pack("<I", min(len(body), 0xFFFFFFFF)) + body


# ------------------------------------------------------------------ PDF


def pdf_inflating_to(megabytes: int) -> bytes:
    """A page whose content stream inflates to `megabytes` of no-op operators."""
    from hashsvc_testing.pdf_media import raw_pdf

    comp = zlib.compressobj(9)
    block = b"q Q " * (1 << 18)  # 1 MiB
    stream = b"".join(comp.compress(block) for _ in range(megabytes)) + comp.flush()
    return raw_pdf([
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Contents 4 0 R >>",
        b"<< /Length %d /Filter /FlateDecode >>\nstream\n%s\nendstream" % (len(stream), stream),
    ])  # fmt: skip


def pdf_image_claiming(width: int, height: int) -> bytes:
    """A page drawing one embedded image that claims width x height RGB pixels."""
    from hashsvc_testing.pdf_media import raw_pdf

    data = zlib.compress(b"\x00" * 65536, 9)
    content = b"q 500 0 0 500 50 50 cm /Im1 Do Q"
    return raw_pdf([
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Contents 4 0 R"
        b" /Resources << /XObject << /Im1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n%s\nendstream" % (len(content), content),
        b"<< /Type /XObject /Subtype /Image /Width %d /Height %d /ColorSpace /DeviceRGB"
        b" /BitsPerComponent 8 /Filter /FlateDecode /Length %d >>\nstream\n%s\nendstream"
        % (width, height, len(data), data),
    ])  # fmt: skip


def pdf_object_stream_cycle() -> bytes:
    """Objects that refer to each other in a ring, and a catalog inside the ring."""
    from hashsvc_testing.pdf_media import raw_pdf

    return raw_pdf([
        b"<< /Type /Catalog /Pages 2 0 R /Next 5 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 /Resources 5 0 R >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Contents 4 0 R /Resources 6 0 R >>",
        b"<< /Length 0 >>\nstream\n\nendstream",
        b"<< /Font 6 0 R /Loop 6 0 R >>",
        b"<< /XObject 5 0 R /Font 5 0 R /F1 6 0 R >>",
    ])  # fmt: skip
