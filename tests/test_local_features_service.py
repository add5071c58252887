"""The local_features signal through the real service, on both stores: crops
and tilts of a known picture are found by local features with their
evidence in `match --json`; unrelated pictures are allowed; adds and removals
take effect at once, on a second replica too; snapshots, export -> load and
set thresholds work; hostile blobs are INVALID_ARGUMENT where they enter."""

from __future__ import annotations

import contextlib
import io
import json
import struct
import sys
import time

import grpc
import numpy as np
import pytest
from PIL import Image

from hashsvc.client import cli
from hashsvc.media.local_features import decode, encode, extract
from hashsvc.v1 import hashsvc_pb2 as pb
from hashsvc_testing import local_media
from hashsvc_testing.image_media import encode as encode_image
from hashsvc_testing.image_media import flat_image, photo
from hashsvc_testing.vectors import vector
from tests.conftest import _pg_schema
from tests.helpers import match_request

BRIDGE = ("threatexchange", "pdq", "data", "reg-test-input", "dih", "bridge-1-original.jpg")
# PDQ at distance 0 only: whatever these sets find in a transformed copy is
# found by local features (PDQ's own views would find some collages).
PDQ_EXACT_ONLY = ("--block-threshold", "0", "--review-threshold", "0")


def bridge() -> Image.Image:
    return Image.open(vector(*BRIDGE)).convert("RGB")


def crop(img: Image.Image, share: float) -> Image.Image:
    """`share` of each side cut away, most of it from one side (as the bench)."""
    return local_media.crop(img, np.random.default_rng(0), share)


def rotated(img: Image.Image, degrees: float) -> Image.Image:
    """Turned and cropped to the largest rectangle without fill (as the bench)."""
    return local_media.rotate(img, np.random.default_rng(0), degrees)


def jpeg(img: Image.Image, quality: int = 85) -> bytes:
    return encode_image(img, "JPEG", quality=quality)


@pytest.fixture
def run(harness, monkeypatch, capsys):
    monkeypatch.setenv("HASHSVC_SERVER", harness.address)

    def run(*argv, role="admin", stdin: bytes | None = None):
        monkeypatch.setenv("HASHSVC_TOKEN", harness.tokens[role])
        if stdin is not None:
            monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin)))
        code = cli.main([str(a) for a in argv])
        out, err = capsys.readouterr()
        return code, out, err

    return run


def _match(run, tmp_path, name: str, data: bytes) -> dict:
    path = tmp_path / name
    path.write_bytes(data)
    code, out, err = run("match", "--json", path, role="matcher")
    assert code == 0, err
    return json.loads(out)


def _local_hit(row: dict) -> dict:
    hits = [m for m in row["matches"] if m["signal_type"] == "local_features"]
    assert hits, row
    return hits[0]


def test_crops_and_tilts_are_found_with_their_evidence(run, tmp_path):
    known = tmp_path / "poster.jpg"
    known.write_bytes(jpeg(bridge(), 92))
    code, _, err = run("sets", "create", "lf", *PDQ_EXACT_ONLY, role="operator")
    assert code == 0, err
    code, _, err = run("add", "--set", "lf", known, role="operator")
    assert code == 0, err

    copies = {
        "crop20": crop(bridge(), 0.20),
        "rot10": rotated(bridge(), 10),
        "rot3": rotated(bridge(), 3),
    }
    for name, img in copies.items():
        row = _match(run, tmp_path, f"{name}.jpg", jpeg(img))
        assert row["decision"] in ("block", "review"), (name, row)
        hit = _local_hit(row)
        assert (hit["entry"], hit["decision"], hit["distance"]) == (
            "poster.jpg",
            row["decision"],
            0,
        )
        evidence = hit["local_features"]
        assert set(evidence) == {
            "inliers",
            "coverage",
            "query_coverage",
            "scale",
            "angle",
            "agreement",
        }
        assert evidence["inliers"] >= 20 and 0 < evidence["coverage"] <= 1, (name, evidence)
        if name == "rot10":
            assert abs(abs(evidence["angle"]) - 10) < 2, evidence
        if name == "rot3":  # most of the picture, agreeing: blocks
            assert row["decision"] == "block", evidence

    for n in (0, 2, 5, 9):
        row = _match(run, tmp_path, f"other{n}.jpg", jpeg(photo(n)))
        assert row["decision"] == "allow" and row["matches"] == [], row
    # a flat picture has no local features at all: nothing to match on
    assert extract(flat_image(512)) is None
    assert _match(run, tmp_path, "flat.png", encode_image(flat_image(512), "PNG"))["decision"] == (
        "allow"
    )

    # the history keeps the evidence
    code, out, _ = run("history", "--json", role="auditor")
    records = [json.loads(line) for line in out.splitlines()]
    kept = [
        m for r in records for m in r.get("matches", ()) if m["signal_type"] == "local_features"
    ]
    assert kept and set(kept[0]["local_features"]) >= {"inliers", "coverage", "scale"}
    # ...but not the upload's ~18 KB blob (its size and SHA-256 in the store)
    asked = [
        s
        for r in records
        for s in r.get("query_signals", ())
        if s["signal_type"] == "local_features"
    ]
    assert asked and all(s["value"] == "" for s in asked)


