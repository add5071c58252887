"""A retro-hunt hit committed without its history record (review item and
notification already out: its holder lost the run, or died, in between)
gets its record when another server claims the run, without being decided
again (review finding: it was completed only if the same run found the hit
again, so an entry removed meanwhile left it out of the hash-chained
history for good); and a holder whose lease expired cannot write a hit's
record after another server claimed the run (PostgreSQL: the run's row is
locked by the record's transaction, FOR SHARE). Both stores."""

from __future__ import annotations

import threading
import time

from hashdb import HistoryFilter
from hashsvc.base.signals import Signal
from hashsvc.core import retro
from hashsvc.core.retro import record_retro_match
from hashsvc.matching.matcher import Match
from tests.test_retro import _history_upload
from tests.test_retro_lease import write_while_claimed

KNOWN = bytes(range(32))
NEAR = bytes([KNOWN[0] ^ 0x03]) + KNOWN[1:]


def _records(store) -> list:
    return [r for r in store.query_history(HistoryFilter(), 0, 1000) if r.rpc == "RetroMatch"]


class _DiedBeforeTheRecord:
    """An Audit whose holder died (or lost the run) after the hit committed."""

    def record_retro_match(self, **kwargs):
        raise RuntimeError("killed before the history record")


def _hit_without_record(core, lease: float):
    """A run claimed for `lease` s whose one hit is committed (review item,
    notification) without its history record: (run, entry, request id)."""
    request_id = _history_upload(core.store, Signal("pdq", NEAR, 90), 0.5, request_id="up-1")
    core.curation.create_set("s")
    entry = core.curation.add_entry("s", "e", {}, "op", signal=("pdq", KNOWN.hex(), None))
    run = core.store.claim_retro_run(lease)
    assert run is not None and entry.id in run.entry_ids
    (upload,) = core.store.history_uploads(0, run.last_history_id, 10)
    hit = Match(entry.set_id, "s", entry.id, "e", "pdq", 3, {"group": "x"}, "block", "", "")
    try:
        record_retro_match(
            core.store, _DiedBeforeTheRecord(), run, upload, [Signal("pdq", NEAR, 90)], hit
        )
    except RuntimeError:
        pass
    assert core.store.get_retro_run(run.id).hits == 1 and _records(core.store) == []
    return run, entry, request_id


def test_a_claimed_run_records_the_hits_its_last_holder_left_unrecorded(
    store_url, make_core, monkeypatch, retro_engine
):
    """The hit's entry is removed before the run is claimed again: the new
    holder's scan no longer finds the upload, yet the hit gets its record,
    once, with the match as it was decided (its review item's)."""
    monkeypatch.setattr(retro.RetroHunt, "_work", lambda self: None)  # the test claims
    holder = make_core(store_url, retro_poll_seconds=0.2, retro_engine=retro_engine)
    taker = make_core(store_url, retro_poll_seconds=0.2, retro_engine=retro_engine)
    run, entry, request_id = _hit_without_record(holder, lease=0.2)
    holder.curation.remove_entry("s", "e")
    time.sleep(0.3)  # the holder's lease ran out
    theirs = taker.store.claim_retro_run(60)
    assert theirs is not None and theirs.id == run.id
    taker.retro.scan(theirs)

    done = taker.store.get_retro_run(run.id)
    assert (done.state, done.hits) == ("done", 1)
    (record,) = _records(taker.store)
    ((_, _, _, review_id),) = taker.store.retro_matches_of(run.id)
    assert record.detail["request_id"] == request_id
    assert record.detail["review_id"] == review_id and record.detail["run_id"] == run.id
    assert record.decision == "block"
    assert record.matches == taker.store.get_review_item(review_id).matches
    assert record.matches[0]["entry_id"] == entry.id
    assert taker.store.unrecorded_retro_hits(run.id) == []
    # nothing twice: the run scanned again (resumed by hand) writes no record
    assert taker.retro.record_unrecorded_hits(theirs) is True
    assert len(_records(taker.store)) == 1
    assert taker.audit.verify().intact


def test_a_stale_holder_cannot_record_a_hit_after_the_run_was_claimed(
    store_url, make_core, monkeypatch
):
    """The holder's lease expired while it was writing a hit's record: the
    claim waits for the record's transaction (the run's row is locked by
    it), so the record is never committed after the run changed hands.
    Without the lock the claim committed first on PostgreSQL (the history
    write takes its own lock, not the one claims take)."""
    monkeypatch.setattr(retro.RetroHunt, "_work", lambda self: None)
    holder = make_core(store_url, retro_poll_seconds=0.2)
    other = make_core(store_url, retro_poll_seconds=0.2)
    run, entry, request_id = _hit_without_record(holder, lease=0.2)
    ((_, _, history_id, review_id),) = holder.store.unrecorded_retro_hits(run.id)
    time.sleep(0.3)  # its lease has expired; nobody claimed it yet

    in_record, claiming = threading.Event(), threading.Event()
    in_transaction_until: list[float] = []
    store = holder.store
    real_append = store._append_record

    def slow_append(record, events=(), guard=None):
        def slow_guard(cur) -> bool:
            ok = guard(cur)
            # the hit is marked recorded; the claim comes while the
            # record's transaction is still open
            in_record.set()
            assert claiming.wait(30)
            time.sleep(0.5)
            # still inside the record's transaction: a claim that did not
            # wait for it ends before this moment
            in_transaction_until.append(time.monotonic())
            return ok

        return real_append(record, events, slow_guard if guard is not None else None)

    monkeypatch.setattr(store, "_append_record", slow_append)
    (upload,) = store.history_uploads_by_id([history_id])

    def record():
        # the record the holder writes for a hit (hashsvc/core/retro.py)
        match = store.get_review_item(review_id).matches[0]
        return retro._record_hit(holder.audit, run, upload, match, review_id)

    recorded, theirs, _, claim_end = write_while_claimed(record, other.store, in_record, claiming)
    assert theirs is not None and theirs.id == run.id
    # the record was the holder's, committed before the run changed hands:
    # the claim ended after the record's transaction had passed its slow
    # step (comparing with when write() returned raced the two threads'
    # wake-ups after the commit)
    assert recorded is not None and claim_end >= in_transaction_until[0]
    assert len(_records(other.store)) == 1
    # the new holder has nothing left to record
    other.retro.scan(theirs)
    assert len(_records(other.store)) == 1
    assert other.store.get_retro_run(run.id).state == "done"
