"""Hostile and broken uploads get a clear status; the server keeps serving and
the history records each failed call."""

from __future__ import annotations

import functools

import grpc
import pytest

from hashsvc.core.config import ImageLimits
from hashsvc.v1 import hashsvc_pb2 as pb
from hashsvc_testing import hostile
from hashsvc_testing.image_media import encode, photo
from tests.helpers import match_request


def png_bomb(width: int, height: int) -> bytes:
    """A small PNG that claims width x height 1-bit pixels (a decompression bomb)."""
    return hostile.png_bomb(width, height)


@pytest.fixture(scope="module")
def module_harness_config():
    # Real worker processes here: bad input must not take them (or us) down.
    return {
        "hash_in_process": False,
        "max_message_bytes": 4 * 1024 * 1024,
        "image": ImageLimits(max_bytes=3 * 1024 * 1024),
    }


@functools.cache
def good_jpeg() -> bytes:
    # made when a test runs, not at import: it reads ../shared/vectors
    return encode(photo(0))


def _corrupt(data: bytes) -> bytes:
    return data[:600] + bytes(b ^ 0x5A for b in data[600:2000]) + data[2000:]


# data: bytes, or a function making them (those read ../shared/vectors)
CASES = {
    "empty": (b"", grpc.StatusCode.INVALID_ARGUMENT, "empty"),
    "one byte": (b"\xff", grpc.StatusCode.INVALID_ARGUMENT, ""),
    "truncated jpeg": (
        lambda: good_jpeg()[: len(good_jpeg()) // 2],
        grpc.StatusCode.INVALID_ARGUMENT,
        "",
    ),
    "corrupt jpeg": (
        lambda: _corrupt(good_jpeg()),
        grpc.StatusCode.INVALID_ARGUMENT,
        "",
    ),
    "text": (b"hello, this is not an image\n" * 20, grpc.StatusCode.INVALID_ARGUMENT, ""),
    "pdf": (
        b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF",
        grpc.StatusCode.INVALID_ARGUMENT,
        "",
    ),
    "png 30000x30000": (png_bomb(30000, 30000), grpc.StatusCode.RESOURCE_EXHAUSTED, "pixels"),
    "over the byte limit": (
        b"\xff\xd8\xff" + b"\x00" * (3 * 1024 * 1024 + 10),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "limit",
    ),
    "over the message limit": (
        b"\x00" * (5 * 1024 * 1024),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_media_gets_clear_status_and_server_keeps_serving(module_harness, case):
    data, want_code, want_words = CASES[case]
    data = data() if callable(data) else data
    m, md = module_harness.stubs("matcher")
    with pytest.raises(grpc.RpcError) as err:
        m.matcher.Match(match_request(data), metadata=md, timeout=30)
    assert err.value.code() == want_code, err.value.details()
    assert err.value.details()
    assert want_words in err.value.details().lower()
    # still serving, with the same workers or fresh ones
    ok = m.matcher.Match(match_request(good_jpeg()), metadata=md, timeout=30)
    assert ok.decision == pb.ALLOW


def test_failed_calls_are_in_the_history(module_harness):
    m, md = module_harness.stubs("matcher")
    with pytest.raises(grpc.RpcError):
        m.matcher.Match(match_request(b"garbage!" * 10, client_ref="bad-1"), metadata=md)
    a, amd = module_harness.stubs("auditor")
    records = list(a.audit.ExportHistory(pb.QueryHistoryRequest(), metadata=amd))
    bad = [r for r in records if r.client_ref == "bad-1"]
    assert len(bad) == 1
    assert bad[0].status == "INVALID_ARGUMENT" and bad[0].error_message
    assert bad[0].decision == pb.DECISION_UNSPECIFIED


def test_bad_input_to_add_entry(module_harness):
    op, md = module_harness.stubs("operator")
    op.curation.CreateSet(pb.CreateSetRequest(name="bad-adds"), metadata=md)
    for data, code in (
        (b"", grpc.StatusCode.INVALID_ARGUMENT),
        (png_bomb(30000, 30000), grpc.StatusCode.RESOURCE_EXHAUSTED),
    ):
        with pytest.raises(grpc.RpcError) as err:
            op.curation.AddEntry(
                pb.AddEntryRequest(set="bad-adds", name="x", media=pb.Media(content=data)),
                metadata=md,
            )
        assert err.value.code() == code
    with pytest.raises(grpc.RpcError) as err:
        op.curation.AddEntry(
            pb.AddEntryRequest(
                set="bad-adds", name="x", signal=pb.SignalValue(signal_type="pdq", value="ab" * 16)
            ),
            metadata=md,
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "64 hex digits" in err.value.details()
    sets = op.curation.ListSets(pb.ListSetsRequest(), metadata=md).sets
    assert [s.entry_count for s in sets if s.name == "bad-adds"] == [0]
