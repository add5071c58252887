"""In two steps (a flood of known pictures), an image's second step starts
beside its first when a hashing worker has nothing else to do and the machine
a core to spare (ImageLimits.second_step_when_idle): the answers are those of
two steps one after the other; a blocked upload leaves it unused; it never
takes the worker the first step needs, nor a loaded machine's CPU; and a job
left unused that hangs is still killed at its deadline. The machine's load is
set by the tests that need it either way (this one runs on loaded machines)."""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest
from PIL import Image

from hashdb import Thresholds
from hashsvc.base.errors import InvalidArgument
from hashsvc.core.config import Config
from hashsvc.core.core import Core, MatchQuery
from hashsvc.matching.matcher import LOCAL_NOT_COMPUTED
from hashsvc.media import hashing as hashing_module
from hashsvc.media import machine
from hashsvc.media.hashing import HashingPool, StartedJob
from hashsvc.media.limits import STAGE_LOCAL, ImageLimits
from hashsvc.media.machine import CpuTimes, spare_core
from hashsvc_testing import local_media
from hashsvc_testing.image_media import encode as encode_image
from hashsvc_testing.vectors import vector

BRIDGE = ("threatexchange", "pdq", "data", "reg-test-input", "dih", "bridge-1-original.jpg")


@pytest.fixture(scope="module")
def pictures() -> dict[str, bytes]:
    bridge = Image.open(vector(*BRIDGE)).convert("RGB")
    return {
        "bridge": encode_image(bridge, "JPEG", quality=85),
        # the same picture in another file: PDQ blocks it, the exact hashes do not
        "bridge_again": encode_image(bridge, "JPEG", quality=70),
        # a crop PDQ cannot see: local features only
        "bridge_crop": encode_image(
            local_media.crop(bridge, np.random.default_rng(0), 0.2), "JPEG", quality=85
        ),
    }


def _idle(hashing: HashingPool) -> None:
    """Until no job of the pool is running (an unused second step ends)."""
    deadline = time.monotonic() + 60
    while hashing._busy:
        assert time.monotonic() < deadline, hashing._busy
        time.sleep(0.02)


def _worker_core(db_url: str, known: bytes, ahead: bool) -> Core:
    """A core hashing in two worker processes, always in two steps."""
    core = Core.open(
        Config(
            db_url=db_url,
            workers=2,
            image=ImageLimits(local_after_views_share=0, second_step_when_idle=ahead),
        )
    )
    core.start()
    core.curation.create_set("a", thresholds={"pdq": Thresholds(31, 56)})
    core.curation.add_entry("a", "bridge", {}, "op", media=known)
    return core


@pytest.fixture
def quiet_machine(monkeypatch):
    monkeypatch.setattr(hashing_module, "spare_core", lambda: True)


def test_a_second_step_started_ahead_answers_as_two_steps_in_turn(
    tmp_path, pictures, quiet_machine
):
    ahead = _worker_core(f"sqlite:///{tmp_path}/ahead.db", pictures["bridge"], True)
    in_turn = _worker_core(f"sqlite:///{tmp_path}/in_turn.db", pictures["bridge"], False)
    started: list[StartedJob | None] = []
    started_when_idle = ahead.hashing.started_when_idle

    def counted(*args, **kwargs):
        started.append(started_when_idle(*args, **kwargs))
        return started[-1]

    ahead.hashing.started_when_idle = counted
    try:
        answers = {}
        for name in ("bridge_crop", "bridge_again"):
            _idle(ahead.hashing)
            got = ahead.match(MatchQuery(media=pictures[name]), caller="t")
            expected = in_turn.match(MatchQuery(media=pictures[name]), caller="t")
            assert got.decision == expected.decision
            assert [(m.entry_name, m.signal_type, m.decision) for m in got.matches] == [
                (m.entry_name, m.signal_type, m.decision) for m in expected.matches
            ]
            assert got.query_signals == expected.query_signals
            assert got.notes == expected.notes
            answers[name] = got
        assert len(started) == 2 and all(s is not None for s in started)
        # the crop, found by the second step started ahead (local features)
        crop = answers["bridge_crop"]
        assert crop.decision in ("block", "review")
        assert crop.matches[0].signal_type == "local_features"
        # blocked by its first step: the second, started ahead, left unused
        again = answers["bridge_again"]
        assert again.decision == "block" and LOCAL_NOT_COMPUTED in again.notes
        assert not any(s.kind == "local_features" for s in again.query_signals)
        _idle(ahead.hashing)  # and it ends, freeing its worker
    finally:
        ahead.close()
        in_turn.close()


