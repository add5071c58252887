"""Pictures and re-framings for local features (hashsvc/media/local_features.py),
shared by tests/test_local_features.py and bench/local_features.py.

Hard pictures that must not match each other: text screenshots (Latin and
Arabic, one layout), document pages of one template, and a channel's logo
template around different photos. Re-framings that PDQ misses: crops off
centre, tilts cropped to fit, a tile of a collage, a picture in a feed
screenshot, a slight perspective. Each takes a numpy Generator, so runs repeat.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

FONTS = Path("/usr/share/fonts/truetype")


def font(name: str, size: int) -> ImageFont.FreeTypeFont:
    for folder in ("noto", "dejavu"):
        path = FONTS / folder / name
        if path.exists():
            return ImageFont.truetype(str(path), size)
    return ImageFont.load_default(size)


LATIN = [
    "The committee met on Tuesday to discuss the budget for the coming year. Several members "
    "asked for more detail on the transport plan, and the chair agreed to publish the figures.",
    "Rain is expected across the north tonight, clearing by morning. Temperatures will stay "
    "low for the rest of the week, with frost likely in rural areas and on higher ground.",
    "To reset your password, open the settings page and choose Account. Enter the code we sent "
    "to your phone, then pick a new password of at least twelve characters.",
    "The museum reopens next month after two years of repairs. The new wing holds maps, coins "
    "and letters from the harbour's early trade, most of them never shown before.",
]
ARABIC = [
    "اجتمعت اللجنة يوم الثلاثاء لمناقشة ميزانية العام المقبل وطلب عدد من الأعضاء مزيدا من التفاصيل",
    "من المتوقع هطول أمطار في الشمال الليلة على أن يصفو الجو صباحا وتبقى درجات الحرارة منخفضة",
    "لإعادة تعيين كلمة المرور افتح صفحة الإعدادات واختر الحساب ثم أدخل الرمز الذي أرسلناه إليك",
    "يعيد المتحف فتح أبوابه الشهر المقبل بعد عامين من الترميم ويضم الجناح الجديد خرائط وعملات",
]


def text_screenshot(paragraph: str, arabic: bool, dark: bool = False) -> Image.Image:
    """A chat or article screenshot: a bar, then the paragraph in lines, twice."""
    bg, fg = ((20, 20, 20), (235, 235, 235)) if dark else ((255, 255, 255), (25, 25, 25))
    img = Image.new("RGB", (720, 900), bg)
    draw = ImageDraw.Draw(img)
    draw.rectangle((0, 0, 720, 60), fill=(40, 90, 160))
    draw.text((20, 16), "Messages", fill=(255, 255, 255), font=font("NotoSans-Regular.ttf", 24))
    body = font("NotoNaskhArabic-Regular.ttf" if arabic else "NotoSans-Regular.ttf", 26)
    words, lines, line = paragraph.split(), [], ""
    for word in words * 2:
        if draw.textlength(line + " " + word, font=body) > 660:
            lines.append(line)
            line = word
        else:
            line = (line + " " + word).strip()
    lines.append(line)
    y = 90
    for text in lines:
        if arabic:
            draw.text((700, y), text, fill=fg, font=body, anchor="ra", direction="rtl")
        else:
            draw.text((20, y), text, fill=fg, font=body)
        y += 44
    return img


def document_page(n: int) -> Image.Image:
    """A page of one template (heading, rule, two columns, a table), text n."""
    img = Image.new("RGB", (850, 1100), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    draw.text((60, 50), "Annual Report", fill=(0, 0, 0), font=font("NotoSerif-Regular.ttf", 40))
    draw.line((60, 110, 790, 110), fill=(0, 0, 0), width=3)
    body = font("NotoSerif-Regular.ttf", 18)
    words = (LATIN[n % 4] + " " + LATIN[(n + 1) % 4]).split()
    for col in range(2):
        y, line = 140, ""
        for word in words[col::2] * 3:
            if draw.textlength(line + " " + word, font=body) > 330:
                draw.text((60 + col * 380, y), line, fill=(0, 0, 0), font=body)
                y, line = y + 28, word
                if y > 700:
                    break
            else:
                line = (line + " " + word).strip()
    for r in range(6):
        for c in range(4):
            x0, y0 = 60 + c * 180, 760 + r * 40
            draw.rectangle((x0, y0, x0 + 180, y0 + 40), outline=(0, 0, 0))
            draw.text(
                (x0 + 8, y0 + 8), f"{(n * 7 + r * 13 + c * 5) % 97}.{r}", fill=(0, 0, 0), font=body
            )
    return img


def logo_template(photo: Image.Image) -> Image.Image:
    """One channel's template: the same emblem and name in a corner, a frame, any photo."""
    img = Image.new("RGB", (800, 800), (15, 15, 15))
    img.paste(photo.resize((720, 560)), (40, 160))
    draw = ImageDraw.Draw(img)
    draw.ellipse((40, 30, 140, 130), fill=(200, 160, 40), outline=(255, 255, 255), width=4)
    draw.polygon([(90, 45), (120, 110), (60, 110)], fill=(15, 15, 15))
    draw.text(
        (160, 55), "AL-EXAMPLE MEDIA", fill=(255, 255, 255), font=font("NotoSans-Regular.ttf", 44)
    )
    draw.rectangle((40, 740, 760, 770), fill=(200, 160, 40))
    return img


