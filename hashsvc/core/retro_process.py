"""Retro-hunt runs scanned in a child process of the server
(retro_engine = "process"; issue 20: Match within 20% of idle during a
hunt).

Why a process: Match waits for the GIL that a hunting thread holds while it
reads and slices its batches (bench/retro_contention.py); a thread's nice
value gives Match the core, not the GIL. The child reads the history from
the store itself (opened from db_url, as a Dask worker does), compares each
batch with the run's new entries and sends back only the batch's end, its
size and its few candidate hits. The server holds and records each hit
exactly as the in-process hunt does (RetroHunt._hold -> record_retro_match:
the same lease, checkpoint after each batch, a hit unique per entry and
upload), so what survives what is unchanged:

- one long-lived child a server, started when the first run needs it, at
  retro_nice (all its threads); started again at the next batch after it
  died;
- the child dies mid-run (killed, out of memory): the batch fails, the run
  is retried from its checkpoint (retro_retry_*: a failed attempt, shown in
  `retro list`), and nothing is reported twice;
- the server stops: the child's input is closed and it ends (killed after
  a moment); the server is killed (-9): the child gets a signal from the
  kernel (Linux PR_SET_PDEATHSIG) and ends, and in any case ends at the end
  of its input or when it cannot write its answer (the pipe's reader gone);
- a batch that takes longer than retro_process_batch_seconds, or an answer
  that stops midway for as long: the child is killed and the batch fails as
  above (a hung child holds no run forever).

The protocol is one request a batch (the server asks for the next batch as
soon as it has one, so the child scans while the server holds the hits),
each answer tagged with its request's number: an answer to a request the
server gave up on (a stop, a lost run) is read and dropped.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from hashdb import HistoryUpload, RetroRun
from hashsvc.base.child_pipes import (
    ChildFailed,
    Overdue,
    enter_child,
    exit_text,
    read_message,
    readable,
    write_message,
)
from hashsvc.matching.matcher import Match
from hashsvc.matching.policy import LocalFeatureMatching, PdqPolicy

log = logging.getLogger(__name__)

_SENDER = "the retro-hunt's scanning process"

# How often a server waiting for a batch looks at its stop flag and lease.
_LOOK_SECONDS = 0.5
# A stopping server waits this long for the child to end before killing it.
_CHILD_EXIT_SECONDS = 2.0
# How long a new child may take to import what it scans with (at retro_nice
# on a busy machine) before it is given up.
_START_SECONDS = 120.0


@dataclass(frozen=True)
class ProcessSettings:
    """The child's settings (Config retro_*)."""

    nice: int = 10
    threads: int = 1
    batch_seconds: float = 600.0
    connect_seconds: float = 10.0
    # retro_pause_seconds: the child waits this long before each batch but
    # a run's first. The wait is the child's, not the server's: the server
    # asks for the next batch before it holds a batch's hits, so a pause of
    # the server's overlapped the child's scan and paced nothing.
    pause_seconds: float = 0.0


@dataclass(frozen=True)
class BatchRequest:
    """One batch of a run asked of the child: plain values only."""

    number: int
    # the store the child reads (the server's db_url); never in a repr
    store_url: str = field(repr=False)
    run_id: int
    since: datetime
    after_id: int
    upto_id: int
    limit: int
    pdq: PdqPolicy
    local: LocalFeatureMatching | None
    pdq_review_search: str | None
    connect_seconds: float
    # how long the child waits before scanning it (retro_pause_seconds)
    pause_seconds: float = 0.0


Batch = tuple[int, int, list[tuple[HistoryUpload, list[Match]]]]


