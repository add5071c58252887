"""retro_engine = "process" (hashsvc/core/retro_process.py), on both stores:
one long-lived scanning child a server, at retro_nice, started when a run
first needs it and again after it died; a child killed or hung mid-run
fails the batch and the run resumes from its checkpoint with every hit
reported once; the child ends with the server, also when the server is
killed with -9 (no orphan)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import threading
import time

import pytest

from hashdb import HistoryFilter, open_store
from hashdb.times import to_micros
from hashsvc.base.signals import Signal
from hashsvc.core import auth
from hashsvc.core.config import Config
from hashsvc.v1 import hashsvc_pb2 as pb
from hashsvc_testing.stubs import Stubs
from tests.test_process import ServerProcess
from tests.test_retro import _history_upload

KNOWN = bytes(range(32))
NEAR = bytes([KNOWN[0] ^ 0x03]) + KNOWN[1:]
SETTINGS = {
    "retro_engine": "process",
    "retro_batch_records": 50,
    "retro_poll_seconds": 0.2,
    "retro_retry_initial_seconds": 0.3,
    "retro_retry_max_seconds": 1.0,
}


def _uploads(store, n: int = 400, tag: str = "up") -> set[str]:
    """n allowed uploads, one in 20 a near copy of KNOWN: the copies' ids."""
    copies = set()
    for i in range(n):
        value = NEAR if i % 20 == 0 else hashlib.sha256(b"%s%d" % (tag.encode(), i)).digest()
        _history_upload(store, Signal("pdq", value, 90), 0.5, request_id=f"{tag}-{i}")
        if i % 20 == 0:
            copies.add(f"{tag}-{i}")
    return copies


def _wait(store, run_id: int, done, seconds: float = 90):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        run = store.get_retro_run(run_id)
        if done(run):
            return run
        time.sleep(0.02)
    raise AssertionError(
        f"retro run not as awaited after {seconds} s: {store.get_retro_run(run_id)}"
    )


def _reported(store, run_id: int) -> list[str]:
    """The request ids of the run's hits, and of their history records."""
    hits = sorted(r for _, r, _, _ in store.retro_matches_of(run_id))
    found = store.query_history(HistoryFilter(), 0, 10_000)
    records = sorted(
        r.detail["request_id"]
        for r in found
        if r.rpc == "RetroMatch" and r.detail["run_id"] == run_id
    )
    assert hits == records
    return hits


