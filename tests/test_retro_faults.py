"""Retro-hunt runs through store faults, on both stores: a step that fails
mid-run (the history table gone for a moment; on PostgreSQL, the server's
connections dropped) is retried from the checkpoint with backoff, shown in
`retro list` meanwhile, and the run ends done with every hit found once;
past retro_max_attempts failures in a row it is failed, and resumes."""

from __future__ import annotations

import hashlib
import time

import grpc
import psutil
import psycopg

from hashdb import open_store
from hashsvc.base.signals import Signal
from hashsvc.v1 import hashsvc_pb2 as pb
from tests.test_retro import _history_upload

SETTINGS = {
    "retro_batch_records": 50,
    "retro_pause_seconds": 0.1,
    "retro_poll_seconds": 0.2,
    "retro_retry_initial_seconds": 0.3,
    "retro_retry_max_seconds": 1.0,
}
KNOWN = bytes(range(32))
NEAR = bytes([KNOWN[0] ^ 0x03]) + KNOWN[1:]


def _hunt(h, uploads: int = 400) -> int:
    """`uploads` allowed uploads, one in 20 a near copy of the entry added
    then; the run's id once it has a checkpoint."""
    store = h.core.store
    for i in range(uploads):
        value = NEAR if i % 20 == 0 else hashlib.sha256(b"%d" % i).digest()
        _history_upload(store, Signal("pdq", value, 90), 0.5, request_id=f"up-{i}")
    h.core.curation.create_set("s")
    h.core.curation.add_entry("s", "e", {}, "op", signal=("pdq", KNOWN.hex(), None))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        runs = store.list_retro_runs()
        if runs and runs[0].checkpoint > 0:
            return runs[0].id
        time.sleep(0.02)
    raise AssertionError("the run made no progress")


def _listed(h, run_id: int) -> pb.RetroRunInfo:
    """The run as `retro list` shows it (ListRetroRuns over gRPC)."""
    stubs, md = h.stubs("operator")
    return stubs.retro.ListRetroRuns(pb.ListRetroRunsRequest(id=run_id), metadata=md).runs[0]


def _wait(h, run_id: int, done, seconds: float = 60) -> pb.RetroRunInfo:
    deadline = time.monotonic() + seconds
    run = None
    while time.monotonic() < deadline:
        try:
            run = _listed(h, run_id)
        except grpc.RpcError as exc:  # the API's own read met a dropped connection
            assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc
            time.sleep(0.05)
            continue
        if done(run):
            return run
        time.sleep(0.05)
    raise AssertionError(f"retro run not as awaited after {seconds} s: {run}")


def _rename_table(store_url: str, old: str, new: str) -> None:
    """Someone (a migration gone wrong, an operator) takes the table away."""
    if store_url.startswith("sqlite"):
        import sqlite3

        conn = sqlite3.connect(store_url[len("sqlite:///") :], timeout=30)
        conn.execute(f"ALTER TABLE {old} RENAME TO {new}")
        conn.commit()
        conn.close()
    else:
        with psycopg.connect(store_url) as conn:
            conn.execute(f"ALTER TABLE {old} RENAME TO {new}")


def _hits(store_url: str, run_id: int) -> int:
    probe = open_store(store_url)
    try:
        return len(probe.retro_matches_of(run_id))
    finally:
        probe.close()


def test_a_failed_step_is_retried_from_the_checkpoint(store_url, make_harness, retro_engine):
    """The history table gone for a moment: the step fails (attempt 1, shown
    in `retro list`), claims fail until it is back (not attempts: nothing
    was scanned), then the run goes on from its checkpoint. On either
    engine (the child process reads the table too)."""
    h = make_harness(store_url, **SETTINGS, retro_engine=retro_engine)
    run_id = _hunt(h)
    _rename_table(store_url, "match_history", "match_history_away")
    try:
        retrying = _wait(h, run_id, lambda r: "retried from its checkpoint" in r.error)
        assert retrying.state == "running" and retrying.error.startswith("attempt 1 of 5 failed")
        time.sleep(1.5)  # past the backoff: claims fail while the table is away, not counted
        assert _listed(h, run_id).state == "running"
    finally:
        _rename_table(store_url, "match_history_away", "match_history")
    finished = _wait(h, run_id, lambda r: r.state not in ("queued", "running"))
    assert (finished.state, finished.hits, finished.error) == ("done", 20, "")
    assert finished.uploads_scanned >= 400
    assert _hits(store_url, run_id) == 20


