"""An upload's local features after its views, when a flood of known pictures
makes that pay (hashsvc/media/limits.py: local_after_views_share).

Local features (ORB, then the tiles) are most of an upload's hashing, and no
local-feature match can change a decision that exact or PDQ evidence makes
BLOCK in every set asked (Matcher's blocked_everywhere). Hashed in one job,
the features are computed beside the views, before anything is matched; in
two, an upload's exact hashes and PDQ views are matched first and its
features computed only when they could still decide. Two steps cost every
upload that is not blocked a second decode and job, and its views and
features one after the other: worth it when many uploads are blocked (a mass
re-upload of known pictures), not otherwise, so the share of recent image
uploads blocked so decides.

The share is counted per caller (its token): one caller flooding known
copies turned two steps on for every caller when the window was shared
(review), their uploads then paying the second job and the views and
features one after the other. At most `callers` windows are kept, the
least recently seen dropped first (its caller starts again in one step).
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque

# The note of a Match answered by its exact hashes alone (Core._exact_copy):
# during a caller's flood of exact copies of known media (the same share of
# its last uploads as for two steps, counted apart and for every media kind),
# an exact copy is looked up before anything is decoded or hashed, and costs
# two hashes of its bytes and the lookups. Outside a flood such an upload is
# hashed as any other (its history keeps every signal).
NOT_HASHED = (
    "not hashed: an exact copy (MD5/SHA-256) of known media blocks in every set asked;"
    " matches by other signals are not listed"
)


class RecentBlocks:
    """Whether each of the last `window` image uploads was blocked in every
    set asked by exact or PDQ evidence; two steps pay from `share` of them
    (of the whole window: a few blocked uploads after a start are no flood)."""

    def __init__(self, window: int, share: float) -> None:
        self.share = share
        self._seen: deque[bool] = deque(maxlen=window)
        self._blocked = 0
        self._lock = threading.Lock()

    def two_steps(self, share: float | None = None) -> bool:
        share = self.share if share is None else share
        if share <= 0:
            return True
        with self._lock:
            return self._blocked >= share * self._seen.maxlen

    def observe(self, blocked_everywhere: bool) -> None:
        with self._lock:
            if len(self._seen) == self._seen.maxlen:
                self._blocked -= self._seen[0]
            self._seen.append(blocked_everywhere)
            self._blocked += blocked_everywhere


class CallerBlocks:
    """A RecentBlocks window per caller (a token id; None for callers
    without one), at most `callers` of them, the least recently seen
    dropped first: memory stays bounded (~1 KB a window) whoever calls."""

    def __init__(self, window: int, share: float, callers: int) -> None:
        self.window = window
        self.share = share
        self.callers = callers
        self._windows: OrderedDict[object, RecentBlocks] = OrderedDict()
        self._lock = threading.Lock()

    def flooding(self, caller: object) -> bool:
        """Whether `share` of the caller's last `window` observations were True."""
        if self.share <= 0:
            return True
        with self._lock:
            recent = self._windows.get(caller)
        return recent is not None and recent.two_steps(self.share)

    def observe(self, caller: object, seen: bool) -> None:
        with self._lock:
            recent = self._windows.get(caller)
            if recent is None:
                recent = self._windows[caller] = RecentBlocks(self.window, self.share)
                while len(self._windows) > self.callers:
                    self._windows.popitem(last=False)
            else:
                self._windows.move_to_end(caller)
        recent.observe(seen)

    def __len__(self) -> int:
        with self._lock:
            return len(self._windows)
