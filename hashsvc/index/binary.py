"""One FAISS binary index class for perceptual signals of any bit length.

IndexBinaryFlat is exact (every stored hash is compared) and, at memory speed,
fast enough to a few million hashes; it is wrapped in IndexBinaryIDMap2 because
that wrapper supports remove_ids, so a de-listed hash stops matching at once
without a rebuild. The search radius is a construction-time fact of each call,
not a shared setting, so concurrent searches never race on index state.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from contextlib import contextmanager
from typing import Protocol

import faiss
import numpy as np

# A stored signal's index id packs the entry id and the signal's variant number
# (its position among the entry's signals, < 2**20: a video's frames are
# signals), so a search result names its entry without a side table of
# millions of Python objects. Entry ids get the other 43 bits.
VARIANT_BITS = 20
MAX_VARIANTS = 1 << VARIANT_BITS
# Written into snapshots: a snapshot made with another id layout is rebuilt.
# v2: PDQ snapshots are multi-index hash files, not FAISS files.
ID_LAYOUT = f"entry<<{VARIANT_BITS}|variant;v2"
# The first bytes of a multi-index hash snapshot (hashsvc/index/multi_index.py):
# v1 holds ids and hashes (postings are rebuilt on load), v3 whole segments.
SNAPSHOT_MAGIC_PREFIX = b"HSVC-MIH-PDQ-"
SNAPSHOT_MAGIC = SNAPSHOT_MAGIC_PREFIX + b"v1\n"
SNAPSHOT_MAGIC_SEGMENTS = SNAPSHOT_MAGIC_PREFIX + b"v3\n"


def signal_id(entry_id: int, variant_no: int) -> int:
    return (entry_id << VARIANT_BITS) | variant_no


def split_signal_id(sid: int) -> tuple[int, int]:
    return sid >> VARIANT_BITS, sid & (MAX_VARIANTS - 1)


def hash_matrix(hashes: Iterable[bytes] | np.ndarray, count: int, bits: int) -> np.ndarray:
    """(count, bits / 8) uint8 rows of `count` hashes of `bits` bits each, as
    every index engine takes them (also given as such an array); ValueError
    for any other length."""
    if isinstance(hashes, np.ndarray):
        matrix = np.ascontiguousarray(hashes, dtype=np.uint8).ravel()
    else:
        matrix = np.frombuffer(b"".join(hashes), dtype=np.uint8)
    if matrix.size != count * bits // 8:
        raise ValueError(f"expected {count} hashes of {bits} bits")
    return matrix.reshape(count, bits // 8)


def search_on_this_thread() -> None:
    """FAISS searches made by the calling thread run on it alone, not on
    OpenMP threads (the setting is per thread; the server sets it for its
    gRPC threads, hashsvc/api/server.py). On a loaded machine a search split
    across OpenMP threads waits for the slowest: a retro-hunt's matcher took
    47 ms to search 18 views against 10,000 new hashes, ~0.2 ms on one thread
    (bench/retro.py)."""
    faiss.omp_set_num_threads(1)


def id_array(ids: Iterable[int]) -> np.ndarray:
    """Signal ids as an int64 array (arrays pass through without a copy)."""
    if isinstance(ids, np.ndarray):
        return ids.astype(np.int64, copy=False)
    return np.fromiter(ids, dtype=np.int64)


class _ReadWriteLock:
    """Many concurrent searches, or one writer."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writing = False

    @contextmanager
    def reading(self):
        with self._cond:
            while self._writing:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if self._readers == 0:
                    self._cond.notify_all()

    @contextmanager
    def writing(self):
        with self._cond:
            while self._writing or self._readers:
                self._cond.wait()
            self._writing = True
        try:
            yield
        finally:
            with self._cond:
                self._writing = False
                self._cond.notify_all()


class BinaryIndex:
    def __init__(self, bits: int, faiss_index: faiss.IndexBinary | None = None) -> None:
        if bits % 8:
            raise ValueError("bit length must be a multiple of 8")
        self.bits = bits
        self._index = faiss_index or faiss.IndexBinaryIDMap2(faiss.IndexBinaryFlat(bits))
        self._lock = _ReadWriteLock()

    def __len__(self) -> int:
        return self._index.ntotal

    def add(self, ids: Iterable[int], vectors: Iterable[bytes]) -> None:
        ids_arr = id_array(ids)
        if not len(ids_arr):
            return
        vec_arr = hash_matrix(vectors, len(ids_arr), self.bits)
        with self._lock.writing():
            # Idempotent: re-adding an id replaces it instead of duplicating.
            self._index.remove_ids(ids_arr)
            self._index.add_with_ids(vec_arr, ids_arr)

    def remove(self, ids: Iterable[int]) -> int:
        ids_arr = id_array(ids)
        if not len(ids_arr):
            return 0
        with self._lock.writing():
            return int(self._index.remove_ids(ids_arr))

    def remove_entry(self, entry_id: int) -> int:
        """Remove every signal of one entry, however many it has."""
        selector = faiss.IDSelectorRange(signal_id(entry_id, 0), signal_id(entry_id + 1, 0))
        with self._lock.writing():
            return int(self._index.remove_ids(selector))

    def search(self, queries: list[bytes], max_distance: int) -> list[list[tuple[int, int]]]:
        """For each query, every stored (id, distance) with distance <= max_distance."""
        if not queries:
            return []
        q = hash_matrix(queries, len(queries), self.bits)
        with self._lock.reading():
            if self._index.ntotal == 0:
                return [[] for _ in queries]
            # FAISS binary range search keeps distances strictly below the radius.
            lims, distances, ids = self._index.range_search(q, max_distance + 1)
        ids_list, dist_list = ids.tolist(), distances.astype(np.int64).tolist()
        return [
            list(
                zip(ids_list[lims[i] : lims[i + 1]], dist_list[lims[i] : lims[i + 1]], strict=True)
            )
            for i in range(len(queries))
        ]

    def any_within(self, queries: list[bytes], max_distance: int) -> np.ndarray:
        """For each query, whether any stored hash is within max_distance:
        search()'s answer without its per-query lists (a retro-hunt asks
        this of ~36k views a step, nearly all with none)."""
        if not queries:
            return np.zeros(0, dtype=bool)
        q = hash_matrix(queries, len(queries), self.bits)
        with self._lock.reading():
            if self._index.ntotal == 0:
                return np.zeros(len(queries), dtype=bool)
            lims, _, _ = self._index.range_search(q, max_distance + 1)
        return np.diff(lims) > 0

    def save(self, path: str) -> None:
        tmp = f"{path}.tmp"
        with self._lock.reading():
            faiss.write_index_binary(self._index, tmp)
        os.replace(tmp, path)  # a crash mid-write never leaves a torn snapshot

    @classmethod
    def load(cls, path: str, bits: int) -> BinaryIndex:
        loaded = faiss.read_index_binary(path)
        if loaded.d != bits or not isinstance(loaded, faiss.IndexBinaryIDMap2):
            raise ValueError(f"snapshot {path} is not a {bits}-bit id-mapped binary index")
        return cls(bits, loaded)


class HashIndex(Protocol):
    """What LiveIndex and the matcher need of an index engine."""

    bits: int

    def __len__(self) -> int: ...
    def add(self, ids: Iterable[int], vectors: Iterable[bytes]) -> None: ...
    def remove(self, ids: Iterable[int]) -> int: ...
    def remove_entry(self, entry_id: int) -> int: ...
    def search(self, queries: list[bytes], max_distance: int) -> list[list[tuple[int, int]]]: ...
    def save(self, path: str) -> None: ...
