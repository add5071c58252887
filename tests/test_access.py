"""Every RPC against every role, no token and a wrong token (default deny)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import grpc
import pytest

from hashsvc.core import auth
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
    "Admin/CreateToken": pb.CreateTokenRequest(role="matcher"),
    "Admin/ListTokens": pb.ListTokensRequest(),
    "Admin/RevokeToken": pb.RevokeTokenRequest(id=999999),
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