def test_past_the_attempts_the_run_fails_and_resumes(store_url, make_harness):
    """The hits' table gone: every step with a hit fails (claims do not);
    after the 2nd attempt the run is failed; `retro run --resume` later
    finishes it."""
    h = make_harness(store_url, **SETTINGS, retro_max_attempts=2)
    run_id = _hunt(h)
    _rename_table(store_url, "retro_matches", "retro_matches_away")
    try:
        failed = _wait(h, run_id, lambda r: r.state == "failed")
        assert failed.error.endswith("(attempt 2 of 2: failed)"), failed.error
        assert "retro_matches" in failed.error
    finally:
        _rename_table(store_url, "retro_matches_away", "retro_matches")
    stubs, md = h.stubs("operator")
    stubs.retro.StartRetroRun(pb.StartRetroRunRequest(resume_run_id=run_id), metadata=md)
    finished = _wait(h, run_id, lambda r: r.state not in ("queued", "running"))
    assert (finished.state, finished.hits) == ("done", 20)
    assert _hits(store_url, run_id) == 20


def test_attempts_are_counted_across_servers(pg_url, make_harness):
    """Two servers on one PostgreSQL store, the hits' table gone so every
    step with a hit fails: attempt 1 on the first server, attempt 2 on the
    second (which claims the run after the first stopped: counted in memory
    it was attempt 1 again there, and a run could go round the replicas
    forever), attempt 3 of 3 fails it, whichever server runs it. Resumed,
    its count starts again. Each server's backoff is its own (4 s, 5 s), so
    the error says which server wrote it, and neither retries the run before
    the test has seen its attempt."""

    def server(backoff: float):
        return make_harness(
            pg_url,
            **{
                **SETTINGS,
                "retro_retry_initial_seconds": backoff,
                "retro_retry_max_seconds": backoff,
                "retro_max_attempts": 3,
            },
        )

    first = server(4)
    run_id = _hunt(first)
    _rename_table(pg_url, "retro_matches", "retro_matches_away")
    try:
        one = _wait(first, run_id, lambda r: r.error.endswith("in 4 s"))
        assert one.state == "running" and one.error.startswith("attempt 1 of 3 failed"), one.error
        make_harness.stop(first)  # its run in backoff: the next server to claim it is the second
        second = server(5)
        two = _wait(second, run_id, lambda r: r.error.endswith("in 5 s"))
        assert two.state == "running" and two.error.startswith("attempt 2 of 3 failed"), two.error
        server(1)  # a third one: whichever claims the run next fails it
        failed = _wait(second, run_id, lambda r: r.state != "running")
        assert failed.state == "failed", failed
        assert failed.error.endswith("(attempt 3 of 3: failed)"), failed.error
        stubs, md = second.stubs("operator")
        stubs.retro.StartRetroRun(pb.StartRetroRunRequest(resume_run_id=run_id), metadata=md)
        again = _wait(second, run_id, lambda r: r.state != "queued" and r.error)
        assert again.error.startswith("attempt 1 of 3 failed"), again.error
    finally:
        _rename_table(pg_url, "retro_matches_away", "retro_matches")
    finished = _wait(second, run_id, lambda r: r.state not in ("queued", "running"))
    assert (finished.state, finished.hits) == ("done", 20)
    assert _hits(pg_url, run_id) == 20


def _drop_my_connections(store_url: str) -> int:
    """What a PostgreSQL restart does to this process: every connection it
    holds to the server is ended (found by their client ports; nobody
    else's)."""
    mine = {
        c.laddr.port
        for c in psutil.Process().net_connections(kind="tcp")
        if c.raddr and c.raddr.port == 5432
    }
    with psycopg.connect(store_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid, client_port FROM pg_stat_activity WHERE pid <> pg_backend_pid()"
        ).fetchall()
        ended = 0
        for pid, port in rows:
            if port in mine:
                conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
                ended += 1
    return ended


def test_dropped_postgresql_connections_do_not_fail_the_run(pg_url, make_harness, caplog):
    """The server's connections ended under the run, every 0.1 s until a
    step of the run has failed on one: the run goes on from its checkpoint
    and finishes with every hit, once."""
    h = make_harness(pg_url, **{**SETTINGS, "retro_pause_seconds": 0.2})
    run_id = _hunt(h, uploads=600)
    ended = 0
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and "retried from its checkpoint" not in caplog.text:
        ended += _drop_my_connections(pg_url)
        time.sleep(0.1)
    assert ended and f"retro-hunt {run_id}: attempt 1 of 5 failed" in caplog.text
    finished = _wait(h, run_id, lambda r: r.state not in ("queued", "running"))
    assert (finished.state, finished.hits, finished.error) == ("done", 30, "")
    assert _hits(pg_url, run_id) == 30
