"""Flood alerts' counting: matches per entry, counted in memory between
flushes and added to the store's counts (shared by all replicas); what an
alert does is in hashsvc/core/review.py (ReviewQueue.raise_flood_alert)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from hashdb import FloodStore

# The flood window is counted in this many time buckets: a count covers the
# last 5/6 to 6/6 of the window, and each entry keeps at most 6 rows.
FLOOD_BUCKETS = 6
# Entries a flush writes per transaction: a transaction holds SQLite's writer
# (which a Match's history record waits for) ~3 ms per 1,000 entries and
# ~45 ms per 10,000 (PostgreSQL: 20 and 170 ms), measured for issue 16.
FLOOD_FLUSH_CHUNK = 1000


class FloodCounter:
    """Matches per entry: counted in memory between flushes, then added to
    the store's counts (shared by all replicas) in one transaction, so a Match
    pays a dict update, not a write. Memory holds only the entries matched
    since the last flush; the store forgets buckets older than the window."""

    def __init__(
        self,
        counts: FloodStore,
        max_matches: int,
        window_seconds: float,
        max_pending: int,
        on_over: Callable[[dict[int, int]], None],
    ) -> None:
        self.counts = counts
        self.max_matches = max_matches
        self.window_seconds = window_seconds
        self.max_pending = max_pending
        self.on_over = on_over
        self.wake = threading.Event()  # set when the pending counts are full
        self._pending: dict[int, int] = {}
        self._lock = threading.Lock()
        self._flushing = threading.Lock()
        self._counted_at = float("-inf")  # monotonic time of the last flush with counts

    def observe(self, entry_ids) -> None:
        if self.max_matches <= 0:
            return
        with self._lock:
            for entry_id in set(entry_ids):
                self._pending[entry_id] = self._pending.get(entry_id, 0) + 1
            if len(self._pending) >= self.max_pending:
                self.wake.set()

    def tracked_entries(self) -> int:
        """Entries counted in memory, not yet flushed."""
        with self._lock:
            return len(self._pending)

    def flush(self) -> dict[int, int]:
        """Adds the pending counts to the store; the entries now past the
        limit without an open alert (entry id -> matches in the window) go to
        on_over. A failed write keeps the counts for the next flush."""
        if self.max_matches <= 0:
            return {}
        with self._flushing:  # one flush at a time: counts are not added twice
            with self._lock:
                counts, self._pending = self._pending, {}
            now = time.monotonic()
            if counts:
                self._counted_at = now
            elif now - self._counted_at > 2 * self.window_seconds:
                # idle: this replica's old buckets are gone already, and rows
                # left by others are past the window, where they never count
                return {}
            bucket_seconds = self.window_seconds / FLOOD_BUCKETS
            bucket = int(time.time() // bucket_seconds)
            ids = sorted(counts)
            over: dict[int, int] = {}
            # an empty flush still runs once: it forgets old buckets
            for start in range(0, max(len(ids), 1), FLOOD_FLUSH_CHUNK):
                chunk = {i: counts[i] for i in ids[start : start + FLOOD_FLUSH_CHUNK]}
                try:
                    over.update(
                        self.counts.add_flood_counts(chunk, bucket, FLOOD_BUCKETS, self.max_matches)
                    )
                except BaseException:
                    with self._lock:  # kept for the next flush
                        for entry_id in ids[start:]:
                            n = counts[entry_id]
                            self._pending[entry_id] = self._pending.get(entry_id, 0) + n
                    raise
        if over:
            self.on_over(over)
        return over
