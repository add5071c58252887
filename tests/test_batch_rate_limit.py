"""MatchBatch counts every item against the token's rate limit (issue 16 item
10: 1,500 matches in 1.9 s passed a limit of 5/s, the batch counted as one).
A call or item refused by the limit is a Match call like any other: recorded
in the history (items 8 and 15), its client_ref bounded."""

from __future__ import annotations

import time

import grpc
import pytest

from hashdb import HistoryFilter
from hashsvc.core import auth
from hashsvc.v1 import hashsvc_pb2 as pb
from hashsvc_testing.image_media import encode, photo
from tests.helpers import start_harness


def test_batch_items_count_against_the_tokens_rate_limit(store_url, make_harness):
    h = make_harness(store_url, rate_limit_per_second=5, rate_limit_burst=5)
    op, omd = h.stubs("operator")
    op.curation.CreateSet(pb.CreateSetRequest(name="known"), metadata=omd)
    entry = op.curation.AddEntry(
        pb.AddEntryRequest(set="known", name="a", media=pb.Media(content=encode(photo(1)))),
        metadata=omd,
    )
    sha = next(s.value for s in entry.signals if s.signal_type == "sha256")
    known = pb.SignalValue(signal_type="sha256", value=sha)
    requests = [pb.MatchRequest(signal=known, client_ref=f"item-{i}") for i in range(40)]

    m, md = h.stubs("matcher")
    started = time.monotonic()
    responses = list(m.matcher.MatchBatch(iter(requests), metadata=md, timeout=30))
    elapsed = time.monotonic() - started

    # every item answered, in order; those past the limit with their own error
    assert [r.client_ref for r in responses] == [r.client_ref for r in requests]
    decided = [r for r in responses if not r.error_code]
    refused = [r for r in responses if r.error_code]
    assert all(r.decision == pb.BLOCK for r in decided)
    assert 1 <= len(decided) <= 5 + 5 * elapsed + 1, (len(decided), elapsed)
    assert len(refused) >= 40 - (5 + 5 * elapsed + 1)
    for r in refused:
        assert r.error_code == "RESOURCE_EXHAUSTED"
        assert "rate limit" in r.error_message
        assert r.decision == pb.DECISION_UNSPECIFIED and not r.matches

    # a batch that waits between items stays within the limit: each answered
    def paced():
        for i in range(3):
            time.sleep(0.3)  # 5/s allows one every 0.2 s
            yield pb.MatchRequest(signal=known, client_ref=f"paced-{i}")

    time.sleep(1.2)  # the bucket refills
    paced_answers = list(m.matcher.MatchBatch(paced(), metadata=md, timeout=30))
    assert [r.decision for r in paced_answers] == [pb.BLOCK] * 3

    # the bucket is the token's: another pipeline is not slowed down
    other, admin_md = h.stubs("admin")
    assert other.matcher.Match(pb.MatchRequest(signal=known), metadata=admin_md).decision == (
        pb.BLOCK
    )


def test_unary_matches_and_batch_items_share_one_bucket(tmp_path, make_harness):
    h = make_harness(f"sqlite:///{tmp_path}/rate.db", rate_limit_per_second=1, rate_limit_burst=3)
    m, md = h.stubs("matcher")
    request = pb.MatchRequest(signal=pb.SignalValue(signal_type="sha256", value="0" * 64))
    m.matcher.Match(request, metadata=md)  # one of the 3
    answers = list(m.matcher.MatchBatch(iter([request] * 4), metadata=md, timeout=30))
    assert [bool(a.error_code) for a in answers] == [False, False, True, True]
    with pytest.raises(grpc.RpcError) as err:
        m.matcher.Match(request, metadata=md)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def _history(h) -> list:
    return h.core.store.query_history(HistoryFilter(), 0, 1000)


def _token_id(h, role: str) -> int:
    return h.core.store.find_token(auth.hash_token(h.tokens[role])).id


def test_refused_batch_items_are_recorded_and_echo_no_oversized_ref(store_url):
    h = start_harness(store_url, rate_limit_per_second=0.01, rate_limit_burst=2)
    try:
        m, md = h.stubs("matcher")
        hash_value = pb.SignalValue(signal_type="sha256", value="0" * 64)
        huge = "r" * (5 * 1024 * 1024)  # past the client's 4 MiB max message if echoed
        requests = [
            pb.MatchRequest(signal=hash_value, client_ref="first"),
            pb.MatchRequest(signal=hash_value, client_ref=huge),
            pb.MatchRequest(signal=hash_value, client_ref="second"),
            pb.MatchRequest(signal=hash_value, client_ref="third"),
            pb.MatchRequest(signal=hash_value, client_ref=huge),
        ]
        answers = list(m.matcher.MatchBatch(iter(requests), metadata=md, timeout=30))

        # the oversized refs are checked before the rate limit (they cost no
        # rate) and not sent back; the stream goes on past them
        assert [(a.client_ref, a.error_code) for a in answers] == [
            ("first", ""),
            ("", "INVALID_ARGUMENT"),
            ("second", ""),
            ("third", "RESOURCE_EXHAUSTED"),
            ("", "INVALID_ARGUMENT"),
        ]
        token_id = _token_id(h, "matcher")
        got = [(r.rpc, r.client_ref[:8], r.status, r.caller_token_id) for r in _history(h)]
        assert sorted(got) == sorted(
            [
                ("MatchBatch", "first", "OK", token_id),
                ("MatchBatch", "r" * 8, "INVALID_ARGUMENT", token_id),
                ("MatchBatch", "second", "OK", token_id),
                ("MatchBatch", "third", "RESOURCE_EXHAUSTED", token_id),
                ("MatchBatch", "r" * 8, "INVALID_ARGUMENT", token_id),
            ]
        )
        # the history keeps no more of a ref than its limit
        assert all(len(r.client_ref) <= 1000 for r in _history(h))
    finally:
        h.close()


def test_unary_match_calls_refused_by_the_rate_limit_are_recorded(store_url):
    h = start_harness(store_url, rate_limit_per_second=0.01, rate_limit_burst=1)
    try:
        m, md = h.stubs("matcher")
        request = pb.MatchRequest(
            signal=pb.SignalValue(signal_type="sha256", value="0" * 64), client_ref="x" * 5000
        )
        assert m.matcher.Match(pb.MatchRequest(signal=request.signal), metadata=md).decision
        with pytest.raises(grpc.RpcError) as err:
            m.matcher.Match(request, metadata=md)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        upload = [pb.MatchUploadRequest(header=pb.MatchRequest(client_ref="up"))]
        upload.append(pb.MatchUploadRequest(chunk=encode(photo(1))))
        with pytest.raises(grpc.RpcError) as err:
            m.matcher.MatchUpload(iter(upload), metadata=md, timeout=30)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

        # other RPCs refused by the limit are not Match calls: not recorded
        op, omd = h.stubs("operator")
        op.curation.ListSets(pb.ListSetsRequest(), metadata=omd)
        with pytest.raises(grpc.RpcError) as err:
            op.curation.ListSets(pb.ListSetsRequest(), metadata=omd)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

        token_id = _token_id(h, "matcher")
        got = [(r.rpc, r.caller, r.client_ref, r.status, r.caller_token_id) for r in _history(h)]
        assert sorted(got) == sorted(
            [
                ("Match", "test-matcher", "", "OK", token_id),
                ("Match", "test-matcher", "", "RESOURCE_EXHAUSTED", token_id),
                ("MatchUpload", "test-matcher", "", "RESOURCE_EXHAUSTED", token_id),
            ]
        )
    finally:
        h.close()
