"""The retro-hunt's fast path (issue 20, Scale): the compiled comparison of
the history's PDQ views with the new hashes (hashsvc/index/flat_scan.py) and
the reading of the views out of the stored text (hashsvc/core/
history_views.py) give exactly what the plain ways give: FAISS's range search
and json.loads. No view within the radius is missed (recall), none beyond it
is reported; a record not written as the history writes it (another key
order, compact JSON, "pdq" elsewhere, a bad value) is parsed, never skipped."""

from __future__ import annotations

import csv
import json
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import faiss
import numpy as np
import pytest

from hashdb import HistoryRecord, HistoryUpload
from hashdb.times import to_micros
from hashsvc.base.signals import PDQ, Signal
from hashsvc.core.audit import history_signal_json
from hashsvc.core.config import MAX_RETRO_THREADS, Config
from hashsvc.core.history_views import read_pdq_views
from hashsvc.core.retro_scan import pdq_views, pdq_views_of_records, pdq_views_of_texts
from hashsvc.index.bound_scan import (
    MAX_GROUPED_RADIUS,
    MIN_BOUND_HASHES,
    BoundScan,
    any_within_scan,
)
from hashsvc.index.flat_scan import FlatScan
from hashsvc_testing.vectors import vector


def _faiss_any_within(hashes: np.ndarray, views: np.ndarray, radius: int) -> np.ndarray:
    index = faiss.IndexBinaryFlat(256)
    index.add(hashes)
    lims, _, _ = index.range_search(views, radius + 1)
    return np.diff(lims) > 0


def _flip(hash_row: np.ndarray, bits: int, rng) -> np.ndarray:
    unpacked = np.unpackbits(hash_row)
    unpacked[rng.choice(256, bits, replace=False)] ^= 1
    return np.packbits(unpacked)


@pytest.mark.parametrize("radius", [0, 31, 56, 64])
def test_flat_scan_finds_exactly_what_faiss_finds(radius):
    """Views planted at every distance 0..80 around the radius from random
    hashes, among random views; a view count that is not a multiple of the
    loop's block of four."""
    rng = np.random.default_rng(radius)
    hashes = rng.integers(0, 256, (3001, 32), dtype=np.uint8)
    views = rng.integers(0, 256, (4003, 32), dtype=np.uint8)
    for n, distance in enumerate(range(81)):
        views[n * 37] = _flip(hashes[(n * 91) % len(hashes)], distance, rng)
    found = FlatScan(hashes).any_within(views, radius)
    expected = _faiss_any_within(hashes, views, radius)
    assert expected.sum() >= radius + 1  # the planted ones within the radius at least
    assert np.array_equal(found, expected)


def test_flat_scan_on_reference_pdq_hashes():
    """Real PDQ hashes (rotations, crops, re-encodings of the same pictures:
    near each other, unlike random ones), each against all the others."""
    with open(vector("threatexchange", "expected_pdq.csv"), newline="") as f:
        hexes = sorted({row["expected_hex"] for row in csv.DictReader(f) if row["expected_hex"]})
    hashes = np.frombuffer(bytes.fromhex("".join(hexes)), dtype=np.uint8).reshape(-1, 32)
    assert len(hashes) > 20
    for held_out in range(len(hashes)):
        others = np.delete(hashes, held_out, axis=0)
        for radius in (31, 56, 90):
            found = FlatScan(others).any_within(hashes[held_out : held_out + 1], radius)
            assert found[0] == _faiss_any_within(others, hashes[held_out : held_out + 1], radius)[0]


@pytest.mark.parametrize("parts", [2, 3])
def test_flat_scan_in_parts_on_threads(parts):
    """retro_threads > 1: the views compared in parts on a pool's threads
    give the same answer, in the views' order."""
    rng = np.random.default_rng(parts)
    hashes = rng.integers(0, 256, (500, 32), dtype=np.uint8)
    views = rng.integers(0, 256, (1003, 32), dtype=np.uint8)
    for n in range(0, 1003, 17):
        views[n] = _flip(hashes[n % 500], n % 70, rng)
    scan = FlatScan(hashes)
    with ThreadPoolExecutor(parts - 1) as pool:
        assert np.array_equal(scan.any_within(views, 56, pool, parts), scan.any_within(views, 56))
    assert np.array_equal(
        scan.any_within(views[:3], 56, pool=None, parts=parts), scan.any_within(views[:3], 56)
    )


