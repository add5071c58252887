"""The robustness bench's unrelated pool (bench/robustness.py split_unrelated):
a picture of the same content as a known bench photo must not be counted as
unrelated, or a true match of it is reported as a false one (issue 18: a
collage tile of scikit-image's motorcycle_right, the other view of the stereo
pair, matched the known motorcycle_left)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from hashsvc_testing.image_media import noise_image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import robustness  # noqa: E402  (bench modules import one another by bare name)
from corpus import CorpusPicture  # noqa: E402


def _pdq_hex(img) -> str:
    return np.packbits(robustness.picture_bits(img)).tobytes().hex()


def _picture(name: str, img, category: str = "photo") -> CorpusPicture:
    return CorpusPicture(name, category, "test", f"{name}.jpg", _pdq_hex(img), 100)


PHOTOS = [
    ("skimage-motorcycle_left.png", noise_image(1)),
    ("frame-chair-20-sd-bar.mp4", noise_image(2)),
]


def test_same_content_is_left_out_and_the_rest_is_unrelated():
    corpus = [
        # the stereo partner: far from motorcycle_left by PDQ (84 bits for the real pair)
        _picture("scikit-image:motorcycle_right.png", noise_image(10)),
        _picture("near-copy", noise_image(1)),  # a PDQ near-duplicate of a bench photo
        _picture("chair-19", noise_image(11), "video frame"),  # another frame of a known video
        _picture("unrelated-photo", noise_image(12)),
        _picture("known-itself", noise_image(13)),
    ]
    unrelated, same = robustness.split_unrelated(corpus, PHOTOS, {"known-itself.jpg"})
    assert [p.name for p in unrelated] == ["unrelated-photo"]
    assert sorted(same) == ["chair-19", "near-copy", "scikit-image:motorcycle_right.png"]


def test_a_stereo_partner_is_unrelated_when_its_scene_is_not_known():
    corpus = [_picture("scikit-image:motorcycle_right.png", noise_image(10))]
    unrelated, same = robustness.split_unrelated(corpus, PHOTOS[1:], set())
    assert [p.name for p in unrelated] == ["scikit-image:motorcycle_right.png"]
    assert same == []
