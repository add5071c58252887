"""Guessing tokens over gRPC is throttled per peer address, as over HTTP: past
`console.sign_in_failures_per_minute` failed authentications in a minute the
address is refused RESOURCE_EXHAUSTED (with when to come back) before its
token is looked up, a good token too unless it authenticated lately (the
pipelines behind one NAT keep matching); another address is not held back; in
`hashsvc serve --http-listen` the two APIs and the console share one budget."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from hashsvc.core.config import ConsoleSettings
from hashsvc.v1 import hashsvc_pb2 as pb
from hashsvc_testing.http_server import HttpServerProcess
from hashsvc_testing.tcp_relay import TcpRelay
from tests.helpers import Stubs

LIMIT_KEY = "console.sign_in_failures_per_minute"


def _stats(address: str, token: str) -> grpc.StatusCode:
    with grpc.insecure_channel(address) as channel:
        try:
            Stubs(channel).curation.GetStats(
                pb.GetStatsRequest(), metadata=(("authorization", f"Bearer {token}"),), timeout=30
            )
        except grpc.RpcError as exc:
            return exc
    return grpc.StatusCode.OK


def _code(answer) -> grpc.StatusCode:
    return answer if isinstance(answer, grpc.StatusCode) else answer.code()


def test_failed_tokens_are_throttled_per_peer_address(tmp_path, make_harness):
    h = make_harness(
        f"sqlite:///{tmp_path}/db.sqlite", console=ConsoleSettings(sign_in_failures_per_minute=3)
    )
    store = h.core.store
    lookups = []
    find_token = store.find_token
    store.find_token = lambda token_hash: lookups.append(token_hash) or find_token(token_hash)

    # a pipeline behind the same address authenticates before the guesses
    assert _code(_stats(h.address, h.tokens["operator"])) == grpc.StatusCode.OK
    for k in range(3):
        assert _code(_stats(h.address, f"hs_guess{k}")) == grpc.StatusCode.UNAUTHENTICATED
    assert len(lookups) == 4
    lookups.clear()

    # past the limit: refused before any lookup, a good token not seen lately too
    for token in ("hs_guess-more", h.tokens["auditor"]):
        refused = _stats(h.address, token)
        assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "too many failed authentications from your address" in refused.details()
        details = rpc_status.from_call(refused).details
        info, retry = error_details_pb2.ErrorInfo(), error_details_pb2.RetryInfo()
        assert details[0].Unpack(info) and info.metadata["limit"] == LIMIT_KEY
        assert details[-1].Unpack(retry) and 1 <= retry.retry_delay.seconds <= 60
    assert lookups == []
    # the pipeline's token that authenticated lately still works (and is looked
    # up as always: revoked now, it would fail)
    assert _code(_stats(h.address, h.tokens["operator"])) == grpc.StatusCode.OK
    assert len(lookups) == 1

    # health takes no token and is not refused
    with grpc.insecure_channel(h.address) as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert health.status == health_pb2.HealthCheckResponse.SERVING

    # another address: its good token works, its own failures are its own
    with TcpRelay(("127.0.0.1", h.running.port), "127.0.0.2") as elsewhere:
        assert _code(_stats(elsewhere.address, h.tokens["auditor"])) == grpc.StatusCode.OK
        assert _code(_stats(elsewhere.address, "hs_other")) == grpc.StatusCode.UNAUTHENTICATED
    del store.find_token


def test_permission_denied_is_not_a_failed_authentication(tmp_path, make_harness):
    """A good token calling an RPC its role may not call is no guess."""
    h = make_harness(
        f"sqlite:///{tmp_path}/db.sqlite", console=ConsoleSettings(sign_in_failures_per_minute=2)
    )
    for _ in range(4):
        assert _code(_stats(h.address, h.tokens["matcher"])) == grpc.StatusCode.PERMISSION_DENIED
    assert _code(_stats(h.address, h.tokens["auditor"])) == grpc.StatusCode.OK


def test_grpc_http_and_console_share_one_budget_in_serve(tmp_path):
    config = "[console]\nsign_in_failures_per_minute = 3\n"
    proc = HttpServerProcess(f"sqlite:///{tmp_path}/db.sqlite", tmp_path / "server.log", config)
    try:
        for k in range(2):
            assert (
                _code(_stats(proc.grpc_address, f"hs_guess{k}")) == grpc.StatusCode.UNAUTHENTICATED
            )
        with proc.client(token="hs_guess-http") as guesser:
            assert guesser.get("/v1/stats").status_code == 401
        refused = _stats(proc.grpc_address, proc.tokens["auditor"])
        assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        with proc.client("auditor") as right:
            answer = right.get("/v1/stats")
            assert answer.status_code == 429
            assert answer.json()["error"]["limit"] == LIMIT_KEY
            assert right.post("/ui/login").status_code == 429
        with TcpRelay(("127.0.0.1", proc.grpc_port), "127.0.0.2") as elsewhere:
            assert _code(_stats(elsewhere.address, proc.tokens["auditor"])) == grpc.StatusCode.OK
    finally:
        proc.stop()


def test_calls_without_a_token_are_not_counted(tmp_path, make_harness):
    """A call without a token guesses nothing (and costs no lookup): a client
    that forgot its token does not lock out its address."""
    h = make_harness(
        f"sqlite:///{tmp_path}/db.sqlite", console=ConsoleSettings(sign_in_failures_per_minute=2)
    )
    stubs, _ = h.stubs(None)
    for _ in range(5):
        with pytest.raises(grpc.RpcError) as refused:
            stubs.curation.GetStats(pb.GetStatsRequest(), timeout=30)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert _code(_stats(h.address, h.tokens["auditor"])) == grpc.StatusCode.OK
