"""The policy without a server: thresholds per set and signal type (a set's own,
else the configured PDQ ones, else the per-type defaults, else exact), the
PDQ quality floor, how far to search, and strictest wins."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest

from hashdb import HashSetRecord, Thresholds
from hashsvc.base.decisions import strictest
from hashsvc.core.config import Config
from hashsvc.matching.policy import (
    ALLOW,
    BLOCK,
    DEFAULT_THRESHOLDS,
    EXACT_THRESHOLDS,
    REVIEW,
    PdqPolicy,
    Policy,
)

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _set(name: str = "known", **thresholds: Thresholds) -> HashSetRecord:
    return HashSetRecord(
        id=1,
        name=name,
        description="",
        labels={},
        thresholds=thresholds,
        enabled=True,
        created_at=NOW,
        updated_at=NOW,
    )


POLICY = Policy(PdqPolicy())


def test_pdq_thresholds_are_the_configured_ones():
    assert Config().pdq == PdqPolicy(block_distance=31, review_distance=56, quality_floor=50)
    assert POLICY.thresholds(_set(), "pdq") == Thresholds(31, 56)
    custom = Policy(PdqPolicy(block_distance=10, review_distance=20))
    assert custom.thresholds(_set(), "pdq") == Thresholds(10, 20)


@pytest.mark.parametrize("kind", ["chromaprint", "text_simhash", "videohash"])
def test_other_perceptual_types_have_their_own_defaults(kind):
    assert POLICY.thresholds(_set(), kind) == DEFAULT_THRESHOLDS[kind]
    assert DEFAULT_THRESHOLDS[kind] != EXACT_THRESHOLDS


@pytest.mark.parametrize("kind", ["md5", "sha256", "text_sha256", "a-type-this-build-lacks"])
def test_exact_and_unknown_types_match_only_at_distance_zero(kind):
    assert POLICY.thresholds(_set(), kind) == EXACT_THRESHOLDS
    assert POLICY.decide(_set(), kind, 0, None, None) == (BLOCK, "")
    assert POLICY.decide(_set(), kind, 1, None, None) == (ALLOW, "")


def test_a_sets_thresholds_override_the_defaults_for_that_type_only():
    strict = _set("strict", pdq=Thresholds(0, 60), chromaprint=Thresholds(5, 8))
    assert POLICY.thresholds(strict, "pdq") == Thresholds(0, 60)
    assert POLICY.thresholds(strict, "chromaprint") == Thresholds(5, 8)
    assert POLICY.thresholds(strict, "videohash") == DEFAULT_THRESHOLDS["videohash"]
    assert POLICY.thresholds(strict, "md5") == EXACT_THRESHOLDS

    assert POLICY.decide(strict, "pdq", 0, 90, 90) == (BLOCK, "")
    decision, reason = POLICY.decide(strict, "pdq", 12, 90, 90)
    assert decision == REVIEW and reason == "distance 12 above block threshold 0"
    assert POLICY.decide(strict, "pdq", 60, 90, 90)[0] == REVIEW
    assert POLICY.decide(strict, "pdq", 61, 90, 90) == (ALLOW, "")
    # the same distance under the defaults blocks
    assert POLICY.decide(_set(), "pdq", 12, 90, 90) == (BLOCK, "")


def test_pdq_boundaries_are_inclusive():
    known = _set()
    assert POLICY.decide(known, "pdq", 31, 90, 90) == (BLOCK, "")
    assert POLICY.decide(known, "pdq", 32, 90, 90)[0] == REVIEW
    assert POLICY.decide(known, "pdq", 56, 90, 90)[0] == REVIEW
    assert POLICY.decide(known, "pdq", 57, 90, 90) == (ALLOW, "")


@pytest.mark.parametrize(
    ("query_quality", "known_quality", "lowest"),
    [(49, 90, 49), (90, 20, 20), (30, 40, 30)],
)
def test_a_pdq_block_below_the_quality_floor_asks_for_review(query_quality, known_quality, lowest):
    decision, reason = POLICY.decide(_set(), "pdq", 0, query_quality, known_quality)
    assert decision == REVIEW
    assert reason == f"PDQ quality {lowest} below floor 50"


def test_quality_at_the_floor_or_unknown_still_blocks():
    assert POLICY.decide(_set(), "pdq", 0, 50, 50) == (BLOCK, "")
    assert POLICY.decide(_set(), "pdq", 0, None, None) == (BLOCK, "")
    assert POLICY.decide(_set(), "pdq", 0, None, 80) == (BLOCK, "")


def test_the_quality_floor_is_configured_and_applies_to_pdq_only():
    lenient = Policy(PdqPolicy(quality_floor=10))
    assert lenient.decide(_set(), "pdq", 0, 20, 20) == (BLOCK, "")
    # another type's quality is not PDQ's: no floor
    assert POLICY.decide(_set(), "videohash", 0, 5, 5) == (BLOCK, "")


def test_low_quality_does_not_raise_what_is_only_a_review_or_no_match():
    assert POLICY.decide(_set(), "pdq", 90, 10, 10) == (ALLOW, "")
    decision, reason = POLICY.decide(_set(), "pdq", 40, 60, 60)
    assert decision == REVIEW and "block threshold" in reason


def test_low_quality_reaches_review_only_within_its_own_distance():
    """Striped and faded pictures under the floor came within 32-56 bits of
    unrelated ones (bench/robustness.py --hard): the review band is no
    evidence for them, either side under the floor."""
    assert POLICY.decide(_set(), "pdq", 40, 10, 10) == (ALLOW, "")
    assert POLICY.decide(_set(), "pdq", 32, 80, 49) == (ALLOW, "")
    assert POLICY.decide(_set(), "pdq", 32, None, 49) == (ALLOW, "")
    assert POLICY.decide(_set(), "pdq", 31, 10, 10)[0] == REVIEW
    wider = Policy(PdqPolicy(low_quality_review_distance=44))
    assert wider.decide(_set(), "pdq", 40, 10, 10)[0] == REVIEW
    # a set's own, narrower review band still applies
    narrow = _set("narrow", pdq=Thresholds(10, 20))
    assert POLICY.decide(narrow, "pdq", 25, 10, 10) == (ALLOW, "")
    assert POLICY.decide(narrow, "pdq", 15, 10, 10)[0] == REVIEW
    # other signal types have no PDQ quality
    assert POLICY.decide(_set(), "text_simhash", 40, 10, 10)[0] == REVIEW


def test_search_radius_is_the_widest_review_distance_of_any_set_or_the_default():
    wide = _set("wide", pdq=Thresholds(20, 70))
    narrow = _set("narrow", pdq=Thresholds(0, 10))
    assert POLICY.search_radius([], "pdq") == 56
    assert POLICY.search_radius([narrow], "pdq") == 56  # the default still applies
    assert POLICY.search_radius([narrow, wide], "pdq") == 70
    assert POLICY.search_radius([wide], "md5") == 0
    assert POLICY.search_radius([replace(wide, thresholds={})], "text_simhash") == 64


def test_strictest_wins_whatever_the_order():
    assert strictest([]) == ALLOW
    assert strictest([ALLOW]) == ALLOW
    assert strictest([ALLOW, REVIEW, ALLOW]) == REVIEW
    assert strictest([REVIEW, BLOCK, ALLOW]) == BLOCK
    assert strictest(iter([BLOCK, REVIEW])) == BLOCK
