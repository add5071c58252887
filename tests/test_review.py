"""Review queue and feedback on both stores: what is queued, ordering and
filters, claims (racing, expiring), both resolutions and their effect on later
Match calls, allow lists, quarantine by a burst, and the audit records."""

from __future__ import annotations

import dataclasses
import json
import threading
import time

import grpc
import pytest

from hashdb import ReviewFilter, Thresholds
from hashsvc.base.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from hashsvc.client import cli
from hashsvc.core.core import Core, MatchQuery
from hashsvc.matching.policy import DEFAULT_THRESHOLDS
from hashsvc.v1 import hashsvc_pb2 as pb
from hashsvc_testing.image_media import encode, photo, reencoded

# Local features review only: a half-size copy of a small picture verifies
# well enough to block by their defaults, and these tests need it at review.
LOCAL_REVIEW_ONLY = dataclasses.replace(DEFAULT_THRESHOLDS["local_features"], block_inliers=10_000)


@pytest.fixture
def core_config():
    # flood counts reach the store when a test flushes them, not on a timer:
    # the burst test counts its 7 matches in one flush however slow they are
    return {"review_claim_seconds": 30, "quarantine_matches": 5, "flood_flush_seconds": 600}


def _match(core: Core, data: bytes, caller: str = "pipeline-a", ref: str = "") -> str:
    return core.match(MatchQuery(media=data, client_ref=ref), caller).decision


def _setup(core: Core):
    """Set "isis" reviews at 40+ bits (block below 10), set "aq" blocks and
    reviews its blocks too."""
    cur = core.curation
    cur.create_set(
        "isis",
        labels={"group": "ISIS"},
        thresholds={"pdq": Thresholds(10, 60), "local_features": LOCAL_REVIEW_ONLY},
    )
    cur.create_set("aq", labels={"group": "AQ"}, review_blocks=True)
    cur.add_entry("isis", "poster", {"outlet": "Amaq"}, "op", media=encode(photo(1)))
    cur.add_entry("aq", "banner", {}, "op", media=encode(photo(2)))


def test_queue_order_filters_and_claims(core):
    _setup(core)
    assert _match(core, reencoded(photo(1), scale=0.5, quality=20), ref="u1") == "review"
    assert _match(core, encode(photo(2)), caller="pipeline-b", ref="u2") == "block"
    assert _match(core, encode(photo(5))) == "allow"  # nothing queued
    items, _ = core.review.list(ReviewFilter())
    assert [i.client_ref for i in items] == ["u1", "u2"]  # oldest first
    first = items[0]
    assert first.matches[0]["entry"] == "poster" and first.media_type == "image"
    assert any(s["signal_type"] == "pdq" for s in first.query_signals)
    sets = {s.name: s.id for s in core.live.sets_by_id.values()}
    assert [i.client_ref for i in core.review.list(ReviewFilter(set_id=sets["aq"]))[0]] == ["u2"]
    by_label = core.review.list(ReviewFilter(label=("outlet", "Amaq")))[0]
    assert [i.client_ref for i in by_label] == ["u1"]
    assert [i.client_ref for i in core.review.list(ReviewFilter(caller="pipeline-b"))[0]] == ["u2"]
    assert not core.review.list(ReviewFilter(media_type="video"))[0]

    mine = core.review.claim("rev-1", None, ReviewFilter())
    assert mine.id == first.id and mine.claimed_by == "rev-1"
    theirs = core.review.claim("rev-2", None, ReviewFilter())
    assert theirs.id == items[1].id  # the next free one, never the same item
    with pytest.raises(FailedPrecondition):
        core.review.claim("rev-2", first.id, ReviewFilter())
    with pytest.raises(NotFound):
        core.review.claim("rev-3", None, ReviewFilter())
    with pytest.raises(FailedPrecondition):  # resolving needs one's own claim
        core.review.resolve("rev-2", first.id, "confirmed")


def test_claims_expire(store_url, make_core):
    core = make_core(store_url, review_claim_seconds=0.5)
    _setup(core)
    _match(core, reencoded(photo(1), scale=0.5, quality=20))
    item = core.review.claim("slow", None, ReviewFilter())
    time.sleep(0.7)
    with pytest.raises(FailedPrecondition, match="expired"):
        core.review.resolve("slow", item.id, "confirmed")
    assert core.review.claim("fast", None, ReviewFilter()).id == item.id


