"""Partner feeds end to end: a labelled TCAP feed served by a local server
(hashsvc_testing/exchange_servers.py, its own process) fetched by the
server's exchange fetcher through python-threatexchange's client and loaded
through the bulk path; Match latency while it loads; then an incremental
fetch of 1,000 changes and how soon they match.

    .venv/bin/python bench/exchange.py            # 1M hashes, SQLite and PostgreSQL
    .venv/bin/python bench/exchange.py --short    # 20k hashes (CI)
    .venv/bin/python bench/exchange.py --rows 200000 --stores sqlite
    .venv/bin/python bench/exchange.py --rows 200000 --profile  # where the server's CPU goes
    .venv/bin/python bench/exchange.py --rows 200000 --breakdown   # what slow Matches wait on
    .venv/bin/python bench/exchange.py --rows 200000 --fetch-in-thread   # A/B: no fetching child

Targets (issue 22): >= 100k hashes/s fetched and loaded; 1,000 changes
matchable within 2 s of the fetch; Match max pause < 100 ms during a fetch.
Every row carries labels (TCAP ideology and file type, the source id, the
feed's name), so this is the labelled bulk path's speed.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing as mp
import os
import resource
import statistics
import time

from load import Sampler, start_matcher  # bench/load.py: Match in a loop, thread sampler
from pauses import Breakdown

from hashsvc.api.server import start_server
from hashsvc.client.client import Client
from hashsvc.core import auth
from hashsvc.core.config import Config, ExchangeSettings
from hashsvc.v1 import hashsvc_pb2 as pb
from hashsvc_testing.pg_schemas import fresh_schema

PAGE_ROWS = 10_000
CHANGES = 1_000


def serve_tcap(rows: int, commands, answers) -> None:
    """The partner's server, in its own process (JSON pages are made there,
    not under the hashsvc server's GIL)."""
    from hashsvc_testing.exchange_servers import TcapServer

    ideologies = ("islamist", "far-right")
    file_types = ("jpg", "png", "mp4")
    with TcapServer(page_size=PAGE_ROWS) as tcap:
        for n in range(rows):
            tcap.add(
                os.urandom(32).hex(),
                ideology=ideologies[n % 2],
                file_type=file_types[n % 3],
            )
        answers.put(tcap.url)
        while (command := commands.get()) is not None:
            new = [os.urandom(32).hex() for _ in range(command)]
            for value in new:
                tcap.add(value, ideology="islamist", file_type="jpg")
            answers.put(new)