def _alive(pid: int) -> bool:
    """Whether the process runs (a zombie, dead but not yet reaped, does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_the_child_scans_runs_niced_and_ends_with_the_server(store_url, make_core):
    core = make_core(store_url, **SETTINGS, retro_nice=7)
    assert core.retro.child is not None and core.retro.child.pid is None  # lazily
    copies = _uploads(core.store)
    core.curation.create_set("s")
    core.curation.add_entry("s", "e", {}, "op", signal=("pdq", KNOWN.hex(), None))
    (run,) = core.store.list_retro_runs()
    done = _wait(core.store, run.id, lambda r: r.state == "done")
    assert (done.hits, done.scanned) == (20, 400)
    assert _reported(core.store, run.id) == sorted(copies)
    pid = core.retro.child.pid
    assert pid is not None and pid != os.getpid()
    assert os.getpriority(os.PRIO_PROCESS, pid) >= 7
    # one long-lived child: the next run is scanned by the same one
    again = core.retro.start_run("op", "s")
    again = _wait(core.store, again.id, lambda r: r.state == "done")
    assert again.hits == 0 and core.retro.child.pid == pid  # each hit once, ever
    make_core.stop(core)
    deadline = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(pid)


def test_every_thread_of_the_child_is_niced(store_url, make_core):
    """retro_nice reaches each thread of the child, also one an import started
    before the child lowered itself (OpenBLAS's, at numpy's import: it stayed
    at nice 0), and its helper threads (retro_threads)."""
    core = make_core(store_url, **SETTINGS, retro_threads=2, retro_nice=10)
    copies = _uploads(core.store)
    core.curation.create_set("s")
    core.curation.add_entry("s", "e", {}, "op", signal=("pdq", KNOWN.hex(), None))
    (run,) = core.store.list_retro_runs()
    done = _wait(core.store, run.id, lambda r: r.state == "done")
    assert (done.hits, done.scanned) == (20, 400)
    assert _reported(core.store, run.id) == sorted(copies)
    pid = core.retro.child.pid
    tasks = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    assert len(tasks) > 1  # the import's thread, the helper (once used)
    assert min(os.getpriority(os.PRIO_PROCESS, t) for t in tasks) >= 10


def test_a_child_killed_mid_run_is_started_again_and_the_run_resumes(store_url, make_core):
    core = make_core(store_url, **SETTINGS, retro_pause_seconds=0.1)
    copies = _uploads(core.store)
    core.curation.create_set("s")
    core.curation.add_entry("s", "e", {}, "op", signal=("pdq", KNOWN.hex(), None))
    (run,) = core.store.list_retro_runs()
    _wait(core.store, run.id, lambda r: r.checkpoint > 0)
    pid = core.retro.child.pid
    os.kill(pid, signal.SIGKILL)
    done = _wait(core.store, run.id, lambda r: r.state not in ("queued", "running"))
    assert (done.state, done.hits, done.scanned >= 400) == ("done", 20, True)
    # the batch it died in failed (one attempt), or it had answered it
    # already and the next batch went to the new child
    assert done.failed_attempts in (0, 1)
    assert _reported(core.store, run.id) == sorted(copies)
    assert core.retro.child.pid not in (None, pid)


def test_the_child_pauses_between_its_batches(store_url, make_core):
    """retro_pause_seconds paces the child's scan: it waits before each batch
    but a run's first, even when the server asks for the next batch at once
    (a pause of the server's overlapped the child's next batch: it paced
    nothing), and the batches still hold every copy."""
    pause = 0.3
    settings = {**SETTINGS, "retro_poll_seconds": 3600, "retro_pause_seconds": pause}
    core = make_core(store_url, **settings)
    copies = _uploads(core.store, 200)
    hash_set = core.curation.create_set("s")
    core.curation.add_entry("s", "e", {}, "op", signal=("pdq", KNOWN.hex(), None))
    (first,) = core.store.list_retro_runs()
    _wait(core.store, first.id, lambda r: r.state == "done")
    # a run of its own, its batches asked of the child here, none held
    run = core.store.create_retro_run(
        "test", "test", hash_set.id, first.entry_ids, to_micros(first.since)
    )
    claimed = core.store.claim_retro_run(60)
    assert claimed is not None and claimed.id == run.id
    arrived, found = [], set()
    started = time.monotonic()
    batches = core.retro.child.batches(claimed, 0, 50, threading.Event(), lambda: True)
    for _, read, uploads in batches:
        arrived.append(time.monotonic() - started)
        assert read == 50
        found |= {upload.request_id for upload, hits in uploads if hits}
    assert len(arrived) == 4 and found == copies
    # each batch but the first waited the pause (a batch of 50 takes ms)
    gaps = [later - earlier for earlier, later in zip(arrived, arrived[1:], strict=False)]
    assert min(gaps) >= pause * 0.95, gaps


def test_a_child_that_died_between_runs_is_started_again(store_url, make_core):
    core = make_core(store_url, **SETTINGS)
    _uploads(core.store, 100)
    core.curation.create_set("s")
    core.curation.add_entry("s", "e", {}, "op", signal=("pdq", KNOWN.hex(), None))
    (run,) = core.store.list_retro_runs()
    _wait(core.store, run.id, lambda r: r.state == "done")
    pid = core.retro.child.pid
    os.kill(pid, signal.SIGKILL)
    # until it can be reaped (the engine's poll() sees it gone), not only its
    # main thread a zombie ("Z" while its other threads still exit: its pipes
    # still open, its poll() None, and the next run's first batch failed)
    deadline = time.monotonic() + 60
    while core.retro.child.pid is not None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not _alive(pid)
    copies = _uploads(core.store, 100, "later")
    core.curation.add_entry("s", "e2", {}, "op", signal=("pdq", NEAR.hex(), None))
    later = max(core.store.list_retro_runs(), key=lambda r: r.id)
    done = _wait(core.store, later.id, lambda r: r.state not in ("queued", "running"))
    # NEAR itself is 3 bits from the copies of both rounds
    assert (done.state, done.failed_attempts, done.hits) == ("done", 0, 10)
    assert copies <= set(_reported(core.store, later.id))
    assert core.retro.child.pid not in (None, pid)


def test_a_hung_child_is_stopped_and_the_run_resumes(store_url, make_core):
    """A child that stops answering (SIGSTOP here: a hang) holds no run for
    ever: past retro_process_batch_seconds it is killed, the batch fails
    and the run is retried from its checkpoint."""
    # a limit well over a batch's time on a loaded machine (its first batch
    # opens the store and builds the scanner), the child not niced
    core = make_core(
        store_url,
        **SETTINGS,
        retro_pause_seconds=0.1,
        retro_process_batch_seconds=15.0,
        retro_nice=0,
    )
    copies = _uploads(core.store)
    core.curation.create_set("s")
    core.curation.add_entry("s", "e", {}, "op", signal=("pdq", KNOWN.hex(), None))
    (run,) = core.store.list_retro_runs()
    _wait(core.store, run.id, lambda r: r.checkpoint > 0)
    pid = core.retro.child.pid
    os.kill(pid, signal.SIGSTOP)
    done = _wait(core.store, run.id, lambda r: r.state not in ("queued", "running"))
    assert (done.state, done.hits) == ("done", 20)
    assert 1 <= done.failed_attempts < 5  # the hung batch (and any slow one after it)
    assert _reported(core.store, run.id) == sorted(copies)
    assert not _alive(pid)


@pytest.mark.parametrize(
    "db_url",
    [
        "sqlite:///:memory:",
        # review: accepted before, and SQLite opened it in memory (a URI), so the
        # child saw an empty database and every run failed ("retro run 1 is not in
        # the store", attempt 5 of 5) without scanning anything
        "sqlite:///file:hunts?mode=memory&cache=shared",
    ],
)
def test_an_in_memory_store_is_refused(db_url):
    with pytest.raises(ValueError, match="in-memory"):
        Config(db_url=db_url, retro_engine="process")
    Config(db_url="sqlite:///hunts.db", retro_engine="process")  # a file is fine


def _children(pid: int) -> set[int]:
    found = set()
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            found |= {int(c) for c in f.read().split()}
    return found


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode()
    except FileNotFoundError:
        return ""


def test_kill_9_of_the_server_leaves_no_child_and_the_run_resumes(store_url, tmp_path):
    """The server killed with -9 mid-run: its scanning child ends too (no
    orphan), and the restarted server (another child) finishes the run
    with every hit once."""
    store = open_store(store_url)
    try:
        copies = _uploads(store, 3000)
        _, token = auth.create_token(store, "admin", "test")
    finally:
        store.close()
    md = (("authorization", f"Bearer {token}"),)
    config = tmp_path / "hashsvc.toml"
    config.write_text(
        'retro_engine = "process"\nretro_batch_records = 100\nretro_pause_seconds = 0.1\n'
        "retro_lease_seconds = 1.0\nretro_poll_seconds = 0.2\n"
    )
    server = ServerProcess(store_url, tmp_path, ("--config", str(config)))
    stubs = Stubs(server.channel)
    stubs.curation.CreateSet(pb.CreateSetRequest(name="s"), metadata=md)
    stubs.curation.AddEntry(
        pb.AddEntryRequest(
            set="s", name="e", signal=pb.SignalValue(signal_type="pdq", value=KNOWN.hex())
        ),
        metadata=md,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        (run,) = stubs.retro.ListRetroRuns(pb.ListRetroRunsRequest(), metadata=md).runs
        if run.uploads_scanned >= 500:
            break
        time.sleep(0.05)
    assert run.state == "running" and 0 < run.uploads_scanned < 3000
    (child,) = [c for c in _children(server.proc.pid) if "retro_process" in _cmdline(c)]
    server.stop(signal.SIGKILL)
    deadline = time.monotonic() + 10
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child), "the scanning child outlived its server"

    restarted = ServerProcess(store_url, tmp_path, ("--config", str(config)))
    try:
        stubs = Stubs(restarted.channel)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            (run,) = stubs.retro.ListRetroRuns(pb.ListRetroRunsRequest(), metadata=md).runs
            if run.state not in ("queued", "running"):
                break
            time.sleep(0.1)
        assert (run.state, run.hits) == ("done", 150)
    finally:
        assert restarted.stop(signal.SIGTERM) == 0
    probe = open_store(store_url)
    try:
        assert _reported(probe, run.id) == sorted(copies)
    finally:
        probe.close()


# A stand-in for the scanning child: it answers "ready" and reads one batch's
# request; what it does then is the test's (the script's rest, argv[1]).
_CHILD_START = """
import os, pickle, struct, sys, time
def send(message):
    data = pickle.dumps(message)
    os.write(1, struct.pack("!Q", len(data)) + data)
