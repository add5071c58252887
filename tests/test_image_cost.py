"""What keeps an image Match cheap without changing what it finds (issue 18, Targets: Cost):
an uploaded JPEG decoded as its luma alone, and the textured area's components labelled by
OpenCV instead of a flood fill in Python."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from hashsvc.base.errors import CorruptMedia, InvalidArgument, UnsupportedMedia
from hashsvc.media import image, regions
from hashsvc.media.limits import ImageLimits
from hashsvc_testing.image_media import PHOTOS, encode, photo

LIMITS = ImageLimits()
WHOLE_PICTURE = {*image.DIHEDRAL, "untrimmed", "unsquashed"}


def hamming(a: bytes, b: bytes) -> int:
    return int(np.unpackbits(np.frombuffer(a, np.uint8) ^ np.frombuffer(b, np.uint8)).sum())


def upload(n: int, side: int = 1024) -> bytes:
    img = photo(n)
    scale = side / max(img.size)
    img = img.resize((round(img.width * scale), round(img.height * scale)))
    return encode(img, "JPEG", quality=85)


def test_an_uploaded_jpeg_is_decoded_as_its_luma_at_the_reduced_size():
    data = upload(0)
    luma = image.decode_query(data, LIMITS, at_least=image.QUERY_DECODE_SIDE)
    rgb = image.decode_rgb(data, LIMITS, at_least=image.QUERY_DECODE_SIDE)
    assert luma.ndim == 2 and luma.dtype == np.uint8
    assert luma.shape == rgb.shape[:2] and min(luma.shape) >= image.QUERY_DECODE_SIDE
    assert max(luma.shape) < 1024  # decoded at a reduced DCT scale, not whole
    # the Y channel is the luma of the decoded colours up to rounding and clipping
    grey = np.asarray(Image.fromarray(rgb).convert("L"), dtype=np.int16)
    difference = np.abs(luma.astype(np.int16) - grey)
    assert difference.mean() < 0.5 and np.percentile(difference, 99.9) <= 3


def test_other_uploads_are_decoded_as_rgb_and_bad_ones_fail_as_before():
    png = encode(photo(1), "PNG")
    assert np.array_equal(image.decode_query(png, LIMITS), image.decode_rgb(png, LIMITS))
    # a JPEG decoded whole (small, or no reduction asked) keeps its exact RGB
    small = encode(photo(1).resize((500, 400)), "JPEG", quality=85)
    assert np.array_equal(
        image.decode_query(small, LIMITS, at_least=image.QUERY_DECODE_SIDE),
        image.decode_rgb(small, LIMITS, at_least=image.QUERY_DECODE_SIDE),
    )
    assert image.decode_query(upload(0), LIMITS).ndim == 3
    with pytest.raises(InvalidArgument):
        image.decode_query(b"", LIMITS)
    with pytest.raises(UnsupportedMedia):
        image.decode_query(b"not a picture at all" * 10, LIMITS)
    with pytest.raises(CorruptMedia):
        image.decode_query(upload(0)[:3000], LIMITS, at_least=image.QUERY_DECODE_SIDE)


def test_luma_decoded_uploads_keep_their_whole_picture_views_within_a_few_bits():
    """Views of the whole picture (dihedral, unsquashed) decide most re-uploads: the luma
    decode moves them by rounding only (0-12 bits on 231 real corpus pictures; the block
    distance is 31)."""
    checked = 0
    for n in range(len(PHOTOS)):
        for side in (1024, 700):
            data = upload(n, side)
            before = {
                s.variant: s
                for s in image.upload_views(image.decode_rgb(data, LIMITS, at_least=320))
            }
            after = {
                s.variant: s
                for s in image.upload_views(image.decode_query(data, LIMITS, at_least=320))
            }
            assert {v for v in before if v in WHOLE_PICTURE} == {
                v for v in after if v in WHOLE_PICTURE
            }
            for variant in WHOLE_PICTURE & set(before):
                assert hamming(before[variant].value, after[variant].value) <= 12, (n, variant)
                assert abs(before[variant].quality - after[variant].quality) <= 2
                checked += 1
    assert checked >= 100


def test_a_jpeg_upload_hashes_every_signal_from_its_luma():
    """hash_query of a colour JPEG: the same signal kinds and whole-picture views as before,
    and the local features found (ORB reads grey either way)."""
    signals = image.hash_query(upload(2), LIMITS)
    kinds = {s.kind for s in signals}
    assert {"md5", "sha256", "pdq", "local_features"} <= kinds
    assert WHOLE_PICTURE - {"untrimmed"} <= {s.variant for s in signals if s.kind == "pdq"}


def _flood_fill_components(mask: np.ndarray, share: float = 0.2) -> np.ndarray:
    """The labelling regions.py had: 4-connected flood fill in Python."""
    labels = np.zeros(mask.shape, dtype=np.int32)
    sizes = [0]
    for start in zip(*np.nonzero(mask), strict=True):
        if labels[start]:
            continue
        labels[start] = len(sizes)
        stack, size = [start], 0
        while stack:
            y, x = stack.pop()
            size += 1
            for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                inside = 0 <= ny < mask.shape[0] and 0 <= nx < mask.shape[1]
                if inside and mask[ny, nx] and not labels[ny, nx]:
                    labels[ny, nx] = len(sizes)
                    stack.append((ny, nx))
        sizes.append(size)
    keep = [label for label, size in enumerate(sizes) if label and size >= share * max(sizes)]
    return np.isin(labels, keep)


def test_large_components_are_the_ones_the_flood_fill_found():
    rng = np.random.default_rng(5)
    for _ in range(500):
        shape = tuple(int(v) for v in rng.integers(1, 40, 2))
        mask = rng.random(shape) < rng.random()
        assert np.array_equal(regions._large_components(mask), _flood_fill_components(mask))
    # diagonal neighbours are not connected (4-connectivity)
    diagonal = np.eye(6, dtype=bool)
    assert regions._large_components(diagonal).sum() == 6
    assert not regions._large_components(np.zeros((8, 8), bool)).any()


def test_a_photo_in_a_screenshot_is_still_found_as_its_textured_area():
    canvas = Image.new("RGB", (480, 800), (250, 250, 250))
    canvas.paste(photo(3).resize((400, 300)), (40, 200))
    grey = np.asarray(canvas.convert("L").resize((144, 240)), dtype=np.float32)
    box = regions.textured_box(grey)
    assert box is not None
    want = (200 / 800, 40 / 480, 500 / 800, 440 / 480)
    assert all(abs(a - b) <= 0.06 for a, b in zip(box, want, strict=True))


def test_hashing_a_jpeg_upload_decodes_less():
    """The reason for the luma decode: less CPU than the colour one (min of several runs)."""
    import time

    data = upload(0)

    def best(step) -> float:
        times = []
        for _ in range(15):
            started = time.thread_time()
            step()
            times.append(time.thread_time() - started)
        return min(times)

    luma = best(lambda: image.decode_query(data, LIMITS, at_least=image.QUERY_DECODE_SIDE))
    rgb = best(lambda: image.decode_rgb(data, LIMITS, at_least=image.QUERY_DECODE_SIDE))
    assert luma < 0.9 * rgb


def test_content_boxes_of_pictures_busy_to_their_edges_are_the_ones_found_line_by_line(
    monkeypatch,
):
    """The shortcut (edge lines busy: the whole picture) gives what every line's flatness gives,
    on photos, photos with a caption bar or a flat side, and thin pictures."""
    pictures = []
    for n in range(len(PHOTOS)):
        grey = np.asarray(photo(n).convert("L").resize((240, 180)), dtype=np.float32)
        captioned = grey.copy()
        captioned[:30] = 250
        side = grey.copy()
        side[:, -40:] = 20
        pictures += [grey, captioned, side, grey[:12], grey[:, :9].copy()]
    runs = tuple(image.CONTENT_RUNS.values())
    fast = [regions.content_boxes(p, runs) for p in pictures]
    monkeypatch.setattr(regions, "_busy_to_the_edges", lambda gray, runs: False)
    assert fast == [regions.content_boxes(p, runs) for p in pictures]
    assert sum(boxes == [regions.FULL, regions.FULL] for boxes in fast) >= len(PHOTOS) // 2
