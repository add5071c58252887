"""Multi-index hashing (MIH) for 256-bit PDQ: range search that reads a
sliver of the index instead of all of it.

Why this structure. A flat scan reads 32 bytes per stored hash per query view
(10 ms a view at 10M). Each hash is cut into 11 chunks (3 of 24 bits, 8 of
23). Two hashes within 32 bits agree to within 2 bits on at least one chunk
(pigeonhole: 11 chunks x 3 flips = 33 > 32). So for each query view we look up,
per chunk, every stored hash whose chunk is within 2 bits of the query's, and
check each one found with an exact 256-bit XOR/popcount. Nothing within 32 bits
is missed (EXACT_RADIUS), nothing farther than the radius is returned.

Postings. Per chunk, a segment's rows are sorted by the chunk's top 16-21
bits (more for bigger segments: an offsets table of 2**bits + 1 entries, a
bucket is two array reads) and each posting keeps the chunk's other bits beside
it. A probe reads the buckets of every prefix within 2 bits of the query's
(137-232 a chunk) and keeps the postings whose whole chunk is within 2 bits:
11 x 232 = 2,552 short bucket reads a view at 10M and ~3,600 candidates whose
hashes are read and compared (the earlier layout, 16 chunks of 16 bits probed
within 1 bit, compared ~41,000). The loop is compiled (hashsvc/index/mih_scan.py):
as numpy passes it cost several times more. About 120 bytes per hash: 32 of
hash, 11 x 6 of postings, 21 of ids and removal flags, and the offsets tables.

Beyond 32 bits (the matcher searches at the widest review threshold, 56), a
hash is found when one of its chunks is close enough to the query's; that is
not guaranteed (a pair 56 bits apart has ~5 flips a chunk). The review-band
search (config `pdq_review_search`, REVIEW_SEARCHES below) sets how close:
by default ("balanced") the same buckets as an exact search are read and a
third flip in a chunk's low bits is accepted, for 15-25% more time.

Other options, as issue 7 measured them: FAISS IndexBinaryMultiHash 16x16 with
nflip=0 (recall 0.99 at 0.7 ms, 2.6 GB at 10M, and no removal), IVF with 1024
lists (0.98 at 0.8 ms with 64 probes). This layout is exact at the matching
threshold, removes in place and adds incrementally.

Segments. Hashes live in segments. Recent adds go to a small open segment
rebuilt on each add (a few ms); at SEAL_ROWS it is sealed, and four sealed
segments of a size class merge into one (log-structured, up to
MAX_SEGMENT_ROWS), so no add ever rebuilds the whole index. Removal clears a
row's alive flag (the store's change feed is the source of truth); rows
removed are dropped when their segment is next merged or when a quarter of it
is dead. Searches run under a read lock and see either the old or the new
segments: a build holds only the writer mutex. All of an upload's views are
searched in one call a segment.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Iterable
from itertools import combinations

import numpy as np

from hashdb.columns import unique_ids
from hashsvc.index.binary import (
    SNAPSHOT_MAGIC,
    SNAPSHOT_MAGIC_SEGMENTS,
    _ReadWriteLock,
    hash_matrix,
    id_array,
    signal_id,
)
from hashsvc.index.mih_scan import build_postings, chunk_values, scan_segment

# Chunk lengths in bits, in hash bit order (most significant bit of byte 0
# first): 11 chunks make radius 2 probes exact to 32 bits (see above).
CHUNK_BITS = (24, 24, 24, 23, 23, 23, 23, 23, 23, 23, 23)
CHUNK_STARTS = tuple(int(s) for s in np.cumsum((0, *CHUNK_BITS[:-1])))
CHUNKS = len(CHUNK_BITS)
# A chunk's top bits pick its bucket (an offsets table of 2**bits + 1), the
# rest are kept in the posting. The split follows the segment's size so that
# buckets hold a few postings (2-5 from 64k rows up): scanning long buckets cost
# more than reading more, shorter ones (measured at 1M and 10M), up to 2**21
# offsets (8 MB a chunk) at 8M rows and more.
MIN_PREFIX_BITS, MAX_PREFIX_BITS = 16, 21
ROWS_PER_BUCKET_BITS = 2
PROBE_RADIUS = 2
EXACT_RADIUS = CHUNKS * (PROBE_RADIUS + 1) - 1
# Searches wider than EXACT_RADIUS (the review band) can't be exact: a pair
# 56 bits apart has ~5 flips a chunk. Config `pdq_review_search` picks (prefix
# flips, chunk flips) probed: "balanced" reads the same buckets as an exact
# search and accepts a third flip in a chunk's low bits (+15-25% search time),
# "thorough" reads every bucket within 3 (5x). Measured at 1M (bench/scale.py,
# share of pairs within 56 found, synthetic / real edits; of entries):
# fast 0.94 / 0.980; 0.995, balanced 0.989 / 0.994; 0.999, thorough 0.998 /
# 0.999; 1.000.
REVIEW_SEARCHES = {"fast": (2, 2), "balanced": (2, 3), "thorough": (3, 3)}
DEFAULT_REVIEW_SEARCH = "balanced"
MAX_PROBE_RADIUS = 3
# Recent adds sit in an open segment that is rebuilt on every add (11 counting
# sorts of at most SEAL_ROWS rows: a few ms) until it is big enough to seal.
SEAL_ROWS = 1 << 15
# Segments merge four of a size into one (log-structured), up to this size: a
# merge re-sorts at most 16M rows (a few seconds, in the writer, while searches
# go on) and never the whole index.
MERGE_FACTOR = 4
MAX_SEGMENT_ROWS = 1 << 24


@functools.cache
def _chunk_masks(prefix_bits: int | None = None) -> np.ndarray:
    """(chunks, 4) uint64: each chunk's bits (or its top prefix_bits) in the
    words of a hash."""
    masks = np.zeros((CHUNKS, 256), dtype=np.uint8)
    for chunk, (start, length) in enumerate(zip(CHUNK_STARTS, CHUNK_BITS, strict=True)):
        masks[chunk, start : start + (prefix_bits or length)] = 1
    return np.ascontiguousarray(np.packbits(masks, axis=1).view(np.uint64))


def _prefix_bits(rows: int) -> int:
    return min(MAX_PREFIX_BITS, max(MIN_PREFIX_BITS, rows.bit_length() - ROWS_PER_BUCKET_BITS))


@functools.cache
def _prefix_probes(prefix_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Every prefix flip mask within the widest probe radius, fewest flips first."""
    masks, flips = [0], [0]
    for r in range(1, MAX_PROBE_RADIUS + 1):
        for bits in combinations(range(prefix_bits), r):
            masks.append(sum(1 << b for b in bits))
            flips.append(r)
    return np.array(masks, dtype=np.int64), np.array(flips, dtype=np.int64)


