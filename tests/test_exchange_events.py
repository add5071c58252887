"""What a partner feed's fetch sets off, on both stores: a fetch that changed
its set emits one feed.updated event (source exchange:NAME, its counts) in
the outbox, a fetch that changed nothing none; one that failed after
changing part of the set still tells (status UNAVAILABLE). A fetch that
added or relabelled entries queues a retro-hunt (trigger "feed"); a fetch
that only deleted queues none. The end-to-end retro hit over HTTP is in
tests/test_http_exchange.py."""

from __future__ import annotations

import dataclasses
import secrets
import threading
import time

import grpc
import pytest

from hashsvc.v1 import hashsvc_pb2 as pb
from hashsvc_testing.exchange_servers import TcapServer
from tests.test_exchange import SETTINGS, _fetch


@pytest.fixture
def harness_config(tmp_path) -> dict:
    settings = dataclasses.replace(SETTINGS, file_dir=str(tmp_path))
    return {"exchange": settings, "retro_poll_seconds": 0.2}


def _feed_events(core, feed: str) -> list[dict]:
    page = core.event_feed.list(False, page_size=1000)
    return [
        e.body
        for e in page.events
        if e.type == "feed.updated" and e.body["source"] == f"exchange:{feed}"
    ]


def _feed_runs(core, after_id: int) -> list:
    return [r for r in core.retro.list_runs(0, 1000) if r.id > after_id and r.trigger == "feed"]


def _last_run_id(core) -> int:
    return max((r.id for r in core.retro.list_runs(0, 1000)), default=0)


def _wait_runs_closed(core, after_id: int, seconds: float = 60) -> list:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        runs = _feed_runs(core, after_id)
        if all(r.state not in ("queued", "running") for r in runs):
            return runs
        time.sleep(0.1)
    raise AssertionError(f"retro runs still open after {seconds} s")


def test_fetch_events_and_retro_runs(harness, tmp_path):
    core = harness.core
    stubs, md = harness.stubs("operator")
    stubs.curation.CreateSet(pb.CreateSetRequest(name="partners"), metadata=md)
    hashes = [secrets.token_hex(32) for _ in range(4)]
    path = tmp_path / "list.txt"
    path.write_text("".join(f"pdq {h}\n" for h in hashes))
    stubs.exchange.AddFeed(
        pb.AddFeedRequest(
            name="gifct", api="file", set="partners", options={"path": str(path)}, every_seconds=60
        ),
        metadata=md,
    )

    # the first fetch: one event with its counts, one retro run for its entries
    before = _last_run_id(core)
    _fetch(stubs, md, "gifct")
    [event] = _feed_events(core, "gifct")
    assert event["set"] == "partners" and event["status"] == "OK"
    assert event["caller"] == "test-operator"  # the token that fetched
    assert event["counts"] == {"added": 4, "updated": 0, "deleted": 0, "skipped": 0, "rejected": 0}
    [run] = _wait_runs_closed(core, before)
    assert len(run.entry_ids) == 4 and run.state == "done"

    # nothing changed: no event, no run
    before = _last_run_id(core)
    _fetch(stubs, md, "gifct")
    assert len(_feed_events(core, "gifct")) == 1
    assert _feed_runs(core, before) == []

    # the partner deleted one: an event, but nothing to hunt for
    path.write_text("".join(f"pdq {h}\n" for h in hashes[1:]))
    _fetch(stubs, md, "gifct")
    events = _feed_events(core, "gifct")
    assert len(events) == 2 and events[-1]["counts"]["deleted"] == 1
    assert events[-1]["counts"]["added"] == 0
    time.sleep(0.5)  # a run would be queued in the fetch's own call: none is
    assert _feed_runs(core, before) == []

    # a truncated listing: the new hash is loaded, the mass deletion refused;
    # the set changed, so the platform hears of it (UNAVAILABLE) and the
    # retro-hunt looks for the new hash
    new = secrets.token_hex(32)
    path.write_text(f"pdq {hashes[1]}\npdq {new}\n")
    with pytest.raises(grpc.RpcError) as err:
        _fetch(stubs, md, "gifct")
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "snapshot_max_delete_fraction" in err.value.details()
    events = _feed_events(core, "gifct")
    assert len(events) == 3, events
    assert events[-1]["status"] == "UNAVAILABLE"
    assert (events[-1]["counts"]["added"], events[-1]["counts"]["deleted"]) == (1, 0)
    [run] = _wait_runs_closed(core, before)
    assert len(run.entry_ids) == 1 and run.state == "done"


