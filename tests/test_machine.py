"""spare_core's decision (hashsvc/media/machine.py): from /proc/stat
readings written here, then from this machine's own with busy children at
nice 0 and at nice 19 (a retro-hunt's scanning child is one)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hashsvc.media.machine import (
    WINDOW_SECONDS,
    CpuTimes,
    CpuWatch,
    read_cpu_times,
    spare_between,
    spare_core,
)

# user nice system idle iowait irq softirq steal guest guest_nice, as Linux
# writes them; the aggregate line first, then one a CPU, then the rest
_STAT = """cpu  {total}
cpu0 {cpu0}
cpu1 {cpu1}
intr 114 0 9 0
ctxt 5391
btime 1765150000
procs_running 3
"""


def _write_stat(path: Path, cpu0: tuple[int, ...], cpu1: tuple[int, ...]) -> None:
    total = tuple(a + b for a, b in zip(cpu0, cpu1, strict=True))
    path.write_text(
        _STAT.format(
            total=" ".join(map(str, total)),
            cpu0=" ".join(map(str, cpu0)),
            cpu1=" ".join(map(str, cpu1)),
        )
    )


def _line(user=0, nice=0, system=0, idle=0, iowait=0, irq=0, softirq=0, steal=0):
    return (user, nice, system, idle, iowait, irq, softirq, steal, 0, 0)


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _watch(path: Path, clock: _Clock) -> CpuWatch:
    return CpuWatch(read=lambda: read_cpu_times(str(path), {0, 1}), clock=clock)


def test_columns_taken_and_free(tmp_path):
    stat = tmp_path / "stat"
    _write_stat(
        stat,
        _line(user=10, nice=20, system=30, idle=40, iowait=50, irq=1, softirq=2, steal=3),
        _line(user=100, nice=200, system=300, idle=400, iowait=500, irq=4, softirq=5, steal=6),
    )
    # taken: user system irq softirq steal; free: nice idle iowait
    assert read_cpu_times(str(stat), {0, 1}) == CpuTimes(2, 46 + 415, 110 + 1100)
    assert read_cpu_times(str(stat), {1}) == CpuTimes(1, 415, 1100)


def test_niced_work_leaves_a_core_to_spare_where_work_at_nice_0_does_not(tmp_path):
    stat, clock = tmp_path / "stat", _Clock()
    watch = _watch(stat, clock)
    _write_stat(stat, _line(), _line())
    assert watch.spare() is False  # no window yet
    # both cores busy for 50 ticks: one with Match (nice 0), one with a hunt
    # (nice 19): the hunt's core is free
    clock.now += WINDOW_SECONDS
    _write_stat(stat, _line(user=50), _line(nice=50))
    assert watch.spare() is True
    # then both with work at nice 0 (and system time counts as taken)
    clock.now += WINDOW_SECONDS
    _write_stat(stat, _line(user=100), _line(nice=50, user=30, system=20))
    assert watch.spare() is False
    # then 0.6 of a core idle (the second core's 30 ticks of 50): spare
    # (FREE_CORES 0.5)
    clock.now += WINDOW_SECONDS
    _write_stat(stat, _line(user=150), _line(nice=50, user=50, system=20, idle=30))
    assert watch.spare() is True
    # 0.4 of a core idle or niced (20 ticks of 100) is not
    clock.now += WINDOW_SECONDS
    _write_stat(stat, _line(user=195, idle=5), _line(nice=60, user=85, system=20, idle=35))
    assert watch.spare() is False


def test_a_decision_stands_for_its_window(tmp_path):
    stat, clock = tmp_path / "stat", _Clock()
    watch = _watch(stat, clock)
    _write_stat(stat, _line(), _line())
    watch.spare()
    clock.now += WINDOW_SECONDS
    _write_stat(stat, _line(idle=50), _line(idle=50))
    assert watch.spare() is True
    _write_stat(stat, _line(idle=50, user=500), _line(idle=50, user=500))
    clock.now += WINDOW_SECONDS / 2
    assert watch.spare() is True  # not read again within the window
    clock.now += WINDOW_SECONDS / 2
    assert watch.spare() is False


def test_unreadable_or_garbled_is_no_core_to_spare(tmp_path):
    stat, clock = tmp_path / "stat", _Clock()
    missing = CpuWatch(read=lambda: read_cpu_times(str(tmp_path / "none"), {0, 1}), clock=clock)
    for _ in range(3):
        assert missing.spare() is False
        clock.now += WINDOW_SECONDS
    garbled = [
        "cpu0 1 2 three 4 5 6 7 8\ncpu1 1 2 3 4 5 6 7 8\n",  # not a number
        "cpu0 1 2 3 4\ncpu1 1 2 3 4\n",  # too few columns
        "cpu0 1 2 3 4 5 6 7 8\n",  # a CPU this process may run on is missing
        "",
        "\x00\xff garbage",
    ]
    for text in garbled:
        stat.write_text(text)
        assert read_cpu_times(str(stat), {0, 1}) is None, text
    # a good reading, then a garbled one, then good ones: False until two
    # good readings a window apart
    watch = _watch(stat, clock)
    _write_stat(stat, _line(), _line())
    watch.spare()
    for text in garbled:
        clock.now += WINDOW_SECONDS
        stat.write_text(text)
        assert watch.spare() is False, text
    clock.now += WINDOW_SECONDS
    _write_stat(stat, _line(idle=100), _line(idle=100))
    assert watch.spare() is False
    clock.now += WINDOW_SECONDS
    _write_stat(stat, _line(idle=200), _line(idle=200))
    assert watch.spare() is True


def test_readings_that_do_not_follow_each_other_are_no_core_to_spare():
    assert spare_between(CpuTimes(2, 0, 0), CpuTimes(2, 0, 100)) is True
    assert spare_between(CpuTimes(2, 0, 0), CpuTimes(2, 0, 0)) is False  # no tick between
    assert spare_between(CpuTimes(2, 50, 0), CpuTimes(2, 40, 100)) is False  # went back
    assert spare_between(CpuTimes(2, 0, 0), CpuTimes(3, 0, 100)) is False  # CPUs changed
    # one CPU: a second thread would only wait for the first's core
    assert spare_between(CpuTimes(1, 0, 0), CpuTimes(1, 0, 100)) is False


_SPINNER = (
    "import os, sys, time\n"
    "os.nice(int(sys.argv[1]))\n"
    "deadline = time.monotonic() + 20\n"  # ends by itself if the test cannot stop it
    "print('spinning', flush=True)\n"
    "while time.monotonic() < deadline:\n"
    "    pass\n"
)


def _user_ticks(pid: int) -> int:
    # utime (field 14), after the command's parenthesis: a niced task's user
    # time is counted in the nice column, its system time (none here: the
    # loop makes no system call) in system
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return int(fields[11])


@contextmanager
def _spinning(nice: int) -> Iterator[list[subprocess.Popen]]:
    """One child spinning at `nice` a CPU this process may run on, stopped
    at the end."""
    children: list[subprocess.Popen] = []
    try:
        for _ in os.sched_getaffinity(0):
            children.append(
                subprocess.Popen(
                    [sys.executable, "-c", _SPINNER, str(nice)], stdout=subprocess.PIPE, text=True
                )
            )
        for child in children:
            assert child.stdout.readline() == "spinning\n"
        yield children
    finally:
        for child in children:
            child.kill()
            child.wait()
            child.stdout.close()


def _spin(nice: int) -> tuple[CpuTimes, CpuTimes, int]:
    """Readings before and after 0.5 s of children spinning at `nice`, and
    the children's user-time ticks between."""
    with _spinning(nice) as children:
        spun = [_user_ticks(child.pid) for child in children]
        before = read_cpu_times()
        time.sleep(0.5)
        after = read_cpu_times()
        spun = sum(
            _user_ticks(child.pid) - ticks for child, ticks in zip(children, spun, strict=True)
        )
    assert before is not None and after is not None
    return before, after, spun


def test_a_niced_busy_child_is_counted_free_and_one_at_nice_0_taken():
    """The children spin on every CPU this process may run on, so little of
    their CPUs is idle: with niced children what is free is their time (at
    least; the machine's other work may take some of it), at nice 0 it is
    taken and there is no core to spare. How much the niced children get
    depends on the machine's other work, so whether a core is spare beside
    them is asserted from readings written above, not here."""
    before, after, spun = _spin(19)
    # the kernel counts both by ticks, the children's from their run time:
    # a tick or two apart per child and reading
    assert after.free - before.free >= 0.9 * spun - 4
    before, after, spun = _spin(0)
    assert after.taken - before.taken >= 0.9 * spun - 4
    assert spun >= 10  # they ran (a twentieth of a core-second at least)
    assert spare_between(before, after) is False


def test_spare_core_is_false_beside_work_at_nice_0_on_every_core():
    with _spinning(0):
        spare_core()  # the window's start
        time.sleep(WINDOW_SECONDS * 2)
        assert spare_core() is False