def _aligned_words(codes: np.ndarray) -> np.ndarray:
    """(n, 4) uint64 copy of (n, 32) uint8 hashes, aligned for the scan."""
    words = np.empty((len(codes), 4), dtype=np.uint64)
    words.view(np.uint8)[:] = codes.reshape(len(codes), 32)
    return words


class _Query:
    """A batch of query hashes as the scan reads them."""

    def __init__(self, codes: np.ndarray) -> None:
        self.words = _aligned_words(codes)
        self.chunks = np.empty((len(codes), CHUNKS), dtype=np.int64)
        chunk_values(np.ascontiguousarray(codes), _CHUNK_STARTS, _CHUNK_BITS, self.chunks)


class _Segment:
    """Immutable hashes and their postings; only `alive` changes (removals).

    Per chunk, `rows` lists the segment's rows sorted by the chunk's top
    `prefix_bits`, `offsets[p]:offsets[p+1]` is where prefix p's rows are, and
    `suffixes` holds each posting's other chunk bits (a bucket is scanned on
    them before any row's hash is read).
    """

    def __init__(self, codes: np.ndarray, ids: np.ndarray) -> None:
        n = len(ids)
        if n > MAX_SEGMENT_ROWS:
            raise ValueError(f"a segment holds at most {MAX_SEGMENT_ROWS} rows")
        self.words = _aligned_words(codes)
        self.codes = self.words.view(np.uint8)
        self.ids = np.ascontiguousarray(ids, dtype=np.int64)
        self.alive = np.ones(n, dtype=bool)
        self.prefix_bits = _prefix_bits(n)
        self.rows = np.empty((CHUNKS, n), dtype=np.int32)
        self.suffixes = np.empty((CHUNKS, n), dtype=np.uint16)
        self.offsets = np.empty((CHUNKS, (1 << self.prefix_bits) + 1), dtype=np.int32)
        for chunk in range(CHUNKS):
            build_postings(
                self.codes,
                CHUNK_STARTS[chunk],
                CHUNK_BITS[chunk],
                self.prefix_bits,
                self.offsets[chunk],
                self.rows[chunk],
                self.suffixes[chunk],
            )
        self.id_order = np.argsort(self.ids, kind="stable").astype(np.int32)
        self.sorted_ids = self.ids[self.id_order]

    # What a snapshot keeps of a segment, besides prefix_bits and alive.
    SAVED = ("words", "ids", "offsets", "rows", "suffixes", "id_order", "sorted_ids")

    def arrays(self) -> list[np.ndarray]:
        return [getattr(self, name) for name in self.SAVED]

    @classmethod
    def from_arrays(cls, prefix_bits: int, alive: np.ndarray, *arrays: np.ndarray) -> _Segment:
        seg = cls.__new__(cls)
        seg.prefix_bits, seg.alive = prefix_bits, alive
        for name, array in zip(cls.SAVED, arrays, strict=True):
            setattr(seg, name, array)
        n = len(seg.ids)
        layout = {
            "words": ((n, 4), np.uint64),
            "ids": ((n,), np.int64),
            "offsets": ((CHUNKS, (1 << prefix_bits) + 1), np.int32),
            "rows": ((CHUNKS, n), np.int32),
            "suffixes": ((CHUNKS, n), np.uint16),
            "id_order": ((n,), np.int32),
            "sorted_ids": ((n,), np.int64),
        }
        for name, (shape, dtype) in layout.items():
            array = getattr(seg, name)
            if array.shape != shape or array.dtype != dtype:
                raise ValueError(f"snapshot segment array {name} is {array.dtype}{array.shape}")
        if alive.shape != (n,) or alive.dtype != bool:
            raise ValueError("snapshot segment removal flags do not fit its rows")
        seg.codes = seg.words.view(np.uint8)
        return seg

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
        inside = pos < len(self.sorted_ids)
        pos, ids = pos[inside], ids[inside]
        return self.id_order[pos[self.sorted_ids[pos] == ids]]

    def search(self, query: _Query, max_distance: int, radii: tuple[int, int]):
        """(query no, id, distance) arrays of live hashes within max_distance."""
        capacity = 16 * len(query.words) + 64
        while True:
            out = [np.empty(capacity, dtype=np.int64) for _ in range(3)]
            found = scan_segment(
                query.words,
                query.chunks,
                _CHUNK_BITS,
                _chunk_masks(),
                _chunk_masks(self.prefix_bits),
                self.prefix_bits,
                self.offsets,
                self.suffixes,
                self.rows,
                self.words,
                self.alive,
                *_prefix_probes(self.prefix_bits),
                *radii,
                max_distance,
                *out,
            )
            if found <= capacity:
                break
            capacity = found  # a big cluster: run again with room for all
        if found == 0:
            return None
        query_of, rows, distances = (a[:found] for a in out)
        return query_of, self.ids[rows], distances


