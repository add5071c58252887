"""The worker pool: a job past its time limit is stopped, a dead worker is
replaced, and the pool keeps hashing afterwards."""

from __future__ import annotations

import functools
import os
import signal

import pytest

from hashsvc.base.errors import Timeout, Unavailable
from hashsvc.core.config import ImageLimits
from hashsvc.media.hashing import HashingPool
from hashsvc_testing.image_media import encode, photo


# made when a test runs, not at import: they read ../shared/vectors
@functools.cache
def big() -> bytes:
    return encode(photo(0).resize((4000, 3000)))


@functools.cache
def small() -> bytes:
    return encode(photo(1))


@pytest.fixture
def pool():
    p = HashingPool(1, ImageLimits(), timeout_seconds=30, worker_memory_bytes=2 << 30)
    p.warm_up()
    yield p
    p.close()


def test_a_job_past_the_time_limit_is_stopped_and_the_pool_goes_on(pool):
    pool.timeout_seconds = 0.001
    with pytest.raises(Timeout, match="hash_timeout_seconds"):
        pool.hash_query(big())
    pool.timeout_seconds = 30
    assert pool.hash_query(small()).media_type == "image"


def test_a_killed_worker_fails_one_job_and_is_replaced(pool):
    worker_pids = list(pool._pool._processes)
    os.kill(worker_pids[0], signal.SIGKILL)
    with pytest.raises(Unavailable, match="worker died"):
        pool.hash_query(small())
    assert pool.hash_query(small()).media_type == "image"
    assert worker_pids[0] not in pool._pool._processes


def test_memory_limit_turns_a_ballooning_decode_into_an_error():
    """A 20,000 x 20,000 PNG of 50 KB that the pixel limit lets through (raised on
    purpose) decodes to gigabytes: the worker's memory limit stops it."""
    from hashsvc.base.errors import TooLarge
    from tests.test_bad_input import png_bomb

    lax = ImageLimits(max_pixels=500_000_000, max_side=50_000)
    # a worker maps ~150 MB of address space at rest and ~500 MB once it has
    # hashed an image (numpy, Pillow, PDQ, OpenCV's ORB and numba: imported at
    # its first image); the bomb's pixels alone are 1.2 GB
    small_memory = HashingPool(1, lax, worker_memory_bytes=1200 << 20)
    try:
        with pytest.raises((TooLarge, Unavailable)):
            small_memory.hash_known(png_bomb(20000, 20000))
        assert small_memory.hash_query(small()).media_type == "image"
    finally:
        small_memory.close()


def test_split_hashing_gives_the_same_signals_as_one_job():
    split = HashingPool(2, ImageLimits(), split_queries=True)
    whole = HashingPool(0, ImageLimits())
    try:
        for data in (small(), big()):
            got = split.hash_query(data).signals
            want = whole.hash_query(data).signals
            assert sorted(got, key=lambda s: s.variant) == sorted(want, key=lambda s: s.variant)
    finally:
        split.close()


def test_workers_are_replaced_after_their_job_limit():
    """worker_max_jobs: a worker process gives back what big decodes left
    behind by being replaced; jobs keep succeeding across replacements."""
    import os as _os

    from hashsvc_testing.image_media import encode, photo

    pool = HashingPool(1, ImageLimits(), worker_max_jobs=2)
    try:
        data = encode(photo(1))
        pids = set()
        for _ in range(5):
            assert pool.hash_query(data).signals
            pids.add(pool._pool.submit(_os.getpid).result())
        assert len(pids) >= 2
    finally:
        pool.close()


def test_jobs_waiting_when_a_hung_job_replaces_the_pool_are_unavailable_not_internal():
    """A job past its deadline replaces the pool (its worker killed): jobs of
    other uploads waiting behind it are cancelled or die with the pool.
    Either way the caller gets UNAVAILABLE (retry), as for a worker that
    died; a cancelled one raised CancelledError, an internal error (fails
    without the fix: the jobs past the worker's queue are cancelled)."""
    import time

    from hashsvc.media.hashing import StartedJob

    hashing = HashingPool(1, ImageLimits(), timeout_seconds=30)
    try:
        hashing.warm_up()
        pool = hashing._pool
        hung = hashing._submit(pool, time.sleep, 120)
        # behind it: some handed to the worker's queue already, the rest still waiting
        waiting = [hashing.start_query(small()) for _ in range(6)]
        with pytest.raises(Timeout):
            StartedJob(hashing, pool, [hung], time.monotonic() + 0.5, True).result()
        assert hashing._pool is not pool
        for job in waiting:
            with pytest.raises(Unavailable):
                job.result()
        assert hashing.hash_query(small()).signals  # the new pool serves
    finally:
        hashing.close()
