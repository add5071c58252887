"""Retro-hunt through the running service, on both stores: uploads that were
allowed before their hash was known end up in review (source "retro", the
original request id) and in the history, for pictures, video frames (time
ranges), audio (offsets) and PDFs (pages); the window, allow lists, disabled
sets and removed entries hold; `retro run` / `retro list`; a run killed with
-9 resumes without reporting a hit twice; pruned signals keep the chain
verifying."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import signal
import sqlite3
import threading
import time
from datetime import UTC, datetime, timedelta

import grpc
import psycopg
import pytest

from hashdb import HistoryFilter, HistoryRecord, open_store
from hashdb.times import to_micros
from hashsvc.base.signals import Signal
from hashsvc.client import cli
from hashsvc.core import auth
from hashsvc.core.audit import history_signal_json
from hashsvc.v1 import hashsvc_pb2 as pb
from hashsvc_testing import audio_media, pdf_media, video_media
from hashsvc_testing.image_media import encode, photo, reencoded
from hashsvc_testing.store_tamper import tamper
from hashsvc_testing.stubs import Stubs
from tests.test_process import ServerProcess

CHUNK = 64 * 1024
OPEN = ("queued", "running")


@pytest.fixture
def harness_config():
    return {"retro_poll_seconds": 0.2}


def _wait_runs(stubs, md, seconds: float = 120) -> list[pb.RetroRunInfo]:
    """Every run once none is queued or running (bounded)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        runs = list(stubs.retro.ListRetroRuns(pb.ListRetroRunsRequest(), metadata=md).runs)
        if runs and all(r.state not in OPEN for r in runs):
            return runs
        time.sleep(0.1)
    raise AssertionError(f"retro runs still open after {seconds} s: {runs}")


def _retro_items(stubs, md) -> list[pb.ReviewItem]:
    items = stubs.review.ListReviewItems(pb.ListReviewItemsRequest(), metadata=md).items
    return [i for i in items if i.source == "retro"]


def _match(stubs, md, data: bytes, ref: str) -> pb.MatchResponse:
    return stubs.matcher.Match(
        pb.MatchRequest(media=pb.Media(content=data), client_ref=ref), metadata=md
    )


def _add(stubs, md, set_name: str, name: str, data: bytes) -> pb.Entry:
    return stubs.curation.AddEntry(
        pb.AddEntryRequest(set=set_name, name=name, media=pb.Media(content=data)), metadata=md
    )


@pytest.mark.parametrize("harness_config", [{"retro_poll_seconds": 0.2, "retro_threads": 2}])
def test_hunt_on_two_threads_finds_the_copy(harness, operator, matcher, reviewer):
    """retro_threads = 2: a step's views are compared on two threads (the
    parts are put back in order): the one allowed copy among other uploads
    is found, once."""
    ops, op_md = operator
    m, m_md = matcher
    rev, rev_md = reviewer
    ops.curation.CreateSet(pb.CreateSetRequest(name="isis"), metadata=op_md)
    for n in (2, 3, 4):
        _match(m, m_md, encode(photo(n)), f"u-other-{n}")
    copy = _match(m, m_md, reencoded(photo(1), scale=0.5, quality=40), "u-copy")
    _match(m, m_md, encode(photo(6)), "u-other-6")
    assert copy.decision == pb.ALLOW
    _add(ops, op_md, "isis", "poster", encode(photo(1)))
    runs = _wait_runs(ops, op_md)
    assert [(r.state, r.hits) for r in runs] == [("done", 1)]
    (item,) = _retro_items(rev, rev_md)
    assert item.request_id == copy.request_id


@pytest.mark.parametrize(
    "harness_config",
    [{"retro_poll_seconds": 0.2}, {"retro_poll_seconds": 0.2, "retro_engine": "process"}],
    ids=["inprocess", "process"],
)
def test_allowed_picture_is_found_when_its_hash_arrives(harness, operator, matcher, reviewer):
    ops, op_md = operator
    m, m_md = matcher
    rev, rev_md = reviewer
    ops.curation.CreateSet(pb.CreateSetRequest(name="isis"), metadata=op_md)
    ops.curation.CreateSet(pb.CreateSetRequest(name="benign", allow_list=True), metadata=op_md)
    ops.curation.CreateSet(pb.CreateSetRequest(name="off"), metadata=op_md)
    ops.curation.UpdateSet(pb.UpdateSetRequest(name="off", enabled=False), metadata=op_md)
    _add(ops, op_md, "benign", "meme", encode(photo(5)))
    # the uploads, all allowed: nothing was known yet (photo 5 is allow-listed)
    copy = _match(m, m_md, reencoded(photo(1), scale=0.5, quality=40), "u-copy")
    _match(m, m_md, encode(photo(3)), "u-unrelated")
    _match(m, m_md, encode(photo(5)), "u-benign")
    _match(m, m_md, encode(photo(6)), "u-disabled")
    assert copy.decision == pb.ALLOW

    _add(ops, op_md, "isis", "poster", encode(photo(1)))
    _add(ops, op_md, "isis", "benign-lookalike", encode(photo(5)))  # allow list holds
    _add(ops, op_md, "off", "disabled", encode(photo(6)))  # a disabled set does not hunt
    runs = _wait_runs(ops, op_md)
    assert {r.trigger for r in runs} == {"AddEntry"}
    assert sum(r.hits for r in runs) == 1 and all(r.state == "done" for r in runs)

    (item,) = _retro_items(rev, rev_md)
    assert item.request_id == copy.request_id and item.client_ref == "u-copy"
    assert item.caller == "test-matcher" and item.media_type == pb.IMAGE
    (found,) = item.matches
    assert (found.set, found.entry, found.decision) == ("isis", "poster", pb.BLOCK)
    # its record in the history: its own kind, naming the upload
    aud, aud_md = harness.stubs("auditor")
    records = aud.audit.ExportHistory(pb.QueryHistoryRequest(set="isis"), metadata=aud_md)
    retro = [r for r in records if r.rpc == "RetroMatch"]
    assert len(retro) == 1 and json.loads(retro[0].detail_json)["request_id"] == copy.request_id

    # a run by hand over the same window finds it again: never reported twice
    run = ops.retro.StartRetroRun(pb.StartRetroRunRequest(set="isis"), metadata=op_md)
    assert run.trigger == "manual"
    _wait_runs(ops, op_md)
    assert len(_retro_items(rev, rev_md)) == 1
    verified = aud.audit.VerifyHistory(pb.VerifyHistoryRequest(), metadata=aud_md)
    assert verified.intact

    # the platform is told once, in the hit's transaction: a retro_match event
    # naming the upload, its review item and the match, as `match --json` does
    page = aud.events.ListEvents(pb.ListEventsRequest(from_id=1), metadata=aud_md)
    told = [json.loads(e.json) for e in page.events if e.type == "retro_match"]
    assert len(told) == 1, told
    (event,) = told
    assert event["request_id"] == copy.request_id and event["client_ref"] == "u-copy"
    assert event["review_id"] == item.id and event["decision"] == "block"
    assert [(m["set"], m["entry"]) for m in event["matches"]] == [("isis", "poster")]


