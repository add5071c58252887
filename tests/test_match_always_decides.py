"""Every Match answered OK carries a decision in the history; records with no
decision and status OK are checkpoints and operators' writes, no pictures. A
bench run with local features counted 41 "unrelated pictures with an empty
decision and status OK": its checkpoints, one per history_checkpoint_records
(100) of its 4,161 queries. Undecodable media is refused with a clear status,
and recorded with it. Through the running service, both stores."""

from __future__ import annotations

import time

import grpc
import pytest

from hashdb import HistoryFilter
from hashsvc.v1 import hashsvc_pb2 as pb
from hashsvc_testing import image_media as im

DECISIONS = {"allow", "review", "block"}


def test_ok_matches_have_decisions_and_checkpoints_are_named(store_url, make_harness):
    h = make_harness(store_url, history_checkpoint_records=3, change_poll_seconds=0.05)
    op, md = h.stubs("operator")
    op.curation.CreateSet(pb.CreateSetRequest(name="known"), metadata=md)
    known = im.encode(im.roundel(im.photo(7), 76))
    op.curation.AddEntry(
        pb.AddEntryRequest(set="known", name="r7", media=pb.Media(content=known)), metadata=md
    )
    m, md = h.stubs("matcher")
    uploads = [known, im.encode(im.roundel(im.photo(6), 76)), im.encode(im.flat_image())]
    for data in uploads * 3:
        resp = m.matcher.Match(pb.MatchRequest(media=pb.Media(content=data)), metadata=md)
        assert resp.decision in (pb.ALLOW, pb.REVIEW, pb.BLOCK)
    for bad in (b"\xff\xd8\xff\xe0 not a jpeg", b"GIF89a" + b"\x00" * 40):
        with pytest.raises(grpc.RpcError) as err:
            m.matcher.Match(pb.MatchRequest(media=pb.Media(content=bad)), metadata=md)
        assert err.value.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNIMPLEMENTED)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not _checkpoints(h):
        time.sleep(0.05)
    records = h.core.store.query_history(HistoryFilter(), 0, 1000)
    matches = [r for r in records if r.rpc == "Match"]
    assert len(matches) == 11
    assert all(r.decision in DECISIONS for r in matches if r.status == "OK")
    failed = [r for r in matches if r.status != "OK"]
    assert len(failed) == 2 and all(r.decision == "" and r.error_message for r in failed)
    undecided_ok = [r for r in records if r.status == "OK" and not r.decision]
    # operators' writes and checkpoints decide nothing; no Match is among them
    assert {r.rpc for r in undecided_ok if r.rpc.startswith("Match")} == set()
    assert _checkpoints(h)


def _checkpoints(h) -> list:
    records = h.core.store.query_history(HistoryFilter(), 0, 1000)
    return [r for r in records if r.rpc == "HistoryCheckpoint"]
