"""Failed authentications per client address, one budget for the console's
sign-ins, the HTTP API's and the gRPC API's bad tokens: past the limit in a
minute, the address is refused before its token is looked up in the store,
until the oldest failure is a minute old, except for a token this process
authenticated in the last `remember_seconds`. Many callers share one address
behind a NAT, a proxy or an ingress: one job with a revoked token, or anyone
sending junk through the same address, must not stop every pipeline's Match
there. A token that worked is no guess, and checking it costs no lookup (a
digest in memory); a guesser still reaches the store at most
failures_per_minute times a minute. Kept in this process's memory: each
replica counts its own."""

from __future__ import annotations

import hashlib
import math
import threading
import time
from collections import OrderedDict, deque

WINDOW_SECONDS = 60.0
# The config key of the limit, named in every refusal (ErrorInfo, JSON errors).
LIMIT_KEY = "console.sign_in_failures_per_minute"


# Tokens remembered as good: how many, and for how long after their last use.
REMEMBERED_TOKENS = 10_000
REMEMBER_SECONDS = 600.0


class SignInLimits:
    def __init__(
        self,
        failures_per_minute: int,
        max_addresses: int,
        remembered_tokens: int = REMEMBERED_TOKENS,
        remember_seconds: float = REMEMBER_SECONDS,
    ) -> None:
        self.failures_per_minute = failures_per_minute
        self.max_addresses = max_addresses  # past it, the longest-quiet address is forgotten
        self.remembered_tokens = remembered_tokens
        self.remember_seconds = remember_seconds
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        # digest of a token that authenticated -> when it last did (monotonic)
        self._good: OrderedDict[bytes, float] = OrderedDict()
        self._lock = threading.Lock()

    def authenticated(self, token: str) -> None:
        """`token` authenticated: it passes a throttled address for a while."""
        digest = hashlib.sha256(token.encode()).digest()
        with self._lock:
            self._good[digest] = time.monotonic()
            self._good.move_to_end(digest)
            while len(self._good) > self.remembered_tokens:
                self._good.popitem(last=False)

    def refused(self, address: str, token: str | None) -> int:
        """Seconds until `address` may try `token`; 0: it may now (under the
        limit, or a token that authenticated lately, which is looked up as
        any other: revoked since, it fails)."""
        wait = self.retry_after(address)
        if not wait or not token:
            return wait
        digest = hashlib.sha256(token.encode()).digest()
        with self._lock:
            seen = self._good.get(digest)
        if seen is not None and time.monotonic() - seen <= self.remember_seconds:
            return 0
        return wait

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
