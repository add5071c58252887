"""An upload's PDQ views from one luma picture (hashsvc/media/pdq_luma.py) give the
bits and quality pdqhash gives, at a fraction of the cost; known pictures stay on
pdqhash (their hashes are exchanged)."""

from __future__ import annotations

import time

import numpy as np
import pdqhash
import pytest

from hashsvc.media import image, pdq_luma
from hashsvc.media.limits import ImageLimits
from hashsvc_testing.image_media import PHOTOS, encode, photo


def bits_apart(a: bytes, b: bytes) -> int:
    return int(np.unpackbits(np.frombuffer(a, np.uint8) ^ np.frombuffer(b, np.uint8)).sum())


def pdqhash_of(rgb: np.ndarray) -> tuple[bytes, int]:
    return image.pdq_hash(np.ascontiguousarray(rgb))


def views_of(rgb: np.ndarray, rng: np.random.Generator, count: int):
    """The whole picture and random rectangles of it at least 32 px a side (an
    upload's corner, band and region views are)."""
    h, w = rgb.shape[:2]
    yield 0, 0, h, w
    for _ in range(count):
        top, left = int(rng.integers(0, h - 32)), int(rng.integers(0, w - 32))
        yield top, left, int(rng.integers(top + 32, h + 1)), int(rng.integers(left + 32, w + 1))


@pytest.mark.parametrize("side", [image.VIEW_SIDE, 97, 512])
def test_views_have_the_bits_and_quality_pdqhash_gives(side):
    rng = np.random.default_rng(side)
    exact = apart = 0
    for n in range(len(PHOTOS)):
        rgb = image.squash(np.asarray(photo(n)), side)
        luma = pdq_luma.luma(rgb)
        for top, left, bottom, right in views_of(rgb, rng, 20):
            expected, quality = pdqhash_of(rgb[top:bottom, left:right])
            found, found_quality = pdq_luma.pdq(luma[top:bottom, left:right])
            distance = bits_apart(expected, found)
            assert distance <= 2 and abs(found_quality - quality) <= 1
            exact += distance == 0
            apart += 1
    assert exact >= 0.97 * apart


def test_dihedral_hashes_are_pdqhash_s_in_its_order():
    for n in range(len(PHOTOS)):
        rgb = image.squash(np.asarray(photo(n)), image.VIEW_SIDE)
        hashes, quality = pdqhash.compute_dihedral(np.ascontiguousarray(rgb))
        found, found_quality = pdq_luma.pdq_dihedral(pdq_luma.luma(rgb))
        assert found_quality == quality
        for name, bits, value in zip(image.DIHEDRAL, hashes, found, strict=True):
            assert bits_apart(image._pack(bits), value) <= 2, name


def test_a_view_too_small_for_pdq_is_the_zero_hash_of_quality_0():
    assert pdq_luma.pdq(np.zeros((4, 300), np.float32)) == (bytes(32), 0)
    assert pdq_luma.pdq_dihedral(np.zeros((300, 3), np.float32)) == ([bytes(32)] * 8, 0)


def test_a_panorama_is_hashed_without_a_side_by_side_matrix():
    """The unsquashed view keeps a picture's aspect: a 20,000 px side must cost
    memory in proportion to it, not its square (3.2 GB)."""
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (300, 20_000, 3), dtype=np.uint8)
    expected, quality = pdqhash_of(rgb)
    found, found_quality = pdq_luma.pdq(pdq_luma.luma(rgb))
    assert bits_apart(expected, found) <= 2 and abs(found_quality - quality) <= 1


def test_an_upload_s_views_cost_less_than_pdqhash_s():
    """The point of the module: the same views several times cheaper (CPU)."""
    rgb = image.squash(np.asarray(photo(0)), image.VIEW_SIDE)
    luma = pdq_luma.luma(rgb)
    boxes = list(views_of(rgb, np.random.default_rng(1), 15))
    for top, left, bottom, right in boxes:  # the weights of each length, cached
        pdq_luma.pdq(luma[top:bottom, left:right])

    def cpu(hash_all) -> float:
        started = time.process_time()
        for _ in range(5):
            hash_all()
        return time.process_time() - started

    ours = cpu(lambda: [pdq_luma.pdq(luma[t:b, left:r]) for t, left, b, r in boxes])
    theirs = cpu(lambda: [pdqhash_of(rgb[t:b, left:r]) for t, left, b, r in boxes])
    assert ours < theirs / 2


def test_known_pictures_keep_pdqhash_s_hashes():
    """hash_known is what partners exchange: pdqhash, not this module."""
    data = encode(photo(2), "JPEG", quality=90)
    known = {s.variant: s for s in image.hash_known(data, ImageLimits()) if s.kind == "pdq"}
    rgb = image.decode_rgb(data, ImageLimits())
    assert (known["original"].value, known["original"].quality) == pdqhash_of(image.squash(rgb))
