"""Geometric verification of a local-feature candidate: are the keypoints an
upload shares with a known picture placed by one plausible similarity
transform (shift, uniform scale, rotation), and do they cover enough of the
known picture to be evidence?

Descriptor votes alone are not evidence: flat, dark and patterned pictures
share hundreds of look-alike descriptors. A match here needs, in order:
mutual nearest neighbours that pass Lowe's ratio test; a similarity transform
found by RANSAC with a tight reprojection error; a plausible scale; and
inliers at distinct positions (a repeated pattern maps many keypoints to one
place) spread over the known picture (coverage, grid cells). The thresholds
that turn a Verification into block or review are LocalThresholds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numba
import numpy as np
from numba import types
from numba.extending import intrinsic

from hashsvc.matching.local_thresholds import (  # noqa: F401 - re-exported for callers
    DEFAULT_THRESHOLDS,
    LocalThresholds,
)
from hashsvc.matching.ransac import inverted, similarity_ransac
from hashsvc.media.local_features import LocalFeatures

# Lowe's ratio: the best match must be clearly better than the second best.
RATIO = 0.85
# RANSAC reprojection error, in pixels of the query as extracted (<= 640 px
# on the long side): tight, so chance alignments of noise rarely agree.
REPROJECTION_PX = 5.0
RANSAC_ITERATIONS = 2000
RANSAC_CONFIDENCE = 0.995
# Query size / known size: a copy shown smaller than this or blown up more
# is not a plausible re-upload, but it is what a degenerate fit looks like.
MIN_SCALE = 0.15
MAX_SCALE = 6.0
# Fewer inliers than this is no consistent transform at all (None).
MIN_CONSISTENT_INLIERS = 8
# Inlier spread is measured on a COVERAGE_GRID x COVERAGE_GRID grid.
COVERAGE_GRID = 12
# Two inliers closer than this (pixels) count as one position.
DISTINCT_PX = 3.0
# Keypoints closer than this to a picture's edge are never found (ORB's
# edgeThreshold and patch size, 31 px at its finest level): agreement is
# counted where both pictures could hold a keypoint, away from both edges.
EDGE_PX = 31.0
# ORB's pyramid: level n is the picture shrunk by PYRAMID_SCALE ** n
# (LocalFeatureLimits.pyramid_scale). An upload shown `scale` times larger than
# the known picture has detail finer than the known's finest level (0) where its
# keypoints' level is more than half a step under log(scale): those keypoints
# have no counterpart in the known's pyramid (_beyond_known), and cells only
# they fill can never agree.
PYRAMID_SCALE = 1.2


@dataclass(frozen=True)
class Verification:
    """Why a candidate matched: counted on inliers at distinct positions."""

    inliers: int
    # Share of the KNOWN picture covered by the inliers: of the cells of a
    # COVERAGE_GRID x COVERAGE_GRID grid that hold its keypoints, those that
    # hold an inlier (see _coverage).
    coverage: float
    # The same share on the query (small for a tile of a collage).
    query_coverage: float
    # Query size / known size, in the pictures as extracted.
    scale: float
    # Rotation from the known picture to the query, degrees counter-clockwise.
    angle: float
    # Cells of a COVERAGE_GRID x COVERAGE_GRID grid over the known picture
    # holding at least one inlier.
    cells: int
    # Of the cells of the known picture that both pictures show (the query's
    # frame mapped into the known) and where either has keypoints, the share
    # that hold an inlier (see _agreement). Near 1 for a crop, a tilt or a
    # collage tile; low when only a shared logo, frame or page template agrees
    # and the rest of both pictures differs.
    agreement: float


# LocalThresholds live apart (local_thresholds.py): the policy and the CLI read them without
# compiling (or importing) this module's numba code.


@intrinsic
def _popcount(typingctx, x):
    """The CPU's population count (LLVM ctpop) for a 64-bit word."""
    sig = types.uint64(types.uint64)

    def codegen(context, builder, signature, args):
        return builder.ctpop(args[0])

    return sig, codegen


