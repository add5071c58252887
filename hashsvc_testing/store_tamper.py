"""What someone with database access does to a store behind hashsvc's back,
for the tests that check it is caught: the append-only triggers of the
tables named switched off (dropped on SQLite, disabled on PostgreSQL: off
for good on both), then the statements run. And a store made at an older
schema, to write into it as an older server did."""

from __future__ import annotations

import sqlite3

import psycopg

from hashdb import migrations

# each table's append-only triggers on SQLite (PostgreSQL disables a table's
# user triggers at once)
SQLITE_TRIGGERS = {
    "match_history": ("match_history_no_update", "match_history_no_delete"),
    "match_history_sets": ("match_history_sets_no_update", "match_history_sets_no_delete"),
    "match_history_views": ("match_history_views_no_update", "match_history_views_no_delete"),
}


def tamper(store_url: str, tables: tuple[str, ...], *statements: str) -> None:
    if store_url.startswith("sqlite"):
        conn = sqlite3.connect(store_url[len("sqlite:///") :])
        for table in tables:
            for trigger in SQLITE_TRIGGERS[table]:
                conn.execute(f"DROP TRIGGER IF EXISTS {trigger}")
        for sql in statements:
            conn.execute(sql)
        conn.commit()
        conn.close()
        return
    with psycopg.connect(store_url) as conn:
        for table in tables:
            conn.execute(f"ALTER TABLE {table} DISABLE TRIGGER USER")
        for sql in statements:
            conn.execute(sql)


def store_before(store_url: str, migration: list[str]):
    """A new store at the schema before `migration` (one of hashdb.migrations'
    lists), with a connection and a cursor taking `?` placeholders to write
    into it as the server of that schema did."""
    every = migrations.SQLITE if store_url.startswith("sqlite") else migrations.POSTGRES
    older = every[: every.index(migration)]
    if store_url.startswith("sqlite"):
        conn = sqlite3.connect(store_url[len("sqlite:///") :])
        cur = conn.cursor()
    else:
        from hashdb.postgres import _Cursor, _schema_from_url

        conn = psycopg.connect(store_url)
        conn.execute(f'CREATE SCHEMA "{_schema_from_url(store_url)}"')
        cur = _Cursor(conn.cursor())
    migrations.apply(cur, older)
    return conn, cur
