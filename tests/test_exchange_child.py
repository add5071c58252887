"""A feed's pages fetched by a child process of the server
(exchange.fetch_process): a child killed mid-fetch, one that hangs, and a
server that stops mid-fetch each fail the fetch, never stall it, keep what
was committed, and leave no child behind; the next fetch resumes from the
checkpoint without duplicates. On SQLite and PostgreSQL."""

from __future__ import annotations

import dataclasses
import os
import resource
import secrets
import signal
import threading

import pytest

from hashsvc.base.errors import FailedPrecondition
from hashsvc.core.config import ExchangeSettings
from hashsvc.exchange.feeds import Feeds
from hashsvc_testing.exchange_servers import TcapServer, wait_until
from tests.test_exchange_process import fetching_children

RECORDS = 12
SETTINGS = ExchangeSettings(
    background=False, http_timeout_seconds=5.0, http_retries=0, min_every_seconds=1
)


def _children() -> list[int]:
    """Fetching children of this process (the harness's server runs here)."""
    return fetching_children(os.getpid())


@pytest.fixture
def tcap():
    with TcapServer(page_size=2) as server:
        for _ in range(RECORDS):
            server.add(secrets.token_hex(32), ideology="islamist")
        server.delay = 0.4  # a page every 0.4 s: the fetch takes ~2.5 s
        yield server


def _feeds(make_harness, store_url, tcap, **settings) -> Feeds:
    h = make_harness(store_url, exchange=dataclasses.replace(SETTINGS, **settings))
    feeds = h.running.feeds
    h.core.curation.create_set("s")
    feeds.add("admin", "tcap", "tcap", "s", {}, {"base_url": tcap.url}, 60, "user:secret-pass")
    return feeds


def _fetch_in_thread(feeds: Feeds) -> tuple[threading.Thread, list]:
    outcome: list = []

    def fetch() -> None:
        try:
            outcome.append(feeds.fetch("tcap", "admin"))
        except Exception as exc:
            outcome.append(exc)

    thread = threading.Thread(target=fetch)
    thread.start()
    return thread, outcome


def _child_after_a_page(feeds: Feeds) -> int:
    """The fetching child, once a page of the fetch is committed."""
    assert wait_until(lambda: feeds.get("tcap").checkpoint is not None, timeout=60)
    children = _children()
    assert len(children) == 1, children
    return children[0]


def _resumes_without_duplicates(feeds: Feeds, tcap: TcapServer) -> None:
    committed = feeds.get("tcap").items
    assert 0 < committed < RECORDS
    tcap.delay = 0.0
    before = tcap.page_requests
    result = feeds.fetch("tcap", "admin")
    assert result.added == RECORDS - committed  # from the checkpoint on
    assert tcap.page_requests - before <= (RECORDS - committed) // 2 + 2
    feed = feeds.get("tcap")
    assert (feed.items, feed.added, feed.last_result) == (RECORDS, RECORDS, "ok")
    assert feeds.core.store.get_set("s").entry_count == RECORDS
    assert len(_children()) == 1  # kept, idle, for the next fetch


def test_a_child_is_kept_for_the_next_fetch_and_stopped_with_the_server(
    make_harness, store_url, tcap
):
    """A fetch that ended cleanly leaves its child idle, imports done, and
    the next fetch uses it (a new one took 2-4 s to start on a busy
    machine); the partner's error ends a fetch cleanly too."""
    tcap.delay = 0.0
    feeds = _feeds(make_harness, store_url, tcap)
    assert feeds.fetch("tcap", "admin").added == RECORDS
    kept = _children()
    assert len(kept) == 1
    tcap.add(secrets.token_hex(32), ideology="islamist")
    assert feeds.fetch("tcap", "admin").added == 1
    tcap.fail_status = 500
    with pytest.raises(FailedPrecondition, match="HTTP 500"):
        feeds.fetch("tcap", "admin")
    assert _children() == kept
    feeds.stop()
    assert not _children()


def test_a_child_killed_mid_fetch_fails_the_fetch_and_the_next_resumes(
    make_harness, store_url, tcap
):
    feeds = _feeds(make_harness, store_url, tcap)
    thread, outcome = _fetch_in_thread(feeds)
    child = _child_after_a_page(feeds)
    os.kill(child, signal.SIGKILL)
    thread.join(timeout=60)
    assert isinstance(outcome[0], FailedPrecondition), outcome
    assert "the fetching process died (signal 9)" in str(outcome[0])
    feed = feeds.get("tcap")
    assert (feed.last_result, feed.failures) == ("failed", 1)
    assert "signal 9" in feed.last_error
    _resumes_without_duplicates(feeds, tcap)


def test_a_hung_child_is_killed_at_page_seconds_and_the_fetch_fails(make_harness, store_url, tcap):
    feeds = _feeds(make_harness, store_url, tcap, page_seconds=2.0)
    thread, outcome = _fetch_in_thread(feeds)
    child = _child_after_a_page(feeds)
    os.kill(child, signal.SIGSTOP)  # alive, sends nothing: a hang the HTTP timeouts miss
    thread.join(timeout=60)
    assert not thread.is_alive()
    assert "sent nothing for 2 s (exchange.page_seconds)" in str(outcome[0]), outcome
    assert child not in _children()  # killed and waited for (no zombie)
    feed = feeds.get("tcap")
    assert (feed.last_result, feed.failures) == ("failed", 1)
    _resumes_without_duplicates(feeds, tcap)


def test_the_child_is_stopped_when_the_server_stops(make_harness, store_url, tcap):
    feeds = _feeds(make_harness, store_url, tcap)
    thread, outcome = _fetch_in_thread(feeds)
    child = _child_after_a_page(feeds)
    feeds.stop()
    thread.join(timeout=60)
    assert "the server is stopping" in str(outcome[0]), outcome
    assert child not in _children()
    store = feeds.core.store
    feed = store.get_feed("tcap")
    assert feed.last_result == "failed"
    assert 0 < feed.items < RECORDS  # the pages committed before the stop are kept


def test_a_server_with_many_open_files_still_reads_its_child(tcap):
    """The child's pipe is waited on by poll, not select(): a server holding
    over 1,024 descriptors (clients' connections, its pools) gave the pipe a
    number select() refuses, and every fetch failed with "filedescriptor out
    of range in select()"."""
    from hashsvc.exchange.fetch_process import FetchChildren, child_pages
    from hashsvc.exchange.sources import SourceConfig

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 1200
    assert hard == resource.RLIM_INFINITY or hard >= wanted + 100, hard
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted + 100), hard))
    held = []
    children = FetchChildren(nice=10)
    try:
        while len(held) < wanted:
            held.append(os.open(os.devnull, os.O_RDONLY))
        assert held[-1] > 1024
        tcap.delay = 0.0
        config = SourceConfig("tcap", {"base_url": tcap.url}, "user:secret-pass", 5.0, 0)
        pages = child_pages(children, "tcap", config, None, 60.0, threading.Event())
        assert sum(len(page.items) for page in pages) == RECORDS
    finally:
        children.close()  # the child kept idle for a next fetch
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert not _children()
