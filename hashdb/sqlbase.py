"""The Store's logic, written once in SQL that both SQLite and PostgreSQL run.

Each dialect supplies connections, its schema (hashdb/migrations.py) and the
exception its driver raises for a unique-key violation; placeholders are
written `?` here and rewritten to `%s` for psycopg.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import replace
from datetime import datetime

from hashdb import migrations
from hashdb.bulk_sql import MAX_SIGNALS_PER_ENTRY, BulkSQL
from hashdb.console_sql import ConsoleSQL
from hashdb.history_sql import HistorySQL, key_id
from hashdb.label_sets import joined_labels, split_labels
from hashdb.model import (
    Change,
    EntryRecord,
    HashSetRecord,
    IndexedSignal,
    NewEntry,
    RetroOwed,
    Thresholds,
    TokenRecord,
)
from hashdb.outbox_sql import OutboxSQL
from hashdb.retro_pending_sql import insert_retro_pending
from hashdb.times import from_micros, now_micros, to_micros
from hashsvc.base.errors import AlreadyExists, InvalidArgument, NotFound
from hashsvc.base.signals import Signal

# iter_signals reads this many entries at a time (a video entry brings its frames).
SIGNAL_BATCH = 5_000


# Evidence thresholds (local features) are written only when set, so the
# rows of other signal types stay as they were; rows written before they
# existed load with their defaults.
_EVIDENCE_FIELDS = ("block_inliers", "review_inliers", "block_coverage", "review_coverage")


def _thresholds_json(thresholds: dict[str, Thresholds]) -> str:
    return json.dumps(
        {
            k: {
                "block_distance": t.block_distance,
                "review_distance": t.review_distance,
                **{f: getattr(t, f) for f in _EVIDENCE_FIELDS if getattr(t, f)},
            }
            for k, t in thresholds.items()
        },
        sort_keys=True,
    )


def _thresholds(text: str) -> dict[str, Thresholds]:
    return {
        k: Thresholds(
            v["block_distance"],
            v["review_distance"],
            **{f: v[f] for f in _EVIDENCE_FIELDS if f in v},
        )
        for k, v in json.loads(text).items()
    }


_SET_COLUMNS = (
    "s.id, s.name, s.description, s.labels, s.thresholds, s.enabled, s.created_at, s.updated_at,"
    " (SELECT COUNT(*) FROM entries e WHERE e.set_id = s.id AND e.removed_at IS NULL),"
    " s.allow_list, s.review_blocks, s.review_target, s.retro_window_seconds"
)
# ... with entry_count -1: counting is a scan of the set's entries (0.4 s at
# 1M), which a history record or a retro-hunt's queueing does not need
_SET_COLUMNS_UNCOUNTED = _SET_COLUMNS.replace(
    "(SELECT COUNT(*) FROM entries e WHERE e.set_id = s.id AND e.removed_at IS NULL)", "-1"
)
# an entry's labels: its label set's text and its source id (hashdb/label_sets.py)
_ENTRY_COLUMNS = (
    "id, set_id, name, (SELECT l.labels FROM label_sets l WHERE l.id = entries.label_set_id),"
    " source_id, media_type, created_at, added_by, removed_at"
)
_TOKEN_COLUMNS = "id, name, role, token_hash, created_at, revoked_at, expires_at"


class SQLStore(BulkSQL, HistorySQL, ConsoleSQL, OutboxSQL):
    """Subclasses call _init_history_key and provide _read(), _write() (context
    managers yielding a cursor that takes `?` placeholders; _write holds the
    writer lock that keeps change seqs in commit order) and _unique_violation
    (an exception class)."""

    _unique_violation: type[BaseException] = Exception
    # With a key the history chain is an HMAC: someone who can write to the
    # database but does not hold the key cannot forge a consistent chain.
    _history_key: bytes | None = None
    _history_key_id: str = ""
    # the token columns and row reader, for mixins that read tokens (ConsoleSQL)
    _token_columns = _TOKEN_COLUMNS

    def _init_history_key(self, key: bytes | None) -> None:
        self._history_key = key or None
        self._history_key_id = key_id(key) if key else ""

    def _read(self) -> AbstractContextManager:
        raise NotImplementedError

    def _write(self) -> AbstractContextManager:
        raise NotImplementedError

    # -- sets

    def create_set(
        self,
        name,
        description,
        labels,
        thresholds,
        allow_list=False,
        review_blocks=False,
        review_target=False,
    ) -> HashSetRecord:
        if allow_list and review_target:
            raise InvalidArgument("an allow list cannot be a review target")
        now = now_micros()
        try:
            with self._write() as cur:
                cur.execute(
                    "INSERT INTO hash_sets (name, description, labels, thresholds, enabled,"
                    " created_at, updated_at, allow_list, review_blocks, review_target)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                    (
                        name,
                        description,
                        json.dumps(labels, sort_keys=True),
                        _thresholds_json(thresholds),
                        True,
                        now,
                        now,
                        bool(allow_list),
                        bool(review_blocks),
                        bool(review_target),
                    ),
                )
                set_id = cur.fetchone()[0]
                self._change(cur, "update_set", set_id, None)
        except self._unique_violation:
            raise AlreadyExists(f"a set named {name!r} already exists") from None
        return self.get_set_by_id(set_id)

    def get_set(self, name: str) -> HashSetRecord | None:
        with self._read() as cur:
            cur.execute(f"SELECT {_SET_COLUMNS} FROM hash_sets s WHERE s.name = ?", (name,))
            row = cur.fetchone()
        return _set(row) if row else None

    def get_set_by_id(self, set_id: int, count_entries: bool = True) -> HashSetRecord | None:
        columns = _SET_COLUMNS if count_entries else _SET_COLUMNS_UNCOUNTED
        with self._read() as cur:
            cur.execute(f"SELECT {columns} FROM hash_sets s WHERE s.id = ?", (set_id,))
            row = cur.fetchone()
        return _set(row) if row else None

    def set_ids_by_name(self, names: Iterable[str]) -> dict[str, int]:
        wanted = list(dict.fromkeys(names))
        if not wanted:
            return {}
        marks = ", ".join("?" * len(wanted))
        with self._read() as cur:
            cur.execute(f"SELECT name, id FROM hash_sets WHERE name IN ({marks})", wanted)
            return dict(cur.fetchall())

    def list_sets(self, include_disabled: bool = True) -> list[HashSetRecord]:
        where = "" if include_disabled else " WHERE s.enabled = ?"
        params = () if include_disabled else (True,)
        with self._read() as cur:
            cur.execute(f"SELECT {_SET_COLUMNS} FROM hash_sets s{where} ORDER BY s.name", params)
            return [_set(row) for row in cur.fetchall()]

    def update_set(
        self,
        set_id,
        *,
        enabled=None,
        description=None,
        labels=None,
        thresholds=None,
        review_blocks=None,
        review_target=None,
    ) -> HashSetRecord:
        fields: list[tuple[str, object]] = []
        if review_target is not None:
            fields.append(("review_target", bool(review_target)))
        if enabled is not None:
            fields.append(("enabled", bool(enabled)))
        if review_blocks is not None:
            fields.append(("review_blocks", bool(review_blocks)))
        if description is not None:
            fields.append(("description", description))
        if labels is not None:
            fields.append(("labels", json.dumps(labels, sort_keys=True)))
        if thresholds is not None:
            fields.append(("thresholds", _thresholds_json(thresholds)))
        fields.append(("updated_at", now_micros()))
        assignments = ", ".join(f"{name} = ?" for name, _ in fields)
        with self._write() as cur:
            cur.execute(
                f"UPDATE hash_sets SET {assignments} WHERE id = ?"
                " RETURNING allow_list, review_target",
                (*[value for _, value in fields], set_id),
            )
            row = cur.fetchone()
            if row is None:
                raise NotFound(f"no set with id {set_id}")
            if row[0] and row[1]:  # checked in the transaction: rolled back
                raise InvalidArgument("an allow list cannot be a review target")
            self._change(cur, "update_set", set_id, None)
        return self.get_set_by_id(set_id)

    # -- entries

    def add_entry(
        self, set_id, name, labels, media_type, signals, added_by, retro: RetroOwed | None = None
    ) -> EntryRecord:
        signals = list(signals)
        if len(signals) > MAX_SIGNALS_PER_ENTRY:
            raise InvalidArgument(f"an entry holds at most {MAX_SIGNALS_PER_ENTRY} signals")
        try:
            with self._write() as cur:
                entry_id = self._insert_entry(
                    cur, NewEntry(set_id, name, labels, media_type, tuple(signals), added_by)
                )
                if retro is not None:
                    self._owe_retro(cur, retro, set_id, entry_id, added_by)
        except self._unique_violation:
            raise AlreadyExists(f"an entry named {name!r} is already in the set") from None
        return self.get_entries([entry_id], with_signals=True)[entry_id]

    def _owe_retro(self, cur, retro: RetroOwed, set_id: int, entry_id: int, by: str) -> None:
        """The entry's retro-hunt, owed in the entry's own transaction."""
        now = self._db_now(cur)
        insert_retro_pending(
            cur, now, set_id, now, retro.trigger, by, (entry_id,), retro.hold_seconds
        )

    def _insert_entry(self, cur, entry: NewEntry) -> int:
        """Writes the entry, its signals and its change inside the caller's
        transaction; a taken name raises the dialect's unique violation."""
        if len(entry.signals) > MAX_SIGNALS_PER_ENTRY:
            raise InvalidArgument(f"an entry holds at most {MAX_SIGNALS_PER_ENTRY} signals")
        set_text, source_id = split_labels(entry.labels)
        cur.execute(
            "INSERT INTO entries (set_id, name, label_set_id, source_id, media_type, created_at,"
            " added_by) VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id",
            (
                entry.set_id,
                entry.name,
                self._label_set_ids(cur, [set_text])[set_text],
                source_id,
                entry.media_type,
                now_micros(),
                entry.added_by,
            ),
        )
        entry_id = cur.fetchone()[0]
        cur.executemany(
            "INSERT INTO entry_signals (entry_id, variant_no, kind, variant, value,"
            " quality, position) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                (entry_id, no, s.kind, s.variant, bytes(s.value), s.quality, s.position)
                for no, s in enumerate(entry.signals)
            ],
        )
        self._change(cur, "add_entry", entry.set_id, entry_id)
        return entry_id

    def get_entry(self, set_id: int, name: str) -> EntryRecord | None:
        with self._read() as cur:
            cur.execute(
                f"SELECT {_ENTRY_COLUMNS} FROM entries"
                " WHERE set_id = ? AND name = ? AND removed_at IS NULL",
                (set_id, name),
            )
            row = cur.fetchone()
            if row is None:
                return None
            return self._with_signals(cur, [_entry(row)])[0]

    def get_entries(self, entry_ids, with_signals: bool = False) -> dict[int, EntryRecord]:
        ids = sorted(set(entry_ids))
        out: dict[int, EntryRecord] = {}
        with self._read() as cur:
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                marks = ", ".join("?" * len(chunk))
                cur.execute(f"SELECT {_ENTRY_COLUMNS} FROM entries WHERE id IN ({marks})", chunk)
                entries = [_entry(row) for row in cur.fetchall()]
                if with_signals:
                    entries = self._with_signals(cur, entries)
                out.update((e.id, e) for e in entries)
        return out

    def list_entries(
        self, set_id: int, after_id: int = 0, limit: int = 100, max_signals: int | None = None
    ) -> list[EntryRecord]:
        with self._read() as cur:
            cur.execute(
                f"SELECT {_ENTRY_COLUMNS} FROM entries WHERE set_id = ? AND id > ?"
                " AND removed_at IS NULL ORDER BY id LIMIT ?",
                (set_id, after_id, limit),
            )
            entries = [_entry(row) for row in cur.fetchall()]
            if max_signals is not None and len(entries) > 1:
                # a page of long videos held 720k signals (50 four-hour
                # videos): read no more than the page can send
                counts = self._signal_counts(cur, [e.id for e in entries])
                total = 0
                for k, e in enumerate(entries):
                    total += counts.get(e.id, 0)
                    if total > max_signals and k:
                        entries = entries[:k]
                        break
            return self._with_signals(cur, entries)

    def next_entry_id(self, set_id: int, after_id: int) -> int | None:
        with self._read() as cur:
            cur.execute(
                "SELECT id FROM entries WHERE set_id = ? AND id > ? AND removed_at IS NULL"
                " ORDER BY id LIMIT 1",
                (set_id, after_id),
            )
            row = cur.fetchone()
            return row[0] if row else None

    def signal_counts(self, entry_ids) -> dict[int, int]:
        with self._read() as cur:
            return self._signal_counts(cur, sorted(set(entry_ids)))

    def _signal_counts(self, cur, ids: list[int]) -> dict[int, int]:
        out: dict[int, int] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ", ".join("?" * len(chunk))
            cur.execute(
                "SELECT entry_id, COUNT(*) FROM entry_signals"
                f" WHERE entry_id IN ({marks}) GROUP BY entry_id",
                chunk,
            )
            out.update((entry_id, count) for entry_id, count in cur.fetchall())
        return out

    def _with_signals(self, cur, entries: list[EntryRecord]) -> list[EntryRecord]:
        if not entries:
            return entries
        marks = ", ".join("?" * len(entries))
        cur.execute(
            "SELECT entry_id, kind, value, quality, variant, position FROM entry_signals"
            f" WHERE entry_id IN ({marks}) ORDER BY entry_id, variant_no",
            [e.id for e in entries],
        )
        by_entry: dict[int, list[Signal]] = {}
        for entry_id, kind, value, quality, variant, position in cur.fetchall():
            by_entry.setdefault(entry_id, []).append(
                Signal(kind, bytes(value), quality, variant, position)
            )
        return [_replace_signals(e, tuple(by_entry.get(e.id, ()))) for e in entries]

    def remove_entry(self, set_id: int, name: str) -> EntryRecord:
        with self._write() as cur:
            cur.execute(
                "UPDATE entries SET removed_at = ? WHERE set_id = ? AND name = ?"
                " AND removed_at IS NULL RETURNING id",
                (now_micros(), set_id, name),
            )
            row = cur.fetchone()
            if row is None:
                raise NotFound(f"no entry named {name!r} in the set")
            self._change(cur, "remove_entry", set_id, row[0])
        return self.get_entries([row[0]], with_signals=True)[row[0]]

    def find_exact(self, kind: str, value: bytes) -> list[tuple[int, int]]:
        # The kind as a literal: the value index is partial (migration 7) and
        # a planner proves that a literal, not a parameter, falls within it.
        # Perceptual kinds are not in it (nor looked up by value): a scan.
        kind_sql, params = (f"'{kind}'", ()) if kind in migrations.EXACT_KINDS else ("?", (kind,))
        with self._read() as cur:
            cur.execute(
                "SELECT s.entry_id, s.variant_no FROM entry_signals s"
                " JOIN entries e ON e.id = s.entry_id"
                f" WHERE s.kind = {kind_sql} AND substr(s.value, 1, 32) = ? AND s.value = ?"
                " AND e.removed_at IS NULL",
                (*params, bytes(value[:32]), bytes(value)),
            )
            return [(row[0], row[1]) for row in cur.fetchall()]

    def count_signals(self) -> dict[str, int]:
        with self._read() as cur:
            cur.execute(
                "SELECT s.kind, COUNT(*) FROM entry_signals s JOIN entries e ON e.id = s.entry_id"
                " WHERE e.removed_at IS NULL GROUP BY s.kind"
            )
            return {kind: count for kind, count in cur.fetchall()}

    # -- change feed

    def _change(self, cur, op: str, set_id: int, entry_id: int | None) -> None:
        cur.execute(
            "INSERT INTO changes (op, set_id, entry_id, at) VALUES (?, ?, ?, ?)",
            (op, set_id, entry_id, now_micros()),
        )

    def wait_for_change(self, timeout: float) -> bool:
        time.sleep(timeout)
        return False

    def current_seq(self) -> int:
        with self._read() as cur:
            cur.execute("SELECT COALESCE(MAX(seq), 0) FROM changes")
            return cur.fetchone()[0]

    def changes_since(self, seq: int, limit: int = 10_000) -> list[Change]:
        with self._read() as cur:
            cur.execute(
                "SELECT seq, op, set_id, entry_id FROM changes WHERE seq > ? ORDER BY seq LIMIT ?",
                (seq, limit),
            )
            return [Change(*row) for row in cur.fetchall()]

    def iter_signals(self, kinds, after_entry_id: int = 0) -> Iterator[IndexedSignal]:
        kinds = list(kinds)
        marks = ", ".join("?" * len(kinds))
        last = after_entry_id
        while kinds:
            # One batch = the signals of the next N active entries by id, so
            # memory stays flat however many millions there are.
            with self._read() as cur:
                cur.execute(
                    "SELECT MAX(id) FROM (SELECT id FROM entries WHERE id > ?"
                    " AND removed_at IS NULL ORDER BY id LIMIT ?) batch",
                    (last, self._signal_batch),
                )
                batch_end = cur.fetchone()[0]
                if batch_end is None:
                    return
                cur.execute(
                    "SELECT s.entry_id, s.variant_no, s.kind, s.value FROM entry_signals s"
                    " JOIN entries e ON e.id = s.entry_id"
                    f" WHERE s.entry_id > ? AND s.entry_id <= ? AND s.kind IN ({marks})"
                    " AND e.removed_at IS NULL ORDER BY s.entry_id, s.variant_no",
                    (last, batch_end, *kinds),
                )
                rows = cur.fetchall()
            for entry_id, variant_no, kind, value in rows:
                yield IndexedSignal(entry_id, variant_no, kind, bytes(value))
            last = batch_end

    _signal_batch = SIGNAL_BATCH

    # -- tokens

    def add_token(
        self, name: str, role: str, token_hash: str, expires_at: datetime | None = None
    ) -> TokenRecord:
        expires = to_micros(expires_at) if expires_at else None
        try:
            with self._write() as cur:
                cur.execute(
                    "INSERT INTO tokens (name, role, token_hash, created_at, expires_at)"
                    f" VALUES (?, ?, ?, ?, ?) RETURNING {_TOKEN_COLUMNS}",
                    (name, role, token_hash, now_micros(), expires),
                )
                return _token(cur.fetchone())
        except self._unique_violation:
            # names are unique among unrevoked tokens (the history tells
            # callers apart by name as well as by token id)
            raise AlreadyExists(f"an active token named {name!r} already exists") from None

    def find_token(self, token_hash: str) -> TokenRecord | None:
        with self._read() as cur:
            cur.execute(f"SELECT {_TOKEN_COLUMNS} FROM tokens WHERE token_hash = ?", (token_hash,))
            row = cur.fetchone()
        return _token(row) if row else None

    def _token_row(self, row) -> TokenRecord:
        return _token(row)

    def list_tokens(self) -> list[TokenRecord]:
        with self._read() as cur:
            cur.execute(f"SELECT {_TOKEN_COLUMNS} FROM tokens ORDER BY id")
            return [_token(row) for row in cur.fetchall()]

    def revoke_token(self, token_id: int) -> TokenRecord:
        with self._write() as cur:
            cur.execute(
                "UPDATE tokens SET revoked_at = COALESCE(revoked_at, ?) WHERE id = ?"
                f" RETURNING {_TOKEN_COLUMNS}",
                (now_micros(), token_id),
            )
            row = cur.fetchone()
        if row is None:
            raise NotFound(f"no token with id {token_id}")
        return _token(row)


def _set(row) -> HashSetRecord:
    return HashSetRecord(
        id=row[0],
        name=row[1],
        description=row[2],
        labels=json.loads(row[3]),
        thresholds=_thresholds(row[4]),
        enabled=bool(row[5]),
        created_at=from_micros(row[6]),
        updated_at=from_micros(row[7]),
        entry_count=row[8],
        allow_list=bool(row[9]),
        review_blocks=bool(row[10]),
        review_target=bool(row[11]),
        retro_window_seconds=row[12],
    )


def _entry(row) -> EntryRecord:
    return EntryRecord(
        id=row[0],
        set_id=row[1],
        name=row[2],
        labels=joined_labels(row[3], row[4]),
        media_type=row[5],
        created_at=from_micros(row[6]),
        added_by=row[7],
        removed_at=from_micros(row[8]),
    )


def _replace_signals(entry: EntryRecord, signals: tuple[Signal, ...]) -> EntryRecord:
    return replace(entry, signals=signals)


def _token(row) -> TokenRecord:
    return TokenRecord(
        id=row[0],
        name=row[1],
        role=row[2],
        token_hash=row[3],
        created_at=from_micros(row[4]),
        revoked_at=from_micros(row[5]),
        expires_at=from_micros(row[6]),
    )
