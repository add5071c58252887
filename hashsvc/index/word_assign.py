"""The visual-word assignment (Vocabulary.assign in hashsvc/index/vocabulary.py), compiled.

Fine level: numpy compared each descriptor with its coarse word's 64 fine centroids through a
gathered (n, 64, words) array, an xor, a popcount and a sum with a dtype change (1.5 ms of CPU
for a picture's 500 descriptors); one pass without temporaries here takes ~0.1 ms.

Coarse level: FAISS's flat binary search ran on OpenMP threads. faiss.omp_set_num_threads(1)
holds only for the thread that calls it (the server's main thread), so every gRPC thread used a
pool of its own, and on a loaded machine its spinning threads made one search ~360 ms of wall
time (cProfile of core.match). Brute force over the 1024 centroids here: ~0.4 ms of CPU, one
thread, without the GIL, the centroids transposed so the compiler vectorises the scan.

Ties go to the first centroid at both levels, as numpy's argmin and FAISS did, so a word is the
same whichever way it was assigned (tests/test_local_cost.py).
"""

from __future__ import annotations

import numba
import numpy as np
from numba import types
from numba.extending import intrinsic


@intrinsic
def _popcount(typingctx, x):
    """The CPU's population count (LLVM ctpop) for a 64-bit word."""
    sig = types.uint64(types.uint64)

    def codegen(context, builder, signature, args):
        return builder.ctpop(args[0])

    return sig, codegen


@numba.njit(nogil=True, cache=True)
def nearest_fine(descriptors: np.ndarray, coarse: np.ndarray, fine: np.ndarray) -> np.ndarray:
    """Per descriptor (n, words) uint64 with coarse word coarse[i]: the index of the nearest of
    fine[coarse[i]] (C, F, words) uint64 by Hamming distance, the first on a tie."""
    n, n_fine, words = descriptors.shape[0], fine.shape[1], descriptors.shape[1]
    out = np.empty(n, np.int64)
    for i in range(n):
        centroids = fine[coarse[i]]
        best, best_f = np.int64(1 << 30), np.int64(0)
        for f in range(n_fine):
            d = np.int64(0)
            for w in range(words):
                d += np.int64(_popcount(descriptors[i, w] ^ centroids[f, w]))
            if d < best:
                best, best_f = d, f
        out[i] = best_f
    return out


@numba.njit(nogil=True, cache=True)
def nearest_coarse(descriptors: np.ndarray, coarse_by_lane: np.ndarray) -> np.ndarray:
    """Per descriptor (n, words) uint64: the index of the nearest coarse centroid by Hamming
    distance, the first on a tie (as FAISS's flat binary search gave). The centroids come
    transposed, (words, C) uint64: the inner loop then runs over contiguous centroids, which
    LLVM vectorises (0.37 ms instead of 0.71 for 500 descriptors and 1024 centroids)."""
    n, words, n_coarse = descriptors.shape[0], coarse_by_lane.shape[0], coarse_by_lane.shape[1]
    out = np.empty(n, np.int64)
    distances = np.empty(n_coarse, np.int64)
    for i in range(n):
        distances[:] = 0
        for w in range(words):
            lane = descriptors[i, w]
            centroids = coarse_by_lane[w]
            for c in range(n_coarse):
                distances[c] += np.int64(_popcount(lane ^ centroids[c]))
        out[i] = np.argmin(distances)  # the first of equal ones
    return out
