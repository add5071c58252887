"""Local features of low-contrast pictures (issue 18) through the real core, on both stores: a
hazy sea under a pale sky gets 9 ORB keypoints and no signal as it is, so its crops and tilts
were found by nothing. Known pictures and uploads with few keypoints are also extracted after
adaptive equalisation (variant "contrast", image.features_contrast_below); the copies are found
there (as one tile of a collage too), and flat, faded and other low-contrast pictures are still
allowed."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from hashsvc.base.decisions import Thresholds
from hashsvc.core.core import MatchQuery
from hashsvc.media import image
from hashsvc.media.limits import ImageLimits
from hashsvc_testing.image_media import encode as encode_image
from hashsvc_testing.image_media import faded, faded_photo, flat_image, noise_image, photo
from hashsvc_testing.local_media import collage, crop, rotate
from hashsvc_testing.vectors import vector

HAZY_SEA = ("threatexchange", "pdq", "data", "reg-test-input", "labelme-subset", "q0122.jpg")
BRIDGE = ("threatexchange", "pdq", "data", "reg-test-input", "dih", "bridge-1-original.jpg")
OFF = ImageLimits(features_contrast_below=0)


def hazy_sea() -> Image.Image:
    return Image.open(vector(*HAZY_SEA)).convert("RGB")


def jpeg(img: Image.Image, quality: int = 85) -> bytes:
    return encode_image(img, "JPEG", quality=quality)


def local_variants(signals) -> list[str]:
    return [s.variant for s in signals if s.kind == "local_features"]


def test_only_low_contrast_pictures_are_also_extracted_equalised():
    """The hazy sea (256 px: also enlarged) has no features as it is and gets them equalised,
    known and uploaded alike; the bridge, a photo with contrast, gets none; 0 turns it off."""
    sea = jpeg(hazy_sea(), 92)
    bridge = jpeg(Image.open(vector(*BRIDGE)).convert("RGB"), 92)
    limits = ImageLimits()
    assert local_variants(image.hash_known(sea, limits)) == ["contrast", "enlarged:contrast"]
    assert local_variants(image.hash_query(sea, limits)) == ["contrast", "enlarged:contrast"]
    assert local_variants(image.hash_known(bridge, limits)) == ["original"]
    assert local_variants(image.hash_query(bridge, limits)) == ["original"]
    assert local_variants(image.hash_known(sea, OFF)) == []
    with pytest.raises(ValueError, match="features_contrast_below"):
        ImageLimits(features_contrast_below=-1)


def _copies() -> list[tuple[str, bytes]]:
    rng = np.random.default_rng(0)
    return [
        ("crop20", jpeg(crop(hazy_sea(), rng, 0.20))),
        ("crop30", jpeg(crop(hazy_sea(), rng, 0.30))),
        ("tilt10", jpeg(rotate(hazy_sea(), rng, 10))),
        ("tilt20", jpeg(rotate(hazy_sea(), rng, 20))),
        # one tile of a 2x2 collage: the tile is equalised too
        ("collage", jpeg(collage(hazy_sea(), rng, 2, [photo(n) for n in (2, 3, 4)])[0])),
    ]


def _known(core) -> None:
    # PDQ at distance 0 only: what these copies are found by is their local features
    exact_only = {"pdq": Thresholds(block_distance=0, review_distance=0)}
    core.curation.create_set("s", thresholds=exact_only)
    core.curation.add_entry("s", "sea", {}, "op", media=jpeg(hazy_sea(), 92))
    core.curation.add_entry("s", "faded", {}, "op", media=jpeg(faded_photo(1), 92))
    for n in (0, 9):  # photo 1 is known faded
        core.curation.add_entry("s", f"photo{n}", {}, "op", media=jpeg(photo(n), 92))


@pytest.mark.parametrize("contrast_below", [300, 0])
def test_crops_and_tilts_of_a_hazy_picture_are_found_equalised(
    make_core, store_url, contrast_below
):
    core = make_core(store_url, image=ImageLimits(features_contrast_below=contrast_below))
    _known(core)
    for name, upload in _copies():
        outcome = core.match(MatchQuery(media=upload), caller="t")
        local = [m for m in outcome.matches if m.signal_type == "local_features"]
        if not contrast_below:  # as before: nothing to find them by
            assert outcome.decision == "allow" and outcome.matches == [], name
            continue
        assert [m.entry_name for m in local] == ["sea"], name
        assert local[0].decision in ("block", "review"), name
        assert "contrast" in local[0].known_variant, (name, local[0].known_variant)
        assert "contrast" in local[0].query_variant, (name, local[0].query_variant)


def test_flat_faded_and_other_low_contrast_pictures_are_allowed(make_core, store_url):
    """Equalising amplifies what little a picture has, noise and JPEG blocks included: flat,
    noisy, grey and gradient pictures still get no features at all, and faded photos, which
    get equalised features, match none of the known ones (a hazy sea, another faded photo,
    two photos); a crop of the known faded photo is found."""
    core = make_core(store_url)
    _known(core)
    grey_sky = 180 + np.random.default_rng(5).normal(0, 2, (240, 320))
    featureless = {
        "flat": flat_image(),
        "faded noise": faded(noise_image(3)),
        "grey sky": Image.fromarray(np.clip(grey_sky, 0, 255).astype(np.uint8)),
        "gradient": Image.fromarray(np.tile(np.linspace(90, 160, 320), (240, 1)).astype(np.uint8)),
    }
    faded_photos = {f"faded photo {n}": faded_photo(n) for n in range(2, 9)}
    for name, img in {**featureless, **faded_photos}.items():
        upload = jpeg(img.convert("RGB"))
        variants = local_variants(core.hashing.hash_query(upload).signals)
        if name in featureless:
            assert variants == [], name
        else:  # the test means something: they were compared equalised
            assert any("contrast" in v for v in variants), (name, variants)
        outcome = core.match(MatchQuery(media=upload), caller="t")
        assert outcome.decision == "allow" and outcome.matches == [], (name, outcome.matches)
    rng = np.random.default_rng(1)
    outcome = core.match(MatchQuery(media=jpeg(crop(faded_photo(1), rng, 0.2))), caller="t")
    assert [m.entry_name for m in outcome.matches] == ["faded"], outcome.matches
    # and a faded copy of a known photo (whose own features are extracted as it is)
    outcome = core.match(MatchQuery(media=jpeg(faded_photo(0))), caller="t")
    assert [m.entry_name for m in outcome.matches] == ["photo0"], outcome.matches


def test_exports_and_loads_carry_the_equalised_features_of_known_pictures():
    """A known picture's equalised features cannot be derived again from its hashes: exports write
    them and loads accept them, for local_features only (a tile's are an upload's, never stored)."""
    from hashsvc.base.media_kinds import is_exchanged
    from loaders.records import RowError, kind_variant, variant

    for name in ("contrast", "enlarged:contrast"):
        assert is_exchanged("local_features", name)
        assert kind_variant("local_features", variant(name)) == name
        assert not is_exchanged("pdq", name)
        with pytest.raises(RowError):
            kind_variant("pdq", name)
    assert not is_exchanged("local_features", "tile:0:contrast")


def test_unrelated_striped_pictures_stay_allowed_with_the_equalised_features_on(
    make_core, store_url
):
    """tests/test_low_quality_review.py now runs with features_contrast_below = 0 (its
    faded copy is found by its equalised features too), so its unrelated striped pictures
    were no longer checked as served by default. Here, default limits: the striped
    uploads whose PDQ falls in the review band of a known striped picture match nothing
    unrelated, and the faded photo's re-encoded copy is found (review)."""
    from hashsvc_testing import image_media as im

    core = make_core(store_url)
    core.curation.create_set("known")
    for name, data in (
        ("stripes8", im.encode(im.striped_image(8))),
        ("stripes58", im.encode(im.striped_image(58))),
        ("faded4", im.encode(im.faded_photo(4))),
    ):
        core.curation.add_entry("known", name, {}, "op", media=data)
    for seed in (15, 58, *range(100, 110)):
        outcome = core.match(MatchQuery(media=im.encode(im.striped_image(seed))), caller="t")
        unrelated = [m for m in outcome.matches if m.entry_name != f"stripes{seed}"]
        assert unrelated == [], (seed, unrelated)
    outcome = core.match(MatchQuery(media=im.reencoded(im.faded_photo(4))), caller="t")
    assert {m.entry_name for m in outcome.matches} == {"faded4"}
    assert outcome.decision in ("block", "review")
