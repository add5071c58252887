"""When a geometric verification (hashsvc/matching/local_geometry.py) blocks or goes to
review. Apart from the verification itself so that the policy and the CLI (`sets create`) read
the defaults without importing numba or the matching code."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from hashsvc.base.decisions import Decision


class Evidence(Protocol):
    """What the thresholds read of a local_geometry.Verification."""

    inliers: int
    coverage: float
    agreement: float


@dataclass(frozen=True)
class LocalThresholds:
    """When a verification blocks or goes to review: every minimum must hold.
    Defaults measured by bench/local_features.py (README: Local features)."""

    block_inliers: int = 30
    block_coverage: float = 0.25
    block_agreement: float = 0.45
    review_inliers: int = 16
    review_coverage: float = 0.15
    review_agreement: float = 0.33

    def level(self, verification: Evidence | None) -> Decision | None:
        """BLOCK, REVIEW or None (no evidence) for one verification."""
        if verification is None:
            return None
        v = verification
        if (
            v.inliers >= self.block_inliers
            and v.coverage >= self.block_coverage
            and v.agreement >= self.block_agreement
        ):
            return Decision.BLOCK
        if (
            v.inliers >= self.review_inliers
            and v.coverage >= self.review_coverage
            and v.agreement >= self.review_agreement
        ):
            return Decision.REVIEW
        return None


DEFAULT_THRESHOLDS = LocalThresholds()
