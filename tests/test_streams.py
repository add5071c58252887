"""Streams cannot stall the server (issue 16 item 2): idle and total deadlines,
a concurrency cap global and per token, reflection off by default."""

from __future__ import annotations

import statistics
import threading
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from hashsvc.core import auth
from hashsvc.core.config import Config
from hashsvc.v1 import hashsvc_pb2 as pb
from hashsvc.v1 import hashsvc_pb2_grpc as pb_grpc
from hashsvc_testing.image_media import encode, photo
from tests.helpers import start_harness

# stream_idle_seconds in the idle-streams test: long enough to open its 1,000
# calls and measure while the first are still open (3 s was not at load 10:
# opening took 3.3 s), short to wait for
IDLE = 8.0
STREAMS_EACH = 200


def _idle_requests(first, release: threading.Event):
    """A client that opens a stream (optionally sends one message) and then
    sends nothing until released (bounded, so a broken server cannot hang the test)."""
    if first is not None:
        yield first
    release.wait(60)


def _ends(calls, timeout: float) -> list:
    """The status code each call ended with (None: still running at the timeout)."""
    deadline = time.monotonic() + timeout
    codes = []
    for call in calls:
        left = max(0.0, deadline - time.monotonic())
        try:
            call.exception(timeout=left)
            codes.append(call.code())
        except grpc.FutureTimeoutError:
            codes.append(None)
    return codes


