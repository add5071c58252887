"""Images: decode within limits, trim borders, PDQ (+ dihedral) and exact hashes."""

from __future__ import annotations

import hashlib
import io
import warnings

import numpy as np
import pdqhash
from PIL import Image, UnidentifiedImageError

from hashsvc.config import ImageLimits
from hashsvc.errors import CorruptMedia, InvalidArgument, TooLarge, UnsupportedMedia
from hashsvc.signals import Signal

FORMATS = {"JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "MPO"}
DIHEDRAL_NAMES = (
    "original", "rotate_90", "rotate_180", "rotate_270",
    "flip_vertical", "flip_horizontal", "transpose", "transverse",
)  # fmt: skip


def decode_rgb(data: bytes, limits: ImageLimits) -> np.ndarray:
    if not data:
        raise InvalidArgument("empty media")
    if len(data) > limits.max_bytes:
        raise TooLarge(f"image is {len(data)} bytes; the limit is {limits.max_bytes}")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data))
        except UnidentifiedImageError:
            raise UnsupportedMedia("not a supported image format") from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise TooLarge(f"image has too many pixels: {exc}") from None
        except (OSError, SyntaxError, ValueError) as exc:
            raise CorruptMedia(f"corrupt or truncated image: {exc}") from None
        if img.format not in FORMATS:
            raise UnsupportedMedia(f"unsupported image format {img.format}")
        width, height = img.size
        if width * height > limits.max_pixels or max(width, height) > limits.max_side:
            raise TooLarge(
                f"image is {width}x{height} pixels; the limits are {limits.max_pixels} pixels"
                f" and {limits.max_side} per side"
            )
        try:
            img.seek(0)
            img.load()
            rgb = img.convert("RGB")
        except (OSError, SyntaxError, ValueError) as exc:
            raise CorruptMedia(f"corrupt or truncated {img.format} image: {exc}") from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise TooLarge(f"image has too many pixels: {exc}") from None
    return np.asarray(rgb)


def pdq_hash(rgb: np.ndarray) -> tuple[bytes, int]:
    bits, quality = pdqhash.compute(np.ascontiguousarray(rgb))
    return np.packbits(bits.astype(np.uint8)).tobytes(), int(quality)


def _pack(bits: np.ndarray) -> bytes:
    return np.packbits(bits.astype(np.uint8)).tobytes()


def _exact(data: bytes) -> list[Signal]:
    return [
        Signal("md5", hashlib.md5(data).digest()),
        Signal("sha256", hashlib.sha256(data).digest()),
    ]


def hash_known(data: bytes, limits: ImageLimits) -> list[Signal]:
    rgb = decode_rgb(data, limits)
    value, quality = pdq_hash(rgb)
    return [*_exact(data), Signal("pdq", value, quality, "original")]


def hash_query(data: bytes, limits: ImageLimits) -> list[Signal]:
    rgb = decode_rgb(data, limits)
    hashes, quality = pdqhash.compute_dihedral(np.ascontiguousarray(rgb))
    out = _exact(data)
    for name, bits in zip(DIHEDRAL_NAMES, hashes, strict=True):
        out.append(Signal("pdq", _pack(bits), int(quality), name))
    return out
