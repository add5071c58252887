"""A retro-hunt run's lease is fenced by its owner token, on both stores:
a replica that stalled past its lease while another took the run over is
refused every write (progress, retry, release, finish, a partition, a hit,
a hit's history record), and the run's hits are reported once between the
two (review finding: a stale replica could reschedule the run or move the
new owner's checkpoint)."""

from __future__ import annotations

import hashlib
import threading
import time

from hashdb import HistoryFilter, ReviewFilter
from hashsvc.base.signals import Signal
from hashsvc.core import retro
from tests.test_retro import _history_upload

KNOWN = bytes(range(32))
NEAR = bytes([KNOWN[0] ^ 0x03]) + KNOWN[1:]
SETTINGS = {"retro_batch_records": 50, "retro_poll_seconds": 0.2}
LEASE = 0.3


def _retro_records(store) -> list[str]:
    """The request ids of the hits' records in the history."""
    found = store.query_history(HistoryFilter(), 0, 10_000)
    return [r.detail["request_id"] for r in found if r.rpc == "RetroMatch"]


def scan_on_a_thread(core, run, name: str) -> tuple[threading.Thread, list[BaseException]]:
    """core.retro.scan(run) started on a thread of its own, as a replica's
    hunting thread; what it raised is collected in the list returned."""
    errors: list[BaseException] = []

    def scan() -> None:
        try:
            core.retro.scan(run)
        except BaseException as exc:
            errors.append(exc)

    worker = threading.Thread(target=scan, name=name)
    worker.start()
    return worker, errors


def write_while_claimed(write, other_store, started: threading.Event, claiming: threading.Event):
    """The holder's write (write(): its answer) and another server's claim of
    the run, each on a thread: the claim starts once the write is inside its
    transaction (`started`), and says so (`claiming`). Returns (the write's
    answer, the claimed run, when the write ended, when the claim ended)."""
    ends: dict[str, float] = {}
    answers: dict[str, object] = {}

    def run_write() -> None:
        answers["write"] = write()
        ends["write"] = time.monotonic()

    def claim() -> None:
        assert started.wait(30)
        claiming.set()
        answers["claim"] = other_store.claim_retro_run(60)
        ends["claim"] = time.monotonic()

    threads = [threading.Thread(target=run_write), threading.Thread(target=claim)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)
    return answers["write"], answers["claim"], ends["write"], ends["claim"]


def test_a_stale_replica_is_refused_and_nothing_is_reported_twice(
    store_url, make_core, monkeypatch, retro_engine
):
    # The tests claim and scan; no background worker takes runs.
    monkeypatch.setattr(retro.RetroHunt, "_work", lambda self: None)
    stale = make_core(store_url, **SETTINGS, retro_engine=retro_engine)
    taker = make_core(store_url, **SETTINGS, retro_engine=retro_engine)
    for i in range(400):
        value = NEAR if i % 20 == 0 else hashlib.sha256(b"%d" % i).digest()
        _history_upload(stale.store, Signal("pdq", value, 90), 0.5, request_id=f"up-{i}")
    stale.curation.create_set("s")
    stale.curation.add_entry("s", "e", {}, "op", signal=("pdq", KNOWN.hex(), None))
    (queued,) = stale.store.list_retro_runs()
    mine = stale.store.claim_retro_run(LEASE)
    assert mine.id == queued.id and mine.lease_owner

    # The stale replica stalls after its first hit is committed, before the
    # hit's history record (a long GC pause, a stopped VM): its lease runs
    # out and the other replica claims the run meanwhile.
    stalled, taken = threading.Event(), threading.Event()
    real_record = stale.store.record_retro_hit

    def stalling_record(*args, **kwargs):
        if not stalled.is_set():
            stalled.set()
            assert taken.wait(30)
        return real_record(*args, **kwargs)

    monkeypatch.setattr(stale.store, "record_retro_hit", stalling_record)
    worker, errors = scan_on_a_thread(stale, mine, "stale-replica")
    try:
        assert stalled.wait(30)
        time.sleep(LEASE + 0.1)
        theirs = taker.store.claim_retro_run(60)
    finally:
        taken.set()
        worker.join(30)
    assert not worker.is_alive() and not errors, errors
    assert theirs is not None and theirs.id == mine.id and theirs.lease_owner != mine.lease_owner

    # Every write the stale replica might still make is refused.
    store = stale.store
    assert not store.retro_progress(mine.id, 10**9, 5, 60, owner=mine.lease_owner)
    assert not store.retry_retro_run(mine.id, "stale", 0.0, 3, owner=mine.lease_owner)
    assert not store.release_retro_run(mine.id, owner=mine.lease_owner)
    assert not store.finish_retro_run(mine.id, "done", owner=mine.lease_owner)
    assert not store.finish_retro_run(mine.id, "failed", "by hand", owner=None)  # running
    store.plan_retro_partitions(mine.id, [(0, 10), (10, 20)])
    assert not store.finish_retro_partition(mine.id, 0, 10, 1, owner=mine.lease_owner)
    now = taker.store.get_retro_run(mine.id)
    assert (now.state, now.lease_owner, now.checkpoint, now.failed_attempts, now.error) == (
        "running",
        theirs.lease_owner,
        theirs.checkpoint,
        0,
        "",
    )
    assert not any(p.done for p in taker.store.retro_partitions(mine.id))
    # the one hit it committed while the run was its own, without a record
    assert now.hits == 1 and _retro_records(store) == []

    # The new owner scans the run to its end: the stale replica's hit gets
    # its record from it, and every hit is reported once.
    assert taker.store.finish_retro_partition(mine.id, 0, 10, 1, owner=theirs.lease_owner)
    taker.retro.scan(theirs)
    done = taker.store.get_retro_run(mine.id)
    assert (done.state, done.hits, done.lease_owner) == ("done", 20, None)
    hits = taker.store.retro_matches_of(mine.id)
    assert sorted(r for _, r, _, _ in hits) == sorted(f"up-{i}" for i in range(0, 400, 20))
    records = _retro_records(taker.store)
    assert sorted(records) == sorted(r for _, r, _, _ in hits)
    items = [
        i for i in taker.store.list_review_items(ReviewFilter(), 0, 1000) if i.source == "retro"
    ]
    assert len(items) == 20
