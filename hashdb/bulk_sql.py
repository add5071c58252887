"""Bulk writes for loading hash lists: many entries per transaction.

`bulk_upsert` is idempotent by entry name (the external id): an entry that is
already there with the same labels and signals is left alone, one whose labels
differ (or that gains signals) is updated, a tombstone removes it. Each write
still records one change per entry, so every replica's index follows the feed
incrementally. One call is one transaction: a load killed between calls keeps
every batch it committed and loses none of them half-way.

Mixed into SQLStore; the dialect differences (name lookups, COPY) sit here.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from hashdb import columns
from hashdb.model import IndexedSignal
from hashdb.times import now_micros
from hashsvc.base.signals import Signal

# The entries one bulk write creates are one change row, not one each (a row
# a hash was a quarter of a load's writes and of every replica's catch-up):
# op "add_entries:<last id>", entry_id the first; their ids are consecutive.
ADD_RANGE = "add_entries:"


def added_range(op: str, first_id: int) -> range | None:
    """The entry ids an "add_entries" change adds; None for other ops."""
    if not op.startswith(ADD_RANGE):
        return None
    return range(first_id, int(op[len(ADD_RANGE) :]) + 1)


# A video's frames are signals too: 1 per second of a 24-hour video fits.
MAX_SIGNALS_PER_ENTRY = 100_000

# Runs of at least this many consecutive entry ids are read as one range.
_SPAN = 16

# SQLite: a bulk load checkpoints when the WAL is this large (see _after_bulk_write).
BULK_WAL_BYTES = 256 << 20

# SQLite page cache of a connection that bulk-writes (the default 2 MB makes
# every index insert of a million-entry set a disk read).
BULK_CACHE_KIB = 256 * 1024


@dataclass(frozen=True)
class EntryUpsert:
    """One entry as a load wants it: labels None keeps an existing entry's."""

    name: str
    signals: Sequence[Signal] = ()
    labels: dict[str, str] | None = None
    media_type: str = "hash"
    deleted: bool = False


@dataclass
class PlainSignals:
    """Entries of one signal each, all of one fixed-length type, named after
    their signal and saying nothing about labels: a plain hash list, as
    arrays. Values are unique and sorted (so the name index is written page
    by page)."""

    kind: str
    media_type: str
    values: np.ndarray  # (n, width) uint8
    qualities: np.ndarray | None = None  # int16, -1 = none; None: no row has one

    def __len__(self) -> int:
        return len(self.values)

    def __getitem__(self, part: slice | np.ndarray) -> PlainSignals:
        return PlainSignals(
            self.kind,
            self.media_type,
            self.values[part],
            None if self.qualities is None else self.qualities[part],
        )

    @property
    def name_prefix(self) -> str:
        return f"{self.kind}:"

    def names(self) -> list[str]:
        """The entries' names ("<kind>:<hex>"), as bulk.py names them."""
        return columns.names(self.name_prefix, self.values)

    def quality(self, row: int) -> int | None:
        if self.qualities is None or self.qualities[row] < 0:
            return None
        return int(self.qualities[row])


@dataclass
class AddedSignals:
    """What a bulk write created: entries with consecutive ids from first_id,
    each with its one signal (variant 0), so the index can take them without
    reading them back."""

    kind: str
    first_id: int = 0
    values: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=np.uint8))
    noted: float = 0.0  # monotonic time, set by LiveIndex.note_added

    def __len__(self) -> int:
        return len(self.values)


@dataclass
class BulkCounts:
    added: int = 0
    updated: int = 0
    removed: int = 0
    unchanged: int = 0
    # entry name -> signals not added: the entry holds MAX_SIGNALS_PER_ENTRY
    over_limit: dict[str, int] = field(default_factory=dict)

    def __iadd__(self, other: BulkCounts) -> BulkCounts:
        self.added += other.added
        self.updated += other.updated
        self.removed += other.removed
        self.unchanged += other.unchanged
        for name, count in other.over_limit.items():
            self.over_limit[name] = self.over_limit.get(name, 0) + count
        return self


def _signal_key(kind: str, value: bytes, variant: str) -> tuple[str, bytes, str]:
    return kind, bytes(value), variant