def test_no_second_step_ahead_without_a_worker_left_for_the_first(pictures, quiet_machine):
    one = HashingPool(1, ImageLimits())
    two = HashingPool(2, ImageLimits())
    try:
        assert one.started_when_idle(pictures["bridge"], STAGE_LOCAL) is None
        two.warm_up()
        busy = two._submit(two._pool, time.sleep, 2.0)
        # one worker is busy: the other is the first step's
        assert two.started_when_idle(pictures["bridge"], STAGE_LOCAL) is None
        busy.result(timeout=30)
        _idle(two)
        job = two.started_when_idle(pictures["bridge"], STAGE_LOCAL, exact=False)
        assert job is not None
        signals = job.result().signals
        assert any(s.kind == "local_features" for s in signals)
        assert not any(s.kind in ("md5", "sha256") for s in signals)
    finally:
        one.close()
        two.close()


def _cpus_since_last_reading(monkeypatch) -> dict[str, bool]:
    """spare_core() read from CPU times this test sets: each reading finds
    the machine's CPUs all taken by work at nice 0 since the one before, or
    all free while the returned dict's "quiet" is True."""
    cpus = len(os.sched_getaffinity(0))
    machine_state = {"quiet": False}
    ticks = {"taken": 0, "free": 0}

    def read() -> CpuTimes:
        ticks["free" if machine_state["quiet"] else "taken"] += 100 * cpus
        return CpuTimes(cpus, ticks["taken"], ticks["free"])

    monkeypatch.setattr(machine, "_watch", machine.CpuWatch(read=read, window_seconds=0))
    spare_core()  # the first reading: the next one has a window
    return machine_state


def test_no_second_step_ahead_on_a_loaded_machine(pictures, monkeypatch):
    machine_state = _cpus_since_last_reading(monkeypatch)
    assert not spare_core()
    hashing = HashingPool(2, ImageLimits())
    try:
        hashing.warm_up()
        _idle(hashing)
        assert hashing.started_when_idle(pictures["bridge"], STAGE_LOCAL) is None
        machine_state["quiet"] = True
        assert spare_core()
        job = hashing.started_when_idle(pictures["bridge"], STAGE_LOCAL)
        assert job is not None
        job.result()
    finally:
        hashing.close()


@pytest.mark.parametrize("unknown", ["missing", "garbled", "no affinity"])
def test_cpu_times_that_cannot_be_read_hash_in_one_thread_and_one_step(
    pictures, monkeypatch, tmp_path, unknown
):
    """Where the CPUs' times cannot be read (/proc/stat hidden in a sandbox
    or not Linux's; no os.sched_getaffinity off Linux) an upload is still
    hashed, in one thread, and no second step is started ahead; an error
    (then of the load average) used to fail every picture hashed with local
    features."""
    from hashsvc.media import dispatch
    from hashsvc.media.limits import MediaLimits

    stat = tmp_path / "stat"
    if unknown == "garbled":
        stat.write_text("cpu0 one two\ncpu1 1 2\n")
    elif unknown == "no affinity":
        stat = machine.PROC_STAT
        monkeypatch.delattr(os, "sched_getaffinity")
    watch = machine.CpuWatch(read=lambda: machine.read_cpu_times(str(stat)), window_seconds=0)
    monkeypatch.setattr(machine, "_watch", watch)
    for _ in range(2):  # a first reading, and one with a window
        assert not spare_core()
    hashed = dispatch.hash_media(pictures["bridge_crop"], MediaLimits(), True)
    assert any(s.kind == "local_features" for s in hashed.signals)
    hashing = HashingPool(2, ImageLimits())
    try:
        assert hashing.started_when_idle(pictures["bridge"], STAGE_LOCAL) is None
        assert hashing._busy == 0
    finally:
        hashing.close()


def test_an_unused_job_that_hangs_is_killed_at_its_deadline():
    """Nobody waits for an abandoned job's answer, but a decoder that hangs
    must not hold its worker forever: the worker is killed at the job's
    deadline and the pool replaced, as when a caller waits."""
    hashing = HashingPool(2, ImageLimits(), timeout_seconds=1.0)
    try:
        hashing.warm_up()
        pool = hashing._pool
        processes = list(pool._processes.values())
        hung = hashing._submit(pool, time.sleep, 120)  # a job that will not end by itself
        deadline = time.monotonic() + 30
        while not hung.running():  # handed to the workers: too late to cancel
            assert time.monotonic() < deadline
            time.sleep(0.01)
        StartedJob(hashing, pool, hung, time.monotonic() + 1.0, True).abandon()
        deadline = time.monotonic() + 30
        while hashing._pool is pool or any(p.is_alive() for p in processes):
            assert time.monotonic() < deadline, "the hung job's worker still runs"
            time.sleep(0.05)
        assert hashing._pool.submit(sum, [1, 2]).result(timeout=30) == 3  # the new pool serves
    finally:
        hashing.close()


