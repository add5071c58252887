"""The HTTP API's connections against idle and slow clients, with real
sockets on 127.0.0.1 (and other loopback addresses, as other callers):
sockets that never send a request, send their headers a byte at a time or
keep a connection alive without a request cannot take http_max_connections
from everyone else (a Match over HTTP is answered, not 503); one address
holds at most http_max_connections_per_address; the server closes what
sends no request headers within http_headers_seconds; a huge JSON body
(parsed on the event loop) is refused past http_max_json_bytes while other
requests are answered; bodies sent slower than http_min_body_bytes_per_second
(after http_body_grace_seconds) are answered 408 and closed, so Match is
answered again while they drip. Every socket the test opens has a timeout and is
closed at the end."""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time

import httpx
import pytest

from hashsvc_testing.http_server import HttpServerProcess

LIMITS = """
http_max_connections = 8
http_max_connections_per_address = 3
http_headers_seconds = 2
http_body_grace_seconds = 2
http_min_body_bytes_per_second = 1024
"""
MATCH = {"signal": {"signal_type": "md5", "value": "0" * 32}}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    d = tmp_path_factory.mktemp("http-connections")
    proc = HttpServerProcess(f"sqlite:///{d}/db.sqlite", d / "server.log", LIMITS)
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def patient_server(tmp_path_factory):
    """The same places, and a grace (60 s) longer than the test."""
    d = tmp_path_factory.mktemp("http-connections-patient")
    limits = LIMITS.replace("http_body_grace_seconds = 2", "http_body_grace_seconds = 60")
    proc = HttpServerProcess(f"sqlite:///{d}/db.sqlite", d / "server.log", limits)
    yield proc
    proc.stop()


@contextlib.contextmanager
def held_sockets(server, addresses: list[str], first_bytes: bytes = b""):
    """One connected socket per source address (127.0.0.N), each sending
    `first_bytes` (nothing: idle); all closed on the way out."""
    opened: list[socket.socket] = []
    try:
        for address in addresses:
            sock = socket.socket()
            opened.append(sock)
            sock.settimeout(5)
            sock.bind((address, 0))
            sock.connect(("127.0.0.1", server.http_port))
            if first_bytes:
                sock.sendall(first_bytes)
        time.sleep(0.3)  # the server has accepted them all
        yield opened
    finally:
        for sock in opened:
            sock.close()


def _closed_by_server(sock: socket.socket) -> bytes | None:
    """What the server sent before closing, or None if it is still open."""
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
        return data
    except TimeoutError:
        return None
    except ConnectionResetError:
        return data


def _match(server) -> httpx.Response:
    with server.client("matcher") as c:
        return c.post("/v1/match", json=MATCH, timeout=10)


def _spread(count: int, first: int = 2) -> list[str]:
    """`count` source addresses, at most 3 sockets from each (the per-address limit)."""
    return [f"127.0.0.{first + i // 3}" for i in range(count)]


def test_idle_and_slow_sockets_do_not_refuse_match(server):
    """8 sockets from other addresses that never send a request, 4 sending
    half of their headers and one kept alive after an answer: every place
    (8) is taken, yet a Match from a new connection is answered at once
    (the idle ones are closed to make room), never 503."""
    with server.client("matcher") as kept_alive:  # a kept-alive connection, idle after its answer
        assert kept_alive.post("/v1/match", json=MATCH).status_code == 200
        with (
            held_sockets(server, _spread(8)),
            held_sockets(server, _spread(4, first=10), b"POST /v1/match HTTP/1.1\r\nHost: x\r\n"),
        ):
            started = time.monotonic()
            for _ in range(5):
                resp = _match(server)
                assert resp.status_code == 200, (resp.status_code, resp.text)
            assert time.monotonic() - started < 5


def test_one_address_holds_at_most_its_share(server):
    """The 4th connection from one address is answered 429 at once and
    closed; the first 3 are not; another address is served."""
    with held_sockets(server, ["127.0.0.20"] * 3) as held:
        with held_sockets(server, ["127.0.0.20"]) as (extra,):
            answer = _closed_by_server(extra)
            assert answer is not None and answer.startswith(b"HTTP/1.1 429 "), answer
            assert b'"RESOURCE_EXHAUSTED"' in answer
            assert b"http_max_connections_per_address" in answer
        for sock in held:
            sock.settimeout(0.2)
            assert _closed_by_server(sock) is None  # still open
        assert _match(server).status_code == 200
    # their places are given back when they close
    time.sleep(0.3)
    with held_sockets(server, ["127.0.0.20"]) as (again,):
        again.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answer = _closed_by_server(again)
        assert answer is not None and answer.startswith(b"HTTP/1.1 200 "), answer