@pytest.mark.parametrize("threads", [0, MAX_RETRO_THREADS + 1])
def test_retro_threads_out_of_range_refused(threads):
    with pytest.raises(ValueError, match="retro_threads"):
        Config(retro_threads=threads)


def test_flat_scan_without_views_or_hashes():
    rng = np.random.default_rng(1)
    some = rng.integers(0, 256, (5, 32), dtype=np.uint8)
    assert FlatScan(some).any_within(np.zeros((0, 32), np.uint8), 56).shape == (0,)
    assert not FlatScan(np.zeros((0, 32), np.uint8)).any_within(some, 256).any()
    with pytest.raises(ValueError):
        FlatScan(some).any_within(np.zeros((2, 31), np.uint8), 56)


def _upload(number: int, text: str) -> HistoryUpload:
    return HistoryUpload(number, f"r{number}", datetime.now(UTC), "c", "", "image", text)


def _history_text(views: list[bytes], more: list[dict] = ()) -> str:
    """A record's query_signals as the server writes them."""
    signals = [
        Signal(PDQ.name, v, 90, "original" if k == 0 else f"view{k}", None)
        for k, v in enumerate(views)
    ]
    return json.dumps([history_signal_json(s) for s in signals] + list(more))


def test_views_read_from_history_text_as_parsed():
    """The views read out of the text are those json.loads gives, in order,
    with each one's upload; other kinds and a non-ASCII variant (bytes are not
    characters) in between change nothing."""
    rng = np.random.default_rng(2)
    records = [[rng.bytes(32) for _ in range(n % 19)] for n in range(50)]
    texts = []
    for n, views in enumerate(records):
        more = [{"signal_type": "md5", "value": "ab" * 16, "quality": None, "variant": "été"}]
        texts.append(_history_text(views, more=more if n % 3 else []))
    views, owners, odd = read_pdq_views(texts)
    assert not odd.any()
    expected = [(n, v) for n, record in enumerate(records) for v in record]
    assert [(int(o), bytes(v)) for o, v in zip(owners, views, strict=True)] == expected


@pytest.mark.parametrize(
    "written",
    [
        # another key order (another writer, a JSON column that reorders keys)
        lambda v: json.dumps([{"value": v.hex(), "signal_type": "pdq", "quality": 90}]),
        # compact separators
        lambda v: json.dumps([{"signal_type": "pdq", "value": v.hex()}], separators=(",", ":")),
        # upper-case hex
        lambda v: json.dumps([{"signal_type": "pdq", "value": v.hex().upper()}]),
        # "pdq" elsewhere too (a variant named so)
        lambda v: json.dumps([{"signal_type": "pdq", "value": v.hex(), "variant": "pdq"}]),
    ],
)
def test_record_written_otherwise_is_parsed_not_skipped(written):
    """Someone with DB access (or another version) writes a record another
    way: its view is still compared, through json.loads."""
    rng = np.random.default_rng(3)
    near = rng.bytes(32)
    plain = _history_text([rng.bytes(32) for _ in range(18)])
    uploads = [_upload(1, plain), _upload(2, written(near)), _upload(3, plain)]
    views, owners, unread = pdq_views(uploads)
    assert unread == []
    assert 1 in owners.tolist()
    assert near in [bytes(v) for v, o in zip(views, owners, strict=True) if o == 1]
    assert len(views) == 37


def test_view_that_cannot_be_compared_goes_to_the_matcher():
    """A PDQ value of the wrong length is not dropped: the upload is handed
    to the matcher (which judges it, or fails the run: never a silent ALLOW)."""
    bad = json.dumps([{"signal_type": "pdq", "value": "ab" * 31, "quality": 90}])
    views, owners, unread = pdq_views([_upload(1, bad)])
    assert unread == [0]
    assert len(views) == 0


# -- the bound scan (hashsvc/index/bound_scan.py): the same answers, faster