def test_a_small_picture_turned_20_degrees_is_found_enlarged_and_others_are_not(run, tmp_path):
    """A 300x169 picture turned 20 degrees and cut to fit is 245x88: ORB's 31 px
    edge bands leave it no signal at its own size. Known and upload are also
    extracted enlarged ("enlarged"), and meet there; other small photos, also
    turned and enlarged, are allowed."""
    known = tmp_path / "small.jpg"
    known.write_bytes(jpeg(photo(6), 92))
    code, _, err = run("sets", "create", "lf", *PDQ_EXACT_ONLY, role="operator")
    assert code == 0, err
    code, _, err = run("add", "--set", "lf", known, role="operator")
    assert code == 0, err
    code, out, err = run("entries", "show", "--set", "lf", "--json", "small.jpg", role="operator")
    assert code == 0, err
    signals = json.loads(out)["signals"]
    stored = [s["variant"] for s in signals if s["signal_type"] == "local_features"]
    assert stored == ["original", "enlarged"]

    turned = rotated(photo(6), 20)
    assert max(turned.size) < 300 and min(turned.size) < 100
    row = _match(run, tmp_path, "turned.jpg", jpeg(turned))
    assert row["decision"] in ("block", "review"), row
    hit = _local_hit(row)
    assert hit["entry"] == "small.jpg"
    assert abs(abs(hit["local_features"]["angle"]) - 20) < 2, hit

    for n in (0, 2, 3, 4, 5, 7, 8, 9):  # the other 300 px photos, whole and turned
        for name, img in (
            (f"other{n}.jpg", photo(n)),
            (f"other{n}-turned.jpg", rotated(photo(n), 20)),
        ):
            row = _match(run, tmp_path, name, jpeg(img))
            assert row["decision"] == "allow" and row["matches"] == [], row


@contextlib.contextmanager
def _fresh_store_url(store_url: str, tmp_path):
    """An empty store of the same implementation as `store_url`."""
    if store_url.startswith("sqlite"):
        yield f"sqlite:///{tmp_path}/partner.db"
        return
    with _pg_schema() as url:
        yield url


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_a_small_picture_exported_and_loaded_keeps_its_enlarged_features(
    fmt, run, tmp_path, store_url, make_harness, monkeypatch
):
    """Export -> load into a fresh server (same store kind) carries every local
    features variant of a small picture ("original" and "enlarged"), so the
    copy turned 20 degrees is found there as on the source: same entry,
    decision and evidence (before this, exports left "enlarged" out)."""
    known = tmp_path / "small.jpg"
    known.write_bytes(jpeg(photo(6), 92))
    assert run("sets", "create", "lf", *PDQ_EXACT_ONLY, role="operator")[0] == 0
    assert run("add", "--set", "lf", known, role="operator")[0] == 0
    turned = jpeg(rotated(photo(6), 20))
    before = _local_hit(_match(run, tmp_path, "turned.jpg", turned))
    assert before["known_variant"] == "enlarged", before
    code, out, err = run("export", "--set", "lf", "--format", fmt, role="operator")
    assert code == 0, err
    export = tmp_path / f"export.{fmt}"
    export.write_text(out, encoding="utf-8")

    with _fresh_store_url(store_url, tmp_path) as partner_url:
        partner = make_harness(partner_url)
        try:
            _check_partner(partner, monkeypatch, export, turned, before)
        finally:
            make_harness.stop(partner)


