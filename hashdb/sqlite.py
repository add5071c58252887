"""SQLite store: the embedded default (a fresh clone runs with no server).

A connection per thread, WAL so readers never wait for the writer, and
BEGIN IMMEDIATE for writes so two writers queue instead of failing mid-way.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from hashdb import columns, migrations
from hashdb.bulk_sql import AddedSignals, PlainSignals
from hashdb.exchange_sql import ExchangeSQL
from hashdb.label_sets import joined_text
from hashdb.retro_sql import RetroSQL
from hashdb.review_sql import ReviewSQL
from hashdb.sqlbase import SQLStore
from hashsvc.base.errors import Unavailable


class SQLiteStore(SQLStore, ReviewSQL, RetroSQL, ExchangeSQL):
    _unique_violation = sqlite3.IntegrityError
    # one writer at a time: an event's seq is given with its insert
    _sequence_at_insert = True

    def __init__(self, url: str, history_key: bytes | None = None) -> None:
        self._init_history_key(history_key)
        path = url[len("sqlite:///") :] if url.startswith("sqlite:///") else url[len("sqlite://") :]
        if not path:
            raise ValueError("sqlite URL needs a path: sqlite:///hashsvc.db")
        self.memory = path == ":memory:"
        self.path = path
        self._local = threading.local()
        # every connection, with the thread it is that thread's connection of
        # (None: the checkpointer's own)
        self._all: list[sqlite3.Connection] = []
        self._owners: dict[int, threading.Thread] = {}  # id(conn) -> its thread
        self._lock = threading.RLock()  # only for :memory:, whose one connection is shared
        # Writers of this process queue here in arrival order and are woken at
        # once, instead of in SQLite's busy handler, which sleeps up to 100 ms a
        # try and lets a bulk load take the lock again before a Match's history
        # write wakes (issue 6: pauses of 440 ms).
        self._writer = _FairLock()
        self._closed = threading.Event()
        self.bulk_checkpoints_until = 0.0  # monotonic time; see _after_bulk_write
        try:
            if not self.memory:
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            self._shared = self._open() if self.memory else None
            self._migrate()
            self.sign_outbox_legacy()
        except (OSError, sqlite3.Error) as exc:
            # one line for the operator (a directory that is a file, no rights)
            self.close()
            raise Unavailable(f"cannot open the SQLite database {path}: {exc}") from None
        self._checkpointer = None
        if not self.memory:
            self._checkpointer = threading.Thread(
                target=self._checkpoint_loop, name="sqlite-checkpoint", daemon=True
            )
            self._checkpointer.start()

    def _open(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA busy_timeout = 30000")
        if not self.memory:
            # Taken only by a new, empty database (an existing one keeps its
            # pages): 16 KiB pages made a million-row bulk write 14% faster
            # than the default 4 KiB (fewer pages and WAL frames to write and
            # checkpoint); see bench/load.py.
            conn.execute(f"PRAGMA page_size = {PAGE_BYTES}")
            _retry_locked(lambda: conn.execute("PRAGMA journal_mode = WAL"))
            # NORMAL in WAL mode: a power cut may lose the last commits but
            # never corrupts; an application crash loses nothing.
            conn.execute("PRAGMA synchronous = NORMAL")
            # Checkpoints run in the background thread, never in the commit of
            # a request (a Match's history write after a bulk batch would copy
            # the batch's pages back to the database file first).
            conn.execute("PRAGMA wal_autocheckpoint = 0")
        with self._lock:
            self._close_orphans()
            self._all.append(conn)
        return conn

    def _close_orphans(self) -> None:
        """Closes the connections of threads that have ended (with the lock
        held): a thread a task (a fetch started over gRPC or HTTP, a job)
        left its connection, three file descriptors, open until the store
        closed."""
        kept = []
        for conn in self._all:
            owner = self._owners.get(id(conn))
            if owner is not None and not owner.is_alive():
                del self._owners[id(conn)]
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
            else:
                kept.append(conn)
        self._all[:] = kept

    def _conn(self) -> sqlite3.Connection:
        if self._shared is not None:
            return self._shared
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._open()
            with self._lock:
                self._owners[id(conn)] = threading.current_thread()
        return conn

    @contextmanager
    def _read(self):
        if self._shared is not None:
            with self._lock:
                yield self._shared.cursor()
            return
        cur = self._conn().cursor()
        try:
            yield cur
        finally:
            cur.close()

    def _write(self):
        return self._write_turn(self._writer)

    def _history_write(self):
        # A history record (a Match's answer waits for it) goes before the
        # writes queued for the writer lock (_FairLock.first)
        return self._write_turn(self._writer.first())

    @contextmanager
    def _write_turn(self, turn):
        lock = self._lock if self._shared is not None else turn
        with lock:
            conn = self._conn()
            conn.execute("BEGIN IMMEDIATE")
            cur = conn.cursor()
            try:
                yield cur
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            else:
                conn.execute("COMMIT")
            finally:
                cur.close()

    def _migrate(self) -> None:
        with self._write() as cur:  # BEGIN IMMEDIATE: one process migrates at a time
            migrations.apply(cur, migrations.SQLITE)

    def _checkpoint_loop(self) -> None:
        """Copies the WAL back into the database when it has grown (what
        SQLite's automatic checkpoint does after a commit). PASSIVE waits for no
        reader or writer; the next writer after a complete checkpoint starts
        the WAL from its beginning. A bulk load checkpoints too (bulk_sql)."""
        conn = None
        try:
            while not self._closed.wait(CHECKPOINT_INTERVAL):
                if time.monotonic() < self.bulk_checkpoints_until:
                    continue  # a bulk load checkpoints between its writes
                try:
                    if os.path.getsize(f"{self.path}-wal") < CHECKPOINT_WAL_BYTES:
                        continue
                except OSError:
                    continue  # no WAL yet
                try:
                    if conn is None:
                        conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                except sqlite3.Error:
                    pass  # busy or closing: again next time
        finally:
            if conn is not None:
                conn.close()

    # -- bulk writes (hashdb/bulk_sql.py)

    # A Match's history write waits for the bulk write under way (issue 6
    # allows 100 ms): many short transactions.
    bulk_write_seconds = 0.025

    def _in_list(self, column: str) -> str:
        return f"{column} IN (SELECT value FROM json_each(?))"

    def _list_param(self, values: list):
        return json.dumps(values)

    def _insert_rows(self, cur, table: str, columns: str, rows: list[tuple]) -> None:
        if not rows:
            return
        marks = ", ".join("?" * len(rows[0]))
        cur.executemany(f"INSERT INTO {table} ({columns}) VALUES ({marks})", rows)

    def _existing(self, cur, set_id: int, names: list[str]) -> dict[str, tuple[int, str]]:
        cur.execute(
            "SELECT e.id, e.name, l.labels, e.source_id FROM entries e"
            " JOIN label_sets l ON l.id = e.label_set_id"
            " WHERE e.set_id = ? AND e.removed_at IS NULL"
            " AND e.name IN (SELECT value FROM json_each(?))",
            (set_id, json.dumps(names)),
        )
        return {
            name: (entry_id, joined_text(labels, source_id))
            for entry_id, name, labels, source_id in cur.fetchall()
        }

    def _label_set_ids(self, cur, texts: list[str]) -> dict[str, int]:
        # looked up first: a load's sets are there after its first write
        query = "SELECT labels, id FROM label_sets WHERE labels IN (SELECT value FROM json_each(?))"
        cur.execute(query, (json.dumps(texts),))
        found = dict(cur.fetchall())
        if len(found) < len(set(texts)):
            new = json.dumps([text for text in texts if text not in found])
            cur.execute(
                "INSERT OR IGNORE INTO label_sets (labels) SELECT value FROM json_each(?)", (new,)
            )
            cur.execute(query, (new,))
            found.update(cur.fetchall())
        return found

    def _reserve_entry_ids(self, cur, count: int) -> int:
        # Inside BEGIN IMMEDIATE nobody else inserts; AUTOINCREMENT never
        # reuses an id, so start above both the largest id and the sequence.
        cur.execute(
            "SELECT MAX(COALESCE((SELECT MAX(id) FROM entries), 0),"
            " COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'entries'), 0))"
        )
        return cur.fetchone()[0] + 1

    def _begin_bulk_write(self, cur) -> None:
        # the name and value indexes of a large set: keep them in memory
        cur.execute(f"PRAGMA cache_size = -{BULK_CACHE_KIB}")

    def _before_plain_write(self) -> None:
        if self._shared is None:
            # No foreign-key probes for these rows (8% of the write): each
            # entry's set was looked up by the load and its signal is written
            # with it in this transaction (PostgreSQL dropped these checks in
            # migration 8). The pragma holds for this thread's connection and
            # cannot change inside a transaction; plain writes run on the
            # bulk writer threads, which write nothing else (an in-memory
            # store's one shared connection keeps them).
            self._conn().execute("PRAGMA foreign_keys = OFF")

    def _note_after_write(self, added: AddedSignals, noted) -> None:
        # A failed write's ids are used again here: only a committed write's
        # are noted.
        if noted is not None:
            noted(added)

    def _insert_plain(self, cur, set_id, rows: PlainSignals, first_id, at, added_by) -> None:
        # Rows made inside SQLite from one JSON array of the names, one of the
        # qualities and one blob of the values (no binding of each row's
        # parameters: 25% less time in the write transaction). Row k gets id
        # first_id + k.
        # OR FAIL: a statement of many rows that may break a constraint
        # (the unique name index) otherwise keeps a statement journal, a
        # temporary file holding each index page it changes as it was, so
        # that it alone can be undone. Names after hashes change pages all
        # over the index: 84 MB of journal a transaction of 8,000 rows (the
        # WAL got 2 MB), 5x the write's time. A failed insert here fails
        # the whole transaction, which _write() rolls back, so nothing needs
        # undoing statement by statement.
        qualities = rows.qualities
        # A feed's labelled rows too are one INSERT, in name order (ids follow
        # it, so the name index is written as for a plain list): an INSERT a
        # label set, rows grouped by labels, took 3x the CPU of plain rows
        # (300 statements a write, each walking the write's slice of the
        # name index again) and wrote 1.7x the WAL.
        codes, texts, source_ids = rows.label_set_rows()
        set_ids = self._label_set_ids(cur, texts)
        if len(texts) == 1 and source_ids is None:  # one label set ("{}": the rows say none)
            cur.execute(
                "INSERT OR FAIL INTO entries (id, set_id, name, label_set_id, media_type,"
                " created_at, added_by) SELECT ? + key, ?, value, ?, ?, ?, ? FROM json_each(?)",
                (
                    first_id,
                    set_id,
                    set_ids[texts[0]],
                    rows.media_type,
                    at,
                    added_by,
                    _names_json(rows),
                ),
            )
        else:
            ids = np.array([set_ids[text] for text in texts], dtype=np.int64)[codes]
            self._insert_labelled(cur, set_id, rows, first_id, at, added_by, ids, source_ids)
        width = rows.values.shape[1]
        quality_json = (
            f"[{','.join(['-1'] * len(rows))}]"
            if qualities is None
            else json.dumps(qualities.tolist())
        )
        cur.execute(
            "INSERT OR FAIL INTO entry_signals (entry_id, variant_no, kind, variant, value,"
            " quality)"
            " SELECT ? + key, 0, ?, 'original', substr(?, key * ? + 1, ?), NULLIF(value, -1)"
            " FROM json_each(?)",
            (first_id, rows.kind, rows.values.tobytes(), width, width, quality_json),
        )

    def _insert_labelled(
        self, cur, set_id, rows, first_id, at, added_by, set_ids: np.ndarray, source_ids
    ) -> None:
        """New entries of several label sets or source ids in one INSERT, in
        row (name) order: each element of one JSON array is the row's label
        set id (fixed-width) followed by its name, and with source ids, a
        unit separator (no name or label value holds a control character)
        and its source id ("": none). One array: two, joined by position,
        made SQLite search one for each row of the other."""
        digits = len(str(int(set_ids.max())))
        entries = (
            "INSERT OR FAIL INTO entries (id, set_id, name, label_set_id, source_id, media_type,"
            " created_at, added_by)"
        )
        if source_ids is None:
            if rows.entry_names is None:
                coded = columns.names_json(rows.name_prefix, rows.values, set_ids, digits)
            else:
                coded = json.dumps(
                    [
                        f"{code:0{digits}d}{name}"
                        for code, name in zip(set_ids.tolist(), rows.names(), strict=True)
                    ]
                )
            cur.execute(
                f"{entries} SELECT ? + key, ?, substr(value, ? + 1),"
                " CAST(substr(value, 1, ?) AS INTEGER), NULL, ?, ?, ? FROM json_each(?)",
                (first_id, set_id, digits, digits, rows.media_type, at, added_by, coded),
            )
            return
        coded = json.dumps(
            [
                f"{code:0{digits}d}{name}\x1f{source_id or ''}"
                for code, name, source_id in zip(
                    set_ids.tolist(), rows.names(), source_ids.tolist(), strict=True
                )
            ],
            ensure_ascii=False,
        )
        cur.execute(
            f"{entries} SELECT ? + key, ?, substr(value, ? + 1, instr(value, char(31)) - ? - 1),"
            " CAST(substr(value, 1, ?) AS INTEGER),"
            " NULLIF(substr(value, instr(value, char(31)) + 1), ''), ?, ?, ? FROM json_each(?)",
            (first_id, set_id, digits, digits, digits, rows.media_type, at, added_by, coded),
        )

    def _after_bulk_write(self) -> None:
        """Once the WAL has grown past BULK_WAL_BYTES, copy it back into the
        database before the next write begins, so that write starts the WAL
        afresh. Left to the background checkpoints (_checkpoint_loop), the WAL
        of a million-row load grew past 500 MB, as one write follows another
        and a checkpoint rarely finishes between them, and every page read
        then searched a WAL index that long (35k rows/s at 1M); after every
        write, the checkpoints' writes and fsyncs halved the rate. PASSIVE
        takes no lock: a Match's history write waits for nothing."""
        if self.memory:
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

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            for conn in self._all:
                try:
                    conn.close()
                except sqlite3.Error:
                    pass
            self._all.clear()
            self._owners.clear()


def _names_json(rows: PlainSignals) -> str:
    if rows.entry_names is None:
        return columns.names_json(rows.name_prefix, rows.values)
    return json.dumps(rows.entry_names.tolist())


def _retry_locked(action, attempts: int = 100) -> None:
    # Switching to WAL needs a moment of exclusive access and SQLite does not
    # run the busy handler for it: processes opening a new file at the same
    # time get "database is locked" at once. Wait and retry instead.
    for attempt in range(attempts):
        try:
            action()
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == attempts - 1:
                raise
            time.sleep(0.02)


# How often the background thread looks at the WAL, and from what size it
# checkpoints it (SQLite's automatic checkpoint: 1000 pages).
CHECKPOINT_INTERVAL = 1.0
# The page size of a new database file.
PAGE_BYTES = 16384
CHECKPOINT_WAL_BYTES = 4 << 20
# A bulk load checkpoints when the WAL is this large (see _after_bulk_write).
BULK_WAL_BYTES = 256 << 20
# Page cache of a connection that bulk-writes (the default 2 MB makes every
# index insert of a million-entry set a disk read).
BULK_CACHE_KIB = 256 * 1024


class _FairLock:
    """A lock taken in arrival order (threading.Lock lets the thread that just
    released it take it again before a waiter wakes), with a lane that goes
    first: a Match's history record (first()) waits for the write under way
    only, not for every bulk and feed-mapping write queued before it (during
    a feed fetch the bulk writer and the mapping committer keep one or two
    writes queued, and a record waited for all of them: 172-223 ms). After
    FIRST_RUN such turns in a row while a plain writer waits, that writer
    goes: a flood of Matches cannot stop a load."""

    FIRST_RUN = 8

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._held = False
        self._waiting: collections.deque[object] = collections.deque()
        self._first: collections.deque[object] = collections.deque()
        self._first_run = 0  # turns of the first lane since a plain writer's

    def __enter__(self):
        self._acquire(self._waiting)
        return self

    def __exit__(self, *exc):
        with self._cond:
            self._held = False
            self._cond.notify_all()
        return False

    @contextmanager
    def first(self):
        self._acquire(self._first)
        try:
            yield self
        finally:
            self.__exit__()

    def _acquire(self, lane: collections.deque) -> None:
        ticket = object()
        with self._cond:
            lane.append(ticket)
            try:
                while self._held or self._next() is not ticket:
                    self._cond.wait()
            except BaseException:
                lane.remove(ticket)  # its turn is skipped
                self._cond.notify_all()
                raise
            lane.popleft()
            self._held = True
            self._first_run = self._first_run + 1 if lane is self._first else 0

    def _next(self) -> object | None:
        if self._first and (not self._waiting or self._first_run < self.FIRST_RUN):
            return self._first[0]
        return self._waiting[0] if self._waiting else None