_CHUNK_BITS = np.array(CHUNK_BITS, dtype=np.int64)
_CHUNK_STARTS = np.array(CHUNK_STARTS, dtype=np.int64)


class MultiIndexHash:
    """BinaryIndex's interface for 256-bit hashes, sublinear in their number:
    sealed segments plus one small open segment, all searched by multi-index
    hashing."""

    def __init__(self, bits: int = 256, review_search: str = DEFAULT_REVIEW_SEARCH) -> None:
        if bits != sum(CHUNK_BITS):
            raise ValueError(f"multi-index hashing is laid out for {sum(CHUNK_BITS)}-bit hashes")
        if review_search not in REVIEW_SEARCHES:
            raise ValueError(f"pdq_review_search must be one of {', '.join(REVIEW_SEARCHES)}")
        self.bits = bits
        self.review_search = review_search
        self._sealed: list[_Segment] = []
        self._open: _Segment | None = None  # recent adds, rebuilt on each add
        self._count = 0
        self._lock = _ReadWriteLock()  # searches vs. removals and swaps
        # One change at a time; segment builds hold only this, so searches go
        # on against the old segments meanwhile.
        self._writer = threading.Lock()
        _compile_once()

    def __len__(self) -> int:
        return self._count

    def add(self, ids: Iterable[int], vectors: Iterable[bytes]) -> None:
        ids_arr = id_array(ids)
        if not len(ids_arr):
            return
        vec_arr = hash_matrix(vectors, len(ids_arr), self.bits)
        with self._writer:
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
        ids_arr = unique_ids(id_array(ids))
        if not len(ids_arr):
            return 0
        with self._writer:
            return self._kill(ids_arr)

    def remove_entry(self, entry_id: int) -> int:
        """Remove every signal of one entry, however many it has."""
        lo, hi = signal_id(entry_id, 0), signal_id(entry_id + 1, 0)
        with self._writer:
            return self._kill_rows([(seg, seg.rows_of(lo, hi)) for seg in self._segments()])

    def search(self, queries: list[bytes], max_distance: int) -> list[list[tuple[int, int]]]:
        """For each query, every stored (id, distance) with distance <= max_distance;
        complete up to EXACT_RADIUS, see the module docstring beyond."""
        if not queries:
            return []
        query = _Query(hash_matrix(queries, len(queries), self.bits))
        radii = (PROBE_RADIUS, PROBE_RADIUS)  # (prefix, chunk)
        if max_distance > EXACT_RADIUS:
            radii = REVIEW_SEARCHES[self.review_search]
        parts = []
        with self._lock.reading():
            for seg in self._segments():
                found = seg.search(query, max_distance, radii)
                if found is not None:
                    parts.append(found)
        return _per_query(len(queries), parts)

    def save(self, path: str) -> None:
        """Every segment as it is, postings included, so a restart reads arrays
        instead of rebuilding them (10M hashes: ~1.2 GB, loaded in seconds)."""
        tmp = f"{path}.tmp"
        with self._lock.reading():
            # Segments are immutable but for removals: copy the flags, write
            # the rest outside the lock so adds and removals go on meanwhile.
            segments = [(seg, seg.alive.copy()) for seg in self._segments()]
        with open(tmp, "wb") as f:
            f.write(SNAPSHOT_MAGIC_SEGMENTS)
            np.save(f, np.array([len(segments)], dtype=np.int64))
            for seg, alive in segments:
                for array in (np.array([seg.prefix_bits]), alive, *seg.arrays()):
                    np.save(f, array, allow_pickle=False)
        os.replace(tmp, path)  # a crash mid-write never leaves a torn snapshot

    @classmethod
    def load(
        cls, path: str, bits: int, review_search: str = DEFAULT_REVIEW_SEARCH
    ) -> MultiIndexHash:
        """The index a snapshot holds; ValueError if it is not one or damaged
        (LiveIndex then rebuilds from the store)."""
        try:
            return cls._load(path, bits, review_search)
        except EOFError as exc:
            raise ValueError(f"snapshot {path} is truncated") from exc

    @classmethod
    def _load(cls, path: str, bits: int, review_search: str) -> MultiIndexHash:
        index = cls(bits, review_search)
        with open(path, "rb") as f:
            magic = f.read(len(SNAPSHOT_MAGIC))
            if magic == SNAPSHOT_MAGIC_SEGMENTS:
                (n_segments,) = np.load(f)
                for _ in range(n_segments):
                    prefix_bits, alive = np.load(f), np.load(f)
                    arrays = [np.load(f, allow_pickle=False) for _ in _Segment.SAVED]
                    seg = _Segment.from_arrays(int(prefix_bits[0]), alive, *arrays)
                    index._sealed.append(seg)
                    index._count += int(alive.sum())
                return index
            if magic != SNAPSHOT_MAGIC:
                raise ValueError(f"{path} is not a multi-index hash snapshot")
            ids, codes = np.load(f), np.load(f)  # v1: hashes only, build the postings
        if codes.shape != (len(ids), bits // 8):
            raise ValueError(f"snapshot {path} does not hold {bits}-bit hashes")
        step = MAX_SEGMENT_ROWS  # the fewest segments: each costs its probes
        index._sealed = [
            _Segment(codes[i : i + step], ids[i : i + step]) for i in range(0, len(ids), step)
        ]
        index._count = len(ids)
        return index

    # -- internals

    def _segments(self) -> list[_Segment]:
        return self._sealed if self._open is None else [*self._sealed, self._open]

    def _kill(self, ids: np.ndarray) -> int:
        return self._kill_rows([(seg, seg.rows_of_ids(ids)) for seg in self._segments()])

    def _kill_rows(self, found: list[tuple[_Segment, np.ndarray]]) -> int:
        """Mark rows removed. The caller holds the writer mutex, so the rows
        were looked up without blocking searches; only the flags are set under
        the write lock (a Match waits microseconds, not a lookup of every id)."""
        doomed = [(seg, rows[seg.alive[rows]]) for seg, rows in found]
        doomed = [(seg, rows) for seg, rows in doomed if len(rows)]
        if not doomed:
            return 0
        with self._lock.writing():
            removed = sum(_mark_dead(seg.alive, rows) for seg, rows in doomed)
            self._count -= removed
        return removed


_compiled = threading.Lock()
_compiled_done = False


def _compile_once() -> None:
    """Compile (or load from numba's cache) the build and scan loops for the
    types the index uses, once a process: before the index serves, not on the
    first Match (about a second)."""
    global _compiled_done
    with _compiled:
        if not _compiled_done:
            codes = np.zeros((1, 32), dtype=np.uint8)
            segment = _Segment(codes, np.zeros(1, dtype=np.int64))
            segment.search(_Query(codes), EXACT_RADIUS, (PROBE_RADIUS, PROBE_RADIUS))
            _compiled_done = True


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
