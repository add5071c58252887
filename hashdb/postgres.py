"""PostgreSQL store: the production store that several replicas share."""

from __future__ import annotations

import math
import re
import time
from contextlib import contextmanager
from urllib.parse import parse_qs, urlparse

import psycopg
from psycopg import errors as pg_errors
from psycopg_pool import ConnectionPool, PoolTimeout

from hashdb import migrations
from hashdb.review_sql import ReviewSQL
from hashdb.sqlbase import SQLStore
from hashdb.urls import CONNECT_TIMEOUT_SECONDS, safe_url
from hashsvc.base.errors import Unavailable

# Advisory lock keys (arbitrary constants, "hsv" + purpose).
_MIGRATE_LOCK = 0x687376_01
# Every transaction that appends to the change feed holds this lock until it
# commits, so change seqs become visible in seq order and a replica reading the
# feed can never skip a change that commits after a larger seq.
_CHANGES_LOCK = 0x687376_02
# Appends to the hash-chained history take turns, so each links to the head.
_HISTORY_LOCK = 0x687376_03
_SCHEMA = re.compile(r"search_path\s*=\s*([A-Za-z_][A-Za-z0-9_]*)")


class _Cursor:
    """psycopg cursor that takes the `?` placeholders the shared SQL uses."""

    def __init__(self, cur: psycopg.Cursor) -> None:
        self._cur = cur

    def execute(self, sql: str, params=()) -> None:
        self._cur.execute(sql.replace("?", "%s"), params)

    def executemany(self, sql: str, rows) -> None:
        self._cur.executemany(sql.replace("?", "%s"), rows)

    def fetchone(self):
        return self._cur.fetchone()

    def fetchall(self):
        return self._cur.fetchall()


class PostgresStore(SQLStore, ReviewSQL):
    _unique_violation = pg_errors.UniqueViolation

    def __init__(
        self,
        url: str,
        max_connections: int = 16,
        history_key: bytes | None = None,
        connect_timeout: float = CONNECT_TIMEOUT_SECONDS,
    ) -> None:
        self._init_history_key(history_key)
        self.url = url
        # Every connection (pool, listener) gives up after this: libpq counts
        # whole seconds, at least 2. A connect_timeout in the URL wins.
        seconds = max(2, math.ceil(connect_timeout))
        self._connect_kwargs = {} if "connect_timeout" in url else {"connect_timeout": seconds}
        self.schema = _schema_from_url(url)
        # one channel per schema: stores in other schemas of the database do
        # not wake this one
        self._channel = f"hashsvc_changes_{self.schema}" if self.schema else "hashsvc_changes"
        self._listener: psycopg.Connection | None = None
        # One direct connection first: its error says what is wrong (no such
        # database, refused, timed out) at once, where the pool retried in the
        # background for 30 s and then said only "pool initialization incomplete".
        try:
            psycopg.connect(url, **self._connect_kwargs).close()
        except psycopg.Error as exc:
            raise Unavailable(f"cannot connect to {safe_url(url)}: {_one_line(exc, url)}") from None
        self._pool = ConnectionPool(
            url,
            kwargs=self._connect_kwargs,
            min_size=1,
            max_size=max_connections,
            open=True,
            name="hashsvc",
        )
        try:
            self._pool.wait(timeout=30)
            self._migrate()
        except (psycopg.Error, PoolTimeout) as exc:
            self._pool.close()
            raise Unavailable(
                f"cannot prepare the database at {safe_url(url)}: {_one_line(exc, url)}"
            ) from None

    @contextmanager
    def _read(self):
        with _outage_as_unavailable(), self._pool.connection() as conn, conn.cursor() as cur:
            yield _Cursor(cur)

    @contextmanager
    def _write(self):
        with (
            _outage_as_unavailable(),
            self._pool.connection() as conn,
            conn.transaction(),
            conn.cursor() as cur,
        ):
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (_CHANGES_LOCK,))
            yield _Cursor(cur)

    @contextmanager
    def _history_write(self):
        with (
            _outage_as_unavailable(),
            self._pool.connection() as conn,
            conn.transaction(),
            conn.cursor() as cur,
        ):
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (_HISTORY_LOCK,))
            yield _Cursor(cur)

    @contextmanager
    def _counter_write(self):
        # ON CONFLICT upserts and the alert's primary key keep concurrent
        # replicas right without a lock.
        with (
            _outage_as_unavailable(),
            self._pool.connection() as conn,
            conn.transaction(),
            conn.cursor() as cur,
        ):
            yield _Cursor(cur)

    def _change(self, cur, op: str, set_id: int, entry_id: int | None) -> None:
        super()._change(cur, op, set_id, entry_id)
        # delivered at commit: replicas apply the change at once instead of at
        # their next poll
        cur.execute(f"NOTIFY {self._channel}")

    def wait_for_change(self, timeout: float) -> bool:
        try:
            if self._listener is None:
                self._listener = psycopg.connect(self.url, autocommit=True, **self._connect_kwargs)
                self._listener.execute(f"LISTEN {self._channel}")
            for _ in self._listener.notifies(timeout=timeout, stop_after=1):
                return True
            return False
        except psycopg.Error:
            # lost connection: fall back to polling, reconnect next time
            self._close_listener()
            time.sleep(timeout)
            return False

    def _close_listener(self) -> None:
        if self._listener is not None:
            try:
                self._listener.close()
            except psycopg.Error:
                pass
            self._listener = None

    def _migrate(self) -> None:
        with self._pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATE_LOCK,))
            if self.schema:
                cur.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
            migrations.apply(_Cursor(cur), migrations.POSTGRES)

    def close(self) -> None:
        self._close_listener()
        self._pool.close()


@contextmanager
def _outage_as_unavailable():
    """A lost or unreachable database is an outage the caller may retry
    (UNAVAILABLE), not a bug in the request."""
    try:
        yield
    except (psycopg.OperationalError, PoolTimeout) as exc:
        raise Unavailable(f"the database is unavailable: {exc}") from exc


def _one_line(exc: BaseException, url: str) -> str:
    """A driver error as one line, without the URL's password (libpq does
    not print it; this makes sure)."""
    text = "; ".join(line.strip(" \t-") for line in str(exc).splitlines() if line.strip())
    try:
        password = psycopg.conninfo.conninfo_to_dict(url).get("password")
    except psycopg.Error:
        password = None
    return text.replace(password, "***") if password else text


def _schema_from_url(url: str) -> str:
    """The schema named by ?options=-csearch_path=NAME, if any."""
    options = parse_qs(urlparse(url).query).get("options", [""])[0]
    found = _SCHEMA.search(options)
    return found.group(1) if found else ""
