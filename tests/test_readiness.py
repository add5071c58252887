"""Fail closed while the index cannot be trusted: during the cold start, and
after the index lost its store. Matching answers UNAVAILABLE, never a decision,
and health says NOT_SERVING, until the index is loaded and current again."""

from __future__ import annotations

import threading
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from hashdb import HistoryFilter
from hashsvc.api.server import start_server
from hashsvc.base.errors import Unavailable
from hashsvc.core.config import Config, ImageLimits
from hashsvc.core.core import MatchQuery
from hashsvc.index.live import LiveIndex
from hashsvc.v1 import hashsvc_pb2 as pb
from hashsvc.v1 import hashsvc_pb2_grpc as pb_grpc
from hashsvc_testing.image_media import encode, photo
from tests.helpers import start_harness

PDQ = "f" * 16 + "0" * 16 + "a5" * 16  # any 256 bits: matched exactly, at distance 0
MD5 = "0123456789abcdef" * 2
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _known_store(store_url: str) -> str:
    """A store holding a PDQ hash and an MD5 in a block set; a matcher's token."""
    h = start_harness(store_url)
    try:
        stubs, md = h.stubs("operator")
        stubs.curation.CreateSet(pb.CreateSetRequest(name="known"), metadata=md)
        for kind, value in (("pdq", PDQ), ("md5", MD5)):
            stubs.curation.AddEntry(
                pb.AddEntryRequest(
                    set="known",
                    name=kind,
                    signal=pb.SignalValue(signal_type=kind, value=value, quality=100),
                ),
                metadata=md,
            )
        return h.tokens["matcher"]
    finally:
        h.close()


def _requests() -> list[pb.MatchRequest]:
    return [
        pb.MatchRequest(signal=pb.SignalValue(signal_type="pdq", value=PDQ, quality=100)),
        pb.MatchRequest(signal=pb.SignalValue(signal_type="md5", value=MD5)),
    ]


def _health(channel) -> int:
    return (
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status
    )


def _every_way_unavailable(channel, md) -> None:
    """Match, MatchBatch and MatchUpload answer UNAVAILABLE with a message."""
    matcher = pb_grpc.MatcherStub(channel)
    for request in _requests():
        with pytest.raises(grpc.RpcError) as err:
            matcher.Match(request, metadata=md, timeout=10)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value
        assert "index" in err.value.details()
    answers = list(matcher.MatchBatch(iter(_requests()), metadata=md, timeout=10))
    assert [a.error_code for a in answers] == ["UNAVAILABLE", "UNAVAILABLE"]
    assert all(a.decision == pb.DECISION_UNSPECIFIED and a.error_message for a in answers)
    upload = [
        pb.MatchUploadRequest(header=pb.MatchRequest()),
        pb.MatchUploadRequest(chunk=encode(photo(0))),
    ]
    with pytest.raises(grpc.RpcError) as err:
        matcher.MatchUpload(iter(upload), metadata=md, timeout=10)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value


def _blocks(channel, md) -> bool:
    matcher = pb_grpc.MatcherStub(channel)
    return all(matcher.Match(r, metadata=md, timeout=10).decision == pb.BLOCK for r in _requests())


def test_match_is_unavailable_until_the_index_is_loaded(store_url, monkeypatch):
    token = _known_store(store_url)
    md = (("authorization", f"Bearer {token}"),)
    # The load waits for the test (deterministic, however fast the machine).
    gate = threading.Event()
    load = LiveIndex.load

    def slow_load(self):
        assert gate.wait(30)
        load(self)

    monkeypatch.setattr(LiveIndex, "load", slow_load)
    config = Config(listen="127.0.0.1:0", db_url=store_url, workers=1, image=ImageLimits())
    running = start_server(config, hash_in_process=True, block_until_ready=False)
    channel = grpc.insecure_channel(f"127.0.0.1:{running.port}")
    try:
        assert _health(channel) == NOT_SERVING
        _every_way_unavailable(channel, md)
        # The history records the refused calls, as every Match.
        refused = [
            r
            for r in running.core.store.query_history(HistoryFilter(), limit=1000)
            if r.status == "UNAVAILABLE"
        ]
        assert len(refused) >= 4
        gate.set()
        # From now on a Match is refused or blocks; never allowed.
        matcher = pb_grpc.MatcherStub(channel)
        deadline = time.monotonic() + 30
        while True:
            assert time.monotonic() < deadline, "the index never became ready"
            try:
                answer = matcher.Match(_requests()[0], metadata=md, timeout=10)
            except grpc.RpcError as err:
                assert err.code() == grpc.StatusCode.UNAVAILABLE
                time.sleep(0.01)
                continue
            assert answer.decision == pb.BLOCK
            break
        assert _blocks(channel, md)
        deadline = time.monotonic() + 10
        while _health(channel) != SERVING:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        gate.set()
        channel.close()
        running.stop(grace=1)


