"""Failed authentications per client address, one budget for the console's
sign-ins, the HTTP API's and the gRPC API's bad tokens: past the limit in a
minute, the address may not authenticate at all until the oldest failure is a
minute old (refusing only wrong tokens would still tell a guesser which one
is right), and it is refused before its token is looked up in the store.
Kept in this process's memory: each replica counts its own."""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict, deque

WINDOW_SECONDS = 60.0
# The config key of the limit, named in every refusal (ErrorInfo, JSON errors).
LIMIT_KEY = "console.sign_in_failures_per_minute"


class SignInLimits:
    def __init__(self, failures_per_minute: int, max_addresses: int) -> None:
        self.failures_per_minute = failures_per_minute
        self.max_addresses = max_addresses  # past it, the longest-quiet address is forgotten
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._lock = threading.Lock()

    def retry_after(self, address: str) -> int:
        """Seconds until `address` may try again; 0: it may now."""
        now = time.monotonic()
        with self._lock:
            failures = self._failures.get(address)
            if failures is None:
                return 0
            while failures and failures[0] <= now - WINDOW_SECONDS:
                failures.popleft()
            if not failures:
                del self._failures[address]
                return 0
            if len(failures) < self.failures_per_minute:
                return 0
            return max(1, math.ceil(failures[0] + WINDOW_SECONDS - now))

    def failed(self, address: str) -> None:
        now = time.monotonic()
        with self._lock:
            failures = self._failures.setdefault(address, deque())
            failures.append(now)
            while len(failures) > self.failures_per_minute:
                failures.popleft()
            self._failures.move_to_end(address)
            while len(self._failures) > self.max_addresses:
                self._failures.popitem(last=False)