def _check_partner(partner, monkeypatch, export, turned: bytes, before: dict) -> None:
    monkeypatch.setenv("HASHSVC_SERVER", partner.address)
    monkeypatch.setenv("HASHSVC_TOKEN", partner.tokens["operator"])
    assert cli.main(["sets", "create", "copy", *PDQ_EXACT_ONLY]) == 0
    assert cli.main(["load", "--set", "copy", "--strict", "--quiet", str(export)]) == 0
    stub, md = partner.stubs("operator")
    got = stub.curation.GetEntry(pb.GetEntryRequest(set="copy", name="small.jpg"), metadata=md)
    variants = [s.variant for s in got.signals if s.signal_type == "local_features"]
    assert variants == ["original", "enlarged"]

    stub, md = partner.stubs("matcher")
    resp = stub.matcher.Match(match_request(turned), metadata=md)
    assert pb.Decision.Name(resp.decision).lower() == before["decision"] != "allow"
    hits = [m for m in resp.matches if m.signal_type == "local_features"]
    assert [(m.set, m.entry) for m in hits] == [("copy", "small.jpg")]
    after = hits[0]
    assert after.known_variant == "enlarged"
    assert after.local_features.inliers == before["local_features"]["inliers"]
    assert abs(abs(after.local_features.angle) - 20) < 2

    # "enlarged" goes with local_features only: a PDQ row with it is refused
    bad = export.with_name("bad.jsonl")
    bad.write_text(
        json.dumps({"signal_type": "pdq", "signal_value": "ab" * 32, "variant": "enlarged"}) + "\n"
    )
    assert cli.main(["load", "--set", "copy", "--strict", "--quiet", str(bad)]) != 0


def test_added_matches_at_once_and_removed_stops_at_once(harness, operator, matcher):
    stub, md = operator
    stub.curation.CreateSet(pb.CreateSetRequest(name="s"), metadata=md)
    upload = jpeg(rotated(bridge(), 10))

    def decision() -> str:
        m_stub, m_md = matcher
        resp = m_stub.matcher.Match(match_request(upload), metadata=m_md)
        assert all(
            m.HasField("local_features") == (m.signal_type == "local_features")
            for m in resp.matches
        )
        return pb.Decision.Name(resp.decision)

    assert decision() == "ALLOW"
    stub.curation.AddEntry(
        pb.AddEntryRequest(set="s", name="known", media=pb.Media(content=jpeg(bridge()))),
        metadata=md,
    )
    assert decision() in ("BLOCK", "REVIEW")
    stub.curation.RemoveEntry(pb.RemoveEntryRequest(set="s", name="known"), metadata=md)
    assert decision() == "ALLOW"


def test_a_second_replica_sees_an_added_picture(pg_url, make_harness):
    first = make_harness(pg_url, change_poll_seconds=0.2)
    second = make_harness(pg_url, change_poll_seconds=0.2)
    stub, md = first.stubs("operator")
    stub.curation.CreateSet(pb.CreateSetRequest(name="s"), metadata=md)
    stub.curation.AddEntry(
        pb.AddEntryRequest(set="s", name="known", media=pb.Media(content=jpeg(bridge()))),
        metadata=md,
    )
    m_stub, m_md = second.stubs("matcher")
    upload = match_request(jpeg(rotated(bridge(), 10)))
    deadline = time.monotonic() + 5
    while True:
        resp = m_stub.matcher.Match(upload, metadata=m_md)
        if resp.decision != pb.ALLOW or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert resp.decision != pb.ALLOW
    assert any(m.signal_type == "local_features" for m in resp.matches)
    assert second.core.live.sizes()["local_features"] == 1


def _local_sets(core) -> None:
    core.curation.create_set("s")
    core.curation.add_entry("s", "known", {}, "op", media=jpeg(bridge()))


