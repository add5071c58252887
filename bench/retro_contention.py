"""What slows Match beside a retro-hunt: Match latency idle, beside a
GIL-free compiled thread (the hunt's comparison, bound_scan), and beside a
thread running Python (holding the GIL, as a hunt's reading and bookkeeping
do), each at nice 19 as a hunting thread, twice, interleaved.

    .venv/bin/python bench/retro_contention.py [--seconds 12]

Measured (2026-12-07, this 2-core machine at a load of ~13 from other work):
Match p50 idle 51.8 / 54.3 ms; beside the compiled scan 62.2 / 43.5 ms
(noise either way); beside Python 96.1 / 68.7 ms (+26% to +85%). A thread's
nice value gives Match the core, not the GIL: what a hunt runs in Python
is what Match waits for (README: Retro-hunt).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import threading

import numpy as np
from retro import match_latencies  # bench/retro.py: Match in a loop

from hashsvc.core.config import Config
from hashsvc.core.core import Core
from hashsvc.core.retro import lower_priority
from hashsvc.index.binary import search_on_this_thread
from hashsvc.index.bound_scan import any_within_scan
from hashsvc_testing.image_media import encode, photo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=12.0)
    args = parser.parse_args()
    search_on_this_thread()
    tmp = tempfile.mkdtemp(prefix="bench-contention-")
    core = Core.open(Config(db_url=f"sqlite:///{tmp}/bench.db", workers=1, retro_poll_seconds=3600))
    core.start()
    try:
        images = [encode(photo(i)) for i in range(8)]
        rng = np.random.default_rng(1)
        scan = any_within_scan(rng.integers(0, 256, (10_000, 32), dtype=np.uint8), 56)
        views = rng.integers(0, 256, (180_000, 32), dtype=np.uint8)  # a step of 10k uploads
        scan.any_within(views[:10], 56)  # compiled before timing
        match_latencies(core, images, 1.0)  # warm
        stop = threading.Event()

        def compiled() -> None:
            lower_priority(19)
            while not stop.is_set():
                scan.any_within(views, 56)

        def python() -> None:
            lower_priority(19)
            total = 0
            while not stop.is_set():
                for i in range(10_000):
                    total += i * i

        for name, work in [
            ("idle", None), ("compiled", compiled), ("python", python),
            ("idle", None), ("compiled", compiled), ("python", python),
        ]:  # fmt: skip
            stop.clear()
            thread = threading.Thread(target=work) if work else None
            if thread:
                thread.start()
            found = match_latencies(core, images, args.seconds)
            stop.set()
            if thread:
                thread.join()
            p99 = sorted(found)[int(0.99 * (len(found) - 1))]
            print(
                f"Match beside {name}: p50 {statistics.median(found):.1f} ms p99 {p99:.1f} ms"
                f" ({len(found)} calls; load {os.getloadavg()[0]:.1f})",
                flush=True,
            )
    finally:
        core.close()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