def test_window_and_removed_entries(harness, operator, reviewer):
    """Uploads older than the set's window are not hunted; a run whose entry
    was removed before it was scanned finds nothing."""
    ops, op_md = operator
    core = harness.core
    store = core.store
    ops.curation.CreateSet(pb.CreateSetRequest(name="s"), metadata=op_md)
    ops.curation.UpdateSet(pb.UpdateSetRequest(name="s", retro_window_seconds=3600), metadata=op_md)
    pdq = Signal("pdq", bytes(range(32)), 90)
    old, recent = _history_upload(store, pdq, hours_ago=2), _history_upload(store, pdq, 0.1)
    entry = ops.curation.AddEntry(
        pb.AddEntryRequest(
            set="s", name="e", signal=pb.SignalValue(signal_type="pdq", value=pdq.value.hex())
        ),
        metadata=op_md,
    )
    _wait_runs(ops, op_md)
    rev, rev_md = reviewer
    assert [i.request_id for i in _retro_items(rev, rev_md)] == [recent]
    assert old != recent

    # a queued run whose entry is removed before the scan: no hit
    _history_upload(store, pdq, 0.1, request_id="after-removal")
    hash_set = store.get_set("s")
    run = store.create_retro_run(
        "feed",
        "partner",
        hash_set.id,
        [entry.id],
        to_micros(datetime.now(UTC) - timedelta(hours=1)),
    )
    ops.curation.RemoveEntry(pb.RemoveEntryRequest(set="s", name="e"), metadata=op_md)
    core.retro.wake.set()
    _wait_runs(ops, op_md)
    assert store.get_retro_run(run.id).hits == 0
    assert [i.request_id for i in _retro_items(rev, rev_md)] == [recent]


def _history_upload(store, sig, hours_ago: float, request_id: str = "") -> str:
    """A Match record written as the server writes one, `hours_ago` old."""
    request_id = request_id or f"req-{time.time_ns()}"
    store.record_match(
        HistoryRecord(
            request_id=request_id,
            time=datetime.now(UTC) - timedelta(hours=hours_ago),
            caller="pipeline",
            rpc="Match",
            media_type="image",
            decision="allow",
            status="OK",
            query_signals=[history_signal_json(sig)],
        )
    )
    return request_id


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    d = tmp_path_factory.mktemp("retro-media")
    known_video = video_media.slideshow(d / "known.mp4", [0, 1, 2, 3, 4, 5], 3.3)
    speech = audio_media.speech_track(1, 40.0, "ar")
    pub = pdf_media.publication(3, "ar")
    return {
        "video": known_video.read_bytes(),
        "video_excerpt": video_media.excerpt(known_video, 6.0, 12.0, d).read_bytes(),
        "audio": audio_media.master(speech),
        "audio_excerpt": audio_media.encode(
            speech[int(20 * audio_media.RATE) : int(32 * audio_media.RATE)], "ogg", "-q:a", "0"
        ),
        "pdf": pdf_media.typeset(pub),
        "pdf_retypeset": pdf_media.retypeset(pub),
    }


def _upload_match(stubs, md, data: bytes, ref: str) -> pb.MatchResponse:
    messages = [pb.MatchUploadRequest(header=pb.MatchRequest(client_ref=ref))]
    messages += [
        pb.MatchUploadRequest(chunk=data[i : i + CHUNK]) for i in range(0, len(data), CHUNK)
    ]
    return stubs.matcher.MatchUpload(iter(messages), metadata=md)


def _upload_add(stubs, md, set_name: str, name: str, data: bytes) -> pb.Entry:
    messages = [pb.AddEntryUploadRequest(header=pb.AddEntryRequest(set=set_name, name=name))]
    messages += [
        pb.AddEntryUploadRequest(chunk=data[i : i + CHUNK]) for i in range(0, len(data), CHUNK)
    ]
    return stubs.curation.AddEntryUpload(iter(messages), metadata=md)


def test_video_audio_and_pdf_uploads_are_found_with_where(
    harness, operator, matcher, reviewer, media
):
    ops, op_md = operator
    m, m_md = matcher
    ops.curation.CreateSet(pb.CreateSetRequest(name="isis"), metadata=op_md)
    asked = {
        kind: _upload_match(m, m_md, media[query], kind)
        for kind, query in (
            ("video", "video_excerpt"),
            ("audio", "audio_excerpt"),
            ("pdf", "pdf_retypeset"),
        )
    }
    assert all(r.decision == pb.ALLOW for r in asked.values())
    for kind in asked:
        _upload_add(ops, op_md, "isis", f"known-{kind}", media[kind])
    _wait_runs(ops, op_md, seconds=300)
    rev, rev_md = reviewer
    items = {i.client_ref: i for i in _retro_items(rev, rev_md)}
    assert set(items) == {"video", "audio", "pdf"}
    for kind, resp in asked.items():
        item = items[kind]
        assert item.request_id == resp.request_id
        (found,) = item.matches
        assert found.entry == f"known-{kind}" and found.decision in (pb.BLOCK, pb.REVIEW)
        assert found.segments, kind
    video = items["video"].matches[0]
    assert video.unit == "seconds"
    assert abs(video.segments[0].known_start - 6.0) <= 1.5  # the excerpt's place
    audio = items["audio"].matches[0]
    assert audio.unit == "seconds" and abs(audio.segments[0].known_start - 20.0) <= 1.5
    assert items["pdf"].matches[0].unit == "pages"