def test_an_upload_gives_the_same_signals_in_one_thread_or_two(pictures, monkeypatch):
    """A loaded machine hashes an upload's local features in the views'
    thread (hashsvc/media/machine.py), a quiet one beside them: the same
    signals, in one step and in either of two steps."""
    from hashsvc.media import dispatch, image
    from hashsvc.media.limits import STAGE_VIEWS, MediaLimits

    limits = MediaLimits()
    got = {}
    for spare in (True, False):
        monkeypatch.setattr(image, "spare_core", lambda spare=spare: spare)
        for name in ("bridge", "bridge_crop"):
            data = pictures[name]
            first = dispatch.hash_media(data, limits, True, stage=STAGE_VIEWS)
            second = dispatch.hash_media(data, limits, True, stage=STAGE_LOCAL)
            got[spare, name] = (
                dispatch.hash_media(data, limits, True).signals,
                first.signals + second.signals,
            )
    for name in ("bridge", "bridge_crop"):
        one_step, two_steps = got[True, name]
        assert any(s.kind == "local_features" for s in one_step)
        assert got[False, name] == got[True, name]
        # two steps: the exact hashes come with the first; the rest in one step's order
        assert two_steps == one_step


def test_concurrent_uploads_start_one_second_step_ahead_not_one_each(pictures, monkeypatch):
    """The idle-worker test and the count it reads are one step: uploads
    that arrive together and all find the workers idle start one job ahead
    between them, not one each (their first steps would queue behind them
    all). The load is read between the two, so it is held there until every
    caller that got past the test has arrived, or 3 s."""
    callers = 6
    arrived = threading.Condition()
    past_the_test: list[int] = []

    def slow_spare_core() -> bool:
        with arrived:
            past_the_test.append(1)
            arrived.notify_all()
            arrived.wait_for(lambda: len(past_the_test) >= callers, timeout=3.0)
        return True

    monkeypatch.setattr(hashing_module, "spare_core", slow_spare_core)
    hashing = HashingPool(2, ImageLimits())
    try:
        hashing.warm_up()
        _idle(hashing)
        start = threading.Barrier(callers)
        jobs: list[StartedJob | None] = []

        def upload() -> None:
            start.wait(30)
            jobs.append(hashing.started_when_idle(pictures["bridge"], STAGE_LOCAL))

        threads = [threading.Thread(target=upload) for _ in range(callers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        started = [job for job in jobs if job is not None]
        assert len(jobs) == callers
        assert len(started) == 1, len(started)
        assert any(s.kind == "local_features" for s in started[0].result().signals)
        _idle(hashing)  # and the count is whole again: one more may start
        job = hashing.started_when_idle(pictures["bridge"], STAGE_LOCAL)
        assert job is not None
        job.result()
        _idle(hashing)
    finally:
        hashing.close()


def test_a_second_step_not_started_gives_its_worker_back(pictures, monkeypatch):
    """Refused by the load (or failing before it is submitted), a job counted
    as started ahead is counted no more: the next upload may start one."""
    monkeypatch.setattr(hashing_module, "spare_core", lambda: False)
    hashing = HashingPool(2, ImageLimits())
    try:
        hashing.warm_up()
        _idle(hashing)
        assert hashing.started_when_idle(pictures["bridge"], STAGE_LOCAL) is None
        assert hashing._busy == 0
        monkeypatch.setattr(hashing_module, "spare_core", lambda: True)
        with pytest.raises(InvalidArgument):  # empty media: refused by the checks
            hashing.started_when_idle(b"", STAGE_LOCAL)
        assert hashing._busy == 0
    finally:
        hashing.close()


def _broken(pool) -> None:
    """Until the executor knows its worker died."""
    deadline = time.monotonic() + 60
    while not pool._broken:
        assert time.monotonic() < deadline, "the pool did not break"
        time.sleep(0.02)


def test_a_dropped_job_whose_worker_died_does_not_leave_the_pool_broken(pictures):
    """A job started ahead and dropped after its worker died (a decoder
    killed for memory) was never waited for: nobody replaced the broken
    pool, and every later upload was refused at submit (BrokenProcessPool)
    for good. Dropping it now replaces the pool, and a job refused at
    submit by a broken pool replaces it and is sent again."""
    import os

    hashing = HashingPool(2, ImageLimits())
    try:
        hashing.warm_up()
        pool = hashing._pool
        died = hashing._submit(pool, os._exit, 1)  # its worker dies
        _broken(pool)
        deadline = time.monotonic() + 30
        while not died.done():
            assert time.monotonic() < deadline
            time.sleep(0.02)
        StartedJob(hashing, pool, died, time.monotonic() + 20, True).abandon()
        assert hashing._pool is not pool
        assert hashing.hash_query(pictures["bridge"]).signals
        # a worker dead under a job nobody waits for at all: the next upload
        # finds the pool broken at submit
        pool = hashing._pool
        pool.submit(os._exit, 1)
        _broken(pool)
        assert hashing.hash_query(pictures["bridge"]).signals
        assert hashing._pool is not pool
    finally:
        hashing.close()
