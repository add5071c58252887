"""Hostile uploads against a live server, for a bounded count and time.

    .venv/bin/python bench/fuzz.py                  # 10,000 requests (or 60 minutes)
    .venv/bin/python bench/fuzz.py --requests 200   # CI-sized

Starts `hashsvc serve` (SQLite in a temporary directory, 2 hashing workers,
production limits except 4 MiB messages, 8 MiB streamed uploads and a 60 s
media time limit, so oversized cases stay cheap) and sends the hostile corpus
of hashsvc_testing/hostile.py: half cases of the corpus drawn at random (bombs, absurd
videos, audio and PDFs, malformed streams, hashes and labels), half fresh
truncations, bit-flips and splices of valid files of every format, as Match
or streamed MatchUpload. Prints requests, statuses (overall and by family),
crashes (the server process dying: must be 0), statuses other than a result
or a typed error (UNKNOWN, INTERNAL: must be 0), and the memory (RSS) of the
server and its hashing workers, sampled from /proc: start, peak, end, and the
growth over the second half of the run, which must stay under --max-growth-mb.

Then the API cases, on the same server: every paging field with negative,
huge and odd sizes and tokens (INVALID_ARGUMENT, never more than a page's
cap); over-long strings, NUL and control characters in every text a caller
sends or filters on (INVALID_ARGUMENT or NOT_FOUND, never INTERNAL); a flood
of exact copies of a known entry past the flood threshold (every copy still
BLOCKs); and 1,400 idle calls (MatchUpload with and without a token,
BulkLoad, MatchBatch, reflection, unary Match and health calls whose message
never comes) held open while Match and the health check must answer within
--max-idle-latency-ms, each then ended by the server itself (idle deadline,
a cap, no token) with a typed status. `--store postgresql` (or both) runs it all on
PostgreSQL, where NUL in text used to be an INTERNAL error.
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
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import psycopg
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from hashdb import open_store
from hashsvc.core import auth
from hashsvc.v1 import hashsvc_pb2 as pb
from hashsvc.v1 import hashsvc_pb2_grpc as pb_grpc
from hashsvc_testing import hostile, processes

REPO = Path(__file__).resolve().parents[1]

MAX_MESSAGE = 4 * 1024 * 1024
IDLE_SECONDS = 3  # the fuzz server's stream_idle_seconds
MAX_UPLOAD = 8 * 1024 * 1024
CONFIG = f"""
max_message_bytes = {MAX_MESSAGE}
max_upload_bytes = {MAX_UPLOAD}
media_timeout_seconds = 60.0
quarantine_matches = 50
stream_idle_seconds = {IDLE_SECONDS}
"""
ALLOWED = hostile.TYPED | {"NOT_FOUND"}  # NOT_FOUND: an entry for a set that does not exist
# Typed answers to hostile API calls (names that do not exist, refused roles,
# a service that is off): anything else (UNKNOWN, INTERNAL) is a crash of a call.
API_TYPED = ALLOWED | {
    "ALREADY_EXISTS",
    "FAILED_PRECONDITION",
    "PERMISSION_DENIED",
    "UNAUTHENTICATED",
    "UNIMPLEMENTED",
}
PG_URL = os.environ.get("HASHSVC_TEST_PG", "postgresql://127.0.0.1:5432/test")


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
    media_requests: int = 0  # of them, hostile media (the rest: API cases)
    seconds: float = 0.0  # the hostile media's
    statuses: collections.Counter = field(default_factory=collections.Counter)
    by_family: dict = field(default_factory=lambda: collections.defaultdict(collections.Counter))
    untyped: list[str] = field(default_factory=list)  # cases that ended in UNKNOWN/INTERNAL
    wrong: list[str] = field(default_factory=list)  # typed, but not the status the case needs
    idle_latency: float = 0.0  # slowest Match/health answer beside idle streams (s)
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
            f"requests: {self.requests}; hostile media: {self.media_requests} in"
            f" {self.seconds:.0f} s ({self.media_requests / max(self.seconds, 1e-9):.1f}/s); "
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
        out.append(
            f"API cases answered wrongly: {len(self.wrong)}"
            f"{' ' + ', '.join(self.wrong[:5]) if self.wrong else ''};"
            f" slowest Match/health beside {7 * IDLE_STREAMS} idle calls:"
            f" {self.idle_latency * 1000:.0f} ms"
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


def run(
    requests: int,
    seconds: float,
    seed: int = 8,
    workers: int = 2,
    every: int = 10,
    store: str = "sqlite",
    ping_latency_limit: float = 0.1,
    api_cases: bool = True,
) -> Report:
    """Start a server, send up to `requests` hostile calls within `seconds`,
    sample RSS every `every` requests, then the API cases (paging, strings, a
    flood, idle streams); stop the server; the report."""
    rng = random.Random(seed)
    report = Report()
    schema = f"hashsvc_fuzz_{uuid.uuid4().hex[:12]}"
    with tempfile.TemporaryDirectory(prefix="hashsvc-fuzz-") as tmp:
        cases = hostile.corpus(Path(tmp) / "media", MAX_MESSAGE, MAX_UPLOAD)
        seeds = hostile.seeds(Path(tmp) / "media")
        if store == "postgresql":
            db = f"{PG_URL}?options=-csearch_path%3D{schema}"
        else:
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
        server = start_server(
            ["--listen", f"127.0.0.1:{port}", "--db", db, "--workers", str(workers),
             "--config", str(config)],
            log,
        )  # fmt: skip
        channel = grpc.insecure_channel(
            f"127.0.0.1:{port}", options=[("grpc.max_send_message_length", 64 << 20)]
        )
        try:
            grpc.channel_ready_future(channel).result(timeout=60)
            # matching answers UNAVAILABLE until the index is loaded
            _wait_serving(channel, 60)
            _fuzz(channel, tokens, cases, seeds, rng, requests, seconds, every, server, report)
            if api_cases and not report.crashed:
                md = {role: (("authorization", f"Bearer {t}"),) for role, t in tokens.items()}
                _protocol(channel, md, report, seeds, ping_latency_limit)
                report.crashed = server.poll() is not None
        finally:
            stop_server(server)
            channel.close()
            log.close()
            if store == "postgresql":
                with psycopg.connect(PG_URL, autocommit=True) as conn:
                    conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    return report


def start_server(args: list[str], log) -> subprocess.Popen:
    """`hashsvc serve ARGS` in a session of its own: stopping its process
    group stops its hashing workers too, even once the server itself died;
    killed if this process dies first (a test run stopped without teardown)."""
    return subprocess.Popen(
        processes.dying_with_parent([sys.executable, "-m", "hashsvc", "serve", *args]),
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def stop_server(server: subprocess.Popen, grace: float = 30.0) -> None:
    """SIGTERM to the server's process group, SIGKILL after `grace` seconds;
    then SIGKILL to whatever is left of the group (workers of a server that
    crashed or was killed, which nobody would stop otherwise), before the
    server is reaped (hashsvc_testing/processes.py)."""
    processes.stop_group(server, grace)


def _wait_serving(channel, seconds: float) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            reply = health.Check(health_pb2.HealthCheckRequest(), timeout=5)
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                return
        except grpc.RpcError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"the server was not SERVING within {seconds:g} s")


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
    report.media_requests = report.requests
    report.crashed = server.poll() is not None
    if not report.crashed:
        try:
            answer = matcher.Match(good, metadata=md["matcher"], timeout=60)
            report.serving_afterwards = answer.decision == pb.ALLOW
        except grpc.RpcError:
            report.serving_afterwards = False
        report.samples.append((report.requests, *rss_kb(server.pid)))


# -- the protocol phase: paging, strings, a flood, idle streams

# Paging fields every listing takes: sizes past the int32 range cannot be sent.
PAGE_SIZES = (-1, -(2**31), 0, 1, 1001, 2**31 - 1)
PAGE_TOKENS = ("", "-1", "0", "²", "١٢", "9" * 30, "abc", "1\x00", "1" * 5000)
# Strings a caller may send: over every length limit, NUL (PostgreSQL text
# refuses it), control characters.
HOSTILE_STRINGS = ("x" * (1 << 20), "a\x00b", "\x00", "line\nbreak\x7f", "x" * 70_000)
FLOOD_COPIES = 120  # > the fuzz server's quarantine_matches
IDLE_STREAMS = 200  # of each kind
# How the server ends an idle call: past its idle deadline, past a cap,
# without a valid token, or (reflection) because it is off.
IDLE_ENDS = {"DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "UNAUTHENTICATED", "CANCELLED",
             "UNIMPLEMENTED"}  # fmt: skip
LATENCY_PROBES = 10


def _protocol(channel, md, report, seeds, ping_latency_limit: float) -> None:
    """Hostile API use beside the hostile media: each call must end in a
    result or a typed error, a flood of exact copies must all BLOCK, and idle
    streams opened by anyone must not starve Match or the health check."""
    matcher, curation = pb_grpc.MatcherStub(channel), pb_grpc.CurationStub(channel)
    review, audit = pb_grpc.ReviewStub(channel), pb_grpc.AuditStub(channel)
    admin = pb_grpc.AdminStub(channel)

    def call(family, method, request, role, expect=None, timeout=30):
        t = time.perf_counter()
        try:
            answer = method(request, metadata=md[role], timeout=timeout)
            code = "OK"
        except grpc.RpcError as exc:
            answer, code = None, exc.code().name
        report.slowest = max(report.slowest, (time.perf_counter() - t, family))
        report.statuses[code] += 1
        report.by_family[family][code] += 1
        report.requests += 1
        if code not in API_TYPED:
            report.untyped.append(f"{family}: {code}")
        elif expect is not None and code not in expect:
            report.wrong.append(f"{family}: {code}")
        return answer

    # paging: a negative size or an odd token is INVALID_ARGUMENT, a page
    # never holds more than the cap
    for size in PAGE_SIZES:
        for token in PAGE_TOKENS:
            expect = {"INVALID_ARGUMENT"} if size < 0 or token not in ("", "0") else None
            for family, method, request, role, items in (
                ("paging:entries", curation.ListEntries,
                 pb.ListEntriesRequest(set="hostile", page_size=size, page_token=token),
                 "operator", "entries"),
                ("paging:history", audit.QueryHistory,
                 pb.QueryHistoryRequest(page_size=size, page_token=token), "auditor", "records"),
                ("paging:review", review.ListReviewItems,
                 pb.ListReviewItemsRequest(page_size=size, page_token=token), "reviewer", "items"),
            ):  # fmt: skip
                answer = call(family, method, request, role, expect)
                if answer is not None and len(getattr(answer, items)) > 1000:
                    report.wrong.append(f"{family}: a page of {len(getattr(answer, items))}")

    # strings: every text field a caller writes or filters on
    refused = {"INVALID_ARGUMENT"}
    lookup = {"INVALID_ARGUMENT", "NOT_FOUND"}
    for text in HOSTILE_STRINGS:
        good_hash = pb.SignalValue(signal_type="md5", value="0" * 32)
        cases = (
            ("strings:set_name", curation.CreateSet, pb.CreateSetRequest(name=text), "operator",
             refused),
            ("strings:description", curation.CreateSet,
             pb.CreateSetRequest(name="s-desc", description=text), "operator", refused),
            ("strings:label", curation.CreateSet,
             pb.CreateSetRequest(name="s-label", labels={"k": text}), "operator", refused),
            ("strings:entry_name", curation.AddEntry,
             pb.AddEntryRequest(set="hostile", name=text, signal=good_hash), "operator", refused),
            ("strings:get_set", curation.GetSet, pb.GetSetRequest(name=text), "operator", lookup),
            ("strings:get_entry", curation.GetEntry,
             pb.GetEntryRequest(set="hostile", name=text), "operator", lookup),
            ("strings:client_ref", matcher.Match,
             pb.MatchRequest(signal=good_hash, client_ref=text), "matcher", refused),
            ("strings:history_caller", audit.QueryHistory,
             pb.QueryHistoryRequest(caller=text), "auditor", lookup | {"OK"}),
            ("strings:history_set", audit.QueryHistory, pb.QueryHistoryRequest(set=text),
             "auditor", lookup),
            ("strings:review_filter", review.ListReviewItems,
             pb.ListReviewItemsRequest(filter=pb.ReviewFilter(label=f"k={text}", caller=text)),
             "reviewer", lookup | {"OK"}),
            ("strings:review_note", review.ResolveReviewItem,
             pb.ResolveReviewItemRequest(id=1, resolution="confirmed", note=text), "reviewer",
             refused | {"NOT_FOUND", "FAILED_PRECONDITION"}),
            ("strings:token_name", admin.CreateToken,
             pb.CreateTokenRequest(role="matcher", name=text), "admin", refused),
        )  # fmt: skip
        for family, method, request, role, expect in cases:
            if "\x00" in text or len(text) > 65_536:
                call(family, method, request, role, expect)
            else:  # control characters: refused or kept as written, never INTERNAL
                call(family, method, request, role)

    # a flood of exact copies of a known hash: every one still BLOCKs
    known = curation.AddEntry(
        pb.AddEntryRequest(
            set="hostile", name="flooded", media=pb.Media(content=seeds["jpeg"], filename="f.jpg")
        ),
        metadata=md["operator"],
        timeout=60,
    )
    sha = next(s.value for s in known.signals if s.signal_type == "sha256")
    exact = pb.MatchRequest(signal=pb.SignalValue(signal_type="sha256", value=sha))
    for _ in range(FLOOD_COPIES):
        answer = call("flood:exact", matcher.Match, exact, "matcher", {"OK"})
        if answer is not None and answer.decision != pb.BLOCK:
            report.wrong.append(f"flood:exact: {pb.Decision.Name(answer.decision)}")
            break

    # idle streams, with and without a token, then Match and health must answer
    report.idle_latency = _idle_streams(channel, md, report, exact)
    if report.idle_latency > ping_latency_limit:
        report.wrong.append(
            f"idle streams: Match/health took {report.idle_latency * 1000:.0f} ms"
            f" (bound {ping_latency_limit * 1000:.0f} ms)"
        )


def _idle_streams(address_channel, md, report, probe) -> float:
    """Opens IDLE_STREAMS idle calls of each kind (MatchUpload with and without
    a token, BulkLoad, MatchBatch, reflection, and unary Match and health
    calls whose message never comes), then times Match and the health check
    (the slowest of LATENCY_PROBES each, seconds). Each idle call must then end
    by itself (within the server's stream_idle_seconds) with a typed status."""
    gate = threading.Event()

    def idle(first=None):
        if first is not None:
            yield first
        gate.wait(IDLE_SECONDS + 60)

    upload = pb.MatchUploadRequest(header=pb.MatchRequest(client_ref="idle"))
    bulk = pb.BulkLoadRequest(header=pb.BulkLoadHeader(set="hostile"))
    matcher = pb_grpc.MatcherStub(address_channel)
    curation = pb_grpc.CurationStub(address_channel)
    reflection_stub = reflection_pb2_grpc.ServerReflectionStub(address_channel)
    # a unary method called as a stream: headers sent, the message never
    raw_match = address_channel.stream_stream("/hashsvc.v1.Matcher/Match")
    raw_health = address_channel.stream_stream("/grpc.health.v1.Health/Check")
    kinds = {
        "upload": lambda: matcher.MatchUpload.future(idle(upload), metadata=md["matcher"]),
        "upload-no-token": lambda: matcher.MatchUpload.future(idle(upload)),
        "bulkload": lambda: curation.BulkLoad.future(idle(bulk), metadata=md["operator"]),
        "batch": lambda: matcher.MatchBatch(idle(), metadata=md["matcher"]),
        "reflection": lambda: reflection_stub.ServerReflectionInfo(
            idle(reflection_pb2.ServerReflectionRequest(list_services=""))
        ),
        "headers-only-match": lambda: raw_match(idle(), metadata=md["matcher"]),
        "headers-only-health": lambda: raw_health(idle()),
    }
    calls = []
    try:
        for _ in range(IDLE_STREAMS):
            for kind, open_call in kinds.items():
                calls.append((kind, open_call()))
        time.sleep(1.0)  # let the server take them all
        health = health_pb2_grpc.HealthStub(address_channel)
        slowest = 0.0
        for _ in range(LATENCY_PROBES):
            for method, request, metadata in (
                (matcher.Match, probe, md["matcher"]),
                (health.Check, health_pb2.HealthCheckRequest(), ()),
            ):
                t = time.perf_counter()
                try:
                    method(request, metadata=metadata, timeout=10)
                    code = "OK"
                except grpc.RpcError as exc:
                    code = exc.code().name
                slowest = max(slowest, time.perf_counter() - t)
                report.requests += 1
                report.statuses[code] += 1
                report.by_family["idle:probe"][code] += 1
                if code != "OK":
                    report.wrong.append(f"idle:probe: {code}")
        # nothing is cancelled from this side: the server ends them all
        deadline = time.monotonic() + IDLE_SECONDS + 15
        for kind, call in calls:
            code = _end_of(call, deadline)
            report.requests += 1
            report.statuses[code] += 1
            report.by_family[f"idle:{kind}"][code] += 1
            if code not in IDLE_ENDS:
                (report.untyped if code not in API_TYPED else report.wrong).append(
                    f"idle:{kind}: {code}"
                )
        return slowest
    finally:
        gate.set()
        for _, call in calls:
            call.cancel()


def _end_of(call, deadline: float) -> str:
    """The status an idle call ended with, waiting until `deadline` at most
    ("STILL_OPEN" if it had not ended by then)."""
    while time.monotonic() < deadline:
        if call.done():
            code = call.code()
            return code.name if code is not None else "OK"
        time.sleep(0.05)
    return "STILL_OPEN"


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
    parser.add_argument(
        "--store", choices=("sqlite", "postgresql", "both"), default="sqlite",
        help="the server's store (PostgreSQL on 127.0.0.1:5432, a private schema)",
    )  # fmt: skip
    parser.add_argument(
        "--max-idle-latency-ms",
        type=float,
        default=100.0,
        help="bound on the slowest Match/health answer while idle streams are open",
    )
    args = parser.parse_args()
    failed = False
    for store in ("sqlite", "postgresql") if args.store == "both" else (args.store,):
        report = run(
            args.requests,
            args.seconds,
            args.seed,
            store=store,
            ping_latency_limit=args.max_idle_latency_ms / 1000,
        )
        print(f"== {store}")
        print("\n".join(report.lines()))
        growth = report.growth_mb()
        failed |= bool(
            report.crashed or report.untyped or report.wrong or not report.serving_afterwards
        )
        if growth > args.max_growth_mb:
            print(
                f"FAIL: RSS grew {growth:.0f} MB over the second half (bound {args.max_growth_mb})"
            )
            failed = True
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