def test_snapshot_and_restart_keep_matching(tmp_path, make_core):
    from hashsvc.core.core import MatchQuery

    db = f"sqlite:///{tmp_path}/h.db"
    core = make_core(db)
    _local_sets(core)
    make_core.stop(core)  # writes the snapshot
    snapshot = tmp_path / "h.db.index"
    assert (snapshot / "index-local_features.lfi").exists()
    core = make_core(db)
    assert core.live.sizes()["local_features"] == 1
    upload = jpeg(rotated(bridge(), 10))
    assert core.match(MatchQuery(media=upload), caller="t").decision != "allow"
    make_core.stop(core)

    # a damaged feature snapshot is never an empty index: rebuilt from the store
    (snapshot / "index-local_features.lfi").write_bytes(b"garbage")
    core = make_core(db)
    assert core.live.sizes()["local_features"] == 1
    assert core.match(MatchQuery(media=upload), caller="t").decision != "allow"
    make_core.stop(core)
    (snapshot / "index-local_features.lfi").unlink()
    core = make_core(db)
    assert core.match(MatchQuery(media=upload), caller="t").decision != "allow"


def test_a_feature_snapshot_filed_with_another_number_of_words_is_filed_again(tmp_path, make_core):
    """A snapshot written by a version that filed 200 words a picture (the
    default until 2026-12-08) is not loaded as it is: its pictures would score
    against those filed with 400 words afterwards (scores grow with the words
    filed). The service files every picture again from the store."""
    from hashsvc.core.core import MatchQuery
    from hashsvc.index.local_features import DEFAULT_WORDS_PER_PICTURE, FeatureIndex

    db = f"sqlite:///{tmp_path}/h.db"
    core = make_core(db)
    _local_sets(core)
    make_core.stop(core)
    path = tmp_path / "h.db.index" / "index-local_features.lfi"
    older = FeatureIndex(words_per_picture=200)
    older.save(path)  # filed with 200 words, and empty: loaded, it would match nothing
    assert FeatureIndex.load(path).words_per_picture == 200 != DEFAULT_WORDS_PER_PICTURE
    core = make_core(db)
    assert core.live.features.words_per_picture == DEFAULT_WORDS_PER_PICTURE
    assert core.live.sizes()["local_features"] == 1
    upload = jpeg(rotated(bridge(), 10))
    assert core.match(MatchQuery(media=upload), caller="t").decision != "allow"


def test_export_then_load_gives_matchable_entries(run, tmp_path, make_harness, monkeypatch):
    known = tmp_path / "poster.jpg"
    known.write_bytes(jpeg(bridge()))
    run("sets", "create", "src", *PDQ_EXACT_ONLY, role="operator")
    run("add", "--set", "src", known, role="operator")
    exports = {}
    for fmt in ("jsonl", "csv"):
        code, out, err = run("export", "--set", "src", "--format", fmt, role="operator")
        assert code == 0, err
        assert "local_features" in out
        exports[fmt] = tmp_path / f"export.{fmt}"
        exports[fmt].write_text(out, encoding="utf-8")
    # other tools' formats carry only what those tools read
    for fmt in ("hma", "tcap"):
        code, out, err = run("export", "--set", "src", "--format", fmt, role="operator")
        assert code == 0 and "pdq" in out.lower() and "local_features" not in out.lower(), fmt

    # a partner's server loads each export
    for fmt, path in exports.items():
        partner = make_harness(f"sqlite:///{tmp_path}/partner-{fmt}.db")
        monkeypatch.setenv("HASHSVC_SERVER", partner.address)
        monkeypatch.setenv("HASHSVC_TOKEN", partner.tokens["operator"])
        assert cli.main(["sets", "create", "copy", *PDQ_EXACT_ONLY]) == 0
        assert cli.main(["load", "--set", "copy", "--quiet", str(path)]) == 0
        stub, md = partner.stubs("matcher")
        resp = stub.matcher.Match(match_request(jpeg(rotated(bridge(), 10))), metadata=md)
        assert resp.decision != pb.ALLOW, fmt
        found = [(m.set, m.entry) for m in resp.matches if m.signal_type == "local_features"]
        assert found == [("copy", "poster.jpg")], fmt
        make_harness.stop(partner)


