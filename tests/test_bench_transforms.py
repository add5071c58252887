"""The robustness bench's edits (bench/transforms.py) and its made hard pictures
(bench/corpus.py) are what the recall and precision figures stand on: each edit
must give a decodable upload, repeat under its seed, and do what its name says."""

from __future__ import annotations

import importlib.util
import io
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hashsvc_testing.image_media import noise_image, photo

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _module(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


transforms = _module("transforms")
FILLERS = [noise_image(seed) for seed in range(12)]
ALL = transforms.robustness_transforms(FILLERS)


def _decoded(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img.convert("RGB")


def test_every_issue_18_edit_is_there_with_and_without_a_caption():
    issue_18 = ("crop_5", "crop_12", "crop_20", "crop_30", "rotate_3", "rotate_10", "rotate_20",
                "collage_2x2", "collage_3x3", "feed_screenshot", "perspective")  # fmt: skip
    for name in issue_18:
        assert name in ALL
        assert f"{name}+caption" in ALL
    # the edits the other benches share are unchanged
    assert set(transforms.TRANSFORMS) <= set(ALL)


@pytest.mark.parametrize("name", sorted(ALL))
def test_each_edit_gives_a_decodable_upload_and_repeats_under_its_seed(name):
    img = photo(0)
    first = ALL[name](img, np.random.default_rng(7))
    again = ALL[name](img, np.random.default_rng(7))
    assert first == again
    shown = _decoded(first)
    assert min(shown.size) >= 100


@pytest.mark.parametrize("fraction", [0.05, 0.12, 0.20, 0.30])
def test_crops_cut_that_share_of_each_side_off_centre(fraction):
    img = photo(1)
    rng = np.random.default_rng(3)
    cut = _decoded(ALL[f"crop_{round(fraction * 100)}"](img, rng))
    assert cut.width == img.width - int(img.width * fraction)
    assert cut.height == img.height - int(img.height * fraction)


@pytest.mark.parametrize("degrees", [10, 20])
def test_rotations_show_no_fill(degrees):
    # on a white picture any black fill from the turn would show in the corners
    white = Image.new("RGB", (800, 600), (255, 255, 255))
    turned = np.asarray(_decoded(ALL[f"rotate_{degrees}"](white, np.random.default_rng(1))))
    assert turned.min() > 200
    # and the largest such rectangle is kept, not a needlessly small one
    assert turned.shape[0] * turned.shape[1] > 0.3 * 800 * 600


def test_collage_holds_the_picture_as_one_tile_among_unrelated_ones():
    img = photo(2)
    collage = _decoded(ALL["collage_2x2"](img, np.random.default_rng(5)))
    cell = (collage.width - 6 * 3) // 2
    shown = img.copy()
    shown.thumbnail((cell, cell), Image.Resampling.LANCZOS)
    expected = np.asarray(shown).astype(np.int16)
    differences = []
    for k in range(4):
        x0 = 6 + (k % 2) * (cell + 6) + (cell - shown.width) // 2
        y0 = 6 + (k // 2) * (cell + 6) + (cell - shown.height) // 2
        tile = collage.crop((x0, y0, x0 + shown.width, y0 + shown.height))
        differences.append(float(np.abs(np.asarray(tile).astype(np.int16) - expected).mean()))
    differences.sort()
    # one tile is the picture (up to JPEG), the others are unrelated pictures
    assert differences[0] < 6 < 25 < differences[1]


def test_made_hard_pictures_cover_each_hard_category():
    corpus = _module("corpus")
    made = list(corpus._made_pictures())
    categories = {category for _, category, _ in made}
    assert categories == {"flat", "gradient", "stripes/pattern"}
    assert len({name for name, _, _ in made}) == len(made) >= 40
    again = [np.asarray(img).tobytes() for _, _, img in corpus._made_pictures()]
    assert again == [np.asarray(img).tobytes() for _, _, img in made]
