"""A prototype, for measuring only: a retro-hunt scanned in a child process
(given the store URL and the run id, as a Dask worker is), its batches'
hits sent back over a pipe and held and checkpointed by the server as the
in-process hunt does; against the in-process hunt (the server's thread).
What is compared is Match latency idle and during each (bench/retro.py's
history and Match loop), interleaved, and the server process's CPU.

    .venv/bin/python bench/retro_process.py [--uploads 40000] [--match-seconds 5]

Why: Match waits for the GIL the hunting thread holds while it reads and
keeps its batches (bench/retro_contention.py). The Dask engine scans in
worker processes too, but its coordinator (client, comms threads) costs the
server as much CPU as the whole in-process scan (bench/retro.py --engine
dask), so Match gained nothing there. This child sends a few hits per batch.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import statistics
import tempfile
import time
from datetime import UTC, datetime

import numpy as np
from retro import match_during, match_latencies, write_history

from hashdb.bulk_sql import PlainSignals
from hashdb.times import to_micros
from hashsvc.core.config import Config
from hashsvc.core.core import Core
from hashsvc.core.retro_scan import history_signals
from hashsvc_testing.image_media import encode, photo


def child(conn, store_url: str, run_id: int, pdq, batch: int, nice: int) -> None:
    """The scan: every batch's (last id, records read, hits) sent, then None."""
    os.nice(nice)
    from hashsvc.core.retro_dask import PartitionScan, _worker_scanner, scan_range

    store, scanner, run = _worker_scanner(
        PartitionScan(store_url, run_id, pdq, None, None, batch, 10.0)
    )
    for step in scan_range(store, scanner, run.since, run.checkpoint, run.last_history_id, batch):
        conn.send(step)
    conn.send(None)
    conn.close()


def hunt_in_child(core: Core, config: Config, run) -> None:
    """The server's side: hits held (RetroHunt._hold), progress saved."""
    ctx = multiprocessing.get_context("spawn")
    ours, theirs = ctx.Pipe(duplex=False)
    proc = ctx.Process(
        target=child,
        args=(theirs, config.db_url, run.id, config.pdq, config.retro_batch_records,
              config.retro_nice),
    )  # fmt: skip
    proc.start()
    theirs.close()
    try:
        while (step := ours.recv()) is not None:
            last_id, read, found = step
            for upload, hits in found:
                for hit in hits:
                    core.retro._hold(run, upload, hit, history_signals(upload.query_signals))
            core.store.retro_progress(run.id, last_id, read, 3600, owner=run.lease_owner)
        core.store.finish_retro_run(run.id, "done", owner=run.lease_owner)
    finally:
        proc.join(60)
        if proc.is_alive():
            proc.kill()
            proc.join(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--uploads", type=int, default=40_000)
    parser.add_argument("--entries", type=int, default=10_000)
    parser.add_argument("--match-seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    tmp = tempfile.mkdtemp(prefix="bench-retro-process-")
    db = os.path.join(tmp, "bench.db")
    config = Config(db_url=f"sqlite:///{db}", workers=1, retro_poll_seconds=3600)
    core = Core.open(config)
    core.start()
    try:
        hash_set = core.curation.create_set("bench")
        rng = np.random.default_rng(7)
        new_hashes = np.unique(rng.integers(0, 256, (args.entries, 32), dtype=np.uint8), axis=0)
        core.store.bulk_add_plain(hash_set.id, PlainSignals("pdq", "hash", new_hashes), "bench")
        core.live.catch_up()
        copies = write_history(db, args.uploads, new_hashes)
        entry_ids = core.store.entries_changed_since(hash_set.id, 0)
        images = [encode(photo(i)) for i in range(8)]
        match_latencies(core, images, 1.0)  # warm

        def hunt(mode: str) -> tuple[float, float, int]:
            run = core.store.create_retro_run(
                "bench", "bench", hash_set.id, entry_ids, to_micros(datetime.now(UTC)) - 10**15
            )
            claimed = core.store.claim_retro_run(3600)
            wall, cpu = time.perf_counter(), time.process_time()
            if mode == "thread":
                core.retro.scan(claimed)
            else:
                hunt_in_child(core, config, claimed)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            return wall, cpu, len(core.store.retro_matches_of(run.id))

        p99 = lambda xs: sorted(xs)[int(0.99 * (len(xs) - 1))]  # noqa: E731
        for _ in range(args.rounds):
            for mode in ("thread", "process"):
                idle = match_latencies(core, images, args.match_seconds)
                (wall, cpu, hits), during = match_during(
                    core, images, lambda mode=mode: hunt(mode), config.retro_nice
                )
                print(
                    f"{mode}: hunt {wall:.1f} s wall, server CPU {cpu:.2f} s, {hits} hit rows"
                    f" (planted {copies}); Match idle p50 {statistics.median(idle):.1f} ms"
                    f" p99 {p99(idle):.1f} ms ({len(idle)}); during p50"
                    f" {statistics.median(during):.1f} ms p99 {p99(during):.1f} ms ({len(during)}):"
                    f" p50 {100 * (statistics.median(during) / statistics.median(idle) - 1):+.0f}%"
                    f" (load {os.getloadavg()[0]:.1f})",
                    flush=True,
                )
    finally:
        core.close()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
