"""A feed's pages fetched and parsed in a child process of the server
(exchange.fetch_process), one child a fetch at a time, at
exchange.fetch_nice; one idle child is kept for the next fetch.

Why a process: python-threatexchange's clients read and parse each page
(JSON, then an object a row) under the server's GIL, and a Match, and the
bulk write its history record waits for on SQLite, waited for it: during a
fetch the parsing thread was a third of the GIL's time and a 1 ms sleep of
the server woke up to 60 ms late (bench/exchange.py --breakdown). The child
only fetches and parses: the server writes every page itself, through the
bulk path, and commits its checkpoint, so what a crash leaves is unchanged:

- the child dies (killed, out of memory) or fails (the partner's error,
  named as in a fetch in the server: HTTP status, credentials refused): the
  fetch fails with its committed pages and checkpoint kept, and is retried
  with backoff (exchange.retry_*), never silently stalled;
- the child sends no page for exchange.page_seconds (a partner that hangs
  past the HTTP timeouts, a child stopped): it is killed, the fetch fails;
- the fetch ends early (a failure in the server, the server stopping): the
  child is killed;
- the server is killed (-9): the kernel signals the child (Linux
  PR_SET_PDEATHSIG), and in any case it ends when it cannot write a page
  (the pipe's reader gone); the next fetch resumes from the checkpoint.

The request carries the feed's credentials through the pipe (never argv,
the environment or a log). Each page is sent as chunks of items, so the
server unpickles a few milliseconds' worth at a time, never a whole page
under its GIL.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

from hashsvc.base.child_pipes import (
    Overdue,
    enter_child,
    exit_text,
    read_message,
    readable,
    write_message,
)
from hashsvc.base.errors import FailedPrecondition, Unavailable
from hashsvc.exchange.sources import SourceConfig, SourceItem, SourcePage, open_source, redact

log = logging.getLogger(__name__)

# Items a message holds at most: the server unpickles one message at a time
# under its GIL (10,000 TCAP items took ~20 ms; 1,000 a few).
CHUNK_ITEMS = 1_000
# How often a server waiting for a page looks at its stop flag.
_LOOK_SECONDS = 0.25
# How long a new child may take to import its client (niced, on a busy
# machine) before its first page's time starts.
_START_SECONDS = 60.0


class FetchFailed(Unavailable):
    """The fetching child failed, died or took too long: its message is the
    fetch's error as status and history show it."""


@dataclass(frozen=True)
class FetchRequest:
    api: str
    # the feed's settings and credentials; never in a repr
    config: SourceConfig = field(repr=False)
    checkpoint: str | None


def error_text(exc: BaseException) -> str:
    """One line for status and history; an HTTP error names its status and
    URL without the query (ThreatExchange puts the token there)."""
    if isinstance(exc, FetchFailed):
        return str(exc)  # the child's text, made by this function there
    response = getattr(exc, "response", None)
    if response is not None and getattr(response, "status_code", None):
        url = str(getattr(response, "url", "")).split("?", 1)[0]
        code = response.status_code
        hint = " (credentials refused)" if code in (400, 401, 403) else ""
        return f"HTTP {code} from {url}{hint}"
    return redact(f"{type(exc).__name__}: {exc}")[:500]


