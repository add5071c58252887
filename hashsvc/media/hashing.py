"""Hashing runs in worker processes: it is CPU-bound and holds the GIL (threads
gave pdqhash only 1.7x on 2 cores; processes scale fully), and a decoder that
misbehaves is kept away from the server's memory.

The server process imports this module and hashsvc/media/dispatch.py but no
decoder: a worker imports each media kind's module at its first upload of that
kind (dispatch.py), so the server's memory holds none of them (bench/memory.py;
tests/test_server_imports.py). With workers == 0 the caller hashes, and loads
the decoders itself.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import resource
import threading
import time
from concurrent.futures import CancelledError, Future, ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool

from hashsvc.base.errors import Timeout, TooLarge, Unavailable
from hashsvc.media import sniff
from hashsvc.media.dispatch import Hashed, MediaSource, hash_media, kind_of, size_of
from hashsvc.media.limits import QUERY_PARTS, ImageLimits, MediaLimits
from hashsvc.media.machine import spare_core

log = logging.getLogger(__name__)


def _init_worker(max_bytes: int, server_pid: int) -> None:
    if max_bytes > 0:
        resource.setrlimit(resource.RLIMIT_AS, (max_bytes, max_bytes))
    # A worker outlives a server that was killed (kill -9, OOM killer) or
    # stopped mid-start: it holds its own end of the job queue, so it never
    # sees the server go. Watch for that and leave.
    threading.Thread(target=_exit_with_server, args=(server_pid,), daemon=True).start()


def _exit_with_server(server_pid: int) -> None:
    while os.getppid() == server_pid:
        time.sleep(1.0)
    os._exit(0)


class HashingPool:
    """workers > 0: a pool of that many processes; workers == 0: hash in the
    calling thread (tests, benchmarks of the hashing itself)."""

    def __init__(
        self,
        workers: int,
        limits: MediaLimits | ImageLimits,
        timeout_seconds: float = 20.0,
        worker_memory_bytes: int = 0,
        split_queries: bool = False,
        media_timeout_seconds: float = 600.0,
        worker_max_jobs: int = 0,
    ) -> None:
        self.workers = workers
        self.worker_max_jobs = worker_max_jobs
        if isinstance(limits, ImageLimits):
            limits = MediaLimits(image=limits)
        self.limits = limits
        self.timeout_seconds = timeout_seconds
        self.media_timeout_seconds = media_timeout_seconds
        self.worker_memory_bytes = worker_memory_bytes
        self.split_queries = split_queries
        self._lock = threading.Lock()
        self._pool: ProcessPoolExecutor | None = self._new_pool() if workers > 0 else None
        # jobs submitted and not done yet (started_when_idle's test)
        self._busy = 0

    def _new_pool(self) -> ProcessPoolExecutor:
        # spawn, not fork: forking a process that runs gRPC threads is unsafe.
        return ProcessPoolExecutor(
            self.workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
            initargs=(self.worker_memory_bytes, os.getpid()),
            # A decoder's peak memory stays with its process (the allocator
            # keeps it); a fresh process now and then gives it back.
            max_tasks_per_child=self.worker_max_jobs or None,
        )

    def _replace(self, pool: ProcessPoolExecutor, kill: bool) -> None:
        with self._lock:
            if self._pool is not pool:
                return  # another request replaced it already
            self._pool = self._new_pool()
        if kill:
            # A hung decoder never returns: end its process so it frees the CPU.
            for process in list(getattr(pool, "_processes", {}).values()):
                process.kill()
        pool.shutdown(wait=False, cancel_futures=True)

    def warm_up(self) -> None:
        """Start every worker now so the first requests do not pay for it."""
        if self._pool is not None:
            list(self._pool.map(_noop, range(self.workers * 2)))

    def hash_query(
        self,
        source: MediaSource,
        stage: str | None = None,
        picture: object = None,
        exact: bool = True,
        with_picture: bool = True,
    ) -> Hashed:
        """All signals of an upload, or (`stage`) one step of them; a second
        step with the first one's decoded `picture`; `exact` False: without
        the MD5 and SHA-256 (dispatch.hash_media); `with_picture` False: a
        first step without its decoded picture (its second step started
        ahead decodes the upload itself)."""
        return self.start_query(source, stage, picture, exact, with_picture).result()

    def start_query(
        self,
        source: MediaSource,
        stage: str | None = None,
        picture: object = None,
        exact: bool = True,
        with_picture: bool = True,
    ) -> StartedJob:
        """hash_query's job sent to a worker now, its answer collected later
        (StartedJob.result) or not at all (StartedJob.abandon): the caller
        looks up the upload's exact hashes while it is hashed. The checks
        made before any job is sent raise here; with no workers the caller
        hashes now, and result() gives the answer or raises its error."""
        return self._start(
            source, for_query=True, stage=stage, picture=picture, exact=exact,
            with_picture=with_picture,
        )  # fmt: skip

    def started_when_idle(
        self, source: MediaSource, stage: str, exact: bool = True
    ) -> StartedJob | None:
        """hash_query(source, stage) started now on a worker that has nothing
        else to do, for the caller to collect (StartedJob.result) or drop
        (StartedJob.abandon); None, nothing started, unless a worker is left
        free beside it for the job the caller submits next (which it must not
        delay: the jobs queue in order), so never with one worker or none, and
        unless the machine has a core to spare (spare_core): a job that may go
        unused must not take CPU that other work is waiting for."""
        if self._pool is None:
            return None
        with self._lock:
            if self._busy + 2 > self.workers:
                return None
            # Counted before the lock is let go: concurrent uploads that all
            # found the workers idle would each start one, and the first
            # steps submitted after them would queue behind them all.
            self._busy += 1
        future = None
        try:
            if not spare_core():
                return None
            is_image = self.check(source) == sniff.IMAGE
            timeout = self.timeout_seconds if is_image else self.media_timeout_seconds
            pool = self._pool
            try:
                future = self._submit(
                    pool, hash_media, source, self.limits, True, None, stage, None, exact,
                    reserved=True,
                )  # fmt: skip
            except RuntimeError:
                return None  # the pool was just replaced: hashed in turn instead
            return StartedJob(self, pool, [future], time.monotonic() + timeout, is_image)
        finally:
            if future is None:
                self._done(None)  # nothing started: the reservation given back

    def _submit(self, pool: ProcessPoolExecutor, *job, reserved: bool = False) -> Future:
        """pool.submit(*job), counted in _busy until it is done (reserved:
        counted already by the caller)."""
        future = pool.submit(*job)
        if not reserved:
            with self._lock:
                self._busy += 1
        future.add_done_callback(self._done)
        return future

    def _done(self, _: Future | None) -> None:
        with self._lock:
            self._busy -= 1

    def check(self, source: MediaSource) -> str:
        """The checks made before any job is sent (not empty, a format we
        read, an image within max_bytes): its sniffed kind, or their error."""
        kind = kind_of(source)
        if kind == sniff.IMAGE and size_of(source) > self.limits.image.max_bytes:
            raise TooLarge(
                f"media is {size_of(source)} bytes; the limit is {self.limits.image.max_bytes}"
            )
        return kind

    def hash_known(self, source: MediaSource) -> Hashed:
        return self._start(source, for_query=False).result()

    def _start(
        self,
        source: MediaSource,
        for_query: bool,
        retried: bool = False,
        stage: str | None = None,
        picture: object = None,
        exact: bool = True,
        with_picture: bool = True,
    ) -> StartedJob:
        # Sniffed here too (cheap) to pick the time limit: seconds for a
        # picture, minutes for an hour of video.
        is_image = self.check(source) == sniff.IMAGE
        timeout = self.timeout_seconds if is_image else self.media_timeout_seconds
        job = (source, self.limits, for_query, None, stage, picture, exact, with_picture)
        if self._pool is None:
            return StartedJob(self, None, [_hashed_now(*job)], 0.0, is_image)
        pool = self._pool
        try:
            if for_query and is_image and self.split_queries and self.workers > 1 and not stage:
                # Both halves at once on two workers: an upload's latency
                # halves, at the cost of decoding it twice.
                futures = [
                    self._submit(
                        pool, hash_media, source, self.limits, True, part, None, None, exact
                    )
                    for part in range(QUERY_PARTS)
                ]
            else:
                futures = [self._submit(pool, hash_media, *job)]
            return StartedJob(self, pool, futures, time.monotonic() + timeout, is_image)
        except BrokenProcessPool:
            # Refused at submit: a worker died under a job nobody waited for
            # (a second step started ahead and dropped), so no caller saw it
            # and replaced the pool; every later job would be refused too.
            log.error("hashing pool found broken; replacing it")
            self._replace(pool, kill=False)
            if retried:
                raise Unavailable(
                    "the media could not be hashed: the hashing worker died"
                ) from None
            return self._start(source, for_query, True, stage, picture, exact, with_picture)
        except RuntimeError:
            # Another request replaced the pool (a worker died or hung) between
            # our reading self._pool and submitting to it: "cannot schedule new
            # futures after shutdown". Submit once more, to the new pool.
            if self._pool is pool or retried:
                raise
            return self._start(source, for_query, True, stage, picture, exact, with_picture)

    def _result(
        self, pool: ProcessPoolExecutor, future: Future, deadline: float, is_image: bool
    ) -> Hashed:
        """A job's answer by its deadline; the pool replaced when the job hung
        (its worker killed) or a worker died."""
        try:
            return future.result(timeout=max(0.0, deadline - time.monotonic()))
        except FutureTimeout:
            timeout = self.timeout_seconds if is_image else self.media_timeout_seconds
            log.error("hashing took over %.1f s; replacing the workers", timeout)
            self._replace(pool, kill=True)
            setting = "hash_timeout_seconds" if is_image else "media_timeout_seconds"
            raise Timeout(f"hashing the media took longer than {timeout:g} s ({setting})") from None
        except BrokenProcessPool:
            # A worker died (crash, killed for memory): fail this request,
            # replace the pool, keep serving.
            log.error("hashing worker died; replacing the pool")
            self._replace(pool, kill=False)
            raise Unavailable("the media could not be hashed: the hashing worker died") from None
        except CancelledError:
            # Never started: another job hung past its deadline or its worker
            # died, and the pool was replaced with this one still waiting
            # (it was an internal error). The upload itself may be fine.
            raise Unavailable(
                "the media could not be hashed: the hashing workers were replaced before"
                " it was hashed; retry"
            ) from None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)


class StartedJob:
    """A hashing job sent to the workers (HashingPool.start_query, or
    started_when_idle: ahead of need): one future, or a split query's two
    halves; with no workers (pool None), its answer or error already."""

    def __init__(
        self,
        hashing: HashingPool,
        pool: ProcessPoolExecutor | None,
        futures: list[Future],
        deadline: float,
        is_image: bool,
    ) -> None:
        self._hashing = hashing
        self._pool = pool
        self._futures = futures
        self._deadline = deadline
        self._is_image = is_image

    def result(self) -> Hashed:
        """Its answer, or the errors HashingPool.hash_query gives."""
        parts = [
            self._hashing._result(self._pool, future, self._deadline, self._is_image)
            for future in self._futures
        ]
        if len(parts) == 1:
            return parts[0]
        return Hashed(parts[0].media_type, [s for p in parts for s in p.signals], parts[0].notes)

    def abandon(self) -> None:
        """Not needed after all. A job running already cannot be stopped, but
        one that hangs is still held to its deadline: waited for on a thread
        of its own, its worker killed and the pool replaced as for any job."""
        if all([future.cancel() for future in self._futures]):  # each one tried
            return
        if all(future.done() for future in self._futures):
            # its error seen now: a worker it killed has its pool replaced
            self._reap()
            return
        threading.Thread(target=self._reap, daemon=True, name="hashing-abandoned").start()

    def _reap(self) -> None:
        try:
            self.result()
        except Exception as exc:  # nobody waits for its answer; the pool is whole again
            log.info("an abandoned hashing job failed: %s", exc)


def _hashed_now(*job) -> Future:
    """hash_media(*job) in the calling thread (no workers), as a done future."""
    future: Future = Future()
    try:
        future.set_result(hash_media(*job))
    except Exception as exc:  # the caller's result() raises it, as a worker's
        future.set_exception(exc)
    return future


def _noop(_: int) -> None:
    return None
