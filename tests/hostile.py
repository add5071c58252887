"""Hostile inputs, made on the fly: truncated and bit-flipped files of every
image format, decompression bombs, empty and 1-byte files, random bytes, wrong
extensions, oversized payloads, malformed hashes. Used by tests/test_hostile.py
and bench/fuzz.py."""

from __future__ import annotations

import io
import random
import struct
import zlib
from pathlib import Path

from PIL import Image

from hashsvc.v1 import hashsvc_pb2 as pb

PHOTO = (
    Path(__file__).resolve().parents[2]
    / "shared"
    / "vectors"
    / "pdqhash-python"
    / "images"
    / "image3.jpg"
)


def seeds() -> dict[str, bytes]:
    img = Image.open(PHOTO).convert("RGB")
    out = {}
    for fmt in ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF"):
        buf = io.BytesIO()
        img.save(buf, fmt)
        out[fmt] = buf.getvalue()
    return out


def png_bomb(width: int, height: int | None = None) -> bytes:
    """A small PNG that claims width x height 1-bit pixels: decodes to gigabytes."""
    height = height or width

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    row = b"\x00" * (1 + (width + 7) // 8)
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(row * 1000) for _ in range(height // 1000)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def gif_bomb() -> bytes:
    # a 65535 x 65535 logical screen with a tiny frame
    header = b"GIF89a" + struct.pack("<HHBBB", 65535, 65535, 0, 0, 0)
    frame = b"\x2c" + struct.pack("<HHHHB", 0, 0, 65535, 65535, 0) + b"\x02\x02\x44\x01\x00"
    return header + frame + b"\x3b"


def hostile(
    rng: random.Random, base: dict[str, bytes], huge_bytes: int = 70 * 1024 * 1024
) -> tuple[str, pb.MatchRequest]:
    """(kind, request): one hostile Match request."""
    kind = rng.choice(
        ["truncate", "bitflip", "bitflip", "empty", "one_byte", "random", "png_bomb",
         "gif_bomb", "wrong_ext", "bad_hash", "huge"]
    )  # fmt: skip
    fmt = rng.choice(list(base))
    data = base[fmt]
    if kind == "truncate":
        payload = data[: rng.randrange(1, len(data))]
    elif kind == "bitflip":
        buf = bytearray(data)
        for _ in range(rng.randrange(1, 40)):
            buf[rng.randrange(len(buf))] ^= 1 << rng.randrange(8)
        payload = bytes(buf)
    elif kind == "empty":
        payload = b""
    elif kind == "one_byte":
        payload = bytes([rng.randrange(256)])
    elif kind == "random":
        payload = rng.randbytes(rng.randrange(1, 50_000))
    elif kind == "png_bomb":
        payload = png_bomb(rng.choice([20_000, 30_000, 60_000]))
    elif kind == "gif_bomb":
        payload = gif_bomb()
    elif kind == "wrong_ext":
        payload = b"%PDF-1.7\n" + data
    elif kind == "huge":
        payload = b"\xff\xd8\xff" + b"\x00" * huge_bytes
    else:
        value = rng.choice(["", "zz" * 32, "ab" * 16, "ab" * 33, "0x" + "f" * 64, "ä" * 64])
        kind_name = rng.choice(["pdq", "md5", "sha256", "nope", ""])
        return kind, pb.MatchRequest(signal=pb.SignalValue(signal_type=kind_name, value=value))
    return f"{kind}:{fmt}", pb.MatchRequest(media=pb.Media(content=payload, filename="x.jpg"))
