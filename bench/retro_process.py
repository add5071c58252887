"""Match latency during a retro-hunt, the two engines that scan on this
machine alternated on one history: retro_engine = "inprocess" (the
server's hunting thread) and "process" (the server's scanning child,
hashsvc/core/retro_process.py). Each round measures Match idle, then
during a hunt over the whole history, for each engine in turn (the order
swapped every round); printed: Match p50/p99 idle and during, the hunt's
wall time, the server's CPU and the child's.

    .venv/bin/python bench/retro_process.py [--uploads 40000] [--rounds 4] [--match-seconds 5]

Both hunts are RetroHunt.scan of one Core whose engine is "process"; the
in-process rounds scan with its child set aside (RetroHunt.child None), so
both hold and record hits the same way, on the same store and history.

"spare" is the share of the phase's 0.1 s ticks at which the machine had a
core to spare (hashsvc/media/machine.py spare_core, the rule that gives an
upload's local features a second thread): what makes Match idle faster than
during a hunt when the hunt's CPU counts as taken.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

from retro import known_set_and_history, match_during, match_latencies

from hashdb.times import to_micros
from hashsvc.core.config import Config
from hashsvc.core.core import Core
from hashsvc.index.binary import search_on_this_thread
from hashsvc.media.machine import spare_core


def with_spare_share(work: Callable[[], object]) -> tuple[object, float]:
    """work()'s result, and the share of 0.1 s ticks during it at which
    spare_core() was True (asked on a thread of its own, as the server's)."""
    done, answers = threading.Event(), []

    def ask() -> None:
        while not done.wait(0.1):
            answers.append(spare_core())

    asking = threading.Thread(target=ask)
    asking.start()
    try:
        return work(), sum(answers) / max(1, len(answers))
    finally:
        done.set()
        asking.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--uploads", type=int, default=40_000)
    parser.add_argument("--entries", type=int, default=10_000)
    parser.add_argument("--match-seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--nice", type=int, default=10, help="retro_nice")
    parser.add_argument(
        "--pause", type=float, default=0.0, help="retro_pause_seconds (after each step)"
    )
    args = parser.parse_args()
    search_on_this_thread()
    tmp = tempfile.mkdtemp(prefix="bench-retro-process-")
    db = os.path.join(tmp, "bench.db")
    config = Config(
        db_url=f"sqlite:///{db}",
        workers=1,
        retro_poll_seconds=3600,
        retro_engine="process",
        retro_nice=args.nice,
        retro_pause_seconds=args.pause,
    )
    core = Core.open(config)
    core.start()
    child = core.retro.child
    assert child is not None
    try:
        hash_set, copies, entry_ids, images = known_set_and_history(
            core, db, args.uploads, args.entries
        )
        child.start()  # its imports, as at a server's first run: not timed
        match_latencies(core, images, 1.0)  # warm

        def hunt(mode: str) -> tuple[float, float, float, int]:
            run = core.store.create_retro_run(
                "bench", "bench", hash_set.id, entry_ids, to_micros(datetime.now(UTC)) - 10**15
            )
            claimed = core.store.claim_retro_run(3600)
            core.retro.child = child if mode == "process" else None
            # the hunting thread's own CPU (the process's would count the
            # Matches timed meanwhile too), and the child's
            wall, cpu, child_cpu = time.perf_counter(), time.thread_time(), child.cpu_seconds()
            try:
                core.retro.scan(claimed)
            finally:
                core.retro.child = child
            wall, cpu = time.perf_counter() - wall, time.thread_time() - cpu
            child_cpu = child.cpu_seconds() - child_cpu
            return wall, cpu, child_cpu, len(core.store.retro_matches_of(run.id))

        p99 = lambda xs: sorted(xs)[int(0.99 * (len(xs) - 1))]  # noqa: E731
        ratios: dict[str, list[float]] = {"inprocess": [], "process": []}
        for number in range(args.rounds):
            order = ("inprocess", "process") if number % 2 == 0 else ("process", "inprocess")
            for mode in order:
                idle, idle_spare = with_spare_share(
                    lambda: match_latencies(core, images, args.match_seconds)
                )
                ((wall, cpu, child_cpu, hits), during), during_spare = with_spare_share(
                    lambda mode=mode: match_during(
                        core, images, lambda: hunt(mode), config.retro_nice
                    )
                )
                ratio = statistics.median(during) / statistics.median(idle)
                ratios[mode].append(ratio)
                print(
                    f"round {number + 1} {mode}: hunt {wall:.1f} s wall, hunting thread CPU"
                    f" {cpu:.2f} s, child CPU {child_cpu:.2f} s, {hits} hits (planted {copies});"
                    " Match idle"
                    f" p50 {statistics.median(idle):.1f} ms p99 {p99(idle):.1f} ms ({len(idle)});"
                    f" during p50 {statistics.median(during):.1f} ms p99 {p99(during):.1f} ms"
                    f" ({len(during)}): p50 {100 * (ratio - 1):+.0f}%; spare"
                    f" {100 * idle_spare:.0f}% idle, {100 * during_spare:.0f}% during;"
                    f" {args.uploads / max(1e-9, child_cpu if mode == 'process' else cpu):,.0f}"
                    " uploads a hunting CPU s"
                    f" (load {os.getloadavg()[0]:.1f})",
                    flush=True,
                )
        for mode, found in ratios.items():
            print(
                f"{mode}: Match p50 during/idle, median of {len(found)} rounds:"
                f" {100 * (statistics.median(found) - 1):+.1f}%"
                f" ({', '.join(f'{100 * (r - 1):+.0f}%' for r in found)})"
            )
        usage = resource.getrusage(resource.RUSAGE_SELF)
        print(f"bench process CPU {usage.ru_utime + usage.ru_stime:.1f} s")
    finally:
        core.close()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