send((0, "ready", None))
(size,) = struct.unpack("!Q", os.read(0, 8))
while size:
    size -= len(os.read(0, size))
"""

# It starts the batch's answer and stops midway (stopped, frozen, stuck
# writing): its header says more bytes than it sends.
_STALLING_CHILD = """
os.write(1, struct.pack("!Q", 1000) + b"x" * 10)  # 10 of 1,000 bytes
time.sleep(float(sys.argv[1]))
"""

# It sends an answer the server cannot read (larger than any answer may be,
# or bytes that are not a pickle), then waits.
_GARBLING_CHILD = """
if sys.argv[1] == "huge":
    os.write(1, struct.pack("!Q", 1 << 62) + b"x" * 64)
else:
    os.write(1, struct.pack("!Q", 16) + b"not a pickle....")
time.sleep(60)
"""


@contextlib.contextmanager
def _engine_with_child(monkeypatch, script: str, argument: str, batch_seconds: float):
    """A process engine whose children run `script` (after _CHILD_START) with
    `argument`: yields (the engine, started, a run's batches to read), where
    started lists the children it started; all of them are killed after."""
    import subprocess
    import sys
    from datetime import UTC, datetime
    from types import SimpleNamespace

    from hashsvc.core import retro_process
    from hashsvc.matching.policy import PdqPolicy

    started: list[subprocess.Popen] = []

    def start_child(settings):
        proc = subprocess.Popen(
            [sys.executable, "-c", _CHILD_START + script, argument],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            bufsize=0,
        )
        started.append(proc)
        return proc

    monkeypatch.setattr(retro_process, "_start_child", start_child)
    engine = retro_process.ProcessRetroEngine(
        "sqlite:///unused.db",
        retro_process.ProcessSettings(batch_seconds=batch_seconds),
        PdqPolicy(),
        None,
        None,
    )
    run = SimpleNamespace(id=1, since=datetime.now(UTC), last_history_id=100)
    try:
        engine.start()
        yield (
            engine,
            started,
            lambda: list(engine.batches(run, 0, 50, threading.Event(), lambda: True)),
        )
    finally:
        engine.close()
        for proc in started:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_a_child_stalled_midway_through_an_answer_is_stopped(monkeypatch):
    """Review: the server read an answer's bytes with no time limit once the
    first had come, so a child stalled midway through one (stopped, frozen)
    held the hunting thread, and the run, for as long as it stalled:
    retro_process_batch_seconds did not apply. Now the batch fails in time
    and the child is killed (the run is retried from its checkpoint)."""
    from hashsvc.core import retro_process

    stall_seconds = 60.0
    with _engine_with_child(monkeypatch, _STALLING_CHILD, str(stall_seconds), 1.0) as (
        _,
        started,
        batches,
    ):
        began = time.monotonic()
        with pytest.raises(retro_process.ChildFailed, match="retro_process_batch_seconds"):
            batches()
        assert time.monotonic() - began < stall_seconds / 4
        assert started[0].poll() is not None  # killed, not left stalled


@pytest.mark.parametrize("answer", ["huge", "garbled"])
def test_a_child_whose_answer_cannot_be_read_is_stopped(monkeypatch, answer):
    """Review: an answer too large or not unpickled raised without stopping
    the child, so its unread bytes were taken as the next answer's header and
    every retry of the run failed against the same child. Now the child is
    killed, and the next batch gets a new one."""
    from hashsvc.core import retro_process

    with _engine_with_child(monkeypatch, _GARBLING_CHILD, answer, 10.0) as (_, started, batches):
        with pytest.raises(retro_process.ChildFailed):
            batches()
        deadline = time.monotonic() + 10
        while started[0].poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert started[0].poll() is not None  # killed: a new child for the next batch


def test_a_pause_that_cannot_be_slept_is_refused():
    """retro_pause_seconds is bounded: an infinite or huge pause was
    accepted and then failed every batch (the child's sleep and the hunting
    thread's wait raise OverflowError), a run retried until it failed."""
    from hashsvc.core.config import MAX_RETRO_PAUSE_SECONDS, Config

    for bad in (-0.1, float("inf"), float("nan"), 1e300, MAX_RETRO_PAUSE_SECONDS + 1):
        with pytest.raises(ValueError, match="retro_pause_seconds"):
            Config(retro_pause_seconds=bad)
    assert Config(retro_pause_seconds=MAX_RETRO_PAUSE_SECONDS).retro_pause_seconds == 3600
