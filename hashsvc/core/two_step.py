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
uploads blocked so decides."""

from __future__ import annotations

import threading
from collections import deque


class RecentBlocks:
    """Whether each of the last `window` image uploads was blocked in every
    set asked by exact or PDQ evidence; two steps pay from `share` of them
    (of the whole window: a few blocked uploads after a start are no flood)."""

    def __init__(self, window: int, share: float) -> None:
        self.share = share
        self._seen: deque[bool] = deque(maxlen=window)
        self._blocked = 0
        self._lock = threading.Lock()

    def two_steps(self) -> bool:
        if self.share <= 0:
            return True
        with self._lock:
            return self._blocked >= self.share * self._seen.maxlen

    def observe(self, blocked_everywhere: bool) -> None:
        with self._lock:
            if len(self._seen) == self._seen.maxlen:
                self._blocked -= self._seen[0]
            self._seen.append(blocked_everywhere)
            self._blocked += blocked_everywhere
