"""Partner feeds across processes and replicas: a server killed with kill -9
mid-fetch resumes from its last committed checkpoint without duplicates, two
replicas on one PostgreSQL store fetch a feed one at a time, and the
background fetcher fetches due feeds on its own."""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import signal
import subprocess
import sys

import grpc
import pytest

from hashdb import open_store
from hashsvc.core import auth
from hashsvc.core.config import ExchangeSettings
from hashsvc.v1 import hashsvc_pb2 as pb
from hashsvc.v1 import hashsvc_pb2_grpc as pb_grpc
from hashsvc_testing.exchange_servers import TcapServer, wait_until
from tests.helpers import popen
from tests.test_process import REPO, ServerProcess

RECORDS = 12


def _tcap(page_size: int, delay: float) -> TcapServer:
    tcap = TcapServer(page_size=page_size)
    for _ in range(RECORDS):
        tcap.add(secrets.token_hex(32), ideology="islamist")
    tcap.delay = delay
    return tcap


@pytest.fixture
def admin_metadata(store_url):
    store = open_store(store_url)
    _, token = auth.create_token(store, "admin", "test")
    store.close()
    return (("authorization", f"Bearer {token}"),)


def _add_feed(channel, md, tcap_url: str, every: int = 3600) -> None:
    pb_grpc.CurationStub(channel).CreateSet(pb.CreateSetRequest(name="s"), metadata=md)
    pb_grpc.ExchangeStub(channel).AddFeed(
        pb.AddFeedRequest(
            name="tcap",
            api="tcap",
            set="s",
            options={"base_url": tcap_url},
            every_seconds=every,
            credentials="user:secret-pass",
        ),
        metadata=md,
    )


def _feed(channel, md) -> pb.Feed:
    return pb_grpc.ExchangeStub(channel).GetFeed(pb.GetFeedRequest(name="tcap"), metadata=md)


def _entry_count(channel, md) -> int:
    return pb_grpc.CurationStub(channel).GetSet(pb.GetSetRequest(name="s"), metadata=md).entry_count