def test_an_index_that_lost_its_store_is_unavailable_until_it_caught_up(store_url, monkeypatch):
    token = _known_store(store_url)
    md = (("authorization", f"Bearer {token}"),)
    config = Config(
        listen="127.0.0.1:0",
        db_url=store_url,
        workers=1,
        image=ImageLimits(),
        change_poll_seconds=0.1,
    )
    running = start_server(config, hash_in_process=True)
    channel = grpc.insecure_channel(f"127.0.0.1:{running.port}")
    store = running.core.store
    try:
        assert _blocks(channel, md) and _health(channel) == SERVING
        # The store cannot be read: the index can no longer follow it.
        changes_since = store.changes_since

        def lost(*args, **kw):
            raise Unavailable("the database is unavailable: connection lost")

        monkeypatch.setattr(store, "changes_since", lost)
        deadline = time.monotonic() + 10
        while running.core.ready():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        _every_way_unavailable(channel, md)
        deadline = time.monotonic() + 10
        while _health(channel) != NOT_SERVING:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        monkeypatch.setattr(store, "changes_since", changes_since)
        deadline = time.monotonic() + 10
        while not running.core.ready():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert _blocks(channel, md)
        deadline = time.monotonic() + 10
        while _health(channel) != SERVING:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        channel.close()
        running.stop(grace=1)


def test_an_index_that_stopped_following_goes_stale(store_url, monkeypatch):
    """A catch-up that hangs (a store that stopped answering without an error)
    stops matching after index_stale_seconds, not never."""
    token = _known_store(store_url)
    md = (("authorization", f"Bearer {token}"),)
    config = Config(
        listen="127.0.0.1:0",
        db_url=store_url,
        workers=1,
        image=ImageLimits(),
        change_poll_seconds=0.1,
        index_stale_seconds=0.5,
    )
    running = start_server(config, hash_in_process=True)
    channel = grpc.insecure_channel(f"127.0.0.1:{running.port}")
    store = running.core.store
    hang = threading.Event()
    try:
        assert _blocks(channel, md)
        wait_for_change = store.wait_for_change

        def hung(timeout):
            hang.wait(30)
            return False

        monkeypatch.setattr(store, "wait_for_change", hung)
        started = time.monotonic()
        while running.core.ready():
            assert time.monotonic() - started < 10
            time.sleep(0.05)
        assert time.monotonic() - started >= 0.4  # not before its time
        _every_way_unavailable(channel, md)
        monkeypatch.setattr(store, "wait_for_change", wait_for_change)
        hang.set()
        deadline = time.monotonic() + 10
        while not running.core.ready():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert _blocks(channel, md)
    finally:
        hang.set()
        channel.close()
        running.stop(grace=1)


def test_a_failed_history_write_is_never_an_allow(store_url, monkeypatch, make_harness):
    token = _known_store(store_url)
    md = (("authorization", f"Bearer {token}"),)
    h = make_harness(store_url)
    store = h.core.store

    def refused(record, events=()):
        raise Unavailable("the database is unavailable: connection lost")

    monkeypatch.setattr(store, "record_match", refused)
    channel = grpc.insecure_channel(h.address)
    h.channels.append(channel)
    matcher = pb_grpc.MatcherStub(channel)
    unknown = pb.MatchRequest(signal=pb.SignalValue(signal_type="md5", value="f" * 32))
    for request in [*_requests(), unknown]:
        with pytest.raises(grpc.RpcError) as err:
            matcher.Match(request, metadata=md, timeout=10)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    answers = list(matcher.MatchBatch(iter([*_requests(), unknown]), metadata=md, timeout=10))
    assert [a.error_code for a in answers] == ["UNAVAILABLE"] * 3
    assert all(a.decision == pb.DECISION_UNSPECIFIED for a in answers)


def test_an_index_lost_while_an_upload_was_hashed_gives_no_decision(core, monkeypatch):
    """Readiness is checked again after hashing: a slow upload hashed while
    the index lost the store (an unrelated picture, which would be ALLOW) is
    UNAVAILABLE, and recorded as such."""
    core.curation.create_set("known")
    core.curation.add_entry("known", "poster", {}, "op", media=encode(photo(1)))
    start_query = core.hashing.start_query

    def slow_hash(media, *args, **kwargs):
        job = start_query(media, *args, **kwargs)
        core._index_lost.set()  # the change feed failed while it hashes
        return job

    monkeypatch.setattr(core.hashing, "start_query", slow_hash)
    with pytest.raises(Unavailable, match="cannot read the store"):
        core.match(MatchQuery(media=encode(photo(5))), "pipeline")
    last = core.store.query_history(HistoryFilter(), 0, 1000)[-1]
    assert (last.status, last.decision) == ("UNAVAILABLE", "")