def test_a_swapped_listing_deletes_nothing(harness, tmp_path):
    """A file swapped for another list (as many new items as it leaves out)
    leaves out all the feed held: past snapshot_max_delete_fraction of what
    the feed held before the fetch, not of what it holds once the new items
    are mapped (half, and under the limit). Nothing is deleted."""
    stubs, md = harness.stubs("operator")
    stubs.curation.CreateSet(pb.CreateSetRequest(name="partners"), metadata=md)
    old = [secrets.token_hex(32) for _ in range(4)]
    path = tmp_path / "list.txt"
    path.write_text("".join(f"pdq {h}\n" for h in old))
    stubs.exchange.AddFeed(
        pb.AddFeedRequest(
            name="swap", api="file", set="partners", options={"path": str(path)}, every_seconds=60
        ),
        metadata=md,
    )
    _fetch(stubs, md, "swap")
    path.write_text("".join(f"pdq {secrets.token_hex(32)}\n" for _ in old))
    with pytest.raises(grpc.RpcError) as err:
        _fetch(stubs, md, "swap")
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "leaves out 4 of the feed's 4 items" in err.value.details()
    matcher, m_md = harness.stubs("matcher")
    for value in old:
        answer = matcher.matcher.Match(
            pb.MatchRequest(signal=pb.SignalValue(signal_type="pdq", value=value)), metadata=m_md
        )
        assert answer.decision == pb.BLOCK


def _slow_feed(stubs, md, tcap: TcapServer, hashes: int) -> None:
    """Feed "slow" into set "partners": `hashes` TCAP hashes, one a page,
    each page answered after 0.5 s."""
    stubs.curation.CreateSet(pb.CreateSetRequest(name="partners"), metadata=md)
    for _ in range(hashes):
        tcap.add(secrets.token_hex(32))
    tcap.delay = 0.5
    stubs.exchange.AddFeed(
        pb.AddFeedRequest(
            name="slow",
            api="tcap",
            set="partners",
            credentials="user:secret-pass",
            options={"base_url": tcap.url},
            every_seconds=60,
        ),
        metadata=md,
    )


def test_one_fetch_of_a_feed_at_a_time_in_a_server(harness):
    """A replica's lease is its own: without a guard in the process, a
    second `exchange fetch` (gRPC or HTTP) or the background loop would fetch
    a feed that this server is already fetching, both writing its pages."""
    stubs, md = harness.stubs("operator")
    with TcapServer(page_size=1) as tcap:
        _slow_feed(stubs, md, tcap, hashes=3)
        first: list = []
        fetching = threading.Thread(target=lambda: first.append(_fetch(stubs, md, "slow")))
        fetching.start()
        try:
            deadline = time.monotonic() + 30
            while tcap.page_requests == 0 and time.monotonic() < deadline:
                time.sleep(0.02)
            assert tcap.page_requests > 0
            with pytest.raises(grpc.RpcError) as err:
                _fetch(stubs, md, "slow")
            assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "being fetched on this server" in err.value.details()
            assert harness.running.feeds.run_due() == []  # due, but being fetched
        finally:
            fetching.join(timeout=60)
        assert first and first[0][-1].added == 3


def test_stopping_waits_for_a_fetch_started_by_hand(harness):
    """A fetch started by `exchange fetch` (its own thread) ends, recorded,
    before the server closes the store under it."""
    stubs, md = harness.stubs("operator")
    with TcapServer(page_size=1) as tcap:
        _slow_feed(stubs, md, tcap, hashes=4)
        outcome: list = []

        def fetch() -> None:
            try:
                outcome.append(_fetch(stubs, md, "slow"))
            except grpc.RpcError as exc:
                outcome.append(exc)

        fetching = threading.Thread(target=fetch)
        fetching.start()
        try:
            deadline = time.monotonic() + 30
            while tcap.page_requests == 0 and time.monotonic() < deadline:
                time.sleep(0.02)
            harness.running.feeds.stop()
            feed = harness.core.store.get_feed("slow")
            assert feed.last_result == "failed" and "stopping" in feed.last_error
            assert feed.lease_owner is None and 0 < feed.items < 4  # its pages kept
            with pytest.raises(grpc.RpcError) as err:  # nothing new starts
                _fetch(stubs, md, "slow")
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        finally:
            fetching.join(timeout=60)
        assert isinstance(outcome[0], grpc.RpcError)
