"""Webhooks across real server processes (issue 20, bad days): kill -9 during
delivery loses no event (duplicates allowed, same id), on SQLite and
PostgreSQL; two replicas on one PostgreSQL outbox never send an event twice
at once, also when the one delivering is killed and the other takes over;
`hashsvc serve` refuses a bad webhook config; `hashsvc events list` shows
failures."""

from __future__ import annotations

import json
import os
import random
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from hashdb import open_store
from hashsvc.core import auth
from hashsvc.v1 import hashsvc_pb2 as pb
from hashsvc.v1 import hashsvc_pb2_grpc as pb_grpc
from hashsvc_testing.webhook_receiver import Receiver
from tests.helpers import popen

REPO = Path(__file__).resolve().parents[1]
SECRET = b"process-test-secret-0123456789"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config(tmp_path: Path, receiver: Receiver, **events) -> Path:
    secret = tmp_path / "webhook.secret"
    secret.write_bytes(SECRET)
    settings = {"poll_seconds": 0.05, "backoff_initial_seconds": 0.1, "backoff_max_seconds": 0.5}
    settings.update(events)
    lines = [
        "[[webhook]]",
        f'url = "{receiver.url}"',
        f'secret_file = "{secret}"',
        "timeout_seconds = 1",
        "[events]",
        *(f"{k} = {v}" for k, v in settings.items()),
    ]
    path = tmp_path / "hashsvc.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


class Server:
    def __init__(self, db_url: str, config: Path, tmp_path: Path) -> None:
        self.port = _free_port()
        self.log = open(tmp_path / f"server-{self.port}.log", "wb")  # noqa: SIM115
        self.proc = popen(
            [sys.executable, "-m", "hashsvc", "serve", "--listen", f"127.0.0.1:{self.port}",
             "--db", db_url, "--workers", "1", "--config", str(config)],
            cwd=REPO, stdout=self.log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.port}")
        self.matcher = pb_grpc.MatcherStub(self.channel)
        self.curation = pb_grpc.CurationStub(self.channel)
        health = health_pb2_grpc.HealthStub(self.channel)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"server exited with {self.proc.returncode}"
            try:
                status = health.Check(health_pb2.HealthCheckRequest(), timeout=1).status
                if status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
        raise AssertionError("server did not become ready")

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        self.channel.close()
        self.log.close()


def _tokens(db_url: str) -> tuple[tuple, tuple]:
    store = open_store(db_url)
    try:
        op = auth.create_token(store, "operator", f"op-{os.getpid()}-{time.time_ns()}")[1]
        m = auth.create_token(store, "matcher", f"m-{os.getpid()}-{time.time_ns()}")[1]
    finally:
        store.close()
    return (("authorization", f"Bearer {op}"),), (("authorization", f"Bearer {m}"),)


def _known(server: Server, op_md) -> pb.SignalValue:
    value = random.Random(5).randbytes(32).hex()
    server.curation.CreateSet(pb.CreateSetRequest(name="isis"), metadata=op_md)
    signal = pb.SignalValue(signal_type="pdq", value=value)
    server.curation.AddEntry(
        pb.AddEntryRequest(set="isis", name="k", signal=signal), metadata=op_md
    )
    return signal


def _first_arrivals(receiver: Receiver) -> list[int]:
    seen, order = set(), []
    for event_id in receiver.ids():
        if event_id not in seen:
            seen.add(event_id)
            order.append(event_id)
    return order


def test_kill_9_during_delivery_then_every_event_arrives(store_url, tmp_path):
    receiver = Receiver(SECRET, mode="slow", delay=0.02).start()
    try:
        # the killed server's lease on the endpoint runs out before the next
        # server delivers: 3 s, not the default 30 s the test waited for
        config = _config(tmp_path, receiver, lease_seconds=3)
        op_md, m_md = _tokens(store_url)
        server = Server(store_url, config, tmp_path)
        signal_value = _known(server, op_md)
        for n in range(60):
            resp = server.matcher.Match(
                pb.MatchRequest(signal=signal_value, client_ref=f"u{n}"), metadata=m_md
            )
            assert resp.decision == pb.BLOCK
        deadline = time.monotonic() + 20
        while len(receiver.ids()) < 10 and time.monotonic() < deadline:
            time.sleep(0.01)
        server.kill()  # mid-delivery: ~10 of 60 delivered
        assert len(set(receiver.ids())) < 60
        server = Server(store_url, config, tmp_path)
        assert receiver.wait_for(60, seconds=60), len(set(receiver.ids()))
        assert sorted(set(receiver.ids())) == list(range(1, 61))
        assert _first_arrivals(receiver) == list(range(1, 61))  # in order
        assert receiver.bad_signatures == 0
        refs = {r.event_id: r.body["client_ref"] for r in receiver.received}
        assert all(refs[n + 1] == f"u{n}" for n in range(60))  # a duplicate is the same event
        server.kill()
    finally:
        receiver.stop()


