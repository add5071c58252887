"""Errors carry google.rpc.Status details (issue 17, the proto as the contract
for non-Python clients): every error status an ErrorInfo (reason: the error
class, domain hashsvc.v1, metadata: the config key of a limit, the field at
fault), and an INVALID_ARGUMENT whose field is known a BadRequest naming it.
Read here as any client would: grpc_status.rpc_status.from_call on a plain
stub's error, which also checks that the Status repeats the call's code and
message."""

from __future__ import annotations

import threading
import time

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from hashsvc.api import status
from hashsvc.base import errors
from hashsvc.core.config import StringLimits
from hashsvc.media.audio import SilentAudio
from hashsvc.v1 import hashsvc_pb2 as pb
from tests.helpers import start_harness

LIMITS = StringLimits()
UNKNOWN = pb.SignalValue(signal_type="sha256", value="0" * 64)


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    h = start_harness(f"sqlite:///{tmp_path_factory.mktemp('details')}/db.sqlite")
    try:
        s, md = h.stubs("admin")
        s.curation.CreateSet(pb.CreateSetRequest(name="known"), metadata=md)
        yield h
    finally:
        h.close()


def _details(call) -> tuple[grpc.StatusCode, error_details_pb2.ErrorInfo, list]:
    """(code, ErrorInfo, BadRequest field violations as (field, reason)) of a
    call that must fail."""
    with pytest.raises(grpc.RpcError) as err:
        call()
    found = rpc_status.from_call(err.value)
    assert found is not None, f"no status details with {err.value.code()}: {err.value.details()}"
    infos, violations = [], []
    for detail in found.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            infos.append(info)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            violations += [(v.field, v.reason) for v in bad.field_violations]
            assert all(v.description == err.value.details() for v in bad.field_violations)
    assert len(infos) == 1, found
    assert infos[0].domain == "hashsvc.v1"
    return err.value.code(), infos[0], violations


