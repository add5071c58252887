"""The retro-hunts of AddEntry and of a review confirmed into a set are owed
in the store in the entry's own transaction (a RetroPending row), on both
stores: a queueing failure leaves the hunt owed, and the running server
queues it once the hold lapses (no restart needed); a server killed with -9
between the entry's commit and the hunt's queueing leaves it owed, and the
restarted server runs it (PostgreSQL: the kill lands in that very gap)."""

from __future__ import annotations

import hashlib
import signal
import threading
import time
from datetime import UTC, datetime

import grpc
import psycopg
import pytest

from hashdb import open_store
from hashsvc.base.signals import Signal
from hashsvc.core import auth
from hashsvc.v1 import hashsvc_pb2 as pb
from hashsvc_testing.stubs import Stubs
from tests.test_process import ServerProcess
from tests.test_retro import _flipped, _history_upload, _retro_items, _wait_runs


@pytest.fixture
def harness_config():
    # a hunt whose queueing failed is retried once its 1 s hold lapses
    return {"retro_poll_seconds": 0.2, "retro_lease_seconds": 1.0}


class FailingQueue:
    """RetroHunt._queue failing while `failing` is set (queueing broke:
    the store refused, the server is dying), then the real one again."""

    def __init__(self, retro) -> None:
        self.real = retro._queue
        self.failing = True
        self.failures = 0

    def __call__(self, *args, **kwargs):
        if self.failing:
            self.failures += 1
            raise RuntimeError("queueing the retro-hunt failed")
        return self.real(*args, **kwargs)