@numba.njit(nogil=True, cache=True)
def _nearest(query: np.ndarray, known: np.ndarray):
    """One pass over all Hamming distances (words of 64 bits): per query its
    best and second-best distance and best known; per known its best query.
    Compiled: OpenCV's BFMatcher both ways cost ~5 ms for 450 x 450 keypoints,
    this ~0.3 ms, and it runs without the GIL."""
    nq, nk, words = query.shape[0], known.shape[0], query.shape[1]
    best = np.full(nq, 1 << 30, np.int64)
    second = np.full(nq, 1 << 30, np.int64)
    best_known = np.full(nq, -1, np.int64)
    known_best = np.full(nk, 1 << 30, np.int64)
    known_best_query = np.full(nk, -1, np.int64)
    for i in range(nq):
        for j in range(nk):
            d = np.int64(0)
            for w in range(words):
                d += np.int64(_popcount(query[i, w] ^ known[j, w]))
            if d < best[i]:
                second[i] = best[i]
                best[i] = d
                best_known[i] = j
            elif d < second[i]:
                second[i] = d
            if d < known_best[j]:
                known_best[j] = d
                known_best_query[j] = i
    return best, second, best_known, known_best_query


def _words(descriptors: np.ndarray) -> np.ndarray:
    """Descriptors as 64-bit words, zero-padded (zeros add no distance)."""
    n, d = descriptors.shape
    padded = -d % 8
    if padded:
        descriptors = np.concatenate([descriptors, np.zeros((n, padded), np.uint8)], axis=1)
    return np.ascontiguousarray(descriptors).view(np.uint64)


