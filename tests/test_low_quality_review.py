"""Pictures under the PDQ quality floor (striped, faded) reach review only on
close PDQ evidence (PdqPolicy.low_quality_review_distance): unrelated striped
pictures in the review band are allowed, a true low-quality copy still goes to
review. Through the running service, both stores; bench/robustness.py --hard
measures the rule."""

from __future__ import annotations

import numpy as np
import pytest

from hashsvc.core.config import ImageLimits
from hashsvc.matching.policy import PdqPolicy
from hashsvc.media import image
from hashsvc.v1 import hashsvc_pb2 as pb
from hashsvc_testing import image_media as im

LIMITS = ImageLimits()
# Measured pairs (hashsvc_testing.image_media generators): the upload of
# striped picture 58 comes within 42 bits of striped picture 8, and 48 of
# 15 of picture 58; faded photo 4 re-encoded stays within 14 bits of itself.
UNRELATED = {"stripes58": ["stripes8"], "stripes15": ["stripes58"]}


def _closest(query: bytes, known: bytes) -> tuple[int, int]:
    """(distance, lower quality of the pair) of the closest PDQ views."""
    q = [s for s in image.hash_query(query, LIMITS) if s.kind == "pdq"]
    k = [s for s in image.hash_known(known, LIMITS) if s.kind == "pdq"]
    qa = np.unpackbits(np.frombuffer(b"".join(s.value for s in q), np.uint8).reshape(-1, 32), 1)
    ka = np.unpackbits(np.frombuffer(b"".join(s.value for s in k), np.uint8).reshape(-1, 32), 1)
    d = (qa[:, None, :] != ka[None, :, :]).sum(axis=2)
    qi, ki = np.unravel_index(np.argmin(d), d.shape)
    return int(d[qi, ki]), min(q[qi].quality, k[ki].quality)


@pytest.fixture(scope="module")
def pictures():
    return {
        "stripes8": im.encode(im.striped_image(8)),
        "stripes15": im.encode(im.striped_image(15)),
        "stripes58": im.encode(im.striped_image(58)),
        "faded4": im.encode(im.faded_photo(4)),
        "faded4_copy": im.reencoded(im.faded_photo(4)),
    }


def test_the_pairs_are_low_quality_and_in_the_review_band(pictures):
    policy = PdqPolicy()
    floor = policy.quality_floor
    for query, knowns in UNRELATED.items():
        for known in knowns:
            distance, quality = _closest(pictures[query], pictures[known])
            assert policy.low_quality_review_distance < distance <= policy.review_distance
            assert quality < floor
    distance, quality = _closest(pictures["faded4_copy"], pictures["faded4"])
    assert distance <= policy.low_quality_review_distance and quality < floor


@pytest.fixture(scope="module")
def service(module_store_url, make_module_harness, pictures):
    # The PDQ rule alone: equalised, the faded photo's local features find its copy too, and
    # block it on geometric evidence (tests/test_local_contrast.py)
    harness = make_module_harness(module_store_url, image=ImageLimits(features_contrast_below=0))
    stubs, md = harness.stubs("operator")
    stubs.curation.CreateSet(pb.CreateSetRequest(name="known"), metadata=md)
    for name in ("stripes8", "stripes58", "faded4"):
        stubs.curation.AddEntry(
            pb.AddEntryRequest(set="known", name=name, media=pb.Media(content=pictures[name])),
            metadata=md,
        )
    return harness


def _match(harness, data: bytes) -> pb.MatchResponse:
    stubs, md = harness.stubs("matcher")
    return stubs.matcher.Match(pb.MatchRequest(media=pb.Media(content=data)), metadata=md)


@pytest.mark.parametrize("query", sorted(UNRELATED))
def test_unrelated_low_quality_pictures_are_allowed(service, pictures, query):
    resp = _match(service, pictures[query])
    unrelated = [(m.entry, m.distance) for m in resp.matches if m.entry in UNRELATED[query]]
    assert unrelated == []


def test_a_low_quality_copy_still_goes_to_review(service, pictures):
    resp = _match(service, pictures["faded4_copy"])
    own = next(m for m in resp.matches if m.entry == "faded4")
    # under the quality floor a match never blocks (policy), but a person looks
    assert own.decision == pb.REVIEW and own.signal_type == "pdq"
