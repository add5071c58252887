"""How long a waking task waits for a core a niced scanner holds: two
processes at nice 0 pass a byte back and forth (as Match's thread and its
hashing worker hand work over), all on one core with a spinner (a stand-in
for the retro-hunt's scanning child) at nice 19, or in SCHED_IDLE
(retro_process_cpu_class = "idle"), or none; the round trip's p50 and p99,
conditions alternated.

    .venv/bin/python bench/retro_wakeup.py [--seconds 2] [--rounds 5] [--cpu 1]
    .venv/bin/python bench/retro_wakeup.py --share [--rounds 6]

--share: the CPU a nice-0 loop gets a wall second (its share of the loaded
machine) beside no spinner, two nice-19 spinners in its own session, or
two in a session of their own (an autogroup, at autogroup nice 19): Linux's
autogroups share the CPU between sessions first, so a niced child in the
server's session might take the server's share from other sessions' work.

Each round trip is two wake-ups. Beside a busy core's nice-19 task, a waking
task may wait for that task's slice (the scheduler lets the running task
finish it); beside a SCHED_IDLE task it takes the core at once.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

SPINNER = (
    "import os,sys\n"
    "os.sched_setaffinity(0, {int(sys.argv[1])})\n"
    "if sys.argv[2] == 'idle': os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))\n"
    "os.nice(19)\n"
    "x = 0\n"
    "while True: x += 1\n"
)


SHARE_SPINNER = (
    "import os,sys\n"
    "if sys.argv[1] == 'group':\n"
    "    os.setsid()\n"
    "    open('/proc/self/autogroup', 'w').write('19')\n"
    "os.nice(19)\n"
    "x = 0\n"
    "while True: x += 1\n"
)


def cpu_share(seconds: float) -> float:
    """This thread's CPU a wall second while it loops at nice 0."""
    wall, cpu = time.perf_counter(), time.thread_time()
    x = 0
    while time.perf_counter() - wall < seconds:
        x += 1
    return (time.thread_time() - cpu) / (time.perf_counter() - wall)


def shares(rounds: int, seconds: float) -> None:
    results: dict[str, list[float]] = {"none": [], "same": [], "group": []}
    for number in range(rounds):
        order = list(results)
        order = order[number % 3 :] + order[: number % 3]
        for condition in order:
            spinners = [
                subprocess.Popen([sys.executable, "-c", SHARE_SPINNER, condition])
                for _ in range(2 if condition != "none" else 0)
            ]
            time.sleep(0.3)
            try:
                share = cpu_share(seconds)
            finally:
                for spinner in spinners:
                    spinner.kill()
                    spinner.wait()
            results[condition].append(share)
            print(
                f"round {number + 1} spinners {condition}: a nice-0 loop got {share:.2f} CPU"
                f" s a second (load {os.getloadavg()[0]:.1f})",
                flush=True,
            )
    for condition, found in results.items():
        print(
            f"spinners {condition}: median {statistics.median(found):.2f}"
            f" ({', '.join(f'{x:.2f}' for x in found)})"
        )


def round_trips(cpu: int, seconds: float) -> list[float]:
    """Round trips (ms) between this process and a child echoing a byte."""
    a_read, a_write = os.pipe()
    b_read, b_write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the echo
        os.sched_setaffinity(0, {cpu})
        os.close(a_write)
        os.close(b_read)
        while data := os.read(a_read, 1):
            os.write(b_write, data)
        os._exit(0)
    os.close(a_read)
    os.close(b_write)
    found = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        started = time.perf_counter()
        os.write(a_write, b"x")
        os.read(b_read, 1)
        found.append((time.perf_counter() - started) * 1000)
        time.sleep(0.001)  # both asleep, as between Matches' steps
    os.close(a_write)
    os.waitpid(pid, 0)
    os.close(b_read)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--cpu", type=int, default=1)
    parser.add_argument("--share", action="store_true")
    args = parser.parse_args()
    if args.share:
        shares(args.rounds, max(args.seconds, 3.0))
        return
    os.sched_setaffinity(0, {args.cpu})
    results: dict[str, list[tuple[float, float]]] = {"none": [], "nice": [], "idle": []}
    for number in range(args.rounds):
        order = list(results)
        order = order[number % 3 :] + order[: number % 3]
        for condition in order:
            spinner = None
            if condition != "none":
                spinner = subprocess.Popen(
                    [sys.executable, "-c", SPINNER, str(args.cpu), condition]
                )
                time.sleep(0.3)
            try:
                found = round_trips(args.cpu, args.seconds)
            finally:
                if spinner is not None:
                    spinner.kill()
                    spinner.wait()
            p50 = statistics.median(found)
            p99 = sorted(found)[int(0.99 * (len(found) - 1))]
            results[condition].append((p50, p99))
            print(
                f"round {number + 1} beside {condition}: round trip p50 {p50:.3f} ms"
                f" p99 {p99:.3f} ms ({len(found)}; load {os.getloadavg()[0]:.1f})",
                flush=True,
            )
    for condition, found in results.items():
        print(
            f"beside {condition}: median of the rounds' p50 "
            f"{statistics.median(p for p, _ in found):.3f} ms, p99"
            f" {statistics.median(p for _, p in found):.3f} ms"
        )


if __name__ == "__main__":
    main()
