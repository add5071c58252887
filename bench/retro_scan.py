"""The retro-hunt's PDQ comparison alone: N new hashes against many history
views, "is any within r" per view, by the flat scan (every pair,
hashsvc/index/flat_scan.py), the bound scan (hashsvc/index/bound_scan.py,
each group size) and Match's multi-index over the new hashes
(hashsvc/index/multi_index.py, exact up to 31 bits); the same answers are
checked. CPU time of the calling thread (the scans run on it).

    .venv/bin/python bench/retro_scan.py            # 10,000 hashes, 36,000 views
    .venv/bin/python bench/retro_scan.py --short    # 2,000 views, fewer radii (CI)

Measured (10,000 random hashes, 36,000 random views with 37 near copies; 2
cores under a load of ~32 from other work; views/s on one core, * the group
size chosen for the radius; the same answers everywhere):
  r=31: flat 639k; bound 16*: 5,223k (8.2x), 8: 4.0x, 6: 4.4x, 4: 3.1x;
        chunk probes (the multi-index over the new hashes) 327k (0.5x);
        Match's multi-index (with its Python around it) 99k (0.2x)
  r=40: flat 636k; bound 8*: 3,973k (6.2x), 16: 5.6x, 6: 4.5x
  r=48: flat 636k; bound 8*: 3,775k (5.9x), 6: 4.4x, 16: 0.4x
  r=56: flat 638k; bound 6*: 2,337k (3.7x), 4: 3.1x, 8: 1.3x, 16: 0.1x
  r=64: flat 547k; bound 4*: 1,770k (3.2x), 6: 0.7x
(Tables of bytes, 64 groups a row, before the 4-bit values: 2.1x at 56.)
"""

from __future__ import annotations

import argparse
import time

import numba
import numpy as np

from hashsvc.index.bound_scan import BoundScan, group_size_for
from hashsvc.index.flat_scan import FlatScan
from hashsvc.index.mih_scan import _popcount
from hashsvc.index.multi_index import EXACT_RADIUS, MultiIndexHash

CHUNKS = 16


class ChunkProbes:
    """The multi-index the issue suggested, over the NEW hashes: 16 chunks
    of 16 bits, one bucket table (CSR over 65,536 values) per chunk; a view
    probes each chunk's value and its 16 one-bit neighbours (exact for
    r <= 31: some chunk differs in at most floor(r / 16) = 1 bit) and
    compares the hashes found, until one is within r. Measured here against
    the bound scan; not used by the server."""

    def __init__(self, hashes: np.ndarray) -> None:
        self.words = np.ascontiguousarray(hashes).view("<u8").reshape(-1, 4)
        chunks = np.ascontiguousarray(hashes).view(">u2").astype(np.int64)  # (n, 16)
        self.offsets = np.zeros((CHUNKS, 65_537), dtype=np.int32)
        self.rows = np.zeros((CHUNKS, len(hashes)), dtype=np.int32)
        for c in range(CHUNKS):
            order = np.argsort(chunks[:, c], kind="stable")
            self.rows[c] = order
            self.offsets[c, 1:] = np.cumsum(np.bincount(chunks[:, c], minlength=65_536))

    def any_within(self, views: np.ndarray, radius: int) -> np.ndarray:
        if radius > 31:
            raise ValueError("exact only up to 31 bits")
        view_chunks = np.ascontiguousarray(views).view(">u2").astype(np.int64)
        view_words = np.ascontiguousarray(views).view("<u8").reshape(-1, 4)
        return _probe(view_chunks, view_words, self.offsets, self.rows, self.words, radius)


@numba.njit(nogil=True, cache=True)
def _probe(view_chunks, view_words, offsets, rows, words, radius):  # pragma: no cover
    n = view_chunks.shape[0]
    out = np.zeros(n, dtype=np.bool_)
    for v in range(n):
        for c in range(CHUNKS):
            if out[v]:
                break
            for flip in range(17):
                value = view_chunks[v, c] ^ ((1 << (flip - 1)) if flip else 0)
                for p in range(offsets[c, value], offsets[c, value + 1]):
                    r = rows[c, p]
                    d = (
                        _popcount(view_words[v, 0] ^ words[r, 0])
                        + _popcount(view_words[v, 1] ^ words[r, 1])
                        + _popcount(view_words[v, 2] ^ words[r, 2])
                        + _popcount(view_words[v, 3] ^ words[r, 3])
                    )
                    if d <= radius:
                        out[v] = True
                        break
                if out[v]:
                    break
    return out


def near_copies(hashes: np.ndarray, views: np.ndarray, rng, every: int = 997) -> None:
    """Every `every`-th view a copy of a hash with a few bytes changed."""
    for k in range(0, len(views), every):
        views[k] = hashes[k % len(hashes)]
        views[k, : k % 8] ^= 0x5A


def timed(scan, views: np.ndarray, radius: int) -> tuple[np.ndarray, float]:
    started = time.thread_time()
    found = scan(views, radius)
    return found, time.thread_time() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--short", action="store_true")
    parser.add_argument("--hashes", type=int, default=10_000)
    parser.add_argument("--views", type=int, default=0)
    args = parser.parse_args()
    views_count = args.views or (2_000 if args.short else 36_000)
    radii = (31, 56) if args.short else (31, 40, 48, 56, 64)
    rng = np.random.default_rng(1)
    hashes = rng.integers(0, 256, (args.hashes, 32), dtype=np.uint8)
    views = rng.integers(0, 256, (views_count, 32), dtype=np.uint8)
    near_copies(hashes, views, rng)
    flat = FlatScan(hashes)
    flat.any_within(views[:8], 56)  # compiled
    mih = MultiIndexHash()
    mih.add(range(len(hashes)), [h.tobytes() for h in hashes])
    for radius in radii:
        expected, flat_seconds = timed(flat.any_within, views, radius)
        line = [f"r={radius}: flat {views_count / flat_seconds:,.0f} views/s"]
        for size in sorted({4, 6, 8, 16, group_size_for(radius)}):
            bound = BoundScan(hashes, size)
            bound.any_within(views[:8], radius)
            found, seconds = timed(bound.any_within, views, radius)
            if not np.array_equal(found, expected):
                raise SystemExit(f"bound scan (groups of {size}) differs at radius {radius}")
            chosen = "*" if size == group_size_for(radius) else ""
            line.append(
                f"bound {size}{chosen} {views_count / seconds:,.0f} ({flat_seconds / seconds:.1f}x)"
            )
        if radius <= 31:
            probes = ChunkProbes(hashes)
            probes.any_within(views[:8], radius)
            found, seconds = timed(probes.any_within, views, radius)
            if not np.array_equal(found, expected):
                raise SystemExit(f"chunk probes differ at radius {radius}")
            rate = f"{views_count / seconds:,.0f} ({flat_seconds / seconds:.1f}x)"
            line.append(f"chunk probes {rate}")
        if radius <= EXACT_RADIUS:

            def mih_any(v, r):
                return np.array([bool(hits) for hits in mih.search([x.tobytes() for x in v], r)])

            found, seconds = timed(mih_any, views, radius)
            if not np.array_equal(found, expected):
                raise SystemExit(f"multi-index differs at radius {radius}")
            line.append(f"multi-index {views_count / seconds:,.0f} ({flat_seconds / seconds:.1f}x)")
        print("; ".join(line) + f"; views with a hash within: {int(expected.sum())}")


if __name__ == "__main__":
    main()
