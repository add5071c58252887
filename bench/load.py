"""Bulk load throughput end to end, and Match latency while a load runs.

    .venv/bin/python bench/load.py            # 1M PDQ rows a shape, SQLite and PostgreSQL,
                                              # the median of 3 loads each
    .venv/bin/python bench/load.py --short    # 40k rows, one load each; plain rows on
                                              # both stores, each other shape on one (CI)
    .venv/bin/python bench/load.py --rerun    # then the same rows again (a resume)
    .venv/bin/python bench/load.py --repeat 5 # five loads a shape and store, and their median
    .venv/bin/python bench/load.py --strict   # --strict loads (checked whole, then written)
    .venv/bin/python bench/load.py --shapes plain,both --rows 500000
    .venv/bin/python bench/load.py --shapes labels --profile  # where the server's CPU goes

Shapes: `plain` rows (signal_type,signal_value), and as partner feeds send
them: `entry` (a source id a row), `labels` (a JSON object a row, from 300
distinct sets such as {"source": "gifct", "entity": ..., "content_type":
"video"}) and `both`. The summary gives each shape's median and its ratio to
plain rows on the same store.

End to end: a CSV file of random PDQ hashes is read, checked and streamed by
the `hashsvc load` client code (its own process) through the BulkLoad RPC to a
real server (gRPC on loopback), which checks the rows again, writes them in
batches and updates its in-memory index after each batch. A second process
calls Match (by hash) in a loop during the load and reports its latency.

Also printed, measured inside the server: the longest hold of an index's
write lock (a Match's search waits for it) and the longest bulk write
transaction (on SQLite a Match's history write waits for it). CPU: the
client's, the server's, and the server's less its Matches' (the matcher's
calls, their cost measured with the matcher alone first: on a busy machine a
load runs longer and serves more of them); on PostgreSQL also the CPU of the
server's own backends (by application name: other work on the database does
not count). --profile samples the server's running threads.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from contextlib import contextmanager

from hashsvc.api.server import start_server
from hashsvc.client.cli_bulk import LoadProgress, load
from hashsvc.client.client import Client
from hashsvc.core import auth
from hashsvc.core.config import Config
from hashsvc.v1 import hashsvc_pb2 as pb
from hashsvc_testing.pg_schemas import PG_URL, fresh_schema

# The server's connections, told apart from others on the same database server.
APPLICATION = f"bench-load-{os.getpid()}"
LONGEST = {"index lock": 0.0, "write txn": 0.0, "match in server": 0.0, "history write": 0.0}


def _measure_holds() -> None:
    """Wraps the index write lock and the store's write transactions (bulk
    writes and Matches' history records alike) in timers; this process runs
    the server."""
    from hashdb.postgres import PostgresStore
    from hashdb.sqlite import SQLiteStore
    from hashsvc.index.binary import _ReadWriteLock

    writing = _ReadWriteLock.writing

    @contextmanager
    def timed_writing(self):
        with writing(self):
            started = time.perf_counter()
            try:
                yield
            finally:
                held = time.perf_counter() - started
                LONGEST["index lock"] = max(LONGEST["index lock"], held)

    _ReadWriteLock.writing = timed_writing
    for store_class in (SQLiteStore, PostgresStore):
        write = store_class._write

        @contextmanager
        def timed_write(self, _write=write):
            with _write(self) as cur:  # from BEGIN (the lock taken) to COMMIT
                started = time.perf_counter()
                yield cur
            held = time.perf_counter() - started
            LONGEST["write txn"] = max(LONGEST["write txn"], held)

        store_class._write = timed_write

    def timed(method, key):
        def timed_method(*args, **kwargs):
            started = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                LONGEST[key] = max(LONGEST[key], time.perf_counter() - started)

        return timed_method

    from hashdb.sqlbase import SQLStore
    from hashsvc.core.core import Core

    Core.match = timed(Core.match, "match in server")
    SQLStore.record_match = timed(SQLStore.record_match, "history write")


# Row shapes: what a line of the file says besides its hash. Feeds send a
# source id per row (`entry`) and the source's labels (`labels`), drawn from a
# few hundred distinct sets (GIFCT: entity x content type; TCAP: ideology x
# file type).
SHAPES = ("plain", "entry", "labels", "both")
_SOURCES = ("gifct", "tcap", "threatexchange")
_ENTITIES = tuple(f"entity-{k}" for k in range(25))
_CONTENT_TYPES = ("video", "photo", "pdf", "url")


def label_sets() -> list[str]:
    """300 distinct label sets as CSV cells (JSON objects, quoted)."""
    out = []
    for source in _SOURCES:
        for entity in _ENTITIES:
            for content_type in _CONTENT_TYPES:
                labels = {"source": source, "entity": entity, "content_type": content_type}
                text = json.dumps(labels)
                out.append('"' + text.replace('"', '""') + '"')
    return out


def write_rows(path: str, rows: int, shape: str = "plain") -> None:
    named = shape in ("entry", "both")
    labelled = shape in ("labels", "both")
    labels = label_sets()
    header = ["signal_type", "signal_value"] + ["entry"] * named + ["labels"] * labelled
    with open(path, "w") as f:
        f.write(",".join(header) + "\n")
        for row in range(rows):
            line = f"pdq,{os.urandom(32).hex()}"
            if named:
                line += f",{_SOURCES[row % 3]}:{100_000_000 + row}"
            if labelled:
                line += "," + labels[(row * 7919) % len(labels)]
            f.write(line + "\n")


def _postgres_cpu() -> dict[int, float]:
    """CPU seconds (user + system) of each PostgreSQL process, by pid."""
    ticks = os.sysconf("SC_CLK_TCK")
    out = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        if stat[stat.index("(") + 1 : stat.rindex(")")].startswith("postgres"):
            fields = stat[stat.rindex(")") + 2 :].split()
            out[int(pid)] = (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    return out


def _backends_cpu(before: dict[int, float], application: str) -> float:
    """CPU seconds the server's own PostgreSQL backends (by application
    name) used since `before`: the database's share of a load, without what
    other work on the same database server used meanwhile."""
    import psycopg

    with psycopg.connect(PG_URL, autocommit=True) as conn:
        pids = [
            pid
            for (pid,) in conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE application_name = %s", (application,)
            )
        ]
    now = _postgres_cpu()
    return sum(now.get(pid, 0.0) - before.get(pid, 0.0) for pid in pids)


def _running(native_id: int | None) -> bool:
    """Whether the thread is on a CPU (or waiting for one) now, by its state
    in /proc: a thread blocked in C (a lock, a socket, SQLite's busy wait)
    shows its last Python frame, which is not where CPU goes."""
    try:
        with open(f"/proc/self/task/{native_id}/stat") as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] == "R"


class Sampler:
    """Where the server's threads spend a load: every few milliseconds the
    Python stack of each thread that is running is sampled (py-spy is not
    installed; cProfile sees one thread). Counts a function's own samples
    (time in it and in the C it calls) and its inclusive ones (anywhere on
    the stack), grouped by the thread's name prefix."""

    def __init__(self, every: float = 0.005) -> None:
        self.every = every
        self.own: Counter = Counter()
        self.inclusive: Counter = Counter()
        self.samples: Counter = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        me = threading.get_ident()
        while not self._stop.wait(self.every):
            threads = {t.ident: t for t in threading.enumerate()}
            for ident, frame in sys._current_frames().items():
                thread = threads.get(ident)
                if ident == me or thread is None or not _running(thread.native_id):
                    continue
                group = thread.name.split("_")[0].split(" (")[0].rstrip("0123456789-")
                self.samples[group] += 1
                seen = set()
                self.own[group, _where(frame)] += 1
                while frame is not None:
                    key = (group, _where(frame))
                    if key not in seen:
                        seen.add(key)
                        self.inclusive[key] += 1
                    frame = frame.f_back

    def report(self, top: int = 25) -> str:
        lines = []
        for group, total in self.samples.most_common():
            lines.append(f"  thread {group}: {total} busy samples")
            ranked = sorted(
                ((n, key[1]) for key, n in self.inclusive.items() if key[0] == group),
                reverse=True,
            )[:top]
            for n, where in ranked:
                own = self.own[group, where]
                lines.append(f"    {n / total:6.1%} incl {own / total:6.1%} own  {where}")
        return "\n".join(lines)


def _where(frame) -> str:
    code = frame.f_code
    path = code.co_filename.rsplit("/", 2)
    return f"{'/'.join(path[-2:])}:{code.co_name}"


def _memory() -> dict[str, int]:
    """This process's (the server's) VmRSS and VmHWM (its peak), in MB."""
    with open("/proc/self/status") as f:
        fields = dict(line.split(":", 1) for line in f)
    return {key: int(fields[key].split()[0]) // 1024 for key in ("VmRSS", "VmHWM")}


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM starts again from VmRSS


def run_load(address: str, token: str, path: str, out, strict: bool = False) -> None:
    client = Client(server=address, token=token)
    started, cpu = time.perf_counter(), time.process_time()
    summary = load(client, "bench", [path], "csv", strict, LoadProgress(None, False))
    out.put((time.perf_counter() - started, summary, time.process_time() - cpu))


def run_matcher(address: str, token: str, stop, out, calls) -> None:
    """Match in a loop until `stop`; latencies to `out`, and a count in the
    shared `calls`."""
    client = Client(server=address, token=token)
    query = pb.MatchRequest(signal=pb.SignalValue(signal_type="pdq", value=os.urandom(32).hex()))
    latencies = []
    while not stop.is_set():
        started = time.perf_counter()
        client.matcher.Match(query, metadata=client.metadata)
        latencies.append(time.perf_counter() - started)
        with calls.get_lock():
            calls.value += 1
        time.sleep(0.005)
    out.put(latencies)


def _result_of(loader, results, seconds: float = 1800.0):
    """What the loader process put in `results`, then joined: a loader
    that died (an error in the load) or took longer than `seconds` fails
    the bench instead of leaving it waiting for ever (a CI run once hung
    here for hours after the load process had failed)."""
    import queue

    deadline = time.monotonic() + seconds
    while True:
        try:
            result = results.get(timeout=1.0)
            break
        except queue.Empty:
            if not loader.is_alive():
                try:  # it may have put its result just before it ended
                    result = results.get(timeout=5.0)
                    break
                except queue.Empty:
                    pass
            if not loader.is_alive() or time.monotonic() > deadline:
                loader.kill()
                loader.join(10)
                raise RuntimeError(
                    f"the load process ended without a result (exit code {loader.exitcode})"
                ) from None
    loader.join()
    return result


def start_matcher(ctx, address: str, token: str, seconds: float = 120.0):
    """The Match loop in a process of its own (run_matcher), returned once
    it has answers: (process, stop event, latencies queue, calls counter).
    A fixed sleep was not enough on a busy machine: a spawned Python took
    longer to start than a short load took, and the bench found no Match."""
    stop, latencies, calls = ctx.Event(), ctx.Queue(), ctx.Value("q", 0)
    matcher = ctx.Process(target=run_matcher, args=(address, token, stop, latencies, calls))
    matcher.start()
    deadline = time.monotonic() + seconds
    while calls.value < 3:
        if not matcher.is_alive() or time.monotonic() > deadline:
            stop.set()
            matcher.join(10)
            if matcher.is_alive():  # stuck in a call: it must not outlive the bench
                matcher.kill()
                matcher.join(10)
            raise RuntimeError(f"the Match loop did not start within {seconds:g} s")
        time.sleep(0.05)
    return matcher, stop, latencies, calls


def bench(
    name: str,
    db_url: str,
    path: str,
    rows: int,
    rerun: bool = False,
    strict: bool = False,
    profile: bool = False,
) -> float:
    """One load (and rerun) into a fresh store; prints its figures, returns rows/s."""
    LONGEST.update({key: 0.0 for key in LONGEST})
    running = start_server(
        Config(listen="127.0.0.1:0", db_url=db_url, workers=1), hash_in_process=True
    )
    try:
        _, token = auth.create_token(running.core.store, "admin", "bench")
        running.core.curation.create_set("bench")
        address = f"127.0.0.1:{running.port}"
        ctx = mp.get_context("spawn")
        results = ctx.Queue()
        matcher, stop, latencies, calls = start_matcher(ctx, address, token)
        # The server's CPU a Match (and its history record), the matcher
        # alone: the load's own CPU is the server's less its Matches'
        # (a load twice as long serves twice as many).
        matches, match_cpu = calls.value, time.process_time()
        time.sleep(1.0)
        match_cpu = (time.process_time() - match_cpu) / max(1, calls.value - matches)
        _reset_peak()
        before = _memory()
        loader = ctx.Process(target=run_load, args=(address, token, path, results, strict))
        sampler = Sampler() if profile else contextlib.nullcontext()
        database_cpu = _postgres_cpu()
        server_cpu, matches = time.process_time(), calls.value
        with sampler:
            loader.start()
            seconds, summary, client_cpu = _result_of(loader, results)
        server_cpu = time.process_time() - server_cpu
        load_cpu = server_cpu - (calls.value - matches) * match_cpu
        if "postgresql" in db_url:
            database_cpu = _backends_cpu(database_cpu, APPLICATION)
        after = _memory()
        print(
            f"{name:17s} server memory{' (strict load)' if strict else ''}:"
            f" {before['VmRSS']} MB before, peak {after['VmHWM']} MB"
            f" (+{after['VmHWM'] - before['VmRSS']}), {after['VmRSS']} MB after",
            flush=True,
        )
        stop.set()
        rerun_seconds = None
        if rerun:  # the same file again: every row is there already
            loader = ctx.Process(target=run_load, args=(address, token, path, results))
            loader.start()
            rerun_seconds, again, _ = _result_of(loader, results)
            assert again["added"] == 0 and again["unchanged"] == rows, again
        lat = sorted(latencies.get(timeout=120))  # a dead matcher fails, not hangs
        matcher.join()
    finally:
        running.stop(grace=1)
    assert summary["added"] == rows, summary
    p = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] * 1000  # noqa: E731
    print(
        f"{name:17s} {rows:>9,d} rows in {seconds:6.1f} s = {rows / seconds:>9,.0f} rows/s;"
        f"  Match during load ({len(lat)} calls): p50 {statistics.median(lat) * 1000:.1f} ms,"
        f" p99 {p(0.99):.1f} ms, max {lat[-1] * 1000:.1f} ms;"
        f" longest index lock {LONGEST['index lock'] * 1000:.1f} ms,"
        f" write txn {LONGEST['write txn'] * 1000:.1f} ms;"
        f" slowest Match in the server {LONGEST['match in server'] * 1000:.1f} ms"
        f" (slowest history write {LONGEST['history write'] * 1000:.1f} ms);"
        f" CPU: client {client_cpu:.2f} s, server {server_cpu:.2f} s, less its Matches'"
        f" ({match_cpu * 1000:.2f} ms each) {load_cpu:.2f} s"
        f" ({rows / load_cpu:,.0f} rows a server CPU second)"
        + (f", its PostgreSQL backends {database_cpu:.2f} s" if "postgresql" in db_url else ""),
        flush=True,
    )
    if profile:
        print(f"{name:17s} server threads' samples:\n{sampler.report()}", flush=True)
    if rerun_seconds:
        print(
            f"{name:17s} rerun of the same rows: {rows / rerun_seconds:>9,.0f} rows/s"
            " (every row already there)",
            flush=True,
        )
    return rows / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--short",
        action="store_true",
        help="40k rows (two batches), one load each; plain rows on every store, each other"
        " shape on one store in turn (CI)",
    )
    parser.add_argument("--rows", type=int)
    parser.add_argument("--stores", default="sqlite,postgresql")
    parser.add_argument(
        "--shapes", default=",".join(SHAPES), help=f"row shapes, of {', '.join(SHAPES)}"
    )
    parser.add_argument("--rerun", action="store_true", help="then load the same rows again")
    parser.add_argument("--strict", action="store_true", help="strict loads")
    parser.add_argument(
        "--profile", action="store_true", help="sample the server's threads: where its CPU goes"
    )
    parser.add_argument(
        "--repeat",
        type=int,
        help="loads a shape and store, and their median (runs on a VM vary by +-20%%);"
        " 3, or 1 with --short",
    )
    args = parser.parse_args()
    rows = args.rows or (40_000 if args.short else 1_000_000)
    repeat = args.repeat or (1 if args.short else 3)
    shapes = args.shapes.split(",")
    if not set(shapes) <= set(SHAPES):
        parser.error(f"--shapes: of {', '.join(SHAPES)}")
    _measure_holds()
    medians: dict[tuple[str, str], float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for shape in shapes:
            path = os.path.join(tmp, f"{shape}.csv")
            write_rows(path, rows, shape)
            stores = args.stores.split(",")
            if args.short and shape != "plain":
                # every shape and every store printed once, the ratio to plain rows too
                stores = [stores[SHAPES.index(shape) % len(stores)]]
            for store in stores:
                rates = []
                for run in range(repeat):
                    with contextlib.ExitStack() as schema:
                        if store == "sqlite":
                            name, url = "SQLite", f"sqlite:///{tmp}/bench-{shape}-{run}.db"
                        else:
                            name = "PostgreSQL"
                            url = schema.enter_context(fresh_schema("bench_load", APPLICATION))
                        label = f"{name} {shape}"
                        rates.append(
                            bench(label, url, path, rows, args.rerun, args.strict, args.profile)
                        )
                medians[store, shape] = statistics.median(rates)
                print(
                    f"{store} {shape}: median of {repeat} loads {medians[store, shape]:,.0f}"
                    f" rows/s (min {min(rates):,.0f}, max {max(rates):,.0f})",
                    flush=True,
                )
            os.remove(path)
    print(f"rows/s, median of {repeat} loads of {rows:,d} rows (ratio to plain rows):")
    for (store, shape), rate in medians.items():
        plain = medians.get((store, "plain"))
        ratio = f" ({rate / plain:.2f})" if plain else ""
        print(f"  {store:10s} {shape:7s} {rate:>9,.0f}{ratio}", flush=True)


if __name__ == "__main__":
    main()
