"""What reviews and operators decided, applied to a fresh match result without
a server (the core's Feedback on a real store, both implementations): an
allow-list entry suppresses a match only when it is at least as close to the
upload and within its own set's block threshold; a hash judged a false
positive no longer raises its entry for uploads within the suppression
distance of that hash."""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from hashdb import HashSetRecord, Suppression, Thresholds
from hashsvc.base.decisions import strictest
from hashsvc.base.signals import Signal, hamming
from hashsvc.matching.feedback import SUPPRESS_DISTANCE, Feedback
from hashsvc.matching.matcher import Match, MatchResult
from hashsvc.matching.policy import ALLOW, BLOCK, REVIEW, PdqPolicy, Policy

NOW = datetime(2026, 1, 1, tzinfo=UTC)
KNOWN, BENIGN, STRICT_BENIGN = 1, 2, 3
SETS = {
    KNOWN: HashSetRecord(KNOWN, "isis", "", {}, {}, True, NOW, NOW),
    BENIGN: HashSetRecord(BENIGN, "benign", "", {}, {}, True, NOW, NOW, allow_list=True),
    # an allow list that only counts near-identical copies
    STRICT_BENIGN: HashSetRecord(
        STRICT_BENIGN,
        "strict-benign",
        "",
        {},
        {"pdq": Thresholds(block_distance=5, review_distance=56)},
        True,
        NOW,
        NOW,
        allow_list=True,
    ),
}
POLICY = Policy(PdqPolicy())  # PDQ: block within 31 bits, review within 56


@pytest.fixture
def feedback(store):
    return Feedback(store, POLICY)


def _match(
    set_id: int, entry_id: int, distance: int, signal_type: str = "pdq", decision: str = ""
) -> Match:
    """A match as the matcher makes it: decided by the policy (an allow list's
    entries are decided like any set's, Feedback turns them into ALLOW)."""
    hash_set = SETS[set_id]
    reason = ""
    if not decision:
        decision, reason = POLICY.decide(hash_set, signal_type, distance, 90, 90)
    return Match(
        set_id=set_id,
        set_name=hash_set.name,
        entry_id=entry_id,
        entry_name=f"e{entry_id}",
        signal_type=signal_type,
        distance=distance,
        labels={},
        decision=decision,
        query_variant="original",
        known_variant="original",
        reason=reason,
    )


def _apply(feedback: Feedback, *matches: Match, query=()) -> MatchResult:
    result = MatchResult(strictest(m.decision for m in matches), list(matches))
    return feedback.apply(result, list(query), SETS)


# ------------------------------------------------------------------ allow lists


def test_an_allow_entry_as_close_as_the_block_suppresses_it(feedback):
    out = _apply(feedback, _match(KNOWN, 10, distance=12), _match(BENIGN, 20, distance=12))
    assert out.decision == ALLOW
    block, allow = out.matches
    assert block.decision == ALLOW and block.reason == "allow-listed by benign/e20"
    assert allow.decision == ALLOW and allow.reason == "allow-listed by benign/e20"


def test_a_closer_allow_entry_suppresses_a_review_too(feedback):
    out = _apply(feedback, _match(KNOWN, 10, distance=40), _match(BENIGN, 20, distance=3))
    assert [m.decision for m in out.matches] == [ALLOW, ALLOW] and out.decision == ALLOW


def test_an_allow_entry_farther_than_the_block_does_not_suppress_it(feedback):
    out = _apply(feedback, _match(KNOWN, 10, distance=4), _match(BENIGN, 20, distance=20))
    assert out.decision == BLOCK
    block, allow = out.matches
    assert block.decision == BLOCK
    assert block.reason == (
        "not allow-listed: benign/e20 is farther than this match (pdq distance 20; this match 4)"
    )
    assert allow.decision == ALLOW  # an allow-list match never blocks by itself


def test_an_allow_entry_past_its_own_block_threshold_suppresses_nothing(feedback):
    # 40 bits: within the allow list's review distance, past its block distance;
    # as close as the known match (45) but not a copy of the benign picture
    out = _apply(feedback, _match(KNOWN, 10, distance=45), _match(BENIGN, 20, distance=40))
    assert out.decision == REVIEW
    review, allow = out.matches
    assert review.decision == REVIEW
    assert review.reason == (
        "distance 45 above block threshold 31;"
        " not allow-listed: benign/e20 is past its set's block threshold"
    )
    assert allow.decision == ALLOW
    assert allow.reason == (
        "allow entry past its set's block threshold (pdq distance 40): suppresses nothing"
    )


