"""An operator's first day: `hashsvc serve` and `token create --db` that cannot
do what they were asked fail at once with one line saying why, and a non-zero
exit code; nothing starts half-way."""

from __future__ import annotations

import subprocess
import sys

import pytest

from hashsvc.config import Config, ImageLimits
from hashsvc.server import StartupError, start_server
from hashsvc.v1 import hashsvc_pb2 as pb
from tests.helpers import popen, start_harness
from tests.test_process import REPO


def _serve(*args: str, timeout: float = 20) -> tuple[int, str]:
    """Runs `hashsvc serve ARGS` that is expected to exit by itself: (exit code,
    stderr). One that keeps serving fails the test (and is stopped)."""
    proc = popen(
        [sys.executable, "-m", "hashsvc.cli", "serve", "--workers", "1", *args],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"hashsvc serve {' '.join(args)} is still running after {timeout} s")
    return proc.returncode, err


def _one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# -- item 17: a port in use


def test_second_serve_on_a_port_in_use_fails_at_start(tmp_path):
    first = start_harness(f"sqlite:///{tmp_path}/first.db")
    try:
        code, err = _serve("--listen", first.address, "--db", f"sqlite:///{tmp_path}/second.db")
        line = _one_line(err)
        assert code == 1 and "in use" in line and first.address in line, err
        # the first server still answers every call: nothing was split off
        stubs, md = first.stubs("operator")
        for _ in range(8):
            stubs.curation.ListSets(pb.ListSetsRequest(), metadata=md, timeout=5)
    finally:
        first.close()


def test_start_server_on_a_port_in_use_raises_and_leaves_nothing_open(tmp_path):
    first = start_harness(f"sqlite:///{tmp_path}/first.db")
    try:
        config = Config(
            listen=first.address, db_url=f"sqlite:///{tmp_path}/second.db", image=ImageLimits()
        )
        with pytest.raises(StartupError, match="in use"):
            start_server(config, hash_in_process=True)
        stubs, md = first.stubs("operator")
        assert stubs.curation.ListSets(pb.ListSetsRequest(), metadata=md, timeout=5) is not None
    finally:
        first.close()
    # the failed start holds nothing: the port is free once the first is gone
    again = start_server(config, hash_in_process=True)
    again.stop(grace=0)
