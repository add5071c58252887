"""Retro-hunt on Dask (retro_engine = "dask") against the in-process
engine: the same synthetic history (bench/retro.py's: random PDQ views, 1
upload in 1,000 a near copy of a new entry), the same new hashes, one run
each; the hits must be the same.

    .venv/bin/python bench/retro_dask.py --short   # 20k uploads, 1,000 new hashes (CI)
    .venv/bin/python bench/retro_dask.py           # 200k uploads, 10,000 new hashes
    .venv/bin/python bench/retro_dask.py --workers 2 --partitions 32

Dask runs on a local cluster of --workers processes that the server starts
(retro_scheduler_address empty; the SQLite file is shared on this machine),
started and warmed (hashsvc imported) before the clock starts. Printed per
engine: wall time, uploads/s, the server's CPU and the workers' CPU
(reaped child processes), hits.

Measured (200k uploads, 10k hashes, 2 cores under a load of ~26): in
process 120.9 s wall, 9.3 s CPU; Dask 2 workers, 32 partitions: 252.4 s
wall, 13.9 s server CPU, 32.0 s workers' CPU (whole life); 200/200 hits on
both, the same ones.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import tempfile
import time
from datetime import UTC, datetime

import numpy as np
from retro import write_history  # bench/retro.py: the synthetic history

from hashdb.bulk_sql import PlainSignals
from hashdb.retro_sql import DONE
from hashdb.times import to_micros
from hashsvc.core.config import Config
from hashsvc.core.core import Core


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _warm(core: Core) -> None:
    """Starts the local cluster and imports the task's module on each worker."""
    client = core.retro.engine._connect()
    try:
        client.run(__import__, "hashsvc.core.retro_dask")
    finally:
        client.close()


def hunt(db: str, engine: str, uploads: int, workers: int, partitions: int) -> dict:
    config = Config(
        db_url=f"sqlite:///{db}",
        workers=1,
        retro_poll_seconds=3600,  # the bench runs the hunt itself
        retro_engine=engine,
        retro_dask_workers=workers,
        # write_history puts one upload a second
        retro_partition_seconds=max(1.0, uploads / partitions),
    )
    core = Core.open(config, hash_in_process=True)
    core.start()
    try:
        if engine == "dask":
            _warm(core)
        (hash_set,) = core.store.list_sets()
        entry_ids = core.store.entries_changed_since(hash_set.id, 0)
        run = core.store.create_retro_run(
            "bench", "bench", hash_set.id, entry_ids, to_micros(datetime.now(UTC)) - 10**15
        )
        claimed = core.store.claim_retro_run(3600)
        children = _children_cpu()
        wall, cpu = time.perf_counter(), time.process_time()
        core.retro.scan(claimed)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        finished = core.store.get_retro_run(run.id)
        if finished.state != DONE:
            raise SystemExit(f"{engine}: the hunt ended {finished.state}: {finished.error}")
        hits = {(e, r) for e, r, _, _ in core.store.retro_matches_of(run.id)}
        parts = len(core.store.retro_partitions(run.id))
    finally:
        core.close()  # the local cluster too: its workers are reaped
    return {
        "wall": wall,
        "cpu": cpu,
        "workers_cpu": _children_cpu() - children,
        "hits": hits,
        "partitions": parts,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--short", action="store_true")
    parser.add_argument("--uploads", type=int, default=0)
    parser.add_argument("--entries", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--partitions", type=int, default=32)
    args = parser.parse_args()
    uploads = args.uploads or (20_000 if args.short else 200_000)
    entries = args.entries or (1_000 if args.short else 10_000)

    tmp = tempfile.mkdtemp(prefix="bench-retro-dask-")
    try:
        first = os.path.join(tmp, "inprocess.db")
        core = Core.open(Config(db_url=f"sqlite:///{first}", workers=1), hash_in_process=True)
        try:
            hash_set = core.curation.create_set("bench")
            rng = np.random.default_rng(7)
            new_hashes = np.unique(rng.integers(0, 256, (entries, 32), dtype=np.uint8), axis=0)
            core.store.bulk_add_plain(hash_set.id, PlainSignals("pdq", "hash", new_hashes), "bench")
        finally:
            core.close()
        copies = write_history(first, uploads, new_hashes)
        second = os.path.join(tmp, "dask.db")
        shutil.copy(first, second)
        print(f"{uploads} history uploads, {len(new_hashes)} new PDQ hashes, {copies} copies")
        results = {}
        for engine, db in (("inprocess", first), ("dask", second)):
            r = hunt(db, engine, uploads, args.workers, args.partitions)
            results[engine] = r
            where = (
                f"{args.workers} worker processes, {r['partitions']} partitions"
                if engine == "dask"
                else "the server's thread"
            )
            print(
                f"{engine} ({where}): {r['wall']:.1f} s = {uploads / r['wall']:,.0f} uploads/s;"
                f" CPU server {r['cpu']:.1f} s, workers {r['workers_cpu']:.1f} s;"
                f" hits {len(r['hits'])}"
            )
        if results["dask"]["hits"] != results["inprocess"]["hits"]:
            raise SystemExit("the engines found different hits")
        if len(results["dask"]["hits"]) != copies:
            raise SystemExit(f"expected {copies} hits, found {len(results['dask']['hits'])}")
        print(f"same hits on both engines ({copies} of {copies} copies)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
