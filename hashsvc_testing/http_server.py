"""`hashsvc serve --http-listen` as a real process for the HTTP API's tests
and bench: free ports, a token per role written into the store first, ready
when /readyz says so, stopped (SIGTERM, then SIGKILL) by whoever started it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from hashdb import open_store
from hashsvc.core import auth
from hashsvc_testing import processes

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class HttpServerProcess:
    """The server with gRPC on `grpc_address` and HTTP on `url`; tokens[role]."""

    def __init__(self, db_url: str, log_path: Path, config_text: str = "", workers: int = 1):
        self.db_url = db_url
        self.tokens: dict[str, str] = {}
        store = open_store(db_url)
        try:
            for role in auth.ROLES:
                self.tokens[role] = auth.create_token(store, role, f"http-{role}")[1]
        finally:
            store.close()
        self.grpc_port, self.http_port = free_port(), free_port()
        args = [sys.executable, "-m", "hashsvc", "serve",
                "--listen", f"127.0.0.1:{self.grpc_port}",
                "--http-listen", f"127.0.0.1:{self.http_port}",
                "--db", db_url, "--workers", str(workers)]  # fmt: skip
        if config_text:
            config_path = log_path.with_suffix(".toml")
            config_path.write_text(config_text)
            args += ["--config", str(config_path)]
        self.log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            processes.dying_with_parent(args), cwd=REPO, stdout=self.log,
            stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )  # fmt: skip
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc_address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def client(self, role: str | None = None, token: str = "") -> httpx.Client:
        """A client sending the role's token (or `token`; neither: none)."""
        token = token or (self.tokens[role] if role else "")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=120)

    def _wait_ready(self, seconds: float = 90) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode} while starting")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError("the server's HTTP API did not become ready")

    def stop(self, grace: float = 15) -> int | None:
        """SIGTERM, SIGKILL after `grace` s, then the group's leftover hashing
        workers, before the server is reaped (hashsvc_testing/processes.py)."""
        processes.stop_group(self.proc, grace)
        self.log.close()
        return self.proc.returncode
