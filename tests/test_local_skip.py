"""An upload that exact or PDQ evidence blocks in every set asked is not
searched by local features (issue 18's cost: the feature index search and
the verifications); the Match says so in its notes, and every set without
such a block is still searched. Through the service's core on both stores,
and once over gRPC."""

from __future__ import annotations

import time

import numpy as np
import pytest
from PIL import Image

from hashdb import Thresholds
from hashsvc.core.core import MatchQuery
from hashsvc.core.two_step import CallerBlocks, RecentBlocks
from hashsvc.matching.matcher import LOCAL_NOT_COMPUTED, LOCAL_NOT_SEARCHED
from hashsvc.media.limits import ImageLimits
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
        # the same picture in another file: PDQ blocks it, the exact hashes do not
        "bridge_again": encode_image(bridge, "JPEG", quality=70),
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

    outcome = core.match(MatchQuery(media=pictures["bridge_again"]), caller="t")
    assert outcome.decision == "block"
    assert [(m.set_name, m.signal_type) for m in outcome.matches] == [("a", "pdq")]
    assert LOCAL_NOT_SEARCHED in outcome.notes
    assert searches.calls == 0
    # computed all the same: the history keeps them for retro-hunts
    assert any(s.kind == "local_features" for s in outcome.query_signals)

    # an upload nothing blocks is searched as before, without the note
    unrelated = core.match(MatchQuery(media=pictures["bridge_crop"]), caller="t")
    assert searches.calls == 1
    assert LOCAL_NOT_SEARCHED not in unrelated.notes


def test_a_set_without_a_block_is_still_searched(store_url, make_core, pictures, monkeypatch):
    """Set "a" blocks the upload by PDQ; set "b" knows only a crop of it,
    which local features alone find: both are listed, and asked alone "a"
    is not searched."""
    core = make_core(store_url)
    core.curation.create_set("a")
    core.curation.add_entry("a", "bridge", {}, "op", media=pictures["bridge"])
    core.curation.create_set("b", thresholds={"pdq": Thresholds(0, 0)})
    core.curation.add_entry("b", "crop", {}, "op", media=pictures["bridge_crop"])
    searches = _count_searches(core, monkeypatch)

    both = core.match(MatchQuery(media=pictures["bridge_again"]), caller="t")
    assert both.decision == "block"
    assert {(m.set_name, m.signal_type) for m in both.matches} == {
        ("a", "pdq"),
        ("b", "local_features"),
    }
    assert LOCAL_NOT_SEARCHED not in both.notes
    assert searches.calls == 1

    only_a = core.match(MatchQuery(media=pictures["bridge_again"], sets=("a",)), caller="t")
    assert [m.set_name for m in only_a.matches] == ["a"]
    assert LOCAL_NOT_SEARCHED in only_a.notes
    assert searches.calls == 1

    # once "b" blocks it too (its own copy of the file: "a" still needs the
    # upload hashed), neither is searched
    core.curation.add_entry("b", "bridge", {}, "op", media=pictures["bridge_again"])
    blocked = core.match(MatchQuery(media=pictures["bridge_again"]), caller="t")
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
    resp = m_stub.matcher.Match(match_request(pictures["bridge_again"]), metadata=m_md)
    assert resp.decision == pb.BLOCK
    assert LOCAL_NOT_SEARCHED in resp.notes
    assert any(s.signal_type == "local_features" for s in resp.query_signals)
    a_stub, a_md = auditor
    record = a_stub.audit.QueryHistory(pb.QueryHistoryRequest(), metadata=a_md).records[-1]
    assert record.request_id == resp.request_id
    assert LOCAL_NOT_SEARCHED in record.detail_json


# -- two steps: an upload's local features after its views (local_after_views_share)


