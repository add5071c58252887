"""An upload's exact hashes (MD5, SHA-256 of its bytes) are looked up before
anything is decoded or hashed: during a caller's flood of exact copies of
known media, an exact copy that blocks in every set asked is answered from
them alone (issue 18's cost: a flood of one file costs two hashes of its
bytes). The answer says so, is recorded like any Match, fails closed, and
allow lists still apply. Through the service's core on both stores, and over
gRPC. FLOODING (share 0) treats every upload as in a flood."""

from __future__ import annotations

import pytest
from PIL import Image

from hashdb import HistoryFilter
from hashsvc.core.core import MatchQuery
from hashsvc.core.two_step import NOT_HASHED
from hashsvc.media.limits import ImageLimits
from hashsvc.v1 import hashsvc_pb2 as pb
from hashsvc_testing import pdf_media, video_media
from hashsvc_testing.image_media import encode as encode_image
from hashsvc_testing.vectors import vector
from tests.helpers import match_request

FLOODING = ImageLimits(local_after_views_share=0)
BRIDGE = ("threatexchange", "pdq", "data", "reg-test-input", "dih", "bridge-1-original.jpg")


@pytest.fixture(scope="module")
def bridge() -> Image.Image:
    return Image.open(vector(*BRIDGE)).convert("RGB")


class _CountingHashing:
    """The core's hashing jobs, counted (it still hashes): start_query, which
    hash_query (a second step after the first) calls too."""

    def __init__(self, hashing) -> None:
        self.jobs = 0
        self._start_query = hashing.start_query

    def __call__(self, *args, **kwargs):
        self.jobs += 1
        return self._start_query(*args, **kwargs)


def _count_hashing(core, monkeypatch) -> _CountingHashing:
    counter = _CountingHashing(core.hashing)
    monkeypatch.setattr(core.hashing, "start_query", counter)
    return counter


def test_an_exact_copy_blocked_everywhere_is_answered_without_hashing(
    store_url, make_core, bridge, monkeypatch
):
    known = encode_image(bridge, "JPEG", quality=85)
    core = make_core(store_url, image=FLOODING)
    core.curation.create_set("a")
    core.curation.add_entry("a", "bridge", {"group": "x"}, "op", media=known)
    hashing = _count_hashing(core, monkeypatch)

    outcome = core.match(MatchQuery(media=known, client_ref="r1"), caller="t")
    assert outcome.decision == "block"
    assert outcome.media_type == "image"
    assert [(m.set_name, m.entry_name, m.signal_type) for m in outcome.matches] == [
        ("a", "bridge", "md5")
    ]
    assert outcome.notes == (NOT_HASHED,)
    assert [s.kind for s in outcome.query_signals] == ["md5", "sha256"]
    assert hashing.jobs == 0
    # recorded like any Match
    record = core.store.query_history(HistoryFilter(), 0, 1000)[-1]
    assert (record.request_id, record.decision, record.status) == (
        outcome.request_id,
        "block",
        "OK",
    )
    assert record.media_type == "image" and record.client_ref == "r1"
    assert record.detail == {"notes": [NOT_HASHED]}

    # another file of the same picture is hashed as before (PDQ blocks it)
    again = core.match(MatchQuery(media=encode_image(bridge, "JPEG", quality=70)), caller="t")
    assert again.decision == "block" and NOT_HASHED not in again.notes
    assert hashing.jobs == 1
    assert again.matches[0].signal_type == "pdq"
    assert [s.kind for s in again.query_signals[:2]] == ["md5", "sha256"]


def test_a_set_that_does_not_block_the_bytes_means_hashing(
    store_url, make_core, bridge, monkeypatch
):
    """Set "b" knows the picture in another file, so the exact hashes block in
    "a" only: the upload is hashed and both sets' matches are listed."""
    known = encode_image(bridge, "JPEG", quality=85)
    core = make_core(store_url, image=FLOODING)
    core.curation.create_set("a")
    core.curation.add_entry("a", "bridge", {}, "op", media=known)
    core.curation.create_set("b")
    core.curation.add_entry("b", "bridge", {}, "op", media=encode_image(bridge, "PNG"))
    hashing = _count_hashing(core, monkeypatch)

    outcome = core.match(MatchQuery(media=known), caller="t")
    assert hashing.jobs == 1
    assert NOT_HASHED not in outcome.notes
    assert {(m.set_name, m.signal_type) for m in outcome.matches} == {
        ("a", "md5"),
        ("b", "pdq"),
    }
    # asked of "a" alone, the bytes decide
    only_a = core.match(MatchQuery(media=known, sets=("a",)), caller="t")
    assert only_a.notes == (NOT_HASHED,) and hashing.jobs == 1


