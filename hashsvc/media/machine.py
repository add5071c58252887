"""Whether the machine has CPU to spare, for work that only pays on an idle
core: a hashing job started ahead of need (hashsvc/media/hashing.py), an
upload's local features in a second thread (hashsvc/media/image.py).

What counts as taken is the CPU that work at nice 0 (or below) used over the
last moment, read from Linux's /proc/stat; the CPU that niced work used
counts as free. Niced work gives way to Match at once: a nice-19 task weighs
~1.5% of a nice-0 one in the scheduler, and a task waking beside it takes
its core within ~0.01 ms (bench/retro_wakeup.py). A retro-hunt is niced
(retro_nice: the server's hunting thread, per thread, and its scanning
child, every thread), so a hunt takes no core from Match's second thread.
The 1-minute load average this replaces counted the hunt's child as a
runnable task like any other: during a hunt Match went one-threaded, and
its p50 grew by the second thread's gain (+16.5% to +22% where one-threaded
Match gained +6%; README, "In a process of its own").

The CPU's time is the kernel's own count, per CPU and state (user, nice,
system, idle, ...), so a reading costs a file read and no sampling of
processes: one a WINDOW_SECONDS at most, the decision reused between."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass

PROC_STAT = "/proc/stat"
# How long a decision stands before the CPUs' times are read again: the
# shortest window it is taken over (at 100 ticks a second, 2 cores count 50
# ticks in it), and what keeps it to one file read that often whatever the
# upload rate (each upload asks).
WINDOW_SECONDS = 0.25
# The CPU, in cores, that must have been idle or niced over the window for
# a core to be spare. Not a whole core: Match's own threads count as taken
# (a one-client stream of pictures used ~1.3 of 2 cores idle), and a core
# half free still runs a second thread while the first waits for the GIL.
FREE_CORES = 0.5
# /proc/stat's columns a CPU line has at least (user nice system idle iowait
# irq softirq steal; Linux 2.6.11 on); guest and guest_nice, after them, are
# counted in user and nice already.
_COLUMNS = 8


@dataclass(frozen=True)
class CpuTimes:
    """Ticks since boot of the CPUs a process may run on (`cpus` of them):
    `taken` by work at nice 0 or below (user, system, irq, softirq, and
    steal, a virtual machine's CPU its host gave to others), `free` idle,
    waiting for I/O, or run by niced work (the nice column: user time of
    tasks whose nice value is above 0; their system time is in system)."""

    cpus: int
    taken: int
    free: int


def read_cpu_times(path: str = PROC_STAT, cpus: Collection[int] | None = None) -> CpuTimes | None:
    """The times of `cpus` (the CPUs this process may run on when None) in
    the /proc/stat at `path`; None when it cannot be read, a CPU asked for
    is not in it, or a line asked for is garbled."""
    if cpus is None:
        try:
            cpus = os.sched_getaffinity(0)
        except (AttributeError, OSError):
            return None
    try:
        with open(path, "rb") as stat:
            text = stat.read()
    except OSError:
        return None
    wanted = {b"cpu%d" % cpu for cpu in cpus}
    taken = free = found = 0
    for line in text.splitlines():
        name, _, rest = line.partition(b" ")
        if name not in wanted:
            continue
        try:
            user, nice, system, idle, iowait, irq, softirq, steal = map(
                int, rest.split()[:_COLUMNS]
            )
        except ValueError:  # too few columns, or not numbers
            return None
        taken += user + system + irq + softirq + steal
        free += nice + idle + iowait
        found += 1
    if found != len(wanted) or found == 0:
        return None
    return CpuTimes(found, taken, free)


def spare_between(before: CpuTimes, after: CpuTimes) -> bool:
    """Whether FREE_CORES of the CPUs' time from `before` to `after` was
    idle or niced. Never on one CPU: a second thread there only waits for
    the first's core. False for readings that do not follow each other (the
    CPUs changed, the counts went back, no tick between)."""
    taken, free = after.taken - before.taken, after.free - before.free
    if after.cpus != before.cpus or after.cpus < 2 or taken < 0 or free < 0:
        return False
    ticks = taken + free
    return ticks > 0 and free * after.cpus >= FREE_CORES * ticks


class CpuWatch:
    """spare_core's state: the last reading, when it was taken, and the
    decision taken then, which stands for WINDOW_SECONDS. The three are
    replaced together (one tuple): threads that ask at once may each read,
    and each sees a reading and the decision that came with it."""

    def __init__(
        self,
        read: Callable[[], CpuTimes | None] = read_cpu_times,
        clock: Callable[[], float] = time.monotonic,
        window_seconds: float = WINDOW_SECONDS,
    ) -> None:
        self._read = read
        self._clock = clock
        self._window_seconds = window_seconds
        self._last: tuple[float, CpuTimes | None, bool] | None = None

    def spare(self) -> bool:
        """Whether the CPUs had a core to spare over the window that ended
        at the last reading; False at the first reading (no window yet) and
        after a reading that failed. After a long quiet time the window is
        as long (an average over it, as the load average's minute)."""
        now = self._clock()
        last = self._last
        if last is not None and now - last[0] < self._window_seconds:
            return last[2]
        reading = self._read()
        before = last[1] if last is not None else None
        spare = reading is not None and before is not None and spare_between(before, reading)
        self._last = (now, reading, spare)
        return spare


_watch = CpuWatch()


def spare_core() -> bool:
    """Whether the machine's cores are not all taken by work at nice 0: over
    the last WINDOW_SECONDS or more (since the reading before), FREE_CORES
    of the CPUs this process may run on were idle or ran niced work. On a
    loaded machine a second thread or job only queues for the same CPU: two
    threads of one hashing job then wait for each other's GIL behind every
    other process (speed.py's second step at load 14: 35.7 ms wall in two
    threads, 27.2 in one, the same CPU).

    False when the CPUs' times are not known (no /proc/stat off Linux or in
    some sandboxes, garbled): the extra work is only a speed-up, and every
    upload hashed in one thread or one step gets the same answer, where a
    raised error would fail the upload."""
    return _watch.spare()
