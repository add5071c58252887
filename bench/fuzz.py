"""Hostile uploads against a live server, for a bounded count and time.

    .venv/bin/python bench/fuzz.py                  # 10,000 requests (or 60 minutes)
    .venv/bin/python bench/fuzz.py --requests 200   # CI-sized

Starts `hashsvc serve` (SQLite in a temporary directory, 2 hashing workers,
production limits except 4 MiB messages, 8 MiB streamed uploads and a 60 s
media time limit, so oversized cases stay cheap) and sends the hostile corpus
of tests/hostile.py: half cases of the corpus drawn at random (bombs, absurd
videos, audio and PDFs, malformed streams, hashes and labels), half fresh
truncations, bit-flips and splices of valid files of every format, as Match
or streamed MatchUpload. Prints requests, statuses (overall and by family),
crashes (the server process dying: must be 0), statuses other than a result
or a typed error (UNKNOWN, INTERNAL: must be 0), and the memory (RSS) of the
server and its hashing workers, sampled from /proc: start, peak, end, and the
growth over the second half of the run, which must stay under --max-growth-mb.
Exits 1 when any of these fails.
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
from dataclasses import dataclass, field
from pathlib import Path

import grpc

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hashdb import open_store  # noqa: E402
from hashsvc import auth  # noqa: E402
from hashsvc.v1 import hashsvc_pb2 as pb  # noqa: E402
from hashsvc.v1 import hashsvc_pb2_grpc as pb_grpc  # noqa: E402
from tests import hostile  # noqa: E402

MAX_MESSAGE = 4 * 1024 * 1024
MAX_UPLOAD = 8 * 1024 * 1024
CONFIG = f"""
max_message_bytes = {MAX_MESSAGE}
max_upload_bytes = {MAX_UPLOAD}
media_timeout_seconds = 60.0
quarantine_matches = 0
"""
ALLOWED = hostile.TYPED | {"NOT_FOUND"}  # NOT_FOUND: an entry for a set that does not exist


def rss_kb(pid: int) -> tuple[int, int]:
    """(RSS of the server process, RSS of the server and its hashing workers) in kB."""
    server = total = 0
    for p in [pid, *_children(pid)]:
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        kb = int(line.split()[1])
                        total += kb
                        server = kb if p == pid else server
        except OSError:
            pass  # a worker replaced meanwhile
    return server, total


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            kids = [int(x) for x in f.read().split()]
    except OSError:
        return []
    return kids + [g for k in kids for g in _children(k)]


@dataclass
class Report:
    requests: int = 0
    seconds: float = 0.0
    statuses: collections.Counter = field(default_factory=collections.Counter)
    by_family: dict = field(default_factory=lambda: collections.defaultdict(collections.Counter))
    untyped: list[str] = field(default_factory=list)  # cases that ended in UNKNOWN/INTERNAL
    crashed: bool = False
    serving_afterwards: bool = False
    slowest: tuple[float, str] = (0.0, "")
    samples: list[tuple[int, int, int]] = field(default_factory=list)  # (request, server, total)

    def _peak(self, samples, column: int) -> float:
        return max((s[column] for s in samples), default=0) / 1024

    def growth_mb(self, column: int = 2) -> float:
        """Peak RSS over the second half of the run minus peak over the first
        half (MB): what the server kept growing by once warmed up."""
        half = len(self.samples) // 2
        return self._peak(self.samples[half:], column) - self._peak(self.samples[:half], column)

    def lines(self) -> list[str]:
        s = self.samples
        out = [
            f"requests: {self.requests} in {self.seconds:.0f} s "
            f"({self.requests / max(self.seconds, 1e-9):.1f}/s); "
            f"slowest {self.slowest[0]:.1f} s ({self.slowest[1]})",
            "statuses: " + ", ".join(f"{k} {v}" for k, v in self.statuses.most_common()),
        ]
        for family, counts in sorted(self.by_family.items()):
            out.append(f"  {family:<18} " + ", ".join(f"{k} {v}" for k, v in counts.most_common()))
        out.append(
            f"crashes: {int(self.crashed)}; untyped statuses: {len(self.untyped)}"
            f"{' ' + ', '.join(self.untyped[:5]) if self.untyped else ''};"
            f" serving afterwards: {self.serving_afterwards}"
        )
        if s:
            out.append(
                f"RSS server+workers: start {s[0][2] / 1024:.0f} MB,"
                f" peak {self._peak(s, 2):.0f} MB, end {s[-1][2] / 1024:.0f} MB;"
                f" growth over the second half {self.growth_mb(2):+.0f} MB"
            )
            out.append(
                f"RSS server process: start {s[0][1] / 1024:.0f} MB,"
                f" peak {self._peak(s, 1):.0f} MB, end {s[-1][1] / 1024:.0f} MB;"
                f" growth over the second half {self.growth_mb(1):+.0f} MB"
            )
        return out


def run(requests: int, seconds: float, seed: int = 8, workers: int = 2, every: int = 10) -> Report:
    """Start a server, send up to `requests` hostile calls within `seconds`,
    sample RSS every `every` requests, stop the server; the report."""
    rng = random.Random(seed)
    report = Report()
    with tempfile.TemporaryDirectory(prefix="hashsvc-fuzz-") as tmp:
        cases = hostile.corpus(Path(tmp) / "media", MAX_MESSAGE, MAX_UPLOAD)
        seeds = hostile.seeds(Path(tmp) / "media")
        db = f"sqlite:///{tmp}/fuzz.db"
        store = open_store(db)
        tokens = {role: auth.create_token(store, role, f"fuzz-{role}")[1] for role in auth.ROLES}
        store.close()
        config = Path(tmp) / "fuzz.toml"
        config.write_text(CONFIG)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        log = open(os.path.join(tmp, "server.log"), "wb")  # noqa: SIM115
        server = subprocess.Popen(
            [sys.executable, "-m", "hashsvc.cli", "serve", "--listen", f"127.0.0.1:{port}",
             "--db", db, "--workers", str(workers), "--config", str(config)],
            cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        channel = grpc.insecure_channel(
            f"127.0.0.1:{port}", options=[("grpc.max_send_message_length", 64 << 20)]
        )
        try:
            grpc.channel_ready_future(channel).result(timeout=60)
            _fuzz(channel, tokens, cases, seeds, rng, requests, seconds, every, server, report)
        finally:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
            channel.close()
            log.close()
    return report


def _fuzz(channel, tokens, cases, seeds, rng, requests, seconds, every, server, report) -> None:
    matcher, curation = pb_grpc.MatcherStub(channel), pb_grpc.CurationStub(channel)
    md = {role: (("authorization", f"Bearer {token}"),) for role, token in tokens.items()}
    good = pb.MatchRequest(media=pb.Media(content=seeds["jpeg"]))
    curation.CreateSet(pb.CreateSetRequest(name="hostile"), metadata=md["operator"], timeout=30)
    matcher.Match(good, metadata=md["matcher"], timeout=60)  # workers up
    report.samples.append((0, *rss_kb(server.pid)))
    started = time.monotonic()
    while report.requests < requests and time.monotonic() - started < seconds:
        case = hostile.random_case(rng, cases, seeds)
        stub = curation if case.rpc.startswith("AddEntry") else matcher
        t = time.perf_counter()
        try:
            getattr(stub, case.rpc)(case.build(), metadata=md[case.role], timeout=120)
            code = "OK"
        except grpc.RpcError as exc:
            code = exc.code().name
        elapsed = time.perf_counter() - t
        report.slowest = max(report.slowest, (elapsed, case.name))
        report.statuses[code] += 1
        report.by_family[case.family.removeprefix("streamed_")][code] += 1
        if code not in ALLOWED:
            report.untyped.append(f"{case.name}: {code}")
        report.requests += 1
        if report.requests % every == 0:
            report.samples.append((report.requests, *rss_kb(server.pid)))
            if server.poll() is not None:
                break
    report.seconds = time.monotonic() - started
    report.crashed = server.poll() is not None
    if not report.crashed:
        try:
            answer = matcher.Match(good, metadata=md["matcher"], timeout=60)
            report.serving_afterwards = answer.decision == pb.ALLOW
        except grpc.RpcError:
            report.serving_afterwards = False
        report.samples.append((report.requests, *rss_kb(server.pid)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=3600)
    parser.add_argument("--seed", type=int, default=8)
    parser.add_argument(
        "--max-growth-mb",
        type=float,
        default=300.0,
        help="bound on the growth of server+workers RSS over the second half (MB)",
    )
    args = parser.parse_args()
    report = run(args.requests, args.seconds, args.seed)
    print("\n".join(report.lines()))
    growth = report.growth_mb()
    failed = report.crashed or report.untyped or not report.serving_afterwards
    if growth > args.max_growth_mb:
        print(f"FAIL: RSS grew {growth:.0f} MB over the second half (bound {args.max_growth_mb})")
        failed = True
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