def test_kill_9_mid_fetch_resumes_from_the_checkpoint_without_duplicates(
    store_url, admin_metadata, tmp_path
):
    config = tmp_path / "hashsvc.toml"
    # background off: the test fetches; a short lease, so the restarted server
    # may take over the dead one's feed soon
    config.write_text("[exchange]\nbackground = false\nlease_seconds = 2.0\n")
    args = ("--config", str(config))
    md = admin_metadata
    with _tcap(page_size=2, delay=0.3) as tcap:
        server = ServerProcess(store_url, tmp_path, args)
        _add_feed(server.channel, md, tcap.url)
        env = {
            **os.environ,
            "HASHSVC_SERVER": f"127.0.0.1:{server.port}",
            "HASHSVC_TOKEN": md[0][1].removeprefix("Bearer "),
        }
        fetch = popen(
            [sys.executable, "-m", "hashsvc", "exchange", "fetch", "tcap"],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        assert wait_until(lambda: _feed(server.channel, md).checkpoint != "", timeout=30)
        assert wait_until(lambda: tcap.page_requests >= 3, timeout=30)
        fetching = fetching_children(server.proc.pid)
        assert len(fetching) == 1  # exchange.fetch_process: the pages' child
        server.stop(signal.SIGKILL)
        assert fetch.wait(timeout=60) == 3  # the CLI: server unreachable
        # the kernel told the child its server died (PR_SET_PDEATHSIG): it ended
        assert wait_until(lambda: not fetching_children(server.proc.pid), timeout=30)
        committed = _entry_count_in_store(store_url)
        assert 0 < committed < RECORDS

        server = ServerProcess(store_url, tmp_path, args)
        before = tcap.page_requests

        # the dead replica's lease runs out after lease_seconds; until then
        # a fetch is refused, never run twice
        def fetched() -> bool:
            try:
                list(
                    pb_grpc.ExchangeStub(server.channel).FetchFeed(
                        pb.FetchFeedRequest(name="tcap"), metadata=md
                    )
                )
                return True
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.FAILED_PRECONDITION, exc.details()
                assert "another replica" in exc.details()
                return False

        assert wait_until(fetched, timeout=30, step=0.5)
        resumed_pages = tcap.page_requests - before
        assert resumed_pages < RECORDS // 2  # from the checkpoint, not from the start
        feed = _feed(server.channel, md)
        assert _entry_count(server.channel, md) == RECORDS
        assert (feed.added, feed.items, feed.last_result) == (RECORDS, RECORDS, "ok")
        server.stop(signal.SIGTERM)


def fetching_children(server_pid: int) -> list[int]:
    """Live fetching children (hashsvc/exchange/fetch_process.py) started by
    the server process `server_pid`."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                args = f.read().split(b"\0")
            with open(f"/proc/{pid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        fetching = b"hashsvc.exchange.fetch_process" in args
        if fetching and str(server_pid).encode() in args and state != "Z":
            found.append(int(pid))
    return found


def _entry_count_in_store(store_url: str) -> int:
    store = open_store(store_url)
    try:
        return store.get_set("s").entry_count
    finally:
        store.close()


def test_two_replicas_on_postgresql_fetch_a_feed_one_at_a_time(pg_url, make_harness):
    settings = ExchangeSettings(
        background=True, poll_seconds=0.1, lease_seconds=30, http_timeout_seconds=5,
        min_every_seconds=1,
    )  # fmt: skip
    with _tcap(page_size=2, delay=0.1) as tcap:
        first = make_harness(pg_url, exchange=dataclasses.replace(settings, background=False))
        stubs, md = first.stubs("operator")
        _add_feed(stubs.channel, md, tcap.url)
        second = make_harness(pg_url, exchange=settings)
        third = make_harness(pg_url, exchange=settings)
        first.running.feeds.settings = settings
        first.running.feeds.start()
        # three replicas poll every 0.1 s: exactly one of them fetches it
        assert wait_until(lambda: _feed(stubs.channel, md).last_result == "ok", timeout=30)
        assert tcap.page_requests == RECORDS // 2  # one fetch's pages, once
        feed = _feed(stubs.channel, md)
        assert (feed.added, feed.items, feed.fetching_replica) == (RECORDS, RECORDS, "")
        for replica in (first, second, third):
            r_stubs, r_md = replica.stubs("matcher")
            found = r_stubs.matcher.Match(
                pb.MatchRequest(
                    signal=pb.SignalValue(signal_type="pdq", value=tcap.records[0].hash_digest)
                ),
                metadata=r_md,
            )
            assert found.decision == pb.BLOCK
        # while one replica holds the feed, a fetch on another is refused
        store = first.core.store
        feed_id = store.get_feed("tcap").id
        assert store.acquire_feed_lease(feed_id, "someone-else", 30)
        with pytest.raises(grpc.RpcError) as err:
            list(stubs.exchange.FetchFeed(pb.FetchFeedRequest(name="tcap"), metadata=md))
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "another replica" in err.value.details()


def test_status_json_names_every_field(make_harness, tmp_path):
    """`hashsvc exchange status --json`: the public field names."""
    import io
    from contextlib import redirect_stdout

    from hashsvc.client.cli import main

    path = tmp_path / "l.txt"
    path.write_text(f"pdq {secrets.token_hex(32)}\n")
    h = make_harness(
        f"sqlite:///{tmp_path}/db.sqlite",
        exchange=ExchangeSettings(background=False, min_every_seconds=1, file_dir=str(tmp_path)),
    )
    stubs, md = h.stubs("operator")
    stubs.curation.CreateSet(pb.CreateSetRequest(name="s"), metadata=md)
    env = {"HASHSVC_TOKEN": h.tokens["operator"]}
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        base = ["--server", h.address]
        assert main([*base, "exchange", "add", "f", "--api", "file", "--set", "s",
                     "--path", str(path), "--every", "1h", "--label", "k=v"]) == 0  # fmt: skip
        assert main([*base, "exchange", "fetch", "f"]) == 0
        out = io.StringIO()
        with redirect_stdout(out):
            assert main([*base, "exchange", "status", "--json"]) == 0
        row = json.loads(out.getvalue())
        shown = io.StringIO()
        with redirect_stdout(shown):
            assert main([*base, "exchange", "show", "f", "--json"]) == 0
            assert main([*base, "exchange", "disable", "f"]) == 0
            assert main([*base, "exchange", "list", "--json"]) == 0
            assert main([*base, "exchange", "enable", "f"]) == 0
            assert main([*base, "exchange", "remove", "f"]) == 0
            assert main([*base, "exchange", "list", "--json"]) == 0
            assert main([*base, "exchange", "show", "f"]) == 1  # NOT_FOUND
    assert set(row) >= {"name", "last_fetch", "result", "added", "updated", "deleted",
                        "checkpoint", "next_run"}  # fmt: skip
    assert (row["name"], row["result"], row["added"]) == ("f", "ok", 1)
    show, listed = (json.loads(line) for line in shown.getvalue().splitlines())
    assert show["labels"] == {"k": "v"} and show["every_seconds"] == 3600
    assert show["has_credentials"] is False and show["feedback"] == []
    assert listed["enabled"] is False
