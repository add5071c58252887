"""How a fetch's pages commit (issue 22), both stores: a failed commit stops
the fetch before any checkpoint moves past it; leases are kept apart from
the commits, which queue behind every feed's; and every write transaction a
fetch makes is short (on SQLite each holds the writer lock that a Match's
history record waits for)."""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time

import grpc
import pytest

from hashsvc_testing.exchange_servers import TcapServer
from tests.test_exchange import SETTINGS, _add, _fetch, _hex, _set


@pytest.fixture
def harness_config(tmp_path) -> dict:
    """File feeds may read the test's own directory (exchange.file_dir)."""
    return {"exchange": dataclasses.replace(SETTINGS, file_dir=str(tmp_path))}


class _CountingExecutor:
    """The feeds' committer, counting what was handed to it."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.submitted = 0

    def submit(self, *args, **kwargs):
        self.submitted += 1
        return self.inner.submit(*args, **kwargs)

    def shutdown(self, *args, **kwargs):
        return self.inner.shutdown(*args, **kwargs)


def _wait_for(condition, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_a_failed_page_commit_stops_the_fetch_before_its_checkpoint(harness, monkeypatch):
    """Page 2's commit fails while page 3's is queued behind it: page 3's
    checkpoint would cover page 2's items, left unmapped (a deletion at the
    source could then never remove their entries). The fetch stops at the
    failure with page 1's checkpoint, and the next fetch maps the rest."""
    stubs, md = harness.stubs("operator")
    _set(stubs, md)
    store, feeds = harness.core.store, harness.running.feeds
    committer = _CountingExecutor(feeds.committer)
    monkeypatch.setattr(feeds, "committer", committer)
    commit = store.commit_feed_page
    checkpoints = []

    def failing_second(feed_id, owner, checkpoint, *args, **kwargs):
        checkpoints.append(checkpoint)
        if len(checkpoints) == 2:
            _wait_for(lambda: committer.submitted >= 3)  # page 3's is queued
            raise OSError("disk full")
        return commit(feed_id, owner, checkpoint, *args, **kwargs)

    monkeypatch.setattr(store, "commit_feed_page", failing_second)
    with TcapServer(page_size=2) as tcap:
        for _ in range(10):
            tcap.add(_hex())
        _add(stubs, md, "tcap", "tcap", "user:secret-pass", base_url=tcap.url)
        with pytest.raises(grpc.RpcError) as err:
            _fetch(stubs, md, "tcap")
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "disk full" in err.value.details()
        assert len(checkpoints) == 2  # no page after the failed one was committed
        feed = store.get_feed("tcap")
        assert (feed.checkpoint, feed.items) == (checkpoints[0], 2)

        monkeypatch.setattr(store, "commit_feed_page", commit)
        _fetch(stubs, md, "tcap")
        feed = store.get_feed("tcap")
        assert (feed.items, feed.added) == (10, 10)
        assert len(store.all_feed_items(feed.id)) == 10


