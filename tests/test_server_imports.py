"""The server process holds no media decoder (issue 17: FFmpeg, MuPDF,
Chromaprint, PDQ and Pillow were ~60 MB of an idle server's RSS). The media
limits live apart from the decoders (hashsvc/media/limits.py) and a hashing
worker imports each media kind's module at its first upload of that kind
(hashsvc/media/dispatch.py), so the server never loads them, not even after
its workers have hashed every kind."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
import pymupdf
from grpc_health.v1 import health_pb2, health_pb2_grpc

from hashdb import open_store
from hashsvc.core import auth
from hashsvc.v1 import hashsvc_pb2 as pb
from hashsvc.v1 import hashsvc_pb2_grpc as pb_grpc
from hashsvc_testing import audio_media, video_media
from hashsvc_testing.image_media import encode, noise_image
from tests.helpers import popen

REPO = Path(__file__).resolve().parents[1]
# Top-level modules of the decoders (fitz: PyMuPDF's old name).
# cv2: OpenCV (ORB extraction) maps 33 MB and its own FFmpeg; the server only verifies.
DECODER_MODULES = ("av", "fitz", "pymupdf", "chromaprint", "pdqhash", "PIL", "cv2")
# The shared object each decoder maps when imported, by a part of its path.
DECODER_LIBRARIES = {
    "av": "/av/_core",
    "pymupdf": "/libmupdf",
    "chromaprint": "/libchromaprint",
    "pdqhash": "/pdqhash/",
    "PIL": "/PIL/_imaging",
    "cv2": "/cv2/",
}


def test_the_server_modules_import_no_decoder():
    """Everything `hashsvc serve` imports, imported in a fresh interpreter."""
    script = (
        "import json, sys\n"
        "import hashsvc.api.server, hashsvc.core.config, hashsvc.media.hashing\n"
        f"decoders = {DECODER_MODULES!r}\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in decoders)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _mapped_decoders(pid: int) -> set[str]:
    with open(f"/proc/{pid}/maps") as f:
        mapped = f.read()
    return {name for name, part in DECODER_LIBRARIES.items() if part in mapped}


def _hashing_workers(server_pid: int) -> list[int]:
    workers = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                parent = int(f.read().rpartition(")")[2].split()[1])
            with open(f"/proc/{name}/cmdline", "rb") as f:
                cmdline = f.read()
        except (OSError, IndexError, ValueError):
            continue  # a process that ended meanwhile
        if parent == server_pid and b"multiprocessing.spawn" in cmdline:
            workers.append(int(name))
    return workers


def _media(tmp_path: Path) -> dict[str, bytes]:
    """Small media of each kind, none of it from ../shared."""
    rng = np.random.default_rng(5)
    scenes = [rng.integers(0, 256, (9, 16, 3), dtype=np.uint8) for _ in range(3)]
    frames = [
        np.kron(scenes[n // video_media.FPS], np.ones((20, 20, 1), np.uint8))
        for n in range(3 * video_media.FPS)
    ]
    video = video_media.write_video(tmp_path / "scenes.mp4", frames).read_bytes()
    doc = pymupdf.open()
    doc.new_page().insert_text((72, 72), "a page of text " * 30)
    return {
        "image": encode(noise_image(3)),
        "video": video,
        "audio": audio_media.encode(audio_media.tones(4, 8.0), "mp3"),
        "pdf": doc.tobytes(),
    }


def test_a_running_server_maps_no_decoder_while_its_worker_loads_each_kind_at_first_use(tmp_path):
    db_url = f"sqlite:///{tmp_path}/store.db"
    store = open_store(db_url)
    _, token = auth.create_token(store, "matcher", "imports")
    store.close()
    metadata = (("authorization", f"Bearer {token}"),)
    media = _media(tmp_path)
    address = f"127.0.0.1:{_free_port()}"
    # popen: stopped with its worker when the test ends (tests/conftest.py)
    server = popen(
        [sys.executable, "-m", "hashsvc", "serve", "--listen", address, "--db", db_url,
         "--workers", "1"],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    with grpc.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, "the server exited while starting"
            assert time.monotonic() < deadline, "the server did not become ready"
            try:
                reply = health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    break
            except grpc.RpcError:
                pass
            time.sleep(0.1)
        # Started and warmed up: one idle worker, no decoder anywhere yet.
        (worker,) = _hashing_workers(server.pid)
        assert _mapped_decoders(server.pid) == set()
        assert _mapped_decoders(worker) == set()

        matcher = pb_grpc.MatcherStub(channel)

        def match(kind: str) -> None:
            reply = matcher.Match(
                pb.MatchRequest(media=pb.Media(content=media[kind])), metadata=metadata, timeout=60
            )
            assert pb.MediaType.Name(reply.media_type) == kind.upper()

        match("image")
        assert _mapped_decoders(worker) == {"PIL", "pdqhash", "cv2"}  # only what images need
        for kind in ("video", "audio", "pdf"):
            match(kind)
        assert _hashing_workers(server.pid) == [worker]  # the same worker hashed them all
        assert _mapped_decoders(worker) == set(DECODER_LIBRARIES)
        assert _mapped_decoders(server.pid) == set()
