"""Spooled uploads within limits (issue 16 item 11: 6 idle streams held 901 MB
of spool, 16 x 2 GiB possible): a spool budget per replica, a limit of uploads
in flight per token, and an upload that stops sending frees its spool file."""

from __future__ import annotations

import io
import os
import threading
import time

import grpc
import numpy as np
from PIL import Image

from hashsvc.v1 import hashsvc_pb2 as pb
from tests.helpers import start_harness

CHUNK = 64 * 1024


def noise_png(seed: int, side: int) -> bytes:
    """A real image that does not compress: about side * side * 3 bytes."""
    pixels = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG", compress_level=1)
    return buf.getvalue()


def _chunks(data: bytes):
    for start in range(0, len(data), CHUNK):
        yield data[start : start + CHUNK]


def _match_upload(header, data: bytes, hold: threading.Event | None = None):
    """MatchUpload messages; with `hold`, the client stops sending after the
    data (bounded) until hold is set, then ends the stream."""
    yield pb.MatchUploadRequest(header=header)
    for chunk in _chunks(data):
        yield pb.MatchUploadRequest(chunk=chunk)
    if hold is not None:
        hold.wait(30)


def _entry_upload(header, data: bytes, hold: threading.Event | None = None):
    yield pb.AddEntryUploadRequest(header=header)
    for chunk in _chunks(data):
        yield pb.AddEntryUploadRequest(chunk=chunk)
    if hold is not None:
        hold.wait(30)


def _spooled_bytes(spool_dir) -> int:
    return sum(os.path.getsize(os.path.join(spool_dir, n)) for n in os.listdir(spool_dir))


def _wait_for(condition, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def test_the_spool_budget_holds_all_uploads_together(store_url, tmp_path):
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()
    h = start_harness(
        store_url, spool_dir=str(spool_dir), max_upload_bytes=1_000_000, spool_max_bytes=1_000_000
    )
    hold = threading.Event()
    first = None
    try:
        m, md = h.stubs("matcher")
        admin, amd = h.stubs("admin")  # another token: the budget is the replica's
        header = pb.MatchRequest(client_ref="big")
        # 600 kB spooled, then the client stops sending
        first = m.matcher.MatchUpload.future(
            _match_upload(header, noise_png(1, 450), hold), metadata=md
        )
        assert _wait_for(lambda: _spooled_bytes(spool_dir) >= 600_000)

        second = noise_png(2, 450)
        started = time.monotonic()
        try:
            admin.matcher.MatchUpload(_match_upload(header, second), metadata=amd, timeout=10)
            raise AssertionError("an upload past the spool budget was accepted")
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, exc.details()
            assert "spool_max_bytes" in exc.details()
        assert time.monotonic() - started < 2
        assert _spooled_bytes(spool_dir) < 1_000_000  # the refused upload's part is gone

        hold.set()  # the first upload ends (a real image: answered)
        assert first.result(timeout=10).decision == pb.ALLOW
        assert _wait_for(lambda: not os.listdir(spool_dir))
        # its bytes are back in the budget
        answer = admin.matcher.MatchUpload(_match_upload(header, second), metadata=amd, timeout=10)
        assert answer.decision == pb.ALLOW
        assert not os.listdir(spool_dir)
    finally:
        hold.set()
        if first is not None:
            first.cancel()
        h.close()


def test_uploads_in_flight_are_limited_per_token(store_url):
    h = start_harness(store_url, max_uploads_per_token=2, max_streams_per_token=4)
    hold = threading.Event()
    held = []
    try:
        admin, amd = h.stubs("admin")
        admin.curation.CreateSet(pb.CreateSetRequest(name="videos"), metadata=amd)
        data = noise_png(3, 120)
        # two uploads of one token in flight (a match and an entry), idle
        held.append(
            admin.matcher.MatchUpload.future(
                _match_upload(pb.MatchRequest(), noise_png(6, 120), hold), metadata=amd
            )
        )
        held.append(
            admin.curation.AddEntryUpload.future(
                _entry_upload(pb.AddEntryRequest(set="videos", name="a"), data, hold),
                metadata=amd,
            )
        )
        time.sleep(0.5)
        try:
            admin.curation.AddEntryUpload(
                _entry_upload(pb.AddEntryRequest(set="videos", name="b"), data),
                metadata=amd,
                timeout=10,
            )
            raise AssertionError("a third upload of the token was accepted")
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, exc.details()
            assert "max_uploads_per_token" in exc.details()
        # another token uploads meanwhile
        m, md = h.stubs("matcher")
        assert m.matcher.MatchUpload(_match_upload(pb.MatchRequest(), data), metadata=md).decision
        hold.set()
        assert held[0].result(timeout=10).decision == pb.ALLOW
        assert held[1].result(timeout=10).name == "a"
        # the token's uploads are done: it may upload again
        entry = admin.curation.AddEntryUpload(
            _entry_upload(pb.AddEntryRequest(set="videos", name="b"), noise_png(4, 120)),
            metadata=amd,
            timeout=10,
        )
        assert entry.name == "b"
    finally:
        hold.set()
        for call in held:
            call.cancel()
        h.close()


def test_an_upload_that_stops_sending_frees_its_spool_file(store_url, tmp_path):
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()
    h = start_harness(store_url, spool_dir=str(spool_dir), stream_idle_seconds=1.0)
    hold = threading.Event()
    call = None
    try:
        m, md = h.stubs("matcher")
        data = noise_png(5, 200)
        started = time.monotonic()
        call = m.matcher.MatchUpload.future(
            _match_upload(pb.MatchRequest(), data, hold), metadata=md
        )
        assert _wait_for(lambda: _spooled_bytes(spool_dir) >= len(data))
        try:
            call.result(timeout=10)
            raise AssertionError("an idle upload was answered")
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED, exc.details()
            assert "stream_idle_seconds" in exc.details()
        assert 1.0 <= time.monotonic() - started < 5
        assert not os.listdir(spool_dir)
        assert h.running.spool.budget.held() == 0
    finally:
        hold.set()
        if call is not None:
            call.cancel()
        h.close()


def test_the_client_keeps_its_uploads_within_the_servers_default_caps(tmp_path, make_harness):
    """`hashsvc add --parallel 8` on large files: the client opens at most 4
    upload streams at once, so none is refused by max_streams_per_token."""
    from concurrent.futures import ThreadPoolExecutor

    from hashsvc.client.client import Client

    h = make_harness(f"sqlite:///{tmp_path}/client.db")
    data = noise_png(7, 100)

    def slow_chunks():
        time.sleep(0.2)  # every upload is still open when the others start
        yield from _chunks(data)

    with Client(h.address, h.tokens["matcher"]) as client:
        with ThreadPoolExecutor(8) as pool:
            answers = list(
                pool.map(
                    lambda i: client.match_upload(
                        pb.MatchRequest(client_ref=str(i)), slow_chunks()
                    ),
                    range(8),
                )
            )
    assert sorted(a.client_ref for a in answers) == [str(i) for i in range(8)]
    assert all(a.decision == pb.ALLOW for a in answers)
