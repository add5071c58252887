"""Multi-index hashing (MIH) for 256-bit PDQ: range search that reads a
sliver of the index instead of all of it.

Why this structure. A flat scan reads 32 bytes per stored hash per query view
(10 ms a view at 10M). Splitting each hash into 16 chunks of 16 bits, two
hashes within 31 bits must agree to within 1 bit on at least one chunk
(pigeonhole: 16 chunks x 2 flips = 32 > 31). So for each query view we look up,
per chunk, the buckets of its chunk value and of the 16 values one bit away
(16 x 17 = 272 bucket reads), and check every hash found there with an exact
256-bit XOR/popcount. Nothing within 31 bits is missed (EXACT_RADIUS), nothing
farther than the radius is returned. The candidates checked grow as
272 x N / 65,536 for unrelated hashes (41k at 10M): linear, but 1/240 of a scan.
Measured (bench/scale.py, one core, 18 views a batch): p50 0.032 ms a view at
100k, 0.129 ms at 1M, 1.39 ms at 10M (the random reads of the candidates'
hashes dominate); a flat scan is ~10 ms a view at 10M. Past ~10M hashes the
chunks should get longer (e.g. 11 chunks of 23-24 bits probed within 2 bits,
still exact to 31): not done.

Beyond 31 bits (the matcher searches at the widest review threshold, 56), a
hash is found when one of its 16 chunks is within 1 bit of the query's. That
is not guaranteed: a pair 56 bits apart has on average 3.5 flipped bits per
chunk. Measured on clustered data (bench/scale.py): recall 0.980-0.983 of the
pairs within 56 on synthetic families, 0.991 on real photo edits' views; an
entry with several views is usually found by another of them. Exact at 56 would need chunk radius 3
(11k bucket reads and ~1.7M candidates a view at 10M, slower than a flat scan);
probing radius 2 (exact to 47) measured 7x slower (1.2 ms a view at 1M).

Other options, as issue 7 measured them: FAISS IndexBinaryMultiHash 16x16 with
nflip=0 (recall 0.99 at 0.7 ms, 2.6 GB at 10M, and no removal), IVF with 1024
lists (0.98 at 0.8 ms with 64 probes). This layout keeps the exact guarantee
at 31, needs ~120 bytes per hash, removes in place and adds incrementally.

Layout. Hashes live in segments; a segment's postings are, per chunk, its rows
sorted by chunk value plus a 65,537-entry offsets table (a bucket is two array
reads). Recent adds go to a small open segment rebuilt on each add (a few ms);
at SEAL_ROWS it is sealed, and four sealed segments of a size class merge into
one (log-structured, up to MAX_SEGMENT_ROWS), so no add ever rebuilds the whole
index. Removal clears a row's alive flag (the store's change feed is the
source of truth); rows removed are dropped when their segment is next merged
or when a quarter of it is dead. Searches run under a read lock and see either
the old or the new segments: a build holds only the writer mutex. All of an
upload's views are searched in one batch (one pass of numpy calls a segment).

Small indexes need no flat fallback: below ~100k hashes the buckets are nearly
empty and a search costs ~0.03 ms a view, what a flat scan of 50k costs.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from itertools import combinations

import numpy as np

from hashsvc.index import SNAPSHOT_MAGIC, _ReadWriteLock, signal_id

# Multi-index hashing for 256-bit PDQ: see the module docstring for the why.
CHUNKS = 16  # 16 chunks of 16 bits: a chunk value indexes a 65,536-slot offsets table
CHUNK_VALUES = 1 << 16
# Probing every chunk value within 1 bit of the query's finds every hash within
# 16 * (1 + 1) - 1 = 31 bits (pigeonhole); wider matches are found when one of
# their 16 chunks differs by at most 1 bit (measured: bench/scale.py).
PROBE_RADIUS = 1
EXACT_RADIUS = CHUNKS * (PROBE_RADIUS + 1) - 1
# Recent adds sit in an open segment that is rebuilt on every add (16 radix
# sorts of at most SEAL_ROWS rows: a few ms) until it is big enough to seal.
SEAL_ROWS = 1 << 15
# Segments merge four of a size into one (log-structured), up to this size:
# a merge re-sorts at most 4M rows (about 1 s) and never the whole index.
MERGE_FACTOR = 4
MAX_SEGMENT_ROWS = 1 << 22


def _probe_masks(radius: int) -> np.ndarray:
    masks = [0]
    for r in range(1, radius + 1):
        masks += [sum(1 << b for b in bits) for bits in combinations(range(16), r)]
    return np.array(masks, dtype=np.int64)


class _Segment:
    """Immutable hashes and their postings; only `alive` changes (removals).

    Per chunk, `rows` lists the segment's rows sorted by that chunk's value and
    `offsets[v]:offsets[v+1]` is where value v's rows are: a bucket lookup is two
    array reads. 16 x 4 bytes of postings + 32 bytes of hash + 12 bytes of id
    lookup per row.
    """

    def __init__(self, codes: np.ndarray, ids: np.ndarray) -> None:
        n = len(ids)
        self.codes = np.ascontiguousarray(codes, dtype=np.uint8).reshape(n, 32)
        self.words = self.codes.view(np.uint64)  # (n, 4): XOR + popcount per hash
        self.ids = np.ascontiguousarray(ids, dtype=np.int64)
        self.alive = np.ones(n, dtype=bool)
        keys = self.codes.view(np.uint16)  # (n, 16): chunk values
        self.rows = np.empty((CHUNKS, n), dtype=np.int32)
        self.offsets = np.empty((CHUNKS, CHUNK_VALUES + 1), dtype=np.int32)
        for chunk in range(CHUNKS):
            column = keys[:, chunk]
            self.rows[chunk] = np.argsort(column, kind="stable")  # radix sort for uint16
            self.offsets[chunk, 0] = 0
            np.cumsum(np.bincount(column, minlength=CHUNK_VALUES), out=self.offsets[chunk, 1:])
        self.rows_flat = self.rows.reshape(-1)
        self.id_order = np.argsort(self.ids, kind="stable").astype(np.int32)
        self.sorted_ids = self.ids[self.id_order]

    def __len__(self) -> int:
        return len(self.ids)

    def live(self) -> tuple[np.ndarray, np.ndarray]:
        """Codes and ids of the hashes not removed."""
        return self.codes[self.alive], self.ids[self.alive]

    def rows_of(self, lo: int, hi: int) -> np.ndarray:
        """Rows whose id is in [lo, hi)."""
        a, b = np.searchsorted(self.sorted_ids, [lo, hi])
        return self.id_order[a:b]

    def rows_of_ids(self, ids: np.ndarray) -> np.ndarray:
        pos = np.searchsorted(self.sorted_ids, ids)
        pos = pos[pos < len(self.sorted_ids)]
        return self.id_order[pos[np.isin(self.sorted_ids[pos], ids)]]

    def search(self, q_words, q_keys, masks, max_distance):
        """(query no, id, distance) arrays of live hashes within max_distance."""
        n_queries = len(q_words)
        chunk_base = (np.arange(CHUNKS, dtype=np.int64) * (CHUNK_VALUES + 1))[None, :, None]
        slot = chunk_base + (q_keys.astype(np.int64)[:, :, None] ^ masks[None, None, :])
        offsets = self.offsets.reshape(-1)
        starts, ends = offsets[slot].reshape(-1), offsets[slot + 1].reshape(-1)
        lengths = ends - starts
        total = int(lengths.sum())
        if total == 0:
            return None
        # Expand every bucket [start, end) of chunk c into positions of rows_flat.
        row_base = (np.arange(CHUNKS, dtype=np.int64) * len(self))[None, :, None]
        firsts = (starts.reshape(slot.shape) + row_base).reshape(-1)
        nonempty = lengths > 0
        firsts, lengths = firsts[nonempty], lengths[nonempty]
        query_of = np.repeat(np.arange(n_queries), CHUNKS * len(masks))[nonempty]
        run_starts = np.cumsum(lengths) - lengths
        positions = np.arange(total) + np.repeat(firsts - run_starts, lengths)
        rows = np.take(self.rows_flat, positions)
        # Candidates come grouped by query: repeat each query's words over its
        # group rather than gather them (random reads of the hashes dominate).
        per_query = np.bincount(query_of, weights=lengths, minlength=n_queries).astype(np.int64)
        xor = np.take(self.words, rows, axis=0)
        np.bitwise_xor(xor, np.repeat(q_words, per_query, axis=0), out=xor)
        bit_counts = np.bitwise_count(xor)
        distances = bit_counts[:, 0].astype(np.int16)
        for word in range(1, bit_counts.shape[1]):
            distances += bit_counts[:, word]
        keep = (distances <= max_distance) & np.take(self.alive, rows)
        rows, distances = rows[keep], distances[keep]
        cand_q = np.repeat(np.arange(n_queries), per_query)[keep]
        # A hash close in several chunks was found several times.
        _, first = np.unique(cand_q * len(self) + rows, return_index=True)
        return cand_q[first], self.ids[rows[first]], distances[first]


class MultiIndexHash:
    """BinaryIndex's interface for 256-bit hashes, sublinear in their number:
    sealed segments plus one small open segment, all searched by multi-index
    hashing."""

    def __init__(self, bits: int = 256) -> None:
        if bits != CHUNKS * 16:
            raise ValueError(f"multi-index hashing is laid out for {CHUNKS * 16}-bit hashes")
        self.bits = bits
        self._sealed: list[_Segment] = []
        self._open: _Segment | None = None  # recent adds, rebuilt on each add
        self._count = 0
        self._masks = _probe_masks(PROBE_RADIUS)
        self._lock = _ReadWriteLock()  # searches vs. removals and swaps
        # One change at a time; segment builds hold only this, so searches go
        # on against the old segments meanwhile.
        self._writer = threading.Lock()

    def __len__(self) -> int:
        return self._count

    def add(self, ids: Iterable[int], vectors: Iterable[bytes]) -> None:
        ids_arr = np.fromiter(ids, dtype=np.int64)
        if not len(ids_arr):
            return
        vec_arr = np.frombuffer(b"".join(vectors), dtype=np.uint8).reshape(len(ids_arr), -1)
        if vec_arr.shape[1] * 8 != self.bits:
            raise ValueError(f"expected {self.bits}-bit vectors")
        with self._writer:
            with self._lock.writing():
                self._kill(ids_arr)  # re-adding an id replaces it
            parts = [(vec_arr, ids_arr)]
            if self._open is not None:
                parts.insert(0, self._open.live())
            opened = _Segment(
                np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
            )
            sealed = self._sealed
            if len(opened) >= SEAL_ROWS:
                sealed, opened = _merged([*sealed, opened]), None
            with self._lock.writing():
                self._sealed, self._open = sealed, opened
                self._count += len(ids_arr)

    def remove(self, ids: Iterable[int]) -> int:
        ids_arr = np.unique(np.fromiter(ids, dtype=np.int64))
        if not len(ids_arr):
            return 0
        with self._writer, self._lock.writing():
            return self._kill(ids_arr)

    def remove_entry(self, entry_id: int) -> int:
        """Remove every signal of one entry, however many it has."""
        lo, hi = signal_id(entry_id, 0), signal_id(entry_id + 1, 0)
        with self._writer, self._lock.writing():
            removed = 0
            for seg in self._segments():
                rows = seg.rows_of(lo, hi)
                removed += _mark_dead(seg.alive, rows[seg.alive[rows]])
            self._count -= removed
            return removed

    def search(self, queries: list[bytes], max_distance: int) -> list[list[tuple[int, int]]]:
        """For each query, every stored (id, distance) with distance <= max_distance;
        complete up to EXACT_RADIUS, see the module docstring beyond."""
        if not queries:
            return []
        q = np.frombuffer(b"".join(queries), dtype=np.uint8).reshape(len(queries), -1).copy()
        q_words, q_keys = q.view(np.uint64), q.view(np.uint16)
        parts = []
        with self._lock.reading():
            for seg in self._segments():
                found = seg.search(q_words, q_keys, self._masks, max_distance)
                if found is not None:
                    parts.append(found)
        return _per_query(len(queries), parts)

    def save(self, path: str) -> None:
        tmp = f"{path}.tmp"
        with self._lock.reading():
            live = [seg.live() for seg in self._segments()]
        codes = np.concatenate([c for c, _ in live]) if live else np.empty((0, self.bits // 8))
        ids = np.concatenate([i for _, i in live]) if live else np.empty(0, dtype=np.int64)
        with open(tmp, "wb") as f:
            f.write(SNAPSHOT_MAGIC)
            np.save(f, ids)
            np.save(f, codes.astype(np.uint8))
        os.replace(tmp, path)  # a crash mid-write never leaves a torn snapshot

    @classmethod
    def load(cls, path: str, bits: int) -> MultiIndexHash:
        with open(path, "rb") as f:
            if f.read(len(SNAPSHOT_MAGIC)) != SNAPSHOT_MAGIC:
                raise ValueError(f"{path} is not a multi-index hash snapshot")
            ids, codes = np.load(f), np.load(f)
        if codes.shape != (len(ids), bits // 8):
            raise ValueError(f"snapshot {path} does not hold {bits}-bit hashes")
        index = cls(bits)
        step = MAX_SEGMENT_ROWS // MERGE_FACTOR
        index._sealed = [
            _Segment(codes[i : i + step], ids[i : i + step]) for i in range(0, len(ids), step)
        ]
        index._count = len(ids)
        return index

    # -- internals

    def _segments(self) -> list[_Segment]:
        return self._sealed if self._open is None else [*self._sealed, self._open]

    def _kill(self, ids: np.ndarray) -> int:
        removed = 0
        for seg in self._segments():
            rows = seg.rows_of_ids(ids)
            removed += _mark_dead(seg.alive, rows[seg.alive[rows]])
        self._count -= removed
        return removed


def _mark_dead(alive: np.ndarray, rows: np.ndarray) -> int:
    alive[rows] = False
    return len(rows)


def _merged(segments: list[_Segment]) -> list[_Segment]:
    """Merge MERGE_FACTOR segments of one size class into one, repeatedly, and
    rebuild segments that are more than a quarter removed hashes."""
    segments = [
        _Segment(*s.live()) if s.alive.mean() < 0.75 else s for s in segments if s.alive.any()
    ]
    while True:
        by_size: dict[int, list[_Segment]] = {}
        for seg in segments:
            if len(seg) * MERGE_FACTOR <= MAX_SEGMENT_ROWS:
                size_class = int(np.log(max(len(seg), 1) / SEAL_ROWS) / np.log(MERGE_FACTOR))
                by_size.setdefault(max(size_class, 0), []).append(seg)
        group = next((g for g in by_size.values() if len(g) >= MERGE_FACTOR), None)
        if group is None:
            return segments
        group = group[:MERGE_FACTOR]
        live = [s.live() for s in group]
        merged = _Segment(
            np.concatenate([c for c, _ in live]), np.concatenate([i for _, i in live])
        )
        segments = [s for s in segments if all(s is not g for g in group)] + [merged]


def _per_query(n_queries: int, parts: list) -> list[list[tuple[int, int]]]:
    if not parts:
        return [[] for _ in range(n_queries)]
    query_of = np.concatenate([p[0] for p in parts])
    ids = np.concatenate([p[1] for p in parts])
    distances = np.concatenate([p[2] for p in parts]).astype(np.int64)
    order = np.argsort(query_of, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(np.bincount(query_of, minlength=n_queries))])
    ids_list, dist_list = ids[order].tolist(), distances[order].tolist()
    return [
        list(zip(ids_list[lo:hi], dist_list[lo:hi], strict=True))
        for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)
    ]
