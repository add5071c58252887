"""Pictures for tests and benches: real photographs from the reference vectors,
the copies re-uploaders make of them (re-encoded, mirrored), and made-up ones
(flat, noise)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance

from hashsvc_testing.vectors import VECTORS, require

PHOTOS = sorted((VECTORS / "pdqhash-python" / "images").glob("image*.jpg"))


def photo(n: int) -> Image.Image:
    """A real photograph (public-domain test images shipped in ../shared)."""
    require()
    return Image.open(PHOTOS[n % len(PHOTOS)]).convert("RGB")


def encode(img: Image.Image, fmt: str = "JPEG", **params) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **params)
    return buf.getvalue()


def mirrored(img: Image.Image) -> Image.Image:
    return img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)


def reencoded(img: Image.Image, scale: float = 0.6, quality: int = 40) -> bytes:
    w, h = img.size
    return encode(img.resize((int(w * scale), int(h * scale))), "JPEG", quality=quality)


def flat_image(size: int = 256) -> Image.Image:
    """Almost featureless: PDQ quality far below 50."""
    img = Image.new("RGB", (size, size), (120, 120, 120))
    ImageDraw.Draw(img).rectangle(
        (size // 3, size // 3, size // 2, size // 2), fill=(124, 120, 120)
    )
    return img


def noise_image(seed: int, size: int = 320) -> Image.Image:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (size // 16, size // 16, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((size, size), Image.Resampling.BICUBIC)


def striped_image(seed: int, size: int = 320) -> Image.Image:
    """Soft stripes of one colour at a random angle and period (a pattern, a
    fabric, a blind): PDQ quality from ~5 to 100 by seed; many fall below the
    policy's floor of 50."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    angle, period = rng.uniform(0, np.pi), rng.uniform(12, 60)
    phase = (x * np.cos(angle) + y * np.sin(angle)) / period * 2 * np.pi
    amplitude, base = rng.uniform(4, 14), rng.uniform(60, 200, 3)
    pixels = np.sin(phase)[..., None] * amplitude + base + rng.normal(0, 1.0, (size, size, 1))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def faded(img: Image.Image, contrast: float = 0.12) -> Image.Image:
    """The picture with almost no contrast left (PDQ quality < 50)."""
    return ImageEnhance.Contrast(img).enhance(contrast)


def faded_photo(n: int, contrast: float = 0.12) -> Image.Image:
    """A real photograph with almost no contrast left (PDQ quality < 50)."""
    return faded(photo(n), contrast)


def roundel(img: Image.Image, size: int = 80, oval: bool = False) -> Image.Image:
    """The picture as a small roundel (or an upright oval) on white, as clip
    art, badges and children's-game thumbnails are: every corner is plain."""
    width = int(size * 0.75) if oval else size
    shape = Image.new("L", (width, size), 0)
    ImageDraw.Draw(shape).ellipse((0, 0, width - 1, size - 1), fill=255)
    out = Image.new("RGB", (width, size), (255, 255, 255))
    out.paste(img.convert("RGB").resize((width, size), Image.Resampling.LANCZOS), (0, 0), shape)
    return out
