"""SQLite store: the embedded default (a fresh clone runs with no server).

A connection per thread, WAL so readers never wait for the writer, and
BEGIN IMMEDIATE for writes so two writers queue instead of failing mid-way.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from hashdb import migrations
from hashdb.review_sql import ReviewSQL
from hashdb.sqlbase import SQLStore
from hashsvc.base.errors import Unavailable


class SQLiteStore(SQLStore, ReviewSQL):
    _unique_violation = sqlite3.IntegrityError

    def __init__(self, url: str, history_key: bytes | None = None) -> None:
        self._init_history_key(history_key)
        path = url[len("sqlite:///") :] if url.startswith("sqlite:///") else url[len("sqlite://") :]
        if not path:
            raise ValueError("sqlite URL needs a path: sqlite:///hashsvc.db")
        self.memory = path == ":memory:"
        self.path = path
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.RLock()  # only for :memory:, whose one connection is shared
        # Writers of this process queue here in arrival order and are woken at
        # once, instead of in SQLite's busy handler, which sleeps up to 100 ms a
        # try and lets a bulk load take the lock again before a Match's history
        # write wakes (issue 6: pauses of 440 ms).
        self._writer = _FairLock()
        self._closed = threading.Event()
        self.bulk_checkpoints_until = 0.0  # monotonic time; see hashdb/bulk_sql.py
        try:
            if not self.memory:
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            self._shared = self._open() if self.memory else None
            self._migrate()
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
            self._all.append(conn)
        return conn

    def _conn(self) -> sqlite3.Connection:
        if self._shared is not None:
            return self._shared
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._open()
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

    @contextmanager
    def _write(self):
        lock = self._lock if self._shared is not None else self._writer
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

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            for conn in self._all:
                try:
                    conn.close()
                except sqlite3.Error:
                    pass
            self._all.clear()


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


class _FairLock:
    """A lock taken in arrival order (threading.Lock lets the thread that just
    released it take it again before a waiter wakes)."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._next_ticket = 0
        self._serving = 0
        self._abandoned: set[int] = set()

    def __enter__(self):
        with self._cond:
            ticket = self._next_ticket
            self._next_ticket += 1
            try:
                while ticket != self._serving:
                    self._cond.wait()
            except BaseException:
                self._abandoned.add(ticket)  # its turn is skipped
                if ticket == self._serving:
                    self._pass_on()
                raise
        return self

    def __exit__(self, *exc):
        with self._cond:
            self._pass_on()
        return False

    def _pass_on(self) -> None:
        self._serving += 1
        while self._serving in self._abandoned:
            self._abandoned.discard(self._serving)
            self._serving += 1
        self._cond.notify_all()