def bench(
    name: str,
    db_url: str,
    rows: int,
    breakdown: bool = False,
    profile: bool = False,
    in_thread: bool = False,
    nice: int = 10,
) -> dict:
    ctx = mp.get_context("spawn")
    commands, answers = ctx.Queue(), ctx.Queue()
    partner = ctx.Process(target=serve_tcap, args=(rows, commands, answers))
    partner.start()
    settings = ExchangeSettings(
        background=False,
        http_timeout_seconds=300,
        min_every_seconds=1,
        fetch_process=not in_thread,
        fetch_nice=nice,
    )
    running = start_server(
        Config(listen="127.0.0.1:0", db_url=db_url, workers=1, exchange=settings),
        hash_in_process=True,
    )
    stop = ctx.Event()
    phases = None
    try:
        url = answers.get(timeout=600)
        _, token = auth.create_token(running.core.store, "admin", "bench")
        running.core.curation.create_set("bench")
        feeds = running.feeds
        feeds.add("bench", "tcap", "tcap", "bench", {}, {"base_url": url}, 3600, "user:secret-pass")
        address = f"127.0.0.1:{running.port}"
        matcher, stop, latencies, calls = start_matcher(ctx, address, token)
        phases = Breakdown(running.core) if breakdown else None
        sampler = Sampler() if profile else contextlib.nullcontext()
        fetching, cpu, before = time.perf_counter(), time.process_time(), calls.value
        threads = phases.thread_cpu() if phases else {}
        # the fetching child's (exchange.fetch_process), reaped when the fetch
        # ends; the partner's and the matcher's processes still run then
        children = _children_cpu(feeds)
        with sampler:
            first = feeds.fetch("tcap", "bench")
        children = _children_cpu(feeds) - children
        seconds = time.perf_counter() - fetching
        if phases is not None:  # threads that ended during the fetch are not counted
            threads = {
                name: cpu - threads.get(name, 0.0) for name, cpu in phases.thread_cpu().items()
            }
        cpu = time.process_time() - cpu  # the server's (the partner's is its own process)
        during = calls.value + 1  # with the call in flight as the fetch ended
        stop.set()
        # the calls during the fetch only: the first ones open the channel
        # (one took 585 ms on a loaded machine, counted as a pause before)
        lat = sorted(latencies.get(timeout=120)[before:during])  # a dead matcher fails, not hangs
        assert lat, "no Match call during the fetch"
        matcher.join()
        assert first.added == rows, first

        commands.put(CHANGES)
        new = answers.get(timeout=120)
        started = time.perf_counter()
        second = feeds.fetch("tcap", "bench")
        # every change is in the index Match searches once the fetch returned
        found = running.core.live.indexes["pdq"].search([bytes.fromhex(v) for v in new], 0)
        matchable = time.perf_counter() - started
        assert all(found), "a fetched change does not match"
        client = Client(server=address, token=token)
        sample = client.matcher.Match(
            pb.MatchRequest(signal=pb.SignalValue(signal_type="pdq", value=new[-1])),
            metadata=client.metadata,
        )
        assert sample.decision == pb.BLOCK
        assert second.added == CHANGES, second
    finally:
        stop.set()
        commands.put(None)
        partner.join(timeout=60)
        running.stop(grace=1)
    p99 = lat[min(len(lat) - 1, int(0.99 * len(lat)))] * 1000
    print(
        f"{name:10s} {rows:>9,d} labelled hashes fetched and loaded in {seconds:6.1f} s"
        f" = {rows / seconds:>9,.0f} hashes/s (target >= 100,000);"
        f" Match during the fetch ({len(lat)} calls): p50 {statistics.median(lat) * 1000:.1f} ms,"
        f" p99 {p99:.1f} ms, max {lat[-1] * 1000:.1f} ms (target < 100);"
        f" {CHANGES:,d} changes fetched and all matching in {matchable:.2f} s (target <= 2);"
        f" server CPU during the fetch {cpu:.2f} s ({rows / cpu:,.0f} hashes a CPU second),"
        f" its fetching child's {children:.2f} s",
        flush=True,
    )
    if phases is not None:
        phases.close()
        phases.report(fetching, fetching + seconds)
        busy = sorted(threads.items(), key=lambda t: -t[1])
        print(
            "  server CPU during the fetch by thread (s):",
            ", ".join(f"{n} {s:.2f}" for n, s in busy if s >= 0.05),
        )
    if profile:
        print(f"{name:10s} server threads' samples during the fetch:\n{sampler.report()}")
    return {"rate": rows / seconds, "max_ms": lat[-1] * 1000, "changes_s": matchable}


def _children_cpu(feeds) -> float:
    """CPU of the fetching children: those ended (reaped), and the one kept
    idle after a fetch (hashsvc/exchange/fetch_process.py FetchChildren)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    seconds = usage.ru_utime + usage.ru_stime
    for proc in list(feeds.children._idle):
        try:
            with open(f"/proc/{proc.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        seconds += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--short", action="store_true", help="20k hashes (CI)")
    parser.add_argument("--rows", type=int)
    parser.add_argument("--stores", default="sqlite,postgresql")
    parser.add_argument(
        "--fetch-in-thread",
        action="store_true",
        help="pages fetched and parsed by a thread of the server (exchange.fetch_process off)",
    )
    parser.add_argument("--fetch-nice", type=int, default=10, help="exchange.fetch_nice")
    parser.add_argument(
        "--breakdown",
        action="store_true",
        help="what the slowest Matches during the fetch waited on (bench/pauses.py)",
    )
    parser.add_argument(
        "--profile", action="store_true", help="sample the server's threads during the fetch"
    )
    args = parser.parse_args()
    rows = args.rows or (20_000 if args.short else 1_000_000)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        for store in args.stores.split(","):
            if store == "sqlite":
                bench(
                    "sqlite",
                    f"sqlite:///{tmp}/bench.db",
                    rows,
                    breakdown=args.breakdown,
                    profile=args.profile,
                    in_thread=args.fetch_in_thread,
                    nice=args.fetch_nice,
                )
            else:
                with fresh_schema("bench_exchange") as url:
                    bench(
                        "postgresql",
                        url,
                        rows,
                        breakdown=args.breakdown,
                        profile=args.profile,
                        in_thread=args.fetch_in_thread,
                        nice=args.fetch_nice,
                    )


if __name__ == "__main__":
    main()