def test_set_thresholds_change_decisions(run, tmp_path):
    known = tmp_path / "poster.jpg"
    known.write_bytes(jpeg(bridge()))
    code, out, err = run(
        "sets", "create", "strict", *PDQ_EXACT_ONLY, "--local-block-inliers", "5000",
        "--local-review-inliers", "20", "--local-review-coverage", "0.05", "--json",
        role="operator",
    )  # fmt: skip
    assert code == 0, err
    shown = json.loads(out)["thresholds"]["local_features"]
    assert shown["block_inliers"] == 5000 and shown["review_inliers"] == 20
    assert shown["review_coverage"] == 0.05
    run("add", "--set", "strict", known, role="operator")
    upload = jpeg(rotated(bridge(), 3))
    assert _match(run, tmp_path, "u.jpg", upload)["decision"] == "review"

    code, _, err = run(
        "sets", "update", "strict", "--local-review-inliers", "5000", role="operator"
    )
    assert code == 0, err
    assert _match(run, tmp_path, "u.jpg", upload)["decision"] == "allow"
    code, out, _ = run("sets", "show", "strict", "--json", role="operator")
    kept = json.loads(out)["thresholds"]["local_features"]
    assert (kept["block_inliers"], kept["review_inliers"], kept["review_coverage"]) == (
        5000,
        5000,
        0.05,
    )
    code, _, err = run(
        "sets", "update", "strict", "--local-block-inliers", "40", "--local-review-inliers", "20",
        "--local-block-coverage", "0.1", role="operator",
    )  # fmt: skip
    assert code == 0, err
    assert _match(run, tmp_path, "u.jpg", upload)["decision"] == "block"

    # refused: block less strict than review, coverage outside 0..1, under the floor
    for flags in (
        ("--local-block-inliers", "20", "--local-review-inliers", "30"),
        ("--local-review-coverage", "1.5"),
        ("--local-review-inliers", "2"),
    ):
        code, _, err = run("sets", "update", "strict", *flags, role="operator")
        assert code != 0 and "INVALID_ARGUMENT" in err.upper().replace(" ", "_"), (flags, err)


def _hostile_blobs() -> dict[str, bytes]:
    good = encode(extract(bridge()))
    header = struct.pack("<2sBBHHHB", b"LF", 1, 1, 100, 80, 2000, 32)
    return {
        "truncated": good[:-7],
        "bad magic": b"XX" + good[2:],
        "huge count": header + bytes(16),
        "keypoint outside": _outside(good),
    }


def _outside(good: bytes) -> bytes:
    features = decode(good)
    blob = bytearray(good)
    struct.pack_into("<H", blob, 11, min(65535, features.width * 4 + 40))
    return bytes(blob)


def test_hostile_blobs_are_invalid_argument_by_hash_and_in_bulk(harness, operator, tmp_path, run):
    stub, md = operator
    stub.curation.CreateSet(pb.CreateSetRequest(name="s"), metadata=md)
    for why, blob in _hostile_blobs().items():
        with pytest.raises(grpc.RpcError) as err:
            stub.curation.AddEntry(
                pb.AddEntryRequest(
                    set="s",
                    name=why,
                    signal=pb.SignalValue(signal_type="local_features", value=blob.hex()),
                ),
                metadata=md,
            )
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, why
        assert "local_features" in err.value.details(), (why, err.value.details())
    # an odd number of hex digits, and more than the size cap
    for text in ("abc", "00" * (64 * 1024 + 1)):
        with pytest.raises(grpc.RpcError) as err:
            stub.curation.AddEntry(
                pb.AddEntryRequest(
                    set="s",
                    name="x",
                    signal=pb.SignalValue(signal_type="local_features", value=text),
                ),
                metadata=md,
            )
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    # a good blob by hash is matchable
    good = encode(extract(bridge()))
    stub.curation.AddEntry(
        pb.AddEntryRequest(
            set="s",
            name="by-hash",
            signal=pb.SignalValue(signal_type="local_features", value=good.hex()),
        ),
        metadata=md,
    )
    m_stub, m_md = harness.stubs("matcher")
    resp = m_stub.matcher.Match(match_request(jpeg(crop(bridge(), 0.2))), metadata=m_md)
    assert [m.entry for m in resp.matches if m.signal_type == "local_features"] == ["by-hash"]
    # Match by hash: a good blob finds it, a hostile one is INVALID_ARGUMENT
    by_hash = pb.MatchRequest(signal=pb.SignalValue(signal_type="local_features", value=good.hex()))
    resp = m_stub.matcher.Match(by_hash, metadata=m_md)
    assert [m.entry for m in resp.matches if m.signal_type == "local_features"] == ["by-hash"]
    for why, blob in _hostile_blobs().items():
        bad = pb.MatchRequest(signal=pb.SignalValue(signal_type="local_features", value=blob.hex()))
        with pytest.raises(grpc.RpcError) as err:
            m_stub.matcher.Match(bad, metadata=m_md)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, why

    # in a bulk file: each bad row rejected with its line, the good one loaded
    rows = ["signal_type,signal_value,entry"]
    rows += [
        f"local_features,{blob.hex()},bad-{n}" for n, blob in enumerate(_hostile_blobs().values())
    ]
    rows.append(f"local_features,{good.hex()},good")
    path = tmp_path / "rows.csv"
    path.write_text("\n".join(rows) + "\n")
    code, out, _ = run("load", "--set", "s", "--json", "--quiet", path, role="operator")
    summary = json.loads(out)
    assert summary["added"] == 1 and summary["rejected"] == 4, summary
    lines = sorted(r["line"] for r in summary["rejected_rows"])
    assert lines == [2, 3, 4, 5], summary