def _timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def test_idle_streams_leave_room_for_match_and_health(tmp_path):
    """200 idle reflection streams (no token), 200 idle MatchUpload streams with
    valid tokens and 200 without a token, 200 calls to Match and 200 health
    checks that send headers and no message, all open at once: Match and the
    health check still answer within 100 ms, and the idle calls end by
    themselves after stream_idle_seconds."""
    h = start_harness(
        f"sqlite:///{tmp_path}/streams.db",
        reflection=True,
        stream_idle_seconds=IDLE,
        max_streams=8,
        max_streams_per_token=4,
    )
    release = threading.Event()
    channels: list[grpc.Channel] = []
    calls: list = []
    try:
        op, md = h.stubs("operator")
        op.curation.CreateSet(pb.CreateSetRequest(name="known"), metadata=md)
        entry = op.curation.AddEntry(
            pb.AddEntryRequest(set="known", name="a", media=pb.Media(content=encode(photo(1)))),
            metadata=md,
        )
        sha = next(s.value for s in entry.signals if s.signal_type == "sha256")
        known = pb.MatchRequest(signal=pb.SignalValue(signal_type="sha256", value=sha))
        m, mmd = h.stubs("matcher")
        health = health_pb2_grpc.HealthStub(m.channel)
        check = health_pb2.HealthCheckRequest(service="hashsvc.v1.Matcher")
        # warm the channel: the measured calls must not pay for the connection
        assert m.matcher.Match(known, metadata=mmd).decision == pb.BLOCK
        assert health.Check(check).status == health_pb2.HealthCheckResponse.SERVING

        # several matcher tokens: both the per-token and the global cap are reached
        tokens = [auth.create_token(h.core.store, "matcher", f"pipeline-{i}")[1] for i in range(10)]
        header = pb.MatchUploadRequest(header=pb.MatchRequest(client_ref="idle"))
        started = time.monotonic()
        for i in range(STREAMS_EACH):
            if i % 50 == 0:  # a few connections, as many clients would use
                channels.append(grpc.insecure_channel(h.address))
                reflect = reflection_pb2_grpc.ServerReflectionStub(channels[-1])
                matcher = pb_grpc.MatcherStub(channels[-1])
            calls.append(
                ("reflection", reflect.ServerReflectionInfo(_idle_requests(None, release)))
            )
            token_md = (("authorization", f"Bearer {tokens[i % len(tokens)]}"),)
            calls.append(
                (
                    "upload",
                    matcher.MatchUpload.future(_idle_requests(header, release), metadata=token_md),
                )
            )
            calls.append(
                ("anonymous upload", matcher.MatchUpload.future(_idle_requests(header, release)))
            )
            # a unary method's call that sends its headers and no message
            # (any client can: a streaming stub on the method's path)
            for kind, path in (
                ("headers-only Match", "/hashsvc.v1.Matcher/Match"),
                ("headers-only health check", "/grpc.health.v1.Health/Check"),
            ):
                raw = channels[-1].stream_stream(path)
                calls.append((kind, raw(_idle_requests(None, release))))

        # the rejected streams end at once; the admitted ones stay open, idle
        time.sleep(0.3)
        for _ in range(5):
            assert m.matcher.Match(known, metadata=mmd, timeout=5).decision == pb.BLOCK
            assert health.Check(check, timeout=5).status == health_pb2.HealthCheckResponse.SERVING
        # the median of 5: a call left waiting for a thread waits them all,
        # until the first idle stream ends (IDLE after opening); one call
        # descheduled on a loaded machine does not fail the test
        match_seconds = statistics.median(
            _timed(lambda: m.matcher.Match(known, metadata=mmd, timeout=5)) for _ in range(5)
        )
        health_seconds = statistics.median(
            _timed(lambda: health.Check(check, timeout=5)) for _ in range(5)
        )
        assert match_seconds < 0.5, f"Match took {match_seconds * 1000:.0f} ms"
        assert health_seconds < 0.5, f"health check took {health_seconds * 1000:.0f} ms"
        # measured while the first admitted streams were still open and idle
        assert time.monotonic() - started < IDLE, "opening the streams took too long"

        codes = _ends([call for _, call in calls], timeout=IDLE + 10)
        assert None not in codes, "an idle stream did not end by itself"
        by_kind: dict[str, set] = {}
        for (kind, _), code in zip(calls, codes, strict=True):
            by_kind.setdefault(kind, set()).add(code)
        # admitted: ended by the idle deadline; past a cap: refused at once
        expected = {grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED}
        assert (
            by_kind["reflection"] <= expected
            and grpc.StatusCode.DEADLINE_EXCEEDED in (by_kind["reflection"])
        )
        assert (
            by_kind["upload"] <= expected
            and grpc.StatusCode.DEADLINE_EXCEEDED in (by_kind["upload"])
        )
        assert by_kind["anonymous upload"] == {grpc.StatusCode.UNAUTHENTICATED}
        assert by_kind["headers-only Match"] == {grpc.StatusCode.UNAUTHENTICATED}
        # cancelled: for a newer one past max_unread_anonymous_calls, or at the idle deadline
        assert by_kind["headers-only health check"] == {grpc.StatusCode.CANCELLED}
        assert h.running.unread.waiting() == 0
        assert h.running.streams.open_streams() == 0
    finally:
        release.set()
        for _, call in calls:
            call.cancel()
        for channel in channels:
            channel.close()
        h.close()


def _stream_end(call, timeout: float = 10.0):
    """(code, details) a streaming call ended with, reading its answers."""
    try:
        for _ in call:
            pass
    except grpc.RpcError as exc:
        return exc.code(), exc.details()
    return call.code(), call.details()


