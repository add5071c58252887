"""The re-upload edits the robustness benchmark applies, each seeded so runs
repeat. Each takes an RGB image and a random generator and returns the bytes a
platform would receive.

TRANSFORMS are the edits every image bench uses; `robustness_transforms(fillers)`
adds the ones of issue 18 (larger crops and rotations, collages, a screenshot
among other pictures, a slight perspective, and each of those under a caption
bar and a lower-quality JPEG), whose other tiles are taken from `fillers`."""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont, ImageOps

Transform = Callable[[Image.Image, np.random.Generator], bytes]

# Where the last screenshot, collage or feed screenshot showed the known picture
# (left, top, right, bottom in pixels of the made picture, a caption bar above
# included): bench/robustness.py --explain compares it with the tiles the
# service cut. The caller resets it to None before each edit; other edits leave
# it None.
last_placement: list[tuple[int, int, int, int] | None] = [None]


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
    return jpeg(_caption(img, rng), 85)


def _caption(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    w, h = img.size
    bar = max(16, int(h * 0.15))
    canvas = Image.new("RGB", (w, h + bar), (255, 255, 255))
    top = rng.random() < 0.5
    canvas.paste(img, (0, bar if top else 0))
    if top and last_placement[0] is not None:
        left, upper, right, lower = last_placement[0]
        last_placement[0] = (left, upper + bar, right, lower + bar)
    draw = ImageDraw.Draw(canvas)
    y = 0 if top else h
    words = ["BREAKING", "the truth they hide", "share before deleted", "new release"]
    draw.text(
        (int(w * 0.04), y + bar // 4), str(rng.choice(words)), fill=(0, 0, 0),
        font=_font(max(10, bar // 2)),
    )  # fmt: skip
    return canvas


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
    last_placement[0] = (x0, y0, x0 + shown.width, y0 + shown.height)
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


# ------------------------------------------------------------------ issue 18: what PDQ cannot see


def _rotated_to_fit(img: Image.Image, angle: float) -> Image.Image:
    """Turned by `angle` degrees and cut to the largest upright rectangle with no
    fill showing (the exact rectangle; _small_rotation's margin is looser)."""
    w, h = img.size
    a = np.radians(abs(angle))
    sin, cos = np.sin(a), np.cos(a)
    long_side, short_side = max(w, h), min(w, h)
    if short_side <= 2 * sin * cos * long_side or abs(sin - cos) < 1e-10:
        x = 0.5 * short_side
        wr, hr = (x / sin, x / cos) if w >= h else (x / cos, x / sin)
    else:
        cos2 = cos * cos - sin * sin
        wr, hr = (w * cos - h * sin) / cos2, (h * cos - w * sin) / cos2
    rotated = img.rotate(angle, resample=Image.Resampling.BICUBIC, expand=False)
    left, top = (w - wr) / 2 + 1, (h - hr) / 2 + 1
    return rotated.crop((int(left), int(top), int(left + wr) - 2, int(top + hr) - 2))


def _rotation(degrees: float) -> Callable[[Image.Image, np.random.Generator], Image.Image]:
    def turn(img: Image.Image, rng: np.random.Generator) -> Image.Image:
        return _rotated_to_fit(img, degrees * float(rng.choice([-1.0, 1.0])))

    return turn


def _off_centre_crop(fraction: float) -> Callable[[Image.Image, np.random.Generator], Image.Image]:
    def cut(img: Image.Image, rng: np.random.Generator) -> Image.Image:
        return _crop(img, rng, fraction)

    return cut


def _perspective(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A slight perspective, as a photo of a poster taken a little from one side:
    each corner moved inwards by 2-6% of the side, cut to the part with no fill."""
    w, h = img.size
    dx = rng.uniform(0.02, 0.06, 4) * w
    dy = rng.uniform(0.02, 0.06, 4) * h
    # where the output corners come from in the input (PIL maps output -> input);
    # moving the source corners outwards shrinks the picture's corners inwards
    quad = (-dx[0], -dy[0], -dx[1], h + dy[1], w + dx[2], h + dy[2], w + dx[3], -dy[3])
    warped = img.transform((w, h), Image.Transform.QUAD, quad, Image.Resampling.BICUBIC)
    mx, my = int(dx.max()) + 2, int(dy.max()) + 2
    return warped.crop((mx, my, w - mx, h - my))


def _fit(img: Image.Image, w: int, h: int) -> Image.Image:
    shown = img.copy()
    shown.thumbnail((w, h), Image.Resampling.LANCZOS)
    return shown


def _collage(grid: int, fillers: Sequence[Image.Image]):
    """The picture as one tile of a grid x grid collage; the others unrelated pictures."""

    def make(img: Image.Image, rng: np.random.Generator) -> Image.Image:
        side = 1080
        gutter = 6
        cell = (side - gutter * (grid + 1)) // grid
        canvas = Image.new(
            "RGB", (side, side), (255, 255, 255) if rng.random() < 0.5 else (0, 0, 0)
        )
        target = int(rng.integers(0, grid * grid))
        others = rng.choice(len(fillers), grid * grid, replace=False)
        for k in range(grid * grid):
            tile = img if k == target else fillers[int(others[k])]
            shown = _fit(tile, cell, cell)
            x0 = gutter + (k % grid) * (cell + gutter) + (cell - shown.width) // 2
            y0 = gutter + (k // grid) * (cell + gutter) + (cell - shown.height) // 2
            canvas.paste(shown, (x0, y0))
            if k == target:
                last_placement[0] = (x0, y0, x0 + shown.width, y0 + shown.height)
        return canvas

    return make


def _feed_screenshot(fillers: Sequence[Image.Image]):
    """A gallery or feed screen: the picture at 35-50% of the width beside and
    below other pictures, with bars and text around them."""

    def make(img: Image.Image, rng: np.random.Generator) -> Image.Image:
        phone = rng.random() < 0.5
        sw, sh = (720, 1280) if phone else (1280, 800)
        dark = rng.random() < 0.5
        bg, fg = ((18, 18, 18), (230, 230, 230)) if dark else ((250, 250, 250), (20, 20, 20))
        canvas = Image.new("RGB", (sw, sh), bg)
        draw = ImageDraw.Draw(canvas)
        draw.rectangle((0, 0, sw, 56), fill=(40, 90, 160))
        draw.text((16, 14), "Photos   shared with you", fill=(255, 255, 255), font=_font(22))
        cols = 2 if phone else 3
        cell_w = (sw - 16 * (cols + 1)) // cols
        cell_h = int(cell_w * 0.9)
        slots = [
            (16 + c * (cell_w + 16), 72 + r * (cell_h + 44))
            for r in range(8)
            for c in range(cols)
            if 72 + r * (cell_h + 44) + cell_h < sh
        ]
        target = int(rng.integers(0, len(slots)))
        others = rng.choice(len(fillers), len(slots), replace=False)
        for k, (x0, y0) in enumerate(slots):
            tile = img if k == target else fillers[int(others[k])]
            shown = _fit(tile, cell_w, cell_h)
            left = x0 + (cell_w - shown.width) // 2
            canvas.paste(shown, (left, y0))
            if k == target:
                last_placement[0] = (left, y0, left + shown.width, y0 + shown.height)
            draw.text((x0, y0 + cell_h + 8), f"@user_{int(rng.integers(100, 999))}", fill=fg,
                      font=_font(16))  # fmt: skip
        return canvas

    return make


def _encoded(edit, quality: int = 85) -> Transform:
    return lambda img, rng: jpeg(edit(img, rng), quality)


def _captioned(edit) -> Transform:
    """The edit, then a caption bar, then a lower-quality JPEG (a meme re-post)."""
    return lambda img, rng: jpeg(_caption(edit(img, rng), rng), 70)


def robustness_transforms(fillers: Sequence[Image.Image]) -> dict[str, Transform]:
    """TRANSFORMS and the edits of issue 18; collage and feed tiles come from
    `fillers` (unrelated pictures: at least 9, never a known one)."""
    edits = {
        "crop_5": _off_centre_crop(0.05),
        "crop_12": _off_centre_crop(0.12),
        "crop_20": _off_centre_crop(0.20),
        "crop_30": _off_centre_crop(0.30),
        "rotate_3": _rotation(3),
        "rotate_10": _rotation(10),
        "rotate_20": _rotation(20),
        "collage_2x2": _collage(2, fillers),
        "collage_3x3": _collage(3, fillers),
        "feed_screenshot": _feed_screenshot(fillers),
        "perspective": _perspective,
    }
    new = {name: _encoded(edit) for name, edit in edits.items() if name not in TRANSFORMS}
    captioned = {f"{name}+caption": _captioned(edit) for name, edit in edits.items()}
    return {**TRANSFORMS, **new, **captioned}
