"""The fine level of the visual-word assignment (hashsvc/index/local_features.py), compiled.

numpy compared each descriptor with its coarse word's 64 fine centroids through a gathered
(n, 64, words) array, an xor, a popcount and a sum with a dtype change: ~18 ms of CPU for a
picture's 500 descriptors, more than the ORB extraction itself. The same loop here is one pass
without temporaries (~0.2 ms), and runs without the GIL. Ties go to the first centroid, as
numpy's argmin, so a word is the same whichever way it was assigned.
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