def test_a_feeds_lease_is_kept_while_another_feeds_commit_holds_the_committer(
    make_harness, store_url, monkeypatch
):
    """Every feed's pages commit on one thread, in turn: a feed whose commit
    takes longer than the lease (a huge page, a slow disk) held up another
    feed's commits, and so its lease renewals, until a second replica could
    take that feed too. Leases are renewed apart from the commits."""
    lease = 2.0
    h = make_harness(store_url, exchange=dataclasses.replace(SETTINGS, lease_seconds=lease))
    stubs, md = h.stubs("operator")
    _set(stubs, md)
    store = h.core.store
    commit = store.commit_feed_page
    slow_started, slow_go = threading.Event(), threading.Event()

    def slow_for_a(feed_id, *args, **kwargs):
        if feed_id == store.get_feed("a").id and not slow_started.is_set():
            slow_started.set()
            slow_go.wait(30)
        return commit(feed_id, *args, **kwargs)

    monkeypatch.setattr(store, "commit_feed_page", slow_for_a)
    with TcapServer(page_size=5) as tcap_a, TcapServer(page_size=5) as tcap_b:
        for tcap in (tcap_a, tcap_b):
            for _ in range(5):
                tcap.add(_hex())
        _add(stubs, md, "a", "tcap", "user:secret-pass", base_url=tcap_a.url)
        _add(stubs, md, "b", "tcap", "user:secret-pass", base_url=tcap_b.url)
        done: dict = {}

        def fetch(name: str) -> None:
            with contextlib.suppress(grpc.RpcError):
                done[name] = _fetch(stubs, md, name)[-1]

        threads = [threading.Thread(target=fetch, args=(name,)) for name in "ab"]
        threads[0].start()
        try:
            assert slow_started.wait(30)
            threads[1].start()
            _wait_for(lambda: tcap_b.page_requests > 0)
            time.sleep(lease * 1.5)  # b's commit waits behind a's, past b's lease
            for name in "ab":  # another replica finds both held
                assert not store.acquire_feed_lease(store.get_feed(name).id, "other", lease)
        finally:
            slow_go.set()
            for thread in threads:
                thread.join(60)
        assert (done["a"].added, done["b"].added) == (5, 5)


def test_every_write_transaction_of_a_fetch_is_short(harness, tmp_path, monkeypatch):
    """A 40,000-line file feed (one page): each write transaction the fetch
    makes (its entries, its item mapping, its checkpoint) costs its thread
    at most 60 ms of CPU, so a Match's history record (SQLite's one writer
    lock) never waits long. CPU, not wall time: the machine may be busy.
    Before, the page's mapping went in two 20,000-item transactions."""
    stubs, md = harness.stubs("operator")
    _set(stubs, md)
    store = harness.core.store
    longest: list[tuple[float, str]] = []

    def timed(name: str):
        own = getattr(type(store), name)

        @contextlib.contextmanager
        def transaction(*args, **kwargs):
            with own(store, *args, **kwargs) as cur:
                started = time.thread_time()
                try:
                    yield cur
                finally:
                    spent = time.thread_time() - started
                    longest.append((spent, threading.current_thread().name))

        return transaction

    path = tmp_path / "list.txt"
    path.write_text("".join(f"pdq {_hex()}\n" for _ in range(40_000)))
    _add(stubs, md, "file", "file", path=str(path))
    monkeypatch.setattr(store, "_write", timed("_write"))
    for name in ("_counter_write", "_history_write"):
        if name in type(store).__dict__:  # PostgreSQL's own transactions
            monkeypatch.setattr(store, name, timed(name))
    assert _fetch(stubs, md, "file")[-1].added == 40_000
    monkeypatch.undo()
    longest.sort(reverse=True)
    assert longest and longest[0][0] < 0.06, longest[:5]


def _queued(lock) -> int:
    with lock._cond:
        return len(lock._waiting) + len(lock._first)


