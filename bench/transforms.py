"""The re-upload edits the robustness benchmark applies, each seeded so runs
repeat. Each takes an RGB image and a random generator and returns the bytes a
platform would receive."""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont, ImageOps

Transform = Callable[[Image.Image, np.random.Generator], bytes]


def jpeg(img: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.truetype("DejaVuSans-Bold.ttf", size)
    except OSError:
        return ImageFont.load_default(size)


def _crop(img: Image.Image, rng: np.random.Generator, fraction: float) -> Image.Image:
    """Cut `fraction` of each dimension away, split randomly between the sides."""
    w, h = img.size
    cut_w, cut_h = int(w * fraction), int(h * fraction)
    left, top = int(rng.integers(0, cut_w + 1)), int(rng.integers(0, cut_h + 1))
    return img.crop((left, top, left + w - cut_w, top + h - cut_h))


def letterbox(img: Image.Image, rng: np.random.Generator) -> bytes:
    w, h = img.size
    colour = (0, 0, 0) if rng.random() < 0.7 else (255, 255, 255)
    if w >= h:  # bars above and below, to 1:1
        canvas = Image.new("RGB", (w, w), colour)
        canvas.paste(img, (0, (w - h) // 2))
    else:  # pillarbox to 16:9
        cw = int(h * 16 / 9)
        canvas = Image.new("RGB", (cw, h), colour)
        canvas.paste(img, ((cw - w) // 2, 0))
    return jpeg(canvas, 85)


def caption_bar(img: Image.Image, rng: np.random.Generator) -> bytes:
    w, h = img.size
    bar = max(16, int(h * 0.15))
    canvas = Image.new("RGB", (w, h + bar), (255, 255, 255))
    top = rng.random() < 0.5
    canvas.paste(img, (0, bar if top else 0))
    draw = ImageDraw.Draw(canvas)
    y = 0 if top else h
    words = ["BREAKING", "the truth they hide", "share before deleted", "new release"]
    draw.text(
        (int(w * 0.04), y + bar // 4), str(rng.choice(words)), fill=(0, 0, 0),
        font=_font(max(10, bar // 2)),
    )  # fmt: skip
    return jpeg(canvas, 85)


def watermark(img: Image.Image, rng: np.random.Generator) -> bytes:
    base = img.convert("RGBA")
    w, h = base.size
    overlay = Image.new("RGBA", base.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    lw, lh = int(w * 0.32), int(h * 0.30)  # ~10% of the area
    corner = int(rng.integers(0, 4))
    x = int(w * 0.03) if corner % 2 == 0 else w - lw - int(w * 0.03)
    y = int(h * 0.03) if corner < 2 else h - lh - int(h * 0.03)
    draw.ellipse((x, y, x + lh, y + lh), fill=(255, 255, 255, 150))
    draw.text((x + lh + 4, y + lh // 4), "NEWS", fill=(255, 255, 255, 190), font=_font(lh // 2))
    return jpeg(Image.alpha_composite(base, overlay), 85)


def screenshot(img: Image.Image, rng: np.random.Generator) -> bytes:
    """The image at ~60% of a phone or desktop screen, among bars, text and icons."""
    phone = rng.random() < 0.5
    sw, sh = (720, 1280) if phone else (1280, 800)
    dark = rng.random() < 0.5
    bg, fg = ((18, 18, 18), (230, 230, 230)) if dark else ((250, 250, 250), (20, 20, 20))
    canvas = Image.new("RGB", (sw, sh), bg)
    draw = ImageDraw.Draw(canvas)
    draw.rectangle((0, 0, sw, 56), fill=(40, 90, 160))
    draw.text((16, 14), "12:41   channel  >  media", fill=(255, 255, 255), font=_font(22))
    target_w = int(sw * 0.6) if not phone else int(sw * 0.92)
    scale = min(target_w / img.width, (sh * 0.6) / img.height)
    shown = img.resize((max(1, int(img.width * scale)), max(1, int(img.height * scale))))
    x0 = (sw - shown.width) // 2 if phone else int(sw * 0.08)
    y0 = 130
    draw.ellipse((x0, 70, x0 + 44, 114), fill=(200, 60, 60))
    draw.text((x0 + 56, 80), "@account_4817  2h", fill=fg, font=_font(20))
    canvas.paste(shown, (x0, y0))
    y = y0 + shown.height + 16
    for line in ("repost this everywhere", "they cannot stop the message", "1.2k  likes  300"):
        draw.text((x0, y), line, fill=fg, font=_font(20))
        y += 30
    if not phone:
        draw.rectangle((int(sw * 0.75), 80, sw - 20, sh - 20), outline=fg)
        for i in range(8):
            draw.text((int(sw * 0.77), 100 + 40 * i), f"trending #{i + 1}", fill=fg, font=_font(18))
    return png(canvas)


def _noise(img: Image.Image, rng: np.random.Generator) -> bytes:
    arr = np.asarray(img).astype(np.float32)
    arr += rng.normal(0, 12, arr.shape)
    return jpeg(Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)), 90)


def _small_rotation(img: Image.Image, rng: np.random.Generator) -> bytes:
    angle = float(rng.choice([-3.0, 3.0]))
    rotated = img.rotate(angle, resample=Image.Resampling.BICUBIC, expand=False)
    # crop to the largest area with no fill showing
    w, h = img.size
    m = int(np.ceil(np.tan(np.radians(abs(angle))) * max(w, h) / 2)) + 1
    return jpeg(rotated.crop((m, m, w - m, h - m)), 90)


def _thumbnail(img: Image.Image, rng: np.random.Generator) -> bytes:
    small = img.copy()
    small.thumbnail((160, 160), Image.Resampling.LANCZOS)
    return jpeg(small, 80)


TRANSFORMS: dict[str, Transform] = {
    "jpeg_q30": lambda img, rng: jpeg(img, 30),
    "resize_50": lambda img, rng: jpeg(img.resize((img.width // 2, img.height // 2)), 85),
    "thumbnail_160": _thumbnail,
    "crop_5": lambda img, rng: jpeg(_crop(img, rng, 0.05), 85),
    "crop_12": lambda img, rng: jpeg(_crop(img, rng, 0.12), 85),
    "letterbox": letterbox,
    "caption_bar": caption_bar,
    "watermark": watermark,
    "brightness_contrast": lambda img, rng: jpeg(
        ImageEnhance.Contrast(ImageEnhance.Brightness(img).enhance(1.25)).enhance(0.8), 85
    ),
    "grayscale": lambda img, rng: jpeg(ImageOps.grayscale(img), 85),
    "blur": lambda img, rng: jpeg(img.filter(ImageFilter.GaussianBlur(2)), 85),
    "noise": _noise,
    "mirror": lambda img, rng: jpeg(ImageOps.mirror(img), 85),
    "rotate_90": lambda img, rng: jpeg(img.transpose(Image.Transpose.ROTATE_90), 85),
    "rotate_3": _small_rotation,
    "screenshot": screenshot,
}
