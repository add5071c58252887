"""Test helpers: a real server on a free port with a token per role, and
processes that are stopped when the test ends. Media comes from hashsvc_testing."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field

import grpc

from hashsvc.api.server import RunningServer, start_server
from hashsvc.base.errors import AlreadyExists
from hashsvc.core import auth
from hashsvc.core.config import Config, ImageLimits
from hashsvc.v1 import hashsvc_pb2 as pb
from hashsvc_testing import processes
from hashsvc_testing.stubs import Stubs


@dataclass
class Harness:
    """A running server with one token per role and a channel per token."""

    running: RunningServer
    tokens: dict[str, str] = field(default_factory=dict)
    channels: list = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.running.port}"

    @property
    def core(self):
        return self.running.core

    def stubs(self, role: str | None):
        """(stub namespace, metadata) for a role, or no token for None."""
        channel = grpc.insecure_channel(self.address)
        self.channels.append(channel)
        metadata = (("authorization", f"Bearer {self.tokens[role]}"),) if role else ()
        return Stubs(channel), metadata

    def close(self) -> None:
        for channel in self.channels:
            channel.close()
        self.running.stop(grace=1)


def start_harness(db_url: str, hash_in_process: bool = True, **config) -> Harness:
    config.setdefault("image", ImageLimits())
    cfg = Config(listen="127.0.0.1:0", db_url=db_url, workers=config.pop("workers", 2), **config)
    running = start_server(cfg, hash_in_process=hash_in_process)
    harness = Harness(running)
    for role in auth.ROLES:
        harness.tokens[role] = _new_token(running.core.store, role)
    return harness


def _new_token(store, role: str) -> str:
    # Names are unique among active tokens: a harness started again on the
    # same store names its tokens test-ROLE-2, -3, ...
    for n in range(1, 100):
        try:
            name = f"test-{role}" if n == 1 else f"test-{role}-{n}"
            return auth.create_token(store, role, name)[1]
        except AlreadyExists:
            continue
    raise AssertionError(f"no free token name for {role}")


# Every process a test started (popen below); conftest.py's autouse fixture
# stops those still running when the test ends, passed or failed.
_STARTED: list[subprocess.Popen] = []


def popen(args, **kw) -> subprocess.Popen:
    """subprocess.Popen, in a session of its own (stopping it stops its
    children too: a server's hashing workers), stopped at the test's end by
    conftest.py whatever happened, and killed if the test run itself dies
    (SIGTERM'd pytest runs no teardown): call it from the test's thread."""
    proc = subprocess.Popen(processes.dying_with_parent(list(args)), start_new_session=True, **kw)
    _STARTED.append(proc)
    return proc


def stop_started_processes(grace: float = 5.0) -> list[int]:
    """SIGTERM to each process group not yet reaped, SIGKILL after `grace`
    seconds, then SIGKILL to what is left of each group (workers of a server
    that died) while its leader is unreaped; returns the pids that were
    still running."""
    started = [p for p in _STARTED if p.returncode is None]
    _STARTED.clear()
    running = [p.pid for p in started if processes.mark(p.pid) is not None]
    processes.stop_groups(started, grace)
    return running


def match_request(data: bytes, **kw) -> pb.MatchRequest:
    return pb.MatchRequest(media=pb.Media(content=data), **kw)