def test_a_match_record_waits_only_for_the_write_under_way_on_sqlite(tmp_path):
    """During a fetch the bulk writer and the mapping committer keep writes
    queued for SQLite's writer lock; a Match's history record arriving
    behind them went after all of them (its pause was their sum). It now
    goes once the write under way ends; a flood of records still lets a
    queued write through after _FairLock.FIRST_RUN of them."""
    from datetime import UTC, datetime

    from hashdb import HistoryRecord
    from hashdb.sqlite import SQLiteStore, _FairLock

    store = SQLiteStore(f"sqlite:///{tmp_path}/pauses.db")
    order: list[str] = []
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with store._write():
            holding.set()
            assert release.wait(30)

    def write(name: str) -> None:
        with store._write():
            order.append(name)

    def record(name: str) -> None:
        store.record_match(
            HistoryRecord(
                request_id=name,
                time=datetime.now(UTC),
                caller="pipeline",
                rpc="Match",
                media_type="image",
                decision="allow",
                status="OK",
            )
        )

    # A record's turn is noted inside its write, as the plain writes' are:
    # noted after record_match returned, the writer it let in could note its
    # own turn first (a race the test lost now and then under load).
    history_write = store._history_write

    @contextlib.contextmanager
    def noted_history_write():
        with history_write() as cur:
            order.append(threading.current_thread().name)
            yield cur

    store._history_write = noted_history_write

    try:
        holder = threading.Thread(target=hold)
        holder.start()
        assert holding.wait(30)
        threads = []
        # two writes queued, then more records than FIRST_RUN
        names = ["bulk", "mapping"] + [f"match{n}" for n in range(_FairLock.FIRST_RUN + 1)]
        for n, name in enumerate(names):
            target = record if name.startswith("match") else write
            thread = threading.Thread(target=target, args=(name,), name=name)
            thread.start()
            threads.append(thread)
            _wait_for(lambda n=n: _queued(store._writer) == n + 1)
        release.set()
        for thread in [holder, *threads]:
            thread.join(30)
        first = [f"match{n}" for n in range(_FairLock.FIRST_RUN)]
        assert order == [*first, "bulk", f"match{_FairLock.FIRST_RUN}", "mapping"]
        assert all(store.history_ids_by_request(name) for name in names if "match" in name)
    finally:
        release.set()
        store.close()


def test_the_server_hands_the_gil_to_a_waiting_match_within_its_setting(harness):
    """A Match waits for the GIL at each store round trip while a fetch's
    threads are busy in Python: the server sets how soon a busy thread
    hands it over (Config.gil_switch_seconds), and refuses what cannot work."""
    import sys

    from hashsvc.core.config import Config

    assert harness.core.config.gil_switch_seconds == 0.001
    assert sys.getswitchinterval() == pytest.approx(0.001)
    for bad in (-0.001, 2.0, float("nan"), 1e-9, 0.00005):
        with pytest.raises(ValueError, match="gil_switch_seconds"):
            Config(gil_switch_seconds=bad)


def test_the_process_gets_its_gil_switch_interval_back_when_the_servers_stop(
    make_harness, tmp_path
):
    """sys.setswitchinterval is the whole process's: a server holds its
    setting while it runs (side by side, the shortest asked for), and the
    process's own comes back when the last one stops, and when one cannot
    start; 0 leaves it alone."""
    import socket
    import sys

    from hashsvc.api.server import StartupError, start_server
    from hashsvc.core.config import Config

    before = sys.getswitchinterval()
    own = 0.004
    sys.setswitchinterval(own)  # the process's own, not Python's default
    try:
        one = make_harness(f"sqlite:///{tmp_path}/one.db", gil_switch_seconds=0.002)
        assert sys.getswitchinterval() == pytest.approx(0.002)
        two = make_harness(f"sqlite:///{tmp_path}/two.db", gil_switch_seconds=0.001)
        assert sys.getswitchinterval() == pytest.approx(0.001)
        make_harness.stop(two)
        assert sys.getswitchinterval() == pytest.approx(0.002)  # one still runs
        make_harness.stop(one)
        assert sys.getswitchinterval() == pytest.approx(own)
        untouched = make_harness(f"sqlite:///{tmp_path}/three.db", gil_switch_seconds=0)
        assert sys.getswitchinterval() == pytest.approx(own)
        make_harness.stop(untouched)
        # a server that cannot start (its port taken) gives it back too
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            config = Config(
                listen=f"127.0.0.1:{port}",
                db_url=f"sqlite:///{tmp_path}/four.db",
                gil_switch_seconds=0.002,
            )
            with pytest.raises(StartupError):
                start_server(config, hash_in_process=True)
        assert sys.getswitchinterval() == pytest.approx(own)
    finally:
        sys.setswitchinterval(before)
