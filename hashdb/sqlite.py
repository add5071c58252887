"""SQLite store: the embedded default (a fresh clone runs with no server).

A connection per thread, WAL so readers never wait for the writer, and
BEGIN IMMEDIATE for writes so two writers queue instead of failing mid-way.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from hashdb import migrations
from hashdb.review_sql import ReviewSQL
from hashdb.sqlbase import SQLStore


class SQLiteStore(SQLStore, ReviewSQL):
    _unique_violation = sqlite3.IntegrityError

    def __init__(self, url: str, history_key: bytes | None = None) -> None:
        self._init_history_key(history_key)
        path = url[len("sqlite:///") :] if url.startswith("sqlite:///") else url[len("sqlite://") :]
        if not path:
            raise ValueError("sqlite URL needs a path: sqlite:///hashsvc.db")
        self.memory = path == ":memory:"
        if not self.memory:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.RLock()  # only for :memory:, whose one connection is shared
        self._shared = self._open() if self.memory else None
        self._migrate()

    def _open(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA busy_timeout = 30000")
        if not self.memory:
            _retry_locked(lambda: conn.execute("PRAGMA journal_mode = WAL"))
            # NORMAL in WAL mode: a power cut may lose the last commits but
            # never corrupts; an application crash loses nothing.
            conn.execute("PRAGMA synchronous = NORMAL")
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
        lock = self._lock if self._shared is not None else _NO_LOCK
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

    def close(self) -> None:
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


class _NoLock:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


_NO_LOCK = _NoLock()