def _planted(seed: int, hashes: int, views: int, radius: int):
    """Random hashes and views, with views planted at every distance from
    0 to radius + 25 of a hash (both sides of the radius)."""
    rng = np.random.default_rng(seed)
    hash_rows = rng.integers(0, 256, (hashes, 32), dtype=np.uint8)
    view_rows = rng.integers(0, 256, (views, 32), dtype=np.uint8)
    for n, distance in enumerate(range(min(radius + 26, 257))):
        view_rows[(n * 37) % views] = _flip(hash_rows[(n * 91) % hashes], distance, rng)
    return hash_rows, view_rows


@pytest.mark.parametrize(
    "radius, group_size",
    [(0, 16), (31, 16), (32, 16), (40, 16), (41, 6), (56, 6), (56, 8), (57, 6), (64, 4),
     (56, 1), (100, 6), (127, 4), (128, 6), (200, 6), (223, 6), (224, 6)],
)  # fmt: skip
def test_bound_scan_finds_exactly_what_faiss_and_the_flat_scan_find(radius, group_size):
    """At each group size, at and around the radii the choice switches at,
    past the bounds' reach (> 223: every pair): views planted at every
    distance up to 25 past the radius; a hash count that leaves the last
    group and the last block part-filled."""
    hashes, views = _planted(radius * 7 + group_size, 3001, 4003, radius)
    found = BoundScan(hashes, group_size).any_within(views, radius)
    expected = _faiss_any_within(hashes, views, radius)
    assert expected.sum() >= radius + 1
    assert np.array_equal(found, expected)
    assert np.array_equal(found, FlatScan(hashes).any_within(views, radius))


def test_bound_scan_on_clustered_hashes():
    """Hashes that are near each other (as a video's frames are): groups
    whose bytes agree, bounds near the true distance, views just inside and
    just outside the radius of each."""
    rng = np.random.default_rng(11)
    centres = rng.integers(0, 256, (40, 32), dtype=np.uint8)
    hashes = np.array([_flip(centres[k % 40], k % 20, rng) for k in range(2000)])
    views = np.array([_flip(hashes[(k * 13) % 2000], 20 + k % 50, rng) for k in range(3000)])
    for radius in (31, 56, 63):
        expected = _faiss_any_within(hashes, views, radius)
        assert 0 < expected.sum() < len(views)
        for group_size in (4, 6, 16):
            found = BoundScan(hashes, group_size).any_within(views, radius)
            assert np.array_equal(found, expected)


def test_bound_scan_on_reference_pdq_hashes():
    """Real PDQ hashes (transforms of the same pictures), each against all
    the others, at the radii of every group size."""
    with open(vector("threatexchange", "expected_pdq.csv"), newline="") as f:
        hexes = sorted({row["expected_hex"] for row in csv.DictReader(f) if row["expected_hex"]})
    hashes = np.frombuffer(bytes.fromhex("".join(hexes)), dtype=np.uint8).reshape(-1, 32)
    for held_out in range(len(hashes)):
        others = np.delete(hashes, held_out, axis=0)
        view = hashes[held_out : held_out + 1]
        for radius in (31, 40, 56, 64, 90):
            expected = _faiss_any_within(others, view, radius)
            for group_size in (1, 4, 6, 16):
                assert BoundScan(others, group_size).any_within(view, radius)[0] == expected[0]


@pytest.mark.parametrize("parts", [2, 3])
def test_bound_scan_in_parts_on_threads(parts):
    hashes, views = _planted(parts, 700, 1003, 56)
    scan = BoundScan(hashes, 6)
    with ThreadPoolExecutor(parts - 1) as pool:
        assert np.array_equal(scan.any_within(views, 56, pool, parts), scan.any_within(views, 56))
        assert np.array_equal(
            scan.any_within(views[:2], 56, pool, parts), scan.any_within(views[:2], 56)
        )


def test_scan_chosen_by_radius_and_size_answers_alike():
    """The choice (bounds, or every pair for few hashes or a wide radius)
    never changes an answer."""
    for count, radius, kind in [
        (MIN_BOUND_HASHES - 1, 56, FlatScan),
        (MIN_BOUND_HASHES, 56, BoundScan),
        (1000, 31, BoundScan),
        (1000, MAX_GROUPED_RADIUS, BoundScan),
        (1000, MAX_GROUPED_RADIUS + 1, FlatScan),
    ]:
        hashes, views = _planted(count + radius, count, 501, radius)
        scan = any_within_scan(hashes, radius)
        assert isinstance(scan, kind)
        assert np.array_equal(
            scan.any_within(views, radius), _faiss_any_within(hashes, views, radius)
        )


