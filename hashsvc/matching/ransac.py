"""A seeded RANSAC for a similarity transform (shift, uniform scale, rotation),
compiled with numba.

OpenCV's estimateAffinePartial2D draws its samples from a process-wide random
state, so the same pair of pictures got a different fit from one call to the
next (coverage 0.20 once, 0.38 the next) and the same upload a different
decision. Here every call starts from the same seed and draws from its own
generator: the same points give the same transform and inliers, in any thread,
in any order of calls. It also keeps OpenCV (and the FFmpeg it bundles) out of
the server process, which only verifies.

The model maps a source point p to A p + t with A = [[a, -b], [b, a]]: two
point pairs fix it. The best sample (most inliers within the threshold) is
refined by least squares on its inliers, twice, as OpenCV does with its
Levenberg-Marquardt step.
"""

from __future__ import annotations

import math

import numba
import numpy as np

# Every call starts here: determinism is the point, not secrecy.
SEED = 0x9E3779B97F4A7C15
# Least-squares refinements of the best sample's inliers.
REFINEMENTS = 2


@numba.njit(nogil=True, cache=True, inline="always")
def _next(state: np.ndarray) -> np.uint64:
    """xorshift64* on a one-element state array (the caller's own)."""
    x = state[0]
    x ^= x >> np.uint64(12)
    x ^= x << np.uint64(25)
    x ^= x >> np.uint64(27)
    state[0] = x
    return x * np.uint64(0x2545F4914F6CDD1D)


@numba.njit(nogil=True, cache=True)
def _fit_pair(src, dst, i, j):
    """(a, b, tx, ty) through two point pairs; ok False when the source points coincide."""
    px, py = src[j, 0] - src[i, 0], src[j, 1] - src[i, 1]
    qx, qy = dst[j, 0] - dst[i, 0], dst[j, 1] - dst[i, 1]
    norm = px * px + py * py
    if norm < 1e-12:
        return 0.0, 0.0, 0.0, 0.0, False
    # (qx + i qy) / (px + i py) = a + i b
    a = (qx * px + qy * py) / norm
    b = (qy * px - qx * py) / norm
    tx = dst[i, 0] - (a * src[i, 0] - b * src[i, 1])
    ty = dst[i, 1] - (b * src[i, 0] + a * src[i, 1])
    return a, b, tx, ty, True


@numba.njit(nogil=True, cache=True)
def _count(src, dst, a, b, tx, ty, limit2, mask):
    n = 0
    for k in range(src.shape[0]):
        ex = a * src[k, 0] - b * src[k, 1] + tx - dst[k, 0]
        ey = b * src[k, 0] + a * src[k, 1] + ty - dst[k, 1]
        inside = ex * ex + ey * ey <= limit2
        mask[k] = inside
        if inside:
            n += 1
    return n


@numba.njit(nogil=True, cache=True)
def _least_squares(src, dst, mask):
    """(a, b, tx, ty) minimising the squared error over the masked pairs; ok False if degenerate."""
    n = 0
    sx = sy = dx = dy = 0.0
    for k in range(src.shape[0]):
        if mask[k]:
            n += 1
            sx += src[k, 0]
            sy += src[k, 1]
            dx += dst[k, 0]
            dy += dst[k, 1]
    if n < 2:
        return 0.0, 0.0, 0.0, 0.0, False
    sx, sy, dx, dy = sx / n, sy / n, dx / n, dy / n
    num_a = num_b = den = 0.0
    for k in range(src.shape[0]):
        if mask[k]:
            px, py = src[k, 0] - sx, src[k, 1] - sy
            qx, qy = dst[k, 0] - dx, dst[k, 1] - dy
            num_a += px * qx + py * qy
            num_b += px * qy - py * qx
            den += px * px + py * py
    if den < 1e-12:
        return 0.0, 0.0, 0.0, 0.0, False
    a, b = num_a / den, num_b / den
    return a, b, dx - (a * sx - b * sy), dy - (b * sx + a * sy), True


@numba.njit(nogil=True, cache=True)
def _ransac(src, dst, threshold, max_iterations, confidence, seed):
    n = src.shape[0]
    best = np.zeros(4, np.float64)
    best_mask = np.zeros(n, np.bool_)
    mask = np.zeros(n, np.bool_)
    best_count = 0
    if n < 2:
        return best, best_mask, 0
    limit2 = threshold * threshold
    state = np.full(1, np.uint64(seed), np.uint64)
    needed = max_iterations
    iteration = 0
    while iteration < needed:
        iteration += 1
        i = np.int64(_next(state) % np.uint64(n))
        j = np.int64(_next(state) % np.uint64(n - 1))
        if j >= i:
            j += 1
        a, b, tx, ty, ok = _fit_pair(src, dst, i, j)
        if not ok:
            continue
        count = _count(src, dst, a, b, tx, ty, limit2, mask)
        if count > best_count:
            best_count = count
            best[0], best[1], best[2], best[3] = a, b, tx, ty
            best_mask[:] = mask
            # iterations that find an all-inlier pair with the asked confidence
            share = count / n
            miss = 1.0 - share * share
            if miss <= 0.0:
                needed = iteration
            elif miss < 1.0:
                enough = math.log(1.0 - confidence) / math.log(miss)
                if enough < needed:
                    needed = max(iteration, int(math.ceil(enough)))
    if best_count < 2:
        return best, best_mask, best_count
    for _ in range(REFINEMENTS):
        a, b, tx, ty, ok = _least_squares(src, dst, best_mask)
        if not ok:
            break
        count = _count(src, dst, a, b, tx, ty, limit2, mask)
        if count < best_count:
            break  # the refinement lost support: keep the sampled fit
        best_count = count
        best[0], best[1], best[2], best[3] = a, b, tx, ty
        best_mask[:] = mask
    return best, best_mask, best_count


def similarity_ransac(
    src: np.ndarray,
    dst: np.ndarray,
    threshold: float,
    max_iterations: int,
    confidence: float,
    seed: int = SEED,
) -> tuple[np.ndarray | None, np.ndarray]:
    """The similarity transform mapping src (N, 2) onto dst (N, 2) that most pairs agree with
    within `threshold` pixels: (2, 3) float64 matrix [[a, -b, tx], [b, a, ty]] and the inlier
    mask, or (None, all-False mask) when fewer than two points fit. Same input, same answer."""
    src = np.ascontiguousarray(src, dtype=np.float64).reshape(-1, 2)
    dst = np.ascontiguousarray(dst, dtype=np.float64).reshape(-1, 2)
    if src.shape != dst.shape:
        raise ValueError(f"src {src.shape} and dst {dst.shape} differ")
    model, mask, count = _ransac(
        src,
        dst,
        float(threshold),
        int(max_iterations),
        float(confidence),
        np.uint64(seed & (2**64 - 1) or 1),
    )
    if count < 2:
        return None, np.zeros(len(src), bool)
    a, b, tx, ty = model
    return np.array([[a, -b, tx], [b, a, ty]]), mask


def inverted(matrix: np.ndarray) -> np.ndarray:
    """The inverse of a (2, 3) affine matrix (cv2.invertAffineTransform without OpenCV)."""
    linear = np.linalg.inv(matrix[:, :2])
    return np.hstack([linear, -(linear @ matrix[:, 2:3])])
