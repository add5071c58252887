"""Shared fixtures. `store_url` runs a test once per store implementation:
SQLite in a temporary file and the real PostgreSQL server (a private schema
per test, dropped afterwards). PostgreSQL being down is a failure, not a skip:
.ci/run starts it."""

from __future__ import annotations

import os
import uuid

import psycopg
import pytest

from hashdb import open_store
from tests.helpers import stop_started_processes

PG_URL = os.environ.get("HASHSVC_TEST_PG", "postgresql://127.0.0.1:5432/test")


def pg_schema_url(schema: str) -> str:
    return f"{PG_URL}?options=-csearch_path%3D{schema}"


@pytest.fixture
def pg_url():
    schema = f"hashsvc_test_{uuid.uuid4().hex[:12]}"
    yield pg_schema_url(schema)
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/hashsvc.db"
    return request.getfixturevalue("pg_url")


@pytest.fixture
def store(store_url):
    """An open store on each implementation, closed at the test's end."""
    s = open_store(store_url)
    yield s
    s.close()


@pytest.fixture(autouse=True)
def _stop_processes():
    """Every process a test started through tests.helpers.popen is stopped
    when the test ends, also when it failed half-way."""
    yield
    stop_started_processes()
