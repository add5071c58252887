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
    # 0.25 until 2026-12-07: a copy turned 20 degrees and cut to fit shows
    # 0.44 of a 16:9 picture, and its inliers held 0.20-0.24 of the known's
    # cells at agreement 0.47-0.57 (bench/robustness.py, 57 pictures: block
    # recall at tilt 20 0.84 -> 0.89 with many_inliers 40). Coverage separates
    # no unrelated pair: pages of one template cover 0.25, logo templates up to
    # 0.47, and fail on agreement (<= 0.247).
    block_coverage: float = 0.20
    block_agreement: float = 0.45
    review_inliers: int = 16
    review_coverage: float = 0.15
    review_agreement: float = 0.33
    # With at least many_inliers distinct inliers the block floor on agreement
    # is many_block_agreement (the review floor): a 30% crop, a 20-degree tilt
    # or a half-size collage tile agrees on 0.33-0.45 of the shared cells with
    # 60-150 inliers, where unrelated pictures sharing a template or logo
    # (166 inliers) agree on at most 0.247 (bench/local_features.py --short).
    # bench/robustness.py (57 pictures x 26 transforms, 1,500 unrelated corpus
    # pictures, 2026-12-06): block recall crop 20% 0.77 -> 0.89, crop 30%
    # 0.68 -> 0.81, tilt 20 0.67 -> 0.75, collage 3x3 0.65 -> 0.74; no pair of
    # different content reached review or block (README: Local features:
    # recall). 50 inliers gained 0.01-0.07 more and blocked 19 more pairs of
    # near-duplicate corpus pictures; the review floor is not lowered (a
    # template pair sits at 0.247).
    # 40 since 2026-12-07 (60 before): every unrelated pair of the hard set with
    # 30 or more inliers (bench/local_features.py --short: pages of one
    # template, logo templates) agrees on at most 0.247, so the block floor at
    # >= 40 inliers keeps the review floor's margin (1.34x); no unrelated corpus
    # pair came within 0.2 of review. Crops of 30% and tilts of 20 degrees with
    # 40-59 inliers agree on 0.33-0.45 (bench/robustness.py: block recall crop
    # 30% 0.88 -> 0.89, tilt 20 0.79 -> 0.84, with caption 0.89 -> 0.91 and
    # 0.82 -> 0.88). The pairs that moved to block were recoloured drawings
    # (gcompris `lang` pairs): the same content.
    many_inliers: int = 40
    many_block_agreement: float = 0.33
    many_review_agreement: float = 0.33

    def agreement_floors(self, inliers: int) -> tuple[float, float]:
        """(block, review) agreement floors for a verification with `inliers`."""
        if inliers >= self.many_inliers:
            return (
                min(self.block_agreement, self.many_block_agreement),
                min(self.review_agreement, self.many_review_agreement),
            )
        return self.block_agreement, self.review_agreement

    def level(self, verification: Evidence | None) -> Decision | None:
        """BLOCK, REVIEW or None (no evidence) for one verification."""
        if verification is None:
            return None
        v = verification
        block_agreement, review_agreement = self.agreement_floors(v.inliers)
        if (
            v.inliers >= self.block_inliers
            and v.coverage >= self.block_coverage
            and v.agreement >= block_agreement
        ):
            return Decision.BLOCK
        if (
            v.inliers >= self.review_inliers
            and v.coverage >= self.review_coverage
            and v.agreement >= review_agreement
        ):
            return Decision.REVIEW
        return None


DEFAULT_THRESHOLDS = LocalThresholds()
