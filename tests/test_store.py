"""The Store contract, run against SQLite and the real PostgreSQL alike."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import threading
import types
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from hashdb import HistoryFilter, HistoryRecord, Thresholds, open_store
from hashdb.sqlbase import MAX_SIGNALS_PER_ENTRY
from hashsvc.base.errors import AlreadyExists, InvalidArgument, NotFound, Unavailable
from hashsvc.base.signals import Signal
from hashsvc_testing.store_tamper import tamper


def _signals(n: int = 1, seed: int = 0) -> list[Signal]:
    return [Signal("md5", bytes([seed]) * 16)] + [
        Signal("pdq", bytes([seed, i]) * 16, 80 + i, f"v{i}") for i in range(n)
    ]


def test_media_signals_keep_position_and_long_values(store):
    """A video's frames (thousands of signals with a position in seconds) and an
    audio fingerprint (a value far longer than an index row may be)."""
    s = store.create_set("media", "", {}, {})
    frames = [
        Signal("pdq", i.to_bytes(32, "big"), 90, f"frame:{i * 30}", float(i)) for i in range(40_000)
    ]
    fingerprint = Signal("chromaprint", bytes(range(256)) * 200, None, "original", 0.0)
    exact = Signal("sha256", bytes([7]) * 32)
    video = store.add_entry(s.id, "v", {}, "video", [exact, *frames, fingerprint], "op")
    assert len(video.signals) == 40_002
    assert video.signals[1 + 39_999].position == 39_999.0
    assert video.signals[1 + 39_999].variant == "frame:1199970"
    assert video.signals[-1].value == fingerprint.value
    assert store.find_exact("sha256", exact.value) == [(video.id, 0)]
    indexed = list(store.iter_signals(["pdq"]))
    assert len(indexed) == 40_000 and indexed[-1].variant_no == 40_000


def test_set_ids_by_name_and_a_set_record_without_its_count(store):
    """What a history record and a retro-hunt's queueing read of a set: not
    its entry count (a scan of the set's entries)."""
    a = store.create_set("a", "", {}, {})
    b = store.create_set("b", "", {}, {}, allow_list=True)
    store.add_entry(a.id, "e", {}, "image", _signals(), "op")
    assert store.set_ids_by_name(["b", "nope", "a", "a"]) == {"a": a.id, "b": b.id}
    assert store.set_ids_by_name([]) == {}
    counted = store.get_set_by_id(a.id)
    uncounted = store.get_set_by_id(a.id, count_entries=False)
    assert (counted.entry_count, uncounted.entry_count) == (1, -1)
    assert uncounted == dataclasses.replace(counted, entry_count=-1)
    assert store.get_set_by_id(b.id, count_entries=False).allow_list
    assert store.get_set_by_id(99999, count_entries=False) is None


def test_sets(store):
    created = store.create_set("isis", "d", {"group": "ISIS"}, {"pdq": Thresholds(20, 45)})
    assert created.enabled and created.entry_count == 0
    assert store.get_set("isis") == created == store.get_set_by_id(created.id)
    with pytest.raises(AlreadyExists):
        store.create_set("isis", "", {}, {})
    store.create_set("aq", "", {}, {})
    assert [s.name for s in store.list_sets()] == ["aq", "isis"]
    updated = store.update_set(created.id, enabled=False, labels={"group": "IS"})
    assert not updated.enabled and updated.labels == {"group": "IS"}
    assert updated.thresholds == {"pdq": Thresholds(20, 45)} and updated.description == "d"
    assert [s.name for s in store.list_sets(include_disabled=False)] == ["aq"]
    with pytest.raises(NotFound):
        store.update_set(99999, enabled=True)
    assert store.get_set("nope") is None


def test_entries_signals_and_removal(store):
    s = store.create_set("s", "", {}, {})
    a = store.add_entry(s.id, "a", {"k": "v"}, "image", _signals(3, 1), "alice")
    assert [sig.variant for sig in a.signals] == ["original", "v0", "v1", "v2"]
    assert a.signals[1].quality == 80 and a.added_by == "alice" and a.removed_at is None
    with pytest.raises(AlreadyExists):
        store.add_entry(s.id, "a", {}, "image", _signals(1, 2), "alice")
    with pytest.raises(InvalidArgument):
        too_many = [Signal("pdq", bytes(32), 90, "v")] * (MAX_SIGNALS_PER_ENTRY + 1)
        store.add_entry(s.id, "big", {}, "image", too_many, "alice")
    b = store.add_entry(s.id, "b", {}, "image", _signals(1, 4), "bob")
    assert store.get_entry(s.id, "a") == a
    assert store.find_exact("md5", bytes([1]) * 16) == [(a.id, 0)]
    assert store.count_signals() == {"md5": 2, "pdq": 4}
    assert [e.name for e in store.list_entries(s.id, 0, 1)] == ["a"]
    assert [e.name for e in store.list_entries(s.id, a.id, 10)] == ["b"]

    removed = store.remove_entry(s.id, "a")
    assert removed.removed_at is not None
    assert store.get_entry(s.id, "a") is None
    assert store.find_exact("md5", bytes([1]) * 16) == []
    assert store.get_entries([a.id, b.id])[a.id].removed_at is not None
    assert store.get_set("s").entry_count == 1
    with pytest.raises(NotFound):
        store.remove_entry(s.id, "a")
    again = store.add_entry(s.id, "a", {}, "image", _signals(1, 5), "alice")  # name reusable
    assert again.id != a.id


def test_change_feed_and_signal_iteration(store):
    s = store.create_set("s", "", {}, {})
    ids = [store.add_entry(s.id, f"e{i}", {}, "image", _signals(2, i), "x").id for i in range(7)]
    store.remove_entry(s.id, "e3")
    store.update_set(s.id, enabled=False)
    changes = store.changes_since(0)
    assert [c.op for c in changes] == [
        "update_set",
        *["add_entry"] * 7,
        "remove_entry",
        "update_set",
    ]
    assert [c.seq for c in changes] == sorted(c.seq for c in changes)
    assert changes[-2].entry_id == ids[3] and store.current_seq() == changes[-1].seq
    assert store.changes_since(changes[5].seq) == changes[6:]

    store._signal_batch = 2  # several batches, and a removed entry inside one
    got = list(store.iter_signals(["pdq"]))
    want = [(i, no) for i in ids if i != ids[3] for no in (1, 2)]
    assert [(g.entry_id, g.variant_no) for g in got] == want
    assert all(g.kind == "pdq" and len(g.value) == 32 for g in got)
    assert [g.entry_id for g in store.iter_signals(["pdq"], after_entry_id=ids[5])] == [ids[6]] * 2


def test_tokens(store):
    t = store.add_token("pipe", "matcher", "ab" * 32)
    assert store.find_token("ab" * 32) == t and store.find_token("cd" * 32) is None
    revoked = store.revoke_token(t.id)
    assert revoked.revoked_at is not None and store.find_token("ab" * 32).revoked_at
    assert [x.id for x in store.list_tokens()] == [t.id]
    with pytest.raises(NotFound):
        store.revoke_token(424242)


def _record(i: int, when: datetime, decision: str, caller: str, set_ids=()) -> HistoryRecord:
    return HistoryRecord(
        request_id=f"r{i}",
        time=when,
        caller=caller,
        rpc="Match",
        media_type="image",
        decision=decision,
        status="OK",
        query_signals=[{"signal_type": "pdq", "value": "00" * 32, "quality": 90}],
        matches=[{"set_id": sid, "set": f"s{sid}", "entry": "e", "distance": 3} for sid in set_ids],
    )


def test_history_filters_pagination_and_append_only(store, store_url):
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    rows = [
        _record(0, t0, "block", "a", [1, 2]),
        _record(1, t0 + timedelta(hours=1), "allow", "b"),
        _record(2, t0 + timedelta(hours=2), "review", "a", [2]),
        _record(3, t0 + timedelta(hours=3), "block", "b", [1]),
    ]
    ids = [store.record_match(r) for r in rows]
    assert ids == sorted(ids) and store.count_history() == 4
    got = store.query_history(HistoryFilter())
    assert [r.request_id for r in got] == ["r0", "r1", "r2", "r3"]
    assert got[0].time == t0 and got[0].matches == rows[0].matches

    def ids_for(**kw):
        return [r.request_id for r in store.query_history(HistoryFilter(**kw))]

    assert ids_for(decision="block") == ["r0", "r3"]
    assert ids_for(caller="a") == ["r0", "r2"]
    assert ids_for(set_id=2) == ["r0", "r2"]
    assert ids_for(since=t0 + timedelta(hours=1), until=t0 + timedelta(hours=3)) == ["r1", "r2"]
    assert [r.request_id for r in store.query_history(HistoryFilter(), ids[1], 2)] == ["r2", "r3"]

    # The database itself refuses edits and deletions of the history.
    if store_url.startswith("sqlite"):
        conn = sqlite3.connect(store_url[len("sqlite:///") :])
        errors: tuple = (sqlite3.IntegrityError, sqlite3.DatabaseError)
        statements = [
            "UPDATE match_history SET decision = 'allow'",
            "DELETE FROM match_history",
            "DELETE FROM match_history_sets",
        ]
        for sql in statements:
            with pytest.raises(errors, match="append-only"):
                conn.execute(sql)
        conn.close()
    else:
        for sql in (
            "UPDATE match_history SET decision = 'allow'",
            "DELETE FROM match_history",
            "TRUNCATE match_history CASCADE",
        ):
            with (
                psycopg.connect(store_url) as conn,
                pytest.raises(psycopg.Error, match="append-only"),
            ):
                conn.execute(sql)
    assert ids_for(decision="block") == ["r0", "r3"]


def test_migrations_are_idempotent_and_concurrent_opens_are_safe(store_url):
    errors: list[BaseException] = []

    def open_one():
        try:
            open_store(store_url).close()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    s = open_store(store_url)
    s.create_set("after", "", {}, {})
    s.close()
    assert open_store(store_url).get_set("after") is not None


def test_concurrent_writers_all_land(store):
    s = store.create_set("s", "", {}, {})

    def writer(w: int):
        for i in range(10):
            store.add_entry(s.id, f"w{w}-{i}", {}, "image", _signals(1, w), f"w{w}")

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert store.get_set("s").entry_count == 40
    seqs = [c.seq for c in store.changes_since(0)]
    assert len(seqs) == 41 and seqs == sorted(set(seqs))


def _tamper(store_url: str, *statements: str) -> None:
    """Edit the history behind hashsvc's back, as someone with database access
    could: switch the append-only triggers off first."""
    tamper(store_url, ("match_history",), *statements)


def _chain_of(store, n: int) -> list[int]:
    t0 = datetime(2026, 2, 1, tzinfo=UTC)
    return [
        store.record_match(_record(i, t0 + timedelta(minutes=i), "allow", "c")) for i in range(n)
    ]


def test_history_chain_verifies_when_untouched(store):
    _chain_of(store, 5)
    result = store.verify_history()
    assert result.intact and result.records_checked == 5 and result.unchained_records == 0
    assert len(result.head_hash) == 64


def test_history_chain_names_an_edited_record(store, store_url):
    ids = _chain_of(store, 5)
    _tamper(store_url, f"UPDATE match_history SET decision = 'block' WHERE id = {ids[2]}")
    result = store.verify_history()
    assert not result.intact
    assert result.problems == [(ids[2], "record was edited: its hash does not match")]


def test_history_chain_names_where_a_record_was_deleted(store, store_url):
    ids = _chain_of(store, 5)
    _tamper(store_url, f"DELETE FROM match_history WHERE id = {ids[1]}")
    problems = store.verify_history().problems
    assert [record_id for record_id, _ in problems] == [ids[2]]
    assert "deleted" in problems[0][1]


def test_history_chain_names_an_inserted_record(store, store_url):
    ids = _chain_of(store, 3)
    forged = (
        "INSERT INTO match_history (request_id, time, caller, rpc, media_type, decision,"
        " status, error_message, client_ref, media_bytes, query_signals, matches)"
        " VALUES ('forged', 1, 'x', 'Match', 'image', 'allow', 'OK', '', '', 0, '[]', '[]')"
    )
    _tamper(store_url, forged)
    store.record_match(_record(9, datetime(2026, 3, 1, tzinfo=UTC), "allow", "c"))
    problems = store.verify_history().problems
    assert len(problems) == 1 and problems[0][0] > ids[-1]
    assert "no hash" in problems[0][1]


def _forge_from(store_url: str, first_id: int) -> None:
    """What an attacker with database access but no key can do: edit a record
    and recompute an unkeyed chain from there on."""
    from hashdb.history_sql import _CHAINED_FIELDS, _format_3, chain_hash

    if store_url.startswith("sqlite"):
        conn = sqlite3.connect(store_url[len("sqlite:///") :])
        placeholder = "?"
    else:
        conn = psycopg.connect(store_url)
        placeholder = "%s"
    rows = conn.execute(
        f"SELECT id, {_CHAINED_FIELDS}, prev_hash, detail, caller_token_id,"
        " query_signals_sha256 FROM match_history ORDER BY id"
    ).fetchall()
    sets: dict[int, list[int]] = {}
    for history_id, set_id in conn.execute(
        "SELECT history_id, set_id FROM match_history_sets ORDER BY history_id, set_id"
    ).fetchall():
        sets.setdefault(history_id, []).append(set_id)
    prev = ""
    for row in rows:
        history_id, fields = row[0], list(row[1:13])

        def hashed(fields, row=row, history_id=history_id):
            return _format_3(tuple(fields), row[16], row[14], row[15], sets.get(history_id, []))

        if history_id < first_id:
            prev = chain_hash(row[13], hashed(fields), None)  # the attacker's best guess
            continue
        if history_id == first_id:
            fields[5] = "block"  # decision
            # and the retro-hunt's views row of an allowed upload with it
            # (verify reports a blocked record holding one)
            if store_url.startswith("sqlite"):
                conn.execute("DROP TRIGGER IF EXISTS match_history_views_no_delete")
            else:
                conn.execute("ALTER TABLE match_history_views DISABLE TRIGGER USER")
            conn.execute(
                f"DELETE FROM match_history_views WHERE history_id = {placeholder}", (history_id,)
            )
        record_hash = chain_hash(prev, hashed(fields), None)
        conn.execute(
            f"UPDATE match_history SET decision = {placeholder}, prev_hash = {placeholder},"
            f" record_hash = {placeholder} WHERE id = {placeholder}",
            (fields[5], prev, record_hash, history_id),
        )
        prev = record_hash
    conn.commit()
    conn.close()


def test_keyed_history_chain_catches_a_recomputed_forgery(store_url):
    keyed = open_store(store_url, history_key=b"k" * 32)
    try:
        ids = _chain_of(keyed, 4)
        assert keyed.verify_history().intact
        _tamper(store_url)  # triggers off
        _forge_from(store_url, ids[2])
        flagged = {record_id for record_id, _ in keyed.verify_history().problems}
        # every forged record is caught, nothing before the forgery is
        assert flagged == {ids[2], ids[3]}
        # (the same forgery of an unkeyed chain passes: only an anchored head
        # hash would catch it)
    finally:
        keyed.close()
    other_key = open_store(store_url, history_key=b"x" * 32)
    try:
        assert "lacks" in other_key.verify_history().problems[0][1]
    finally:
        other_key.close()


def test_unkeyed_chain_rewrite_changes_the_head_hash(store, store_url):
    """Without a key, a full rewrite of the tail verifies; the head hash that
    `history verify` prints (kept elsewhere) is what shows it."""
    ids = _chain_of(store, 4)
    head_before = store.verify_history().head_hash
    _tamper(store_url)
    _forge_from(store_url, ids[2])
    after = store.verify_history()
    assert after.intact and after.head_hash != head_before


def test_value_index_covers_every_exact_signal_type():
    """Exact types are looked up by value through a partial index (migration
    7); a new exact type without a migration adding it would scan."""
    from hashdb import migrations
    from hashsvc.base.signals import SIGNAL_TYPES

    exact = {t.name for t in SIGNAL_TYPES.values() if not t.perceptual}
    assert exact == set(migrations.EXACT_KINDS)


def _exact_lookup_plan(store_url: str) -> str:
    query = (
        "SELECT s.entry_id FROM entry_signals s WHERE s.kind = 'md5'"
        " AND substr(s.value, 1, 32) = X'01' AND s.value = X'01'"
    )
    if store_url.startswith("sqlite"):
        conn = sqlite3.connect(store_url[len("sqlite:///") :])
        try:
            return str(conn.execute(f"EXPLAIN QUERY PLAN {query}").fetchall())
        finally:
            conn.close()
    with psycopg.connect(store_url) as conn:
        conn.execute("SET enable_seqscan = off")  # a tiny table: scan unless usable
        query = query.replace("X'01'", "'\\x01'::bytea")
        return str(conn.execute(f"EXPLAIN {query}").fetchall())


def test_migrations_7_and_8_on_an_existing_database(store_url, monkeypatch):
    """A database made before migration 7 (PDQ values in the value index)
    opens, is migrated, keeps its entries and finds exact hashes by index;
    on PostgreSQL entries and signals no longer have foreign keys (8)."""
    from hashdb import migrations

    monkeypatch.setattr(migrations, "SQLITE", migrations.SQLITE[:6])
    monkeypatch.setattr(migrations, "POSTGRES", migrations.POSTGRES[:6])
    old = open_store(store_url)
    s = _old_set(old)
    a = _old_entry(old, s.id, "a", _signals(2, 1))
    old.close()
    monkeypatch.undo()

    store = open_store(store_url)
    try:
        assert store.find_exact("md5", bytes([1]) * 16) == [(a, 0)]
        assert store.get_entry(s.id, "a").signals == tuple(_signals(2, 1))
        store.add_entry(s.id, "b", {}, "image", _signals(1, 2), "op")
        assert len(store.find_exact("md5", bytes([2]) * 16)) == 1
    finally:
        store.close()
    assert "entry_signals_value" in _exact_lookup_plan(store_url)
    if store_url.startswith("postgresql"):
        with psycopg.connect(store_url) as conn:
            foreign_keys = conn.execute(
                "SELECT conname FROM pg_constraint WHERE contype = 'f'"
                " AND conrelid IN ('entries'::regclass, 'entry_signals'::regclass)"
            ).fetchall()
        assert foreign_keys == []


def _old_set(store):
    """A set written with the columns every schema has (create_set writes
    the newest ones)."""
    with store._write() as cur:
        cur.execute(
            "INSERT INTO hash_sets (name, created_at, updated_at) VALUES ('s', 0, 0) RETURNING id"
        )
        set_id = cur.fetchone()[0]
    return types.SimpleNamespace(id=set_id)


def _old_entry(store, set_id: int, name: str, signals: list[Signal]) -> int:
    """An entry written with the columns every schema has (add_entry
    writes the newest ones); its id."""
    with store._write() as cur:
        cur.execute(
            "INSERT INTO entries (set_id, name, media_type, created_at, added_by)"
            " VALUES (?, ?, 'image', 0, 'op') RETURNING id",
            (set_id, name),
        )
        entry_id = cur.fetchone()[0]
        for no, sig in enumerate(signals):
            cur.execute(
                "INSERT INTO entry_signals (entry_id, variant_no, kind, variant, value, quality)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (entry_id, no, sig.kind, sig.variant, sig.value, sig.quality),
            )
    return entry_id


def test_migration_9_on_an_existing_database(store_url, monkeypatch):
    """A database of schema 8 with an entry in the old quarantine opens:
    its sets are no review targets, and the old quarantine is an open flood
    alert that ReleaseEntry acknowledges."""
    from hashdb import migrations

    monkeypatch.setattr(migrations, "SQLITE", migrations.SQLITE[:8])
    monkeypatch.setattr(migrations, "POSTGRES", migrations.POSTGRES[:8])
    old = open_store(store_url)
    with old._write() as cur:
        cur.execute(
            "INSERT INTO hash_sets (name, created_at, updated_at, allow_list)"
            " VALUES ('s', 0, 0, ?) RETURNING id",
            (False,),
        )
        set_id = cur.fetchone()[0]
    a = types.SimpleNamespace(id=_old_entry(old, set_id, "a", _signals(2, 1)))
    with old._write() as cur:
        cur.execute(
            "INSERT INTO entry_quarantine (entry_id, since, reason) VALUES (?, 0, 'old')", (a.id,)
        )
    old.close()
    monkeypatch.undo()

    store = open_store(store_url)
    try:
        assert store.get_set("s").review_target is False
        assert store.open_flood_alerts([a.id]) == {a.id: "old"}
        assert store.add_flood_counts({a.id: 3}, 100, 6, 1) == {}  # the alert is open
        assert store.release_entry(a.id) and store.flood_counted_entries() == 0
        assert store.add_flood_counts({a.id: 3}, 100, 6, 1) == {a.id: 3}
        assert store.update_set(set_id, review_target=True).review_target
    finally:
        store.close()


def test_new_sqlite_database_gets_large_pages_and_an_old_one_keeps_its_own(tmp_path):
    from hashdb.sqlite import PAGE_BYTES

    new = open_store(f"sqlite:///{tmp_path}/new.db")
    new.create_set("s", "", {}, {})
    new.close()
    with sqlite3.connect(tmp_path / "new.db") as conn:
        assert conn.execute("PRAGMA page_size").fetchone()[0] == PAGE_BYTES == 16384

    # a database made by an older release (4 KiB pages) opens, migrates and
    # keeps working with its page size
    with sqlite3.connect(tmp_path / "old.db") as conn:
        conn.execute("PRAGMA page_size = 4096")
        conn.execute("CREATE TABLE before_us (x)")
    old = open_store(f"sqlite:///{tmp_path}/old.db")
    set_id = old.create_set("s", "", {}, {}).id
    assert old.get_set("s").id == set_id
    old.close()
    with sqlite3.connect(tmp_path / "old.db") as conn:
        assert conn.execute("PRAGMA page_size").fetchone()[0] == 4096


def test_an_older_server_refuses_a_store_a_newer_one_migrated(store_url, monkeypatch):
    """What an older server writes into a newer schema (outbox events without
    the MAC over their place, history without packed views) would be read as
    forged or skipped: it stops at start instead, saying why."""
    from hashdb import migrations

    open_store(store_url).close()
    monkeypatch.setattr(migrations, "SQLITE", migrations.SQLITE[:-1])
    monkeypatch.setattr(migrations, "POSTGRES", migrations.POSTGRES[:-1])
    with pytest.raises(RuntimeError, match="newer than this server's"):
        open_store(store_url)
    monkeypatch.undo()
    open_store(store_url).close()


def test_a_migration_failing_midway_leaves_nothing_and_says_why(store_url, monkeypatch):
    """A new store's migrations are one transaction (on PostgreSQL sent in
    pipeline mode, whose error arrives after later statements were sent):
    one failing halfway is named in the error, and no table, version or
    schema of the half done stays, so the next start migrates from the
    beginning."""
    from hashdb import migrations

    for dialect in ("SQLITE", "POSTGRES"):
        steps = [list(step) for step in getattr(migrations, dialect)]
        steps[5].insert(1, "CREATE TABLE hash_sets (id INTEGER)")  # one that exists
        monkeypatch.setattr(migrations, dialect, steps)
    with pytest.raises(Unavailable, match="the .*database .*: .*hash_sets.* already exists"):
        open_store(store_url)
    if store_url.startswith("sqlite"):
        path = store_url.removeprefix("sqlite:///")
        with sqlite3.connect(path) as conn:
            tables = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            assert [name for (name,) in tables if not name.startswith("sqlite_")] == []
    else:
        from hashdb.postgres import _schema_from_url

        schema = _schema_from_url(store_url)
        assert schema
        with psycopg.connect(store_url, autocommit=True) as conn:
            found = conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,))
            assert found.fetchone() is None
    monkeypatch.undo()
    store = open_store(store_url)
    store.create_set("after", "", {}, {})
    store.close()


