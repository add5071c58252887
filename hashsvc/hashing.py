"""Hashing runs in worker processes: it is CPU-bound and holds the GIL (threads
gave pdqhash only 1.7x on 2 cores; processes scale fully), and a decoder that
misbehaves is kept away from the server's memory.
"""

from __future__ import annotations

import logging
import multiprocessing
import threading
from concurrent.futures import Executor, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

from hashsvc.config import ImageLimits
from hashsvc.errors import InvalidArgument, TooLarge, Unavailable
from hashsvc.media import image
from hashsvc.signals import Signal

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Hashed:
    media_type: str
    signals: list[Signal]


def _hash(data: bytes, limits: ImageLimits, for_query: bool) -> Hashed:
    # Only images so far; later media kinds are sniffed and dispatched here.
    if not data:
        raise InvalidArgument("empty media")
    hasher = image.hash_query if for_query else image.hash_known
    return Hashed("image", hasher(data, limits))


class HashingPool:
    """workers > 0: a pool of that many processes; workers == 0: hash in the
    calling thread (tests, benchmarks of the hashing itself)."""

    def __init__(self, workers: int, limits: ImageLimits) -> None:
        self.workers = workers
        self.limits = limits
        self._lock = threading.Lock()
        self._pool: Executor | None = self._new_pool() if workers > 0 else None

    def _new_pool(self) -> Executor:
        # spawn, not fork: forking a process that runs gRPC threads is unsafe.
        return ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"))

    def warm_up(self) -> None:
        """Start every worker now so the first requests do not pay for it."""
        if self._pool is not None:
            list(self._pool.map(_noop, range(self.workers * 2)))

    def hash_query(self, data: bytes) -> Hashed:
        return self._run(data, for_query=True)

    def hash_known(self, data: bytes) -> Hashed:
        return self._run(data, for_query=False)

    def _run(self, data: bytes, for_query: bool) -> Hashed:
        if len(data) > self.limits.max_bytes:
            raise TooLarge(f"media is {len(data)} bytes; the limit is {self.limits.max_bytes}")
        if self._pool is None:
            return _hash(data, self.limits, for_query)
        pool = self._pool
        try:
            return pool.submit(_hash, data, self.limits, for_query).result()
        except BrokenProcessPool:
            # A worker died (crash, killed for memory): fail this request,
            # replace the pool, keep serving.
            log.error("hashing worker died; replacing the pool")
            with self._lock:
                if self._pool is pool:
                    self._pool = self._new_pool()
            raise Unavailable("the media could not be hashed: the hashing worker died") from None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)


def _noop(_: int) -> None:
    return None