def test_evidence_thresholds_are_stored_with_the_set_and_old_rows_still_load(store):
    from hashdb import Thresholds

    local = Thresholds(0, 0, block_inliers=60, review_inliers=25, block_coverage=0.3,
                       review_coverage=0.1)  # fmt: skip
    store.create_set("s", "", {}, {"local_features": local, "pdq": Thresholds(20, 40)})
    kept = store.get_set("s").thresholds
    assert kept == {"local_features": local, "pdq": Thresholds(20, 40)}
    # a row written before evidence thresholds existed
    with store._write() as cur:
        cur.execute(
            "UPDATE hash_sets SET thresholds = ? WHERE name = ?"
            if "sqlite" in type(store).__name__.lower()
            else "UPDATE hash_sets SET thresholds = %s WHERE name = %s",
            ('{"pdq": {"block_distance": 10, "review_distance": 30}}', "s"),
        )
    assert store.get_set("s").thresholds == {"pdq": Thresholds(10, 30)}


def test_a_bulk_file_of_blobs_goes_in_messages_bounded_by_bytes(run, tmp_path, monkeypatch):
    from hashsvc.client import cli_bulk

    blob = encode(extract(bridge()))
    rows = ["signal_type,signal_value,entry"]
    rows += [f"local_features,{blob.hex()},poster-{n}" for n in range(20)]
    path = tmp_path / "rows.csv"
    path.write_text("\n".join(rows) + "\n")
    monkeypatch.setattr(cli_bulk, "BATCH_VALUE_BYTES", 4 * len(blob))
    messages = list(cli_bulk.read_rows([str(path)], "csv", cli_bulk.LoadProgress(None, False), []))
    assert [len(m.value) for m in messages] == [4] * 5
    run("sets", "create", "s", role="operator")
    code, out, err = run("load", "--set", "s", "--json", "--quiet", path, role="operator")
    assert code == 0, err
    assert json.loads(out)["added"] == 20


def test_the_same_picture_in_two_sets_is_found_in_both(make_core, tmp_path):
    """Sets share pictures (one poster in a group's set and an outlet's):
    a word every known picture holds is still a vote, however few they are."""
    from hashsvc.core.core import MatchQuery

    core = make_core(f"sqlite:///{tmp_path}/h.db")
    for name in ("group", "outlet"):
        core.curation.create_set(name)
        core.curation.add_entry(name, "poster", {}, "op", media=jpeg(bridge()))
    outcome = core.match(MatchQuery(media=jpeg(rotated(bridge(), 10))), caller="t")
    found = {m.set_name for m in outcome.matches if m.signal_type == "local_features"}
    assert found == {"group", "outlet"}
    # and after one is removed, the other still is
    core.curation.remove_entry("group", "poster")
    outcome = core.match(MatchQuery(media=jpeg(rotated(bridge(), 10))), caller="t")
    assert [m.set_name for m in outcome.matches if m.signal_type == "local_features"] == ["outlet"]


