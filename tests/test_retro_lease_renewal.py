"""A retro-hunt step whose hits take longer to write than the run's lease
keeps its lease (renewed from inside the step, RunLease), on both stores
(issue 20): a flooding uploader's near-copies of propaganda not yet known,
then the entry added, make every record of a batch a hit; before, the
step outlasted the lease, another replica took the run over and redid the
batch, again and again. And a holder that loses its run mid-step stops
writing at once, without an error."""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime

from hashdb import HistoryFilter, ReviewFilter, retro_sql
from hashsvc.base.signals import Signal
from hashsvc.core import retro
from tests.test_retro import _history_upload
from tests.test_retro_lease import scan_on_a_thread, write_while_claimed

KNOWN = bytes(range(32))
NEAR = bytes([KNOWN[0] ^ 0x03]) + KNOWN[1:]
LEASE = 1.0
COPIES = 50
# Each hit's write slowed so a step's hits (COPIES * HIT_SECONDS) outlast
# the lease several times over, whatever the machine's speed.
HIT_SECONDS = 0.05
SETTINGS = {
    "retro_batch_records": 100,  # every copy in one step
    "retro_lease_seconds": LEASE,
    "retro_poll_seconds": 0.2,
}


def _flood(core) -> list[str]:
    """COPIES near-copies uploaded (and a few unrelated uploads), then the
    entry added: its run queued; the copies' request ids."""
    copies = []
    for i in range(COPIES + 10):
        if i < COPIES:
            copies.append(
                _history_upload(core.store, Signal("pdq", NEAR, 90), 0.5, request_id=f"copy-{i}")
            )
        else:
            other = bytes([i]) * 32
            _history_upload(core.store, Signal("pdq", other, 90), 0.5, request_id=f"other-{i}")
    core.curation.create_set("s")
    core.curation.add_entry("s", "e", {}, "op", signal=("pdq", KNOWN.hex(), None))
    return copies


def _slow_hits(monkeypatch, store) -> list[float]:
    """The store's hit writes slowed by HIT_SECONDS; the times they began."""
    calls: list[float] = []
    real = store.add_retro_match

    def slow(*args, **kwargs):
        calls.append(time.monotonic())
        time.sleep(HIT_SECONDS)
        return real(*args, **kwargs)

    monkeypatch.setattr(store, "add_retro_match", slow)
    return calls


def _retro_records(store) -> list[str]:
    found = store.query_history(HistoryFilter(), 0, 10_000)
    return [r.detail["request_id"] for r in found if r.rpc == "RetroMatch"]


def test_a_step_with_many_hits_keeps_its_lease(
    store_url, make_core, monkeypatch, caplog, retro_engine
):
    monkeypatch.setattr(retro.RetroHunt, "_work", lambda self: None)  # the test claims
    holder = make_core(store_url, **SETTINGS, retro_engine=retro_engine)
    other = make_core(store_url, **SETTINGS, retro_engine=retro_engine)
    copies = _flood(holder)
    run = holder.store.claim_retro_run(LEASE)
    assert run is not None
    calls = _slow_hits(monkeypatch, holder.store)

    caplog.set_level(logging.WARNING)
    worker, errors = scan_on_a_thread(holder, run, "holder")
    taken = []
    try:
        # The other server tries to claim the run all along (bounded).
        deadline = time.monotonic() + 60
        while worker.is_alive() and time.monotonic() < deadline:
            claimed = other.store.claim_retro_run(LEASE)
            if claimed is not None:
                taken.append(claimed)
                break
            time.sleep(0.05)
    finally:
        worker.join(60)
    assert not worker.is_alive() and not errors, errors
    assert taken == [], "the other server took the run over from its live holder"
    # the step did outlast the lease: the renewals inside it held the run
    assert len(calls) == COPIES and calls[-1] - calls[0] > 2 * LEASE

    done = holder.store.get_retro_run(run.id)
    assert (done.state, done.hits, done.lease_owner) == ("done", COPIES, None)
    assert done.scanned == COPIES + 10
    hits = holder.store.retro_matches_of(run.id)
    assert sorted(r for _, r, _, _ in hits) == sorted(copies)
    assert sorted(_retro_records(holder.store)) == sorted(copies)
    items = [
        i for i in holder.store.list_review_items(ReviewFilter(), 0, 1000) if i.source == "retro"
    ]
    assert sorted(i.request_id for i in items) == sorted(copies)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text


