"""Every RPC against every role, no token and a wrong token (default deny)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import grpc
import pytest

from hashdb import HistoryFilter
from hashsvc.core import auth
from hashsvc.core.config import ConsoleSettings
from hashsvc.v1 import hashsvc_pb2 as pb

# A minimal valid-looking request per RPC; what matters is the status class.
REQUESTS = {
    "Matcher/Match": pb.MatchRequest(signal=pb.SignalValue(signal_type="md5", value="0" * 32)),
    "Matcher/MatchBatch": iter(()),
    "Matcher/MatchUpload": [
        pb.MatchUploadRequest(header=pb.MatchRequest()),
        pb.MatchUploadRequest(chunk=b"\x89PNG\r\n\x1a\n"),
    ],
    "Curation/CreateSet": pb.CreateSetRequest(name="s"),
    "Curation/ListSets": pb.ListSetsRequest(),
    "Curation/GetSet": pb.GetSetRequest(name="s"),
    "Curation/UpdateSet": pb.UpdateSetRequest(name="s"),
    "Curation/AddEntry": pb.AddEntryRequest(set="s", name="e"),
    "Curation/AddEntryUpload": [
        pb.AddEntryUploadRequest(header=pb.AddEntryRequest(set="s", name="e")),
        pb.AddEntryUploadRequest(chunk=b"\x89PNG\r\n\x1a\n"),
    ],
    "Curation/ListEntries": pb.ListEntriesRequest(set="s"),
    "Curation/GetEntry": pb.GetEntryRequest(set="s", name="e"),
    "Curation/RemoveEntry": pb.RemoveEntryRequest(set="s", name="e"),
    "Curation/FindEntries": pb.FindEntriesRequest(
        set="s", signal=pb.SignalValue(signal_type="sha256", value="0" * 64)
    ),
    "Curation/GetStats": pb.GetStatsRequest(),
    "Curation/BulkLoad": [pb.BulkLoadRequest(header=pb.BulkLoadHeader(set="s"))],
    "Curation/ExportEntries": pb.ExportEntriesRequest(set="s"),
    "Curation/ReleaseEntry": pb.ReleaseEntryRequest(set="s", name="e"),
    "Review/ListReviewItems": pb.ListReviewItemsRequest(),
    "Review/ClaimReviewItem": pb.ClaimReviewItemRequest(id=999999),
    "Review/ResolveReviewItem": pb.ResolveReviewItemRequest(id=999999, resolution="confirmed"),
    "Audit/QueryHistory": pb.QueryHistoryRequest(),
    "Audit/ExportHistory": pb.QueryHistoryRequest(),
    "Audit/VerifyHistory": pb.VerifyHistoryRequest(),
    "Retro/StartRetroRun": pb.StartRetroRunRequest(set="s"),
    "Retro/ListRetroRuns": pb.ListRetroRunsRequest(),
    "Retro/PruneHistory": pb.PruneHistoryRequest(),
    "Admin/CreateToken": pb.CreateTokenRequest(role="matcher"),
    "Admin/ListTokens": pb.ListTokensRequest(),
    "Admin/RevokeToken": pb.RevokeTokenRequest(id=999999),
    "Events/Subscribe": pb.SubscribeRequest(from_id=1, stop_at_end=True),
    "Events/ListEvents": pb.ListEventsRequest(),
    "Exchange/AddFeed": pb.AddFeedRequest(name="f", api="file", set="s"),
    "Exchange/ListFeeds": pb.ListFeedsRequest(),
    "Exchange/GetFeed": pb.GetFeedRequest(name="f"),
    "Exchange/SetFeedEnabled": pb.SetFeedEnabledRequest(name="f", enabled=True),
    "Exchange/RemoveFeed": pb.RemoveFeedRequest(name="f"),
    "Exchange/FetchFeed": pb.FetchFeedRequest(name="f"),
    "Exchange/SendFeedback": pb.SendFeedbackRequest(feed="f", entry="e", verdict="confirmed"),
}
DENIED = {grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED}


@pytest.fixture(scope="module")
def module_harness_config() -> dict:
    # the matrix sends every RPC's dead tokens from one address: the limit on
    # failed authentications per address (tested in test_auth_failures) would
    # answer RESOURCE_EXHAUSTED long before the matrix ends
    return {"console": ConsoleSettings(sign_in_failures_per_minute=1_000_000)}


@pytest.fixture(scope="module")
def module_harness(module_harness):
    """The module's server, with admin tokens that no longer work: revoked, and
    expired (written straight into the store with an expiry in the past)."""
    h = module_harness
    revoked, h.tokens["revoked"] = auth.create_token(h.core.store, "admin", "gone")
    h.core.store.revoke_token(revoked.id)
    h.tokens["expired"] = auth.new_token()
    h.core.store.add_token(
        "old", "admin", auth.hash_token(h.tokens["expired"]), datetime.now(UTC) - timedelta(days=1)
    )
    return h


def test_every_rpc_of_the_api_is_in_the_role_table():
    in_proto = {
        f"/hashsvc.v1.{service.name}/{method.name}"
        for service in pb.DESCRIPTOR.services_by_name.values()
        for method in service.methods
    }
    assert in_proto == set(auth.RPC_ROLES)
    assert {f"/hashsvc.v1.{name}" for name in REQUESTS} == in_proto


def _call(module_harness, method: str, metadata):
    stubs, _ = module_harness.stubs(None)
    service, name = method.split("/")
    stub = {
        "Matcher": stubs.matcher,
        "Curation": stubs.curation,
        "Audit": stubs.audit,
        "Admin": stubs.admin,
        "Review": stubs.review,
        "Events": stubs.events,
        "Retro": stubs.retro,
        "Exchange": stubs.exchange,
    }[service]
    request = REQUESTS[method]
    if isinstance(request, list):  # a client stream, sent afresh each call
        request = iter(request)
    result = getattr(stub, name)(request, metadata=metadata)
    if not hasattr(result, "ListFields"):  # a response stream: drain it
        list(result)


@pytest.mark.parametrize("method", sorted(REQUESTS))
@pytest.mark.parametrize("role", [*auth.ROLES, None, "wrong-token", "revoked", "expired"])
def test_role_matrix(module_harness, method, role):
    if role == "wrong-token":
        metadata = (("authorization", "Bearer hsv_not-a-real-token"),)
    elif role is None:
        metadata = ()
    else:
        metadata = (("authorization", f"Bearer {module_harness.tokens[role]}"),)
    allowed = role in auth.RPC_ROLES[f"/hashsvc.v1.{method}"]  # never for the dead tokens
    try:
        _call(module_harness, method, metadata)
        code = grpc.StatusCode.OK
    except grpc.RpcError as exc:
        code = exc.code()
    if allowed:
        assert code not in DENIED, f"{role} should be allowed {method}, got {code}"
    elif role in (None, "wrong-token", "revoked", "expired"):
        assert code == grpc.StatusCode.UNAUTHENTICATED
    else:
        assert code == grpc.StatusCode.PERMISSION_DENIED


def test_expired_token_is_refused(tmp_path, make_harness):
    import time

    h = make_harness(f"sqlite:///{tmp_path}/exp.db")
    admin, md = h.stubs("admin")
    short = admin.admin.CreateToken(
        pb.CreateTokenRequest(role="matcher", name="temp", expires_in_seconds=1), metadata=md
    )
    assert short.info.HasField("expires_at")
    short_md = (("authorization", f"Bearer {short.token}"),)
    stubs, _ = h.stubs(None)
    stubs.matcher.Match(REQUESTS["Matcher/Match"], metadata=short_md)
    time.sleep(1.2)
    with pytest.raises(grpc.RpcError) as err:
        stubs.matcher.Match(REQUESTS["Matcher/Match"], metadata=short_md)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "expired" in err.value.details()


def test_rate_limit_is_per_token(tmp_path, make_harness):
    h = make_harness(f"sqlite:///{tmp_path}/rate.db", rate_limit_per_second=1, rate_limit_burst=3)
    stubs, matcher_md = h.stubs("matcher")
    codes = []
    for _ in range(6):
        try:
            stubs.matcher.Match(REQUESTS["Matcher/Match"], metadata=matcher_md)
            codes.append(grpc.StatusCode.OK)
        except grpc.RpcError as exc:
            codes.append(exc.code())
            assert "rate limit" in exc.details()
    assert codes[:3] == [grpc.StatusCode.OK] * 3
    assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes[3:]
    # another pipeline's token is not slowed down by the first one
    _, admin_md = h.stubs("admin")
    stubs.matcher.Match(REQUESTS["Matcher/Match"], metadata=admin_md)


# -- the same matrix over the HTTP API (hashsvc/http): one role table for both


@pytest.fixture(scope="module")
def http_url(module_harness):
    """The HTTP API on the module's server: same core, rate limiter and spool."""
    running = module_harness.running
    server = start_http_on(running)
    yield f"http://127.0.0.1:{server.port}"
    server.stop()


