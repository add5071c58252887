"""The server as a real process: SIGTERM finishes what is in flight, kill -9
loses nothing that was acknowledged, and a restart comes back with it all."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from hashdb import HistoryFilter, open_store
from hashsvc.core import auth
from hashsvc.v1 import hashsvc_pb2 as pb
from hashsvc.v1 import hashsvc_pb2_grpc as pb_grpc
from hashsvc_testing import processes
from hashsvc_testing.image_media import encode, noise_image, photo
from tests.helpers import popen

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    def __init__(self, db_url: str, tmp_path: Path, extra_args: tuple[str, ...] = ()) -> None:
        self.db_url = db_url
        self.port = _free_port()
        self.log = open(tmp_path / f"server-{self.port}.log", "wb")  # noqa: SIM115
        # popen: stopped when the test ends, however it ends (tests/conftest.py)
        self.proc = popen(
            [sys.executable, "-m", "hashsvc", "serve", "--listen", f"127.0.0.1:{self.port}",
             "--db", db_url, "--workers", "1", *extra_args],
            cwd=REPO, stdout=self.log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.port}")
        try:
            self._wait_serving()
        except BaseException:
            self.proc.kill()
            self.proc.wait(timeout=30)
            self.channel.close()
            self.log.close()
            raise

    def _wait_serving(self, seconds: float = 30) -> None:
        health = health_pb2_grpc.HealthStub(self.channel)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode} while starting")
            try:
                status = health.Check(health_pb2.HealthCheckRequest(), timeout=1).status
                if status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
        raise AssertionError("server did not become ready")

    def stop(self, sig: int) -> int:
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout=30)
        self.channel.close()
        self.log.close()
        return code


@pytest.fixture
def operator_token(store_url):
    store = open_store(store_url)
    _, token = auth.create_token(store, "admin", "test")
    store.close()
    return (("authorization", f"Bearer {token}"),)


def test_sigterm_finishes_calls_in_flight(store_url, operator_token, tmp_path):
    server = ServerProcess(store_url, tmp_path)
    matcher = pb_grpc.MatcherStub(server.channel)
    first_answered, terminated = threading.Event(), threading.Event()

    def uploads():
        # a batch call that is surely in flight: its first answer has arrived
        # before SIGTERM; its second item is sent after
        yield pb.MatchRequest(media=pb.Media(content=encode(photo(1))), client_ref="before")
        first_answered.wait(10)
        terminated.wait(10)
        yield pb.MatchRequest(media=pb.Media(content=encode(photo(2))), client_ref="after")

    responses = []
    stream = matcher.MatchBatch(uploads(), metadata=operator_token, timeout=30)
    for response in stream:
        responses.append(response)
        if len(responses) == 1:
            first_answered.set()
            server.proc.send_signal(signal.SIGTERM)
            time.sleep(0.3)  # the server is now shutting down
            terminated.set()
    assert [r.client_ref for r in responses] == ["before", "after"]
    assert all(r.decision == pb.ALLOW for r in responses)
    assert server.proc.wait(timeout=30) == 0
    server.channel.close()
    server.log.close()
    store = open_store(store_url)
    try:
        records = store.query_history(HistoryFilter())
        # both, the one after SIGTERM too (beside the checkpoint of the head
        # the server writes as it stops)
        assert [r.rpc for r in records if r.rpc != "HistoryCheckpoint"] == ["MatchBatch"] * 2
    finally:
        store.close()


def test_kill_9_during_adds_loses_nothing_acknowledged(store_url, operator_token, tmp_path):
    server = ServerProcess(store_url, tmp_path)
    curation = pb_grpc.CurationStub(server.channel)
    curation.CreateSet(pb.CreateSetRequest(name="s"), metadata=operator_token)
    acknowledged: list[str] = []
    stop = threading.Event()

    def add_until_killed():
        for i in range(10_000):
            if stop.is_set():
                return
            try:
                curation.AddEntry(
                    pb.AddEntryRequest(set="s", name=f"e{i}",
                                       media=pb.Media(content=encode(noise_image(i, 96)))),
                    metadata=operator_token, timeout=10,
                )  # fmt: skip
                acknowledged.append(f"e{i}")
            except grpc.RpcError:
                return

    adder = threading.Thread(target=add_until_killed)
    adder.start()
    time.sleep(1.5)
    server.stop(signal.SIGKILL)
    stop.set()
    adder.join()
    assert len(acknowledged) >= 3

    restarted = ServerProcess(store_url, tmp_path)
    try:
        curation = pb_grpc.CurationStub(restarted.channel)
        matcher = pb_grpc.MatcherStub(restarted.channel)
        names, token = [], ""
        while True:
            page = curation.ListEntries(
                pb.ListEntriesRequest(set="s", page_size=500, page_token=token),
                metadata=operator_token,
            )
            names += [e.name for e in page.entries]
            assert all(len(e.signals) >= 3 for e in page.entries)  # no half-written entry
            token = page.next_page_token
            if not token:
                break
        assert set(acknowledged) <= set(names)
        assert len(names) - len(acknowledged) <= 1  # at most the one in flight
        last = acknowledged[-1]
        i = int(last[1:])
        resp = matcher.Match(
            pb.MatchRequest(media=pb.Media(content=encode(noise_image(i, 96)))),
            metadata=operator_token,
        )
        assert resp.decision == pb.BLOCK and resp.matches[0].entry == last
    finally:
        assert restarted.stop(signal.SIGTERM) == 0
    assert os.path.exists(restarted.log.name)


def test_two_replicas_over_postgresql_see_each_others_changes(pg_url, tmp_path):
    store = open_store(pg_url)
    _, token = auth.create_token(store, "admin", "test")
    store.close()
    md = (("authorization", f"Bearer {token}"),)
    first, second = ServerProcess(pg_url, tmp_path), ServerProcess(pg_url, tmp_path)
    try:
        curation = pb_grpc.CurationStub(first.channel)
        other = pb_grpc.MatcherStub(second.channel)
        data = encode(noise_image(77))
        request = pb.MatchRequest(media=pb.Media(content=data))

        def decision_on_second_within(seconds: float, want: int) -> float:
            started = time.monotonic()
            while time.monotonic() - started < seconds:
                if other.Match(request, metadata=md).decision == want:
                    return time.monotonic() - started
                time.sleep(0.05)
            raise AssertionError(f"second replica did not reach {want} in {seconds} s")

        curation.CreateSet(pb.CreateSetRequest(name="shared"), metadata=md)
        curation.AddEntry(
            pb.AddEntryRequest(set="shared", name="n", media=pb.Media(content=data)), metadata=md
        )
        assert decision_on_second_within(2.0, pb.BLOCK) < 2.0
        curation.UpdateSet(pb.UpdateSetRequest(name="shared", enabled=False), metadata=md)
        assert decision_on_second_within(2.0, pb.ALLOW) < 2.0
        curation.UpdateSet(pb.UpdateSetRequest(name="shared", enabled=True), metadata=md)
        curation.RemoveEntry(pb.RemoveEntryRequest(set="shared", name="n"), metadata=md)
        assert decision_on_second_within(2.0, pb.ALLOW) < 2.0
    finally:
        assert first.stop(signal.SIGTERM) == 0
        assert second.stop(signal.SIGTERM) == 0


INNER_TEST = """
import json
import os
import time
from dataclasses import astuple

