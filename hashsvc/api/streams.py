"""Limits on streams. The sync gRPC server runs each call on one of its
grpc_threads for as long as the call is open: 16 idle streams (reflection
needed no token) held all 16 threads, and every RPC and the health check timed
out (issue 16). So: at most max_streams streams at once, fewer than
grpc_threads, and max_streams_per_token per caller; past a cap a new stream
gets RESOURCE_EXHAUSTED at once. And a stream's requests are read through
`Requests`, which ends a stream that sends nothing for stream_idle_seconds or
is still sending after stream_max_seconds (grpc's own request iterator waits
for the next message forever). `UnreadCalls` bounds the wait for a unary
call's one message the same way."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from hashsvc.base.errors import Timeout, TooLarge

if TYPE_CHECKING:
    from hashsvc.core.config import Config

log = logging.getLogger(__name__)

# Callers without a token (server reflection) share one per-caller count.
ANONYMOUS = "anonymous"
# How often a waiting read looks again at whether the handler is busy.
_BUSY_POLL_SECONDS = 0.25
_MESSAGE, _END, _ERROR = "message", "end", "error"


class StreamSlot:
    """An admitted stream's place; release() gives it back (once, from the
    handler's end or grpc's end-of-call callback, whichever comes first)."""

    def __init__(self, limiter: StreamLimiter, key: object) -> None:
        self._limiter = limiter
        self._key = key
        self._released = False

    def release(self) -> None:
        self._limiter._release(self)


class StreamLimiter:
    def __init__(
        self,
        max_streams: int,
        max_per_caller: int,
        idle_seconds: float,
        max_seconds: float,
        limit_keys: tuple[str, str] = ("max_streams", "max_streams_per_token"),
    ) -> None:
        self.max_streams = max_streams
        self.max_per_caller = max_per_caller
        # the config keys a refusal names: (in all, per token)
        self.limit_keys = limit_keys
        self.idle_seconds = idle_seconds
        self.max_seconds = max_seconds
        self._lock = threading.Lock()
        self._open = 0
        self._per_caller: Counter = Counter()

    @classmethod
    def from_config(cls, config: Config) -> StreamLimiter:
        return cls(
            config.max_streams,
            config.max_streams_per_token,
            config.stream_idle_seconds,
            config.stream_max_seconds,
        )

    def open_streams(self) -> int:
        with self._lock:
            return self._open

    def admit(self, key: object, caller: str) -> StreamSlot:
        """A place for one more stream of `key` (a token id, or ANONYMOUS);
        TooLarge (RESOURCE_EXHAUSTED) past either cap."""
        with self._lock:
            # the caller's own cap first: it tells them to slow down
            held = self._per_caller[key]
            in_all, per_token = self.limit_keys
            if held >= self.max_per_caller:
                raise TooLarge(
                    f"{caller} already has {held} streams open, its limit"
                    f" ({per_token}); retry later",
                    limit=per_token,
                )
            if self._open >= self.max_streams:
                raise TooLarge(
                    f"the server already has {self._open} streams open, its limit"
                    f" ({in_all}); retry later",
                    limit=in_all,
                )
            self._open += 1
            self._per_caller[key] += 1
        return StreamSlot(self, key)

    def _release(self, slot: StreamSlot) -> None:
        with self._lock:
            if slot._released:
                return
            slot._released = True
            self._open -= 1
            self._per_caller[slot._key] -= 1
            if self._per_caller[slot._key] <= 0:
                del self._per_caller[slot._key]

    def requests(self, source: Iterator) -> Requests:
        return Requests(source, self.idle_seconds, self.max_seconds)


class Requests:
    """A call's request stream with an idle and a total deadline: Timeout
    (DEADLINE_EXCEEDED) instead of waiting forever. A helper thread reads
    grpc's iterator (one message ahead at most); it ends when the call ends,
    which grpc signals to its iterator whatever way the call ended."""

    def __init__(self, source: Iterator, idle_seconds: float, max_seconds: float) -> None:
        self._source = source
        self._idle_seconds = idle_seconds
        self._max_seconds = max_seconds
        self._deadline = time.monotonic() + max_seconds
        self._queue: queue.Queue = queue.Queue(maxsize=1)
        self._closed = threading.Event()
        self._reader: threading.Thread | None = None
        self._done = False
        # A handler that works for the client between its messages (MatchBatch
        # with items in flight: the client may wait for answers before sending
        # more) sets this; while it returns True the idle clock stands still.
        self.busy: Callable[[], bool] | None = None

    def __iter__(self) -> Requests:
        return self

    def __next__(self):
        if self._done:
            raise StopIteration
        if self._reader is None:
            self._reader = threading.Thread(target=self._read, daemon=True, name="stream-reader")
            self._reader.start()
        waiting_since = time.monotonic()
        while True:
            now = time.monotonic()
            busy = self.busy is not None and self.busy()
            if busy:
                waiting_since = now
            if now >= self._deadline:
                self._fail(
                    Timeout(
                        f"the stream was still sending after {self._max_seconds:g} s"
                        " (stream_max_seconds)",
                        limit="stream_max_seconds",
                    )
                )
            idle_left = self._idle_seconds - (now - waiting_since)
            if idle_left <= 0:
                self._fail(
                    Timeout(
                        f"no message for {self._idle_seconds:g} s: the stream was idle"
                        " (stream_idle_seconds)",
                        limit="stream_idle_seconds",
                    )
                )
            wait = min(idle_left, self._deadline - now)
            if self.busy is not None:
                wait = min(wait, _BUSY_POLL_SECONDS)
            try:
                kind, value = self._queue.get(timeout=wait)
            except queue.Empty:
                continue
            if kind == _MESSAGE:
                return value
            self._done = True
            if kind == _END:
                raise StopIteration
            raise value  # as grpc raised it (a cancelled call's RpcError)

    def close(self) -> None:
        """The handler is done: the reader stops handing on messages."""
        self._done = True
        self._closed.set()

    def _fail(self, exc: Exception) -> None:
        self.close()
        raise exc

    def _read(self) -> None:
        try:
            for message in self._source:
                if not self._put((_MESSAGE, message)):
                    return
        except Exception as exc:  # noqa: BLE001 - handed to the handler's thread
            self._put((_ERROR, exc))
            return
        self._put((_END, None))

    def _put(self, item) -> bool:
        while not self._closed.is_set():
            try:
                self._queue.put(item, timeout=0.5)
                return True
            except queue.Full:
                continue
        return False


class UnreadCalls:
    """Calls whose request message has not arrived. grpc's sync server holds a
    thread for each while it waits for the message, without a time limit: 40
    calls to Match that sent headers only (any client can: a streaming stub on
    a unary method's path) stalled every RPC and the health check. Here the
    interceptor reads the message itself, after checking the token, which
    comes with the headers (so a call without one holds nothing); the wait
    is bounded by stream_idle_seconds (the call is then cancelled).

    Calls without a token (health checks) have at most max_unread_anonymous_calls
    waiting, a token max_unread_calls_per_token and all tokens together
    max_unread_token_calls (bench/fuzz.py: 200 headers-only Matches with a
    matcher token timed out Match and the health check for 10 s). Past a cap
    the oldest calls are cancelled once they have waited `grace` seconds: a
    real call's message comes with its headers, but a busy server's poller
    may take a while to hand it over, and cancelling at once cancelled a
    pipeline's real Match (bench/loadtest.py: 8 clients on one token, one
    call in 220 CANCELLED on 2 busy cores). Past twice a cap the oldest are
    cancelled at once, so the threads idle callers hold stay bounded
    (config.py checks they fit in grpc_threads)."""

    def __init__(
        self,
        seconds: float,
        max_anonymous: int,
        max_per_token: int = 4,
        max_with_token: int = 8,
        grace: float = 0.5,
    ) -> None:
        self.seconds = seconds
        self.max_anonymous = max_anonymous
        self.max_per_token = max_per_token
        self.max_with_token = max_with_token
        self.grace = grace
        self._lock = threading.Lock()
        self._waiting: dict[int, tuple[float, object]] = {}  # id -> (since, context), oldest first
        self._anonymous: set[int] = set()
        self._token_of: dict[int, int] = {}  # id -> token id
        self._next_id = 0
        self._watcher: threading.Thread | None = None
        self._stopped = threading.Event()

    def read_first(
        self, request_iterator: Iterator, context, anonymous: bool, token_id: int | None = None
    ):
        """The call's one request message (StopIteration: the client sent none;
        grpc.RpcError: the call was cancelled, by the client or by this watch)."""
        key = self._enter(context, anonymous, token_id)
        try:
            return next(request_iterator)
        finally:
            self._leave(key)

    def waiting(self) -> int:
        with self._lock:
            return len(self._waiting)

    def close(self) -> None:
        self._stopped.set()

    def _enter(self, context, anonymous: bool, token_id: int | None = None) -> int:
        with self._lock:
            key = self._next_id
            self._next_id += 1
            self._waiting[key] = (time.monotonic(), context)
            if anonymous:
                self._anonymous.add(key)
            elif token_id is not None:
                self._token_of[key] = token_id
            evicted = self._over_caps(time.monotonic())
            if self._watcher is None:
                self._watcher = threading.Thread(
                    target=self._watch, daemon=True, name="unread-calls"
                )
                self._watcher.start()
        for waiting in evicted:
            log.info("a call sent no request message: cancelled for a newer one")
            waiting.cancel()
        return key

    def _leave(self, key: int) -> None:
        with self._lock:
            if key in self._waiting:  # else cancelled past a cap or the deadline
                self._forget(key)

    def _forget(self, key: int):
        self._anonymous.discard(key)
        self._token_of.pop(key, None)
        return self._waiting.pop(key)[1]

    def _over_caps(self, now: float) -> list:
        """Takes out (under the lock) the calls past a cap that may be
        cancelled now, and returns their contexts."""
        chosen: list[int] = []

        def past(keys: list[int], cap: int) -> None:
            keys = [k for k in keys if k not in chosen]  # oldest first
            at_once = len(keys) - 2 * cap
            for i, k in enumerate(keys[: max(0, len(keys) - cap)]):
                if i < at_once or now - self._waiting[k][0] >= self.grace:
                    chosen.append(k)

        past([k for k in self._waiting if k in self._anonymous], self.max_anonymous)
        for token in set(self._token_of.values()):
            own = [k for k in self._waiting if self._token_of.get(k) == token]
            past(own, self.max_per_token)
        past([k for k in self._waiting if k in self._token_of], self.max_with_token)
        return [self._forget(k) for k in chosen]

    def _watch(self) -> None:
        period = min(0.25, self.seconds / 4, max(self.grace / 2, 0.01))
        while not self._stopped.wait(period):
            now = time.monotonic()
            with self._lock:
                overdue = [
                    k for k, (since, _) in self._waiting.items() if since + self.seconds <= now
                ]
                contexts = [self._forget(k) for k in overdue]
                evicted = self._over_caps(now)
            for context in contexts:
                log.info(
                    "no request message within %g s (stream_idle_seconds): call cancelled",
                    self.seconds,
                )
                context.cancel()
            for context in evicted:
                log.info("a call sent no request message: cancelled, past its cap")
                context.cancel()
