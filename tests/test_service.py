"""The service end to end over a real gRPC channel, on both stores."""

from __future__ import annotations

import json

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from hashsvc.matching.policy import DEFAULT_THRESHOLDS
from hashsvc.v1 import hashsvc_pb2 as pb
from hashsvc_testing.image_media import encode, flat_image, mirrored, noise_image, photo, reencoded
from tests.helpers import match_request


def _known_set(h, name="isis-images", **labels):
    op, md = h.stubs("operator")
    op.curation.CreateSet(
        pb.CreateSetRequest(name=name, description="test", labels=labels or {"group": "ISIS"}),
        metadata=md,
    )
    return op, md


def _add(op, md, set_name, name, data, **labels):
    return op.curation.AddEntry(
        pb.AddEntryRequest(set=set_name, name=name, labels=labels, media=pb.Media(content=data)),
        metadata=md,
    )


def test_known_image_and_its_copies_are_blocked_unrelated_allowed(harness):
    op, md = _known_set(harness, group="ISIS", outlet="Amaq")
    original = photo(0)
    entry = _add(op, md, "isis-images", "amaq-0001.jpg", encode(original), source="analyst-7")
    assert entry.name == "amaq-0001.jpg"
    assert {s.signal_type for s in entry.signals} >= {"pdq", "md5", "sha256"}

    m, mmd = harness.stubs("matcher")
    exact = m.matcher.Match(match_request(encode(original), client_ref="upload-1"), metadata=mmd)
    assert exact.decision == pb.BLOCK
    assert exact.request_id and exact.client_ref == "upload-1"
    [hit] = exact.matches
    assert (hit.set, hit.entry, hit.distance) == ("isis-images", "amaq-0001.jpg", 0)
    assert dict(hit.labels) == {"group": "ISIS", "outlet": "Amaq", "source": "analyst-7"}

    copy = m.matcher.Match(match_request(reencoded(original)), metadata=mmd)
    assert copy.decision == pb.BLOCK
    assert copy.matches[0].signal_type == "pdq" and copy.matches[0].distance <= 31

    flipped = m.matcher.Match(match_request(encode(mirrored(original))), metadata=mmd)
    assert flipped.decision == pb.BLOCK
    assert flipped.matches[0].query_variant != "original"

    unrelated = m.matcher.Match(match_request(encode(photo(5))), metadata=mmd)
    assert unrelated.decision == pb.ALLOW and not unrelated.matches


