"""What a retro-hunt's scanning child costs Match, and what pacing it
(retro_pause_seconds) buys: Match latency split by step, idle, beside
stand-ins for the child's kinds of work, and during hunts with each pause,
interleaved by round (the order rotated every round).

    .venv/bin/python bench/retro_pace.py [--uploads 100000] [--rounds 3]
        [--match-seconds 6] [--pauses 0,0.05] [--beside spinner,streamer]

Conditions, each while Match runs in a loop on this thread:
- idle;
- spinner: another process at retro_nice running a Python loop (a core's
  time, almost no memory traffic);
- streamer: another process at retro_nice copying 128 MB arrays (memory
  bandwidth and the shared L3, as a scan reading its history pages does);
- spinner-idle, streamer-group, ...: the same in SCHED_IDLE, or in a
  session (an autogroup) of its own at retro_nice;
- pause=P: a real hunt (RetroHunt.scan, retro_engine = "process") with
  retro_pause_seconds P over the whole history.

Printed per condition: Match p50 and its steps' p50s (hash: the hashing
worker's round trip; lookup: the matcher; record: the hash-chained history
write; rest), the CPU each thread of this process used (by thread name)
and each child process (the hashing worker, the scanning child), and, for
hunts, the scan's rate: uploads/s of wall time (the 10M extrapolation is
10M / that rate; target < 120 s), and per second of the child's CPU.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from dataclasses import replace
from datetime import UTC, datetime

from retro import TARGET_UPLOADS, known_set_and_history, match_during

from hashdb.times import to_micros
from hashsvc.core.config import Config
from hashsvc.core.core import Core, MatchQuery
from hashsvc.index.binary import search_on_this_thread

# how a stand-in lowers itself: "nice" (retro_nice, in the server's
# autogroup), "idle" (SCHED_IDLE), "group" (a session, so an autogroup, of
# its own at retro_nice: Linux's autogroups share the CPU between sessions
# first, then by nice within each)
LOWER = (
    "import os,sys\n"
    "nice, how = int(sys.argv[1]), sys.argv[2]\n"
    "if how == 'idle': os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))\n"
    "if how == 'group':\n"
    "    os.setsid()\n"
    "    open('/proc/self/autogroup', 'w').write(str(nice))\n"
    "os.nice(nice)\n"
)
SPINNER = LOWER + "x = 0\nwhile True: x += 1"
STREAMER = (
    LOWER + "import numpy as np\n"
    "a = np.ones(1 << 27, np.uint8); b = np.empty_like(a)\n"
    "while True: np.copyto(b, a); np.copyto(a, b)"
)
STEPS = ("hash", "lookup", "record")


class StepTimes:
    """Wall time of Match's steps on the calling (Match) thread."""

    def __init__(self, core: Core) -> None:
        self.times: dict[str, list[float]] = defaultdict(list)
        self.thread = threading.get_ident()
        core._query_signals = self._timed("hash", core._query_signals)
        core.matcher.match = self._timed("lookup", core.matcher.match)
        core._record = self._timed("record", core._record)

    def _timed(self, step: str, call):
        def timed(*args, **kwargs):
            if threading.get_ident() != self.thread:
                return call(*args, **kwargs)
            started = time.perf_counter()
            try:
                return call(*args, **kwargs)
            finally:
                self.times[step].append((time.perf_counter() - started) * 1000)

        return timed

    def take(self) -> dict[str, list[float]]:
        times, self.times = self.times, defaultdict(list)
        return times


def thread_cpu() -> dict[str, float]:
    """CPU seconds of each thread of this process, by Python thread name."""
    names = {t.native_id: t.name for t in threading.enumerate()}
    out: dict[str, float] = defaultdict(float)
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        name = names.get(int(tid), "other (native)")
        out[name] += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return out


def child_cpu() -> dict[int, float]:
    """CPU seconds of each child process of this one, by pid."""
    out = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/children") as f:
                pids = [int(p) for p in f.read().split()]
        except OSError:
            continue
        for pid in pids:
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            out[pid] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return out