def test_the_allow_lists_own_block_threshold_counts(feedback):
    near = _apply(feedback, _match(KNOWN, 10, distance=8), _match(STRICT_BENIGN, 30, distance=5))
    assert near.decision == ALLOW
    past = _apply(feedback, _match(KNOWN, 10, distance=8), _match(STRICT_BENIGN, 30, distance=6))
    assert past.decision == BLOCK
    assert "strict-benign/e30 is past its set's block threshold" in past.matches[0].reason


def test_the_nearest_allow_entry_is_named_when_none_applies(feedback):
    out = _apply(
        feedback,
        _match(KNOWN, 10, distance=2),
        _match(BENIGN, 20, distance=25),
        _match(BENIGN, 21, distance=9),
    )
    assert out.decision == BLOCK
    assert "benign/e21 is farther than this match (pdq distance 9; this match 2)" in (
        out.matches[0].reason
    )


def test_across_signal_types_only_identity_counts(feedback):
    # the upload is the allow entry's own file (an exact hash): closest there is
    exact_allow = _apply(
        feedback, _match(KNOWN, 10, distance=0), _match(BENIGN, 20, 0, signal_type="md5")
    )
    assert exact_allow.decision == ALLOW
    # the upload is a known file; a look-alike benign picture is not as close
    exact_block = _apply(
        feedback, _match(KNOWN, 10, 0, signal_type="md5"), _match(BENIGN, 20, distance=0)
    )
    assert exact_block.decision == BLOCK
    # two perceptual types: distances in different units, only 0 is as close
    video = _match(KNOWN, 10, 0, signal_type="videohash")
    assert _apply(feedback, video, _match(BENIGN, 20, distance=0)).decision == ALLOW
    assert _apply(feedback, video, _match(BENIGN, 20, distance=1)).decision == BLOCK


def test_without_allow_list_matches_nothing_changes(feedback):
    block = _match(KNOWN, 10, distance=3)
    out = _apply(feedback, block, _match(KNOWN, 11, distance=80))
    assert out.decision == BLOCK and out.matches == [block, _match(KNOWN, 11, distance=80)]
    empty = MatchResult(ALLOW, [])
    assert feedback.apply(empty, [], SETS) is empty


# ------------------------------------------------------------------ false positives


def _bits_flipped(value: bytes, n: int, seed: int = 0) -> bytes:
    bits = random.Random(seed).sample(range(len(value) * 8), n)
    out = int.from_bytes(value, "big")
    for b in bits:
        out ^= 1 << b
    return out.to_bytes(len(value), "big")


JUDGED = random.Random(1).randbytes(32)  # the upload hash a reviewer judged


def test_a_false_positive_suppresses_its_entry_within_the_suppression_distance(store, feedback):
    assert SUPPRESS_DISTANCE["pdq"] == 16
    store.add_suppressions([Suppression(entry_id=10, kind="pdq", value=JUDGED, review_id=7)])
    for flipped, suppressed in ((0, True), (16, True), (17, False)):
        query = [Signal("pdq", _bits_flipped(JUDGED, flipped))]
        assert hamming(query[0].value, JUDGED) == flipped
        out = _apply(feedback, _match(KNOWN, 10, distance=40), query=query)
        if suppressed:
            assert out.decision == ALLOW, flipped
            assert out.matches[0].reason == "judged a false positive in review 7"
        else:
            assert out.decision == REVIEW and "false positive" not in out.matches[0].reason


def test_a_false_positive_never_lifts_a_block(store, feedback):
    """Issue 16: a reviewer's verdict covers matches that ask for review; one
    within the block threshold (or an exact hash) stays blocked."""
    store.add_suppressions([Suppression(entry_id=10, kind="pdq", value=JUDGED, review_id=7)])
    out = _apply(feedback, _match(KNOWN, 10, distance=5), query=[Signal("pdq", JUDGED)])
    assert out.decision == BLOCK and out.matches[0].reason == ""