class BulkSQL:
    """Needs the SQLStore attributes: _write(), _read(), and on PostgreSQL _pool
    and _channel."""

    @property
    def bulk_write_seconds(self) -> float:
        """About how long one bulk write transaction should take. On SQLite
        a Match's history write waits for the one under way (issue 6 allows
        100 ms); on PostgreSQL the history has its own lock and a Match waits
        for nothing, so transactions are longer and fewer."""
        return 0.25 if self._is_postgres() else 0.025

    # -- dialect

    def _is_postgres(self) -> bool:
        return hasattr(self, "_pool")  # only PostgresStore pools connections

    def _in_list(self, column: str) -> str:
        """SQL for `column IN <one list parameter>` in this dialect."""
        if self._is_postgres():
            return f"{column} = ANY(?)"
        return f"{column} IN (SELECT value FROM json_each(?))"

    def _list_param(self, values: list):
        return list(values) if self._is_postgres() else json.dumps(values)

    def _insert_rows(self, cur, table: str, columns: str, rows: list[tuple]) -> None:
        if not rows:
            return
        if self._is_postgres():
            # COPY: one round trip for the whole batch
            with cur._cur.copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
            return
        marks = ", ".join("?" * len(rows[0]))
        cur.executemany(f"INSERT INTO {table} ({columns}) VALUES ({marks})", rows)

    def _existing(self, cur, set_id: int, names: list[str]) -> dict[str, tuple[int, str]]:
        """name -> (id, labels text) of the set's active entries among names."""
        if self._is_postgres():
            # One probe of the name index per name, whatever the statistics
            # say: while a load grows a new set, stale ones made the planner
            # scan the whole set for every batch (300 rows/s at 100k).
            # LIMIT 1 keeps the subquery a per-name lookup (names are unique
            # among active entries); names hold no control characters, so a
            # newline-joined text is one cheap parameter (psycopg dumps a
            # list name by name).
            cur.execute(
                "SELECT e.id, e.name, e.labels FROM unnest(string_to_array(?, E'\\n')) AS n(name)"
                " CROSS JOIN LATERAL (SELECT id, name, labels FROM entries"
                " WHERE set_id = ? AND name = n.name AND removed_at IS NULL LIMIT 1) AS e",
                ("\n".join(names), set_id),
            )
        else:
            cur.execute(
                "SELECT id, name, labels FROM entries WHERE set_id = ? AND removed_at IS NULL"
                " AND name IN (SELECT value FROM json_each(?))",
                (set_id, json.dumps(names)),
            )
        return {name: (entry_id, labels) for entry_id, name, labels in cur.fetchall()}

    def _new_entry_ids(self, cur, count: int) -> list[int]:
        first = self._new_entry_range(cur, count)
        return list(range(first, first + count))

    def _new_entry_range(self, cur, count: int) -> int:
        """The first of `count` new consecutive entry ids."""
        if not count:
            return 0
        if self._is_postgres():
            # A range in one step (nextval a row costs 3 us): every insert into
            # entries runs in a _write transaction, which holds the change-feed
            # lock, so no other nextval comes between these two.
            cur.execute(
                "SELECT setval(pg_get_serial_sequence('entries', 'id'),"
                " nextval(pg_get_serial_sequence('entries', 'id')) + ? - 1)",
                (count,),
            )
            return cur.fetchone()[0] - count + 1
        # Inside BEGIN IMMEDIATE nobody else inserts; AUTOINCREMENT never
        # reuses an id, so start above both the largest id and the sequence.
        cur.execute(
            "SELECT MAX(COALESCE((SELECT MAX(id) FROM entries), 0),"
            " COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'entries'), 0))"
        )
        return cur.fetchone()[0] + 1

    # -- the bulk write

    def bulk_upsert(
        self, set_id: int, entries: Iterable[EntryUpsert], added_by: str, now: int | None = None
    ) -> BulkCounts:
        wanted = {e.name: e for e in entries}  # the last word on a name wins
        counts = BulkCounts()
        if not wanted:
            return counts
        at = now or now_micros()
        with self._write() as cur:
            if not self._is_postgres():
                # the name and value indexes of a large set: keep them in memory
                cur.execute(f"PRAGMA cache_size = -{BULK_CACHE_KIB}")
            existing = self._existing(cur, set_id, list(wanted))
            new_entries, new_signals, changes = [], [], []
            # In name order: the name and value indexes are then written page by
            # page instead of at random (2x faster on a large SQLite set).
            fresh = sorted(
                (e for name, e in wanted.items() if name not in existing and not e.deleted),
                key=lambda e: e.name,
            )
            for entry_id, e in zip(self._new_entry_ids(cur, len(fresh)), fresh, strict=True):
                new_entries.append(
                    (
                        entry_id,
                        set_id,
                        e.name,
                        json.dumps(e.labels, sort_keys=True) if e.labels else "{}",
                        e.media_type,
                        at,
                        added_by,
                    )
                )
                new_signals.extend(
                    (entry_id, no, s.kind, s.variant, bytes(s.value), s.quality, s.position)
                    for no, s in enumerate(e.signals)
                )
            if new_entries:
                first, last = new_entries[0][0], new_entries[-1][0]
                changes.append((f"{ADD_RANGE}{last}", set_id, first, at))
            counts.added = len(fresh)
            counts.unchanged = sum(
                1 for name, e in wanted.items() if name not in existing and e.deleted
            )  # tombstones of names not there: nothing to remove
            self._insert_rows(
                cur,
                "entries",
                "id, set_id, name, labels, media_type, created_at, added_by",
                new_entries,
            )
            self._insert_rows(
                cur,
                "entry_signals",
                "entry_id, variant_no, kind, variant, value, quality, position",
                new_signals,
            )
            self._insert_rows(cur, "changes", "op, set_id, entry_id, at", changes)
            counts += self._upsert_existing(
                cur, set_id, existing, [e for name, e in wanted.items() if name in existing], at
            )
            if (counts.added or counts.updated or counts.removed) and self._is_postgres():
                cur.execute(f"NOTIFY {self._channel}")  # once per batch, at commit
        self._after_bulk_write()
        return counts

    def _upsert_existing(
        self, cur, set_id: int, existing: dict, entries: list[EntryUpsert], at: int
    ) -> BulkCounts:
        """Updates and removals of entries already in the set (`existing`: name
        -> (id, labels text)), inside the caller's transaction."""
        counts = BulkCounts()
        if not entries:
            return counts
        known_signals = self._signals_by_entry(
            cur, [existing[e.name][0] for e in entries if not e.deleted]
        )
        new_signals, label_updates, removals, changes = [], [], [], []
        for e in entries:
            entry_id, labels_text = existing[e.name]
            if e.deleted:
                removals.append((at, entry_id))
                changes.append(("remove_entry", set_id, entry_id, at))
                counts.removed += 1
                continue
            changed = False
            if e.labels is not None:
                labels_json = json.dumps(e.labels, sort_keys=True)
                if json.loads(labels_text) != e.labels:
                    label_updates.append((labels_json, entry_id))
                    changed = True
            have, next_no = known_signals.get(entry_id, (set(), 0))
            for s in e.signals:
                key = _signal_key(s.kind, s.value, s.variant)
                if key in have:
                    continue
                if len(have) >= MAX_SIGNALS_PER_ENTRY:
                    counts.over_limit[e.name] = counts.over_limit.get(e.name, 0) + 1
                    continue
                have.add(key)
                new_signals.append(
                    (entry_id, next_no, s.kind, s.variant, bytes(s.value), s.quality, s.position)
                )
                next_no += 1
                changed = True
            if changed:
                changes.append(("update_entry", set_id, entry_id, at))
                counts.updated += 1
            else:
                counts.unchanged += 1
        self._insert_rows(
            cur,
            "entry_signals",
            "entry_id, variant_no, kind, variant, value, quality, position",
            new_signals,
        )
        if label_updates:
            cur.executemany("UPDATE entries SET labels = ? WHERE id = ?", label_updates)
        if removals:
            cur.executemany("UPDATE entries SET removed_at = ? WHERE id = ?", removals)
        self._insert_rows(cur, "changes", "op, set_id, entry_id, at", changes)
        return counts

    def bulk_add_plain(
        self,
        set_id: int,
        rows: PlainSignals,
        added_by: str,
        now: int | None = None,
        expect_new: bool = False,
        noted: Callable[[AddedSignals], None] | None = None,
    ) -> tuple[BulkCounts, AddedSignals]:
        """bulk_upsert for a plain hash list, without an object per row: new
        names are inserted column-wise, names already in the set go through
        the general path (they may gain the signal). One transaction.

        expect_new: the caller expects none of the names to be there (the
        previous write of a load found none), so they are not looked up
        first: the unique name index checks each as it is inserted, and a
        name already there fails the insert (a rerun of a loaded file fails
        at its first row), which is then written as without expect_new.

        noted: told what the write creates once it is sure to be seen with
        its change (LiveIndex.note_added). On PostgreSQL that is just before
        COMMIT: the change poller, woken by the commit's NOTIFY, otherwise
        raced the caller and read every new signal back from the database.
        Ids come from a sequence there and are never reused, so the note of
        a write that then fails is never used. On SQLite, where a failed
        write's ids are used again, it is after COMMIT."""
        if not len(rows):
            return BulkCounts(), AddedSignals(rows.kind)
        at = now or now_micros()
        # Otherwise which names are there is read before the write
        # transaction, which is then shorter (on SQLite a Match's history
        # write waits for it). Inside, only the names found are checked
        # again; a name another writer added meanwhile fails the insert, and
        # the write is redone with every name checked inside.
        written = None
        if expect_new:
            try:
                written = self._add_plain(set_id, rows, added_by, at, set(), noted)
            except self._unique_violation:
                pass  # some are there: looked up first after all
        unchanged = 0
        if written is None:
            with self._read() as cur:
                # A rerun or resume: rows whose entry is there with this very
                # signal change nothing and need no write (one read of the
                # names and signals instead of an upsert each: 2-3x faster).
                there, found = self._already_there(cur, set_id, rows)
                if there.any():
                    unchanged = int(there.sum())
                    rows = rows[~there]
        if written is None and not len(rows):
            return BulkCounts(unchanged=unchanged), AddedSignals(rows.kind)
        if written is None:
            try:
                written = self._add_plain(set_id, rows, added_by, at, found, noted)
            except self._unique_violation:
                written = self._add_plain(set_id, rows, added_by, at, None, noted)
        written[0].unchanged += unchanged
        if noted is not None and not self._is_postgres():
            noted(written[1])
        self._after_bulk_write()
        return written

    def _already_there(self, cur, set_id: int, rows: PlainSignals) -> tuple[np.ndarray, set[str]]:
        """Which rows' entries (by name) are active in the set and already hold
        the row's signal (as variant "original"), and the names of the other
        rows' entries that are there. Two lookups by key, whatever the
        planner's statistics say (a single join with the signals scanned the
        whole table for every name while a load had left them stale)."""
        names = rows.names()
        existing = self._existing(cur, set_id, names)
        there = np.zeros(len(rows), dtype=bool)
        if not existing:
            return there, set()
        cur.execute(
            "SELECT entry_id, value FROM entry_signals"
            f" WHERE {self._in_list('entry_id')} AND kind = ? AND variant = 'original'",
            (self._list_param([entry_id for entry_id, _ in existing.values()]), rows.kind),
        )
        held = {(entry_id, bytes(value)) for entry_id, value in cur.fetchall()}
        for row, name in enumerate(names):
            found = existing.get(name)
            if found is not None and (found[0], rows.values[row].tobytes()) in held:
                there[row] = True
        return there, {
            name
            for name, row_there in zip(names, there, strict=True)
            if not row_there and name in existing
        }

    def _after_bulk_write(self) -> None:
        """SQLite: once the WAL has grown past BULK_WAL_BYTES, copy it back
        into the database before the next write begins, so that write starts
        the WAL afresh. Left to the background checkpoints (hashdb/sqlite.py),
        the WAL of a million-row load grew past 500 MB, as one write follows
        another and a checkpoint rarely finishes between them, and every page
        read then searched a WAL index that long (35k rows/s at 1M); after
        every write, the checkpoints' writes and fsyncs halved the rate.
        PASSIVE takes no lock: a Match's history write waits for nothing."""
        if self._is_postgres() or getattr(self, "memory", True):
            return
        # the background checkpoints pause meanwhile: their fsyncs stalled
        # write transactions (up to 370 ms) that a Match was waiting for
        self.bulk_checkpoints_until = time.monotonic() + 2.0
        try:
            wal_bytes = os.path.getsize(f"{self.path}-wal")
        except OSError:
            return
        if wal_bytes > BULK_WAL_BYTES:
            with self._read() as cur:
                cur.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def _add_plain(
        self, set_id, rows: PlainSignals, added_by, at, found: set[str] | None, noted=None
    ):
        counts = BulkCounts()
        if not self._is_postgres() and self._shared is None:
            # No foreign-key probes for these rows (8% of the write): each
            # entry's set was looked up by the load and its signal is written
            # with it in this transaction (PostgreSQL dropped these checks in
            # migration 8). The pragma holds for this thread's connection and
            # cannot change inside a transaction; plain writes run on the
            # bulk writer threads, which write nothing else (an in-memory
            # store's one shared connection keeps them).
            self._conn().execute("PRAGMA foreign_keys = OFF")
        with self._write() as cur:
            if not self._is_postgres():
                cur.execute(f"PRAGMA cache_size = -{BULK_CACHE_KIB}")
            existing = {}
            if found is None or found:
                names = rows.names()
                checked = names if found is None else [n for n in names if n in found]
                existing = self._existing(cur, set_id, checked)
            if existing:
                old = [i for i, name in enumerate(names) if name in existing]
                counts += self._upsert_existing(
                    cur,
                    set_id,
                    existing,
                    [
                        EntryUpsert(
                            names[i],
                            [Signal(rows.kind, rows.values[i].tobytes(), rows.quality(i))],
                            None,
                            rows.media_type,
                        )
                        for i in old
                    ],
                    at,
                )
                keep = np.ones(len(rows), dtype=bool)
                keep[old] = False
                rows = rows[keep]
            first_id = self._new_entry_range(cur, len(rows))
            counts.added = len(rows)
            if len(rows):
                self._insert_plain(cur, set_id, rows, first_id, at, added_by)
                cur.execute(
                    "INSERT INTO changes (op, set_id, entry_id, at) VALUES (?, ?, ?, ?)",
                    (f"{ADD_RANGE}{first_id + len(rows) - 1}", set_id, first_id, at),
                )
            added = AddedSignals(rows.kind, first_id, rows.values)
            if self._is_postgres():
                if counts.added or counts.updated:
                    cur.execute(f"NOTIFY {self._channel}")
                if noted is not None:
                    noted(added)  # see bulk_add_plain
        return counts, added

    def _insert_plain(self, cur, set_id, rows: PlainSignals, first_id, at, added_by):
        """New entries first_id, first_id + 1, ... and their one signal each."""
        qualities = rows.qualities
        if self._is_postgres() and (qualities is None or qualities.min() >= 0):
            # Binary COPY built by numpy: every field of a row has the same
            # length in all rows (names are "<kind>:<hex>", from the values).
            _copy(
                cur,
                "entries (id, set_id, name, labels, media_type, created_at, added_by)",
                columns.entries_copy(
                    first_id,
                    set_id,
                    columns.name_rows(rows.name_prefix, rows.values),
                    rows.media_type,
                    at,
                    added_by,
                ),
                binary=True,
            )
            _copy(
                cur,
                "entry_signals (entry_id, variant_no, kind, variant, value, quality)",
                columns.signals_copy(first_id, rows.kind, rows.values, qualities),
                binary=True,
            )
            return
        ids = range(first_id, first_id + len(rows))
        if self._is_postgres():
            # COPY text built with joins (some rows have a quality, some none).
            # Names are "<kind>:<hex>"; only added_by may need escaping.
            by = _copy_text(added_by)
            names = rows.names()
            tail = f"\t{{}}\t{rows.media_type}\t{at}\t{by}\n"
            _copy(
                cur,
                "entries (id, set_id, name, labels, media_type, created_at, added_by)",
                "".join([f"{i}\t{set_id}\t{n}{tail}" for i, n in zip(ids, names, strict=True)]),
            )
            kind_variant = f"\t0\t{rows.kind}\toriginal\t\\\\x"
            quality_text = [r"\N" if q < 0 else str(q) for q in qualities.tolist()]
            _copy(
                cur,
                "entry_signals (entry_id, variant_no, kind, variant, value, quality)",
                "".join(
                    [
                        f"{i}{kind_variant}{n[len(rows.name_prefix) :]}\t{q}\n"
                        for i, n, q in zip(ids, names, quality_text, strict=True)
                    ]
                ),
            )
            return
        # SQLite: rows made inside SQLite from one JSON array of the names, one
        # of the qualities and one blob of the values (no binding of each row's
        # parameters: 25% less time in the write transaction). Row k gets id
        # first_id + k.
        cur.execute(
            "INSERT INTO entries (id, set_id, name, labels, media_type, created_at, added_by)"
            " SELECT ? + key, ?, value, '{}', ?, ?, ? FROM json_each(?)",
            (
                first_id,
                set_id,
                rows.media_type,
                at,
                added_by,
                columns.names_json(rows.name_prefix, rows.values),
            ),
        )
        width = rows.values.shape[1]
        quality_json = (
            f"[{','.join(['-1'] * len(rows))}]"
            if qualities is None
            else json.dumps(qualities.tolist())
        )
        cur.execute(
            "INSERT INTO entry_signals (entry_id, variant_no, kind, variant, value, quality)"
            " SELECT ? + key, 0, ?, 'original', substr(?, key * ? + 1, ?), NULLIF(value, -1)"
            " FROM json_each(?)",
            (first_id, rows.kind, rows.values.tobytes(), width, width, quality_json),
        )

    def _signals_by_entry(self, cur, entry_ids: list[int]) -> dict[int, tuple[set, int]]:
        """entry id -> (its signal keys, the next free variant number)."""
        out: dict[int, tuple[set, int]] = {}
        if not entry_ids:
            return out
        cur.execute(
            "SELECT entry_id, kind, value, variant, variant_no FROM entry_signals"
            f" WHERE {self._in_list('entry_id')}",
            (self._list_param(entry_ids),),
        )
        for entry_id, kind, value, variant, variant_no in cur.fetchall():
            keys, next_no = out.get(entry_id, (set(), 0))
            keys.add(_signal_key(kind, value, variant))
            out[entry_id] = (keys, max(next_no, variant_no + 1))
        return out

    # -- reading for the index and for export

    def indexed_signals(self, entry_ids: Iterable[int]) -> list[IndexedSignal]:
        """Signals of those entries that are still active, by entry and variant:
        what the in-memory index needs, without building entry records.
        Consecutive ids (a bulk write's entries) are read as ranges of the
        primary key instead of id by id."""
        ids = np.unique(np.fromiter(entry_ids, dtype=np.int64))
        breaks = np.flatnonzero(np.diff(ids) != 1) + 1
        starts, ends = np.r_[0, breaks], np.r_[breaks, len(ids)]
        spans = [
            (int(ids[a]), int(ids[b - 1]))
            for a, b in zip(starts, ends, strict=True)
            if b - a >= _SPAN
        ]
        singles = [
            int(ids[i])
            for a, b in zip(starts, ends, strict=True)
            if b - a < _SPAN
            for i in range(a, b)
        ]
        query = (
            "SELECT s.entry_id, s.variant_no, s.kind, s.value FROM entry_signals s"
            " JOIN entries e ON e.id = s.entry_id WHERE {} AND e.removed_at IS NULL"
            " ORDER BY s.entry_id, s.variant_no"
        )
        out: list[IndexedSignal] = []
        with self._read() as cur:
            for lo, hi in spans:
                cur.execute(query.format("s.entry_id BETWEEN ? AND ?"), (lo, hi))
                out.extend(IndexedSignal(e, n, k, bytes(v)) for e, n, k, v in cur.fetchall())
            for start in range(0, len(singles), 50_000):
                cur.execute(
                    query.format(self._in_list("s.entry_id")),
                    (self._list_param(singles[start : start + 50_000]),),
                )
                out.extend(IndexedSignal(e, n, k, bytes(v)) for e, n, k, v in cur.fetchall())
        if spans and singles:
            out.sort(key=lambda sig: (sig.entry_id, sig.variant_no))
        return out

    def entries_changed_since(self, set_id: int, since: int) -> list[int]:
        """Ids of the set's entries added, updated or removed at or after
        `since` (microseconds), in id order."""
        with self._read() as cur:
            cur.execute(
                "SELECT DISTINCT op, entry_id FROM changes WHERE set_id = ? AND at >= ?"
                " AND entry_id IS NOT NULL",
                (set_id, since),
            )
            ids: set[int] = set()
            for op, entry_id in cur.fetchall():
                added = added_range(op, entry_id)
                if added is None:
                    ids.add(entry_id)
                else:
                    ids.update(added)
            return sorted(ids)


def _copy_text(value: str) -> str:
    """A value in COPY's text format."""
    return (
        value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
    )


def _copy(cur, target: str, data: str | bytes, binary: bool = False) -> None:
    options = " (FORMAT BINARY)" if binary else ""
    with cur._cur.copy(f"COPY {target} FROM STDIN{options}") as copy:
        copy.write(data)