def start_http_on(running):
    import dataclasses

    from hashsvc.http.server import HttpServer

    core = running.core
    # the matrix sends every route's dead tokens from one address: the limit on
    # failed authentications per address (tested in test_http_api) would
    # answer 429 long before the matrix ends
    console = dataclasses.replace(core.config.console, sign_in_failures_per_minute=1_000_000)
    core.config = dataclasses.replace(core.config, http_listen="127.0.0.1:0", console=console)
    return HttpServer(core, running.limiter, running.spool, running.feeds).start()


def _http_request(endpoint) -> dict:
    """A minimal request for a route; what matters is the status class."""
    path = (
        endpoint.path.replace("{set}", "s")
        .replace("{name:path}", "e")
        .replace("{id}", "999999")
        .replace("{job_id}", "x")
        .replace("{name}", "f")
    )
    body: dict = {"json": {}}
    if endpoint.body == "match":
        body = {"json": {"signal": {"signal_type": "md5", "value": "0" * 32}}}
    elif endpoint.body == "media":
        body = {"content": b"\x89PNG\r\n\x1a\n"}
    elif not endpoint.body:
        body = {}
    return {"method": endpoint.method, "url": path, **body}


def test_every_rpc_has_an_http_route_with_its_roles():
    from hashsvc.http.app import ENDPOINTS, RPCS_SERVED_ELSEWHERE

    routed = {f"/hashsvc.v1.{ep.rpc}" for ep in ENDPOINTS}
    elsewhere = {f"/hashsvc.v1.{rpc}" for rpc in RPCS_SERVED_ELSEWHERE}
    assert routed | elsewhere == set(auth.RPC_ROLES)
    assert routed <= set(auth.RPC_ROLES)


