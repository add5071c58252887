"""The HTTP API served by uvicorn on a thread of the gRPC server's process
(`hashsvc serve --http-listen HOST:PORT`): the same core, rate limiter,
spool, partner feeds and failed authentications per address. TLS with the
gRPC server's certificate and key (and client CA)."""

from __future__ import annotations

import json
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
from hashsvc.http.errors import error_body
from hashsvc.http.jobs import BulkJobs
from hashsvc.media.spool import Spool

log = logging.getLogger(__name__)

_START_SECONDS = 30.0
# how long a connection answered 408 stays open (its input dropped) so the
# client reads the answer before the socket is closed
_LINGER_SECONDS = 2.0
# a full server makes room by closing a body below the minimum rate once it
# has been read this long (grace or not)
_RATE_AFTER_SECONDS = 1.0


class GuardedConnection(H11Protocol):
    """uvicorn's HTTP/1.1 protocol, guarded against callers that hold
    connections without using them (uvicorn waits for a connection's first
    request, for headers sent a byte at a time and, up to its keep-alive
    timeout, for the next request; every such socket counts against
    http_max_connections, and past it every request is answered 503, so a
    caller without a token could refuse Match to everyone):

    * a request's headers must arrive within `headers_seconds` of the
      connection or of the previous answer; past it the connection is closed;
    * one address holds at most `per_address` connections: one more is
      answered 429 and closed at once;
    * when every place is taken, a new connection closes the connection that
      has waited longest for request headers (idle, dripping headers, kept
      alive without a request): only connections with a request in progress
      can fill the server, and each address holds at most its share of those;
    * a request body must arrive at `min_body_rate` bytes/s on average once
      `body_grace` seconds have passed, counting only the time the server is
      reading it (not while reading is paused because the route has not asked
      for more, nor before `100 Continue`): a slower one is answered 408 and
      its connection closed, so bodies sent a byte at a time from many
      addresses cannot hold every place for stream_max_seconds; when every
      place is taken and none waits for headers, the slowest body below the
      rate (read for a second at least) is closed so at once, grace or not.

    Class attributes are set per server (HttpServer: `held` is its count of
    connections per address, on the event loop's thread only)."""

    headers_seconds = 10.0
    per_address = 16
    max_connections = 64
    held: dict[str, int] = {}
    min_body_rate = 1024
    body_grace = 10.0

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._awaited_cycle = None
        self._headers_timer = None
        self._waiting_since = 0.0
        self._address = None
        self._body_cycle = None  # the request whose body is being timed
        self._body_timer = None
        self._body_bytes = 0
        self._body_seconds = 0.0  # time spent reading it (not paused)
        self._body_last = 0.0
        self._discarding = False  # answered 408: what still arrives is dropped
        address = self.client[0] if self.client else ""
        if self.held.get(address, 0) >= self.per_address:
            self._refuse(address)
            return
        self.held[address] = self.held.get(address, 0) + 1
        self._address = address
        self._make_room()
        self._await_headers()

    def _refuse(self, address: str) -> None:
        self.logger.debug("refusing a connection from %s: it holds its share", address)
        self._write_error(
            b"429 Too Many Requests",
            "RESOURCE_EXHAUSTED",
            f"{self.per_address} connections from {address} are open: close one first",
            "http_max_connections_per_address",
            b"retry-after: 1\r\n",
        )
        self.transport.close()
        self.connections.discard(self)

    def _write_error(
        self, status: bytes, code: str, message: str, limit: str, headers: bytes = b""
    ) -> None:
        """An error answer (the API's JSON error) written on the socket
        itself, outside any request's cycle; the connection closes after it."""
        body = json.dumps(error_body(code, message, limit=limit)).encode()
        self.transport.write(
            b"HTTP/1.1 %s\r\ncontent-type: application/json\r\n%sconnection: close\r\n"
            b"content-length: %d\r\n\r\n%s" % (status, headers, len(body), body)
        )

    def _make_room(self) -> None:
        # uvicorn answers 503 to a request while `max_connections` are open
        # (this one counted): close those waiting longest for headers first.
        while len(self.connections) >= self.max_connections:
            waiting = [
                c
                for c in self.connections
                if c is not self
                and isinstance(c, GuardedConnection)
                and c._headers_timer is not None
                and not c.transport.is_closing()
            ]
            if waiting:
                oldest = min(waiting, key=lambda c: c._waiting_since)
                oldest._close_waiting()
                continue
            # none waits for headers: the slowest body below the minimum rate
            # (read for a second at least) makes room, grace or not, so bodies
            # dripped from many addresses, each cut at the grace and sent
            # again, cannot keep the server full either
            slow = [
                (c._body_rate_so_far(), c)
                for c in self.connections
                if c is not self
                and isinstance(c, GuardedConnection)
                and c._body_cycle is not None
                and not c.transport.is_closing()
            ]
            slow = [(rate, c) for rate, c in slow if rate is not None and rate < c.min_body_rate]
            if not slow:
                return  # every other one is serving a request: this one may get 503
            _, slowest = min(slow, key=lambda pair: pair[0])
            slowest._body_too_slow(slowest._body_cycle, slowest._body_read_seconds())

    def _close_waiting(self) -> None:
        self.logger.debug("closing a connection waiting for request headers: the server is full")
        self.transport.close()
        self.connections.discard(self)  # its place is free now, not when the loop gets to it

    def _await_headers(self) -> None:
        self._awaited_cycle = self.cycle
        self._waiting_since = self.loop.time()
        self._headers_timer = self.loop.call_later(self.headers_seconds, self._headers_late)

    def _headers_late(self) -> None:
        idle = self.cycle is None or self.cycle.response_complete  # no request in progress
        if self.cycle is self._awaited_cycle and idle and not self.transport.is_closing():
            self.logger.debug("closing a connection whose request headers did not arrive")
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self._discarding:
            return
        if self._body_cycle is not None:
            # (the packet that completes a request's headers is not counted:
            # the headers would be a head start on the body's rate)
            self._body_bytes += len(data)
        super().data_received(data)

    def handle_events(self) -> None:
        super().handle_events()
        if self._headers_timer is not None and self.cycle is not self._awaited_cycle:
            self._headers_timer.cancel()  # a new request's headers are complete
            self._headers_timer = None
        cycle = self.cycle
        if (
            self.min_body_rate
            and cycle is not None
            and cycle is not self._body_cycle
            and cycle.more_body
            and not cycle.response_complete
        ):
            self._time_body(cycle)

    def _time_body(self, cycle) -> None:
        self._stop_body_timer()
        self._body_cycle = cycle
        self._body_bytes = 0
        self._body_seconds = 0.0
        self._body_last = self.loop.time()
        self._body_timer = self.loop.call_later(self._body_tick(), self._check_body_rate)

    def _body_read_seconds(self) -> float:
        """How long the server has been reading the body (not paused), now."""
        seconds = self._body_seconds
        cycle = self._body_cycle
        if not self.flow.read_paused and not cycle.waiting_for_100_continue:
            seconds += self.loop.time() - self._body_last
        return seconds

    def _body_rate_so_far(self) -> float | None:
        """Bytes/s of the body timed, once it has been read for a second."""
        seconds = self._body_read_seconds()
        return self._body_bytes / seconds if seconds >= _RATE_AFTER_SECONDS else None

    def _body_tick(self) -> float:
        return min(1.0, self.body_grace / 4)

    def _stop_body_timer(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        self._body_cycle = None

    def _check_body_rate(self) -> None:
        self._body_timer = None
        cycle, now = self._body_cycle, self.loop.time()
        if (
            cycle is not self.cycle
            or not cycle.more_body  # the whole body is in
            or cycle.response_complete  # answered: http_headers_seconds applies again
            or cycle.disconnected
            or self.transport.is_closing()
        ):
            self._body_cycle = None
            return
        if not self.flow.read_paused and not cycle.waiting_for_100_continue:
            self._body_seconds += now - self._body_last
        self._body_last = now
        seconds = self._body_seconds
        if seconds >= self.body_grace and self._body_bytes < self.min_body_rate * seconds:
            self._body_too_slow(cycle, seconds)
            return
        self._body_timer = self.loop.call_later(self._body_tick(), self._check_body_rate)

    def _body_too_slow(self, cycle, seconds: float) -> None:
        self._stop_body_timer()
        self.logger.debug(
            "closing a connection whose request body arrives at %.0f bytes/s",
            self._body_bytes / seconds,
        )
        if not cycle.response_started:
            cycle.response_started = True  # the route's own answer is not sent
            self._write_error(
                b"408 Request Timeout",
                "DEADLINE_EXCEEDED",
                f"the request body arrived at {self._body_bytes / seconds:.0f} bytes/s"
                f" over {seconds:.0f} s; at least {self.min_body_rate} bytes/s"
                " (http_min_body_bytes_per_second)",
                "http_min_body_bytes_per_second",
            )
        self.connections.discard(self)  # its place is free now
        if self.transport.can_write_eof():
            # Closing with the client's bytes unread would send a reset, and
            # the client could lose the 408 before reading it: end our side,
            # drop what still arrives, and close a moment later.
            self._discarding = True
            self.transport.write_eof()
            self.loop.call_later(_LINGER_SECONDS, self.transport.close)
        else:
            self.transport.close()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._headers_timer is None and not self.transport.is_closing():
            self._await_headers()

    def connection_lost(self, exc) -> None:
        self._stop_body_timer()
        if self._headers_timer is not None:
            self._headers_timer.cancel()
            self._headers_timer = None
        if self._address is not None:
            left = self.held.get(self._address, 1) - 1
            if left > 0:
                self.held[self._address] = left
            else:
                self.held.pop(self._address, None)
            self._address = None
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
            "GuardedConnection",
            (GuardedConnection,),
            {
                "headers_seconds": config.http_headers_seconds,
                "per_address": config.http_max_connections_per_address,
                "max_connections": config.http_max_connections,
                "held": {},
                "min_body_rate": config.http_min_body_bytes_per_second,
                "body_grace": config.http_body_grace_seconds,
            },
        )
        self.server = uvicorn.Server(
            uvicorn.Config(
                self.app,
                http=protocol,
                log_config=None,  # the process's own logging (hashsvc/base/logs.py)
                access_log=False,
                limit_concurrency=config.http_max_connections,
                # an idle keep-alive connection is closed after this
                timeout_keep_alive=config.http_headers_seconds,
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
