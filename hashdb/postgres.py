"""PostgreSQL store: the production store that several replicas share."""

from __future__ import annotations

import math
import re
import time
from contextlib import contextmanager, nullcontext
from urllib.parse import parse_qs, urlparse

import psycopg
from psycopg import errors as pg_errors
from psycopg_pool import ConnectionPool, PoolTimeout

from hashdb import columns, migrations
from hashdb.bulk_sql import AddedSignals, PlainSignals
from hashdb.exchange_sql import ExchangeSQL
from hashdb.label_sets import joined_text
from hashdb.retro_sql import RetroSQL
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
# Giving committed events their seq (hashdb/outbox_sql.py) takes turns.
_SEQUENCE_LOCK = 0x687376_04
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

    @property
    def rowcount(self) -> int:
        return self._cur.rowcount

    def copy(self, sql: str):
        """psycopg's COPY ... FROM STDIN context (write / write_row)."""
        return self._cur.copy(sql)


class PostgresStore(SQLStore, ReviewSQL, RetroSQL, ExchangeSQL):
    _unique_violation = pg_errors.UniqueViolation
    _SIGNALS_AS_BYTES = "convert_to(query_signals, 'UTF8')"
    _HELD_LOCK = " FOR SHARE"

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
            self.sign_outbox_legacy()
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

    def _sequence_lock(self, cur) -> None:
        cur.execute("SELECT pg_advisory_xact_lock(?)", (_SEQUENCE_LOCK,))

    def _db_now(self, cur) -> int:
        # one clock for every replica's leases: the database's
        cur.execute("SELECT (EXTRACT(EPOCH FROM clock_timestamp()) * 1000000)::bigint")
        return cur.fetchone()[0]

    def _endpoint_write(self):
        # a webhook endpoint's row touches no change feed: no wait for a bulk load
        return self._counter_write()

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

    # -- bulk writes (hashdb/bulk_sql.py)

    # The history has its own lock and a Match waits for no bulk write:
    # longer and fewer transactions.
    bulk_write_seconds = 0.25

    def _in_list(self, column: str) -> str:
        return f"{column} = ANY(?)"

    # One probe of the key index per key, whatever the statistics say: after
    # a first fetch of 1M items, before an ANALYZE, the planner read the
    # feed's whole mapping for `item_key = ANY(?)` (3 s for an incremental
    # fetch's 1,000 keys)
    _items_by_key = (
        "i.item_key, i.entry_name, i.source_id FROM unnest(?::text[]) AS k(item_key)"
        " CROSS JOIN LATERAL (SELECT item_key, entry_name, source_id FROM exchange_items"
        " WHERE feed_id = ? AND item_key = k.item_key) AS i"
    )

    def _list_param(self, values: list):
        return list(values)

    def _insert_rows(self, cur, table: str, columns: str, rows: list[tuple]) -> None:
        if not rows:
            return
        # COPY: one round trip for the whole batch
        with cur.copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)

    def _existing(self, cur, set_id: int, names: list[str]) -> dict[str, tuple[int, str]]:
        # One probe of the name index per name, whatever the statistics
        # say: while a load grows a new set, stale ones made the planner
        # scan the whole set for every batch (300 rows/s at 100k).
        # LIMIT 1 keeps the subquery a per-name lookup (names are unique
        # among active entries); names hold no control characters, so a
        # newline-joined text is one cheap parameter (psycopg dumps a
        # list name by name).
        cur.execute(
            "SELECT e.id, e.name, (SELECT l.labels FROM label_sets l WHERE l.id = e.label_set_id),"
            " e.source_id FROM unnest(string_to_array(?, E'\\n')) AS n(name)"
            " CROSS JOIN LATERAL (SELECT id, name, label_set_id, source_id FROM entries"
            " WHERE set_id = ? AND name = n.name AND removed_at IS NULL LIMIT 1) AS e",
            ("\n".join(names), set_id),
        )
        return {
            name: (entry_id, joined_text(labels, source_id))
            for entry_id, name, labels, source_id in cur.fetchall()
        }

    def _label_set_ids(self, cur, texts: list[str]) -> dict[str, int]:
        # by the digest label_sets is indexed by (a text may be longer than a
        # B-tree key); looked up first: a load's sets are there after its
        # first write. ON CONFLICT DO NOTHING waits for a replica adding the
        # same set, then takes its row.
        key = migrations.POSTGRES_LABEL_KEY
        query = (
            "SELECT l.labels, l.id FROM unnest(?::text[]) AS t(labels) CROSS JOIN LATERAL"
            f" (SELECT labels, id FROM label_sets WHERE {key.format('labels')} ="
            f" {key.format('t.labels')} AND labels = t.labels) AS l"
        )
        cur.execute(query, (texts,))
        found = dict(cur.fetchall())
        if len(found) < len(set(texts)):
            # in one order on every replica: two writes adding the same new
            # sets wait for each other's rows in turn instead of deadlocking
            new = sorted({text for text in texts if text not in found})
            cur.execute(
                "INSERT INTO label_sets (labels) SELECT unnest(?::text[]) ON CONFLICT DO NOTHING",
                (new,),
            )
            cur.execute(query, (new,))
            found.update(cur.fetchall())
        return found

    def _reserve_entry_ids(self, cur, count: int) -> int:
        # A range in one step (nextval a row costs 3 us): every insert into
        # entries runs in a _write transaction, which holds the change-feed
        # lock, so no other nextval comes between these two.
        cur.execute(
            "SELECT setval(pg_get_serial_sequence('entries', 'id'),"
            " nextval(pg_get_serial_sequence('entries', 'id')) + ? - 1)",
            (count,),
        )
        return cur.fetchone()[0] - count + 1

    def _bulk_written(self, cur, changed: bool) -> None:
        if changed:
            cur.execute(f"NOTIFY {self._channel}")  # once per batch, at commit

    def _note_in_write(self, added: AddedSignals, noted) -> None:
        # Before the commit, whose NOTIFY wakes the change poller (see
        # bulk_add_plain); ids come from a sequence and are never reused.
        if noted is not None:
            noted(added)

    def _insert_plain(self, cur, set_id, rows: PlainSignals, first_id, at, added_by) -> None:
        entries = (
            "entries (id, set_id, name, label_set_id, source_id, media_type, created_at, added_by)"
        )
        codes, texts, source_ids = rows.label_set_rows()
        set_ids = self._label_set_ids(cur, texts)
        if rows.named_after_values:
            # Binary COPY built by numpy: every field of a row has the same
            # length in all rows (names are "<kind>:<hex>", from the values).
            name_table = columns.name_rows(rows.name_prefix, rows.values)
            data = columns.entries_copy(
                first_id, set_id, name_table, set_ids[texts[0]], rows.media_type, at, added_by
            )
            _copy(cur, entries, data, binary=True)
        else:
            # COPY text built with joins: a feed's names, label sets and
            # source ids. Names hold no control characters; a backslash is
            # COPY's escape.
            names = rows.names()
            if any("\\" in name for name in names):
                names = [_copy_text(name) for name in names]
            # each label set's id as text made once
            labels = map([str(set_ids[text]) for text in texts].__getitem__, codes.tolist())
            if source_ids is None:
                ids_text = [r"\N"] * len(rows)
            else:
                ids_text = [
                    r"\N" if source_id is None else _copy_text(source_id)
                    for source_id in source_ids.tolist()
                ]
            tail = f"\t{rows.media_type}\t{at}\t{_copy_text(added_by)}\n"
            ids = range(first_id, first_id + len(rows))
            _copy(
                cur,
                entries,
                "".join(
                    [
                        f"{i}\t{set_id}\t{n}\t{label_set}\t{source_id}{tail}"
                        for i, n, label_set, source_id in zip(
                            ids, names, labels, ids_text, strict=True
                        )
                    ]
                ),
            )
        qualities = rows.qualities
        signals = "entry_signals (entry_id, variant_no, kind, variant, value, quality)"
        if qualities is None or qualities.min() >= 0:
            _copy(
                cur,
                signals,
                columns.signals_copy(first_id, rows.kind, rows.values, qualities),
                binary=True,
            )
            return
        # COPY text (some rows have a quality, some none)
        ids = range(first_id, first_id + len(rows))
        kind_variant = f"\t0\t{rows.kind}\toriginal\t\\\\x"
        quality_text = [r"\N" if q < 0 else str(q) for q in qualities.tolist()]
        _copy(
            cur,
            signals,
            "".join(
                [
                    f"{i}{kind_variant}{digits}\t{q}\n"
                    for i, digits, q in zip(
                        ids, columns.names("", rows.values), quality_text, strict=True
                    )
                ]
            ),
        )

    def _migrate(self) -> None:
        with self._pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATE_LOCK,))
            if self.schema:
                cur.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
            # A new store's ~130 statements sent without waiting for each
            # answer (pipeline mode; an error still ends the transaction): a
            # round trip each took 1.5 s of a loaded machine, 0.9 s pipelined
            # (every test on PostgreSQL makes a new schema)
            with conn.pipeline() if psycopg.Pipeline.is_supported() else nullcontext():
                migrations.apply(_Cursor(cur), migrations.POSTGRES)

    def close(self) -> None:
        self._close_listener()
        self._pool.close()


def _copy_text(value: str) -> str:
    """A value in COPY's text format."""
    return (
        value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
    )


def _copy(cur: _Cursor, target: str, data: str | bytes, binary: bool = False) -> None:
    options = " (FORMAT BINARY)" if binary else ""
    with cur.copy(f"COPY {target} FROM STDIN{options}") as copy:
        copy.write(data)


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
