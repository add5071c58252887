"""Load test: concurrent clients sending Match to real `hashsvc serve` processes
on loopback, first one replica, then two over the same PostgreSQL.

    .venv/bin/python bench/loadtest.py --short     # 5 s a phase (CI, < 60 s)
    .venv/bin/python bench/loadtest.py             # 30 s a phase
    .venv/bin/python bench/loadtest.py --clients 16 --seconds 60 --workers 2
    .venv/bin/python bench/loadtest.py --mix image=50,video=20,audio=20,pdf=10

Uploads are a mix of media kinds (by default 80% images, 8% video, 7% audio,
5% PDF; bench/media_mix.py makes them): real photos after the edits of
bench/transforms.py, short videos, speech tracks and PDFs. Of each kind some
entries are known (added through the API before the run) and half of the
uploads are edited or re-encoded copies of them, the other half unrelated
media, so decisions vary. The report gives, per phase, requests/s and p50/p99
overall and per kind, decisions per kind, the share of known copies that
matched (BLOCK or REVIEW) and the unrelated uploads that did.
Clients are threads, each with its own channel, spread round-robin over the
replicas; every call must succeed (a failed call is counted and printed), and
the run fails too if no known copy of a kind matched (the mix would then not be
exercising matching). Clients, servers and their hashing workers share this
machine's cores: the figures are for the whole box, not for a server alone.
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
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import psycopg
from grpc_health.v1 import health_pb2, health_pb2_grpc
from media_mix import FULL, KINDS, SHORT, Upload, make_mix

from hashdb import open_store
from hashsvc.core import auth
from hashsvc.v1 import hashsvc_pb2 as pb
from hashsvc.v1 import hashsvc_pb2_grpc as pb_grpc

REPO = Path(__file__).resolve().parents[1]

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
            [sys.executable, "-m", "hashsvc", "serve", "--listen", f"127.0.0.1:{self.port}",
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


MEDIA_TYPES = {"image": pb.IMAGE, "video": pb.VIDEO, "audio": pb.AUDIO, "pdf": pb.PDF}
DEFAULT_MIX = "image=80,video=8,audio=7,pdf=5"
KNOWN_SHARE = 0.5  # of each kind's uploads, the share that are copies of known entries


def parse_mix(text: str) -> dict[str, float]:
    """Reads "image=80,video=8,..." as {kind: share of 1}; kinds left out are not sent."""
    mix = {}
    for part in text.split(","):
        kind, _, weight = part.partition("=")
        kind = kind.strip()
        try:
            share = float(weight)
        except ValueError:
            share = -1.0
        if kind not in KINDS or share < 0:
            raise argparse.ArgumentTypeError(
                f"{part!r}: expected kind=weight with kind one of {', '.join(KINDS)}"
            )
        if share > 0:
            mix[kind] = share
    if not mix:
        raise argparse.ArgumentTypeError("the mix sends nothing")
    total = sum(mix.values())
    return {kind: share / total for kind, share in mix.items()}


@dataclass(frozen=True)
class Sent:
    upload: Upload
    ms: float
    decision: int


def run_clients(addresses, metadata, uploads, mix: dict[str, float], clients: int, seconds: float):
    """Each client draws a kind by the mix, then a known copy or an unrelated
    item of that kind (KNOWN_SHARE), from its own seeded generator: every phase
    sends the same sequence."""
    kinds = list(mix)
    weights = [mix[kind] for kind in kinds]
    groups = {}
    for kind in kinds:
        for known in (True, False):
            group = [u for u in uploads[kind] if u.known == known]
            groups[kind, known] = group or uploads[kind]
    sent: list[list[Sent]] = [[] for _ in range(clients)]
    failures: list[str] = []
    stop_at = time.monotonic() + seconds
    lock = threading.Lock()

    def client(no: int) -> None:
        rng = np.random.default_rng(no)
        channel = grpc.insecure_channel(addresses[no % len(addresses)])
        matcher = pb_grpc.MatcherStub(channel)
        while time.monotonic() < stop_at:
            kind = kinds[rng.choice(len(kinds), p=weights)]
            group = groups[kind, bool(rng.random() < KNOWN_SHARE)]
            upload = group[rng.integers(len(group))]
            request = pb.MatchRequest(media=pb.Media(content=upload.content))
            started = time.perf_counter()
            try:
                reply = matcher.Match(request, metadata=metadata, timeout=30)
            except grpc.RpcError as exc:
                with lock:
                    failures.append(f"{kind} ({upload.edit}): {exc.code().name}: {exc.details()}")
                continue
            sent[no].append(Sent(upload, (time.perf_counter() - started) * 1000, reply.decision))
            if reply.media_type != MEDIA_TYPES[kind]:
                with lock:
                    failures.append(
                        f"{kind} ({upload.edit}): answered as {pb.MediaType.Name(reply.media_type)}"
                    )
        channel.close()

    threads = [threading.Thread(target=client, args=(no,)) for no in range(clients)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - started
    return [s for per_client in sent for s in per_client], failures, wall


@dataclass
class Figures:
    requests: int
    per_second: float
    p50: float
    p99: float
    decisions: Counter
    known: int = 0  # known copies sent
    known_matched: int = 0  # ... answered BLOCK or REVIEW
    unrelated: int = 0
    unrelated_matched: int = 0


def figures(sent: list[Sent], wall: float) -> Figures:
    ms = [s.ms for s in sent]
    out = Figures(
        len(sent),
        len(sent) / wall,
        float(np.percentile(ms, 50)) if ms else float("nan"),
        float(np.percentile(ms, 99)) if ms else float("nan"),
        Counter(pb.Decision.Name(s.decision) for s in sent),
    )
    for s in sent:
        matched = s.decision in (pb.BLOCK, pb.REVIEW)
        if s.upload.known:
            out.known += 1
            out.known_matched += matched
        else:
            out.unrelated += 1
            out.unrelated_matched += matched
    return out


def report(sent: list[Sent], wall: float, kinds: list[str]) -> list[str]:
    """Prints the per-kind table; returns the kinds whose known copies never matched."""
    total = figures(sent, wall)
    print(
        f"  all: {total.requests} requests, {total.per_second:.1f} req/s sustained,"
        f" p50 {total.p50:.1f} ms, p99 {total.p99:.1f} ms"
    )
    print(
        f"  {'kind':<6} {'requests':>8} {'req/s':>6} {'p50 ms':>7} {'p99 ms':>7}"
        f" {'BLOCK':>6} {'REVIEW':>6} {'ALLOW':>6}  {'known matched':<18} unrelated matched"
    )
    not_matching = []
    for kind in kinds:
        f = figures([s for s in sent if s.upload.kind == kind], wall)
        share = f"{f.known_matched}/{f.known}" + (
            f" ({f.known_matched / f.known:.2f})" if f.known else ""
        )
        print(
            f"  {kind:<6} {f.requests:>8} {f.per_second:>6.1f} {f.p50:>7.1f} {f.p99:>7.1f}"
            f" {f.decisions['BLOCK']:>6} {f.decisions['REVIEW']:>6} {f.decisions['ALLOW']:>6}"
            f"  {share:<18} {f.unrelated_matched}/{f.unrelated}"
        )
        if f.known and not f.known_matched:
            not_matching.append(kind)
        elif not f.known:
            print(f"  note: no known {kind} copy was sent in this phase")
    if any(sum(s.upload.kind == kind for s in sent) < 100 for kind in kinds):
        print("  (p99 of fewer than 100 requests is about their maximum)")
    return not_matching


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--short", action="store_true", help="5 s a phase, fewer media (CI)")
    parser.add_argument("--seconds", type=float, default=0)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--workers", type=int, default=0, help="hashing workers a replica")
    parser.add_argument(
        "--mix",
        type=parse_mix,
        default=DEFAULT_MIX,
        help=f"shares of the uploads by media kind (default {DEFAULT_MIX})",
    )
    args = parser.parse_args()
    seconds = args.seconds or (5 if args.short else 30)
    cores = os.cpu_count() or 1
    kinds = list(args.mix)

    schema = f"hashsvc_load_{uuid.uuid4().hex[:12]}"
    db_url = f"{PG_URL}?options=-csearch_path%3D{schema}"
    failed = False
    try:
        with tempfile.TemporaryDirectory() as tmp:
            made_at = time.monotonic()
            mix = make_mix(SHORT if args.short else FULL, kinds, Path(tmp))
            print(
                f"known entries: {_count_kinds(k for k, _, _ in mix.known)};"
                f" distinct uploads: {_count_kinds(k for k, us in mix.uploads.items() for _ in us)}"
                f"; made in {time.monotonic() - made_at:.1f} s"
            )
            print(
                "mix: " + ", ".join(f"{kind} {share:.0%}" for kind, share in args.mix.items())
                + f" ({KNOWN_SHARE:.0%} of each kind copies of known entries);"
                f" {args.clients} clients, {seconds:.0f} s a phase, {cores} cores on this machine"
            )  # fmt: skip
            for n_replicas in (1, 2):
                workers = args.workers or max(1, cores // n_replicas)
                replicas = [Replica(db_url, workers, tmp) for _ in range(n_replicas)]
                try:
                    if n_replicas == 1:
                        added_at = time.monotonic()
                        metadata = prepare(db_url, replicas[0].address, mix.known)
                        print(
                            f"entries added through the API in {time.monotonic() - added_at:.1f} s"
                        )
                    sent, failures, wall = run_clients(
                        [r.address for r in replicas], metadata, mix.uploads, args.mix,
                        args.clients, seconds,
                    )  # fmt: skip
                finally:
                    codes = [r.stop() for r in replicas]
                print(
                    f"{n_replicas} replica(s) x {workers} hashing worker(s):"
                    f" failed {len(failures)},"
                    f" ready in {max(r.ready_seconds for r in replicas):.1f} s,"
                    f" exit codes {codes}"
                )
                not_matching = report(sent, wall, kinds)
                for failure, count in Counter(failures).most_common(10):
                    print(f"  failure x{count}: {failure}")
                for kind in not_matching:
                    print(f"  no known {kind} copy matched: the mix is not exercising matching")
                failed |= bool(failures) or any(codes) or bool(not_matching)
    finally:
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    print("no request failed" if not failed else "THE LOAD TEST FAILED")
    sys.exit(1 if failed else 0)


def _count_kinds(kinds) -> str:
    counts = Counter(kinds)
    return ", ".join(f"{n} {kind}" for kind, n in counts.items())


def prepare(db_url: str, address: str, known: list[tuple[str, str, bytes]]):
    """A token, a set and the known entries of every kind, through the API of
    the first replica (media of a few hundred KB: one AddEntry message each)."""
    store = open_store(db_url)
    _, token = auth.create_token(store, "admin", "loadtest")
    store.close()
    metadata = (("authorization", f"Bearer {token}"),)
    with grpc.insecure_channel(address) as channel:
        curation = pb_grpc.CurationStub(channel)
        curation.CreateSet(pb.CreateSetRequest(name="load"), metadata=metadata)
        for kind, name, data in known:
            entry = curation.AddEntry(
                pb.AddEntryRequest(set="load", name=name, media=pb.Media(content=data)),
                metadata=metadata,
            )
            if entry.media_type != MEDIA_TYPES[kind]:
                raise RuntimeError(f"{name} was added as {pb.MediaType.Name(entry.media_type)}")
    return metadata


if __name__ == "__main__":
    main()
