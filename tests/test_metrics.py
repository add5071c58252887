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
    # the known photo's local features in the feature index: a 300 px picture,
    # as given and enlarged (image.features_enlarge_below)
    assert got['hashsvc_index_hashes{signal_type="local_features"}'] == 2
    assert got["hashsvc_local_feature_index_bytes"] > 0
    assert got["hashsvc_index_version"] == 2 and got["hashsvc_ready"] == 1


def test_a_stored_blob_the_index_cannot_read_is_counted(tmp_path, make_harness):
    """A local_features value rewritten with database access (around the entry
    checks) is not indexed and not a reason to stop: the other entry still
    matches, and the metric says one signal could not be indexed."""
    import sqlite3

    db = tmp_path / "u.db"
    h = make_harness(f"sqlite:///{db}", metrics_listen="127.0.0.1:0")
    op, md = h.stubs("operator")
    op.curation.CreateSet(pb.CreateSetRequest(name="s"), metadata=md)
    for name, seed in (("good", 2), ("spoiled", 3)):
        op.curation.AddEntry(
            pb.AddEntryRequest(set="s", name=name, media=pb.Media(content=encode(photo(seed)))),
            metadata=md,
        )
    assert "hashsvc_unindexed_signals_total" not in str(scrape(h.running.metrics_port))
    make_harness.stop(h)
    with sqlite3.connect(db) as conn:
        spoiled = conn.execute(
            "UPDATE entry_signals SET value = ? WHERE kind = 'local_features' AND entry_id ="
            " (SELECT id FROM entries WHERE name = 'spoiled')",
            (b"\x01not a blob",),
        ).rowcount
    assert spoiled == 2  # the picture's blob as given and enlarged (300 px photos)
    for snapshot in tmp_path.glob("u.db.index/*"):
        snapshot.unlink()  # rebuilt from the store, as on a new replica
    h = make_harness(f"sqlite:///{db}", metrics_listen="127.0.0.1:0")
    got = scrape(h.running.metrics_port)
    assert got['hashsvc_unindexed_signals_total{signal_type="local_features"}'] == 2
    assert got['hashsvc_index_hashes{signal_type="local_features"}'] == 2
    m, mmd = h.stubs("matcher")
    answer = m.matcher.Match(match_request(encode(photo(2))), metadata=mmd)
    assert answer.decision == pb.BLOCK
