"""Whether the machine has CPU to spare, for work that only pays on an idle
core: a hashing job started ahead of need (hashsvc/media/hashing.py), an
upload's local features in a second thread (hashsvc/media/image.py)."""

from __future__ import annotations

import os


def spare_core() -> bool:
    """Whether the machine's cores are not all taken: its load average over
    the last minute (runnable processes, this one included) is under the
    cores this process may run on. On a loaded machine a second thread or
    job only queues for the same CPU: two threads of one hashing job then
    wait for each other's GIL behind every other process (speed.py's second
    step at load 14: 35.7 ms wall in two threads, 27.2 in one, the same CPU).

    False when the load is not known (no os.getloadavg off Unix, OSError
    where /proc/loadavg cannot be read, as in some sandboxes): the extra
    work is only a speed-up, and every upload hashed in one thread or one
    step gets the same answer, where a raised error would fail the upload."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return False
    return load < cores