def test_every_request_stream_ends_when_idle(store_url):
    """MatchUpload, AddEntryUpload, BulkLoad and MatchBatch that stop sending
    end with DEADLINE_EXCEEDED naming stream_idle_seconds; a batch's answers
    before that are delivered."""
    h = start_harness(store_url, stream_idle_seconds=1.0)
    release = threading.Event()
    calls: dict = {}
    try:
        admin, md = h.stubs("admin")
        admin.curation.CreateSet(pb.CreateSetRequest(name="s"), metadata=md)
        started = time.monotonic()
        calls["MatchUpload"] = admin.matcher.MatchUpload.future(
            _idle_requests(pb.MatchUploadRequest(header=pb.MatchRequest()), release), metadata=md
        )
        calls["AddEntryUpload"] = admin.curation.AddEntryUpload.future(
            _idle_requests(
                pb.AddEntryUploadRequest(header=pb.AddEntryRequest(set="s", name="x")), release
            ),
            metadata=md,
        )
        calls["BulkLoad"] = admin.curation.BulkLoad.future(
            _idle_requests(pb.BulkLoadRequest(header=pb.BulkLoadHeader(set="s")), release),
            metadata=md,
        )
        unknown = pb.MatchRequest(
            signal=pb.SignalValue(signal_type="sha256", value="0" * 64), client_ref="one"
        )
        batch = admin.matcher.MatchBatch(_idle_requests(unknown, release), metadata=md)
        first = next(batch)
        assert first.client_ref == "one" and first.decision == pb.ALLOW
        ends = {"MatchBatch": _stream_end(batch)}
        for name, call in calls.items():
            try:
                call.result(timeout=10)
                ends[name] = (grpc.StatusCode.OK, "")
            except grpc.RpcError as exc:
                ends[name] = (exc.code(), exc.details())
        elapsed = time.monotonic() - started
        for name, (code, details) in ends.items():
            assert code == grpc.StatusCode.DEADLINE_EXCEEDED, (name, code, details)
            assert "stream_idle_seconds" in details, (name, details)
        assert 1.0 <= elapsed < 6
        assert h.running.streams.open_streams() == 0
        assert h.core.curation.entry_page("s", 10, "", 10_000).entries == []
    finally:
        release.set()
        for call in calls.values():
            call.cancel()
        h.close()


def test_a_stream_that_keeps_trickling_ends_at_the_total_deadline(tmp_path):
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()
    h = start_harness(
        f"sqlite:///{tmp_path}/trickle.db",
        spool_dir=str(spool_dir),
        stream_idle_seconds=1.0,
        stream_max_seconds=2.0,
    )
    release = threading.Event()
    call = None

    def trickle():  # a message every 0.3 s: never idle, never done
        yield pb.MatchUploadRequest(header=pb.MatchRequest())
        for _ in range(100):
            if release.wait(0.3):
                return
            yield pb.MatchUploadRequest(chunk=b"x" * 1024)

    try:
        m, md = h.stubs("matcher")
        started = time.monotonic()
        call = m.matcher.MatchUpload.future(trickle(), metadata=md)
        with pytest.raises(grpc.RpcError) as err:
            call.result(timeout=10)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "stream_max_seconds" in err.value.details()
        assert 2.0 <= time.monotonic() - started < 6
        assert not list(spool_dir.iterdir())
    finally:
        release.set()
        if call is not None:
            call.cancel()
        h.close()


def test_streams_past_a_cap_are_refused_at_once_and_unary_calls_go_on(tmp_path):
    h = start_harness(f"sqlite:///{tmp_path}/caps.db", max_streams=3, max_streams_per_token=2)
    release = threading.Event()
    held: list = []
    try:
        admin, amd = h.stubs("admin")
        header = pb.MatchUploadRequest(header=pb.MatchRequest())
        for _ in range(2):
            held.append(
                admin.matcher.MatchUpload.future(_idle_requests(header, release), metadata=amd)
            )
        m, md = h.stubs("matcher")
        held.append(m.matcher.MatchUpload.future(_idle_requests(header, release), metadata=md))
        assert _wait(lambda: h.running.streams.open_streams() == 3)

        def refused(call) -> tuple:
            started = time.monotonic()
            with pytest.raises(grpc.RpcError) as err:
                call()
            # a held stream would wait for stream_idle_seconds (30 s)
            assert time.monotonic() - started < 5, "a stream past the cap was not refused at once"
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            return err.value.details()

        # the token's own cap
        details = refused(
            lambda: admin.matcher.MatchUpload(_idle_requests(header, release), metadata=amd)
        )
        assert "max_streams_per_token" in details
        # the server's cap, for any stream of another token, exports included
        _, other = auth.create_token(h.core.store, "admin", "other")
        other_md = (("authorization", f"Bearer {other}"),)
        details = refused(
            lambda: admin.matcher.MatchUpload(_idle_requests(header, release), metadata=other_md)
        )
        assert "max_streams" in details and "per_token" not in details
        refused(
            lambda: list(admin.audit.ExportHistory(pb.QueryHistoryRequest(), metadata=other_md))
        )
        # unary calls are not streams
        unknown = pb.MatchRequest(signal=pb.SignalValue(signal_type="sha256", value="0" * 64))
        assert admin.matcher.Match(unknown, metadata=other_md).decision == pb.ALLOW

        release.set()  # the held streams end (a header and no media: INVALID_ARGUMENT)
        for call in held:
            assert call.exception(timeout=10).code() == grpc.StatusCode.INVALID_ARGUMENT
        assert _wait(lambda: h.running.streams.open_streams() == 0)
        answers = list(admin.matcher.MatchBatch(iter([unknown]), metadata=other_md, timeout=10))
        assert [a.decision for a in answers] == [pb.ALLOW]
    finally:
        release.set()
        for call in held:
            call.cancel()
        h.close()


