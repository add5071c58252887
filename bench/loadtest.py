"""Load test: concurrent clients sending Match to real `hashsvc serve` processes
on loopback, first one replica, then two over the same PostgreSQL.

    .venv/bin/python bench/loadtest.py --short     # 10 s a phase (CI, < 60 s)
    .venv/bin/python bench/loadtest.py             # 30 s a phase
    .venv/bin/python bench/loadtest.py --clients 16 --seconds 60 --workers 2

Uploads are JPEGs of the real photos of bench/photos.py after the edits of
bench/transforms.py: half of the photos are known (added through the API
before the run), so about half of the uploads match and half are allowed.
Clients are threads, each with its own channel, spread round-robin over the
replicas; every call must succeed (a failed call is counted and printed).
Clients, servers and their hashing workers share this machine's cores: the
figures are for the whole box, not for a server alone.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import grpc
import numpy as np
import psycopg
from grpc_health.v1 import health_pb2, health_pb2_grpc

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from hashdb import open_store  # noqa: E402
from hashsvc import auth  # noqa: E402
from hashsvc.v1 import hashsvc_pb2 as pb  # noqa: E402
from hashsvc.v1 import hashsvc_pb2_grpc as pb_grpc  # noqa: E402

PG_URL = os.environ.get("HASHSVC_TEST_PG", "postgresql://127.0.0.1:5432/test")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Replica:
    """One `hashsvc serve` process; ready when gRPC health says SERVING."""

    def __init__(self, db_url: str, workers: int, log_dir: str) -> None:
        self.port = free_port()
        self.log = open(os.path.join(log_dir, f"server-{self.port}.log"), "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "hashsvc.cli", "serve", "--listen", f"127.0.0.1:{self.port}",
             "--db", db_url, "--workers", str(workers)],
            cwd=REPO, stdout=self.log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        self.address = f"127.0.0.1:{self.port}"
        started = time.monotonic()
        with grpc.insecure_channel(self.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() - started < 60:
                try:
                    reply = health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        break
                except grpc.RpcError:
                    pass
                time.sleep(0.1)
            else:
                raise RuntimeError(f"replica on {self.address} did not become ready")
        self.ready_seconds = time.monotonic() - started

    def stop(self) -> int:
        self.proc.terminate()
        code = self.proc.wait(timeout=60)
        self.log.close()
        return code


def make_uploads(n_photos: int) -> tuple[list[bytes], list[bytes]]:
    """(known photos as JPEG, uploads: every photo after every edit)."""
    from photos import load_photos
    from transforms import TRANSFORMS, jpeg

    rng = np.random.default_rng(0)
    photos = load_photos(n_photos)
    known = [jpeg(img, 90) for _, img in photos[: len(photos) // 2]]
    uploads = [t(img, rng) for _, img in photos for t in TRANSFORMS.values()]
    return known, uploads


def run_clients(addresses, metadata, uploads, clients: int, seconds: float) -> dict:
    latencies: list[list[float]] = [[] for _ in range(clients)]
    failures: list[str] = []
    decisions: dict[int, int] = {}
    stop_at = time.monotonic() + seconds
    lock = threading.Lock()

    def client(no: int) -> None:
        channel = grpc.insecure_channel(addresses[no % len(addresses)])
        matcher = pb_grpc.MatcherStub(channel)
        i = no
        while time.monotonic() < stop_at:
            request = pb.MatchRequest(media=pb.Media(content=uploads[i % len(uploads)]))
            started = time.perf_counter()
            try:
                reply = matcher.Match(request, metadata=metadata, timeout=30)
                latencies[no].append((time.perf_counter() - started) * 1000)
                with lock:
                    decisions[reply.decision] = decisions.get(reply.decision, 0) + 1
            except grpc.RpcError as exc:
                with lock:
                    failures.append(f"{exc.code().name}: {exc.details()}")
            i += clients
        channel.close()

    threads = [threading.Thread(target=client, args=(no,)) for no in range(clients)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - started
    all_ms = [ms for per_client in latencies for ms in per_client]
    return {
        "requests": len(all_ms),
        "per_second": len(all_ms) / wall,
        "p50": float(np.percentile(all_ms, 50)) if all_ms else float("nan"),
        "p99": float(np.percentile(all_ms, 99)) if all_ms else float("nan"),
        "failures": failures,
        "decisions": {pb.Decision.Name(k): v for k, v in sorted(decisions.items())},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--short", action="store_true", help="10 s a phase (CI)")
    parser.add_argument("--seconds", type=float, default=0)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--workers", type=int, default=0, help="hashing workers a replica")
    args = parser.parse_args()
    seconds = args.seconds or (10 if args.short else 30)
    cores = os.cpu_count() or 1

    known, uploads = make_uploads(8 if args.short else 40)
    print(
        f"{len(known)} known photos, {len(uploads)} distinct uploads (JPEG edits),"
        f" {args.clients} clients, {seconds:.0f} s a phase, {cores} cores on this machine"
    )
    schema = f"hashsvc_load_{uuid.uuid4().hex[:12]}"
    db_url = f"{PG_URL}?options=-csearch_path%3D{schema}"
    failed = False
    try:
        with tempfile.TemporaryDirectory() as log_dir:
            for n_replicas in (1, 2):
                workers = args.workers or max(1, cores // n_replicas)
                replicas = [Replica(db_url, workers, log_dir) for _ in range(n_replicas)]
                try:
                    if n_replicas == 1:
                        metadata = prepare(db_url, replicas[0].address, known)
                    result = run_clients(
                        [r.address for r in replicas], metadata, uploads, args.clients, seconds
                    )
                finally:
                    codes = [r.stop() for r in replicas]
                failed |= bool(result["failures"]) or any(codes)
                print(
                    f"{n_replicas} replica(s) x {workers} hashing worker(s):"
                    f" {result['requests']} requests, {result['per_second']:.1f} req/s sustained,"
                    f" p50 {result['p50']:.1f} ms, p99 {result['p99']:.1f} ms,"
                    f" failed {len(result['failures'])}, decisions {result['decisions']},"
                    f" ready in {max(r.ready_seconds for r in replicas):.1f} s,"
                    f" exit codes {codes}"
                )
                for failure in result["failures"][:5]:
                    print(f"  failure: {failure}")
    finally:
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    print("no request failed" if not failed else "SOME REQUESTS FAILED")
    sys.exit(1 if failed else 0)


def prepare(db_url: str, address: str, known: list[bytes]):
    """A token, a set and the known photos, through the API of the first replica."""
    store = open_store(db_url)
    _, token = auth.create_token(store, "admin", "loadtest")
    store.close()
    metadata = (("authorization", f"Bearer {token}"),)
    with grpc.insecure_channel(address) as channel:
        curation = pb_grpc.CurationStub(channel)
        curation.CreateSet(pb.CreateSetRequest(name="load"), metadata=metadata)
        for i, data in enumerate(known):
            curation.AddEntry(
                pb.AddEntryRequest(set="load", name=f"known-{i}", media=pb.Media(content=data)),
                metadata=metadata,
            )
    return metadata


if __name__ == "__main__":
    main()