class ProcessRetroEngine:
    """The server's side: starts the child, asks it for a run's batches and
    hands them to RetroHunt, which holds and records their hits."""

    def __init__(
        self,
        store_url: str,
        settings: ProcessSettings,
        pdq: PdqPolicy,
        local: LocalFeatureMatching | None,
        pdq_review_search: str | None,
    ) -> None:
        self.store_url = store_url
        self.settings = settings
        self._scan_values = (pdq, local, pdq_review_search)
        self._proc: subprocess.Popen | None = None
        self._number = 0
        self._ready = False  # the running child has done its imports
        self._lock = threading.Lock()  # one run's batches at a time
        self._closed = False

    @property
    def pid(self) -> int | None:
        """The child's process id while it runs (tests, `ps`)."""
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    def batches(
        self,
        run: RetroRun,
        after_id: int,
        limit: int,
        stopping: threading.Event,
        keep: Callable[[], bool],
    ) -> Iterator[Batch]:
        """The run's batches from after_id to its end, scanned by the child:
        (last id read, records read, uploads found with their hits). Ends
        early, without an error, when `stopping` is set or `keep()` (the
        run's lease, renewed while waiting) answers False. Raises ChildFailed
        when the child dies, fails or takes too long."""
        with self._lock:
            request = self._request(run, after_id, limit, pause_seconds=0.0)
            while True:
                answer = self._wait(request.number, stopping, keep)
                if answer is None:
                    return
                kind, payload = answer
                if kind == "end":
                    return
                if kind == "error":
                    raise ChildFailed(f"the retro-hunt's scanning process failed: {payload}")
                last_id = payload[0]
                # the next batch is scanned while these hits are held
                request = self._request(run, last_id, limit, self.settings.pause_seconds)
                yield payload

    def start(self) -> int:
        """Starts the child now, if it is not running (a server starts it at
        its first run; a bench, so as not to time its imports): its pid."""
        with self._lock:
            proc = self._child()
            if not self._ready:
                if self._wait(0, threading.Event(), lambda: True) != ("ready", None):
                    raise ChildFailed("the retro-hunt's scanning process did not start")
                self._ready = True
            return proc.pid

    def cpu_seconds(self) -> float:
        """CPU the running child has used (user + system), 0 without one."""
        pid = self.pid
        if pid is None:
            return 0.0
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def close(self) -> None:
        """Ends the child (the server stops): its input closed, then killed
        if it has not ended after a moment."""
        self._closed = True
        proc, self._proc = self._proc, None
        if proc is not None:
            _end(proc)

    # -- the server's side of the pipe

    def _request(
        self, run: RetroRun, after_id: int, limit: int, pause_seconds: float
    ) -> BatchRequest:
        proc = self._child()
        self._number += 1
        pdq, local, review_search = self._scan_values
        request = BatchRequest(
            self._number,
            self.store_url,
            run.id,
            run.since,
            after_id,
            run.last_history_id,
            limit,
            pdq,
            local,
            review_search,
            self.settings.connect_seconds,
            pause_seconds,
        )
        try:
            write_message(proc.stdin.fileno(), request)
        except OSError as exc:  # its end of the pipe is closed: it died
            self._lost_child(proc)
            raise ChildFailed(f"the retro-hunt's scanning process is gone ({exc})") from exc
        return request

    def _wait(
        self, number: int, stopping: threading.Event, keep: Callable[[], bool]
    ) -> tuple[str, object] | None:
        """The answer to request `number` (answers to requests given up
        before are dropped); None when stopping or the run is lost."""
        proc = self._proc
        assert proc is not None
        fd = proc.stdout.fileno()
        # a batch's time limit is its own: a child still starting (its
        # imports, at retro_nice on a busy machine) has _START_SECONDS more
        # (and its pause before the batch is not the batch's time)
        limit = (
            self.settings.batch_seconds
            + self.settings.pause_seconds
            + (0 if self._ready else _START_SECONDS)
        )
        deadline = time.monotonic() + limit
        while True:
            if stopping.is_set() or not keep():
                return None
            if time.monotonic() > deadline:
                self._lost_child(proc, kill=True)
                raise ChildFailed(
                    f"the retro-hunt's scanning process took more than {limit:g} s for a batch"
                    " (retro_process_batch_seconds): stopped"
                )
            if not readable(fd, _LOOK_SECONDS):
                continue
            try:
                # an answer begun arrives whole within a batch's time (a large
                # one is read as fast as the child writes it)
                message = read_message(fd, time.monotonic() + self.settings.batch_seconds, _SENDER)
            except Overdue:
                self._lost_child(proc, kill=True)
                raise ChildFailed(
                    "the retro-hunt's scanning process stopped midway through an answer for"
                    f" more than {self.settings.batch_seconds:g} s"
                    " (retro_process_batch_seconds): stopped"
                ) from None
            except Exception as exc:
                # an answer too large or not unpickled: its bytes left in the
                # pipe would be read as the next header, and every retry fail
                # against the same child; a new child starts in step
                self._lost_child(proc, kill=True)
                raise ChildFailed(
                    f"the retro-hunt's scanning process sent an unreadable answer: {exc}"
                ) from exc
            if message is None:
                code = proc.wait(5)
                self._lost_child(proc)
                raise ChildFailed(f"the retro-hunt's scanning process died ({exit_text(code)})")
            answered, kind, payload = message
            if answered == number:
                return kind, payload
            if kind == "ready" and not self._ready:
                self._ready = True
                deadline = time.monotonic() + self.settings.batch_seconds
            # an answer to a batch given up on (a stop, a lost run): dropped

    def _child(self) -> subprocess.Popen:
        """The child, started (again) when there is none running."""
        if self._closed:
            raise ChildFailed("the retro-hunt's scanning process is stopped (server stopping)")
        proc = self._proc
        if proc is not None and proc.poll() is None:
            return proc
        if proc is not None:
            log.warning(
                "the retro-hunt's scanning process ended (%s): started again",
                exit_text(proc.returncode),
            )
            _end(proc)
        self._proc = _start_child(self.settings)
        self._ready = False  # its "ready" comes once its imports are done
        return self._proc

    def _lost_child(self, proc: subprocess.Popen, kill: bool = False) -> None:
        if kill:
            with suppress(OSError):
                proc.kill()
        _end(proc)
        if self._proc is proc:
            self._proc = None


