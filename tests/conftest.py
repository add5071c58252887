"""Shared fixtures.

Stores: `store_url` runs a test once per store implementation: SQLite in a
temporary file and the real PostgreSQL server (a private schema per test,
dropped afterwards); `module_store_url` does the same for a fixture shared by
a module's tests; `store` is an open store on `store_url`. PostgreSQL being
down is a failure, not a skip: .ci/run starts it.

Servers (tests/helpers.py Harness: a real server on a free port with a token
per role): `harness` on `store_url`; `admin`, `operator`, `matcher`, `auditor`
and `reviewer` are (stubs, metadata) for its role tokens; `module_harness` is
one server for a whole module (SQLite unless the module overrides
`module_harness_url`); `make_harness(db_url, **config)` starts more, with their
own limits (`make_module_harness` for a module's fixtures). A module overrides
`harness_config` or `module_harness_config` (a dict of Config fields) to give
the shared server its limits.

Cores without a network: `core` on `store_url` (`core_config` as above) and
`make_core(db_url, **config)`.

Whatever a test or module started is stopped at its end, also when it failed
half-way; `make_harness.stop(h)` and `make_core.stop(core)` stop one earlier
(a restart on the same store)."""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Generic, TypeVar

import psycopg
import pytest

from hashdb import open_store
from hashsvc.core.config import Config
from hashsvc.core.core import Core
from tests.helpers import Harness, start_harness, stop_started_processes

PG_URL = os.environ.get("HASHSVC_TEST_PG", "postgresql://127.0.0.1:5432/test")

T = TypeVar("T")


def pg_schema_url(schema: str) -> str:
    # synchronous_commit off for the tests' sessions: a commit returns before
    # its WAL reaches the disk (still atomic, and seen at once by every other
    # session). No test crashes PostgreSQL itself, so nothing they check
    # depends on it; each commit waited for an fsync (5-25 ms on the CI
    # machines: 300 history records 5.6-8.2 s -> 1.1-2.7 s under load), and
    # the suite commits tens of thousands of times. Benches keep the default.
    return f"{PG_URL}?options=-csearch_path%3D{schema}%20-csynchronous_commit%3Doff"


@contextmanager
def _pg_schema() -> Iterator[str]:
    schema = f"hashsvc_test_{uuid.uuid4().hex[:12]}"
    try:
        yield pg_schema_url(schema)
    finally:
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture
def pg_url():
    with _pg_schema() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/hashsvc.db"
    return request.getfixturevalue("pg_url")


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def module_store_url(request, tmp_path_factory):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('store')}/hashsvc.db"
        return
    with _pg_schema() as url:
        yield url


@pytest.fixture(scope="session")
def hostile_media(tmp_path_factory):
    """The folder hashsvc_testing.hostile makes its media in (seeds(),
    corpus()): made once per worker for every module that uses them (ffmpeg
    runs of seconds each)."""
    return tmp_path_factory.mktemp("hostile-media")


@pytest.fixture(params=["inprocess", "process"])
def retro_engine(request) -> str:
    """A retro-hunt test run once per engine that scans on this machine
    (Config.retro_engine: the server's thread, its child process)."""
    return request.param


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


@pytest.fixture(autouse=True)
def _restore_logging():
    """A test that runs `serve` in-process (hashsvc/base/logs.configure)
    points the root logger at that test's captured stderr, which pytest
    closes after it: any thread that logged later (a retro hunt of another
    test's Core) printed "Logging error ... I/O operation on closed file".
    The root logger's handlers and level are put back after each test."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


class Started(Generic[T]):
    """Starts things (servers, cores) and stops each one still running when
    the test or module that asked for it ends. Each stop is registered when
    the thing starts, so it runs before the teardown of the fixtures set up
    earlier (a PostgreSQL schema is dropped only after its server stopped)."""

    def __init__(
        self, start: Callable[..., T], stop: Callable[[T], None], request: pytest.FixtureRequest
    ) -> None:
        self._start = start
        self._stop = stop
        self._node = request.node
        self._running: list[T] = []

    def __call__(self, *args, **kwargs) -> T:
        thing = self._start(*args, **kwargs)
        self._running.append(thing)
        self._node.addfinalizer(lambda: self._stop_if_running(thing))
        return thing

    def stop(self, thing: T) -> None:
        """Stop one now (a restart on the same store, a server gone away)."""
        self._running.remove(thing)
        self._stop(thing)

    def _stop_if_running(self, thing: T) -> None:
        if any(t is thing for t in self._running):
            self.stop(thing)


# -- servers


@pytest.fixture
def make_harness(request) -> Started[Harness]:
    """make_harness(db_url, hash_in_process=True, **config) -> Harness."""
    return Started(start_harness, Harness.close, request)


@pytest.fixture(scope="module")
def make_module_harness(request) -> Started[Harness]:
    return Started(start_harness, Harness.close, request)


@pytest.fixture
def harness_config() -> dict:
    return {}


@pytest.fixture
def harness(make_harness, store_url, harness_config) -> Harness:
    return make_harness(store_url, **harness_config)


@pytest.fixture(scope="module")
def module_harness_url(tmp_path_factory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('module')}/hashsvc.db"


@pytest.fixture(scope="module")
def module_harness_config() -> dict:
    return {}


@pytest.fixture(scope="module")
def module_harness(make_module_harness, module_harness_url, module_harness_config) -> Harness:
    return make_module_harness(module_harness_url, **module_harness_config)


@pytest.fixture
def admin(harness):
    return harness.stubs("admin")


@pytest.fixture
def operator(harness):
    return harness.stubs("operator")


@pytest.fixture
def matcher(harness):
    return harness.stubs("matcher")


@pytest.fixture
def auditor(harness):
    return harness.stubs("auditor")


@pytest.fixture
def reviewer(harness):
    return harness.stubs("reviewer")


# -- cores without a network


def start_core(db_url: str, **config) -> Core:
    core = Core.open(Config(db_url=db_url, **config), hash_in_process=True)
    core.start()
    return core


@pytest.fixture
def make_core(request) -> Started[Core]:
    """make_core(db_url, **config) -> a started Core hashing in process."""
    return Started(start_core, Core.close, request)


@pytest.fixture
def core_config() -> dict:
    return {}


@pytest.fixture
def core(make_core, store_url, core_config) -> Core:
    return make_core(store_url, **core_config)
