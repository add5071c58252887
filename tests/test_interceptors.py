"""The interceptors, one per concern (hashsvc/api/interceptors.py), in the
order hashsvc/api/server.py composes them: a call without a valid token is
refused before its message is read and before it holds a stream slot, and
the metrics see every call's final status, MatchBatch's too."""

from __future__ import annotations

import threading
import time

import grpc
import pytest

from hashsvc.v1 import hashsvc_pb2 as pb
from hashsvc_testing.image_media import encode, photo
from tests.helpers import match_request
from tests.test_metrics import scrape
from tests.test_streams import _idle_requests, _wait

BAD_TOKEN = (("authorization", "Bearer not-a-token"),)


def test_access_comes_before_limits_and_metrics_see_every_status(tmp_path, make_harness):
    h = make_harness(
        f"sqlite:///{tmp_path}/order.db",
        max_streams=1,
        stream_idle_seconds=30.0,
        max_batch_items=2,
        metrics_listen="127.0.0.1:0",
    )
    release = threading.Event()
    held = None
    try:
        m, md = h.stubs("matcher")
        header = pb.MatchUploadRequest(header=pb.MatchRequest())
        held = m.matcher.MatchUpload.future(_idle_requests(header, release), metadata=md)
        assert _wait(lambda: h.running.streams.open_streams() == 1)

        def refused_at_once(call) -> grpc.StatusCode:
            started = time.monotonic()
            with pytest.raises(grpc.RpcError) as err:
                call()
            # a held stream would wait for stream_idle_seconds (30 s)
            assert time.monotonic() - started < 5
            return err.value.code()

        # the only stream slot is taken: a bad token is refused for its
        # token, not for the cap, and takes no slot
        code = refused_at_once(
            lambda: m.matcher.MatchUpload(_idle_requests(header, release), metadata=BAD_TOKEN)
        )
        assert code == grpc.StatusCode.UNAUTHENTICATED
        assert h.running.streams.open_streams() == 1
        # a unary call that never sends its message: refused at once, not
        # after stream_idle_seconds, without waiting for its message
        raw_match = m.channel.stream_stream("/hashsvc.v1.Matcher/Match")
        code = refused_at_once(
            lambda: list(raw_match(_idle_requests(None, release), metadata=BAD_TOKEN))
        )
        assert code == grpc.StatusCode.UNAUTHENTICATED
        assert h.running.unread.waiting() == 0
        # a stream past the cap with a valid token is refused by the cap
        code = refused_at_once(
            lambda: m.matcher.MatchUpload(_idle_requests(header, release), metadata=md)
        )
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED

        release.set()  # the held stream ends: a header and no media
        assert held.exception(timeout=10).code() == grpc.StatusCode.INVALID_ARGUMENT
        assert _wait(lambda: h.running.streams.open_streams() == 0)
        # MatchBatch's own error ends its stream with a status, through @rpc
        items = [match_request(encode(photo(i))) for i in range(3)]
        code = refused_at_once(lambda: list(m.matcher.MatchBatch(iter(items), metadata=md)))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED

        got = scrape(h.running.metrics_port)
        count = 'hashsvc_rpc_duration_seconds_count{{code="{}",rpc="{}"}}'
        assert got[count.format("UNAUTHENTICATED", "MatchUpload")] == 1
        assert got[count.format("UNAUTHENTICATED", "Match")] == 1
        assert got[count.format("RESOURCE_EXHAUSTED", "MatchUpload")] == 1
        assert got[count.format("INVALID_ARGUMENT", "MatchUpload")] == 1
        assert got[count.format("RESOURCE_EXHAUSTED", "MatchBatch")] == 1
    finally:
        release.set()
        if held is not None:
            held.cancel()
