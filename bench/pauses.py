"""What a slow Match waits on, measured from the bench (the server runs in
the bench's process): the core's and store's methods are wrapped on their
instances, so the server's own code carries no timing.

Each Match is cut into phases (hashing and matching; its history record:
the wait for the write's turn, its statements, its commit), and each phase's
wall time into the thread's CPU, its wait for a core (the kernel's run-queue
time, /proc/thread-self/schedstat) and the rest: blocked (on the GIL, a
lock, a socket). On SQLite the writer lock's holders are kept too, so a
record that waited for its turn names the writes it waited for.
"""

from __future__ import annotations

import os
import threading
import time
from contextlib import contextmanager

PHASES = ("hash", "record", "turn", "statements", "commit")


def _thread_clock() -> tuple[float, float, float]:
    """(wall, this thread's CPU, its run-queue wait), in seconds."""
    try:
        with open("/proc/thread-self/schedstat") as f:
            runq = int(f.read().split()[1]) / 1e9
    except OSError:  # not Linux: no run-queue figure
        runq = 0.0
    return time.perf_counter(), time.thread_time(), runq


class _Phase:
    __slots__ = ("wall", "cpu", "runq")

    def __init__(self, start, end) -> None:
        self.wall = end[0] - start[0]
        self.cpu = end[1] - start[1]
        self.runq = end[2] - start[2]

    @property
    def blocked(self) -> float:
        return max(0.0, self.wall - self.cpu - self.runq)

    def text(self) -> str:
        ms = 1000
        return (
            f"{self.wall * ms:6.1f} (cpu {self.cpu * ms:5.1f}, core {self.runq * ms:5.1f},"
            f" blocked {self.blocked * ms:5.1f})"
        )