def test_recent_blocks_turn_two_steps_on_and_off():
    recent = RecentBlocks(window=4, share=0.5)
    assert not recent.two_steps()  # nothing seen yet
    recent.observe(True)
    assert not recent.two_steps()  # 1 of the window's 4: no flood yet
    recent.observe(True)
    assert recent.two_steps()  # 2 of 4
    recent.observe(False)
    recent.observe(False)
    assert recent.two_steps()
    recent.observe(False)  # the first slides out: 1 of 4
    assert not recent.two_steps()
    recent.observe(True)  # and the second: still 1 of 4
    assert not recent.two_steps()
    recent.observe(True)
    assert recent.two_steps()
    assert RecentBlocks(4, 0.0).two_steps()  # always
    never = RecentBlocks(4, 1.5)
    for _ in range(8):
        never.observe(True)
    assert not never.two_steps()


def test_each_caller_has_its_own_window_and_their_number_is_capped():
    callers = CallerBlocks(window=2, share=0.5, callers=3)
    callers.observe("flooder", True)
    assert callers.flooding("flooder")
    assert not callers.flooding("other")  # another caller's flood is not its own
    callers.observe("other", False)
    assert not callers.flooding("other")
    for name in ("c", "d"):  # two more callers: the least recently seen is dropped
        callers.observe(name, False)
    assert len(callers) == 3
    assert not callers.flooding("flooder")  # dropped: starts again in one step
    assert CallerBlocks(2, 0.0, 1).flooding("anyone")  # share 0: always


@pytest.mark.parametrize(
    "bad", [{"local_after_views_share": -0.1}, {"local_after_views_share": float("nan")},
            {"local_after_views_window": 0}, {"local_after_views_callers": 0}],
)  # fmt: skip
def test_two_step_settings_are_checked(bad):
    with pytest.raises(ValueError, match="local_after_views"):
        ImageLimits(**bad)


def test_two_steps_block_on_views_alone_and_find_what_only_features_find(
    store_url, make_core, pictures, tmp_path
):
    """Always two steps: the blocked upload's local features are not even
    computed (and the Match says so); the crop, which only local features
    find, is decided as in one step."""
    one = make_core(f"sqlite:///{tmp_path}/one_step.db")  # as compared with
    two = make_core(store_url, image=ImageLimits(local_after_views_share=0))
    for core in (one, two):
        core.curation.create_set("a", thresholds={"pdq": Thresholds(31, 56)})
        core.curation.add_entry("a", "bridge", {}, "op", media=pictures["bridge"])
        core.curation.create_set("b", thresholds={"pdq": Thresholds(0, 0)})
        core.curation.add_entry("b", "crop", {}, "op", media=pictures["bridge_crop"])

    blocked = two.match(MatchQuery(media=pictures["bridge_again"], sets=("a",)), caller="t")
    assert blocked.decision == "block"
    assert LOCAL_NOT_COMPUTED in blocked.notes
    assert not any(s.kind == "local_features" for s in blocked.query_signals)

    for query in (
        MatchQuery(media=pictures["bridge_again"]),  # "b" does not block it: features needed
        MatchQuery(media=pictures["bridge_crop"]),
        MatchQuery(media=pictures["bridge_crop"], sets=("a",)),
    ):
        got, expected = two.match(query, caller="t"), one.match(query, caller="t")
        assert got.decision == expected.decision
        assert [(m.set_name, m.signal_type, m.decision) for m in got.matches] == [
            (m.set_name, m.signal_type, m.decision) for m in expected.matches
        ]
        assert [s for s in got.query_signals] == [s for s in expected.query_signals]
        assert LOCAL_NOT_COMPUTED not in got.notes