def test_an_oversized_string_names_its_field_and_limit(harness):
    s, md = harness.stubs("matcher")
    code, info, violations = _details(
        lambda: s.matcher.Match(
            pb.MatchRequest(signal=UNKNOWN, client_ref="r" * (LIMITS.client_ref_chars + 1)),
            metadata=md,
        )
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert info.reason == "INVALID_ARGUMENT"
    assert dict(info.metadata) == {"field": "client_ref", "limit": "strings.client_ref_chars"}
    assert violations == [("client_ref", "INVALID_ARGUMENT")]


def test_nested_and_repeated_strings_are_named_by_their_path(harness):
    admin, amd = harness.stubs("admin")
    # a NUL in the second set name: the item's index, no limit
    _, info, violations = _details(
        lambda: admin.matcher.Match(
            pb.MatchRequest(signal=UNKNOWN, sets=["known", "a\x00b"]), metadata=amd
        )
    )
    assert violations == [("sets[1]", "INVALID_ARGUMENT")]
    assert dict(info.metadata) == {"field": "sets[1]"}
    # an upload's header, read from the stream
    header = pb.MatchUploadRequest(header=pb.MatchRequest(client_ref="r" * 5000))
    _, info, violations = _details(
        lambda: admin.matcher.MatchUpload(iter([header]), metadata=amd, timeout=30)
    )
    assert violations == [("header.client_ref", "INVALID_ARGUMENT")]
    assert info.metadata["limit"] == "strings.client_ref_chars"
    # a label value: the map's field; too many items: the repeated field
    _, _, violations = _details(
        lambda: admin.curation.CreateSet(
            pb.CreateSetRequest(name="x", labels={"k": "v" * 2000}), metadata=amd
        )
    )
    assert violations == [("labels", "INVALID_ARGUMENT")]
    _, info, violations = _details(
        lambda: admin.matcher.Match(
            pb.MatchRequest(signal=UNKNOWN, sets=["s"] * (LIMITS.repeated_items + 1)),
            metadata=amd,
        )
    )
    assert violations == [("sets", "INVALID_ARGUMENT")]
    assert info.metadata["limit"] == "strings.repeated_items"


@pytest.mark.parametrize("rpc", ["ListEntries", "QueryHistory", "ListReviewItems"])
def test_paging_errors_name_page_size_or_page_token(harness, rpc):
    s, md = harness.stubs("admin")
    calls = {
        "ListEntries": lambda size, token: s.curation.ListEntries(
            pb.ListEntriesRequest(set="known", page_size=size, page_token=token), metadata=md
        ),
        "QueryHistory": lambda size, token: s.audit.QueryHistory(
            pb.QueryHistoryRequest(page_size=size, page_token=token), metadata=md
        ),
        "ListReviewItems": lambda size, token: s.review.ListReviewItems(
            pb.ListReviewItemsRequest(page_size=size, page_token=token), metadata=md
        ),
    }
    call = calls[rpc]
    code, info, violations = _details(lambda: call(-1, ""))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert violations == [("page_size", "INVALID_ARGUMENT")]
    assert dict(info.metadata) == {"field": "page_size"}
    for token in ("²", "1.5", str(2**63), "0:3" if rpc == "ListEntries" else "1:3"):
        code, _, violations = _details(lambda token=token: call(10, token))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert violations == [("page_token", "INVALID_ARGUMENT")], token
    call(10, "1:3" if rpc == "ListEntries" else "1")  # the token forms each accepts


def test_a_missing_set_comes_before_the_paging_fields(harness):
    """The core looks the set up first; the details change nothing of that."""
    s, md = harness.stubs("admin")
    for call in (
        lambda: s.curation.ListEntries(
            pb.ListEntriesRequest(set="nope", page_size=-1), metadata=md
        ),
        lambda: s.audit.QueryHistory(pb.QueryHistoryRequest(set="nope", page_size=-1), metadata=md),
        lambda: s.review.ListReviewItems(
            pb.ListReviewItemsRequest(filter=pb.ReviewFilter(set="nope"), page_size=-1),
            metadata=md,
        ),
    ):
        code, info, violations = _details(call)
        assert (code, info.reason, violations) == (grpc.StatusCode.NOT_FOUND, "NOT_FOUND", [])


def test_export_history_leaves_the_paging_fields_unread(harness):
    """It shares QueryHistory's request and streams every record: a page_size
    or page_token there was never checked, and still is not."""
    s, md = harness.stubs("auditor")
    request = pb.QueryHistoryRequest(page_size=-1, page_token="not a token")
    records = list(s.audit.ExportHistory(request, metadata=md, timeout=30))
    assert records and all(r.id for r in records)


def test_errors_without_a_field_carry_only_their_reason(harness):
    s, md = harness.stubs("operator")
    code, info, violations = _details(
        lambda: s.curation.GetSet(pb.GetSetRequest(name="nope"), metadata=md)
    )
    assert (code, info.reason, dict(info.metadata), violations) == (
        grpc.StatusCode.NOT_FOUND,
        "NOT_FOUND",
        {},
        [],
    )
    code, info, _ = _details(lambda: s.admin.ListTokens(pb.ListTokensRequest(), metadata=md))
    assert (code, info.reason) == (grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED")
    nobody, _ = harness.stubs(None)
    code, info, _ = _details(lambda: nobody.curation.ListSets(pb.ListSetsRequest()))
    assert (code, info.reason) == (grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED")


def test_a_long_message_is_cut_so_that_the_error_reaches_the_client(harness):
    """NOT_FOUND naming 100 set names of 1000 characters (100 KB) reached the
    client as RESOURCE_EXHAUSTED: its metadata was past grpc's hard limit."""
    s, md = harness.stubs("matcher")
    names = [f"{k}" + "x" * 1000 for k in range(100)]
    code, info, _ = _details(
        lambda: s.matcher.Match(pb.MatchRequest(signal=UNKNOWN, sets=names), metadata=md)
    )
    assert (code, info.reason) == (grpc.StatusCode.NOT_FOUND, "NOT_FOUND")
    with pytest.raises(grpc.RpcError) as err:
        s.matcher.Match(pb.MatchRequest(signal=UNKNOWN, sets=names), metadata=md)
    shown = err.value.details()
    assert shown.startswith("no such set: 0xxx") and len(shown) <= status.MAX_MESSAGE_CHARS
    assert shown.endswith(f"({len('no such set: ' + ', '.join(names))} characters)")


def test_the_rate_limit_names_its_config_key(tmp_path):
    h = start_harness(f"sqlite:///{tmp_path}/rate.db", rate_limit_per_second=1, rate_limit_burst=1)
    try:
        m, md = h.stubs("matcher")
        request = pb.MatchRequest(signal=UNKNOWN)
        m.matcher.Match(request, metadata=md)
        code, info, violations = _details(lambda: m.matcher.Match(request, metadata=md))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert info.reason == "TOO_LARGE"
        assert dict(info.metadata) == {"limit": "rate_limit_per_second"}
        assert violations == []
    finally:
        h.close()


def test_stream_limits_name_their_config_keys(tmp_path):
    h = start_harness(
        f"sqlite:///{tmp_path}/streams.db",
        max_streams_per_token=1,
        max_batch_items=2,
        stream_idle_seconds=1.0,
    )
    release = threading.Event()

    def idle(first):
        yield first
        release.wait(30)

    held = None
    try:
        m, md = h.stubs("matcher")
        header = pb.MatchUploadRequest(header=pb.MatchRequest())
        held = m.matcher.MatchUpload.future(idle(header), metadata=md)
        deadline = time.monotonic() + 5
        while h.running.streams.open_streams() < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        code, info, _ = _details(
            lambda: m.matcher.MatchUpload(idle(header), metadata=md, timeout=10)
        )
        assert (code, info.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "TOO_LARGE")
        assert dict(info.metadata) == {"limit": "max_streams_per_token"}
        # the held stream sent nothing more for stream_idle_seconds
        with pytest.raises(grpc.RpcError) as err:
            held.result(timeout=10)
        found = rpc_status.from_call(err.value)
        info = error_details_pb2.ErrorInfo()
        found.details[0].Unpack(info)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert (info.reason, dict(info.metadata)) == ("TIMEOUT", {"limit": "stream_idle_seconds"})
        # a batch past max_batch_items ends with its own status
        code, info, _ = _details(
            lambda: list(
                m.matcher.MatchBatch(iter([pb.MatchRequest(signal=UNKNOWN)] * 3), metadata=md)
            )
        )
        assert (code, dict(info.metadata)) == (
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            {"limit": "max_batch_items"},
        )
    finally:
        release.set()
        if held is not None:
            held.cancel()
        h.close()


def test_a_call_without_its_message_says_so(harness):
    s, md = harness.stubs("matcher")
    match = s.channel.stream_unary(
        "/hashsvc.v1.Matcher/Match",
        pb.MatchRequest.SerializeToString,
        pb.MatchResponse.FromString,
    )
    code, info, _ = _details(lambda: match(iter([]), metadata=md, timeout=10))
    assert (code, info.reason) == (grpc.StatusCode.UNIMPLEMENTED, "NO_REQUEST_MESSAGE")


def test_reasons_are_the_error_classes():
    assert status.reason(errors.TooLarge("x")) == "TOO_LARGE"
    assert status.reason(errors.InvalidArgument("x")) == "INVALID_ARGUMENT"
    assert status.reason(SilentAudio("x")) == "SILENT_AUDIO"
    assert status.reason(errors.Timeout("x")) == "TIMEOUT"


def test_media_errors_name_their_class(harness):
    """A client tells content it cannot send (UNSUPPORTED_MEDIA) from a bad
    request without reading the message; both are INVALID_ARGUMENT."""
    s, md = harness.stubs("matcher")
    code, info, violations = _details(
        lambda: s.matcher.Match(
            pb.MatchRequest(media=pb.Media(content=b"just some text, no media")), metadata=md
        )
    )
    assert (code, info.reason, violations) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "UNSUPPORTED_MEDIA",
        [],
    )
