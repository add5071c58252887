"""A retro-hunt of pictures added by AddEntry (PDQ, md5, sha256, local
features) reads the uploads' packed signals (match_history_views: PDQ views
and the other signals packed beside them), not every record's JSON, and
finds what the parsed text finds, on both stores; records written before
(nothing packed beside the views) are read from their text; the packed
signals edited in the database fail `history verify`."""

from __future__ import annotations

import functools
import hashlib
from datetime import UTC, datetime

from hashdb import HistoryRecord
from hashdb.history_sql import pack_other_signals, unpack_other_signals
from hashsvc.base.signals import Signal
from hashsvc.core.audit import history_signal_json
from hashsvc.core.retro_scan import RetroScanner, parse_signals, scan_batch
from hashsvc_testing.image_media import encode, photo
from tests.test_retro import _finished_run, _tamper_views


@functools.cache
def known_file() -> bytes:
    # read when a test runs, not at import: collection must not need ../shared/vectors
    return encode(photo(1))


FEATURES = bytes(range(200))  # opaque: kept as size and digest unless configured


def _picture(pdq: bytes, data: bytes, keep_features: bool = False) -> list[dict]:
    """A picture upload's query signals as the history keeps them."""
    signals = [Signal("pdq", pdq, 90), Signal("pdq", hashlib.sha256(pdq).digest(), 90, "view1")]
    signals += [
        Signal("md5", hashlib.md5(data).digest()),
        Signal("sha256", hashlib.sha256(data).digest()),
        Signal("local_features", FEATURES),
    ]
    return [history_signal_json(s, keep_opaque=keep_features) for s in signals]


def _upload(store, request_id: str, signals: list[dict]) -> int:
    return store.record_match(
        HistoryRecord(
            request_id=request_id,
            time=datetime.now(UTC),
            caller="pipeline",
            rpc="Match",
            media_type="image",
            decision="allow",
            status="OK",
            query_signals=signals,
        )
    )


def test_packing_other_signals():
    pdq = bytes(range(32))
    signals = _picture(pdq, known_file())
    items = unpack_other_signals(pack_other_signals(signals))
    # md5 and sha256 with their bytes; local features kept as a digest only: none
    assert items == [
        ("md5", hashlib.md5(known_file()).digest()),
        ("sha256", hashlib.sha256(known_file()).digest()),
    ]
    kept = unpack_other_signals(pack_other_signals(_picture(pdq, known_file(), True)))
    assert kept[-1] == ("local_features", b"")  # present: the matcher compares it
    odd = [*signals, {"signal_type": "md5", "value": "zz"}, {"signal_type": "nope", "value": "00"}]
    assert pack_other_signals(odd) == pack_other_signals(signals)
    assert pack_other_signals([s for s in signals if s["signal_type"] == "pdq"]) == b""


def test_a_picture_hunt_reads_packed_signals_and_finds_what_the_text_finds(store_url, make_core):
    core = make_core(store_url, retro_window=0)  # the test scans
    store = core.store
    near = _near_copy(core)
    far = hashlib.sha256(b"far").digest()
    ids = {
        "pdq-copy": _upload(store, "pdq-copy", _picture(near, b"re-encoded")),
        "same-file": _upload(store, "same-file", _picture(far, known_file())),
        "unrelated": _upload(store, "unrelated", _picture(far, b"other")),
        "old-same-file": _upload(store, "old-same-file", _picture(far, known_file())),
        "old-unrelated": _upload(store, "old-unrelated", _picture(far, b"x")),
    }
    # two records as written before the column: nothing packed beside the views
    _tamper_views(
        store_url,
        "UPDATE match_history_views SET others = NULL WHERE history_id IN"
        f" ({ids['old-same-file']}, {ids['old-unrelated']})",
    )
    core.curation.create_set("s")
    entry = core.curation.add_entry("s", "poster", {}, "op", media=known_file())
    last = store.last_history_id()
    rows = store.history_packed_signals(0, last, 100)
    text_read = {row[0] for row in rows if row[4] is not None}
    assert text_read == {ids["old-same-file"], ids["old-unrelated"]}

    (record,) = store.get_entries([entry.id], with_signals=True).values()
    assert {"pdq", "md5", "sha256"} <= {s.kind for s in record.signals}
    scanner = RetroScanner([record], store, core.policy)
    assert not scanner.reads_views()
    packed = scanner.candidate_packed([(r[2], r[3], r[4]) for r in rows])
    # the same records, every one read from its text
    as_text = [(None, None, r[4] or _text(store, r[0])) for r in rows]
    assert scanner.candidate_packed(as_text) == packed
    found = {rows[i][0] for i in packed}
    assert found == {ids["pdq-copy"], ids["same-file"], ids["old-same-file"]}
    step = scan_batch(store, scanner, datetime(2000, 1, 1, tzinfo=UTC), 0, last, 100)
    assert step is not None
    hits = {upload.request_id for upload, _ in step[2]}
    assert hits == {"pdq-copy", "same-file", "old-same-file"}
    assert store.verify_history().problems == []

    # the packed md5 and sha256 dropped (to hide the same file): verify says so
    _tamper_views(
        store_url,
        f"UPDATE match_history_views SET others = NULL WHERE history_id = {ids['unrelated']}",
        f"UPDATE match_history_views SET others = views WHERE history_id = {ids['same-file']}",
    )
    problems = store.verify_history().problems
    assert [p[0] for p in problems] == [ids["same-file"]]
    assert "other than PDQ" in problems[0][1]


def test_an_added_picture_hunts_through_the_service(store_url, make_core, retro_engine):
    """AddEntry of a picture: its run (PDQ, md5, sha256, local features)
    finds the same file and the near copy among unrelated uploads."""
    core = make_core(store_url, retro_poll_seconds=0.2, retro_engine=retro_engine)
    near = _near_copy(core)
    far = hashlib.sha256(b"far").digest()
    _upload(core.store, "pdq-copy", _picture(near, b"re-encoded"))
    _upload(core.store, "same-file", _picture(far, known_file()))
    for i in range(20):
        _upload(core.store, f"other-{i}", _picture(hashlib.sha256(b"%d" % i).digest(), b"%d" % i))
    core.curation.create_set("s")
    core.curation.add_entry("s", "poster", {}, "op", media=known_file())
    run = _finished_run(core, 90)  # a scanning child's start on a loaded machine
    assert (run.state, run.hits) == ("done", 2)
    hits = sorted(hit[1] for hit in core.store.retro_matches_of(run.id))
    assert hits == ["pdq-copy", "same-file"]


def _near_copy(core) -> bytes:
    """The poster's PDQ hash, 2 bits off: a re-encoded copy's."""
    pdq = next(s.value for s in core.hashing.hash_known(known_file()).signals if s.kind == "pdq")
    return bytes([pdq[0] ^ 0x03]) + pdq[1:]


def _text(store, history_id: int) -> bytes:
    (upload,) = store.history_uploads_by_id([history_id])
    assert parse_signals(upload.signals_text)
    return upload.signals_text.encode()