def test_a_flood_of_known_pictures_does_not_hide_a_crop(store_url, make_core, pictures):
    """An uploader who floods known pictures turns two steps on (the default
    share); a crop that only local features find is still found."""
    core = make_core(store_url, image=ImageLimits(local_after_views_window=4))
    core.curation.create_set("s", thresholds={"pdq": Thresholds(31, 56)})
    core.curation.add_entry("s", "bridge", {}, "op", media=pictures["bridge"])
    # the same picture where PDQ decides nothing: its crop is found by local features only
    core.curation.create_set("pdq_blind", thresholds={"pdq": Thresholds(0, 0)})
    core.curation.add_entry("pdq_blind", "bridge", {}, "op", media=pictures["bridge"])
    assert not core.recent_blocks.flooding("t")
    for _ in range(4):
        flood = core.match(MatchQuery(media=pictures["bridge_again"], sets=("s",)), caller="t")
        assert flood.decision == "block"
    assert core.recent_blocks.flooding("t")
    assert LOCAL_NOT_COMPUTED in flood.notes
    crop = core.match(MatchQuery(media=pictures["bridge_crop"], sets=("pdq_blind",)), caller="t")
    assert crop.decision in ("block", "review")
    assert crop.matches[0].signal_type == "local_features"
    assert LOCAL_NOT_COMPUTED not in crop.notes


def test_two_steps_through_hashing_workers(make_harness, tmp_path, pictures):
    """The worker processes hash each step (a job each) over gRPC."""
    harness = make_harness(
        f"sqlite:///{tmp_path}/w.db",
        hash_in_process=False,
        workers=1,
        image=ImageLimits(local_after_views_share=0),
    )
    stub, md = harness.stubs("operator")
    stub.curation.CreateSet(pb.CreateSetRequest(name="a"), metadata=md)
    stub.curation.AddEntry(
        pb.AddEntryRequest(set="a", name="bridge", media=pb.Media(content=pictures["bridge"])),
        metadata=md,
    )
    m_stub, m_md = harness.stubs("matcher")
    blocked = m_stub.matcher.Match(match_request(pictures["bridge_again"]), metadata=m_md)
    assert blocked.decision == pb.BLOCK and LOCAL_NOT_COMPUTED in blocked.notes
    other = m_stub.matcher.Match(match_request(pictures["bridge_crop"]), metadata=m_md)
    assert LOCAL_NOT_COMPUTED not in other.notes
    assert any(s.signal_type == "local_features" for s in other.query_signals)


def test_a_retro_hunt_searches_local_features_even_when_pdq_blocks(tmp_path, make_core, pictures):
    """A retro-hunt asks its sets without their allow lists, which it applies
    to each hit afterwards: the skip made a new entry's PDQ hit stop the
    local-feature search, so when that PDQ hit was allow-listed, the crop
    found only by local features was lost too (review: 0 hits; a live Match
    of the same upload blocks by the crop)."""
    bridge = Image.open(vector(*BRIDGE)).convert("RGB")
    core = make_core(
        f"sqlite:///{tmp_path}/retro.db", retro_poll_seconds=0.2, history_keep_local_features=True
    )
    core.curation.create_set("ok", allow_list=True)
    core.curation.add_entry("ok", "meme", {}, "op", media=encode_image(bridge, "PNG"))
    core.curation.create_set("s")
    core.retro.set_window("s", 0)  # no run at each entry: one run by hand holds both
    assert core.match(MatchQuery(media=pictures["bridge"]), caller="t").decision == "allow"
    core.curation.add_entry("s", "e1", {}, "op", media=encode_image(bridge, "JPEG", quality=60))
    core.curation.add_entry("s", "crop", {}, "op", media=pictures["bridge_crop"])
    live = core.match(MatchQuery(media=pictures["bridge"]), caller="t")
    assert live.decision == "block" and any(m.entry_name == "crop" for m in live.matches)

    run = core.retro.start_run("op", "s", since_seconds=3600)
    deadline = time.monotonic() + 60
    while core.store.get_retro_run(run.id).state not in ("done", "failed"):
        assert time.monotonic() < deadline, core.store.get_retro_run(run.id)
        time.sleep(0.1)
    assert core.store.get_retro_run(run.id).state == "done"
    hits = core.store.retro_matches_of(run.id)
    assert len(hits) == 1, hits  # the crop's, by local features; e1's is allow-listed