def _http_endpoints():
    from hashsvc.http.app import ENDPOINTS

    return ENDPOINTS


@pytest.mark.parametrize("endpoint", _http_endpoints(), ids=lambda ep: f"{ep.method} {ep.path}")
@pytest.mark.parametrize("role", [*auth.ROLES, None, "wrong-token", "revoked", "expired"])
def test_http_role_matrix(module_harness, http_url, endpoint, role):
    import httpx

    if role == "wrong-token":
        headers = {"Authorization": "Bearer hsv_not-a-real-token"}
    elif role is None:
        headers = {}
    else:
        headers = {"Authorization": f"Bearer {module_harness.tokens[role]}"}
    allowed = role in auth.RPC_ROLES[f"/hashsvc.v1.{endpoint.rpc}"]
    with httpx.Client(base_url=http_url, headers=headers, timeout=60) as client:
        resp = client.request(**_http_request(endpoint))
    assert resp.status_code != 500, resp.text
    if allowed:
        assert resp.status_code not in (401, 403), f"{role}: {resp.status_code} {resp.text}"
    elif role in (None, "wrong-token", "revoked", "expired"):
        assert resp.status_code == 401 and resp.json()["error"]["code"] == "UNAUTHENTICATED"
    else:
        assert resp.status_code == 403 and resp.json()["error"]["code"] == "PERMISSION_DENIED"