def _wait(condition, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def test_reflection_is_off_by_default_and_on_when_configured(tmp_path, make_harness):
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )

    ask = reflection_pb2.ServerReflectionRequest(list_services="")
    h = make_harness(f"sqlite:///{tmp_path}/off.db")
    channel = grpc.insecure_channel(h.address)
    h.channels.append(channel)
    with pytest.raises(grpc.RpcError) as err:
        list(reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(iter([ask])))
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    make_harness.stop(h)
    h = make_harness(f"sqlite:///{tmp_path}/on.db", reflection=True)
    channel = grpc.insecure_channel(h.address)
    h.channels.append(channel)
    services = ProtoReflectionDescriptorDatabase(channel).get_services()
    assert {"hashsvc.v1.Matcher", "hashsvc.v1.Curation", "hashsvc.v1.Audit"} <= set(services)
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    answers = list(stub.ServerReflectionInfo(iter([ask]), timeout=10))
    assert "hashsvc.v1.Matcher" in {s.name for s in answers[0].list_services_response.service}


def test_the_idle_clock_stands_still_while_the_handler_is_busy():
    from hashsvc.api.streams import Requests
    from hashsvc.base.errors import Timeout

    def slow():  # the client waits 0.6 s for answers before each message
        for message in ("a", "b"):
            time.sleep(0.6)
            yield message

    busy = Requests(slow(), idle_seconds=0.3, max_seconds=10)
    busy.busy = lambda: True
    assert list(busy) == ["a", "b"]
    idle = Requests(slow(), idle_seconds=0.3, max_seconds=10)
    with pytest.raises(Timeout, match="stream_idle_seconds"):
        next(idle)


def test_stream_limits_that_leave_no_room_are_refused():
    with pytest.raises(ValueError, match="grpc_threads"):
        Config(max_streams=16, grpc_threads=16)
    with pytest.raises(ValueError, match="max_streams_per_token"):
        Config(max_streams_per_token=0)
    with pytest.raises(ValueError, match="stream_idle_seconds"):
        Config(stream_idle_seconds=0)
    with pytest.raises(ValueError, match="spool_max_bytes"):
        Config(spool_max_bytes=1 << 20, max_upload_bytes=2 << 20)
    assert Config().reflection is False


