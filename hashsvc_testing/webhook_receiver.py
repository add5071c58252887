"""A real webhook receiver for tests and bench/events.py: an HTTP server on
127.0.0.1 in a thread, checking every POST's signature, recording what came,
and misbehaving on demand (down, 500, hanging, slow)."""

from __future__ import annotations

import hashlib
import hmac
import json
import ssl
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass(frozen=True)
class Received:
    event_id: int
    body: dict
    signature_ok: bool
    at: float  # time.time() when it arrived


class Receiver:
    """mode: "ok" (204), "error" (500), "hang" (no answer until released or
    hang_seconds), "slow" (answers after `delay` seconds). `script`: answers
    given first, one per POST, before the mode's: (status, headers)."""

    def __init__(
        self,
        secret: bytes,
        mode: str = "ok",
        delay: float = 0.0,
        tls: tuple[str, str] | None = None,
    ) -> None:
        """tls: (certificate file, key file) to answer over https."""
        self.secret = secret
        self.tls = tls
        self.mode = mode
        self.delay = delay
        self.hang_seconds = 60.0
        self.received: list[Received] = []
        self.attempts = 0  # POSTs seen, answered or not
        self.attempt_times: list[float] = []  # time.monotonic() of each POST
        self.script: list[tuple[int, dict[str, str]]] = []
        self.overlaps: list[int] = []  # ids that arrived while the same id was in flight
        self.bad_signatures = 0
        self._in_flight: dict[int, int] = {}
        self._lock = threading.Lock()
        self._release = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}/hook"

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as the deliverer uses it

            def log_message(self, *args) -> None:  # quiet
                pass

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                receiver._post(self, body)

        self._release.clear()
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        if self.tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*self.tls)
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Down: the port refuses connections (the next start() takes it again)."""
        self._release.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def release(self) -> None:
        """Hanging requests answer now."""
        self._release.set()

    def ids(self) -> list[int]:
        with self._lock:
            return [r.event_id for r in self.received]

    def wait_for(self, count: int, seconds: float = 30.0) -> bool:
        """True once `count` distinct events arrived."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if len(set(self.ids())) >= count:
                return True
            time.sleep(0.05)
        return False

    def _post(self, handler: BaseHTTPRequestHandler, body: bytes) -> None:
        event_id = int(handler.headers.get("X-Hashsvc-Event-Id", "0"))
        expected = "sha256=" + hmac.new(self.secret, body, hashlib.sha256).hexdigest()
        signature_ok = hmac.compare_digest(expected, handler.headers.get("X-Hashsvc-Signature", ""))
        with self._lock:
            self.attempts += 1
            self.attempt_times.append(time.monotonic())
            scripted = self.script.pop(0) if self.script else None
            if self._in_flight.get(event_id):
                self.overlaps.append(event_id)
            self._in_flight[event_id] = self._in_flight.get(event_id, 0) + 1
            if not signature_ok:
                self.bad_signatures += 1
        try:
            if scripted is not None:
                status, headers = scripted
                handler.send_response(status)
                for name, value in headers.items():
                    handler.send_header(name, value)
                handler.send_header("Content-Length", "0")
                handler.end_headers()
                return
            mode = self.mode
            if mode == "hang":
                self._release.wait(self.hang_seconds)
                return  # no answer: the connection just closes
            if mode == "slow":
                time.sleep(self.delay)
            if mode == "error":
                status = 500
            else:
                status = 204
                with self._lock:
                    self.received.append(
                        Received(event_id, json.loads(body), signature_ok, time.time())
                    )
            handler.send_response(status)
            handler.send_header("Content-Length", "0")
            handler.end_headers()
        finally:
            with self._lock:
                self._in_flight[event_id] -= 1
