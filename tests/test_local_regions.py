"""The tiles of an upload (hashsvc/media/local_regions.py): a collage and a
feed screenshot are cut into their pictures, an ordinary photo is not, and a
tile's own features verify against the known picture where the whole
upload's do not decide."""

from __future__ import annotations

import numpy as np
from PIL import Image

from hashsvc.matching.local_geometry import DEFAULT_THRESHOLDS, verify
from hashsvc.media import image as image_media
from hashsvc.media.limits import ImageLimits
from hashsvc.media.local_features import decode, extract
from hashsvc.media.local_regions import tile_features, tiles
from hashsvc_testing.image_media import encode, photo
from hashsvc_testing.local_media import collage, screenshot_grid, text_screenshot
from hashsvc_testing.vectors import vector

BRIDGE = ("threatexchange", "pdq", "data", "reg-test-input", "dih", "bridge-1-original.jpg")


def bridge() -> Image.Image:
    return Image.open(vector(*BRIDGE)).convert("RGB")


def grey(img: Image.Image) -> np.ndarray:
    return np.asarray(img.convert("L"), dtype=np.float32)


def test_a_collage_is_cut_into_its_tiles():
    canvas, _ = collage(bridge(), np.random.default_rng(3), 3, [photo(n) for n in range(1, 9)])
    boxes = tiles(grey(canvas))
    assert len(boxes) == 9
    for left, top, right, bottom in boxes:  # each inside one cell of 352 px
        assert right - left <= 352 and bottom - top <= 352
        assert right - left >= 200 and bottom - top >= 150


def test_an_ordinary_photo_and_a_text_screenshot_have_no_tiles_to_speak_of():
    assert tiles(grey(bridge())) == []
    # a photo with a flat band across it (sky) may give its textured part
    assert len(tiles(grey(photo(4)))) <= 1
    # lines of text are shorter than a tile: at most the block of text itself
    assert len(tiles(grey(text_screenshot("the quick brown fox " * 30, arabic=False)))) <= 1


def test_a_tile_of_a_3x3_collage_is_found_where_the_whole_collage_is_not():
    known = extract(bridge())
    canvas, _ = collage(bridge(), np.random.default_rng(1), 3, [photo(n) for n in range(1, 9)])
    assert DEFAULT_THRESHOLDS.level(verify(extract(canvas), known)) is None
    found = {
        variant.split(":")[1]
        for variant, f in tile_features(canvas, tiles(grey(canvas)))
        if DEFAULT_THRESHOLDS.level(verify(f, known)) is not None
    }
    # one tile (as cut, or enlarged: tile_features), the others are other pictures
    assert len(found) == 1


def test_a_picture_in_a_feed_screenshot_is_found():
    known = extract(bridge())
    canvas, _ = screenshot_grid(bridge(), np.random.default_rng(2), [photo(n) for n in range(9)])
    found = tile_features(canvas, tiles(grey(canvas)))
    assert any(DEFAULT_THRESHOLDS.level(verify(f, known)) == "block" for _, f in found)


def test_an_upload_decoded_small_is_cut_from_its_full_size():
    """A JPEG upload is decoded at a reduced scale for its other signals; its
    tiles are cut from it decoded again large enough (TILE_DECODE_SIDE)."""
    canvas, _ = collage(bridge(), np.random.default_rng(1), 3, [photo(n) for n in range(1, 9)])
    signals = image_media.hash_query(encode(canvas, "JPEG", quality=85), ImageLimits())
    local = {s.variant: decode(s.value) for s in signals if s.kind == "local_features"}
    assert "original" in local
    tile_sides = [max(f.width, f.height) for v, f in local.items() if v.startswith("tile:")]
    # the tiles with features (352 px cells), cut from the full-size decode, not
    # from the 540 px one the other signals use (176 px tiles)
    assert len(tile_sides) >= 4 and min(tile_sides) > 290
    known = extract(bridge())
    assert any(
        DEFAULT_THRESHOLDS.level(verify(f, known)) is not None
        for v, f in local.items()
        if v.startswith("tile:")
    )


