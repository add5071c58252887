"""The HTTP API served by uvicorn on a thread of the gRPC server's process
(`hashsvc serve --http-listen HOST:PORT`): the same core, rate limiter,
spool, partner feeds and failed authentications per address. TLS with the
gRPC server's certificate and key (and client CA)."""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from hashsvc.core.auth import RateLimiter
from hashsvc.core.core import Core
from hashsvc.core.sign_in_limits import SignInLimits
from hashsvc.exchange.feeds import Feeds
from hashsvc.http.app import build_app
from hashsvc.http.jobs import BulkJobs
from hashsvc.media.spool import Spool

log = logging.getLogger(__name__)

_START_SECONDS = 30.0


class HeadersDeadline(H11Protocol):
    """uvicorn's HTTP/1.1 protocol, with a deadline on a request's headers:
    uvicorn waits for the first request of a connection, and for headers sent
    a byte at a time, for ever, so callers without a token could hold every
    connection (http_max_connections) with idle sockets. A request's headers
    must arrive within `headers_seconds` of the connection or of the previous
    answer; past it the connection is closed."""

    headers_seconds = 30.0

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._awaited_cycle = None
        self._headers_timer = None
        self._await_headers()

    def _await_headers(self) -> None:
        self._awaited_cycle = self.cycle
        self._headers_timer = self.loop.call_later(self.headers_seconds, self._headers_late)

    def _headers_late(self) -> None:
        idle = self.cycle is None or self.cycle.response_complete  # no request in progress
        if self.cycle is self._awaited_cycle and idle and not self.transport.is_closing():
            self.logger.debug("closing a connection whose request headers did not arrive")
            self.transport.close()

    def handle_events(self) -> None:
        super().handle_events()
        if self._headers_timer is not None and self.cycle is not self._awaited_cycle:
            self._headers_timer.cancel()  # a new request's headers are complete
            self._headers_timer = None

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._headers_timer is None and not self.transport.is_closing():
            self._await_headers()

    def connection_lost(self, exc) -> None:
        if self._headers_timer is not None:
            self._headers_timer.cancel()
        super().connection_lost(exc)


class HttpStartupError(OSError):
    """The HTTP API cannot listen where configured (the message says why)."""


class HttpServer:
    def __init__(
        self,
        core: Core,
        limiter: RateLimiter | None = None,
        spool: Spool | None = None,
        feeds: Feeds | None = None,
        sign_ins: SignInLimits | None = None,
    ) -> None:
        config = core.config
        self.jobs = BulkJobs(core, config.http_jobs_kept, config.http_jobs_running)
        self.app = build_app(core, limiter, spool, self.jobs, feeds, sign_ins)
        self.listen = config.http_listen
        host, _, port = config.http_listen.rpartition(":")
        self._socket = _bind(host.strip("[]"), port, config.http_listen)
        self.port = self._socket.getsockname()[1]
        tls = {}
        if config.tls_cert_file:
            tls = {"ssl_certfile": config.tls_cert_file, "ssl_keyfile": config.tls_key_file}
            if config.tls_client_ca_file:
                tls.update(ssl_ca_certs=config.tls_client_ca_file, ssl_cert_reqs=ssl.CERT_REQUIRED)
        protocol = type(
            "HeadersDeadline", (HeadersDeadline,), {"headers_seconds": config.stream_idle_seconds}
        )
        self.server = uvicorn.Server(
            uvicorn.Config(
                self.app,
                http=protocol,
                log_config=None,  # the process's own logging (hashsvc/base/logs.py)
                access_log=False,
                limit_concurrency=config.http_max_connections,
                # an idle keep-alive connection is closed after this
                timeout_keep_alive=int(min(config.stream_idle_seconds, 30)) or 5,
                lifespan="off",
                server_header=False,
                # the caller's address is the socket's: X-Forwarded-For from
                # anyone on loopback would pick the address the failed-
                # authentication limit counts (uvicorn trusts 127.0.0.1)
                proxy_headers=False,
                **tls,
            )
        )
        self._thread: threading.Thread | None = None

    def start(self) -> HttpServer:
        self._thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self._socket]}, daemon=True, name="http"
        )
        self._thread.start()
        deadline = time.monotonic() + _START_SECONDS
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise HttpStartupError(f"the HTTP API did not start on {self.listen}")
            time.sleep(0.02)
        log.info("HTTP API listening on %s (port %d)", self.listen, self.port)
        return self

    def stop(self, grace: float = 5.0) -> None:
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=grace + 5)
        self.jobs.wait(grace)
        self._socket.close()


def _bind(host: str, port_text: str, listen: str) -> socket.socket:
    try:
        port = int(port_text)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
    except (ValueError, OSError) as exc:
        raise HttpStartupError(
            f"cannot listen on {listen}: not a HOST:PORT address ({exc})"
        ) from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Inherited by each connection: an answer's headers and body go out
        # at once. Without it Nagle held the body back until the client's
        # delayed ACK: every request took 44 ms (0.8 ms with it).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host or "127.0.0.1", port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise HttpStartupError(f"cannot listen on {listen} (HTTP API): {exc.strerror}") from None
    sock.set_inheritable(True)
    return sock


def start_http(
    core: Core,
    limiter: RateLimiter | None = None,
    spool: Spool | None = None,
    feeds: Feeds | None = None,
    sign_ins: SignInLimits | None = None,
):
    """The HTTP API on config.http_listen, started; .stop() stops it."""
    return HttpServer(core, limiter, spool, feeds, sign_ins).start()