def test_a_false_positive_covers_only_its_own_entry(store, feedback):
    store.add_suppressions([Suppression(entry_id=10, kind="pdq", value=JUDGED, review_id=7)])
    query = [Signal("pdq", JUDGED)]
    out = _apply(feedback, _match(KNOWN, 10, 40), _match(KNOWN, 11, 40), query=query)
    assert [m.decision for m in out.matches] == [ALLOW, REVIEW] and out.decision == REVIEW


def test_exact_hashes_are_never_suppressed(store, feedback):
    """An exact hash is the known file itself: no verdict makes it ALLOW."""
    md5 = bytes(range(16))
    store.add_suppressions([Suppression(entry_id=10, kind="md5", value=md5, review_id=8)])
    # even where an exact match only asks for review (as a review_blocks set's
    # match would after the quality floor), the rule for exact hashes holds
    for decision in (BLOCK, REVIEW):
        known = _match(KNOWN, 10, 0, signal_type="md5", decision=decision)
        same = _apply(feedback, known, query=[Signal("md5", md5)])
        assert same.decision == decision and "false positive" not in same.matches[0].reason


def test_videohash_has_its_own_suppression_distance(store, feedback):
    judged = random.Random(2).randbytes(8)
    assert SUPPRESS_DISTANCE["videohash"] == 4
    store.add_suppressions([Suppression(entry_id=10, kind="videohash", value=judged, review_id=9)])
    known = _match(KNOWN, 10, 0, signal_type="videohash", decision=REVIEW)
    near = _apply(feedback, known, query=[Signal("videohash", _bits_flipped(judged, 4))])
    assert near.decision == ALLOW
    far = _apply(feedback, known, query=[Signal("videohash", _bits_flipped(judged, 5))])
    assert far.decision == REVIEW


# ------------------------------------------------------------------ local features


def _local(set_id: int, entry_id: int, inliers: int, coverage: float) -> Match:
    """A verified local-feature match, decided by the policy (default
    thresholds of hashsvc/matching/local_geometry.py)."""
    from hashsvc.matching.matcher import LocalEvidence

    decision, reason = POLICY.decide_local(SETS[set_id], inliers, coverage, 0.9)
    evidence = LocalEvidence(inliers, coverage, coverage, 1.0, 0.0, 0.9)
    return Match(
        set_id=set_id,
        set_name=SETS[set_id].name,
        entry_id=entry_id,
        entry_name=f"e{entry_id}",
        signal_type="local_features",
        distance=0,
        labels={},
        decision=decision,
        query_variant="original",
        known_variant="original",
        reason=reason,
        local_features=evidence,
    )


def test_local_feature_allow_entries_suppress_by_evidence_not_by_distance(feedback):
    strong, weak = _local(KNOWN, 10, 300, 0.9), _local(KNOWN, 11, 25, 0.2)
    assert (strong.decision, weak.decision) == (BLOCK, REVIEW)
    # an allow entry with at least as many inliers suppresses a local match...
    out = _apply(feedback, strong, _local(BENIGN, 20, 300, 0.9))
    assert out.decision == ALLOW and "allow-listed by benign/e20" in out.matches[0].reason
    # ...one with fewer does not, and says why
    out = _apply(feedback, strong, _local(BENIGN, 20, 120, 0.9))
    assert out.decision == BLOCK and "with 120 inliers" in out.matches[0].reason
    # an allow entry found only at review strength suppresses nothing
    out = _apply(feedback, weak, _local(BENIGN, 20, 25, 0.2))
    assert out.decision == REVIEW
    # a local-feature allow match (part of a picture) never lifts a PDQ match,
    # however many inliers it has; nor does a PDQ allow match lift a local one:
    # a known picture pasted into an allow-listed one keeps the upload's PDQ
    # near the allow entry while the known picture is found by its features
    out = _apply(feedback, _match(KNOWN, 12, 20), _local(BENIGN, 20, 500, 1.0))
    assert out.decision == BLOCK
    out = _apply(feedback, strong, _match(BENIGN, 21, 0))
    assert out.decision == BLOCK and "not allow-listed" in out.matches[0].reason
    # a local allow match found in another part of the upload (a tile) lifts nothing
    tile = replace(strong, query_variant="tile:2")
    out = _apply(feedback, tile, _local(BENIGN, 20, 300, 0.9))
    assert out.decision == BLOCK