def test_bound_scan_without_views_or_hashes():
    rng = np.random.default_rng(1)
    some = rng.integers(0, 256, (5, 32), dtype=np.uint8)
    assert BoundScan(some).any_within(np.zeros((0, 32), np.uint8), 56).shape == (0,)
    assert not BoundScan(np.zeros((0, 32), np.uint8)).any_within(some, 256).any()
    assert BoundScan(some).any_within(some, 0).all()
    with pytest.raises(ValueError):
        BoundScan(some).any_within(np.zeros((2, 31), np.uint8), 56)
    with pytest.raises(ValueError, match="group_size"):
        BoundScan(some, 0)


# -- what a hunt reads of the history, in both stores


def test_history_pdq_views_are_the_records_history_uploads_gives(store):
    """The scan's lean reading gives the records history_uploads gives (only
    allowed Match records, in id order, within the ids asked), their times,
    and their PDQ views packed (n x 32 bytes, in order; no text); a record
    whose PDQ value is not 32 bytes is not packed: its signals text comes
    instead, as UTF-8 bytes (a non-ASCII variant: bytes are not characters);
    the candidates read whole are those records."""
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    rng = np.random.default_rng(5)
    ids = []
    for i in range(12):
        signals = [
            {"signal_type": "pdq", "value": rng.bytes(32).hex(), "quality": 90, "variant": v}
            for v in ("original", "région", "view2")
        ]
        if i == 6:
            signals[1]["value"] = rng.bytes(31).hex()
        record = HistoryRecord(
            request_id=f"r{i}",
            time=t0 + timedelta(minutes=i),
            caller="c",
            rpc="Match" if i != 4 else "AddEntry",
            media_type="image",
            decision="block" if i == 3 else "allow",
            status="OK",
            query_signals=signals,
        )
        ids.append(store.record_match(record))
    whole = store.history_uploads(ids[0], ids[10], 100)
    lean = store.history_pdq_views(ids[0], ids[10], 100)
    assert [u.id for u in whole] == [row[0] for row in lean]
    assert [u.request_id for u in whole] == ["r1", "r2", "r5", "r6", "r7", "r8", "r9", "r10"]
    for upload, (_, micros, packed, text) in zip(whole, lean, strict=True):
        assert micros == to_micros(upload.time)
        if upload.request_id == "r6":
            assert packed is None and text == upload.signals_text.encode()
            continue
        assert text is None
        assert bytes(packed) == b"".join(bytes.fromhex(s["value"]) for s in upload.query_signals)
    assert store.history_pdq_views(ids[0], ids[10], 3) == lean[:3]
    # the scan reads the packed views as the texts would give them, and
    # sends the unpackable record to the matcher whole (one of its views
    # cannot be compared here; its other two are compared all the same)
    views, owners, unread = pdq_views_of_records([(row[2], row[3]) for row in lean])
    text_views, text_owners, text_unread = pdq_views_of_texts([u.signals_text for u in whole])
    assert unread == text_unread == [3] and len(views) == 3 * 7 + 2
    order, text_order = np.lexsort(views.T[::-1]), np.lexsort(text_views.T[::-1])
    assert (views[order] == text_views[text_order]).all()
    assert (owners[order] == text_owners[text_order]).all()
    # every record packed (a step's usual case, read in fewer passes): the same
    packed = [(row[2], row[3]) for row in lean if row[2] is not None]
    views, owners, unread = pdq_views_of_records(packed)
    texts = [u.signals_text for u in whole if u.request_id != "r6"]
    text_views, text_owners, _ = pdq_views_of_texts(texts)
    assert unread == [] and (views == text_views).all() and (owners == text_owners).all()
    # a packed value that is not whole views: its upload goes to the matcher
    views, owners, unread = pdq_views_of_records([packed[0], (b"x" * 33, None), packed[1]])
    assert unread == [1] and len(views) == 6 and sorted(set(owners.tolist())) == [0, 2]
    asked = [ids[2], ids[3], ids[4], ids[9], ids[2]]  # a block, an AddEntry, twice one
    assert store.history_uploads_by_id(asked) == [u for u in whole if u.id in (ids[2], ids[9])]
    assert store.history_uploads_by_id([]) == []