def test_one_callers_flood_turns_two_steps_on_for_that_caller_only(
    make_harness, tmp_path, pictures
):
    """Review: one caller flooding known copies turned two steps on for every
    caller. Over gRPC with two tokens: the flooder's blocked uploads skip
    their local features (not computed), the other caller's are still hashed
    in one step (computed, not searched)."""
    harness = make_harness(
        f"sqlite:///{tmp_path}/callers.db", image=ImageLimits(local_after_views_window=4)
    )
    stub, md = harness.stubs("operator")
    stub.curation.CreateSet(pb.CreateSetRequest(name="a"), metadata=md)
    stub.curation.AddEntry(
        pb.AddEntryRequest(set="a", name="bridge", media=pb.Media(content=pictures["bridge"])),
        metadata=md,
    )
    flooder, flooder_md = harness.stubs("matcher")
    other, other_md = harness.stubs("admin")
    for _ in range(4):
        first = flooder.matcher.Match(match_request(pictures["bridge_again"]), metadata=flooder_md)
        assert first.decision == pb.BLOCK
    flooded = flooder.matcher.Match(match_request(pictures["bridge_again"]), metadata=flooder_md)
    assert LOCAL_NOT_COMPUTED in flooded.notes
    assert not any(s.signal_type == "local_features" for s in flooded.query_signals)

    others = other.matcher.Match(match_request(pictures["bridge_again"]), metadata=other_md)
    assert others.decision == pb.BLOCK
    assert LOCAL_NOT_COMPUTED not in others.notes
    assert LOCAL_NOT_SEARCHED in others.notes
    assert any(s.signal_type == "local_features" for s in others.query_signals)


def test_the_second_step_takes_the_first_steps_picture_instead_of_decoding_again(
    store_url, make_core, pictures, monkeypatch
):
    """Two steps decoded an upload twice (~1.4 ms of a 1024x768 JPEG): the
    first step's decoded picture now goes with the second job. Counted
    through the service's core: one decode an upload, and the same signals
    as the upload decoded again."""
    from hashsvc.media import image

    decodes = []
    decode_query = image.decode_query

    def counted(data, limits, at_least=0):
        decodes.append(at_least)
        return decode_query(data, limits, at_least)

    monkeypatch.setattr(image, "decode_query", counted)
    core = make_core(store_url, image=ImageLimits(local_after_views_share=0))
    core.curation.create_set("a", thresholds={"pdq": Thresholds(0, 0)})
    core.curation.add_entry("a", "bridge", {}, "op", media=pictures["bridge"])
    outcome = core.match(MatchQuery(media=pictures["bridge_crop"]), caller="t")
    assert outcome.decision in ("block", "review")
    assert outcome.matches[0].signal_type == "local_features"
    assert decodes.count(image.QUERY_DECODE_SIDE) == 1


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_a_handed_picture_gives_the_signals_of_a_second_decode(pictures, fmt, monkeypatch):
    from hashsvc.media import dispatch
    from hashsvc.media.limits import STAGE_LOCAL, STAGE_VIEWS, MediaLimits

    data = encode_image(Image.open(vector(*BRIDGE)).convert("RGB"), fmt)
    limits = MediaLimits()
    first = dispatch.hash_media(data, limits, True, stage=STAGE_VIEWS)
    assert first.picture is not None and not first.complete
    handed = dispatch.hash_media(data, limits, True, stage=STAGE_LOCAL, picture=first.picture)
    again = dispatch.hash_media(data, limits, True, stage=STAGE_LOCAL)
    assert handed.signals == again.signals
    assert any(s.kind == "local_features" for s in handed.signals)
    # a picture past the cap stays in the worker: the second step decodes again
    monkeypatch.setattr(dispatch, "HANDOVER_MAX_BYTES", first.picture.nbytes - 1)
    assert dispatch.hash_media(data, limits, True, stage=STAGE_VIEWS).picture is None
    with pytest.raises(ValueError, match="second step"):
        dispatch.hash_media(data, limits, True, stage=STAGE_VIEWS, picture=first.picture)