def test_concurrent_claims_one_wins(core):
    _setup(core)
    _match(core, reencoded(photo(1), scale=0.5, quality=20))
    item = core.review.list(ReviewFilter())[0][0]
    results: dict[str, object] = {}
    start = threading.Barrier(8)

    def race(name: str) -> None:
        start.wait()
        try:
            results[name] = core.review.claim(name, item.id, ReviewFilter())
        except FailedPrecondition as exc:
            results[name] = exc

    threads = [threading.Thread(target=race, args=(f"r{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [n for n, r in results.items() if not isinstance(r, Exception)]
    assert len(winners) == 1


def test_confirmed_adds_the_upload_so_the_next_copy_blocks(core):
    _setup(core)
    core.curation.update_set("isis", review_target=True)
    far_copy = reencoded(photo(1), scale=0.5, quality=20)
    assert _match(core, far_copy) == "review"
    item = core.review.claim("rev", None, ReviewFilter())
    done = core.review.resolve("rev", item.id, "confirmed", "clearly Amaq", add_to_set="isis")
    assert done.status == "confirmed" and done.added_entry_id
    added = core.store.get_entries([done.added_entry_id])[done.added_entry_id]
    assert added.labels == {"review_id": str(item.id), "confirmed_by": "rev"}
    assert _match(core, far_copy) == "block"  # the same upload now matches the new entry


def test_false_positive_is_never_raised_again_and_allow_lists(core):
    _setup(core)
    upload = reencoded(photo(1), scale=0.5, quality=20)
    assert _match(core, upload) == "review"
    item = core.review.claim("rev", None, ReviewFilter())
    core.review.resolve("rev", item.id, "false_positive", "a news photo")
    outcome = core.match(MatchQuery(media=upload), "pipeline-a")
    assert outcome.decision == "allow"
    assert "false positive in review" in outcome.matches[0].reason
    assert not core.review.list(ReviewFilter())[0]  # not queued again
    # other uploads still match the entry
    assert _match(core, encode(photo(1))) == "block"

    # an allow list suppresses every match of an upload on it
    core.curation.create_set("benign", allow_list=True)
    core.curation.add_entry("benign", "press-photo", {}, "op", media=encode(photo(2)))
    outcome = core.match(MatchQuery(media=encode(photo(2))), "pipeline-a")
    assert outcome.decision == "allow"
    assert all("allow-listed by benign/press-photo" in m.reason for m in outcome.matches)


def test_burst_alerts_and_keeps_blocking_until_acknowledged(core):
    """Issue 16 item 3: a burst of copies no longer turns BLOCK into REVIEW;
    it raises an alert that an operator acknowledges with ReleaseEntry."""
    _setup(core)
    for _ in range(7):  # quarantine_matches=5
        assert _match(core, encode(photo(2))) == "block"
    core.flood.flush()
    outcome = core.match(MatchQuery(media=encode(photo(2))), "pipeline-a")
    assert outcome.decision == "block" and "quarantine" not in outcome.matches[0].reason
    with pytest.raises(FailedPrecondition):
        core.review.release_entry("op", "isis", "poster")  # no alert
    core.review.release_entry("op", "aq", "banner")
    assert _match(core, encode(photo(2))) == "block"
    actions = [r for r in core.store.query_history(_all()) if r.rpc != "Match"]
    assert [r.rpc for r in actions] == ["FloodAlert", "ReleaseEntry"]
    assert actions[0].detail["matches"] == 7 and actions[1].caller == "op"


def _all():
    from hashdb import HistoryFilter

    return HistoryFilter()


def test_review_actions_are_audited_and_chained(core):
    _setup(core)
    _match(core, reencoded(photo(1), scale=0.5, quality=20), ref="u9")
    item = core.review.claim("rev", None, ReviewFilter())
    core.review.resolve("rev", item.id, "false_positive", "not propaganda")
    actions = [r for r in core.store.query_history(_all()) if r.rpc != "Match"]
    assert [(r.rpc, r.caller, r.client_ref) for r in actions] == [
        ("ClaimReview", "rev", "u9"),
        ("ResolveReview", "rev", "u9"),
    ]
    assert actions[1].detail == {
        "review_id": item.id,
        "resolution": "false_positive",
        "note": "not propaganda",
    }
    assert core.store.verify_history().intact


def test_reviewer_role_and_cli(tmp_path, monkeypatch, capsys, make_harness):
    """Through the service: the reviewer role, two reviewers racing over
    gRPC, and `hashsvc review list|claim|resolve --json`."""
    h = make_harness(f"sqlite:///{tmp_path}/db.sqlite")
    op, omd = h.stubs("operator")
    op.curation.CreateSet(
        pb.CreateSetRequest(
            name="isis",
            review_target=True,
            thresholds=[
                pb.Threshold(signal_type="pdq", block_distance=10, review_distance=60),
                pb.Threshold(
                    signal_type="local_features",
                    block_inliers=10_000,
                    review_inliers=LOCAL_REVIEW_ONLY.review_inliers,
                    block_coverage=LOCAL_REVIEW_ONLY.block_coverage,
                    review_coverage=LOCAL_REVIEW_ONLY.review_coverage,
                ),
            ],
        ),
        metadata=omd,
    )
    op.curation.AddEntry(
        pb.AddEntryRequest(set="isis", name="poster", media=pb.Media(content=encode(photo(1)))),
        metadata=omd,
    )
    m, mmd = h.stubs("matcher")
    resp = m.matcher.Match(
        pb.MatchRequest(
            media=pb.Media(content=reencoded(photo(1), scale=0.5, quality=20)),
            client_ref="post-31",
        ),
        metadata=mmd,
    )
    assert resp.decision == pb.REVIEW
    with pytest.raises(grpc.RpcError) as denied:
        m.review.ListReviewItems(pb.ListReviewItemsRequest(), metadata=mmd)
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED

    monkeypatch.setenv("HASHSVC_SERVER", h.address)
    monkeypatch.setenv("HASHSVC_TOKEN", h.tokens["reviewer"])

    def run(*argv):
        code = cli.main(list(argv))
        return code, capsys.readouterr().out

    code, out = run("review", "list", "--json")
    assert code == 0
    listed = [json.loads(line) for line in out.splitlines()]
    assert [i["client_ref"] for i in listed] == ["post-31"]
    assert listed[0]["matches"][0]["entry"] == "poster"
    code, out = run("review", "claim", "--json")
    claimed = json.loads(out)
    assert code == 0 and claimed["id"] == listed[0]["id"] and claimed["claimed_by"]
    code, out = run(
        "review", "resolve", str(claimed["id"]), "--confirmed", "--note", "ok",
        "--add-to-set", "isis", "--json",
    )  # fmt: skip
    resolved = json.loads(out)
    assert code == 0 and resolved["status"] == "confirmed"
    code, out = run("review", "list", "--json")
    assert code == 0 and out == ""
    code, _ = run("review", "resolve", str(claimed["id"]), "--false-positive")
    assert code == 1  # already resolved


# -- pdq hashes a chosen number of bits apart (no image decoding: fast)


def _pdq(seed: int) -> bytes:
    import random

    return random.Random(seed).randbytes(32)


def _flip(value: bytes, bits: int, start: int = 0) -> bytes:
    """value with `bits` bits flipped, from bit `start` on (distance = bits)."""
    as_int = int.from_bytes(value, "big")
    for bit in range(start, start + bits):
        as_int ^= 1 << bit
    return as_int.to_bytes(32, "big")


def _match_hash(core: Core, value: bytes):
    return core.match(MatchQuery(signal_type="pdq", signal_value=value.hex()), "pipeline-a")


def _add_hash(core: Core, set_name: str, name: str, value: bytes) -> None:
    core.curation.add_entry(set_name, name, {}, "op", signal=("pdq", value.hex(), None))


# -- issue 16 item 5: an allow list never beats a closer block


def test_allow_entry_farther_than_a_block_does_not_suppress_it(core):
    known = _pdq(1)
    core.curation.create_set("isis")
    _add_hash(core, "isis", "video-still", known)
    core.curation.create_set("benign", allow_list=True)
    _add_hash(core, "benign", "press-photo", _flip(known, 20))  # 20 bits from the known hash
    outcome = _match_hash(core, known)  # the known hash's own exact copy
    assert outcome.decision == "block"
    by_set = {m.set_name: m for m in outcome.matches}
    assert by_set["isis"].decision == "block"
    assert "benign/press-photo" in by_set["isis"].reason and "20" in by_set["isis"].reason
    assert by_set["benign"].decision == "allow"  # an allow list never blocks by itself


def test_allow_entry_suppresses_only_within_its_own_block_threshold(core):
    upload = _pdq(2)
    core.curation.create_set("isis")  # blocks within 31 bits
    _add_hash(core, "isis", "banner", _flip(upload, 25))
    core.curation.create_set("benign", allow_list=True, thresholds={"pdq": Thresholds(5, 40)})
    _add_hash(core, "benign", "logo", _flip(upload, 10, start=100))  # closer, but past 5 bits
    assert _match_hash(core, upload).decision == "block"
    # an allow entry as close as the match or closer, within its block threshold, suppresses it
    _add_hash(core, "benign", "logo-exact", _flip(upload, 3, start=200))
    outcome = _match_hash(core, upload)
    assert outcome.decision == "allow"
    banner = next(m for m in outcome.matches if m.entry_name == "banner")
    assert "allow-listed by benign/logo-exact" in banner.reason


def test_allow_entry_at_the_same_distance_suppresses(core):
    upload = _pdq(3)
    core.curation.create_set("isis")
    _add_hash(core, "isis", "k", _flip(upload, 12))
    core.curation.create_set("benign", allow_list=True)
    _add_hash(core, "benign", "a", _flip(upload, 12, start=128))
    assert _match_hash(core, upload).decision == "allow"


# -- issue 16 item 4: reviewers add only to review targets, never to an allow list


def test_allow_list_cannot_be_a_review_target(core):
    with pytest.raises(InvalidArgument):
        core.curation.create_set("benign", allow_list=True, review_target=True)
    core.curation.create_set("benign2", allow_list=True)
    with pytest.raises(InvalidArgument):
        core.curation.update_set("benign2", review_target=True)
    assert not core.curation.get_set("benign2").review_target


def test_reviewer_cannot_add_to_an_allow_list_or_an_unmarked_set(core):
    _setup(core)
    core.curation.create_set("benign", allow_list=True)
    upload = reencoded(photo(1), scale=0.5, quality=20)
    assert _match(core, upload) == "review"
    item = core.review.claim("rev", None, ReviewFilter())
    with pytest.raises(FailedPrecondition, match="allow list"):
        core.review.resolve("rev", item.id, "confirmed", add_to_set="benign")
    with pytest.raises(FailedPrecondition, match="review target"):
        core.review.resolve("rev", item.id, "confirmed", add_to_set="isis")
    assert core.curation.entry_page("benign", 100, "", 10_000).entries == []
    assert _match(core, encode(photo(1))) == "block"  # still blocked
    assert core.store.get_review_item(item.id).status == "open"
    # the operator marks the set; now the reviewer may add to it
    assert core.curation.update_set("isis", review_target=True).review_target
    done = core.review.resolve("rev", item.id, "confirmed", add_to_set="isis")
    assert done.status == "confirmed" and done.added_entry_id


def test_review_target_on_a_set_changed_behind_the_core_is_checked_again(core):
    """Someone with database access marks an allow list as a review target:
    the resolve transaction itself refuses to add to it."""
    _setup(core)
    benign = core.curation.create_set("benign", allow_list=True)
    with core.store._write() as cur:
        cur.execute("UPDATE hash_sets SET review_target = ? WHERE id = ?", (True, benign.id))
    _match(core, reencoded(photo(1), scale=0.5, quality=20))
    item = core.review.claim("rev", None, ReviewFilter())
    with pytest.raises(FailedPrecondition):
        core.review.resolve("rev", item.id, "confirmed", add_to_set="benign")
    assert core.curation.entry_page("benign", 100, "", 10_000).entries == []


# -- issue 16 item 9: adding the entry and resolving is one transaction


def test_expired_claim_adds_nothing_and_a_retry_succeeds(store_url, make_core):
    core = make_core(store_url, review_claim_seconds=0.5)
    _setup(core)
    core.curation.update_set("isis", review_target=True)
    _match(core, reencoded(photo(1), scale=0.5, quality=20))
    item = core.review.claim("slow", None, ReviewFilter())
    time.sleep(0.7)
    with pytest.raises(FailedPrecondition, match="expired"):
        core.review.resolve("slow", item.id, "confirmed", add_to_set="isis")
    assert [e.name for e in core.curation.entry_page("isis", 100, "", 10_000).entries] == ["poster"]
    assert core.store.get_review_item(item.id).status == "open"
    failed = [r for r in core.store.query_history(_all()) if r.rpc == "ResolveReview"]
    assert [(r.caller, r.status) for r in failed] == [("slow", "FAILED_PRECONDITION")]
    # another reviewer resolves it the same way: no ALREADY_EXISTS
    core.review.claim("fast", item.id, ReviewFilter())
    done = core.review.resolve("fast", item.id, "confirmed", add_to_set="isis")
    assert done.status == "confirmed"
    names = sorted(e.name for e in core.curation.entry_page("isis", 100, "", 10_000).entries)
    assert names == ["poster", f"review-{item.id}"]


def test_taken_entry_name_leaves_the_item_open(core):
    _setup(core)
    core.curation.update_set("isis", review_target=True)
    _match(core, reencoded(photo(1), scale=0.5, quality=20))
    item = core.review.claim("rev", None, ReviewFilter())
    with pytest.raises(AlreadyExists):
        core.review.resolve("rev", item.id, "confirmed", add_to_set="isis", entry_name="poster")
    current = core.store.get_review_item(item.id)
    assert current.status == "open" and current.claimed_by == "rev"
    done = core.review.resolve("rev", item.id, "confirmed", add_to_set="isis", entry_name="p2")
    assert done.added_entry_id == core.curation.get_entry("isis", "p2").id


def test_review_target_over_grpc_and_cli(tmp_path, monkeypatch, capsys, make_harness):
    """`sets create --review-target`, `sets update --review-target` and
    `sets show` over a real server; an allow list refused as a target."""
    h = make_harness(f"sqlite:///{tmp_path}/db.sqlite")
    monkeypatch.setenv("HASHSVC_SERVER", h.address)
    monkeypatch.setenv("HASHSVC_TOKEN", h.tokens["operator"])

    def run(*argv):
        code = cli.main(list(argv))
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    code, _, _ = run("sets", "create", "confirmed", "--review-target")
    assert code == 0
    code, out, _ = run("sets", "show", "confirmed", "--json")
    assert code == 0 and json.loads(out)["review_target"] is True
    code, _, _ = run("sets", "create", "isis")
    code, out, _ = run("sets", "show", "isis", "--json")
    assert json.loads(out)["review_target"] is False
    code, out, _ = run("sets", "update", "isis", "--review-target", "--json")
    assert code == 0 and json.loads(out)["review_target"] is True
    code, out, _ = run("sets", "update", "isis", "--no-review-target", "--json")
    assert code == 0 and json.loads(out)["review_target"] is False
    code, _, err = run("sets", "create", "benign", "--allow-list", "--review-target")
    assert code != 0 and "review target" in err
    run("sets", "create", "benign", "--allow-list")
    code, _, err = run("sets", "update", "benign", "--review-target")
    assert code != 0 and "review target" in err

    op, md = h.stubs("operator")
    with pytest.raises(grpc.RpcError) as refused:
        op.curation.UpdateSet(pb.UpdateSetRequest(name="benign", review_target=True), metadata=md)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    got = op.curation.GetSet(pb.GetSetRequest(name="confirmed"), metadata=md)
    assert got.review_target and not got.allow_list


def test_a_false_positive_verdict_never_lifts_a_block(core):
    """Issue 16 (review of items 3-5): a set with review_blocks queues its
    BLOCKs; a reviewer who resolved one as a false positive made that exact
    file ALLOW platform-wide. A verdict now covers only matches that ask for
    review: the exact copy and matches within the block threshold stay
    blocked (lifting a block is an operator's act: remove the entry)."""
    _setup(core)
    assert _match(core, encode(photo(2))) == "block"
    item = core.review.claim("rev", None, ReviewFilter())
    assert item.matches[0]["entry"] == "banner"
    core.review.resolve("rev", item.id, "false_positive", "oops")
    outcome = core.match(MatchQuery(media=encode(photo(2))), "pipeline-a")
    assert outcome.decision == "block"
    assert all("false positive" not in m.reason for m in outcome.matches)
    near = reencoded(photo(2), scale=0.8, quality=60)  # within the block threshold
    assert _match(core, near) == "block"