def test_precomputed_hash_matches_and_malformed_hash_is_rejected(harness):
    op, md = _known_set(harness)
    entry = _add(op, md, "isis-images", "a", encode(photo(1)))
    pdq = next(s for s in entry.signals if s.signal_type == "pdq" and s.variant == "original")
    m, mmd = harness.stubs("matcher")
    resp = m.matcher.Match(
        pb.MatchRequest(signal=pb.SignalValue(signal_type="pdq", value=pdq.value, quality=90)),
        metadata=mmd,
    )
    assert resp.decision == pb.BLOCK and resp.media_type == pb.HASH
    for bad in (pdq.value[:32], "z" * 64, ""):
        with pytest.raises(grpc.RpcError) as err:
            m.matcher.Match(
                pb.MatchRequest(signal=pb.SignalValue(signal_type="pdq", value=bad)), metadata=mmd
            )
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "pdq" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        m.matcher.Match(
            pb.MatchRequest(signal=pb.SignalValue(signal_type="nope", value="00")), metadata=mmd
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_delisting_stops_matching_at_once(harness):
    op, md = _known_set(harness)
    data = encode(photo(2))
    _add(op, md, "isis-images", "x", data)
    m, mmd = harness.stubs("matcher")
    assert m.matcher.Match(match_request(data), metadata=mmd).decision == pb.BLOCK

    op.curation.UpdateSet(pb.UpdateSetRequest(name="isis-images", enabled=False), metadata=md)
    assert m.matcher.Match(match_request(data), metadata=mmd).decision == pb.ALLOW
    op.curation.UpdateSet(pb.UpdateSetRequest(name="isis-images", enabled=True), metadata=md)
    assert m.matcher.Match(match_request(data), metadata=mmd).decision == pb.BLOCK

    removed = op.curation.RemoveEntry(
        pb.RemoveEntryRequest(set="isis-images", name="x"), metadata=md
    )
    assert removed.HasField("removed_at")
    after = m.matcher.Match(match_request(reencoded(photo(2))), metadata=mmd)
    assert after.decision == pb.ALLOW and not after.matches
    assert m.matcher.Match(match_request(data), metadata=mmd).decision == pb.ALLOW
    with pytest.raises(grpc.RpcError) as err:
        op.curation.RemoveEntry(pb.RemoveEntryRequest(set="isis-images", name="x"), metadata=md)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def _local_features_review_only() -> pb.Threshold:
    local = DEFAULT_THRESHOLDS["local_features"]
    return pb.Threshold(
        signal_type="local_features",
        block_inliers=10_000,
        review_inliers=local.review_inliers,
        block_coverage=local.block_coverage,
        review_coverage=local.review_coverage,
    )


def test_thresholds_per_set_and_low_quality_never_block(harness, operator):
    op, md = operator
    op.curation.CreateSet(
        pb.CreateSetRequest(
            name="strict",
            thresholds=[
                pb.Threshold(signal_type="pdq", block_distance=0, review_distance=60),
                # local features review only: a half-size copy of a small
                # picture verifies well enough to block by their defaults
                _local_features_review_only(),
            ],
        ),
        metadata=md,
    )
    _add(op, md, "strict", "p", encode(photo(3)))
    _add(op, md, "strict", "flat", encode(flat_image(), "PNG"))
    m, mmd = harness.stubs("matcher")
    near = m.matcher.Match(match_request(reencoded(photo(3), scale=0.5, quality=30)), metadata=mmd)
    assert near.decision == pb.REVIEW, near
    assert near.matches[0].distance > 0 and "block threshold" in near.matches[0].reason

    flat = m.matcher.Match(match_request(encode(flat_image(), "BMP")), metadata=mmd)
    assert flat.decision == pb.REVIEW
    assert "quality" in flat.matches[0].reason

    with pytest.raises(grpc.RpcError) as err:
        op.curation.CreateSet(
            pb.CreateSetRequest(
                name="bad",
                thresholds=[pb.Threshold(signal_type="pdq", block_distance=70, review_distance=40)],
            ),
            metadata=md,
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_curation_lists_counts_and_rejects_duplicates(harness):
    op, md = _known_set(harness, group="HTS")
    for i in range(3):
        _add(op, md, "isis-images", f"e{i}", encode(noise_image(i)))
    with pytest.raises(grpc.RpcError) as err:
        _add(op, md, "isis-images", "e0", encode(noise_image(9)))
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    with pytest.raises(grpc.RpcError) as err:
        op.curation.CreateSet(pb.CreateSetRequest(name="isis-images"), metadata=md)
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    with pytest.raises(grpc.RpcError) as err:
        op.curation.CreateSet(pb.CreateSetRequest(name="bad name!"), metadata=md)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as err:
        op.curation.CreateSet(pb.CreateSetRequest(name="x", labels={"bad key": "v"}), metadata=md)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    sets = op.curation.ListSets(pb.ListSetsRequest(include_disabled=True), metadata=md).sets
    assert [(s.name, s.entry_count, dict(s.labels)) for s in sets] == [
        ("isis-images", 3, {"group": "HTS"})
    ]
    page1 = op.curation.ListEntries(
        pb.ListEntriesRequest(set="isis-images", page_size=2), metadata=md
    )
    page2 = op.curation.ListEntries(
        pb.ListEntriesRequest(set="isis-images", page_size=2, page_token=page1.next_page_token),
        metadata=md,
    )
    assert [e.name for e in [*page1.entries, *page2.entries]] == ["e0", "e1", "e2"]
    assert not page2.next_page_token
    got = op.curation.GetEntry(pb.GetEntryRequest(set="isis-images", name="e1"), metadata=md)
    assert got.name == "e1" and got.added_by == "test-operator"
    stats = op.curation.GetStats(pb.GetStatsRequest(), metadata=md)
    assert stats.entries == 3 and stats.sets == 1
    assert {c.signal_type: c.count for c in stats.indexed_signals}["md5"] == 3
    with pytest.raises(grpc.RpcError) as err:
        op.curation.GetEntry(pb.GetEntryRequest(set="nope", name="e1"), metadata=md)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_match_batch_answers_in_order_and_survives_bad_items(harness):
    op, md = _known_set(harness)
    _add(op, md, "isis-images", "known", encode(photo(4)))
    m, mmd = harness.stubs("matcher")
    requests = [
        match_request(encode(photo(4)), client_ref="0"),
        match_request(b"", client_ref="1"),
        match_request(encode(photo(6)), client_ref="2"),
        match_request(b"not an image at all", client_ref="3"),
        match_request(reencoded(photo(4)), client_ref="4"),
    ]
    responses = list(m.matcher.MatchBatch(iter(requests), metadata=mmd))
    assert [r.client_ref for r in responses] == ["0", "1", "2", "3", "4"]
    assert [r.decision for r in responses] == [
        pb.BLOCK,
        pb.DECISION_UNSPECIFIED,
        pb.ALLOW,
        pb.DECISION_UNSPECIFIED,
        pb.BLOCK,
    ]
    assert responses[1].error_code == "INVALID_ARGUMENT" and "empty" in responses[1].error_message
    assert responses[3].error_code == "INVALID_ARGUMENT"


def test_history_records_every_call_and_filters(harness, auditor):
    op, md = _known_set(harness, group="AQ")
    _add(op, md, "isis-images", "k", encode(photo(7)))
    m, mmd = harness.stubs("matcher")
    m.matcher.Match(match_request(encode(photo(7)), client_ref="u1"), metadata=mmd)
    m.matcher.Match(match_request(encode(photo(8))), metadata=mmd)
    with pytest.raises(grpc.RpcError):
        m.matcher.Match(match_request(b"\x89PNG\r\n\x1a\ntruncated"), metadata=mmd)
    a, amd = auditor
    everything = a.audit.QueryHistory(pb.QueryHistoryRequest(), metadata=amd).records
    # the operator's writes come first, in the same chained history
    actions, calls = everything[:2], everything[2:]
    assert [(r.rpc, r.caller) for r in actions] == [
        ("CreateSet", "test-operator"),
        ("AddEntry", "test-operator"),
    ]
    assert json.loads(actions[1].detail_json)["entry"] == "k"
    assert [r.status for r in calls] == ["OK", "OK", "INVALID_ARGUMENT"]
    blocked = calls[0]
    assert blocked.decision == pb.BLOCK and blocked.caller == "test-matcher"
    assert blocked.client_ref == "u1" and blocked.media_type == pb.IMAGE
    assert blocked.matches[0].set == "isis-images" and blocked.matches[0].labels["group"] == "AQ"
    assert any(s.signal_type == "pdq" for s in blocked.query_signals)
    assert calls[2].error_message and calls[2].media_bytes > 0

    def query(**kw):
        return a.audit.QueryHistory(pb.QueryHistoryRequest(**kw), metadata=amd).records

    assert [r.id for r in query(decision=pb.BLOCK)] == [blocked.id]
    # the set's own curation is indexed under it too (issue 16 item 15)
    assert [r.id for r in query(set="isis-images")] == [*(r.id for r in actions), blocked.id]
    assert len(query(caller="test-matcher")) == 3 and not query(caller="someone-else")
    later = calls[1].time
    assert [r.id for r in query(since=later)] == [r.id for r in calls[1:]]
    assert [r.id for r in query(until=later)] == [r.id for r in [*actions, blocked]]
    page = a.audit.QueryHistory(pb.QueryHistoryRequest(page_size=3), metadata=amd)
    rest = a.audit.QueryHistory(
        pb.QueryHistoryRequest(page_size=3, page_token=page.next_page_token), metadata=amd
    )
    assert [r.id for r in [*page.records, *rest.records]] == [r.id for r in everything]
    exported = list(a.audit.ExportHistory(pb.QueryHistoryRequest(), metadata=amd))
    assert [r.request_id for r in exported] == [r.request_id for r in everything]
    with pytest.raises(grpc.RpcError) as err:
        a.audit.QueryHistory(pb.QueryHistoryRequest(set="missing"), metadata=amd)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_health_reflection_and_tokens(harness):
    anonymous, _ = harness.stubs(None)
    channel = anonymous.channel
    health = health_pb2_grpc.HealthStub(channel)
    status = health.Check(health_pb2.HealthCheckRequest(service="hashsvc.v1.Matcher"))
    assert status.status == health_pb2.HealthCheckResponse.SERVING

    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    # reflection needs no token: off unless configured (tests/test_streams.py)
    ask = reflection_pb2.ServerReflectionRequest(list_services="")
    with pytest.raises(grpc.RpcError) as err:
        list(reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(iter([ask])))
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED

    admin, amd = harness.stubs("admin")
    created = admin.admin.CreateToken(
        pb.CreateTokenRequest(role="matcher", name="pipe"), metadata=amd
    )
    assert created.token and created.info.role == "matcher"
    fresh_md = (("authorization", f"Bearer {created.token}"),)
    m, _ = harness.stubs(None)
    assert m.matcher.Match(match_request(encode(photo(1))), metadata=fresh_md).decision == pb.ALLOW
    admin.admin.RevokeToken(pb.RevokeTokenRequest(id=created.info.id), metadata=amd)
    with pytest.raises(grpc.RpcError) as err:
        m.matcher.Match(match_request(encode(photo(1))), metadata=fresh_md)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    listed = admin.admin.ListTokens(pb.ListTokensRequest(), metadata=amd).tokens
    assert any(t.id == created.info.id and t.HasField("revoked_at") for t in listed)
    # the store keeps only token hashes
    assert all(created.token not in t.token_hash for t in harness.core.store.list_tokens())
    with pytest.raises(grpc.RpcError) as err:
        admin.admin.CreateToken(pb.CreateTokenRequest(role="superuser"), metadata=amd)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_health_is_not_serving_until_the_index_is_loaded(tmp_path, monkeypatch):
    import threading

    from hashsvc.api.server import start_server
    from hashsvc.core.config import Config
    from hashsvc.core.core import Core

    loaded = threading.Event()
    original_start = Core.start

    def slow_start(self):
        loaded.wait(10)
        original_start(self)

    monkeypatch.setattr(Core, "start", slow_start)

    running = start_server(
        Config(listen="127.0.0.1:0", db_url=f"sqlite:///{tmp_path}/h.db", workers=1),
        hash_in_process=True,
        block_until_ready=False,
    )
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{running.port}")
        health = health_pb2_grpc.HealthStub(channel)
        request = health_pb2.HealthCheckRequest(service="hashsvc.v1.Matcher")
        assert health.Check(request).status == health_pb2.HealthCheckResponse.NOT_SERVING
        loaded.set()
        for _ in range(100):
            if health.Check(request).status == health_pb2.HealthCheckResponse.SERVING:
                break
            threading.Event().wait(0.05)
        assert health.Check(request).status == health_pb2.HealthCheckResponse.SERVING
        channel.close()
    finally:
        loaded.set()
        running.stop(grace=1)


def test_batch_larger_than_the_limit_is_refused(store_url, make_harness):
    h = make_harness(store_url, max_batch_items=3)
    m, md = h.stubs("matcher")
    requests = [match_request(encode(photo(i))) for i in range(5)]
    with pytest.raises(grpc.RpcError) as err:
        list(m.matcher.MatchBatch(iter(requests), metadata=md))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "max_batch_items" in err.value.details()
    assert m.matcher.Match(match_request(encode(photo(1))), metadata=md).decision == pb.ALLOW


def test_batch_answers_each_item_without_waiting_for_the_next(store_url, make_harness):
    """A pipeline may send one upload, wait for its answer, then send the next."""
    import threading

    h = make_harness(store_url)
    m, md = h.stubs("matcher")
    answered = threading.Event()

    def one_at_a_time():
        yield match_request(encode(photo(1)), client_ref="a")
        assert answered.wait(5), "the first answer never came"
        yield match_request(encode(photo(2)), client_ref="b")

    refs = []
    for response in m.matcher.MatchBatch(one_at_a_time(), metadata=md, timeout=15):
        refs.append(response.client_ref)
        answered.set()
    assert refs == ["a", "b"]


def test_find_entries_by_exact_hash(harness):
    import hashlib

    op, md = _known_set(harness)
    data = encode(photo(6))
    _add(op, md, "isis-images", "six", data)
    sha = hashlib.sha256(data).hexdigest()
    found = op.curation.FindEntries(
        pb.FindEntriesRequest(
            set="isis-images", signal=pb.SignalValue(signal_type="sha256", value=sha)
        ),
        metadata=md,
    )
    assert [e.name for e in found.entries] == ["six"]
    none = op.curation.FindEntries(
        pb.FindEntriesRequest(
            set="isis-images", signal=pb.SignalValue(signal_type="sha256", value="0" * 64)
        ),
        metadata=md,
    )
    assert list(none.entries) == []
    with pytest.raises(grpc.RpcError) as err:
        op.curation.FindEntries(
            pb.FindEntriesRequest(
                set="isis-images", signal=pb.SignalValue(signal_type="pdq", value="0" * 64)
            ),
            metadata=md,
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