def test_http_rate_limit_is_the_grpc_one(tmp_path, make_harness):
    """One budget per token over both APIs: 3 gRPC calls use the burst up,
    the HTTP call after them is refused (429) and recorded as a Match."""
    import httpx

    h = make_harness(f"sqlite:///{tmp_path}/rate.db", rate_limit_per_second=0.2, rate_limit_burst=3)
    server = start_http_on(h.running)
    try:
        stubs, md = h.stubs("matcher")
        for _ in range(3):
            stubs.matcher.Match(REQUESTS["Matcher/Match"], metadata=md)
        headers = {"Authorization": f"Bearer {h.tokens['matcher']}"}
        with httpx.Client(base_url=f"http://127.0.0.1:{server.port}", headers=headers) as c:
            resp = c.post("/v1/match", json={"signal": {"signal_type": "md5", "value": "0" * 32}})
        assert resp.status_code == 429
        assert resp.json()["error"] == {
            "code": "RESOURCE_EXHAUSTED",
            "message": resp.json()["error"]["message"],
            "limit": "rate_limit_per_second",
        }
        records = h.core.store.query_history(HistoryFilter())
        assert [r.status for r in records if r.rpc == "Match"].count("RESOURCE_EXHAUSTED") == 1
    finally:
        server.stop()


def test_http_match_fails_closed_while_the_index_is_not_loaded(tmp_path):
    """No index, no decision: 503 UNAVAILABLE and /readyz 503, never an ALLOW."""
    import httpx

    from hashsvc.core.config import Config
    from hashsvc.core.core import Core
    from hashsvc.http.server import HttpServer

    core = Core.open(
        Config(db_url=f"sqlite:///{tmp_path}/cold.db", http_listen="127.0.0.1:0"),
        hash_in_process=True,
    )
    _, token = auth.create_token(core.store, "matcher", "cold")
    server = HttpServer(core).start()  # the core is never started: no index
    try:
        with httpx.Client(
            base_url=f"http://127.0.0.1:{server.port}",
            headers={"Authorization": f"Bearer {token}"},
        ) as client:
            ready = client.get("/readyz")
            assert ready.status_code == 503 and ready.json()["error"]["code"] == "UNAVAILABLE"
            assert client.get("/healthz").status_code == 200
            resp = client.post(
                "/v1/match", json={"signal": {"signal_type": "md5", "value": "0" * 32}}
            )
            assert resp.status_code == 503 and resp.json()["error"]["code"] == "UNAVAILABLE"
            raw = client.post("/v1/match", content=b"\xff\xd8\xff" + b"\x00" * 100)
            assert raw.status_code == 503, raw.text
    finally:
        server.stop()
        core.close()


def test_http_connections_without_a_request_are_closed(tmp_path, make_harness):
    """A caller without a token holding connections open without sending a
    request (or its headers a byte at a time) cannot take them all: each is
    closed http_headers_seconds after it opened or after its last answer."""
    import socket
    import time

    h = make_harness(f"sqlite:///{tmp_path}/idle.db", http_headers_seconds=1.0)
    server = start_http_on(h.running)
    try:
        silent = socket.create_connection(("127.0.0.1", server.port))
        dribbling = socket.create_connection(("127.0.0.1", server.port))
        dribbling.sendall(b"GET /healthz HTTP/1.1\r\n")
        kept = socket.create_connection(("127.0.0.1", server.port))
        kept.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        started = time.monotonic()
        for sock in (silent, dribbling):
            sock.settimeout(10)
            assert sock.recv(1024) == b""  # closed by the server
        assert time.monotonic() - started < 5
        kept.settimeout(10)
        assert kept.recv(1024).startswith(b"HTTP/1.1 200")
        for sock in (silent, dribbling, kept):
            sock.close()
    finally:
        server.stop()
