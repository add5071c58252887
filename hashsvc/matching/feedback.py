"""What reviewers and operators decided, applied to a fresh match result.

* An allow-list entry suppresses a match only when it is at least as close to
  the upload as that match, and within its own set's block threshold: a far
  allow entry never beats a near block.
* A false-positive verdict (a reviewer's) covers later uploads whose hash is
  within SUPPRESS_DISTANCE of the judged one, for that known entry only, and
  only where the match asks for review: a reviewer never turns a BLOCK (an
  exact copy, or a match within the block threshold) into ALLOW. A wrong
  block is an operator's to lift (remove the entry, or an allow list).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import replace

from hashdb import Suppression, SuppressionLookup
from hashsvc.base.decisions import strictest
from hashsvc.base.signals import Signal, hamming, signal_type
from hashsvc.matching.matcher import Match, MatchResult
from hashsvc.matching.policy import ALLOW, BLOCK, REVIEW, Policy

# How close a later upload's hash must be to a hash judged a false positive to
# be covered by that judgement: a re-encode of the same picture, not a
# neighbour (PDQ copies are mostly < 10 bits apart; unrelated ones > 80).
SUPPRESS_DISTANCE = {"pdq": 16, "videohash": 4}


class Feedback:
    """What reviews and operators decided, applied to a fresh match result."""

    def __init__(self, suppressions: SuppressionLookup, policy: Policy) -> None:
        self.suppressions = suppressions
        self.policy = policy

    def apply(self, result: MatchResult, query: list[Signal], sets_by_id: dict) -> MatchResult:
        if not result.matches:
            return result
        matches = self._allow_listed(result.matches, sets_by_id)
        matches = self._suppressed(matches, query)
        decision = strictest(m.decision for m in matches)
        return MatchResult(decision, matches)

    def _allow_listed(self, matches: list[Match], sets_by_id: dict) -> list[Match]:
        """An allow entry suppresses a match only when it is at least as close
        to the upload as that match, and within its own set's block
        threshold; an allow-list match never blocks or asks for review."""
        allowing = [
            m
            for m in matches
            if m.decision != ALLOW and getattr(sets_by_id.get(m.set_id), "allow_list", False)
        ]
        if not allowing:
            return matches
        allowed_ids = {id(m) for m in allowing}
        applies = [a for a in allowing if self._within_block(a, sets_by_id)]
        applies_ids = {id(a) for a in applies}
        out = []
        for m in matches:
            if id(m) in allowed_ids:
                own = (
                    f"allow-listed by {m.set_name}/{m.entry_name}"
                    if id(m) in applies_ids
                    else f"allow entry past its set's block threshold ({_how_far(m)}):"
                    " suppresses nothing"
                )
                out.append(replace(m, decision=ALLOW, reason=own))
                continue
            if m.decision == ALLOW:
                out.append(m)
                continue
            by = next((a for a in applies if _at_least_as_close(a, m)), None)
            if by is not None:
                m = replace(
                    m, decision=ALLOW, reason=f"allow-listed by {by.set_name}/{by.entry_name}"
                )
            else:
                nearest = min(allowing, key=lambda a: a.distance)
                why = (
                    "past its set's block threshold"
                    if id(nearest) not in applies_ids
                    else f"farther than this match ({_how_far(nearest)}; this match"
                    f" {_how_far(m) if m.local_features else m.distance})"
                )
                note = f"not allow-listed: {nearest.set_name}/{nearest.entry_name} is {why}"
                m = replace(m, reason=f"{m.reason}; {note}" if m.reason else note)
            out.append(m)
        return out

    def _within_block(self, allow: Match, sets_by_id: dict) -> bool:
        hash_set = sets_by_id.get(allow.set_id)
        if hash_set is None:
            return False
        if allow.local_features is not None:  # judged by evidence, not distance
            evidence = allow.local_features
            decision, _ = self.policy.decide_local(
                hash_set, evidence.inliers, evidence.coverage, evidence.agreement
            )
            return decision == BLOCK
        return allow.distance <= self.policy.thresholds(hash_set, allow.signal_type).block_distance

    def _suppressed(self, matches: list[Match], query: list[Signal]) -> list[Match]:
        # REVIEW only: a verdict never lifts a block (issue 16: a careless
        # or hostile reviewer must not un-block known content), so a BLOCK
        # (every copy in a mass re-upload) costs no query here
        coverable = [m for m in matches if _coverable(m)]
        if not coverable:
            return matches
        suppressions = self.suppressions.suppressions_for(m.entry_id for m in coverable)
        if not suppressions:
            return matches
        by_entry: dict[int, list[Suppression]] = defaultdict(list)
        for s in suppressions:
            by_entry[s.entry_id].append(s)
        out = []
        for m in matches:
            review_id = _covering_review(by_entry[m.entry_id], query) if _coverable(m) else None
            if review_id is not None:
                m = replace(
                    m, decision=ALLOW, reason=f"judged a false positive in review {review_id}"
                )
            out.append(m)
        return out


def _how_far(m: Match) -> str:
    if m.local_features is not None:
        return f"{m.signal_type} with {m.local_features.inliers} inliers"
    return f"{m.signal_type} distance {m.distance}"


def _coverable(m: Match) -> bool:
    """Whether a false-positive verdict may turn this match into ALLOW."""
    return m.decision == REVIEW and not _exact(m.signal_type)


def _exact(kind: str) -> bool:
    try:
        return not signal_type(kind).perceptual
    except Exception:  # a kind this build does not know: compared only with itself
        return False


def _at_least_as_close(allow: Match, m: Match) -> bool:
    """Whether the allow entry is at least as close to the upload as the
    match. Distances of different signal types are in different units, so
    across types only identity counts: an exact hash (the very same file) is
    the closest a match can be, then a perceptual hash at distance 0."""
    if _exact(allow.signal_type):
        return True  # the upload is the allow entry's own file
    if _exact(m.signal_type):
        return False  # the upload is a known file; a look-alike is not as close
    if allow.local_features is not None or m.local_features is not None:
        # Local features find a part of a picture (a crop, a tile of a
        # collage). A whole-picture hash of an allow-listed picture says
        # nothing about a known picture pasted into it (an uploader's way to
        # turn an allow list against the service: a tile of propaganda on an
        # allow-listed meme), so only a local allow match lifts a local
        # match, found in the same part of the upload with at least as many
        # inliers; and a part never lifts a whole-picture hash.
        if allow.local_features is None or m.local_features is None:
            return False
        return (
            allow.query_variant == m.query_variant
            and allow.local_features.inliers >= m.local_features.inliers
        )
    if allow.signal_type == m.signal_type:
        return allow.distance <= m.distance
    return allow.distance == 0


def _covering_review(suppressions, query: list[Signal]) -> int | None:
    for s in suppressions:
        limit = SUPPRESS_DISTANCE.get(s.kind, 0)
        for sig in query:
            if sig.kind != s.kind or len(sig.value) != len(s.value):
                continue
            if (hamming(sig.value, s.value) if limit else int(sig.value != s.value)) <= limit:
                return s.review_id
    return None