def test_calls_that_send_no_message_end_and_health_answers(tmp_path):
    """A token's call that sends headers only ends at stream_idle_seconds;
    health checks without a message hold at most max_unread_anonymous_calls
    threads (a newer one cancels the oldest); real checks and Watch answer."""
    h = start_harness(
        f"sqlite:///{tmp_path}/unread.db", stream_idle_seconds=1.0, max_unread_anonymous_calls=3
    )
    release = threading.Event()
    calls: list = []
    try:
        m, md = h.stubs("matcher")
        raw_match = m.channel.stream_stream("/hashsvc.v1.Matcher/Match")
        raw_check = m.channel.stream_stream("/grpc.health.v1.Health/Check")
        started = time.monotonic()
        with_token = raw_match(_idle_requests(None, release), metadata=md)
        anonymous = [raw_check(_idle_requests(None, release)) for _ in range(10)]
        calls = [with_token, *anonymous]
        # all but the newest 3 are cancelled at once
        assert _wait(lambda: sum(c.done() for c in anonymous) >= 7, timeout=2)
        assert time.monotonic() - started < 1.0
        assert h.running.unread.waiting() <= 1 + 3

        health = health_pb2_grpc.HealthStub(m.channel)
        check = health_pb2.HealthCheckRequest(service="hashsvc.v1.Matcher")
        assert health.Check(check, timeout=2).status == health_pb2.HealthCheckResponse.SERVING
        watch = health.Watch(check, timeout=5)
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        watch.cancel()

        codes = _ends(calls, timeout=5)
        assert set(codes) == {grpc.StatusCode.CANCELLED}
        assert 1.0 <= time.monotonic() - started < 5
        assert h.running.unread.waiting() == 0
        # a call that sends no message at all gets grpc's own answer
        with pytest.raises(grpc.RpcError) as err:
            list(raw_match(iter(()), metadata=md, timeout=5))
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        release.set()
        for call in calls:
            call.cancel()
        h.close()


def test_headers_only_calls_with_a_token_cannot_stall_the_server(tmp_path):
    """bench/fuzz.py found it: 200 unary Matches with a valid matcher token that
    send headers and never their message each held a gRPC thread until
    stream_idle_seconds, and Match and the health check timed out. A token now
    holds at most max_unread_calls_per_token such calls (all tokens together
    max_unread_token_calls); a newer one cancels the oldest, and real calls,
    whose message comes with the headers, answer at once."""
    h = start_harness(
        f"sqlite:///{tmp_path}/unread.db",
        stream_idle_seconds=30.0,
        max_unread_calls_per_token=3,
        max_unread_token_calls=5,
    )
    release = threading.Event()
    calls: list = []
    try:
        m, md = h.stubs("matcher")
        op, omd = h.stubs("operator")
        raw_match = m.channel.stream_stream("/hashsvc.v1.Matcher/Match")
        raw_sets = op.channel.stream_stream("/hashsvc.v1.Curation/ListSets")
        calls = [raw_match(_idle_requests(None, release), metadata=md) for _ in range(200)]
        calls += [raw_sets(_idle_requests(None, release), metadata=omd) for _ in range(50)]
        # all but the newest few are cancelled at once, not after 30 s
        assert _wait(lambda: sum(c.done() for c in calls) >= 250 - 5, timeout=5)
        assert h.running.unread.waiting() <= 5
        health = health_pb2_grpc.HealthStub(m.channel)
        probe = pb.MatchRequest(signal=pb.SignalValue(signal_type="md5", value="a" * 32))
        took = []
        for _ in range(10):
            started = time.perf_counter()
            assert m.matcher.Match(probe, metadata=md, timeout=5).decision == pb.ALLOW
            check = health.Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert check.status == health_pb2.HealthCheckResponse.SERVING
            took.append(time.perf_counter() - started)
        # the median: calls that waited for a held thread or a grace (0.5 s)
        # would all wait; one descheduled on a loaded machine does not count
        assert statistics.median(took) < 0.2, took
        done = [c for c in calls if c.done()]
        assert {c.code() for c in done} == {grpc.StatusCode.CANCELLED}
    finally:
        release.set()
        for call in calls:
            call.cancel()
        h.close()


class _Context:
    def __init__(self) -> None:
        self.cancelled = threading.Event()

    def cancel(self) -> None:
        self.cancelled.set()


