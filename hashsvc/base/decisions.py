"""What a set decides with: the distances at which a match blocks or asks for
review. A plain type every layer may use (the store keeps them per set)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Thresholds:
    block_distance: int
    review_distance: int