class Breakdown:
    """Installed on a running server's core and store; `report()` prints the
    slowest Matches' phases and what the writer lock was held by meanwhile."""

    def __init__(self, core) -> None:
        self.core, self.store = core, core.store
        self._local = threading.local()
        self.matches: list[dict] = []  # one a Match: start, phases, wall
        # SQLite writer lock: who, from, to, and its phase (CPU, core, blocked)
        self.holds: list[tuple[str, float, float, _Phase]] = []
        # a thread that sleeps 1 ms at a time: how late it wakes, less its
        # wait for a core, is its wait for the GIL (what any thread of the
        # server waits after each socket read or sleep)
        self.probes: list[tuple[float, float, float]] = []  # at, late, of which waiting for a core
        self._stopping = threading.Event()
        self._probe = threading.Thread(target=self._gil_probe, daemon=True, name="gil-probe")
        self._install()
        self._probe.start()

    def close(self) -> None:
        self._stopping.set()
        self._probe.join()

    def thread_cpu(self) -> dict[str, float]:
        """CPU seconds of each live thread of the process so far, by name
        (threads of one name summed)."""
        out: dict[str, float] = {}
        tick = os.sysconf("SC_CLK_TCK")
        for thread in threading.enumerate():
            try:
                with open(f"/proc/self/task/{thread.native_id}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            name = thread.name.rstrip("0123456789").rstrip("_-")
            out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tick
        return out

    def _gil_probe(self) -> None:
        while not self._stopping.is_set():
            start = _thread_clock()
            time.sleep(0.001)
            end = _thread_clock()
            self.probes.append((start[0], end[0] - start[0] - 0.001, end[2] - start[2]))

    def _phase(self, name: str, start) -> None:
        phases = getattr(self._local, "phases", None)
        if phases is not None:
            phases[name] = _Phase(start, _thread_clock())

    def _install(self) -> None:
        core, store = self.core, self.store
        match, hash_and_match, record = core.match, core._hash_and_match, core._record
        history_write = store._history_write

        def timed_match(*args, **kwargs):
            self._local.phases = phases = {}
            start = _thread_clock()
            try:
                return match(*args, **kwargs)
            finally:
                end = _thread_clock()
                self._local.phases = None
                self.matches.append({"at": start[0], "all": _Phase(start, end), **phases})

        def timed(name, method):
            def call(*args, **kwargs):
                start = _thread_clock()
                try:
                    return method(*args, **kwargs)
                finally:
                    self._phase(name, start)

            return call

        @contextmanager
        def timed_history_write():
            start = _thread_clock()
            context = history_write()
            cur = context.__enter__()
            self._phase("turn", start)
            phases = getattr(self._local, "phases", None)
            if phases is not None:
                phases["waited"] = (start[0], time.perf_counter())
            start = _thread_clock()
            try:
                yield cur
            except BaseException as exc:
                if not context.__exit__(type(exc), exc, exc.__traceback__):
                    raise
            else:
                self._phase("statements", start)
                start = _thread_clock()
                context.__exit__(None, None, None)
                self._phase("commit", start)

        core.match = timed_match
        core._hash_and_match = timed("hash", hash_and_match)
        core._record = timed("record", record)
        store._history_write = timed_history_write
        write_turn = getattr(store, "_write_turn", None)
        if write_turn is not None:  # SQLite: who holds the writer lock, when

            @contextmanager
            def held_turn(turn):
                with write_turn(turn) as cur:
                    start = _thread_clock()
                    yield cur
                # the commit is in the hold: it ends when the lock is released
                end = _thread_clock()
                name = threading.current_thread().name
                self.holds.append((name, start[0], end[0], _Phase(start, end)))

            store._write_turn = held_turn

    def report(self, since: float, until: float, slowest: int = 8) -> None:
        """The slowest Matches that started between `since` and `until`
        (perf_counter), and the writer lock's holds meanwhile."""
        matches = [m for m in self.matches if since <= m["at"] <= until]
        holds = [h for h in self.holds if since <= h[1] <= until]
        if not matches:
            return
        matches.sort(key=lambda m: m["all"].wall, reverse=True)
        totals = {name: 0.0 for name in ("cpu", "runq", "blocked")}
        top = matches[:slowest]
        print(f"  the {len(top)} slowest of {len(matches)} Matches (server side, ms):")
        for m in top:
            whole = m["all"]
            totals["cpu"] += whole.cpu
            totals["runq"] += whole.runq
            totals["blocked"] += whole.blocked
            print(f"    match {whole.text()}")
            for name in PHASES:
                if name in m:
                    print(f"      {name:10s} {m[name].text()}")
            for who, _, _, held in self._holders(m):
                print(f"        waited on {who} holding the writer lock {held.text()}")
        wall = sum(m["all"].wall for m in top)
        print(
            f"  their wall time: {totals['cpu'] / wall:.0%} CPU, {totals['runq'] / wall:.0%}"
            f" waiting for a core, {totals['blocked'] / wall:.0%} blocked (GIL, locks, sockets)"
        )
        probes = [p for p in self.probes if since <= p[0] <= until]
        if probes:
            gil = sorted(max(0.0, late - core) for _, late, core in probes)
            late = sorted(late for _, late, _ in probes)
            ms = 1000
            print(
                f"  a 1 ms sleep woke late ({len(probes)} sleeps):"
                f" p50 {late[len(late) // 2] * ms:.1f},"
                f" p99 {late[int(len(late) * 0.99)] * ms:.1f}, max {late[-1] * ms:.1f} ms; of which"
                f" waiting for the GIL (not a core): p50 {gil[len(gil) // 2] * ms:.1f},"
                f" p99 {gil[int(len(gil) * 0.99)] * ms:.1f}, max {gil[-1] * ms:.1f} ms"
            )
        pool = getattr(self.store, "_pool", None)
        if pool is not None:  # PostgreSQL: did a Match wait for a connection?
            stats = pool.get_stats()
            print(
                f"  connection pool (since the server started): {stats.get('pool_size')}"
                f" connections, {stats.get('requests_num', 0)} requests,"
                f" {stats.get('requests_queued', 0)} waited for one,"
                f" {stats.get('requests_wait_ms', 0)} ms waited in all"
            )
        if holds:
            held = sorted((end - start for _, start, end, _ in holds), reverse=True)
            by_thread: dict[str, float] = {}
            for who, start, end, _ in holds:
                by_thread[who] = max(by_thread.get(who, 0.0), end - start)
            longest = ", ".join(f"{who} {s * 1000:.0f}" for who, s in sorted(by_thread.items()))
            print(
                f"  writer lock holds: {len(held)}, p50 {held[len(held) // 2] * 1000:.1f} ms,"
                f" max {held[0] * 1000:.1f} ms; longest by thread (ms): {longest}"
            )

    def _holders(self, m: dict) -> list[tuple]:
        """The holds of the writer lock that overlap the Match's wait for
        its turn (none known on PostgreSQL)."""
        if "waited" not in m or not self.holds:
            return []
        waited_from, waited_to = m["waited"]
        return [
            hold
            for hold in self.holds
            if hold[1] < waited_to and hold[2] > waited_from and (hold[2] - hold[1]) > 0.005
        ][:4]