class _Clock:
    """time.monotonic for hashsvc.api.streams, moved on by the test only: what
    is within the grace stays within it however long a loaded machine keeps
    the test's thread waiting (with real time the watcher cancelled calls the
    test was about to find uncancelled)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


def _watched(unread, clock: _Clock, seconds: float) -> None:
    """Moves the clock on by `seconds` and returns once the watcher has looked
    at the waiting calls at that time: a call entered one idle deadline back
    is cancelled in the same pass as the calls past a cap."""
    probe = _Context()
    clock.now -= unread.seconds
    unread._enter(probe, anonymous=False)  # in no cap: only the deadline ends it
    clock.now += unread.seconds + seconds
    assert probe.cancelled.wait(30), "the watcher did not run"


def test_a_tokens_real_calls_past_its_unread_cap_are_not_cancelled_within_the_grace(monkeypatch):
    """bench/loadtest.py on 2 busy cores: 8 clients on one token, and one real
    Match in 220 ended CANCELLED, evicted at once as the oldest of 5 calls
    whose message the busy server had not handed over yet. Past a cap, a call
    is now cancelled only once it has waited the grace; past twice the cap,
    the oldest go at once, so idle callers' threads stay bounded."""
    from hashsvc.api import streams
    from hashsvc.api.streams import UnreadCalls

    clock = _Clock()
    monkeypatch.setattr(streams, "time", clock)
    unread = UnreadCalls(30.0, max_anonymous=2, max_per_token=3, max_with_token=100, grace=0.4)
    try:
        real = [_Context() for _ in range(5)]
        keys = [unread._enter(c, anonymous=False, token_id=1) for c in real]
        assert not any(c.cancelled.is_set() for c in real)  # over the cap, within the grace
        _watched(unread, clock, 0.3)
        assert not any(c.cancelled.is_set() for c in real)  # still within it
        for key in keys[:4]:
            unread._leave(key)  # their messages arrive
        _watched(unread, clock, 0.5)
        assert not any(c.cancelled.is_set() for c in real)
        unread._leave(keys[4])

        idle = [_Context() for _ in range(8)]
        for c in idle:
            unread._enter(c, anonymous=False, token_id=2)
        # past twice the cap (6): the 2 oldest at once
        assert [c.cancelled.is_set() for c in idle] == [True] * 2 + [False] * 6
        _watched(unread, clock, 0.3)
        assert [c.cancelled.is_set() for c in idle] == [True] * 2 + [False] * 6
        # past the cap (3): the watcher takes the oldest 3 more after the grace
        _watched(unread, clock, 0.2)
        assert [c.cancelled.is_set() for c in idle] == [True] * 5 + [False] * 3
        _watched(unread, clock, 0.5)
        assert [c.cancelled.is_set() for c in idle] == [True] * 5 + [False] * 3
        assert unread.waiting() == 3
        # another token's calls are not its to cancel
        other = _Context()
        unread._enter(other, anonymous=False, token_id=3)
        _watched(unread, clock, 0.6)
        assert not other.cancelled.is_set()
        # nor are health checks, capped on their own
        checks = [_Context() for _ in range(5)]
        for c in checks:
            unread._enter(c, anonymous=True)
        assert [c.cancelled.is_set() for c in checks] == [True] + [False] * 4
        _watched(unread, clock, 0.5)
        assert [c.cancelled.is_set() for c in checks] == [True] * 3 + [False] * 2
        # a cancelled call's reader leaves as any other (grpc raises in it)
        unread._leave(0)
        assert unread.waiting() == 3 + 1 + 2
    finally:
        unread.close()


def test_unread_grace_must_fit_the_idle_deadline():
    with pytest.raises(ValueError, match="unread_grace_seconds"):
        Config(unread_grace_seconds=0)
    with pytest.raises(ValueError, match="unread_grace_seconds"):
        Config(stream_idle_seconds=1.0, unread_grace_seconds=2.0)
