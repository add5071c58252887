"""The outbox's MAC covers each event's place, on both stores: with the
history key, an event moved to another seq, swapped with another, or copied
to replay it (a new seq, or left for the sequencer to number) no longer
verifies, so it is never sent or streamed; webhooks and Subscribe carry on
with the genuine ones. Rows written before the MAC covered their place stay
readable and verified (the migration's watermark, signed by the first store
opened with the key); copies of them, or a watermark moved, do not verify."""

from __future__ import annotations

import json

import pytest

from hashdb import migrations, open_store
from hashdb.outbox_sql import _mac
from hashsvc.core import events
from hashsvc.core.core import Core
from hashsvc_testing.store_tamper import store_before

KEY = b"k" * 32
COPY_COLUMNS = "type, created_at, set_names, body, mac, seq_mac, mac_format"


@pytest.fixture
def keyed_core(store_url, make_core, tmp_path) -> Core:
    key = tmp_path / "history.key"
    key.write_bytes(KEY)
    return make_core(
        store_url,
        history_key_file=str(key),
        history_checkpoint_file=str(tmp_path / "checkpoints.jsonl"),
    )


def _emit(core: Core, *refs: str) -> None:
    for ref in refs:
        events.emit(core.store, "match.block", {"decision": "block", "request_id": ref})


def _seen(core: Core) -> list[tuple[int, str, bool | None]]:
    """(seq, request id, authentic) of every event, as the deliverers read them."""
    return [(e.id, e.body["request_id"], e.authentic) for e in core.store.events_after(0, 100)]


def _streamed(core: Core) -> list[str]:
    """What Events/Subscribe passes on (core.event_feed, stop at the end)."""
    return [e.body["request_id"] for e in core.event_feed.subscribe(1, (), True, lambda: True)]


def _sql(core: Core, *statements: str) -> None:
    with core.store._write() as cur:  # someone with database access, not the key
        for sql in statements:
            cur.execute(sql)


def test_reordered_events_do_not_verify(keyed_core):
    _emit(keyed_core, "a", "b", "c")
    assert _seen(keyed_core) == [(1, "a", True), (2, "b", True), (3, "c", True)]
    _sql(
        keyed_core,
        "UPDATE event_outbox SET seq = -1 WHERE seq = 1",
        "UPDATE event_outbox SET seq = 1 WHERE seq = 2",
        "UPDATE event_outbox SET seq = 2 WHERE seq = -1",
    )
    assert _seen(keyed_core) == [(1, "b", False), (2, "a", False), (3, "c", True)]
    assert _streamed(keyed_core) == ["c"]


def test_swapped_bodies_do_not_verify(keyed_core):
    _emit(keyed_core, "a", "b")
    assert _seen(keyed_core) == [(1, "a", True), (2, "b", True)]  # numbered (PostgreSQL)
    _sql(
        keyed_core,
        "UPDATE event_outbox SET body = (SELECT body FROM event_outbox WHERE seq = 2),"
        " mac = (SELECT mac FROM event_outbox WHERE seq = 2) WHERE seq = 1",
    )
    assert _seen(keyed_core) == [(1, "b", False), (2, "b", True)]


def test_replayed_events_do_not_verify(keyed_core):
    """A genuine row copied, MACs and all, to the next seq; and (the
    sequencer's turn on PostgreSQL) copied without a seq: neither verifies,
    and later genuine events still do."""
    _emit(keyed_core, "a")
    assert _seen(keyed_core) == [(1, "a", True)]
    _sql(
        keyed_core,
        f"INSERT INTO event_outbox (seq, {COPY_COLUMNS}) SELECT 2, {COPY_COLUMNS}"
        " FROM event_outbox WHERE seq = 1",
    )
    if not keyed_core.store._sequence_at_insert:  # PostgreSQL: the sequencer numbers it
        _sql(
            keyed_core,
            f"INSERT INTO event_outbox ({COPY_COLUMNS}) SELECT {COPY_COLUMNS}"
            " FROM event_outbox WHERE seq = 1",
        )
    _emit(keyed_core, "d")
    seen = _seen(keyed_core)
    assert seen[0] == (1, "a", True) and seen[-1][1:] == ("d", True)
    assert [s for s in seen[1:-1]] and all(s[1:] == ("a", False) for s in seen[1:-1])
    assert _streamed(keyed_core) == ["a", "d"]


def _old_schema_url(store_url: str):
    """The store at the schema before the MAC covered the place, with a
    cursor to write into it as the old server did."""
    return store_before(store_url, migrations._OUTBOX_PLACE)


def _old_row(cur, seq: int, ref: str) -> None:
    fields = ("match.block", 1_000_000 * seq, '["isis"]', json.dumps({"request_id": ref}))
    cur.execute(
        "INSERT INTO event_outbox (seq, type, created_at, set_names, body, mac)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        (seq, *fields, _mac(KEY, fields)),
    )


def _read(store) -> list[tuple[int, str, bool | None]]:
    return [(e.id, e.body["request_id"], e.authentic) for e in store.events_after(0, 100)]


def test_rows_of_the_old_format_stay_verified_and_copies_do_not(store_url):
    conn, cur = _old_schema_url(store_url)
    _old_row(cur, 1, "old-1")
    _old_row(cur, 2, "old-2")
    conn.commit()
    conn.close()
    store = open_store(store_url, history_key=KEY)  # migrates, signs the watermark
    try:
        assert _read(store) == [(1, "old-1", True), (2, "old-2", True)]
        # an old-format copy (someone replaying an old event) is past the watermark
        with store._write() as cur:
            cur.execute(
                f"INSERT INTO event_outbox (seq, {COPY_COLUMNS}) SELECT 3, {COPY_COLUMNS}"
                " FROM event_outbox WHERE seq = 1"
            )
        store.append_events([events.new_event("match.block", {"request_id": "new"})])
        assert _read(store)[2:] == [(3, "old-1", False), (4, "new", True)]
        # the watermark moved up, its MAC cleared to have it signed again
        with store._write() as cur:
            cur.execute("UPDATE event_outbox_legacy SET through_id = 1000, mac = NULL")
    finally:
        store.close()
    store = open_store(store_url, history_key=KEY)
    try:  # not signed again (rows of the new format were): no old row verifies now
        assert [a for _, _, a in _read(store)] == [False, False, False, True]
    finally:
        store.close()
    store = open_store(store_url)  # without the key: nothing is checked (as before)
    try:
        assert [a for _, _, a in _read(store)] == [None] * 4
    finally:
        store.close()