def _start_child(settings: ProcessSettings) -> subprocess.Popen:
    env = dict(os.environ)
    # the child imports this package from where the server did
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hashsvc.core.retro_process",
            "--parent",
            str(os.getpid()),
            "--nice",
            str(settings.nice),
            "--threads",
            str(settings.threads),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        bufsize=0,
        env=env,
        close_fds=True,
    )
    log.info("retro-hunt scanning process started (pid %d)", proc.pid)
    return proc


def _end(proc: subprocess.Popen) -> None:
    for pipe in (proc.stdin, proc.stdout):
        with suppress(OSError):
            if pipe is not None:
                pipe.close()
    try:
        proc.wait(_CHILD_EXIT_SECONDS)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# -- the child


def child_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hashsvc.core.retro_process")
    parser.add_argument("--parent", type=int, required=True)
    parser.add_argument("--nice", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    requests, answers = enter_child(args.parent, args.nice, "retro-hunt scanning process")
    # imported once niced and bound to the parent (the imports take a while)
    from hashsvc.core.retro_scan import scan_batch
    from hashsvc.core.retro_worker import close_stores, run_scanner
    from hashsvc.index.binary import search_on_this_thread
    from hashsvc.matching.policy import Policy

    search_on_this_thread()
    write_message(answers, (0, "ready", None))
    pool = None
    if args.threads > 1:
        pool = ThreadPoolExecutor(args.threads - 1, "retro-scan", search_on_this_thread)
    try:
        while (request := read_message(requests)) is not None:
            if not isinstance(request, BatchRequest):
                raise TypeError(f"not a batch request: {type(request).__name__}")
            if request.pause_seconds:
                # the cores left to Match between batches (retro_pause_seconds)
                time.sleep(request.pause_seconds)
            try:
                store, scanner, _ = run_scanner(
                    request.store_url,
                    request.run_id,
                    Policy(request.pdq),
                    request.local,
                    request.pdq_review_search,
                    request.connect_seconds,
                    pool,
                    args.threads,
                )
                batch = scan_batch(
                    store,
                    scanner,
                    request.since,
                    request.after_id,
                    request.upto_id,
                    request.limit,
                )
                answer = ("end", None) if batch is None else ("batch", batch)
            except Exception as exc:
                log.exception("retro run %d: a batch failed", request.run_id)
                answer = ("error", f"{type(exc).__name__}: {exc}")
            write_message(answers, (request.number, *answer))
    except BrokenPipeError:
        return 1  # the server is gone
    finally:
        close_stores()
        if pool is not None:
            pool.shutdown(wait=False)
    return 0


if __name__ == "__main__":
    # run as the package's module, not __main__: the requests are pickled
    # instances of hashsvc.core.retro_process's classes
    from hashsvc.core.retro_process import child_main as _main

    sys.exit(_main())
