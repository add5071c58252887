"""Image decoding within limits and the views that make re-uploads match."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
from PIL import Image, ImageDraw

from hashsvc.base.errors import CorruptMedia, InvalidArgument, TooLarge, UnsupportedMedia
from hashsvc.base.signals import hamming
from hashsvc.core.config import ImageLimits
from hashsvc.media import image
from hashsvc_testing.image_media import encode, photo
from tests.test_bad_input import png_bomb

LIMITS = ImageLimits()


def best_distance(known_data: bytes, query_data: bytes) -> tuple[int, str]:
    known = [s for s in image.hash_known(known_data, LIMITS) if s.kind == "pdq"]
    query = [s for s in image.hash_query(query_data, LIMITS) if s.kind == "pdq"]
    return min((hamming(q.value, k.value), q.variant) for q in query for k in known)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"])
def test_every_format_hashes_close_to_the_original(fmt):
    original = photo(3)
    reference = image.pdq_hash(image.squash(np.asarray(original)))[0]
    params = {"quality": 90} if fmt in ("JPEG", "WEBP") else {}
    data = encode(original, fmt, **params)
    signals = image.hash_query(data, LIMITS)
    pdq = next(s for s in signals if s.kind == "pdq" and s.variant == "original")
    # Uploads are hashed from a 320 px decode (see hash_query): up to ~20 bits
    # from the full-size reference; GIF also loses colour to its palette.
    limit = 40 if fmt == "GIF" else 24
    assert hamming(pdq.value, reference) <= limit
    # a photo also gets its local features: the picture as given and, under
    # features_enlarge_below (this one is 300x348), enlarged
    assert {s.kind for s in signals} == {"md5", "sha256", "pdq", "local_features"}
    assert [s.variant for s in signals if s.kind == "local_features"] == ["original", "enlarged"]


def test_gif_first_frame_is_hashed():
    frames = [photo(1), photo(6)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    first = image.decode_rgb(buf.getvalue(), LIMITS)
    assert first.shape[:2] == (frames[0].height, frames[0].width)
    assert hamming(image.pdq_hash(first)[0], image.pdq_hash(np.asarray(frames[0]))[0]) <= 40


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "CMYK", "1", "I", "F"])
def test_every_mode_decodes_to_rgb(mode):
    img = photo(2).convert(mode)
    fmt = "TIFF" if mode in ("CMYK", "I", "F") else "PNG"
    rgb = image.decode_rgb(encode(img, fmt), LIMITS)
    assert rgb.dtype == np.uint8 and rgb.shape == (img.height, img.width, 3)


@pytest.mark.parametrize(
    ("data", "error", "words"),
    [
        (b"", InvalidArgument, "empty"),
        # made when the test runs: photos are read from ../shared/vectors
        (lambda: encode(photo(1), "GIF")[:2000], CorruptMedia, "truncated"),
        (b"%PDF-1.7 not an image", UnsupportedMedia, "not a supported image"),
        (lambda: encode(photo(0))[:500], CorruptMedia, "truncated"),
    ],
)
def test_bad_input_errors_say_what_is_wrong(data, error, words):
    data = data() if callable(data) else data
    with pytest.raises(error) as err:
        image.hash_query(data, LIMITS)
    assert words in str(err.value)


def test_decompression_bomb_refused_fast_and_limits_are_configurable():
    bomb = png_bomb(30000, 30000)  # making it takes seconds on a loaded machine
    # CPU seconds, not wall (a loaded machine stretches a few ms of work past
    # seconds): decoding the bomb's 900 million pixels costs seconds of CPU
    started = time.process_time()
    with pytest.raises(TooLarge, match="30000x30000"):
        image.hash_query(bomb, LIMITS)
    assert time.process_time() - started < 1
    small_limits = ImageLimits(max_pixels=10_000)
    with pytest.raises(TooLarge):
        image.hash_known(encode(photo(0)), small_limits)
    with pytest.raises(TooLarge, match="bytes"):
        image.hash_known(encode(photo(0)), ImageLimits(max_bytes=100))


def test_letterboxed_copy_matches_through_trimming():
    original = photo(4)
    w, h = original.size
    boxed = Image.new("RGB", (w + 200, h + 120), (0, 0, 0))
    boxed.paste(original, (100, 60))
    distance, variant = best_distance(encode(original), encode(boxed, quality=90))
    assert distance <= 31 and variant == "original"


def test_caption_bar_and_screenshot_copies_match_through_regions():
    original = photo(7).resize((600, 400))
    captioned = Image.new("RGB", (600, 470), (255, 255, 255))
    captioned.paste(original, (0, 70))
    ImageDraw.Draw(captioned).text((20, 20), "BREAKING: share before deleted", fill=(0, 0, 0))
    distance, variant = best_distance(encode(original), encode(captioned, quality=90))
    assert distance <= 31, variant

    screen = Image.new("RGB", (1280, 800), (250, 250, 250))
    draw = ImageDraw.Draw(screen)
    draw.rectangle((0, 0, 1280, 56), fill=(40, 90, 160))
    screen.paste(original.resize((720, 480)), (120, 140))
    for i in range(6):
        draw.text((900, 120 + 40 * i), f"trending #{i}", fill=(20, 20, 20))
    distance, variant = best_distance(encode(original), encode(screen, "PNG"))
    assert distance <= 31, variant


def test_mirrored_and_rotated_copies_match_through_dihedral_variants():
    original = photo(5)
    for transpose, variant in (
        (Image.Transpose.FLIP_LEFT_RIGHT, "flip_horizontal"),
        (Image.Transpose.ROTATE_90, "rotate_270"),
    ):
        distance, matched = best_distance(encode(original), encode(original.transpose(transpose)))
        assert distance <= 31 and matched == variant


def test_unrelated_photos_stay_far_apart():
    for i in range(5):
        distance, _ = best_distance(encode(photo(i)), encode(photo(i + 5)))
        assert distance > 60


def test_flat_derived_views_are_not_kept_and_flat_uploads_do_not_match_each_other():
    def chat_screen(lines: list[str]) -> bytes:
        img = Image.new("RGB", (720, 1280), (250, 250, 250))
        draw = ImageDraw.Draw(img)
        for i, line in enumerate(lines):
            draw.text((40, 100 + 60 * i), line, fill=(30, 30, 30))
        return encode(img, "PNG")

    known = image.hash_known(chat_screen(["hello", "how are you"]), LIMITS)
    derived = [s for s in known if s.kind == "pdq" and s.variant not in image.WHOLE_PICTURE_VIEWS]
    assert all(s.quality >= image.MIN_DERIVED_QUALITY for s in derived)
    query = image.hash_query(chat_screen(["see you", "tomorrow at 5"]), LIMITS)
    pairs = [
        (hamming(q.value, k.value), q, k)
        for q in query
        if q.kind == "pdq"
        for k in known
        if k.kind == "pdq"
    ]
    close = [(d, q.variant, k.variant) for d, q, k in pairs if d <= 56]
    # whatever is close is a whole-picture view of low quality (at most REVIEW)
    assert all(q.quality < 50 for d, q, k in pairs if d <= 56), close
