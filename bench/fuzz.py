"""Hostile uploads against a live server, for a bounded count and time.

    .venv/bin/python bench/fuzz.py                  # 10,000 requests (or 10 minutes)
    .venv/bin/python bench/fuzz.py --requests 500   # CI-sized

Starts `hashsvc serve` (SQLite in a temporary directory, 2 hashing workers) and
sends truncated and bit-flipped images of every format, decompression bombs,
empty and 1-byte files, random bytes, wrong extensions, oversized messages,
malformed hashes and labels. Prints requests, outcomes by status, whether the
server process survived, and its memory (RSS, with its workers) over the run.
"""

from __future__ import annotations

import argparse
import collections
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hashdb import open_store  # noqa: E402
from hashsvc import auth  # noqa: E402
from hashsvc.v1 import hashsvc_pb2 as pb  # noqa: E402
from hashsvc.v1 import hashsvc_pb2_grpc as pb_grpc  # noqa: E402
from tests.hostile import hostile, seeds  # noqa: E402


def rss_mb(pid: int) -> float:
    """RSS of the server and its hashing workers."""
    total = 0
    for p in [pid, *_children(pid)]:
        try:
            for line in open(f"/proc/{p}/status"):
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            kids = [int(x) for x in f.read().split()]
    except OSError:
        return []
    return kids + [g for k in kids for g in _children(k)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=600)
    args = parser.parse_args()
    rng = random.Random(8)
    base = seeds()

    with tempfile.TemporaryDirectory() as tmp:
        db = f"sqlite:///{tmp}/fuzz.db"
        store = open_store(db)
        _, token = auth.create_token(store, "admin", "fuzz")
        store.close()
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        log = open(os.path.join(tmp, "server.log"), "wb")  # noqa: SIM115
        server = subprocess.Popen(
            [sys.executable, "-m", "hashsvc.cli", "serve", "--listen", f"127.0.0.1:{port}",
             "--db", db, "--workers", "2"],
            cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        channel = grpc.insecure_channel(
            f"127.0.0.1:{port}", options=[("grpc.max_send_message_length", 128 << 20)]
        )
        grpc.channel_ready_future(channel).result(timeout=30)
        matcher = pb_grpc.MatcherStub(channel)
        md = (("authorization", f"Bearer {token}"),)
        good = pb.MatchRequest(media=pb.Media(content=base["JPEG"]))
        time.sleep(2)  # index loaded, workers up
        matcher.Match(good, metadata=md, timeout=30)
        rss_start = rss_mb(server.pid)
        rss_peak = rss_start
        outcomes: collections.Counter = collections.Counter()
        by_kind: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        slowest = 0.0
        started = time.monotonic()
        sent = 0
        while sent < args.requests and time.monotonic() - started < args.seconds:
            kind, request = hostile(rng, base)
            t = time.perf_counter()
            try:
                matcher.Match(request, metadata=md, timeout=60)
                code = "OK"
            except grpc.RpcError as exc:
                code = exc.code().name
            slowest = max(slowest, time.perf_counter() - t)
            outcomes[code] += 1
            by_kind[kind.split(":")[0]][code] += 1
            sent += 1
            if sent % 200 == 0:
                rss_peak = max(rss_peak, rss_mb(server.pid))
                if server.poll() is not None:
                    break
        alive = server.poll() is None
        still_serving = False
        if alive:
            still_serving = matcher.Match(good, metadata=md, timeout=30).decision == pb.ALLOW
            rss_peak = max(rss_peak, rss_mb(server.pid))
        rss_end = rss_mb(server.pid) if alive else 0
        server.terminate()
        server.wait(timeout=30)
        log.close()

    elapsed = time.monotonic() - started
    print(f"requests: {sent} in {elapsed:.0f} s ({sent / elapsed:.0f}/s); slowest {slowest:.2f} s")
    print("outcomes: " + ", ".join(f"{k} {v}" for k, v in outcomes.most_common()))
    for kind, counts in sorted(by_kind.items()):
        print(f"  {kind:<10} " + ", ".join(f"{k} {v}" for k, v in counts.most_common()))
    print(f"server crashes: {0 if alive else 1}; serving afterwards: {still_serving}")
    print(
        f"server RSS with workers: start {rss_start:.0f} MB, peak {rss_peak:.0f} MB,"
        f" end {rss_end:.0f} MB"
    )
    internal = outcomes.get("INTERNAL", 0) + outcomes.get("UNKNOWN", 0)
    if not alive or not still_serving or internal:
        sys.exit(1)


if __name__ == "__main__":
    main()
