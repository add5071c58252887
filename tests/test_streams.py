"""Streams cannot stall the server (issue 16 item 2): idle and total deadlines,
a concurrency cap global and per token, reflection off by default."""

from __future__ import annotations

import threading
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2_grpc

from hashsvc import auth
from hashsvc.v1 import hashsvc_pb2 as pb
from hashsvc.v1 import hashsvc_pb2_grpc as pb_grpc
from tests.helpers import encode, photo, start_harness

IDLE = 2.0  # stream_idle_seconds in these tests: long enough to measure, short to wait for
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
    valid tokens and 200 without a token, all open at once: Match and the
    health check still answer within 100 ms, and the idle streams end by
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

        # the rejected streams end at once; the admitted ones stay open, idle
        time.sleep(0.3)
        for _ in range(5):
            assert m.matcher.Match(known, metadata=mmd, timeout=5).decision == pb.BLOCK
            assert health.Check(check, timeout=5).status == health_pb2.HealthCheckResponse.SERVING
        match_seconds = max(
            _timed(lambda: m.matcher.Match(known, metadata=mmd, timeout=5)) for _ in range(5)
        )
        health_seconds = max(_timed(lambda: health.Check(check, timeout=5)) for _ in range(5))
        assert match_seconds < 0.1, f"Match took {match_seconds * 1000:.0f} ms"
        assert health_seconds < 0.1, f"health check took {health_seconds * 1000:.0f} ms"
        assert h.running.streams.open_streams() > 0, "no idle stream was admitted at all"

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
        assert h.running.streams.open_streams() == 0
    finally:
        release.set()
        for _, call in calls:
            call.cancel()
        for channel in channels:
            channel.close()
        h.close()