def crop(img, rng, fraction):
    """Cut `fraction` of each side's length away, most of it from one side."""
    w, h = img.size
    cut_w, cut_h = int(w * fraction), int(h * fraction)
    left = (
        int(cut_w * rng.uniform(0.0, 0.25))
        if rng.random() < 0.5
        else int(cut_w * rng.uniform(0.75, 1.0))
    )
    top = int(cut_h * rng.uniform(0.0, 1.0))
    return img.crop((left, top, left + w - cut_w, top + h - cut_h))


def rotate(img, rng, degrees):
    """Turned by `degrees` (either way), cropped to the largest rectangle with no fill."""
    angle = degrees * (1 if rng.random() < 0.5 else -1)
    w, h = img.size
    turned = img.rotate(angle, resample=Image.Resampling.BICUBIC, expand=False)
    a = math.radians(abs(angle))
    # the largest axis-aligned rectangle inside a w x h rectangle turned by a
    long, short = max(w, h), min(w, h)
    sin, cos = math.sin(a), math.cos(a)
    if short <= 2 * sin * cos * long or abs(sin - cos) < 1e-10:
        x = 0.5 * short
        cw, ch = (x / sin, x / cos) if w >= h else (x / cos, x / sin)
    else:
        cos2 = cos * cos - sin * sin
        cw, ch = (w * cos - h * sin) / cos2, (h * cos - w * sin) / cos2
    left, top = (w - cw) / 2, (h - ch) / 2
    return turned.crop((math.ceil(left), math.ceil(top), int(left + cw), int(top + ch)))


def collage(img, rng, n, others):
    """The picture as one tile of an n x n collage of 1080 px, other photos around."""
    side, gap = 1080, 6
    cell = (side - gap * (n + 1)) // n
    canvas = Image.new("RGB", (side, side), (255, 255, 255))
    slot = int(rng.integers(0, n * n))
    used = []
    for i in range(n * n):
        tile = img if i == slot else others[int(rng.integers(0, len(others)))]
        if tile is not img:
            used.append(tile)
        tile = tile.copy()
        tile.thumbnail((cell, cell), Image.Resampling.LANCZOS)
        x = gap + (i % n) * (cell + gap) + (cell - tile.width) // 2
        y = gap + (i // n) * (cell + gap) + (cell - tile.height) // 2
        canvas.paste(tile, (x, y))
    return canvas, used


def screenshot_grid(img, rng, others):
    """A desktop feed: the picture at ~35% of the width beside two others and text."""
    canvas = Image.new("RGB", (1280, 800), (245, 245, 245))
    draw = ImageDraw.Draw(canvas)
    draw.rectangle((0, 0, 1280, 56), fill=(40, 90, 160))
    draw.text(
        (16, 14), "feed  >  channel", fill=(255, 255, 255), font=font("NotoSans-Regular.ttf", 22)
    )
    slots = [(40, 100), (480, 100), (920, 100)]
    target = int(rng.integers(0, 3))
    used = []
    for i, (x, y) in enumerate(slots):
        tile = img if i == target else others[int(rng.integers(0, len(others)))]
        if tile is not img:
            used.append(tile)
        tile = tile.copy()
        tile.thumbnail((420, 460), Image.Resampling.LANCZOS)
        canvas.paste(tile, (x, y))
        draw.text(
            (x, y + tile.height + 10),
            "1.2k likes  share  reply",
            fill=(20, 20, 20),
            font=font("NotoSans-Regular.ttf", 18),
        )
    return canvas, used


def perspective(img, rng):
    """A slight perspective: one side ~6% shorter, as a photo of a screen taken at an angle."""
    w, h = img.size
    d = 0.06 * rng.uniform(0.7, 1.0)
    # PIL's PERSPECTIVE maps output to input: solve the plane to the four corners
    src = [(0, 0), (w, 0), (w, h), (0, h)]
    dst = [(0, h * d), (w, 0), (w, h), (0, h * (1 - d))]
    if rng.random() < 0.5:
        dst = [(0, 0), (w, h * d), (w, h * (1 - d)), (0, h)]
    rows, rhs = [], []
    for (x, y), (u, v) in zip(dst, src, strict=True):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
        rhs += [u, v]
    coeffs = np.linalg.solve(np.array(rows, float), np.array(rhs, float))
    return img.transform(
        (w, h),
        Image.Transform.PERSPECTIVE,
        tuple(coeffs),
        Image.Resampling.BICUBIC,
        fillcolor=(0, 0, 0),
    )