def test_a_false_positive_verdict_lifts_a_local_review_for_that_upload(store_url, make_core):
    """Verdicts treat local features as a perceptual signal: a reviewer's
    false positive turns the same upload's REVIEW into ALLOW; a BLOCK stays."""
    from hashdb import ReviewFilter, Thresholds
    from hashsvc.core.core import MatchQuery

    core = make_core(store_url)
    # this set never blocks on local features: the crop is a REVIEW
    never_blocks = Thresholds(
        0, 0, block_inliers=5000, review_inliers=16, block_coverage=0.25, review_coverage=0.15
    )
    core.curation.create_set(
        "s", thresholds={"pdq": Thresholds(0, 0), "local_features": never_blocks}
    )
    core.curation.add_entry("s", "poster", {}, "op", media=jpeg(bridge()))
    upload = jpeg(crop(bridge(), 0.2))
    first = core.match(MatchQuery(media=upload), caller="pipeline")
    assert first.decision == "review"
    assert first.matches[0].signal_type == "local_features"
    item = core.review.claim("rev", None, ReviewFilter())
    assert any(s["signal_type"] == "local_features" and s["value"] for s in item.query_signals)
    core.review.resolve("rev", item.id, "false_positive", "a different bridge")
    again = core.match(MatchQuery(media=upload), caller="pipeline")
    assert again.decision == "allow"
    assert "judged a false positive" in again.matches[0].reason
    # once the set blocks on that evidence, the verdict lifts nothing
    core.curation.update_set("s", thresholds={"local_features": Thresholds(0, 0, 30, 16, 0.1, 0.1)})
    assert core.match(MatchQuery(media=upload), caller="pipeline").decision == "block"


def test_collage_tiles_feeds_and_large_edits_are_found_hard_negatives_are_not(run, tmp_path):
    """Issue 18's transform families through the service: a picture as one tile of
    a 3x3 collage and in a feed screenshot (found by the tile's own signal,
    hashsvc/media/local_regions.py), a 30% crop and a 20-degree tilt; and
    collages, templates, text and pages of other pictures are allowed."""
    known = tmp_path / "poster.jpg"
    known.write_bytes(jpeg(bridge(), 92))
    code, _, err = run("sets", "create", "lf", *PDQ_EXACT_ONLY, role="operator")
    assert code == 0, err
    code, _, err = run("add", "--set", "lf", known, role="operator")
    assert code == 0, err
    others = [photo(n) for n in range(1, 10)]
    rng = np.random.default_rng(7)
    copies = {
        "collage3x3": (local_media.collage(bridge(), rng, 3, others)[0], "tile:"),
        "feed": (local_media.screenshot_grid(bridge(), rng, others)[0], "tile:"),
        "crop30": (crop(bridge(), 0.30), "original"),
        # turned the other way (seed 0) the 1466 x 534 strip left of this wide
        # picture keeps 23 inliers at agreement 0.20: below review (README)
        "rot20": (local_media.rotate(bridge(), np.random.default_rng(2), 20), "original"),
    }
    for name, (img, variant) in copies.items():
        row = _match(run, tmp_path, f"{name}.jpg", jpeg(img))
        assert row["decision"] in ("block", "review"), (name, row)
        hit = _local_hit(row)
        assert hit["entry"] == "poster.jpg" and hit["query_variant"].startswith(variant), hit

    hard = {
        "collage_of_others": local_media.collage(photo(11), rng, 3, others)[0],
        "template": local_media.logo_template(photo(12)),
        "text": local_media.text_screenshot("share before they delete it " * 20, arabic=False),
        "page": local_media.document_page(3),
    }
    for name, img in hard.items():
        row = _match(run, tmp_path, f"{name}.jpg", jpeg(img))
        assert row["decision"] == "allow" and row["matches"] == [], (name, row)


