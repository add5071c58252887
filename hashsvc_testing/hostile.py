"""The hostile-input corpus, made on the fly: what attackers upload to a service
that sits in front of every upload. Used by tests/test_hostile.py (every case
once, through a real server), tests/test_limits.py and bench/fuzz.py (random
cases and fresh mutations, thousands of times, against `hashsvc serve`).

Every case is a gRPC call (`rpc`, a request or a stream of messages) with the
statuses it may end in. It covers, for every format we read (JPEG, PNG, GIF,
WebP, BMP, TIFF; MP4, MOV, WebM, MKV, AVI, animated GIF; MP3, Ogg, FLAC, WAV;
PDF): truncated and bit-flipped files; decompression bombs (pictures claiming
gigapixels, a PDF stream inflating to hundreds of MB); PDFs with cyclic or very
deep object graphs, 10,000 pages, absurd page sizes, slow text; videos whose
H.264 or JPEG headers claim 30000x30000, 1000 fps, hours of duration; audio
with absurd sample rates and channel counts, an hour of silence; wrong
extensions and polyglots; empty, 1-byte and magic-only files; oversized
messages and streamed uploads; malformed upload streams, hashes, names and
labels. Media is small on disk: seeds are 1-3 s long; `seeds` caches them in
a directory (a pytest session's, or the fuzz run's).
"""

from __future__ import annotations

import io
import random
import struct
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from hashsvc.v1 import hashsvc_pb2 as pb
from hashsvc_testing import vectors
from hashsvc_testing.hostile_files import (  # noqa: F401 - hostile.png_bomb etc.
    bmp_claiming,
    gif_bomb,
    h264_claiming,
    h264_mkv,
    jpeg_claiming,
    mjpeg_mkv,
    mkv,
    pdf_image_claiming,
    pdf_inflating_to,
    pdf_object_stream_cycle,
    png_bomb,
    tiff_claiming,
    wav_claiming,
    webp_bomb,
)

PHOTO = vectors.VECTORS / "pdqhash-python/images/image3.jpg"  # read in seeds()
CHUNK = 256 * 1024

