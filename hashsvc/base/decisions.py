"""Decisions and what a set decides with: the distances (or, for local
features, the evidence) at which a match blocks or asks for review. Plain
types every layer may use (the store keeps thresholds per set; the history
keeps decisions by their value)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum


class Decision(StrEnum):
    """What an upload gets. A str: it is stored, sent and printed as its value
    ("block"), and compares equal to it."""

    ALLOW = "allow"
    REVIEW = "review"
    BLOCK = "block"

    @property
    def rank(self) -> int:
        """Strictness: ALLOW < REVIEW < BLOCK (the one ranking)."""
        return _RANK[self]


_RANK = {Decision.ALLOW: 0, Decision.REVIEW: 1, Decision.BLOCK: 2}


def rank(decision: str) -> int:
    """The strictness of a decision given by value (as matches carry it)."""
    return Decision(decision).rank


def strictest(decisions: Iterable[str]) -> Decision:
    """The strictest of the decisions; ALLOW when there are none."""
    return max((Decision(d) for d in decisions), key=rank, default=Decision.ALLOW)


@dataclass(frozen=True)
class Thresholds:
    """Distances (Hamming bits; audio: bit error rate in percent) at or under
    which a match blocks or asks for review. Local features are judged by
    evidence instead (their distances are 0): a verified match blocks with at
    least `block_inliers` geometric inliers covering at least `block_coverage`
    of the known picture, and asks for review with the review pair."""

    block_distance: int
    review_distance: int
    block_inliers: int = 0
    review_inliers: int = 0
    block_coverage: float = 0.0
    review_coverage: float = 0.0
