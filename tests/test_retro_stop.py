"""A Core's retro-hunt threads end with it: close() stops the hunting
thread and waits for it (bounded by retro_stop_seconds), a scan stops
between steps and gives its run back at its checkpoint, and a Core closed
while it was still starting starts no thread afterwards (tests' logs showed
a hunting thread loading its index after its Core was closed)."""

from __future__ import annotations

import hashlib
import threading
import time

from hashdb import open_store
from hashsvc.base.signals import Signal
from hashsvc.core import retro
from hashsvc.core.config import Config
from hashsvc.core.core import Core
from tests.test_retro import _history_upload

KNOWN = bytes(range(32))
NEAR = bytes([KNOWN[0] ^ 0x03]) + KNOWN[1:]
RETRO_THREADS = {"retro", "retro-pending"}
STARTED_THREADS = {*RETRO_THREADS, "changes", "flood"}


def _new_threads(before: set[threading.Thread], names: set[str]) -> list[str]:
    return [t.name for t in threading.enumerate() if t not in before and t.name in names]


def test_a_core_closed_while_starting_starts_no_thread(store_url, monkeypatch):
    core = Core.open(Config(db_url=store_url, retro_poll_seconds=0.2), hash_in_process=True)
    loading, loaded = threading.Event(), threading.Event()

    def index_loads_until_told() -> None:
        loading.set()
        assert loaded.wait(30)

    monkeypatch.setattr(core.live, "load", index_loads_until_told)
    ran = []  # the threads exit at once on a stopped core, but touch its store first
    for name in ("_work", "_follow_pending", "_poll_changes", "_flush_floods"):
        owner = retro.RetroHunt if name in ("_work", "_follow_pending") else Core
        real = getattr(owner, name)
        monkeypatch.setattr(
            owner, name, lambda self, _name=name, _real=real: (ran.append(_name), _real(self))
        )
    before = set(threading.enumerate())
    starting = threading.Thread(target=core.start, name="starting")
    starting.start()
    try:
        assert loading.wait(30)
        core.close()  # e.g. SIGTERM while the index loads
    finally:
        loaded.set()
        starting.join(30)
    assert not starting.is_alive()
    assert ran == [] and _new_threads(before, STARTED_THREADS) == []


def test_close_waits_for_the_hunt_which_gives_its_run_back(store_url, make_core, monkeypatch):
    """close() while the hunting thread builds its scanner (the index of the
    new entries, the slow part of a large run): close waits for it, the scan
    stops before its first step and the run is queued again, unscanned."""
    building, built = threading.Event(), threading.Event()
    real_scanner = retro.RetroScanner

    def slow_scanner(*args, **kwargs):
        building.set()
        assert built.wait(30)
        return real_scanner(*args, **kwargs)

    monkeypatch.setattr(retro, "RetroScanner", slow_scanner)
    before = set(threading.enumerate())
    core = make_core(store_url, retro_batch_records=50, retro_poll_seconds=0.2)
    for i in range(200):
        value = NEAR if i % 20 == 0 else hashlib.sha256(b"%d" % i).digest()
        _history_upload(core.store, Signal("pdq", value, 90), 0.5, request_id=f"up-{i}")
    core.curation.create_set("s")
    core.curation.add_entry("s", "e", {}, "op", signal=("pdq", KNOWN.hex(), None))
    assert building.wait(30)
    closing = threading.Thread(target=make_core.stop, args=(core,), name="closing")
    closing.start()
    try:
        time.sleep(0.3)
        assert closing.is_alive()  # waiting for the hunting thread
    finally:
        built.set()
        closing.join(30)
    assert not closing.is_alive()
    assert _new_threads(before, RETRO_THREADS) == []
    probe = open_store(store_url)
    try:
        (run,) = probe.list_retro_runs()
    finally:
        probe.close()
    assert (run.state, run.scanned, run.hits, run.lease_owner) == ("queued", 0, 0, None)


def test_a_scan_stops_between_hits_when_asked(store_url, make_core, monkeypatch, retro_engine):
    """Stopping while a step's hits are held: the rest of the step is left
    (not checkpointed) and the run is given back; the next server holds the
    rest, and no hit is reported twice."""
    settings = {
        "retro_batch_records": 400,
        "retro_poll_seconds": 0.2,
        "retro_engine": retro_engine,
    }
    held = []
    real_hold = retro.RetroHunt._hold

    def hold_then_stop(self, *args):
        real_hold(self, *args)
        held.append(1)
        if len(held) == 3:
            self._stopping.set()  # as stop() does, mid-step

    monkeypatch.setattr(retro.RetroHunt, "_hold", hold_then_stop)
    core = make_core(store_url, **settings)
    for i in range(400):
        value = NEAR if i % 20 == 0 else hashlib.sha256(b"%d" % i).digest()
        _history_upload(core.store, Signal("pdq", value, 90), 0.5, request_id=f"up-{i}")
    core.curation.create_set("s")
    core.curation.add_entry("s", "e", {}, "op", signal=("pdq", KNOWN.hex(), None))
    deadline = time.monotonic() + 30
    while core.retro._thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    (run,) = core.store.list_retro_runs()
    assert (run.state, run.scanned, run.hits) == ("queued", 0, 3)
    make_core.stop(core)
    monkeypatch.setattr(retro.RetroHunt, "_hold", real_hold)
    again = make_core(store_url, **settings)
    deadline = time.monotonic() + 90  # a scanning child's start on a loaded machine
    while again.store.get_retro_run(run.id).state != "done" and time.monotonic() < deadline:
        time.sleep(0.05)
    done = again.store.get_retro_run(run.id)
    assert (done.state, done.scanned, done.hits) == ("done", 400, 20)
    assert len(again.store.retro_matches_of(run.id)) == 20