def test_two_replicas_on_postgresql_never_send_an_event_twice_at_once(pg_url, tmp_path):
    receiver = Receiver(SECRET, mode="slow", delay=0.01).start()
    try:
        config = _config(tmp_path, receiver, lease_seconds=3)
        op_md, m_md = _tokens(pg_url)
        first = Server(pg_url, config, tmp_path)
        second = Server(pg_url, config, tmp_path)
        signal_value = _known(first, op_md)
        for n in range(80):
            server = first if n % 2 else second
            server.matcher.Match(pb.MatchRequest(signal=signal_value), metadata=m_md)
        assert receiver.wait_for(80, seconds=60)
        assert receiver.overlaps == []
        assert receiver.ids() == list(range(1, 81))  # once each, in order
        # the replica holding the lease dies mid-delivery: the other takes
        # over when the lease runs out, and still no event is sent twice at once
        store = open_store(pg_url)
        try:
            for _ in range(80):
                first.matcher.Match(pb.MatchRequest(signal=signal_value), metadata=m_md)
            deadline = time.monotonic() + 10
            while len(receiver.ids()) < 90 and time.monotonic() < deadline:
                time.sleep(0.01)
            with store._read() as cur:
                cur.execute("SELECT lease_owner FROM webhook_endpoints")
                owner = cur.fetchone()[0]
        finally:
            store.close()
        holder = first if f":{first.proc.pid}:" in owner else second
        other = second if holder is first else first
        holder.kill()
        assert receiver.wait_for(160, seconds=60)
        assert receiver.overlaps == []
        assert sorted(set(receiver.ids())) == list(range(1, 161))
        assert _first_arrivals(receiver) == list(range(1, 161))
        other.kill()
    finally:
        receiver.stop()


def test_serve_refuses_a_bad_webhook_config(tmp_path):
    secret = tmp_path / "empty.secret"
    secret.write_bytes(b"")
    config = tmp_path / "bad.toml"
    config.write_text(f'[[webhook]]\nurl = "http://127.0.0.1:1/"\nsecret_file = "{secret}"\n')
    done = subprocess.run(
        [sys.executable, "-m", "hashsvc", "serve", "--listen", "127.0.0.1:0",
         "--db", f"sqlite:///{tmp_path}/x.db", "--config", str(config)],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode != 0
    assert "holds no secret" in done.stderr and "Traceback" not in done.stderr
    config.write_text(f'[[webhook]]\nurl = "file:///etc/passwd"\nsecret_file = "{secret}"\n')
    done = subprocess.run(
        [sys.executable, "-m", "hashsvc", "serve", "--listen", "127.0.0.1:0",
         "--db", f"sqlite:///{tmp_path}/x.db", "--config", str(config)],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode != 0 and "http:// or https://" in done.stderr


def test_events_list_failed_on_the_command_line(tmp_path):
    receiver = Receiver(SECRET, mode="error").start()
    try:
        config = _config(tmp_path, receiver)
        text = config.read_text().replace(
            "timeout_seconds = 1", "timeout_seconds = 1\nretry_for_seconds = 0.3"
        )
        config.write_text(text)
        db_url = f"sqlite:///{tmp_path}/cli.db"
        op_md, m_md = _tokens(db_url)
        server = Server(db_url, config, tmp_path)
        signal_value = _known(server, op_md)
        server.matcher.Match(pb.MatchRequest(signal=signal_value), metadata=m_md)
        store = open_store(db_url)
        try:
            sub = auth.create_token(store, "subscriber", "sub")[1]
            deadline = time.monotonic() + 20
            while not store.event_failures() and time.monotonic() < deadline:
                time.sleep(0.1)
        finally:
            store.close()
        env = {**os.environ, "HASHSVC_TOKEN": sub, "HASHSVC_SERVER": f"127.0.0.1:{server.port}"}

        def cli(*args: str) -> subprocess.CompletedProcess:
            return subprocess.run(
                [sys.executable, "-m", "hashsvc", "events", *args],
                cwd=REPO, env=env, capture_output=True, text=True, timeout=60,
            )  # fmt: skip

        done = cli("list", "--failed", "--json")
        assert done.returncode == 0, done.stderr
        [row] = [json.loads(line) for line in done.stdout.splitlines()]
        assert row["event_id"] == 1 and row["event_type"] == "match.block"
        assert row["last_error"] == "HTTP 500" and row["attempts"] >= 1
        done = cli("list")
        assert done.returncode == 0, done.stderr
        assert "match.block" in done.stdout and "1 failed" in done.stdout
        assert SECRET.decode() not in done.stdout + done.stderr
        done = cli("list", "--json")
        assert json.loads(done.stdout.splitlines()[0])["type"] == "match.block"
        tail = popen(
            [sys.executable, "-m", "hashsvc", "events", "tail", "--from", "1", "--json"],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        ready, _, _ = select.select([tail.stdout], [], [], 30)  # bounded: no line, no wait
        assert ready, "events tail printed nothing in 30 s"
        first = json.loads(tail.stdout.readline())  # then it follows; stopped below
        assert first["id"] == 1 and first["type"] == "match.block"
        tail.terminate()
        tail.wait(timeout=30)
        no_token = {k: v for k, v in env.items() if k != "HASHSVC_TOKEN"}
        done = subprocess.run(
            [sys.executable, "-m", "hashsvc", "events", "list"],
            cwd=REPO, env=no_token, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode != 0 and "HASHSVC_TOKEN" in done.stderr
        server.kill()
        log = (tmp_path / f"server-{server.port}.log").read_text()
        assert "HTTP 500" in log and SECRET.decode() not in log
    finally:
        receiver.stop()


@pytest.mark.parametrize("bad", ["--from", "x"])
def test_events_tail_usage(bad):
    done = subprocess.run(
        [sys.executable, "-m", "hashsvc", "events", "tail", bad],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