def test_small_pictures_as_tiles_of_jpeg_collages_are_found(run, tmp_path):
    """Issue 18's tiles, through the service on both stores: a 300 x 168
    picture as one tile of a JPEG 3x3 collage (85 px high in the reduced decode
    the tiles are searched in: never cut before) and of a feed screenshot is
    found by its tile; a collage of other pictures stays allowed."""
    small = photo(5)
    assert small.size == (300, 168)
    known = tmp_path / "small.jpg"
    known.write_bytes(jpeg(small, 92))
    code, _, err = run("sets", "create", "lf", *PDQ_EXACT_ONLY, role="operator")
    assert code == 0, err
    code, _, err = run("add", "--set", "lf", known, role="operator")
    assert code == 0, err
    others = [photo(n) for n in range(10) if n != 5]
    copies = {
        "collage3x3": local_media.collage(small, np.random.default_rng(5), 3, others)[0],
        "feed": local_media.screenshot_grid(small, np.random.default_rng(5), others)[0],
    }
    for name, img in copies.items():
        row = _match(run, tmp_path, f"{name}.jpg", jpeg(img))
        assert row["decision"] == "block", (name, row)
        hit = _local_hit(row)
        assert hit["entry"] == "small.jpg" and hit["query_variant"].startswith("tile:"), hit
    rng = np.random.default_rng(6)
    others_only = local_media.collage(photo(1), rng, 3, [photo(n) for n in (0, 2, 3, 4, 6, 7)])[0]
    row = _match(run, tmp_path, "others.jpg", jpeg(others_only))
    assert row["decision"] == "allow" and row["matches"] == [], row


HAZY_SEA = ("threatexchange", "pdq", "data", "reg-test-input", "labelme-subset", "q0122.jpg")


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_a_hazy_picture_exported_and_loaded_keeps_its_equalised_features(
    fmt, run, tmp_path, store_url, make_harness, monkeypatch
):
    """Review: a low-contrast picture's local features exist only equalised
    ("contrast", "enlarged:contrast": the hazy sea has none as it is), and
    the change that made them says export/load exchanges them; no test did.
    Export -> load into a fresh server: the same variants, and its tilted copy
    found there by them with the same decision and inliers."""
    sea = Image.open(vector(*HAZY_SEA)).convert("RGB")
    known = tmp_path / "sea.jpg"
    known.write_bytes(jpeg(sea, 92))
    assert run("sets", "create", "lf", *PDQ_EXACT_ONLY, role="operator")[0] == 0
    assert run("add", "--set", "lf", known, role="operator")[0] == 0
    tilted = jpeg(rotated(sea, 10))
    before = _local_hit(_match(run, tmp_path, "tilted.jpg", tilted))
    assert "contrast" in before["known_variant"], before
    code, out, err = run("export", "--set", "lf", "--format", fmt, role="operator")
    assert code == 0, err
    export = tmp_path / f"export.{fmt}"
    export.write_text(out, encoding="utf-8")

    with _fresh_store_url(store_url, tmp_path) as partner_url:
        partner = make_harness(partner_url)
        try:
            monkeypatch.setenv("HASHSVC_SERVER", partner.address)
            monkeypatch.setenv("HASHSVC_TOKEN", partner.tokens["operator"])
            assert cli.main(["sets", "create", "copy", *PDQ_EXACT_ONLY]) == 0
            assert cli.main(["load", "--set", "copy", "--strict", "--quiet", str(export)]) == 0
            stub, md = partner.stubs("operator")
            got = stub.curation.GetEntry(
                pb.GetEntryRequest(set="copy", name="sea.jpg"), metadata=md
            )
            variants = [s.variant for s in got.signals if s.signal_type == "local_features"]
            assert variants == ["contrast", "enlarged:contrast"]
            stub, md = partner.stubs("matcher")
            resp = stub.matcher.Match(match_request(tilted), metadata=md)
            assert pb.Decision.Name(resp.decision).lower() == before["decision"] != "allow"
            hits = [m for m in resp.matches if m.signal_type == "local_features"]
            assert [(m.set, m.entry) for m in hits] == [("copy", "sea.jpg")]
            assert hits[0].known_variant == before["known_variant"]
            assert hits[0].local_features.inliers == before["local_features"]["inliers"]
        finally:
            make_harness.stop(partner)