class FetchChildren:
    """The server's fetching children, one a fetch. A child whose fetch
    ended cleanly (its last page sent, or the partner's error) is kept, idle
    with its imports done, for the next fetch: a new one took 2-4 s to start
    on a busy machine (load 12-15), more than the 2 s in which an incremental
    fetch of 1,000 changes must match. One is kept at most."""

    def __init__(self, nice: int) -> None:
        self.nice = nice
        self._idle: list[subprocess.Popen] = []
        self._lock = threading.Lock()
        self._closed = False

    def take(self) -> tuple[subprocess.Popen, bool]:
        """A child for one fetch, and whether it was just started."""
        with self._lock:
            if self._closed:
                raise FailedPrecondition("the server is stopping")
            while self._idle:
                proc = self._idle.pop()
                if proc.poll() is None:
                    return proc, False
                _stop(proc)  # died while idle (killed, out of memory)
        return _start_child(self.nice), True

    def give_back(self, proc: subprocess.Popen) -> None:
        with self._lock:
            if not self._closed and not self._idle and proc.poll() is None:
                self._idle.append(proc)
                return
        _stop(proc)

    def close(self) -> None:
        """Stops the idle child; a fetch's own stops its child as it ends."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for proc in idle:
            _stop(proc)


def child_pages(
    children: FetchChildren,
    api: str,
    config: SourceConfig,
    checkpoint: str | None,
    page_seconds: float,
    stopping: threading.Event,
) -> Iterator[SourcePage]:
    """The source's pages from `checkpoint`, fetched and parsed by a child
    process. Raises FetchFailed when the child fails, dies or sends no page
    for page_seconds, FailedPrecondition when `stopping` is set and the
    page in progress has not come within the HTTP timeout; the child is
    killed whenever this ends before the last page."""
    proc, fresh = children.take()
    between = False  # the child waits for its next request: it may serve another
    try:
        try:
            write_message(proc.stdin.fileno(), FetchRequest(api, config, checkpoint))
        except OSError as exc:
            raise FetchFailed(f"the fetching process is gone ({_ended(proc)})") from exc
        fd = proc.stdout.fileno()
        items: list[SourceItem] = []
        # a new child's first page: its imports too
        limit = page_seconds + (_START_SECONDS if fresh else 0.0)
        while True:
            message = _next_message(proc, fd, limit, stopping, config.timeout_seconds)
            limit = page_seconds
            kind, payload = message
            if kind == "items":
                items.extend(payload)
            elif kind == "page":
                yield SourcePage(items, payload)
                items = []
            elif kind == "end":
                between = True
                return
            else:
                between = True
                raise FetchFailed(str(payload))
    finally:
        if between:
            children.give_back(proc)
        else:  # mid-fetch: killed (its pages are nobody's now)
            _stop(proc)


def _next_message(
    proc: subprocess.Popen, fd: int, seconds: float, stopping: threading.Event, grace: float
) -> tuple[str, object]:
    deadline = time.monotonic() + seconds
    stop_by = None
    while True:
        now = time.monotonic()
        if stop_by is None and stopping.is_set():
            # the page in progress is still written, as a fetching thread's
            # was, if it comes within `grace` (the HTTP timeout)
            stop_by = now + grace
        if stop_by is not None and now >= stop_by:
            raise FailedPrecondition("the server is stopping")
        wait = min(_LOOK_SECONDS, deadline - now)
        if wait <= 0:
            raise FetchFailed(
                f"the fetching process sent nothing for {seconds:g} s (exchange.page_seconds):"
                " stopped"
            )
        if readable(fd, wait):
            break
    try:
        # a message begun arrives whole within a page's time
        message = read_message(fd, deadline, "the feed fetching process")
    except Overdue:
        raise FetchFailed(
            f"the fetching process stopped midway through a page for {seconds:g} s"
            " (exchange.page_seconds): stopped"
        ) from None
    except Exception as exc:  # too large, or not unpickled
        raise FetchFailed(f"the fetching process sent an unreadable message: {exc}") from exc
    if message is None:
        raise FetchFailed(f"the fetching process died ({_ended(proc)})")
    return message


def _start_child(nice: int) -> subprocess.Popen:
    env = dict(os.environ)
    # the child imports this package from where the server did
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hashsvc.exchange.fetch_process",
            "--parent",
            str(os.getpid()),
            "--nice",
            str(nice),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        bufsize=0,
        env=env,
        close_fds=True,
    )


def _ended(proc: subprocess.Popen) -> str:
    with suppress(subprocess.TimeoutExpired):
        proc.wait(5)
    return exit_text(proc.returncode)


def _stop(proc: subprocess.Popen) -> None:
    """Ends the child at once: a child still fetching pages nobody will
    write is killed, not waited for."""
    if proc.poll() is None:
        with suppress(OSError):
            proc.kill()
    for pipe in (proc.stdin, proc.stdout):
        with suppress(OSError):
            if pipe is not None:
                pipe.close()
    proc.wait()


# -- the child


def child_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hashsvc.exchange.fetch_process")
    parser.add_argument("--parent", type=int, required=True)
    parser.add_argument("--nice", type=int, default=10)
    args = parser.parse_args(argv)
    requests, answers = enter_child(args.parent, args.nice, "feed fetching process")
    try:
        # one fetch after another (FetchChildren keeps an idle child), until
        # the server closes the pipe
        while (request := read_message(requests)) is not None:
            if not isinstance(request, FetchRequest):
                return 1
            _fetch(request, answers)
    except BrokenPipeError:
        return 1  # the server is gone, or gave up on this fetch
    return 0


def _fetch(request: FetchRequest, answers: int) -> None:
    try:
        source = open_source(request.api, request.config)
        for page in source.pages(request.checkpoint):
            items = page.items
            for start in range(0, len(items), CHUNK_ITEMS):
                write_message(answers, ("items", items[start : start + CHUNK_ITEMS]))
            write_message(answers, ("page", page.checkpoint))
        answer = ("end", None)
    except BrokenPipeError:
        raise
    except Exception as exc:
        answer = ("error", error_text(exc))
    write_message(answers, answer)


if __name__ == "__main__":
    # run as the package's module, not __main__: the request is a pickled
    # instance of hashsvc.exchange.fetch_process's class
    from hashsvc.exchange.fetch_process import child_main as _main

    sys.exit(_main())