def test_a_small_picture_in_a_jpeg_collage_is_cut_at_the_uploads_scale():
    """A JPEG upload is searched for tiles in its reduced decode (half size for
    a 1080 px collage): a 300 x 170 picture is 85 px high there, under the
    96 px minimum, though it is 170 px in the upload it is cut from. The
    minimum is a size in the upload (tiles' `scale`)."""
    small = bridge().resize((300, 170))
    canvas, _ = collage(small, np.random.default_rng(4), 3, [photo(n) for n in range(1, 9)])
    upload = encode(canvas, "JPEG", quality=85)
    rgb = image_media.decode_rgb(upload, ImageLimits(), at_least=image_media.QUERY_DECODE_SIDE)
    assert rgb.shape[:2] == (540, 540)  # the reduced decode the tiles are found in
    half = grey(Image.fromarray(rgb))

    def has_small_tile(boxes, factor):
        return any(
            abs((r - left) * factor - 300) <= 6 and abs((b - top) * factor - 170) <= 6
            for left, top, r, b in boxes
        )

    assert not has_small_tile(tiles(half), 2)  # measured in the decode: lost
    assert has_small_tile(tiles(half, scale=2.0), 2)
    # and through the service's hashing, the tile verifies against the picture
    known = extract(small)
    signals = image_media.hash_query(upload, ImageLimits())
    found = [
        DEFAULT_THRESHOLDS.level(verify(decode(s.value), known))
        for s in signals
        if s.kind == "local_features" and s.variant.startswith("tile:")
    ]
    assert "block" in found or "review" in found


def test_a_dark_picture_with_bright_points_is_one_tile_not_slivers():
    """A star field on black: each column deviates little (one faint star in
    320 dark pixels) but holds a bright point, so it is no gutter; the
    picture is cut whole from a collage on black."""
    rng = np.random.default_rng(0)
    stars = np.full((320, 320), 6, np.uint8)
    stars[rng.permutation(320), np.arange(320)] = 100  # one star on every row and column
    canvas = Image.new("L", (1080, 1080), 0)
    others = [photo(n).convert("L").resize((320, 240)) for n in range(1, 9)]
    for k in range(9):
        tile = Image.fromarray(stars) if k == 4 else others[k % 8]
        canvas.paste(tile, (20 + (k % 3) * 350, 20 + (k // 3) * 350))
    # the star field's lines deviate less than the flat limit
    assert stars.std(axis=0).max() < 8 and stars.std(axis=1).max() < 8
    boxes = tiles(grey(canvas))
    assert (370, 370, 690, 690) in boxes, boxes


def test_a_small_tile_of_a_large_picture_is_also_extracted_enlarged():
    """A 3x3 tile shows the known picture at about half the size it was
    extracted at; the tile enlarged to the extraction's size finds its
    keypoints at the known's scales: far more inliers than the tile as cut."""
    known = extract(bridge())
    canvas, _ = collage(bridge(), np.random.default_rng(1), 3, [photo(n) for n in range(1, 9)])
    features = dict(tile_features(canvas, tiles(grey(canvas))))
    verified = {v: verify(f, known) for v, f in features.items()}
    tile = next(
        v for v, found in verified.items() if found is not None and not v.endswith(":enlarged")
    )
    as_cut, enlarged = verified[tile], verified[f"{tile}:enlarged"]
    assert enlarged is not None and enlarged.inliers > 1.5 * as_cut.inliers, (as_cut, enlarged)
    assert abs(enlarged.scale - 1) < abs(as_cut.scale - 1)
    assert DEFAULT_THRESHOLDS.level(enlarged) == "block"
    # a tile as large as a known picture's extraction is not enlarged
    assert not any(v.endswith(":enlarged") for v, _ in tile_features(canvas, [(0, 0, 600, 600)]))
