"""Processes that tests and benches start (`hashsvc serve`, a loader, a
fetch): each dies with the process that started it, and each is signalled
only while it is still the process that was started.

Pids wrap (at 32,768 on the CI machines, within a day of tests): a pid or a
process group id kept after its process was reaped can name an unrelated
process. So a process is remembered with its start time and group
(`ProcessMark`), and a group is signalled only while its leader is still
unreaped (a zombie keeps its pid, so no other process or group can take it).

`dying_with_parent` runs a command under `setpriv --pdeathsig KILL`, which
asks Linux to SIGKILL it when the thread that started it ends: a test run
stopped by SIGTERM or SIGKILL runs no teardown, and its servers kept
running before. A server's hashing workers leave when their server is
gone (hashsvc/media/hashing.py). Start such a process from a thread
that outlives it (pytest's main thread)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass


def dying_with_parent(args: list) -> list:
    """`args` run so that Linux SIGKILLs the process when the thread that
    started it ends (util-linux's setpriv sets the parent-death signal, then
    execs `args`: the same pid). Not a preexec_fn: one makes subprocess
    fork() instead of vfork(), which ran gRPC's fork handlers in the child
    while the test's own gRPC server was busy, and the child hung before exec
    ("Other threads are currently calling into gRPC, skipping fork()
    handlers": two CI tests hung 4 and 11 minutes)."""
    return ["setpriv", "--pdeathsig", "KILL", "--", *args]


@dataclass(frozen=True)
class ProcessMark:
    """A process as it was seen: pid, process group and start time (clock
    ticks after boot), which together name it even once its pid was reused."""

    pid: int
    pgid: int
    start: int


def _stat(pid: int) -> tuple[str, int, int] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # after the name: state, ppid, pgrp, session, ... starttime is field 22 of the line
    return fields[0], int(fields[2]), int(fields[19])


def mark(pid: int) -> ProcessMark | None:
    """The process now running as `pid` (None when there is none)."""
    stat = _stat(pid)
    if stat is None or stat[0] == "Z":
        return None
    return ProcessMark(pid, stat[1], stat[2])


def children(pid: int) -> list[int]:
    """The pids of a process's children and theirs, as they are now."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            kids = [int(x) for x in f.read().split()]
    except OSError:
        return []
    return kids + [g for k in kids for g in children(k)]


def alive(process: ProcessMark) -> bool:
    """Still running, and still the same process in the same group."""
    return mark(process.pid) == process


def kill(process: ProcessMark, sig: int = signal.SIGKILL) -> bool:
    """Signal the process only if it is still the one marked (same start time,
    same group); returns whether it was signalled. A pidfd holds the process
    while it is checked, so the pid cannot change hands in between."""
    try:
        pidfd = os.pidfd_open(process.pid)
    except ProcessLookupError:
        return False
    try:
        if not alive(process):
            return False
        signal.pidfd_send_signal(pidfd, sig)
        return True
    except ProcessLookupError:
        return False
    finally:
        os.close(pidfd)


def _wait_unreaped(proc: subprocess.Popen, seconds: float) -> bool:
    """Wait until `proc` has exited, leaving it a zombie (its pid and group id
    stay taken); False if it still runs after `seconds`."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            if os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT | os.WNOHANG) is not None:
                return True
        except ChildProcessError:
            return True  # reaped by someone else
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    if proc.returncode is not None:
        return  # reaped: its group id may be another's now
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def stop_group(proc: subprocess.Popen, grace: float = 5.0) -> int | None:
    """Stop a process started in a session of its own (start_new_session) and
    everything in its group: SIGTERM, SIGKILL after `grace` seconds, then
    SIGKILL to what is left of the group (a killed server's workers) while the
    leader is an unreaped zombie, and only then reap it. A process reaped
    before (its returncode known) is left alone: its group id may be taken."""
    stop_groups([proc], grace)
    return proc.returncode


def stop_groups(procs: list[subprocess.Popen], grace: float = 5.0) -> None:
    """stop_group for several at once: SIGTERM to all, then `grace` seconds
    for all of them together."""
    procs = [p for p in procs if p.returncode is None]
    for proc in procs:
        _signal_group(proc, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for proc in procs:
        if not _wait_unreaped(proc, max(0.0, deadline - time.monotonic())):
            _signal_group(proc, signal.SIGKILL)
            _wait_unreaped(proc, 10)
        _signal_group(proc, signal.SIGKILL)  # workers left behind by a killed leader
        proc.wait(timeout=10)