def sched_times(exclude: set[int]) -> dict[int, tuple[float, float]]:
    """(seconds on a CPU, seconds runnable but waiting for one) of Match's
    tasks by task id: this process's main thread (Match's loop) and the
    threads of its children (the hashing worker) but those in `exclude`
    (/proc/TID/schedstat)."""
    out = {}
    main = threading.main_thread().native_id
    pids = [os.getpid(), *(pid for pid in child_cpu() if pid not in exclude)]
    for pid in pids:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in map(int, tids):
            if pid == os.getpid() and tid != main:
                continue
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                    on_cpu, waiting, _ = f.read().split()
            except (OSError, ValueError):
                continue
            out[tid] = (int(on_cpu) / 1e9, int(waiting) / 1e9)
    return out


def used(before: dict, after: dict) -> dict:
    return {
        k: after[k] - before.get(k, 0.0) for k in after if after[k] - before.get(k, 0.0) > 0.005
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--uploads", type=int, default=100_000)
    parser.add_argument("--entries", type=int, default=10_000)
    parser.add_argument("--match-seconds", type=float, default=6.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--nice", type=int, default=19, help="retro_nice")
    parser.add_argument("--batch", type=int, default=10_000, help="retro_batch_records")
    parser.add_argument("--pauses", default="0,0.05", help="retro_pause_seconds to compare")
    parser.add_argument("--beside", default="spinner,streamer", help="stand-ins to compare")
    args = parser.parse_args()
    pauses = [float(p) for p in args.pauses.split(",") if p]
    besides = [b for b in args.beside.split(",") if b]
    search_on_this_thread()
    tmp = tempfile.mkdtemp(prefix="bench-retro-pace-")
    db = os.path.join(tmp, "bench.db")
    config = Config(
        db_url=f"sqlite:///{db}",
        workers=1,
        # one hashing worker throughout: a replaced one's CPU would be lost
        # from Match's CPU a call
        worker_max_jobs=0,
        retro_poll_seconds=3600,
        retro_engine="process",
        retro_nice=args.nice,
        retro_batch_records=args.batch,
    )
    core = Core.open(config)
    core.start()
    child = core.retro.child
    assert child is not None
    try:
        hash_set, copies, entry_ids, images = known_set_and_history(
            core, db, args.uploads, args.entries
        )
        # its imports, as at a server's first run: not timed
        child_pids = {child.start()}
        steps = StepTimes(core)

        def matches(seconds: float) -> list[float]:
            out: list[float] = []
            deadline, i = time.monotonic() + seconds, 0
            while time.monotonic() < deadline:
                started = time.perf_counter()
                core.match(MatchQuery(media=images[i % len(images)]), "bench")
                out.append((time.perf_counter() - started) * 1000)
                i += 1
            return out

        matches(1.0)  # warm
        steps.take()

        def hunt(pause: float) -> tuple[float, int]:
            run = core.store.create_retro_run(
                "bench", "bench", hash_set.id, entry_ids, to_micros(datetime.now(UTC)) - 10**15
            )
            claimed = core.store.claim_retro_run(3600)
            core.retro.settings = replace(core.retro.settings, pause_seconds=pause)
            child.settings = replace(child.settings, pause_seconds=pause)
            started = time.perf_counter()
            core.retro.scan(claimed)
            return time.perf_counter() - started, len(core.store.retro_matches_of(run.id))

        def measure(condition: str) -> dict:
            threads, children = thread_cpu(), child_cpu()
            tasks = sched_times(child_pids)
            wall, hits = 0.0, None
            if condition.startswith("pause="):
                (wall, hits), during = match_during(
                    core, images, lambda: hunt(float(condition[6:])), args.nice
                )
                found = during
            elif condition == "idle":
                found = matches(args.match_seconds)
            else:
                kind, _, how = condition.partition("-")
                code = SPINNER if kind == "spinner" else STREAMER
                proc = subprocess.Popen([sys.executable, "-c", code, str(args.nice), how or "nice"])
                try:
                    time.sleep(0.5)
                    found = matches(args.match_seconds)
                finally:
                    proc.kill()
                    proc.wait()
            # Match's tasks: this thread and the hashing worker's
            after = sched_times(child_pids)
            on_cpu = sum(c - tasks.get(t, (0.0, 0.0))[0] for t, (c, _) in after.items())
            waiting = sum(w - tasks.get(t, (0.0, 0.0))[1] for t, (_, w) in after.items())
            return {
                "run_ms": 1000 * on_cpu / len(found),
                "wait_ms": 1000 * waiting / len(found),
                "p50": statistics.median(found),
                "calls": len(found),
                "steps": steps.take(),
                "threads": used(threads, thread_cpu()),
                "children": used(children, child_cpu()),
                "wall": wall,
                "hits": hits,
            }

        conditions = ["idle", *besides, *(f"pause={p:g}" for p in pauses)]
        results: dict[str, list[dict]] = defaultdict(list)
        for number in range(args.rounds):
            shift = number % len(conditions)
            for condition in conditions[shift:] + conditions[:shift]:
                got = measure(condition)
                results[condition].append(got)
                split = " ".join(
                    f"{s} {statistics.median(got['steps'][s]):.1f}"
                    for s in STEPS
                    if got["steps"][s]
                )
                rest = got["p50"] - sum(
                    statistics.median(got["steps"][s]) for s in STEPS if got["steps"][s]
                )
                threads = ", ".join(f"{k} {v:.2f}" for k, v in sorted(got["threads"].items()))
                kids = ", ".join(
                    f"{'scanning child' if pid in child_pids else f'pid {pid}'} {v:.2f}"
                    for pid, v in got["children"].items()
                )
                # Match's own CPU a call: this (Match) thread's and the hashing
                # worker's; more of it beside a stand-in is contention in the
                # core (caches, memory), the rest of a slower p50 is waiting
                match_cpu = got["threads"].get("MainThread", 0.0) + sum(
                    v for pid, v in got["children"].items() if pid not in child_pids
                )
                got["cpu_ms"] = 1000 * match_cpu / got["calls"]
                line = (
                    f"round {number + 1} {condition}: Match p50 {got['p50']:.1f} ms"
                    f" ({got['calls']} calls; {split} rest {rest:.1f}; a call: CPU"
                    f" {got['cpu_ms']:.1f} ms, Match's tasks on a CPU {got['run_ms']:.1f} ms,"
                    f" waiting for one {got['wait_ms']:.1f} ms); CPU s: {threads};"
                    f" children: {kids or '-'}"
                )
                if got["hits"] is not None:
                    scan_cpu = sum(got["children"].get(pid, 0.0) for pid in child_pids)
                    line += (
                        f"; hunt {got['wall']:.1f} s, {got['hits']} hits (planted {copies}),"
                        f" {args.uploads / got['wall']:,.0f} uploads/s wall"
                        f" (10M: {TARGET_UPLOADS / args.uploads * got['wall']:.0f} s),"
                        f" {args.uploads / max(scan_cpu, 1e-9):,.0f} per child CPU s"
                    )
                print(f"{line} (load {os.getloadavg()[0]:.1f})", flush=True)
        idle = statistics.median(r["p50"] for r in results["idle"])
        for condition, found in results.items():
            ratios = [r["p50"] / i["p50"] for r, i in zip(found, results["idle"], strict=True)]
            line = (
                f"{condition}: Match p50 median {statistics.median(r['p50'] for r in found):.1f}"
                f" ms, a call: CPU {statistics.median(r['cpu_ms'] for r in found):.1f} ms,"
                f" waiting for a CPU {statistics.median(r['wait_ms'] for r in found):.1f} ms"
                f" (idle {idle:.1f}); against the same round's idle, median"
                f" {100 * (statistics.median(ratios) - 1):+.0f}%"
                f" ({', '.join(f'{100 * (r - 1):+.0f}%' for r in ratios)})"
            )
            if found[0]["hits"] is not None:
                wall = statistics.median(r["wall"] for r in found)
                whole = TARGET_UPLOADS / args.uploads * wall
                line += f"; hunt median {wall:.1f} s (10M: {whole:.0f} s)"
            print(line, flush=True)
    finally:
        core.close()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