def test_label_sets_migration_keeps_every_entrys_labels(store_url, monkeypatch):
    """A store from before labels were interned (a labels text on every
    entry, a feed's source id inside it) migrates: every entry reads back
    exactly its labels, a load of the same rows finds them unchanged, a
    relabel and a new feed entry are written in the new form and read back,
    and the new entries share their set."""
    from hashdb import migrations
    from hashdb.bulk_sql import EntryUpsert

    monkeypatch.setattr(migrations, "SQLITE", migrations.SQLITE[:-1])
    monkeypatch.setattr(migrations, "POSTGRES", migrations.POSTGRES[:-1])
    old = open_store(store_url)
    s = _old_set(old)
    before = {
        "plain": {},
        "tagged": {"entity": "isis", "note": 'say "x" \\ \u00e9'},
        "feed:1": {"feed": "feed", "ideology": "islamist", "source_id": "101"},
        "feed:2": {"feed": "feed", "ideology": "islamist", "source_id": "102"},
        "only-id": {"source_id": "7"},
    }
    with old._write() as cur:
        for name, labels in before.items():
            cur.execute(
                "INSERT INTO entries (set_id, name, labels, media_type, created_at, added_by)"
                " VALUES (?, ?, ?, 'hash', 0, 'op')",
                (s.id, name, json.dumps(labels, sort_keys=True)),
            )
    old.close()
    monkeypatch.undo()

    store = open_store(store_url)
    try:
        assert {e.name: e.labels for e in store.list_entries(s.id, 0, 100)} == before
        upserts = [EntryUpsert(name, (), labels) for name, labels in before.items()]
        assert store.bulk_upsert(s.id, upserts, "op").unchanged == len(before)
        changed = store.bulk_upsert(
            s.id,
            [
                EntryUpsert("feed:2", (), {**before["feed:2"], "ideology": "far-right"}),
                EntryUpsert("feed:3", (), {**before["feed:1"], "source_id": "103"}),
            ],
            "op",
        )
        assert (changed.updated, changed.added) == (1, 1)
        after = {e.name: e.labels for e in store.list_entries(s.id, 0, 100)}
        assert after == {
            **before,
            "feed:2": {**before["feed:2"], "ideology": "far-right"},
            "feed:3": {**before["feed:1"], "source_id": "103"},
        }
        with store._read() as cur:
            cur.execute(
                "SELECT name, label_set_id, source_id FROM entries WHERE name IN (?, ?)",
                ("feed:2", "feed:3"),
            )
            rows = {name: (set_id, source_id) for name, set_id, source_id in cur.fetchall()}
        assert rows["feed:2"][1] == "102" and rows["feed:3"][1] == "103"
        assert rows["feed:3"][0] != rows["feed:2"][0]  # islamist, far-right
    finally:
        store.close()