def _wait_run_of(stubs, md, trigger: str, seconds: float = 30) -> pb.RetroRunInfo:
    """The one run of `trigger`, once it is finished (bounded)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        runs = stubs.retro.ListRetroRuns(pb.ListRetroRunsRequest(), metadata=md).runs
        mine = [r for r in runs if r.trigger == trigger]
        if mine and mine[0].state not in ("queued", "running"):
            (run,) = mine
            return run
        time.sleep(0.1)
    raise AssertionError(f"no finished {trigger} run after {seconds} s")


def _pdq_entry(set_name: str, name: str, value: bytes) -> pb.AddEntryRequest:
    signal_value = pb.SignalValue(signal_type="pdq", value=value.hex())
    return pb.AddEntryRequest(set=set_name, name=name, signal=signal_value)


def test_add_entry_owes_its_hunt_with_the_entry_and_a_failure_is_retried(
    harness, operator, reviewer, monkeypatch
):
    ops, op_md = operator
    rev, rev_md = reviewer
    store = harness.core.store
    known = hashlib.sha256(b"owed-add").digest()
    asked = _history_upload(store, Signal("pdq", _flipped(known, 6), 90), 0.5)
    ops.curation.CreateSet(pb.CreateSetRequest(name="isis"), metadata=op_md)
    queue = FailingQueue(harness.core.retro)
    monkeypatch.setattr(harness.core.retro, "_queue", queue)

    entry = ops.curation.AddEntry(_pdq_entry("isis", "amaq-1", known), metadata=op_md)
    (owed,) = store.list_retro_pending()
    assert (owed.trigger, owed.requested_by) == ("AddEntry", "test-operator")
    assert owed.entry_ids == (entry.id,)
    with pytest.raises(grpc.RpcError) as taken:  # the same name: nothing written
        ops.curation.AddEntry(_pdq_entry("isis", "amaq-1", known), metadata=op_md)
    assert taken.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert [p.id for p in store.list_retro_pending()] == [owed.id]
    time.sleep(1.5)  # the hold lapsed: the server tried again, and failed again
    assert queue.failures >= 2 and store.list_retro_runs() == []

    queue.failing = False  # queueing works again: no restart needed
    run = _wait_run_of(ops, op_md, "AddEntry")
    assert (run.state, run.hits) == ("done", 1)
    (found,) = _retro_items(rev, rev_md)
    assert found.request_id == asked
    assert store.list_retro_pending() == []


def test_a_confirmed_review_owes_its_hunt_with_the_entry(
    harness, operator, matcher, reviewer, monkeypatch
):
    ops, op_md = operator
    m, m_md = matcher
    rev, rev_md = reviewer
    store = harness.core.store
    known = hashlib.sha256(b"owed-review").digest()
    strict = pb.Threshold(signal_type="pdq", block_distance=10, review_distance=45)
    ops.curation.CreateSet(pb.CreateSetRequest(name="seed", thresholds=[strict]), metadata=op_md)
    ops.curation.CreateSet(pb.CreateSetRequest(name="isis", review_target=True), metadata=op_md)
    ops.curation.AddEntry(_pdq_entry("seed", "x", known), metadata=op_md)

    def ask(value: bytes) -> pb.MatchResponse:
        query = pb.SignalValue(signal_type="pdq", value=value.hex())
        return m.matcher.Match(pb.MatchRequest(signal=query), metadata=m_md)

    let_through = ask(_flipped(known, 48))
    assert let_through.decision == pb.ALLOW
    assert ask(_flipped(known, 40)).decision == pb.REVIEW
    _wait_runs(ops, op_md)  # the seed entry's run
    queue = FailingQueue(harness.core.retro)
    monkeypatch.setattr(harness.core.retro, "_queue", queue)
    item = rev.review.ClaimReviewItem(pb.ClaimReviewItemRequest(), metadata=rev_md)
    resolve = pb.ResolveReviewItemRequest(id=item.id, resolution="confirmed", add_to_set="isis")
    resolved = rev.review.ResolveReviewItem(resolve, metadata=rev_md)
    (owed,) = store.list_retro_pending()
    assert owed.trigger == "ResolveReview" and owed.requested_by.startswith("test-reviewer")
    assert owed.entry_ids == (resolved.added_entry_id,)
    assert queue.failures == 1

    queue.failing = False
    run = _wait_run_of(ops, op_md, "ResolveReview")
    assert (run.state, run.hits) == ("done", 1)
    (found,) = _retro_items(rev, rev_md)
    assert found.request_id == let_through.request_id
    assert store.list_retro_pending() == []


def test_kill_9_between_add_entry_and_its_hunt_then_the_hunt_runs(pg_url, tmp_path):
    """The server commits AddEntry's entry and is killed with -9 before its
    hunt is queued (the test holds a lock on retro_runs, so queueing waits in
    that gap): the restarted server queues the hunt once the dead server's
    hold lapses, and the upload let through is found."""
    store = open_store(pg_url)
    try:
        known = hashlib.sha256(b"killed-add").digest()
        asked = _history_upload(store, Signal("pdq", _flipped(known, 5), 90), 0.5)
        _, token = auth.create_token(store, "admin", "test")
    finally:
        store.close()
    md = (("authorization", f"Bearer {token}"),)
    config = tmp_path / "hashsvc.toml"
    config.write_text("retro_lease_seconds = 2.0\nretro_poll_seconds = 0.2\n")
    server = ServerProcess(pg_url, tmp_path, ("--config", str(config)))
    stubs = Stubs(server.channel)
    stubs.curation.CreateSet(pb.CreateSetRequest(name="isis"), metadata=md)
    with psycopg.connect(pg_url) as lock:
        lock.execute("LOCK TABLE retro_runs IN EXCLUSIVE MODE")  # until rollback
        call = stubs.curation.AddEntry.future(_pdq_entry("isis", "amaq-1", known), metadata=md)
        deadline = time.monotonic() + 30
        with psycopg.connect(pg_url, autocommit=True) as reader:
            while time.monotonic() < deadline:
                owed = reader.execute("SELECT entry_ids FROM retro_pending").fetchall()
                if owed:
                    break
                time.sleep(0.05)
            assert owed, "AddEntry did not commit its entry"
            entries = reader.execute("SELECT COUNT(*) FROM entries").fetchone()[0]
        assert entries == 1 and not call.done()  # committed; the hunt not queued yet
        server.stop(signal.SIGKILL)
        lock.rollback()
    with pytest.raises(grpc.RpcError):
        call.result(timeout=30)  # the caller saw the server die

    restarted = ServerProcess(pg_url, tmp_path, ("--config", str(config)))
    try:
        stubs = Stubs(restarted.channel)
        run = _wait_run_of(stubs, md, "AddEntry", seconds=60)
        assert (run.state, run.hits) == ("done", 1)
        (found,) = _retro_items(stubs, md)
        assert found.request_id == asked
        check = open_store(pg_url)
        try:
            assert check.list_retro_pending() == []
        finally:
            check.close()
    finally:
        assert restarted.stop(signal.SIGTERM) == 0


def test_a_live_loads_hunt_is_held_however_long_it_runs(store_url, make_core):
    """A bulk load's pending hunt is renewed while the load runs (past its
    hold), so no other server queues it half-way; once let go (the server
    stops), it is free at once."""
    core = make_core(store_url, retro_poll_seconds=0.1, retro_lease_seconds=0.5)
    core.curation.create_set("partner")
    hash_set = core.store.get_set("partner")
    pending = core.retro.hunt_pending(hash_set.id, datetime.now(UTC), "BulkLoad", "op")
    other = threading.Event()
    taken: list = []

    def another_server() -> None:  # what a second replica's claim would get
        while not other.is_set():
            taken.extend(core.store.claim_retro_pending(0.5))
            time.sleep(0.05)

    thief = threading.Thread(target=another_server)
    thief.start()
    try:
        time.sleep(2.0)  # four holds long
    finally:
        other.set()
        thief.join()
    assert taken == []
    assert [p.id for p in core.store.list_retro_pending()] == [pending.id]
    make_core.stop(core)
    reopened = open_store(store_url)
    try:
        (claimed,) = reopened.claim_retro_pending(60)
        assert claimed.id == pending.id and claimed.trigger == "BulkLoad"
    finally:
        reopened.close()
