"""A server's child process and the pipes between them: the retro-hunt's
scanning child (hashsvc/core/retro_process.py) and the partner feeds'
fetching child (hashsvc/exchange/fetch_process.py) start and talk alike.

Messages are pickled objects, each after its length (8 bytes). Only the
server and its own child write them (the child is started with the server's
code, pipes that no one else holds), so unpickling trusts the sender; the
length is still bounded, so a corrupt one is refused, not allocated."""

from __future__ import annotations

import ctypes
import logging
import os
import pickle
import select
import signal
import struct
import sys
import time
from contextlib import suppress

_HEADER = struct.Struct("!Q")
# What a message may hold at most (a retro batch's candidate uploads' records).
MAX_MESSAGE_BYTES = 1 << 30
_PR_SET_PDEATHSIG = 1


class ChildFailed(RuntimeError):
    """The child died, answered an error, sent what cannot be a message, or
    took too long: what it was asked for is not done."""


class Overdue(Exception):
    """A message did not arrive whole by its deadline (its sender stalled midway)."""


def write_message(fd: int, message: object) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    view = memoryview(_HEADER.pack(len(data)) + data)
    while view:
        view = view[os.write(fd, view) :]


def readable(fd: int, seconds: float) -> bool:
    """Whether the pipe `fd` has something to read (or its writer is gone)
    within `seconds`. poll, not select(): select() refuses a descriptor
    numbered 1,024 or more, which a server holding many connections gives
    a child's pipe."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(max(seconds, 0.0) * 1000.0))


def _read_exact(fd: int, size: int, deadline: float | None = None) -> bytes | None:
    parts, left = [], size
    while left:
        # the server's side reads within a deadline: once a message has begun,
        # a child stalled midway through it (stopped, frozen) must not hold
        # the server's thread, and its work, for as long as it stalls
        if deadline is not None:
            wait = deadline - time.monotonic()
            if wait <= 0 or not readable(fd, wait):
                raise Overdue
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            return None  # the other end is gone
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)


def read_message(fd: int, deadline: float | None = None, sender: str = "a child") -> object | None:
    """The next message, or None at the end of the pipe; raises Overdue when
    it has not arrived whole by `deadline` (time.monotonic; None: no limit),
    ChildFailed (naming `sender`) for a length over MAX_MESSAGE_BYTES."""
    header = _read_exact(fd, _HEADER.size, deadline)
    if header is None:
        return None
    (size,) = _HEADER.unpack(header)
    if size > MAX_MESSAGE_BYTES:
        raise ChildFailed(f"a message of {size} bytes from {sender}")
    data = _read_exact(fd, size, deadline)
    if data is None:
        return None
    return pickle.loads(data)


def exit_text(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        return f"signal {-code}"
    return f"exit status {code}"


# -- the child's side


def enter_child(parent: int, nice: int, name: str) -> tuple[int, int]:
    """Makes this process the server's child: it ends with the server, runs
    at `nice`, logs warnings as `name` to the server's log (stderr). Returns
    the descriptors its requests come on and its answers go to; anything a
    library prints goes to stderr, not into the answers."""
    _die_with_parent(parent)
    _lower_every_thread(nice)
    logging.basicConfig(level=logging.WARNING, format=f"{name}: %(levelname)s %(message)s")
    requests, answers = sys.stdin.buffer.fileno(), os.dup(sys.stdout.buffer.fileno())
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    return requests, answers


def _die_with_parent(parent: int) -> None:
    """Ends this process when the server does, even killed with -9: the
    kernel signals it (PR_SET_PDEATHSIG, Linux). The signal also comes when
    the server's thread that started it ends; then the server is still its
    parent and it goes on."""

    def parent_gone(signum, frame) -> None:
        if os.getppid() != parent:
            os._exit(1)

    signal.signal(signal.SIGUSR1, parent_gone)
    if sys.platform.startswith("linux"):
        with suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGUSR1, 0, 0, 0)
    if os.getppid() != parent:  # it died before the signal was asked for
        os._exit(1)


def _lower_every_thread(nice: int) -> None:
    """This process at `nice`: each thread running now, one by one (Linux
    sets it per thread; a thread an import started, OpenBLAS's pool at
    numpy's, stayed at nice 0), and so every thread started after (they
    inherit it)."""
    if not hasattr(os, "setpriority"):
        return
    try:
        tasks = [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        tasks = [0]  # no /proc: this thread, and the threads it starts
    for task in tasks:
        # (started from a niced thread of the server, it may be there already)
        with suppress(OSError):
            now = os.getpriority(os.PRIO_PROCESS, task)
            os.setpriority(os.PRIO_PROCESS, task, min(19, max(now, nice)))
