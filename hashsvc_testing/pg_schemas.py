"""A PostgreSQL schema of its own for a test or a bench run. The database
(HASHSVC_TEST_PG, `test` on 127.0.0.1) is shared by everything that runs on
the machine: a fixed schema name let one bench run drop the tables another
was loading ("relation changes does not exist" in the middle of CI's
bench/load.py), so every run takes a new name and drops it when done."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

PG_URL = os.environ.get("HASHSVC_TEST_PG", "postgresql://127.0.0.1:5432/test")


def schema_url(schema: str, application_name: str | None = None) -> str:
    url = f"{PG_URL}?options=-csearch_path%3D{schema}"
    return url + (f"&application_name={application_name}" if application_name else "")


@contextmanager
def fresh_schema(prefix: str, application_name: str | None = None) -> Iterator[str]:
    """The URL of a new, empty schema named `prefix` and a random suffix
    (the store creates its tables in it), dropped on the way out."""
    import psycopg

    schema = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield schema_url(schema, application_name)
    finally:
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