def test_an_allow_list_asked_means_hashing_and_it_still_applies(
    store_url, make_core, bridge, monkeypatch
):
    """An allow entry (here the picture in another file, found by PDQ) may
    suppress an exact block: with an allow-list set asked the upload is hashed
    and the allow list applies as before."""
    known = encode_image(bridge, "JPEG", quality=85)
    core = make_core(store_url, image=FLOODING)
    core.curation.create_set("a")
    core.curation.add_entry("a", "bridge", {}, "op", media=known)
    core.curation.create_set("ok", allow_list=True)
    core.curation.add_entry("ok", "meme", {}, "op", media=known)
    hashing = _count_hashing(core, monkeypatch)
    outcome = core.match(MatchQuery(media=known), caller="t")
    assert hashing.jobs == 2  # hashed, in both steps (FLOODING also means two steps)
    assert NOT_HASHED not in outcome.notes
    assert outcome.decision == "allow"
    assert any("allow-listed" in m.reason for m in outcome.matches)


def test_a_store_that_cannot_answer_the_lookup_gives_an_error_not_allow(
    store_url, make_core, bridge, monkeypatch
):
    known = encode_image(bridge, "JPEG", quality=85)
    core = make_core(store_url, image=FLOODING)
    _known_bridge(core, known)
    _fails_recorded_when_the_lookup_fails(core, known, monkeypatch)


def test_media_checks_come_first(store_url, make_core):
    """The errors an upload got before (empty, a format nothing reads) are the
    same: the checks hashing made first are made before the lookup."""
    from hashsvc.base.errors import InvalidArgument, UnsupportedMedia

    core = make_core(store_url, image=FLOODING)
    core.curation.create_set("a")
    with pytest.raises(InvalidArgument, match="empty"):
        core.match(MatchQuery(media=b""), caller="t")
    with pytest.raises(UnsupportedMedia):
        core.match(MatchQuery(media=b"plain text, no known format"), caller="t")


def test_exact_copies_of_a_pdf_and_a_video_keep_their_media_type(
    store_url, make_core, tmp_path, monkeypatch
):
    """A PDF is named by its first bytes; a video container (which may hold
    sound alone) by the known entry that holds the same bytes."""
    pdf = pdf_media.typeset(pdf_media.publication(0))
    movie = video_media.slideshow(tmp_path / "v.mp4", [0, 1], seconds_each=1.0).read_bytes()
    core = make_core(store_url, image=FLOODING)
    core.curation.create_set("a")
    core.curation.add_entry("a", "doc", {}, "op", media=pdf)
    core.curation.add_entry("a", "movie", {}, "op", media=movie)
    hashing = _count_hashing(core, monkeypatch)
    for media, kind in ((pdf, "pdf"), (movie, "video")):
        outcome = core.match(MatchQuery(media=media), caller="t")
        assert (outcome.decision, outcome.media_type, outcome.notes) == (
            "block",
            kind,
            (NOT_HASHED,),
        )
    assert hashing.jobs == 0


def test_over_grpc_with_hashing_workers(make_harness, tmp_path, bridge):
    known = encode_image(bridge, "JPEG", quality=85)
    harness = make_harness(
        f"sqlite:///{tmp_path}/w.db", hash_in_process=False, workers=1, image=FLOODING
    )
    stub, md = harness.stubs("operator")
    stub.curation.CreateSet(pb.CreateSetRequest(name="a"), metadata=md)
    stub.curation.AddEntry(
        pb.AddEntryRequest(set="a", name="bridge", media=pb.Media(content=known)), metadata=md
    )
    m_stub, m_md = harness.stubs("matcher")
    exact = m_stub.matcher.Match(match_request(known), metadata=m_md)
    assert exact.decision == pb.BLOCK and NOT_HASHED in exact.notes
    assert [s.signal_type for s in exact.query_signals] == ["md5", "sha256"]
    other = m_stub.matcher.Match(
        match_request(encode_image(bridge, "JPEG", quality=70)), metadata=m_md
    )
    assert other.decision == pb.BLOCK and NOT_HASHED not in other.notes
    kinds = [s.signal_type for s in other.query_signals]
    assert kinds[:2] == ["md5", "sha256"] and "pdq" in kinds