from hashsvc_testing import processes
from tests.test_process import ServerProcess

def test_fails_while_its_server_runs(tmp_path):
    server = ServerProcess({db_url!r}, tmp_path)
    with open({pid_file!r}, "w") as f:
        json.dump([astuple(processes.mark(server.proc.pid))], f)
    assert False, "this test fails on purpose"

def test_killed_while_its_server_runs(tmp_path):
    server = ServerProcess({db_url!r}, tmp_path)
    workers = []
    while not workers:  # the server and its hashing worker, as they run
        workers = processes.children(server.proc.pid)
        time.sleep(0.05)
    with open({pid_file!r} + ".tmp", "w") as f:
        json.dump([astuple(processes.mark(p)) for p in [server.proc.pid, *workers]], f)
    os.rename({pid_file!r} + ".tmp", {pid_file!r})
    time.sleep(600)  # until the run is killed
"""


def _run_inner(tmp_path: Path, test: str, **kw) -> tuple[subprocess.Popen, Path]:
    pid_file = tmp_path / "server.pid"
    inner = tmp_path / "test_inner.py"
    inner.write_text(
        INNER_TEST.format(db_url=f"sqlite:///{tmp_path}/inner.db", pid_file=str(pid_file))
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:xdist", "-p", "no:cacheprovider",
         "-p", "tests.conftest", "--rootdir", str(tmp_path), f"{inner}::{test}"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw,
    )  # fmt: skip
    return proc, pid_file


def _read_marks(pid_file: Path) -> list[processes.ProcessMark]:
    return [processes.ProcessMark(*fields) for fields in json.loads(pid_file.read_text())]


def _gone_within(marks: list[processes.ProcessMark], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while any(map(processes.alive, marks)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not any(map(processes.alive, marks))


def test_a_failing_test_leaves_no_server_running(tmp_path):
    """A test that fails while its `hashsvc serve` runs leaves nothing running."""
    proc, pid_file = _run_inner(tmp_path, "test_fails_while_its_server_runs")
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 1 and "this test fails on purpose" in out, out
    marks = _read_marks(pid_file)
    try:
        assert _gone_within(marks, 10), "the failed test left its server running"
    finally:
        for m in marks:  # only if still the server seen, in its own group
            processes.kill(m, signal.SIGKILL)


def test_a_test_run_killed_leaves_no_server_running(tmp_path):
    """pytest stopped by SIGTERM runs no teardown (no fixture stops what its
    test started): the test's `hashsvc serve` and its hashing worker die with
    it (PR_SET_PDEATHSIG). Before, both kept running."""
    proc, pid_file = _run_inner(tmp_path, "test_killed_while_its_server_runs")
    marks: list[processes.ProcessMark] = []
    try:
        deadline = time.monotonic() + 120
        while not pid_file.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert pid_file.exists(), proc.communicate(timeout=30)[0] if proc.poll() else "slow"
        marks = _read_marks(pid_file)
        assert len(marks) >= 2, marks  # the server, its worker (and spawn's resource tracker)
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
        assert proc.returncode == -signal.SIGTERM
        assert _gone_within(marks, 10), [m for m in marks if processes.alive(m)]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)
        for m in marks:
            processes.kill(m, signal.SIGKILL)


def test_a_process_is_signalled_only_while_it_is_the_one_marked(tmp_path):
    """After a pid wrap a kept pid names another process: a mark (pid, group,
    start time) that no longer fits is never signalled; one that fits is."""
    child = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        mark = processes.mark(child.pid)
        assert mark is not None and mark.pgid == child.pid
        # the same pid, started at another time or in another group: another process
        for other in (
            processes.ProcessMark(mark.pid, mark.pgid, mark.start + 1),
            processes.ProcessMark(mark.pid, os.getpgid(0), mark.start),
        ):
            assert not processes.alive(other)
            assert not processes.kill(other, signal.SIGKILL)
        assert child.poll() is None  # untouched
        assert processes.kill(mark, signal.SIGKILL)
        assert child.wait(timeout=10) == -signal.SIGKILL
        assert not processes.kill(mark, signal.SIGKILL)  # gone (reaped): nothing to signal
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def test_stopping_a_group_stops_what_its_dead_leader_left():
    """A leader that ended (as a server killed by -9) leaves a child in its
    group: stop_group kills the child before reaping the leader."""
    leader = subprocess.Popen(
        ["sh", "-c", "sleep 60 & echo $!; exec sleep 0.2"],
        start_new_session=True,
        stdout=subprocess.PIPE,
        text=True,
    )
    left = processes.mark(int(leader.stdout.readline()))
    try:
        assert left is not None and left.pgid == leader.pid
        # the leader has exited, unreaped: waited for, not slept for (a leader
        # still in its sleep at a busy moment was stopped by SIGTERM: -15)
        os.waitid(os.P_PID, leader.pid, os.WEXITED | os.WNOWAIT)
        assert processes.stop_group(leader, grace=5) == 0
        assert _gone_within([left], 5)
    finally:
        if left is not None:
            processes.kill(left, signal.SIGKILL)
        leader.stdout.close()
