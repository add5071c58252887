"""Prometheus metrics over HTTP: RPC latency, decisions, matches per set, index."""

from __future__ import annotations

import urllib.request

import grpc
import pytest

from hashsvc.v1 import hashsvc_pb2 as pb
from hashsvc_testing.image_media import encode, photo
from tests.helpers import match_request


def scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def test_metrics_count_what_happened(tmp_path, make_harness):
    h = make_harness(f"sqlite:///{tmp_path}/m.db", metrics_listen="127.0.0.1:0")
    op, md = h.stubs("operator")
    op.curation.CreateSet(pb.CreateSetRequest(name="isis"), metadata=md)
    op.curation.AddEntry(
        pb.AddEntryRequest(set="isis", name="k", media=pb.Media(content=encode(photo(2)))),
        metadata=md,
    )
    m, mmd = h.stubs("matcher")
    m.matcher.Match(match_request(encode(photo(2))), metadata=mmd)
    m.matcher.Match(match_request(encode(photo(5))), metadata=mmd)
    with pytest.raises(grpc.RpcError):
        m.matcher.Match(match_request(b""), metadata=mmd)
    list(m.matcher.MatchBatch(iter([match_request(encode(photo(2)))]), metadata=mmd))

    got = scrape(h.running.metrics_port)
    assert got['hashsvc_match_decisions_total{decision="block",media_type="image"}'] == 2
    assert got['hashsvc_match_decisions_total{decision="allow",media_type="image"}'] == 1
    assert got['hashsvc_matches_total{decision="block",set="isis"}'] == 2
    assert got['hashsvc_rpc_duration_seconds_count{code="OK",rpc="Match"}'] == 2
    assert got['hashsvc_rpc_duration_seconds_count{code="INVALID_ARGUMENT",rpc="Match"}'] == 1
    assert got['hashsvc_rpc_duration_seconds_count{code="OK",rpc="MatchBatch"}'] == 1
    assert got['hashsvc_rpc_duration_seconds_count{code="OK",rpc="AddEntry"}'] == 1
    assert got['hashsvc_index_hashes{signal_type="pdq"}'] >= 10
    # the known photo's local features: one picture in the feature index
    assert got['hashsvc_index_hashes{signal_type="local_features"}'] == 1
    assert got["hashsvc_local_feature_index_bytes"] > 0
    assert got["hashsvc_index_version"] == 2 and got["hashsvc_ready"] == 1
