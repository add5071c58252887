"""Finding the picture inside an upload: borders, bands, framed and textured areas."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from hashsvc.media import regions
from hashsvc_testing.image_media import photo


def gray(img: Image.Image) -> np.ndarray:
    return np.asarray(img.convert("L"), dtype=np.float32)


def close(box, want, tolerance=0.03) -> bool:
    return box is not None and all(abs(a - b) <= tolerance for a, b in zip(box, want, strict=True))


def framed(canvas_size, photo_box, fill=(245, 245, 245)) -> Image.Image:
    w, h = canvas_size
    canvas = Image.new("RGB", canvas_size, fill)
    top, left, bottom, right = photo_box
    size = (int((right - left) * w), int((bottom - top) * h))
    canvas.paste(photo(2).resize(size), (int(left * w), int(top * h)))
    return canvas


def test_uniform_borders_of_any_colour_are_trimmed_but_photos_are_not():
    boxed = framed((256, 200), (0.1, 0.2, 0.9, 0.8), fill=(30, 160, 40))
    assert close(regions.trim_uniform_borders(gray(boxed)), (0.1, 0.2, 0.9, 0.8))
    assert regions.trim_uniform_borders(gray(photo(2).resize((256, 200)))) == regions.FULL


def test_caption_band_with_text_is_cut_off_by_content_box():
    img = framed((256, 240), (0.2, 0.0, 1.0, 1.0), fill=(255, 255, 255))
    ImageDraw.Draw(img).text((10, 12), "BREAKING  share before it is deleted", fill=(0, 0, 0))
    # the wide run steps over the line of text; the photo's own flat edges may
    # go too (the stored views are cut the same way)
    top, left, bottom, right = regions.content_box(gray(img), run=0.08)
    assert abs(top - 0.2) <= 0.03 and bottom > 0.6 and right - left > 0.6


def test_photo_framed_inside_a_screenshot_is_a_candidate():
    img = framed((256, 160), (0.25, 0.1, 0.8, 0.6))
    draw = ImageDraw.Draw(img)
    draw.rectangle((0, 0, 256, 14), fill=(40, 90, 160))
    for i in range(5):
        draw.text((170, 30 + 20 * i), f"trend #{i}", fill=(0, 0, 0))
    boxes = regions.candidate_boxes(gray(img))
    assert any(close(box, (0.25, 0.1, 0.8, 0.6)) for box in boxes), boxes


def test_textured_box_finds_the_photo_not_the_lines_of_text():
    img = framed((256, 256), (0.2, 0.15, 0.7, 0.85), fill=(18, 18, 18))
    draw = ImageDraw.Draw(img)
    for i in range(3):
        draw.text((40, 190 + 16 * i), "repost this everywhere", fill=(230, 230, 230))
    box = regions.textured_box(gray(img))
    assert box is not None
    # Inside the photo (flat patches of the photo itself may be left out) and
    # clear of the text below it.
    top, left, bottom, right = box
    assert top >= 0.15 and left >= 0.1 and bottom <= 0.72 and right <= 0.9, box
    assert regions._iou(box, (0.2, 0.15, 0.7, 0.85)) >= 0.4, box


def test_plain_photo_gives_few_framed_boxes():
    assert len(regions.candidate_boxes(gray(photo(4).resize((256, 256))))) <= 6


def test_row_medians_are_np_median_exactly_on_pictures():
    # the flat-band test's medians skip np.median's NaN pass; they must stay its numbers
    # (a band kept or cut on a rounding difference moves the content views' hashes)
    rng = np.random.default_rng(0)
    pictures = [gray(photo(n).resize((240, 180))) for n in range(3)]
    pictures += [
        rng.integers(0, 256, (7, 119)).astype(np.float32),  # odd width
        np.full((5, 60), 128.0, dtype=np.float32),  # all ties
        np.round(rng.normal(128, 40, (9, 64))).astype(np.float32) / 3,  # non-integer
        np.zeros((3, 1), dtype=np.float32),
        np.full((2, 4), 200, dtype=np.uint8),  # two middles of 200 wrap as uint8
        rng.integers(0, 256, (6, 50)).astype(np.uint8),
    ]
    for values in pictures:
        for rows in (values, values[:, ::2], values.T[:, ::2]):
            got = regions._row_medians(rows)
            want = np.median(rows, axis=1, keepdims=True)
            assert got.dtype == want.dtype and got.shape == want.shape
            assert np.array_equal(got, want)