def test_sockets_without_request_headers_are_closed(server):
    """Idle, dripping headers, or kept alive without a next request: closed
    within http_headers_seconds (2 s) + slack."""
    with (
        held_sockets(server, ["127.0.0.30"]) as (idle,),
        held_sockets(server, ["127.0.0.31"], b"GET /healthz HTTP/1.1\r\n") as (slow,),
        held_sockets(server, ["127.0.0.32"], b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n") as (
            kept,
        ),
    ):
        started = time.monotonic()
        for sock in (idle, slow):
            sock.settimeout(6)
            assert _closed_by_server(sock) == b""
        kept.settimeout(6)
        answer = _closed_by_server(kept)
        assert answer is not None and answer.startswith(b"HTTP/1.1 200 ")
        assert time.monotonic() - started < 6


def _numbers_json(mib: int) -> bytes:
    """The costliest JSON to parse per byte: an array of small numbers."""
    return b'{"signal": [' + b",".join([b"0"] * (mib * 1024 * 1024 // 2)) + b"]}"


def _send_chunked(server, address: str, body: bytes, answers: list[bytes]) -> None:
    """POST /v1/match with `body` in 1 MiB chunks (no Content-Length, so the
    server must read it to know its size); the answer goes to `answers`."""
    with socket.socket() as sock:
        sock.settimeout(60)
        sock.bind((address, 0))
        sock.connect(("127.0.0.1", server.http_port))
        sock.sendall(
            b"POST /v1/match HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
            b"authorization: Bearer " + server.tokens["matcher"].encode() + b"\r\n"
            b"transfer-encoding: chunked\r\n\r\n"
        )
        try:
            for start in range(0, len(body), 1 << 20):
                part = body[start : start + (1 << 20)]
                sock.sendall(b"%x\r\n%s\r\n" % (len(part), part))
            sock.sendall(b"0\r\n\r\n")
        except OSError:
            pass  # the server answered and closed before the whole body was sent
        answers.append(_closed_by_server(sock) or b"")


def test_a_huge_json_body_does_not_hold_other_requests(server):
    """48 MiB of JSON numbers (1-3 s of the event loop's CPU if parsed) sent
    twice from another address: refused 413 (http_max_json_bytes) once 1 MiB
    has arrived, and small Matches sent meanwhile are each answered within
    a second (before the limit, one waited for the whole parse)."""
    body, answers = _numbers_json(48), []
    senders = [
        threading.Thread(target=_send_chunked, args=(server, f"127.0.0.4{i}", body, answers))
        for i in range(2)
    ]
    slowest = 0.0
    with server.client("matcher") as c:
        for sender in senders:
            sender.start()
        while any(s.is_alive() for s in senders):
            started = time.monotonic()
            assert c.post("/v1/match", json=MATCH, timeout=30).status_code == 200
            slowest = max(slowest, time.monotonic() - started)
    for sender in senders:
        sender.join(60)
    assert len(answers) == 2
    for answer in answers:
        assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
        assert b"http_max_json_bytes" in answer
    assert slowest < 1.0, slowest


def _drip_body(
    sock: socket.socket,
    token: str,
    stop: threading.Event,
    byte_seconds: float,
    size: int,
    answers: list,
) -> None:
    """POST /v1/match declaring `size` bytes, then one byte each `byte_seconds`
    until the server answers (appended to `answers`, read as it comes: the
    server's close may reset the socket later), `stop` is set or `size`
    bytes went."""
    sock.sendall(
        b"POST /v1/match HTTP/1.1\r\nHost: x\r\ncontent-type: application/octet-stream\r\n"
        b"authorization: Bearer " + token.encode() + b"\r\n"
        b"content-length: %d\r\n\r\n" % size
    )
    try:
        for _ in range(size):
            if stop.is_set():
                return
            readable, _, _ = select.select([sock], [], [], byte_seconds)
            if readable:
                answers.append(_closed_by_server(sock))
                return
            sock.sendall(b"\0")
    except OSError:
        answers.append(b"(send failed before an answer)")


@contextlib.contextmanager
def dripping_bodies(server, count: int, wait_for_answers: bool):
    """`count` sockets from several addresses, each sending a Match body of
    100 kB at 5 bytes/s until the server answers it; yields the list their
    answers are appended to. On the way out it waits (10 s at most each) for
    every answer if `wait_for_answers`, then stops and joins every dripping
    thread, also when the test fails."""
    stop, answers = threading.Event(), []
    with held_sockets(server, _spread(count)) as slow:
        drips = [
            threading.Thread(
                target=_drip_body,
                args=(sock, server.tokens["matcher"], stop, 0.2, 100_000, answers),
            )
            for sock in slow
        ]
        try:
            for drip in drips:
                drip.start()
            yield answers
            if wait_for_answers:
                for drip in drips:
                    drip.join(10)  # each ends with the server's answer
        finally:
            stop.set()
            for drip in drips:
                drip.join(10)


def test_slow_bodies_are_cut_off_and_match_is_answered(server):
    """7 sockets from 3 other addresses, each sending a Match body of 100 kB
    at 5 bytes/s, fill every place a request can take (8, the new one
    counted): Match is answered 503 while they
    hold them; once http_body_grace_seconds (2) have passed each is answered
    408 (DEADLINE_EXCEEDED, http_min_body_bytes_per_second) and closed, and
    Match is answered 200 again, within a few seconds, not stream_max_seconds."""
    with dripping_bodies(server, 7, wait_for_answers=True) as answers:
        time.sleep(0.5)
        started = time.monotonic()
        with server.client("matcher") as c:
            held = c.post("/v1/match", json=MATCH, timeout=10)
        assert held.status_code == 503, (held.status_code, held.text)  # every place is taken
        status = None
        while time.monotonic() - started < 8:
            with server.client("matcher") as c:
                status = c.post("/v1/match", json=MATCH, timeout=10).status_code
            if status == 200:
                break
            time.sleep(0.2)
        assert status == 200, status
    assert len(answers) == 7
    for answer in answers:
        assert answer is not None and answer.startswith(b"HTTP/1.1 408 "), answers
        assert b'"DEADLINE_EXCEEDED"' in answer
        assert b"http_min_body_bytes_per_second" in answer


def test_a_body_above_the_minimum_rate_is_read_whole(server):
    """A raw upload sent at ~4 kB/s (above 1024 bytes/s) for twice the
    grace period is read to its end and answered (not 408): the limit cuts
    off only bodies slower than it."""
    body = bytes(range(256)) * 64  # 16 KiB of something that is not a known media
    with held_sockets(server, ["127.0.0.50"]) as (sock,):
        sock.settimeout(15)
        sock.sendall(
            b"POST /v1/match HTTP/1.1\r\nHost: x\r\ncontent-type: application/octet-stream\r\n"
            b"authorization: Bearer " + server.tokens["matcher"].encode() + b"\r\n"
            b"connection: close\r\ncontent-length: %d\r\n\r\n" % len(body)
        )
        started = time.monotonic()
        for start in range(0, len(body), 1024):
            sock.sendall(body[start : start + 1024])
            time.sleep(0.25)
        assert time.monotonic() - started > 4  # twice the grace period
        answer = _closed_by_server(sock)
        assert answer is not None, "no answer"
        assert not answer.startswith(b"HTTP/1.1 408 "), answer
        assert b"http_min_body_bytes_per_second" not in answer


def test_a_full_server_closes_the_slowest_body_for_match(patient_server):
    """7 sockets dripping Match bodies at 5 bytes/s fill every place, and the
    grace (60 s) is far off: a Match still gets 200 once they have been read
    for a second, the first closing the slowest dripping body (408):
    bodies cut at the grace and sent again could otherwise keep the server
    full all the time."""
    server = patient_server
    with dripping_bodies(server, 7, wait_for_answers=False) as answers:
        time.sleep(1.5)
        started = time.monotonic()
        for _ in range(3):
            resp = _match(server)
            assert resp.status_code == 200, (resp.status_code, resp.text)
        assert time.monotonic() - started < 5
        time.sleep(1)
        # one closed made the room (the Matches, one after another, each
        # free their place); the other 6 still drip: the grace is not over
        assert len(answers) == 1, answers
        for answer in answers:
            assert answer is not None and answer.startswith(b"HTTP/1.1 408 "), answers
            assert b"http_min_body_bytes_per_second" in answer


def test_a_slow_console_form_is_cut_off_too(server):
    """The console's forms (here the sign-in form, which needs no session)
    are held to the same rate: 10 kB declared, sent at 5 bytes/s, answered
    408 once the grace (2 s) has passed."""
    with held_sockets(server, ["127.0.0.60"]) as (sock,):
        sock.sendall(
            b"POST /ui/login HTTP/1.1\r\nHost: x\r\n"
            b"content-type: application/x-www-form-urlencoded\r\ncontent-length: 10000\r\n\r\n"
        )
        started = time.monotonic()
        answer = None
        while answer is None and time.monotonic() - started < 8:
            if select.select([sock], [], [], 0.2)[0]:
                answer = _closed_by_server(sock)
            else:
                sock.sendall(b"t")
        assert answer is not None and answer.startswith(b"HTTP/1.1 408 "), answer
        assert b"http_min_body_bytes_per_second" in answer
        assert 1.5 < time.monotonic() - started < 6