def _matches(query: np.ndarray, known: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (query, known): mutual nearest neighbours passing the ratio test."""
    if len(query) < 2 or len(known) < 2:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    best, second, best_known, known_best_query = _nearest(_words(query), _words(known))
    q_idx = np.arange(len(query))
    ok = (best < RATIO * second) & (known_best_query[best_known] == q_idx)
    return q_idx[ok], best_known[ok]


def _distinct(points: np.ndarray) -> np.ndarray:
    """Mask keeping the first of the points closer than DISTINCT_PX to one another."""
    cells = np.floor(points / DISTINCT_PX).astype(np.int64)
    _, first = np.unique(cells, axis=0, return_index=True)
    mask = np.zeros(len(points), bool)
    mask[first] = True
    return mask


def _cell_ids(points: np.ndarray, width: int, height: int) -> np.ndarray:
    grid = COVERAGE_GRID
    cx = np.clip((points[:, 0] * grid / width).astype(np.int64), 0, grid - 1)
    cy = np.clip((points[:, 1] * grid / height).astype(np.int64), 0, grid - 1)
    return np.unique(cy * grid + cx)


def _coverage(inliers: np.ndarray, features: LocalFeatures) -> tuple[float, int]:
    """(share, count) of the picture's cells with keypoints that hold an inlier.

    Of the cells with keypoints, not of all cells: a logo in a corner, a
    shared page heading or the frame of a template put inliers in a few cells
    of a picture whose content fills most of them; a crop or a collage tile
    keeps most of them. (A convex hull would count the empty middle between a
    heading and a table at the foot of the page as covered.)"""
    content = _cell_ids(features.points, features.width, features.height)
    held = _cell_ids(inliers, features.width, features.height)
    return len(held) / max(1, len(content)), len(held)


def _edge(features: LocalFeatures) -> float:
    """The band along a picture's edges where it holds no keypoints (EDGE_PX),
    at most a quarter of its shorter side."""
    return min(EDGE_PX, 0.25 * min(features.width, features.height))


def _beyond_known(query: LocalFeatures, scale: float) -> np.ndarray:
    """Mask of the query's keypoints finer than the known picture's finest
    pyramid level, for a query shown `scale` times the known's size: at level
    n a query keypoint's patch is PYRAMID_SCALE ** n / scale of the known's
    finest, and under PYRAMID_SCALE ** -0.5 (half a level) no level of the
    known holds it. None without levels (a version 1 blob): nothing left out."""
    if query.levels is None or scale <= 1.0:
        return np.zeros(len(query), bool)
    finest_kept = math.log(scale) / math.log(PYRAMID_SCALE) - 0.5
    return query.levels.astype(np.float64) < finest_kept


def _agreement(
    matrix: np.ndarray, inliers: np.ndarray, query: LocalFeatures, known: LocalFeatures
) -> float:
    """Share of the cells both pictures show and have content in that agree.

    Both pictures are taken without their edge bands (_edge): neither has a
    keypoint there, so a cell there can never agree. Counted, they held a
    small upload to its middle strip (a 300 px picture cut by 30% is 75 px
    high: 13 px of it away from ORB's 31 px bands) and an upload shown larger
    than the known picture to a frame shrunk by its bands. The query's keypoints
    finer than anything the known picture could hold (_beyond_known) are left
    out of the cells compared; the known's keypoints all count, and the query's
    at comparable levels, so other content in a shared frame still disagrees."""
    forward = matrix.astype(np.float64)
    inverse = inverted(forward)
    q_edge, k_edge = _edge(query), _edge(known)
    # known keypoints that land inside the query's frame, away from its edges
    mapped = known.points @ forward[:, :2].T + forward[:, 2]
    shown = (
        (mapped[:, 0] >= q_edge)
        & (mapped[:, 0] <= query.width - q_edge)
        & (mapped[:, 1] >= q_edge)
        & (mapped[:, 1] <= query.height - q_edge)
    )
    # query keypoints that land inside the known's frame (away from its edges), in known pixels
    back = query.points @ inverse[:, :2].T + inverse[:, 2]
    inside = (back[:, 0] >= k_edge) & (back[:, 0] <= known.width - k_edge)
    inside &= (back[:, 1] >= k_edge) & (back[:, 1] <= known.height - k_edge)
    inside &= ~_beyond_known(query, math.hypot(forward[0, 0], forward[1, 0]))
    both = np.concatenate([known.points[shown], back[inside].astype(np.float32)])
    comparable = _cell_ids(both, known.width, known.height)
    held = _cell_ids(inliers, known.width, known.height)
    return len(np.intersect1d(held, comparable)) / max(1, len(comparable))


def verify(
    query: LocalFeatures, known: LocalFeatures, min_matches: int = MIN_CONSISTENT_INLIERS
) -> Verification | None:
    """The transform that maps `known` into `query`, with its evidence; None
    when the descriptors agree on no plausible, consistent transform, or on
    fewer than `min_matches` mutual matches (a caller that needs N inliers
    skips RANSAC where fewer than N descriptors could be inliers)."""
    if query.algorithm != known.algorithm or query.descriptor_bytes != known.descriptor_bytes:
        return None
    q_idx, k_idx = _matches(query.descriptors, known.descriptors)
    if len(q_idx) < max(MIN_CONSISTENT_INLIERS, min_matches):
        return None
    src = known.points[k_idx].astype(np.float32)
    dst = query.points[q_idx].astype(np.float32)
    # seeded (hashsvc/matching/ransac.py): the same pair, the same answer
    matrix, mask = similarity_ransac(
        src, dst, REPROJECTION_PX, RANSAC_ITERATIONS, RANSAC_CONFIDENCE
    )
    if matrix is None:
        return None
    a, b = float(matrix[0, 0]), float(matrix[1, 0])
    scale = math.hypot(a, b)
    if not (MIN_SCALE <= scale <= MAX_SCALE) or not math.isfinite(scale):
        return None
    if int(mask.sum()) < MIN_CONSISTENT_INLIERS:
        return None
    inlier = mask.ravel().astype(bool)
    src, dst = src[inlier], dst[inlier]
    # Count a place once, on both sides: many keypoints of a repeated pattern
    # (or of one blob at several pyramid levels) landing on one spot are one.
    keep = _distinct(src)
    src, dst = src[keep], dst[keep]
    keep = _distinct(dst)
    src, dst = src[keep], dst[keep]
    if len(src) < MIN_CONSISTENT_INLIERS:
        return None
    coverage, cells = _coverage(src, known)
    query_coverage, _ = _coverage(dst, query)
    agreement = _agreement(matrix, src, query, known)
    return Verification(
        inliers=len(src),
        coverage=coverage,
        query_coverage=query_coverage,
        scale=scale,
        # image y points down: a counter-clockwise turn on screen is a negative
        # angle in matrix terms
        angle=-math.degrees(math.atan2(b, a)),
        cells=cells,
        agreement=agreement,
    )