def test_retro_cli_and_roles(harness, operator, matcher, monkeypatch, capsys):
    ops, op_md = operator
    m, m_md = matcher
    ops.curation.CreateSet(pb.CreateSetRequest(name="isis"), metadata=op_md)
    ops.curation.UpdateSet(pb.UpdateSetRequest(name="isis", retro_window_seconds=0), metadata=op_md)
    _match(m, m_md, reencoded(photo(1)), "u1")
    _add(ops, op_md, "isis", "poster", encode(photo(1)))  # the set's window is 0: no run
    assert not ops.retro.ListRetroRuns(pb.ListRetroRunsRequest(), metadata=op_md).runs

    monkeypatch.setenv("HASHSVC_TOKEN", harness.tokens["operator"])
    code = cli.main(
        ["--server", harness.address, "retro", "run", "--set", "isis", "--since", "1d", "--json"]
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    summary = json.loads(out)
    assert summary["state"] == "done" and summary["hits"] == 1
    assert summary["trigger"] == "manual" and summary["uploads_scanned"] == 1
    assert summary["window_seconds"] == 86_400
    assert summary["finished_at"] is not None and summary["duration_seconds"] >= 0
    # progress (only while the run is open, so maybe none) names the run
    progress = [line for line in err.splitlines() if line.startswith("retro run ")]
    assert all(line.startswith(f"retro run {summary['id']}: ") for line in progress), err

    monkeypatch.setenv("HASHSVC_TOKEN", harness.tokens["auditor"])
    assert cli.main(["--server", harness.address, "retro", "list", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["id"] for r in rows] == [summary["id"]] and rows[0]["set"] == "isis"
    assert cli.main(["--server", harness.address, "retro", "run", "--set", "isis"]) == 1
    assert "PERMISSION_DENIED" in capsys.readouterr().err

    monkeypatch.setenv("HASHSVC_TOKEN", harness.tokens["operator"])
    assert cli.main(["--server", harness.address, "retro", "run", "--set", "nope"]) == 1
    assert "NOT_FOUND" in capsys.readouterr().err
    # the set's window is 0: a run by hand needs its own
    assert cli.main(["--server", harness.address, "retro", "run", "--set", "isis"]) == 1
    assert "FAILED_PRECONDITION" in capsys.readouterr().err
    with pytest.raises(grpc.RpcError) as bad:
        ops.curation.UpdateSet(
            pb.UpdateSetRequest(name="isis", retro_window_seconds=-1), metadata=op_md
        )
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_too_many_open_runs(store_url, make_harness):
    """A flood of additions cannot pile up runs: past retro_max_open_runs a
    triggered run is recorded as skipped, one by hand is RESOURCE_EXHAUSTED."""
    h = make_harness(store_url, retro_max_open_runs=1, retro_poll_seconds=3600)
    ops, op_md = h.stubs("operator")
    ops.curation.CreateSet(pb.CreateSetRequest(name="s"), metadata=op_md)
    h.core.retro.stop()  # nothing is scanned: the runs stay open
    for i in range(3):
        ops.curation.AddEntry(
            pb.AddEntryRequest(
                set="s",
                name=f"e{i}",
                signal=pb.SignalValue(signal_type="pdq", value=f"{i + 1:064x}"),
            ),
            metadata=op_md,
        )
    states = [
        r.state for r in ops.retro.ListRetroRuns(pb.ListRetroRunsRequest(), metadata=op_md).runs
    ]
    assert sorted(states) == ["queued", "skipped", "skipped"]
    with pytest.raises(grpc.RpcError) as full:
        ops.retro.StartRetroRun(pb.StartRetroRunRequest(set="s"), metadata=op_md)
    assert full.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_kill_9_mid_run_resumes_without_duplicates(store_url, tmp_path):
    """A run over 3,000 uploads (every 10th a copy) is killed with -9 half-way;
    the restarted server resumes it from its checkpoint: every hit once."""
    store = open_store(store_url)
    try:
        known = bytes(range(32))
        near = bytes([known[0] ^ 0x07]) + known[1:]  # 3 bits away
        for i in range(3000):
            # unrelated uploads: random hashes, ~128 bits from anything
            value = near if i % 10 == 0 else hashlib.sha256(b"%d" % i).digest()
            _history_upload(store, Signal("pdq", value, 90), 0.5, request_id=f"up-{i}")
        _, token = auth.create_token(store, "admin", "test")
    finally:
        store.close()
    md = (("authorization", f"Bearer {token}"),)
    config = tmp_path / "hashsvc.toml"
    config.write_text(
        "retro_batch_records = 100\nretro_pause_seconds = 0.1\nretro_lease_seconds = 1.0\n"
        "retro_poll_seconds = 0.2\n"
    )
    server = ServerProcess(store_url, tmp_path, ("--config", str(config)))
    stubs = Stubs(server.channel)
    stubs.curation.CreateSet(pb.CreateSetRequest(name="s"), metadata=md)
    stubs.curation.AddEntry(
        pb.AddEntryRequest(
            set="s", name="e", signal=pb.SignalValue(signal_type="pdq", value=known.hex())
        ),
        metadata=md,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        (run,) = stubs.retro.ListRetroRuns(pb.ListRetroRunsRequest(), metadata=md).runs
        if run.uploads_scanned >= 500:
            break
        time.sleep(0.05)
    assert run.state == "running" and 0 < run.uploads_scanned < 3000
    server.stop(signal.SIGKILL)

    restarted = ServerProcess(store_url, tmp_path, ("--config", str(config)))
    try:
        stubs = Stubs(restarted.channel)
        (run,) = _wait_runs(stubs, md, seconds=120)
        assert run.state == "done" and run.hits == 300
        items = []
        token = ""
        while True:
            page = stubs.review.ListReviewItems(
                pb.ListReviewItemsRequest(page_size=1000, page_token=token), metadata=md
            )
            items += [i for i in page.items if i.source == "retro"]
            token = page.next_page_token
            if not token:
                break
        ids = [i.request_id for i in items]
        assert len(ids) == 300 and len(set(ids)) == 300
        assert set(ids) == {f"up-{i}" for i in range(0, 3000, 10)}
    finally:
        assert restarted.stop(signal.SIGTERM) == 0


@pytest.mark.parametrize("harness_config", [{"retro_window": 0, "history_prune_margin_seconds": 0}])
def test_prune_keeps_the_chain_verifying(harness, matcher, monkeypatch, capsys):
    """Retro-hunts off and no margin, so the uploads of a second ago may be
    pruned (tests/test_history_prune.py: the limits)."""
    m, m_md = matcher
    for i in range(3):
        _match(m, m_md, encode(photo(i)), f"u{i}")
    monkeypatch.setenv("HASHSVC_TOKEN", harness.tokens["operator"])
    assert cli.main(["--server", harness.address, "history", "prune", "--before", "1m"]) == 1
    assert "PERMISSION_DENIED" in capsys.readouterr().err
    monkeypatch.setenv("HASHSVC_TOKEN", harness.tokens["admin"])
    future = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    assert cli.main(["--server", harness.address, "history", "prune", "--before", future]) == 1
    assert "INVALID_ARGUMENT" in capsys.readouterr().err
    before = (datetime.now(UTC) + timedelta(seconds=1)).isoformat()
    time.sleep(1.1)
    code = cli.main(["--server", harness.address, "--json", "history", "prune", "--before", before])
    assert code == 0
    assert json.loads(capsys.readouterr().out)["records_pruned"] >= 3
    uploads = [
        r for r in harness.core.store.query_history(HistoryFilter(), 0, 1000) if r.rpc == "Match"
    ]
    assert len(uploads) == 3 and all(r.query_signals == [] for r in uploads)
    assert cli.main(["--server", harness.address, "history", "verify"]) == 0
    assert "history intact" in capsys.readouterr().out


def test_a_stopping_server_gives_its_run_back(store_url, make_core, retro_engine):
    """SIGTERM-like stop mid-run: the run is queued again at its checkpoint
    and the next server finishes it at once (no lease to wait for)."""
    settings = {
        "retro_batch_records": 50,
        "retro_pause_seconds": 0.1,
        "retro_poll_seconds": 0.2,
        "retro_engine": retro_engine,
    }
    core = make_core(store_url, **settings)
    known = bytes(range(32))
    near = bytes([known[0] ^ 0x03]) + known[1:]
    for i in range(400):
        value = near if i % 20 == 0 else hashlib.sha256(b"%d" % i).digest()
        _history_upload(core.store, Signal("pdq", value, 90), 0.5, request_id=f"up-{i}")
    core.curation.create_set("s")
    core.curation.add_entry("s", "e", {}, "op", signal=("pdq", known.hex(), None))
    deadline = time.monotonic() + 60
    while core.store.list_retro_runs()[0].checkpoint == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    make_core.stop(core)
    probe = open_store(store_url)
    try:
        (run,) = probe.list_retro_runs()
    finally:
        probe.close()
    assert run.state == "queued" and 0 < run.scanned < 400
    again = make_core(store_url, **settings)
    deadline = time.monotonic() + 60
    while again.store.get_retro_run(run.id).state != "done" and time.monotonic() < deadline:
        time.sleep(0.1)
    finished = again.store.get_retro_run(run.id)
    assert finished.state == "done" and finished.hits == 20
    assert len(again.store.retro_matches_of(run.id)) == 20


def test_kept_local_features_find_a_tilted_copy(tmp_path, make_harness):
    """With history_keep_local_features the history keeps an upload's local
    features whole, so a retro-hunt finds what only they match (a tilted
    copy, with PDQ held to distance 0)."""
    from tests.test_local_features_service import bridge, jpeg, rotated

    h = make_harness(
        f"sqlite:///{tmp_path}/lf.db", history_keep_local_features=True, retro_poll_seconds=0.2
    )
    ops, op_md = h.stubs("operator")
    m, m_md = h.stubs("matcher")
    exact_pdq = pb.Threshold(signal_type="pdq", block_distance=0, review_distance=0)
    ops.curation.CreateSet(pb.CreateSetRequest(name="isis", thresholds=[exact_pdq]), metadata=op_md)
    asked = _match(m, m_md, jpeg(rotated(bridge(), 10)), "tilted")
    assert asked.decision == pb.ALLOW
    _add(ops, op_md, "isis", "bridge", jpeg(bridge()))
    _wait_runs(ops, op_md)
    rev, rev_md = h.stubs("reviewer")
    (item,) = _retro_items(rev, rev_md)
    assert item.request_id == asked.request_id
    assert item.matches[0].signal_type == "local_features"


def test_a_bulk_load_hunts(harness, matcher, monkeypatch, capsys, tmp_path):
    """`hashsvc load` (BulkLoad): the loaded hashes hunt too."""
    m, m_md = matcher
    known = hashlib.sha256(b"partner-list").digest()
    near = bytes([known[0] ^ 0x01]) + known[1:]
    asked = m.matcher.Match(
        pb.MatchRequest(signal=pb.SignalValue(signal_type="pdq", value=near.hex())), metadata=m_md
    )
    ops, op_md = harness.stubs("operator")
    ops.curation.CreateSet(pb.CreateSetRequest(name="partner"), metadata=op_md)
    rows = tmp_path / "list.csv"
    rows.write_text(f"signal_type,signal_value,entry\npdq,{known.hex()},amaq-1\n")
    monkeypatch.setenv("HASHSVC_TOKEN", harness.tokens["operator"])
    assert cli.main(["--server", harness.address, "load", "--set", "partner", str(rows)]) == 0
    capsys.readouterr()
    (run,) = _wait_runs(ops, op_md)
    assert run.trigger == "BulkLoad" and run.hits == 1
    rev, rev_md = harness.stubs("reviewer")
    assert [i.request_id for i in _retro_items(rev, rev_md)] == [asked.request_id]


def _flipped(value: bytes, bits: int) -> bytes:
    """value with its first `bits` bits flipped."""
    as_int = int.from_bytes(value, "big") ^ (((1 << bits) - 1) << (256 - bits))
    return as_int.to_bytes(32, "big")


def test_a_confirmed_review_added_to_a_set_hunts(harness, operator, matcher, reviewer):
    """An upload let through (48 bits from the known hash, past the seed
    set's review threshold of 45) is found when a reviewer confirms a
    look-alike (40 bits: reviewed) and adds it to a set: 8 bits apart."""
    ops, op_md = operator
    m, m_md = matcher
    rev, rev_md = reviewer
    known = hashlib.sha256(b"seed").digest()
    strict = pb.Threshold(signal_type="pdq", block_distance=10, review_distance=45)
    ops.curation.CreateSet(pb.CreateSetRequest(name="seed", thresholds=[strict]), metadata=op_md)
    ops.curation.CreateSet(pb.CreateSetRequest(name="isis", review_target=True), metadata=op_md)
    ops.curation.AddEntry(
        pb.AddEntryRequest(
            set="seed", name="x", signal=pb.SignalValue(signal_type="pdq", value=known.hex())
        ),
        metadata=op_md,
    )

    def ask(value: bytes) -> pb.MatchResponse:
        return m.matcher.Match(
            pb.MatchRequest(signal=pb.SignalValue(signal_type="pdq", value=value.hex())),
            metadata=m_md,
        )

    let_through = ask(_flipped(known, 48))
    assert let_through.decision == pb.ALLOW
    assert ask(_flipped(known, 40)).decision == pb.REVIEW
    _wait_runs(ops, op_md)  # the seed entry's run: nothing (its uploads came after)
    item = rev.review.ClaimReviewItem(pb.ClaimReviewItemRequest(), metadata=rev_md)
    rev.review.ResolveReviewItem(
        pb.ResolveReviewItemRequest(id=item.id, resolution="confirmed", add_to_set="isis"),
        metadata=rev_md,
    )
    runs = _wait_runs(ops, op_md)
    assert [r.hits for r in runs if r.trigger == "ResolveReview"] == [1]
    (found,) = _retro_items(rev, rev_md)
    assert found.request_id == let_through.request_id
    assert found.matches[0].set == "isis" and found.matches[0].distance == 8


# -- a crash between writing entries (or a hit) and what must follow them


def _crash_before_queueing(core, monkeypatch) -> None:
    """The server dies after the entries are committed, before the retro-hunt
    is queued (kill -9 there): nothing after the commit happens."""

    def killed(*args, **kwargs):
        raise RuntimeError("killed before the retro-hunt was queued")

    monkeypatch.setattr(core.retro, "_queue", killed)


def _wait_done(store, seconds: float = 60):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        runs = store.list_retro_runs()
        if runs and all(r.state not in OPEN for r in runs):
            return runs
        time.sleep(0.1)
    raise AssertionError(f"retro runs still open after {seconds} s: {store.list_retro_runs()}")


def test_a_bulk_loads_hunt_survives_a_crash(store_url, make_core, monkeypatch):
    """A bulk load committed, then the server died before queueing its hunt:
    the restarted server queues it, and the upload let through ends in
    review (source retro) instead of staying allowed."""
    from hashsvc.core.bulk import RowBatch

    settings = {"retro_poll_seconds": 0.2}
    core = make_core(store_url, **settings)
    known = hashlib.sha256(b"crash-load").digest()
    near = bytes([known[0] ^ 0x01]) + known[1:]
    asked = _history_upload(core.store, Signal("pdq", near, 90), 0.5)
    core.curation.create_set("partner")
    _crash_before_queueing(core, monkeypatch)
    result = core.bulk_load("partner", "op", [RowBatch(["pdq"], [known], entry=["amaq-1"])])
    assert result.added == 1
    assert core.store.list_retro_runs() == []
    make_core.stop(core)

    again = make_core(store_url, **settings)
    (run,) = _wait_done(again.store)
    assert (run.trigger, run.state, run.hits) == ("BulkLoad", "done", 1)
    ((_, request_id, _, review_id),) = again.store.retro_matches_of(run.id)
    item = again.store.get_review_item(review_id)
    assert request_id == asked and item.source == "retro"
    assert again.store.list_retro_pending() == []


def test_a_feeds_hunt_survives_a_crash(store_url, make_harness, monkeypatch, tmp_path):
    """A partner feed's pages committed, then the server died before queueing
    the hunt: the restarted server queues it (trigger "feed")."""
    from tests.test_exchange import SETTINGS

    settings = dataclasses.replace(SETTINGS, file_dir=str(tmp_path))
    config = {"exchange": settings, "retro_poll_seconds": 0.2}
    h = make_harness(store_url, **config)
    m, m_md = h.stubs("matcher")
    known = hashlib.sha256(b"crash-feed").digest()
    near = bytes([known[0] ^ 0x01]) + known[1:]
    asked = m.matcher.Match(
        pb.MatchRequest(signal=pb.SignalValue(signal_type="pdq", value=near.hex())), metadata=m_md
    )
    assert asked.decision == pb.ALLOW
    ops, op_md = h.stubs("operator")
    ops.curation.CreateSet(pb.CreateSetRequest(name="partners"), metadata=op_md)
    listing = tmp_path / "list.txt"
    listing.write_text(f"pdq {known.hex()}\n")
    ops.exchange.AddFeed(
        pb.AddFeedRequest(
            name="gifct",
            api="file",
            set="partners",
            options={"path": str(listing)},
            every_seconds=60,
        ),
        metadata=op_md,
    )
    _crash_before_queueing(h.core, monkeypatch)
    done = list(ops.exchange.FetchFeed(pb.FetchFeedRequest(name="gifct"), metadata=op_md))[-1]
    assert done.added == 1
    assert h.core.store.list_retro_runs() == []
    make_harness.stop(h)

    again = make_harness(store_url, **config)
    ops, op_md = again.stubs("operator")
    (run,) = _wait_runs(ops, op_md, seconds=60)
    assert (run.trigger, run.state, run.hits) == ("feed", "done", 1)
    rev, rev_md = again.stubs("reviewer")
    assert [i.request_id for i in _retro_items(rev, rev_md)] == [asked.request_id]


def test_a_hit_committed_without_its_history_record_gets_it_on_resume(
    store_url, make_core, monkeypatch
):
    """The hit and its review item are committed, then the server dies
    before the hit's record in the chained history is written: the resumed
    run writes it (once); another run finding the same hit writes nothing."""
    from hashsvc.core import retro
    from hashsvc.core.retro import record_retro_match
    from hashsvc.matching.matcher import Match

    monkeypatch.setattr(retro.RetroHunt, "_work", lambda self: None)  # the test claims
    core = make_core(store_url, retro_window=0)  # no triggered runs
    known = bytes(range(32))
    _history_upload(core.store, Signal("pdq", known, 90), 0.5, request_id="up-1")
    core.curation.create_set("s")
    entry = core.curation.add_entry("s", "e", {}, "op", signal=("pdq", known.hex(), None))
    since = to_micros(datetime.now(UTC) - timedelta(days=1))
    core.store.create_retro_run("manual", "op", None, [entry.id], since)
    core.store.create_retro_run("manual", "op", None, [entry.id], since)
    run, other = core.store.claim_retro_run(60), core.store.claim_retro_run(60)
    (upload,) = core.store.history_uploads(0, run.last_history_id, 10)
    sig = Signal("pdq", known, 90)
    hit = Match(entry.set_id, "s", entry.id, "e", "pdq", 0, {}, "block", "", "")

    class Died:
        def record_retro_match(self, **kwargs):
            raise RuntimeError("killed before the history record")

    with pytest.raises(RuntimeError):
        record_retro_match(core.store, Died(), run, upload, [sig], hit)

    def records():
        found = core.store.query_history(HistoryFilter(), 0, 1000)
        return [r for r in found if r.rpc == "RetroMatch"]

    assert records() == []
    assert record_retro_match(core.store, core.audit, other, upload, [sig], hit) is None
    assert records() == []  # not another run's to write
    review_id = record_retro_match(core.store, core.audit, run, upload, [sig], hit)
    assert review_id is not None
    assert record_retro_match(core.store, core.audit, run, upload, [sig], hit) is None
    (record,) = records()
    assert record.detail["review_id"] == review_id and record.detail["request_id"] == "up-1"
    assert len(core.store.retro_matches_of(run.id)) == 1
    assert core.store.get_review_item(review_id).source == "retro"


def test_a_hunt_cut_by_the_store_closing_at_stop_is_not_failed(store_url, make_core, monkeypatch):
    """A step still running when the server closes its store (stop() waits a
    bounded time) fails on the closed store: the run is left at its
    checkpoint for the next server, never marked failed (a failed run would
    never look at those uploads again)."""
    from hashsvc.core import retro

    started = threading.Event()

    def slow_scan(self, run):
        started.set()
        self._stopping.wait(30)
        raise RuntimeError("Cannot operate on a closed database.")

    monkeypatch.setattr(retro.RetroHunt, "scan", slow_scan)
    core = make_core(store_url, retro_poll_seconds=0.2)
    known = bytes(range(32))
    _history_upload(core.store, Signal("pdq", known, 90), 0.5, request_id="up-1")
    core.curation.create_set("s")
    core.curation.add_entry("s", "e", {}, "op", signal=("pdq", known.hex(), None))
    assert started.wait(30)
    make_core.stop(core)
    probe = open_store(store_url)
    try:
        (run,) = probe.list_retro_runs()
    finally:
        probe.close()
    assert run.state in ("running", "queued"), (run.state, run.error)


def test_a_pending_hunt_queued_late_looks_back_from_when_its_entries_came(store_url, make_core):
    """A load's pending hunt queued two days after the load (its server died,
    the hold lapsed): its window ends when the entries came, so an upload
    made just before them is found, not cut off by the late start."""
    core = make_core(store_url, retro_window=0)  # nothing triggered: this test queues
    known = bytes(range(32))
    _history_upload(core.store, Signal("pdq", known, 90), 24 * 3.5, request_id="early")
    core.curation.create_set("s")
    set_id = core.store.get_set("s").id
    core.curation.add_entry("s", "e", {}, "op", signal=("pdq", known.hex(), None))
    core.retro.set_window("s", 3 * 24 * 3600)  # after the add: it queued nothing
    assert core.store.list_retro_runs() == []
    loaded_at = datetime.now(UTC) - timedelta(days=2)
    pending = core.store.add_retro_pending(set_id, to_micros(loaded_at), "load", "op")
    core.retro.queue_pending(pending)
    (run,) = core.store.list_retro_runs()
    assert run.since <= datetime.now(UTC) - timedelta(days=4.9)
    deadline = time.monotonic() + 30
    while core.store.get_retro_run(run.id).state != "done" and time.monotonic() < deadline:
        time.sleep(0.1)
    done = core.store.get_retro_run(run.id)
    assert done.state == "done" and done.hits == 1


def test_records_edited_in_the_database_are_skipped_not_a_failed_hunt(store_url, make_core):
    """Someone with database access plants history records a hunt cannot read
    (not JSON, not hex, not a list): the hunt skips them and still finds the
    real copy; one planted record cannot stop every hunt that covers it
    (`history verify` reports the edit)."""
    from tests.test_history_trust import _tamper

    core = make_core(store_url, retro_poll_seconds=0.2)
    known = bytes(range(32))
    near = bytes([known[0] ^ 0x03]) + known[1:]
    for request_id in ("bad-json", "bad-hex", "bad-shape", "good"):
        _history_upload(core.store, Signal("pdq", near, 90), 1.0, request_id=request_id)
    planted = {
        "bad-json": "not json",
        "bad-hex": json.dumps([{"signal_type": "pdq", "value": "zz" * 32, "quality": 90}]),
        "bad-shape": json.dumps({"signal_type": "pdq"}),
    }
    _tamper(
        store_url,
        *(
            f"UPDATE match_history SET query_signals = '{text}' WHERE request_id = '{rid}'"
            for rid, text in planted.items()
        ),
    )
    core.curation.create_set("s")
    core.curation.add_entry("s", "e", {}, "op", signal=("pdq", known.hex(), None))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        runs = core.store.list_retro_runs()
        if runs and runs[0].state not in ("queued", "running"):
            break
        time.sleep(0.1)
    (run,) = core.store.list_retro_runs()
    assert (run.state, run.hits, run.error) == ("done", 1, "")
    (hit,) = core.store.retro_matches_of(run.id)
    assert hit[1] == "good"


def test_resuming_a_failed_run_counts_against_the_open_runs_limit(
    store_url, make_core, monkeypatch
):
    """`retro run --resume` queues a run as a run by hand does: refused
    RESOURCE_EXHAUSTED while retro_max_open_runs are queued or running."""
    from hashdb.retro_sql import FAILED
    from hashsvc.base.errors import TooLarge

    core = make_core(store_url, retro_window=0, retro_max_open_runs=2)
    since = to_micros(datetime.now(UTC) - timedelta(days=1))
    run = core.store.create_retro_run("manual", "op", None, [1], since, state="skipped")
    assert core.store.finish_retro_run(run.id, FAILED, "scheduler unreachable", owner=None)
    monkeypatch.setattr(core.store, "count_open_retro_runs", lambda: 2)
    with pytest.raises(TooLarge, match="retro_max_open_runs"):
        core.retro.resume_run(run.id)
    assert core.store.get_retro_run(run.id).state == FAILED
    monkeypatch.setattr(core.store, "count_open_retro_runs", lambda: 1)
    assert core.retro.resume_run(run.id).state in ("queued", "running", "done")


def _finished_run(core, seconds: float = 30):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        runs = core.store.list_retro_runs()
        if runs and runs[0].state not in OPEN:
            return runs[0]
        time.sleep(0.1)
    raise AssertionError(f"retro run still open after {seconds} s")


def _tamper_views(store_url: str, *statements: str) -> None:
    """What someone with database access does to the retro-hunt's views
    table: switch its append-only triggers off, then rewrite."""
    tamper(store_url, ("match_history_views",), *statements)


def test_records_without_packed_views_are_hunted_from_their_text(store_url, make_core):
    """Records without packed views (written before the views table, or by
    an older server: the store's row has views NULL) are read from their
    text, beside packed ones, in one hunt: both copies found, nothing else;
    the history still verifies."""
    core = make_core(store_url, retro_poll_seconds=0.2)
    known = bytes(range(32))
    near = bytes([known[0] ^ 0x03]) + known[1:]
    for i in range(6):
        other = Signal("pdq", hashlib.sha256(b"%d" % i).digest(), 90)
        _history_upload(core.store, other, 1.0, request_id=f"other-{i}")
    _history_upload(core.store, Signal("pdq", near, 90), 1.0, request_id="old-copy")
    _history_upload(core.store, Signal("pdq", near, 90), 1.0, request_id="packed-copy")
    _tamper_views(
        store_url,
        "UPDATE match_history_views SET views = NULL WHERE history_id IN (SELECT id FROM"
        " match_history WHERE request_id = 'old-copy' OR request_id LIKE 'other-%')",
    )
    last = core.store.last_history_id()
    assert sum(row[2] is None for row in core.store.history_pdq_views(0, last, 100)) == 7
    core.curation.create_set("s")
    core.curation.add_entry("s", "e", {}, "op", signal=("pdq", known.hex(), None))
    run = _finished_run(core)
    assert (run.state, run.hits) == ("done", 2)
    assert sorted(hit[1] for hit in core.store.retro_matches_of(run.id)) == [
        "old-copy",
        "packed-copy",
    ]
    assert core.store.verify_history().problems == []


def test_packed_views_edited_in_the_database_fail_verify(store_url, make_core):
    """The packed views are derived from the chained signals text: someone
    with database access who rewrites, empties or deletes an upload's views
    row, or moves its time (to hide the upload from retro-hunts), is
    reported by `history verify`; the append-only triggers refuse those
    edits; a blocked record has no views row (not hunted)."""
    core = make_core(store_url, retro_window=0)
    known = bytes(range(32))
    ids = []
    for i in range(6):
        _history_upload(core.store, Signal("pdq", known, 90), 1.0, request_id=f"up-{i}")
        ids.append(core.store.last_history_id())
    core.store.record_match(
        HistoryRecord(
            request_id="blocked",
            time=datetime.now(UTC),
            caller="pipeline",
            rpc="Match",
            media_type="image",
            decision="block",
            status="OK",
            query_signals=[history_signal_json(Signal("pdq", known, 90))],
        )
    )
    blocked = core.store.last_history_id()
    assert [row[0] for row in core.store.history_pdq_views(0, blocked, 100)] == ids
    assert core.store.verify_history().problems == []
    sqlite = store_url.startswith("sqlite")
    zeros = "x'" + "00" * 32 + "'" if sqlite else "'\\x" + "00" * 32 + "'::bytea"
    empty = "x''" if sqlite else "''::bytea"
    refused = [
        f"UPDATE match_history_views SET views = {zeros} WHERE history_id = {ids[0]}",
        f"UPDATE match_history_views SET views = NULL WHERE history_id = {ids[0]}",
        f"UPDATE match_history_views SET time = 0 WHERE history_id = {ids[0]}",
        f"DELETE FROM match_history_views WHERE history_id = {ids[0]}",
    ]
    for sql in refused:
        if sqlite:
            raw = sqlite3.connect(store_url[len("sqlite:///") :])
            with pytest.raises(sqlite3.DatabaseError, match="append-only"):
                raw.execute(sql)
            raw.close()
        else:
            with (
                psycopg.connect(store_url) as raw,
                pytest.raises(psycopg.Error, match="append-only"),
            ):
                raw.execute(sql)
    _tamper_views(
        store_url,
        f"UPDATE match_history_views SET views = {zeros} WHERE history_id = {ids[1]}",
        f"UPDATE match_history_views SET views = {empty} WHERE history_id = {ids[2]}",
        f"DELETE FROM match_history_views WHERE history_id = {ids[3]}",
        f"UPDATE match_history_views SET time = 0 WHERE history_id = {ids[4]}",
        f"INSERT INTO match_history_views (history_id, time) VALUES ({blocked}, 0)",
    )
    problems = dict(core.store.verify_history().problems)
    assert sorted(problems) == [ids[1], ids[2], ids[3], ids[4], blocked]
    assert "packed PDQ views" in problems[ids[1]] and "packed PDQ views" in problems[ids[2]]
    assert "missing" in problems[ids[3]] and "time" in problems[ids[4]]
    assert "not an allowed upload" in problems[blocked]


def test_prune_drops_the_packed_views(store_url, make_core):
    # Through Core, as `history prune` does: a prune without its PruneHistory
    # record is what verify reports as stripped outside hashsvc.
    core = make_core(store_url, retro_window=0, history_prune_margin_seconds=0)
    known = bytes(range(32))
    for i in range(3):
        _history_upload(core.store, Signal("pdq", known, 90), 1.0, request_id=f"up-{i}")
    last = core.store.last_history_id()
    assert all(row[2] is not None for row in core.store.history_pdq_views(0, last, 10))
    assert core.prune_history("admin", datetime.now(UTC)) == 3
    assert [row[2:] for row in core.store.history_pdq_views(0, last, 10)] == [(None, b"[]")] * 3
    assert core.store.verify_history().problems == []


def test_a_history_written_before_the_views_table_is_hunted_after_migrating(
    store_url, make_core, monkeypatch
):
    """A database whose history was written before match_history_views (by
    a server that packed nothing) is migrated when a server opens it: every
    allowed upload gets its row (views NULL, read from the text), blocked
    ones none; a hunt finds the old copy and a new packed one; the history
    verifies."""
    from hashdb import history_sql, migrations

    at = migrations.SQLITE.index(migrations._HISTORY_VIEWS_SQLITE)
    monkeypatch.setattr(migrations, "SQLITE", migrations.SQLITE[:at])
    monkeypatch.setattr(
        migrations,
        "POSTGRES",
        migrations.POSTGRES[: migrations.POSTGRES.index(migrations._HISTORY_VIEWS_POSTGRES)],
    )
    monkeypatch.setattr(history_sql, "_hunted", lambda rpc, decision: False)  # older server
    known = bytes(range(32))
    near = bytes([known[0] ^ 0x03]) + known[1:]
    old = open_store(store_url)
    _history_upload(old, Signal("pdq", hashlib.sha256(b"x").digest(), 90), 1.0, "old-other")
    _history_upload(old, Signal("pdq", near, 90), 1.0, request_id="old-copy")
    old.record_match(
        HistoryRecord(
            request_id="old-blocked",
            time=datetime.now(UTC),
            caller="pipeline",
            rpc="Match",
            media_type="image",
            decision="block",
            status="OK",
            query_signals=[history_signal_json(Signal("pdq", near, 90))],
        )
    )
    old.close()
    monkeypatch.undo()

    core = make_core(store_url, retro_poll_seconds=0.2)
    _history_upload(core.store, Signal("pdq", near, 90), 1.0, request_id="new-copy")
    rows = core.store.history_pdq_views(0, core.store.last_history_id(), 10)
    assert [(row[2] is None, row[3] is None) for row in rows] == [
        (True, False),
        (True, False),
        (False, True),
    ]
    core.curation.create_set("s")
    core.curation.add_entry("s", "e", {}, "op", signal=("pdq", known.hex(), None))
    run = _finished_run(core)
    assert (run.state, run.hits) == ("done", 2)
    assert sorted(hit[1] for hit in core.store.retro_matches_of(run.id)) == [
        "new-copy",
        "old-copy",
    ]
    assert core.store.verify_history().problems == []


def test_a_run_by_hand_has_the_window_asked_however_slow_its_reads(
    store_url, make_core, monkeypatch
):
    """`retro run --since 1d` showed a window of 86,401 s on a loaded machine:
    the window was measured back from one instant and the run created at
    another, after reads that took over a second."""
    from hashsvc.core import retro
    from hashsvc.core.retro import public_run_json

    monkeypatch.setattr(retro.RetroHunt, "_work", lambda self: None)  # only queued
    core = make_core(store_url, retro_window=0)
    core.curation.create_set("s")
    core.curation.add_entry("s", "e", {}, "op", signal=("pdq", bytes(range(32)).hex(), None))
    reads = core.store.entries_changed_since

    def slow_reads(*args, **kwargs):
        time.sleep(1.3)
        return reads(*args, **kwargs)

    monkeypatch.setattr(core.store, "entries_changed_since", slow_reads)
    run = core.retro.start_run("op", "s", since_seconds=86_400)
    assert public_run_json(run, "s")["window_seconds"] == 86_400