def test_a_holder_that_lost_its_run_mid_step_stops_writing(
    store_url, make_core, monkeypatch, caplog, retro_engine
):
    monkeypatch.setattr(retro.RetroHunt, "_work", lambda self: None)
    holder = make_core(store_url, **SETTINGS, retro_engine=retro_engine)
    taker = make_core(store_url, **SETTINGS, retro_engine=retro_engine)
    copies = _flood(holder)
    run = holder.store.claim_retro_run(LEASE)
    real = holder.store.add_retro_match
    calls: list[int] = []
    stalled, taken = threading.Event(), threading.Event()

    def stalling(*args, **kwargs):
        # the holder stalls at its fifth hit (a GC pause, a stopped VM)
        # past its lease; another server claims the run meanwhile
        calls.append(taken.is_set())
        if len(calls) == 5:
            stalled.set()
            assert taken.wait(30)
        return real(*args, **kwargs)

    monkeypatch.setattr(holder.store, "add_retro_match", stalling)
    caplog.set_level(logging.WARNING)
    worker, errors = scan_on_a_thread(holder, run, "holder")
    try:
        assert stalled.wait(30)
        time.sleep(LEASE + 0.1)
        theirs = taker.store.claim_retro_run(60)
    finally:
        taken.set()
        worker.join(30)
    assert not worker.is_alive() and not errors, errors
    assert theirs is not None and theirs.id == run.id
    # the stalled write was refused, and none was tried after it
    assert calls == [False] * 5
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    assert "taken over" in caplog.text
    now = taker.store.get_retro_run(run.id)
    assert (now.state, now.lease_owner, now.hits) == ("running", theirs.lease_owner, 4)

    # the new owner finishes it: every copy reported once
    taker.retro.scan(theirs)
    done = taker.store.get_retro_run(run.id)
    assert (done.state, done.hits) == ("done", COPIES)
    assert sorted(_retro_records(taker.store)) == sorted(copies)


def test_a_hit_is_never_inserted_after_another_server_claimed_the_run(
    store_url, make_core, monkeypatch
):
    """add_retro_match's holder check and insert are one statement with the
    run's row locked (PostgreSQL FOR SHARE): a replica whose lease just
    expired, in the middle of writing a hit, holds off another server's
    claim until the hit is committed; the hit is never written after the
    run changed hands (a separate SELECT let the claim commit in between).
    PostgreSQL's writes also take one advisory lock (_CHANGES_LOCK), which
    serializes the two today; the row lock keeps this true without it
    (checked by hand with that lock taken out: the old check fails here)."""
    monkeypatch.setattr(retro.RetroHunt, "_work", lambda self: None)
    holder = make_core(store_url, **SETTINGS)
    other = make_core(store_url, **SETTINGS)
    _flood(holder)
    run = holder.store.claim_retro_run(0.2)
    (history_id,) = [row[0] for row in holder.store.history_pdq_views(0, run.last_history_id, 1)]
    (upload,) = holder.store.history_uploads_by_id([history_id])
    time.sleep(0.3)  # its lease has expired; nobody claimed it yet

    in_hit, claiming = threading.Event(), threading.Event()
    in_transaction_until: list[float] = []
    real_insert = retro_sql.insert_review_item

    def slow_insert(*args, **kwargs):
        # the hit's row is inserted; the claim comes while its transaction is open
        in_hit.set()
        assert claiming.wait(30)
        time.sleep(0.5)
        # still inside the hit's transaction: a claim that did not wait
        # for it ends before this moment
        in_transaction_until.append(time.monotonic())
        return real_insert(*args, **kwargs)

    monkeypatch.setattr(retro_sql, "insert_review_item", slow_insert)
    item = {
        "request_id": upload.request_id,
        "created_at": datetime.now(UTC),
        "caller": upload.caller,
        "media_type": "image",
        "client_ref": "",
        "query_signals": [],
        "matches": [],
    }

    def write_hit():
        return holder.store.add_retro_match(
            run.id, 1, history_id, "review", item, owner=run.lease_owner
        )

    hit, theirs, _, claim_end = write_while_claimed(write_hit, other.store, in_hit, claiming)
    assert theirs is not None and theirs.id == run.id
    # the hit was the holder's (committed before the run changed hands):
    # the claim ended after the hit's transaction had passed its slow step
    assert hit is not None and claim_end >= in_transaction_until[0]
    assert other.store.get_retro_run(run.id).hits == 1