def test_only_a_callers_flood_of_exact_copies_skips_hashing(
    store_url, make_core, bridge, monkeypatch
):
    """Outside a flood an exact copy is hashed as any upload (its history keeps
    every signal); once a quarter of the caller's window were exact copies of
    known media, that caller's are answered from their exact hashes, and
    another caller's still hashed."""
    known = encode_image(bridge, "JPEG", quality=85)
    core = make_core(store_url, image=ImageLimits(local_after_views_window=4))
    core.curation.create_set("a")
    core.curation.add_entry("a", "bridge", {}, "op", media=known)
    hashing = _count_hashing(core, monkeypatch)
    first = core.match(MatchQuery(media=known), caller="flooder")
    assert first.decision == "block" and NOT_HASHED not in first.notes
    assert any(s.kind == "pdq" for s in first.query_signals) and hashing.jobs == 1
    flooded = core.match(MatchQuery(media=known), caller="flooder")
    assert flooded.decision == "block" and flooded.notes == (NOT_HASHED,)
    assert hashing.jobs == 1
    other = core.match(MatchQuery(media=known), caller="someone-else")
    assert NOT_HASHED not in other.notes and hashing.jobs == 2


def _call_order(core, monkeypatch) -> list[str]:
    """'hash' for each job sent to hashing, 'lookup' for each exact lookup, in order."""
    order: list[str] = []
    start_query, find_exact = core.hashing.start_query, core.store.find_exact

    def started(*args, **kwargs):
        order.append("hash")
        return start_query(*args, **kwargs)

    def looked_up(*args, **kwargs):
        order.append("lookup")
        return find_exact(*args, **kwargs)

    monkeypatch.setattr(core.hashing, "start_query", started)
    monkeypatch.setattr(core.store, "find_exact", looked_up)
    return order


def test_outside_a_flood_an_upload_is_sent_to_hashing_before_its_exact_lookup(
    store_url, make_core, bridge, monkeypatch
):
    """Outside the caller's flood of exact copies an upload is hashed whatever
    its exact hashes find: its job goes to the workers first and the lookups
    run while it hashes (~0.3 ms of its latency). In a flood the lookup comes
    first, and an exact copy is not hashed. The answers are those of before."""
    known = encode_image(bridge, "JPEG", quality=85)
    other_file = encode_image(bridge, "JPEG", quality=70)
    core = make_core(store_url)  # a caller's first uploads: no flood
    core.curation.create_set("a")
    core.curation.add_entry("a", "bridge", {}, "op", media=known)
    order = _call_order(core, monkeypatch)
    for media, found_by in ((known, "md5"), (other_file, "pdq")):
        order.clear()
        outcome = core.match(MatchQuery(media=media), caller="t")
        assert outcome.decision == "block" and NOT_HASHED not in outcome.notes
        assert found_by in {m.signal_type for m in outcome.matches}
        assert [s.kind for s in outcome.query_signals[:2]] == ["md5", "sha256"]
        assert order[0] == "hash" and set(order[1:]) == {"lookup"}, order

    flooded = make_core(store_url, image=FLOODING)
    order = _call_order(flooded, monkeypatch)
    exact = flooded.match(MatchQuery(media=known), caller="t")
    assert exact.notes == (NOT_HASHED,) and set(order) == {"lookup"}, order
    order.clear()
    again = flooded.match(MatchQuery(media=other_file), caller="t")
    assert again.decision == "block" and NOT_HASHED not in again.notes
    assert order[-1] == "hash" and set(order[:-1]) == {"lookup"}, order


def test_a_lookup_that_fails_after_the_upload_was_sent_gives_an_error_not_allow(
    store_url, make_core, bridge, monkeypatch
):
    """Outside a flood the upload is already hashing when its exact lookup
    fails: the call fails (recorded so), its job is dropped, and the next
    upload is hashed and decided as before."""
    known = encode_image(bridge, "JPEG", quality=85)
    core = make_core(store_url)
    _known_bridge(core, known)
    find_exact = core.store.find_exact
    _fails_recorded_when_the_lookup_fails(core, known, monkeypatch)
    monkeypatch.setattr(core.store, "find_exact", find_exact)
    assert core.match(MatchQuery(media=known), caller="t").decision == "block"


def _known_bridge(core, known: bytes) -> None:
    core.curation.create_set("a")
    core.curation.add_entry("a", "bridge", {}, "op", media=known)


def _fails_recorded_when_the_lookup_fails(core, known: bytes, monkeypatch) -> None:
    """With the store's exact lookup failing, a Match of `known` raises (an
    error, never ALLOW) and is recorded as failed, with no decision."""

    def broken(kind, value):
        raise RuntimeError("store lost")

    monkeypatch.setattr(core.store, "find_exact", broken)
    with pytest.raises(RuntimeError, match="store lost"):
        core.match(MatchQuery(media=known), caller="t")
    record = core.store.query_history(HistoryFilter(), 0, 1000)[-1]
    assert record.decision == "" and record.status != "OK"
