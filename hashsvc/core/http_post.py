"""A small HTTP/1.1 POST client for webhooks, with one deadline for the whole
exchange: connect, send, and the answer's headers must all be done within
`timeout` seconds. (urllib and http.client time out each socket read, so a
receiver that answers a byte at a time holds a deliverer for as long as it
likes.) A connection is kept alive between POSTs to the same endpoint."""

from __future__ import annotations

import socket
import ssl
import time
from dataclasses import dataclass
from urllib.parse import urlsplit


class PostFailed(Exception):
    """The POST did not get an answer: refused, reset, timed out, bad answer."""


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]  # the answer's header fields, names in lower case


@dataclass(frozen=True)
class Target:
    scheme: str
    host: str
    port: int
    path: str  # with the query, as sent

    @classmethod
    def parse(cls, url: str) -> Target:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        return cls(parts.scheme, parts.hostname or "", port, path)


class HttpPoster:
    """POSTs to one endpoint over a kept-alive connection (one thread)."""

    def __init__(self, url: str, max_response_bytes: int = 65536, ca_file: str = "") -> None:
        self.target = Target.parse(url)
        self.max_response_bytes = max_response_bytes
        self._sock: socket.socket | None = None
        self._tls = (
            ssl.create_default_context(cafile=ca_file or None)
            if self.target.scheme == "https"
            else None
        )

    def post(self, body: bytes, headers: dict[str, str], timeout: float) -> Answer:
        """The answer's status and headers; PostFailed if there is none in time."""
        deadline = time.monotonic() + timeout
        reused = self._sock is not None
        try:
            return self._exchange(body, headers, deadline)
        except _StaleConnection:
            if not reused:
                raise PostFailed("the connection closed before an answer") from None
            # a kept-alive connection the receiver had closed: once more, afresh
            return self._exchange(body, headers, deadline)

    def close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            except OSError:
                pass
            self._sock = None

    def _connect(self, deadline: float) -> socket.socket:
        t = self.target
        try:
            sock = socket.create_connection((t.host, t.port), timeout=_left(deadline))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._tls is not None:
                sock.settimeout(_left(deadline))
                sock = self._tls.wrap_socket(sock, server_hostname=t.host)
        except (OSError, ssl.SSLError) as exc:
            raise PostFailed(f"cannot connect: {_reason(exc)}") from None
        return sock

    def _exchange(self, body: bytes, headers: dict[str, str], deadline: float) -> Answer:
        if self._sock is None:
            self._sock = self._connect(deadline)
        sock = self._sock
        t = self.target
        host = t.host if t.port in (80, 443) else f"{t.host}:{t.port}"
        lines = [
            f"POST {t.path} HTTP/1.1",
            f"Host: {host}",
            "Content-Type: application/json",
            f"Content-Length: {len(body)}",
            "User-Agent: hashsvc",
            *(f"{k}: {v}" for k, v in headers.items()),
        ]
        request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
        received = b""
        try:
            sock.settimeout(_left(deadline))
            sock.sendall(request)
            while b"\r\n\r\n" not in received:
                if len(received) > self.max_response_bytes:
                    raise PostFailed("the answer's headers are too large")
                sock.settimeout(_left(deadline))
                chunk = sock.recv(65536)
                if not chunk:
                    raise _StaleConnection() if not received else PostFailed("answer cut off")
                received += chunk
            head, _, rest = received.partition(b"\r\n\r\n")
            status, fields = _parse_head(head)
            length = fields.get("content-length")
            keep = (
                fields.get("connection", "").lower() != "close"
                and length is not None
                and length.isdigit()
                and int(length) <= self.max_response_bytes
            )
            if keep:
                remaining = int(length) - len(rest)
                while remaining > 0:
                    sock.settimeout(_left(deadline))
                    chunk = sock.recv(min(65536, remaining))
                    if not chunk:
                        keep = False
                        break
                    remaining -= len(chunk)
            if not keep:
                self.close()
            return Answer(status, fields)
        except _StaleConnection:
            self.close()
            raise
        except PostFailed:
            self.close()
            raise
        except (OSError, ssl.SSLError, ValueError) as exc:
            self.close()
            if isinstance(exc, ConnectionResetError | BrokenPipeError) and not received:
                raise _StaleConnection() from None
            raise PostFailed(_reason(exc)) from None


class _StaleConnection(Exception):
    pass


def _left(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("timed out")
    return left


def _parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise PostFailed(f"not an HTTP answer: {lines[0][:80]!r}")
    fields = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            fields[name.strip().lower()] = value.strip()
    return int(parts[1]), fields


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError | socket.timeout):
        return "timed out"
    return (getattr(exc, "strerror", None) or str(exc) or type(exc).__name__)[:200]