# Statuses a hostile call may end in: a result, or a typed error.
TYPED = frozenset(
    {"OK", "INVALID_ARGUMENT", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED", "UNAVAILABLE"}
)
REFUSED = frozenset({"INVALID_ARGUMENT"})
TOO_BIG = frozenset({"RESOURCE_EXHAUSTED"})
# A bomb is refused for its size, or (when the decoder refuses it first) as corrupt.
BOMB = frozenset({"RESOURCE_EXHAUSTED", "INVALID_ARGUMENT"})


@dataclass(frozen=True)
class Case:
    name: str  # "family:format", e.g. "truncated:mp4"
    rpc: str  # Match, MatchUpload, AddEntry, AddEntryUpload
    build: Callable[[], object]  # the request, or an iterator of messages for uploads
    expect: frozenset[str] = TYPED
    role: str = "matcher"  # AddEntry* need "operator"

    @property
    def family(self) -> str:
        return self.name.split(":")[0]


# ------------------------------------------------------------------ requests


def _chunks(data: bytes) -> Iterator[bytes]:
    for start in range(0, len(data), CHUNK):
        yield data[start : start + CHUNK]


def match(name: str, data: bytes, expect=TYPED, filename: str = "") -> Case:
    return Case(
        name,
        "Match",
        lambda: pb.MatchRequest(media=pb.Media(content=data, filename=filename)),
        expect,
    )


def match_upload(name: str, data: bytes, expect=TYPED) -> Case:
    def build():
        yield pb.MatchUploadRequest(header=pb.MatchRequest(client_ref=name))
        for chunk in _chunks(data):
            yield pb.MatchUploadRequest(chunk=chunk)

    return Case(name, "MatchUpload", build, expect)


def upload_of_zeros(name: str, total: int) -> Case:
    """A stream of `total` bytes, never held whole by anyone."""

    def build():
        yield pb.MatchUploadRequest(header=pb.MatchRequest())
        yield pb.MatchUploadRequest(chunk=b"\x1a\x45\xdf\xa3" + b"\x00" * (CHUNK - 4))
        zeros = b"\x00" * CHUNK
        for _ in range(total // CHUNK):
            yield pb.MatchUploadRequest(chunk=zeros)

    return Case(name, "MatchUpload", build, TOO_BIG)


def signal(name: str, signal_type: str, value: str) -> Case:
    request = pb.MatchRequest(signal=pb.SignalValue(signal_type=signal_type, value=value))
    return Case(name, "Match", lambda: request, REFUSED)


def add_entry(case_name: str, expect=REFUSED, **fields) -> Case:
    fields.setdefault("set", "hostile")
    fields.setdefault("name", "x")
    fields.setdefault("signal", pb.SignalValue(signal_type="md5", value="ab" * 16))
    request = pb.AddEntryRequest(**fields)
    return Case(case_name, "AddEntry", lambda: request, expect, role="operator")


def stream(name: str, rpc: str, messages: list) -> Case:
    role = "operator" if rpc == "AddEntryUpload" else "matcher"
    return Case(name, rpc, lambda: iter(messages), REFUSED, role=role)


# ------------------------------------------------------------------ seeds


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", *args], check=True, timeout=120)


_VIDEO_IN = [
    "-f",
    "lavfi",
    "-i",
    "testsrc2=s=160x120:r=10:d=2",
    "-f",
    "lavfi",
    "-i",
    "sine=f=330:d=2",
]
_H264 = ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p"]
# An 8 s tune of changing notes over a pulsing bass (chromaprint needs sound
# that changes: held tones do not count).
_TUNE = (
    "0.4*sin(2*PI*(300+40*floor(5*t)*mod(floor(5*t)\\,7))*t)"
    "+0.2*sin(2*PI*(90+60*mod(floor(3*t)\\,5))*t)*gt(sin(9*t)\\,0)"
)
_AUDIO_IN = ["-f", "lavfi", "-i", f"aevalsrc={_TUNE}:s=22050:d=8"]
SEED_COMMANDS: dict[str, list[str]] = {
    "mp4": [*_VIDEO_IN, *_H264, "-c:a", "aac", "-movflags", "+faststart"],
    "mov": [*_VIDEO_IN, *_H264, "-c:a", "aac"],
    "mkv": [*_VIDEO_IN, *_H264, "-c:a", "libvorbis"],
    "webm": [*_VIDEO_IN, "-c:v", "libvpx", "-deadline", "realtime", "-c:a", "libvorbis"],
    "avi": [*_VIDEO_IN, "-c:v", "mpeg4", "-c:a", "libmp3lame"],
    "gif": ["-f", "lavfi", "-i", "testsrc2=s=120x90:r=5:d=2"],
    "mp3": [*_AUDIO_IN, "-c:a", "libmp3lame"],
    "ogg": [*_AUDIO_IN, "-c:a", "libvorbis"],
    "flac": [*_AUDIO_IN, "-c:a", "flac"],
    "wav": [*_AUDIO_IN, "-c:a", "pcm_s16le"],
    # 1000 frames a second of a 16x16 picture for a minute: 60,000 frames in 0.9 MB
    "1000fps.mkv": ["-f", "lavfi", "-i", "color=gray:s=16x16:r=1000:d=60", *_H264, "-g", "100000"],
    # five frames an hour apart: a 4-hour timeline with nothing in it
    "hours_apart.mkv": [
        "-f",
        "lavfi",
        "-i",
        "testsrc2=s=64x48:r=1:d=5",
        "-vf",
        "setpts=N*3600/TB",
        *_H264,
        "-fps_mode",
        "passthrough",
    ],  # fmt: skip
    # an hour of silence: 0.7 MB
    "silent_hour.flac": [
        "-f",
        "lavfi",
        "-i",
        "anullsrc=r=8000:cl=mono",
        "-t",
        "3600",
        "-c:a",
        "flac",
    ],  # fmt: skip
}


def seeds(cache_dir: Path) -> dict[str, bytes]:
    """Small valid files of every format (key: format), made once per cache_dir."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    out: dict[str, bytes] = {}
    vectors.require()
    photo = Image.open(PHOTO).convert("RGB")
    photo.thumbnail((320, 320))
    for fmt in ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF"):
        buf = io.BytesIO()
        photo.save(buf, fmt)
        out[fmt.lower()] = buf.getvalue()
    for name, args in SEED_COMMANDS.items():
        path = cache_dir / (name if "." in name else f"seed.{name}")
        if not path.exists():
            ffmpeg(*args, str(path) + ".part." + path.suffix[1:])
            Path(str(path) + ".part." + path.suffix[1:]).rename(path)
        out[name] = path.read_bytes()
    pdf_path = cache_dir / "seed.pdf"
    if not pdf_path.exists():
        from hashsvc_testing import pdf_media

        pdf_path.write_bytes(pdf_media.typeset(pdf_media.publication(5, "en", paragraphs=8)))
    out["pdf"] = pdf_path.read_bytes()
    return out


MEDIA_FORMATS = (
    "jpeg",
    "png",
    "gif",
    "webp",
    "bmp",
    "tiff",
    "mp4",
    "mov",
    "mkv",
    "webm",
    "avi",
    "gif_animated",
    "mp3",
    "ogg",
    "flac",
    "wav",
    "pdf",
)


def seed_of(seeds_: dict[str, bytes], fmt: str) -> bytes:
    return seeds_["gif"] if fmt == "gif_animated" else seeds_[fmt]


# ------------------------------------------------------------------ mutations


def truncated(data: bytes, share: float) -> bytes:
    return data[: max(1, int(len(data) * share))]


def bit_flipped(data: bytes, rng: random.Random, flips: int) -> bytes:
    buf = bytearray(data)
    for _ in range(flips):
        buf[rng.randrange(len(buf))] ^= 1 << rng.randrange(8)
    return bytes(buf)


def mutate(rng: random.Random, data: bytes) -> tuple[str, bytes]:
    """(family, bytes): a fresh random truncation, bit-flip or splice."""
    family = rng.choice(["truncated", "bitflip", "bitflip", "zeroed", "spliced"])
    if family == "truncated":
        return family, truncated(data, rng.random())
    if family == "bitflip":
        return family, bit_flipped(data, rng, rng.choice([1, 4, 40, 400]))
    start = rng.randrange(len(data))
    end = min(len(data), start + rng.randrange(1, 4096))
    if family == "zeroed":
        return family, data[:start] + b"\x00" * (end - start) + data[end:]
    return family, data[:start] + rng.randbytes(end - start) + data[start:]


# ------------------------------------------------------------------ the corpus


MAGIC = {
    "jpeg": b"\xff\xd8\xff", "png": b"\x89PNG\r\n\x1a\n", "gif": b"GIF89a",
    "webp": b"RIFF\x10\x00\x00\x00WEBPVP8 ", "bmp": b"BM", "tiff": b"II*\x00",
    "mp4": b"\x00\x00\x00\x18ftypmp42", "mkv": b"\x1a\x45\xdf\xa3",
    "avi": b"RIFF\x10\x00\x00\x00AVI ", "wav": b"RIFF\x10\x00\x00\x00WAVE", "ogg": b"OggS",
    "flac": b"fLaC",
    "mp3": b"ID3", "mpeg_audio": b"\xff\xfb", "ts": b"\x47", "pdf": b"%PDF-1.7\n",
}  # fmt: skip


def corpus(
    cache_dir: Path, max_message_bytes: int, max_upload_bytes: int, streamed_every: int = 3
) -> list[Case]:
    """Every hostile case once, deterministic. Media cases go as Match, and
    every `streamed_every`-th as a streamed MatchUpload too."""
    s = seeds(cache_dir)
    rng = random.Random(8)
    media: list[tuple[str, bytes, frozenset[str]]] = []

    def add(name: str, data: bytes, expect=TYPED) -> None:
        media.append((name, data, expect))

    for fmt in MEDIA_FORMATS:
        data = seed_of(s, fmt)
        add(f"valid:{fmt}", data, frozenset({"OK"}))
        for share in (0.02, 0.5, 0.97):
            add(f"truncated:{fmt}:{share:g}", truncated(data, share))
        for flips in (3, 300):
            add(f"bitflip:{fmt}:{flips}", bit_flipped(data, rng, flips))
        add(f"magic_only:{fmt}", MAGIC.get(fmt, data[:12]), REFUSED)
        add(f"magic_then_random:{fmt}", data[:64] + rng.randbytes(20_000))
    for name, magic in MAGIC.items():
        if name not in MEDIA_FORMATS:
            add(f"magic_only:{name}", magic + rng.randbytes(200))
    add("empty:", b"", REFUSED)
    for byte in (b"\x00", b"\xff", b"G", b"%", b"R"):
        add(f"one_byte:{byte.hex()}", byte, REFUSED)
    add("random:", rng.randbytes(50_000), REFUSED)
    add("text:", b"<html><script>alert(1)</script></html>\n" * 100, REFUSED)
    # wrong extensions: the name is informational, the bytes decide
    for fmt, filename in (
        ("pdf", "x.jpg"),
        ("mp4", "x.mp3"),
        ("wav", "x.pdf"),
        ("jpeg", "x.mp4"),
        ("webm", "x.avi"),
    ):
        add(f"wrong_ext:{fmt}->{filename}", seed_of(s, fmt), frozenset({"OK"}))
    # polyglots: one format's header in front of another's body
    add("polyglot:pdf_head+jpeg", b"%PDF-1.7\n" + s["jpeg"], REFUSED)
    add("polyglot:jpeg+zip", s["jpeg"] + b"PK\x03\x04" + rng.randbytes(2000), frozenset({"OK"}))
    add("polyglot:gif+pdf", s["gif"][:200] + s["pdf"])
    add("polyglot:wav_head+mp4", s["wav"][:44] + s["mp4"])

    # decompression bombs: tiny files that decode to gigabytes
    add("bomb:png_30000", png_bomb(30_000, rows=2_000), TOO_BIG)
    add("bomb:png_20000x20000", png_bomb(20_000, 20_000, rows=2_000), TOO_BIG)
    add("bomb:png_1x20000000", png_bomb(20_000_000, 1), TOO_BIG)
    add("bomb:png_7000_within_limits", png_bomb(7_000))  # 49 MP: decoded, 147 MB as RGB
    add("bomb:gif_screen", gif_bomb(), BOMB)
    add("bomb:gif_frames", gif_bomb(frames=200), BOMB)
    add("bomb:webp_16383", webp_bomb(s["webp"]), BOMB)
    add("bomb:jpeg_65500", jpeg_claiming(s["jpeg"], 65_500, 65_500), TOO_BIG)
    add("bomb:bmp_60000", bmp_claiming(60_000, 60_000), BOMB)
    add("bomb:bmp_negative", bmp_claiming(-5, -2_000_000_000), BOMB)
    add("bomb:tiff_60000", tiff_claiming(60_000, 60_000), TOO_BIG)

    # video: absurd dimensions, frame rates, durations
    add("video:h264_30000x30000", h264_mkv(30_000, 30_000), BOMB)
    add("video:h264_16000x16000", h264_mkv(16_000, 16_000), BOMB)
    add("video:h264_4000x4000", h264_mkv(4_000, 4_000), BOMB)
    add("video:mjpeg_frames_16000x16000", mjpeg_mkv(s["jpeg"], 16_000, 16_000), BOMB)
    add("video:claims_10_hours", h264_mkv(64, 48, duration_ms=36e6), BOMB)
    add("video:1000fps_60s", s["1000fps.mkv"])
    add("video:frames_hours_apart", s["hours_apart.mkv"])
    add("video:gif_10000_frames", _many_frame_gif(10_000))
    add("video:unknown_codec", mkv("V_NOPE", b"", 64, 48, [(0, b"abc" * 10)] * 2), REFUSED)
    add("video:no_size", mkv("V_MPEG4/ISO/AVC", b"", 0, 0, [(0, b"abc" * 10)] * 2), REFUSED)

    # audio: absurd formats, an hour of silence
    for rate, channels in (
        (1, 1),
        (0, 2),
        (4_000_000_000, 2),
        (44_100, 0),
        (44_100, 255),
        (44_100, 65_535),
        (8, 2),
        (2_000_000, 1),
    ):
        add(f"audio:wav_{rate}hz_{channels}ch", wav_claiming(rate, channels), REFUSED)
    add("audio:wav_claims_4gb", wav_claiming(44_100, 2, claimed_bytes=0xFFFFFFF0), REFUSED)
    add("audio:wav_0_bits", wav_claiming(44_100, 2, bits=0), REFUSED)
    add("audio:wav_float64_odd", wav_claiming(44_100, 3, bits=64, fmt_tag=3, data_bytes=48_000))
    add("audio:silent_hour_flac", s["silent_hour.flac"], REFUSED)

    # PDF: object graphs, pages, sizes, text, streams
    from hashsvc_testing import pdf_media

    add("pdf:encrypted", pdf_media.encrypted(s["pdf"]), REFUSED)
    add("pdf:broken_xref", pdf_media.broken_xref(s["pdf"]))
    add("pdf:10000_pages", pdf_media.many_pages(10_000))
    add("pdf:page_1e9_points", pdf_media.absurd_page(1e9, 1e9))
    add("pdf:page_0.001_points", pdf_media.absurd_page(0.001, 0.001))
    add("pdf:page_negative", pdf_media.absurd_page(-3e38, 3e38))
    add("pdf:deep_nesting", pdf_media.deep_nesting(200_000))
    add("pdf:deep_page_tree", pdf_media.deep_page_tree(5_000))
    add("pdf:cyclic_page_tree", pdf_media.cyclic_page_tree())
    add("pdf:cyclic_resources", pdf_object_stream_cycle())
    add("pdf:slow_text", _cached(cache_dir / "slow_text.pdf", pdf_media.slow_text_page))
    add("pdf:inflates_to_256mb", _cached(cache_dir / "inflate.pdf", lambda: pdf_inflating_to(256)))
    add("pdf:image_60000x60000", pdf_image_claiming(60_000, 60_000))
    add("pdf:image_7000x7000", pdf_image_claiming(7_000, 7_000))

    cases = []
    for n, (name, data, expect) in enumerate(media):
        filename = name.split("->")[1] if "->" in name else ""
        cases.append(match(name, data, expect, filename))
        if n % streamed_every == 0 and data:
            cases.append(match_upload("streamed_" + name, data, expect))
    cases += protocol_cases(max_message_bytes, max_upload_bytes)
    return cases


def _many_frame_gif(count: int) -> bytes:
    """An animated 8x8 GIF of `count` frames (each a few bytes)."""
    head = b"GIF89a" + struct.pack("<HHBBB", 8, 8, 0x80, 0, 0) + b"\x00\x00\x00\xff\xff\xff"
    loop = b"\x21\xff\x0bNETSCAPE2.0\x03\x01\x00\x00\x00"
    frame = b"\x21\xf9\x04\x00\x01\x00\x00\x00" + b"\x2c" + struct.pack("<HHHHB", 0, 0, 8, 8, 0)
    frame += b"\x02\x02\x84\x8f\x00"
    return head + loop + frame * count + b"\x3b"


def _cached(path: Path, make: Callable[[], bytes]) -> bytes:
    if not path.exists():
        path.write_bytes(make())
    return path.read_bytes()


NO_SET = frozenset({"INVALID_ARGUMENT", "NOT_FOUND"})
# Huge values the error message quotes: it quotes at most 80 characters
# (hashsvc.base.errors.quoted), so the status stays a clear INVALID_ARGUMENT instead
# of gRPC's RESOURCE_EXHAUSTED "Stream removed" for an oversized message.
ECHOED = {"name_huge", "label_key_huge"}
ECHOED_EXPECT = frozenset({"INVALID_ARGUMENT"})


def protocol_cases(max_message_bytes: int, max_upload_bytes: int) -> list[Case]:
    """Oversized messages and uploads, malformed upload streams, hashes, names, labels."""
    big = b"\xff\xd8\xff" + b"\x00" * (max_message_bytes + 1024)
    hdr = pb.MatchUploadRequest(header=pb.MatchRequest())
    chunk = pb.MatchUploadRequest(chunk=b"\xff\xd8\xff\x00")
    add_hdr = pb.AddEntryUploadRequest(header=pb.AddEntryRequest(set="hostile", name="x"))
    with_media = pb.AddEntryUploadRequest(
        header=pb.AddEntryRequest(set="hostile", name="x", media=pb.Media(content=b"abc"))
    )
    cases = [
        Case(
            "oversized:match_message",
            "Match",
            lambda: pb.MatchRequest(media=pb.Media(content=big)),
            TOO_BIG,
        ),  # fmt: skip
        upload_of_zeros("oversized:upload", max_upload_bytes),
        stream("upload_stream:no_messages", "MatchUpload", []),
        stream("upload_stream:chunk_first", "MatchUpload", [chunk, hdr]),
        stream("upload_stream:two_headers", "MatchUpload", [hdr, chunk, hdr]),
        stream("upload_stream:header_only", "MatchUpload", [hdr]),
        stream(
            "upload_stream:empty_chunks",
            "MatchUpload",
            [hdr, *[pb.MatchUploadRequest(chunk=b"")] * 50],
        ),  # fmt: skip
        stream("upload_stream:add_with_media_header", "AddEntryUpload", [with_media, chunk]),
        stream("upload_stream:add_header_only", "AddEntryUpload", [add_hdr]),
    ]
    for n, (kind, value) in enumerate([
        ("pdq", ""), ("pdq", "zz" * 32), ("pdq", "ab" * 16), ("pdq", "ab" * 33),
        ("pdq", "0x" + "f" * 62),
        ("pdq", "ä" * 64), ("pdq", " " + "a" * 63), ("pdq", "a" * 1_000_000), ("md5", "ab" * 17),
        ("sha256", "g" * 64), ("chromaprint", "abc"), ("chromaprint", ""), ("videohash", "1" * 15),
        ("text_simhash", "\x00" * 64), ("nope", "ab" * 16), ("", "ab" * 32), ("PDQ", "ab" * 32),
        ("pdq\x00", "ab" * 32), ("p" * 10_000, "ab" * 32),
    ]):  # fmt: skip
        case = signal(f"bad_hash:{n}:{kind[:12]!r}", kind, value)
        if len(kind) > 5000:
            case = Case(case.name, case.rpc, case.build, ECHOED_EXPECT)
        cases.append(case)
    for name, fields in {
        "set_missing": {"set": "no-such-set"},
        "set_empty": {"set": ""},
        "set_path": {"set": "../../etc/passwd"},
        "set_sql": {"set": "x'; DROP TABLE entries; --"},
        "name_empty": {"name": ""},
        "name_nul": {"name": "a\x00b"},
        "name_newline": {"name": "a\nb"},
        "name_huge": {"name": "n" * 100_000},
        "label_key_empty": {"labels": {"": "v"}},
        "label_key_digit": {"labels": {"1group": "v"}},
        "label_key_unicode": {"labels": {"grüppe": "v"}},
        "label_key_huge": {"labels": {"k" * 10_000: "v"}},
        "label_value_huge": {"labels": {"group": "v" * 100_000}},
        "label_value_control": {"labels": {"group": "a\x1b[31mb"}},
        "labels_too_many": {"labels": {f"k{n}": "v" for n in range(1_000)}},
        "no_content": {"signal": None},
        "bad_hash": {"signal": pb.SignalValue(signal_type="pdq", value="zz" * 32)},
        "empty_media": {"signal": None, "media": pb.Media(content=b"")},
    }.items():
        expect = NO_SET if name.startswith("set_") else REFUSED
        if name in ECHOED:
            expect = ECHOED_EXPECT
        if fields.get("signal", 0) is None:  # no hash: the request as given
            del fields["signal"]
            request = pb.AddEntryRequest(**{"set": "hostile", "name": "x", **fields})
            cases.append(
                Case(f"bad_entry:{name}", "AddEntry", lambda r=request: r, expect, "operator")
            )
        else:
            cases.append(add_entry(f"bad_entry:{name}", expect, **fields))
    return cases


def random_case(rng: random.Random, cases: list[Case], seeds_: dict[str, bytes]) -> Case:
    """For fuzzing: half fresh mutations of a random seed (Match or streamed),
    half cases of the corpus drawn at random."""
    if rng.random() < 0.5:
        return rng.choice(cases)
    fmt = rng.choice(MEDIA_FORMATS)
    family, data = mutate(rng, seed_of(seeds_, fmt))
    name = f"{family}:{fmt}"
    return match_upload(name, data) if rng.random() < 0.3 else match(name, data)
