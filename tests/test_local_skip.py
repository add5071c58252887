"""An upload that exact or PDQ evidence blocks in every set asked is not
searched by local features (issue 18's cost: the feature index search and
the verifications); the Match says so in its notes, and every set without
such a block is still searched. Through the service's core on both stores,
and once over gRPC."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from hashdb import Thresholds
from hashsvc.core.core import MatchQuery
from hashsvc.matching.matcher import LOCAL_NOT_SEARCHED
from hashsvc.v1 import hashsvc_pb2 as pb
from hashsvc_testing import local_media
from hashsvc_testing.image_media import encode as encode_image
from hashsvc_testing.vectors import vector
from tests.helpers import match_request

BRIDGE = ("threatexchange", "pdq", "data", "reg-test-input", "dih", "bridge-1-original.jpg")


def _jpeg(img: Image.Image) -> bytes:
    return encode_image(img, "JPEG", quality=85)


@pytest.fixture(scope="module")
def pictures() -> dict[str, bytes]:
    bridge = Image.open(vector(*BRIDGE)).convert("RGB")
    return {
        "bridge": _jpeg(bridge),
        # a crop PDQ cannot see (and a different file): local features only
        "bridge_crop": _jpeg(local_media.crop(bridge, np.random.default_rng(0), 0.2)),
    }


class _CountingSearch:
    """The feature index's own search, counted (it still answers)."""

    def __init__(self, features) -> None:
        self.calls = 0
        self._search = features.search

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self._search(*args, **kwargs)


def _count_searches(core, monkeypatch) -> _CountingSearch:
    counter = _CountingSearch(core.live.features)
    monkeypatch.setattr(core.live.features, "search", counter)
    return counter


def test_blocked_in_every_set_asked_skips_the_local_search_and_says_so(
    store_url, make_core, pictures, monkeypatch
):
    core = make_core(store_url)
    core.curation.create_set("a")
    core.curation.add_entry("a", "bridge", {}, "op", media=pictures["bridge"])
    searches = _count_searches(core, monkeypatch)

    outcome = core.match(MatchQuery(media=pictures["bridge"]), caller="t")
    assert outcome.decision == "block"
    assert [(m.set_name, m.signal_type) for m in outcome.matches] == [("a", "md5")]
    assert LOCAL_NOT_SEARCHED in outcome.notes
    assert searches.calls == 0
    # computed all the same: the history keeps them for retro-hunts
    assert any(s.kind == "local_features" for s in outcome.query_signals)

    # an upload nothing blocks is searched as before, without the note
    unrelated = core.match(MatchQuery(media=pictures["bridge_crop"]), caller="t")
    assert searches.calls == 1
    assert LOCAL_NOT_SEARCHED not in unrelated.notes


def test_a_set_without_a_block_is_still_searched(store_url, make_core, pictures, monkeypatch):
    """Set "a" blocks the upload by its MD5; set "b" knows only a crop of it,
    which local features alone find: both are listed, and asked alone "a"
    is not searched."""
    core = make_core(store_url)
    core.curation.create_set("a")
    core.curation.add_entry("a", "bridge", {}, "op", media=pictures["bridge"])
    core.curation.create_set("b", thresholds={"pdq": Thresholds(0, 0)})
    core.curation.add_entry("b", "crop", {}, "op", media=pictures["bridge_crop"])
    searches = _count_searches(core, monkeypatch)

    both = core.match(MatchQuery(media=pictures["bridge"]), caller="t")
    assert both.decision == "block"
    assert {(m.set_name, m.signal_type) for m in both.matches} == {
        ("a", "md5"),
        ("b", "local_features"),
    }
    assert LOCAL_NOT_SEARCHED not in both.notes
    assert searches.calls == 1

    only_a = core.match(MatchQuery(media=pictures["bridge"], sets=("a",)), caller="t")
    assert [m.set_name for m in only_a.matches] == ["a"]
    assert LOCAL_NOT_SEARCHED in only_a.notes
    assert searches.calls == 1

    # once "b" blocks it too (its own copy of the file), neither is searched
    core.curation.add_entry("b", "bridge", {}, "op", media=pictures["bridge"])
    blocked = core.match(MatchQuery(media=pictures["bridge"]), caller="t")
    assert {m.set_name for m in blocked.matches} == {"a", "b"}
    assert LOCAL_NOT_SEARCHED in blocked.notes
    assert searches.calls == 1


def test_an_allow_list_set_asked_means_everything_is_searched(
    store_url, make_core, pictures, monkeypatch
):
    """An allow entry found by local features may suppress a match
    (hashsvc/matching/feedback.py): with an allow-list set asked nothing is
    left unsearched, even when every other set blocks."""
    core = make_core(store_url)
    core.curation.create_set("a")
    core.curation.add_entry("a", "bridge", {}, "op", media=pictures["bridge"])
    core.curation.create_set("ok", allow_list=True)
    searches = _count_searches(core, monkeypatch)
    outcome = core.match(MatchQuery(media=pictures["bridge"]), caller="t")
    assert outcome.decision == "block"
    assert LOCAL_NOT_SEARCHED not in outcome.notes
    assert searches.calls == 1


def test_the_note_reaches_a_grpc_client_and_the_history(
    harness, operator, matcher, auditor, pictures
):
    stub, md = operator
    stub.curation.CreateSet(pb.CreateSetRequest(name="a"), metadata=md)
    stub.curation.AddEntry(
        pb.AddEntryRequest(set="a", name="bridge", media=pb.Media(content=pictures["bridge"])),
        metadata=md,
    )
    m_stub, m_md = matcher
    resp = m_stub.matcher.Match(match_request(pictures["bridge"]), metadata=m_md)
    assert resp.decision == pb.BLOCK
    assert LOCAL_NOT_SEARCHED in resp.notes
    assert any(s.signal_type == "local_features" for s in resp.query_signals)
    a_stub, a_md = auditor
    record = a_stub.audit.QueryHistory(pb.QueryHistoryRequest(), metadata=a_md).records[-1]
    assert record.request_id == resp.request_id
    assert LOCAL_NOT_SEARCHED in record.detail_json
