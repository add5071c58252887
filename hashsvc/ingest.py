"""Adding many files: walk directories, add in parallel, show progress.

Entries found by walking a directory are named by their path relative to it
(so `a/x.jpg` and `b/x.jpg` stay apart); one that is already in the set is
skipped, which makes an interrupted ingest resumable by running it again.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass


@dataclass(frozen=True)
class MediaFile:
    path: str
    entry_name: str
    from_directory: bool


def media_files(paths: Iterable[str]) -> list[MediaFile]:
    """Files as given, and every file below each directory (hidden ones left
    out), in a stable order."""
    found: list[MediaFile] = []
    for path in paths:
        if os.path.isdir(path):
            for root, dirs, files in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for name in sorted(files):
                    if name.startswith("."):
                        continue
                    full = os.path.join(root, name)
                    rel = os.path.relpath(full, path).replace(os.sep, "/")
                    found.append(MediaFile(full, rel, True))
        else:
            found.append(MediaFile(path, os.path.basename(path), False))
    return found


class Progress:
    """`done/total, rate, ETA` on one line of stderr, when someone watches."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total = total
        self.enabled = enabled
        self.done = 0
        self.started = time.monotonic()
        self._lock = threading.Lock()
        self._last_draw = 0.0

    def step(self) -> None:
        with self._lock:
            self.done += 1
            now = time.monotonic()
            if self.enabled and (now - self._last_draw > 0.2 or self.done == self.total):
                self._last_draw = now
                rate = self.done / max(now - self.started, 1e-6)
                eta = (self.total - self.done) / rate if rate else 0
                sys.stderr.write(
                    f"\r{self.done}/{self.total} files  {rate:.1f}/s  ETA {eta:.0f}s   "
                )
                sys.stderr.flush()

    def finish(self) -> None:
        if self.enabled and self.total:
            sys.stderr.write("\n")


def run_parallel(
    items: list, work: Callable, report: Callable, workers: int, progress: Progress
) -> None:
    """work(item) in `workers` threads; report(item, result_or_exception) in
    order of completion, one at a time."""
    lock = threading.Lock()

    def one(item) -> None:
        try:
            result = work(item)
        except Exception as exc:  # noqa: BLE001 - handed to report()
            result = exc
        with lock:
            report(item, result)
        progress.step()

    with ThreadPoolExecutor(max(1, workers)) as pool:
        list(pool.map(one, items))
    progress.finish()
