"""What a process other than the server scans a retro-hunt run with (a Dask
worker, hashsvc/core/retro_dask.py; the server's scanning child,
hashsvc/core/retro_process.py): the store opened from its URL and the run's
scanner, kept between calls (a run's batches or partitions arrive one after
another)."""

from __future__ import annotations

import threading
from concurrent.futures import Executor

from hashdb import RetroRun, Store, open_store
from hashsvc.core.retro_scan import RetroScanner, hunting_entries
from hashsvc.matching.policy import LocalFeatureMatching, Policy

# One store and one run's scanner at a time: a worker shared by several
# servers (stores) does not pile up database connections.
_lock = threading.Lock()
_stores: dict[str, Store] = {}
_scanners: dict[tuple[str, int], RetroScanner] = {}


def run_scanner(
    store_url: str,
    run_id: int,
    policy: Policy,
    local: LocalFeatureMatching | None,
    pdq_review_search: str | None,
    connect_seconds: float,
    pool: Executor | None = None,
    parts: int = 1,
) -> tuple[Store, RetroScanner, RetroRun]:
    """The store at store_url (opened once), the run as it is stored, and
    its scanner (built once a run, of its entries that may still hunt)."""
    with _lock:
        store = _stores.get(store_url)
        if store is None:
            for other in _stores.values():
                other.close()
            _stores.clear()
            _scanners.clear()
            # no history key: a worker reads the history, it never writes it
            store = open_store(store_url, connect_timeout=connect_seconds)
            _stores[store_url] = store
        run = store.get_retro_run(run_id)
        if run is None:
            raise LookupError(f"retro run {run_id} is not in the store")
        key = (store_url, run_id)
        scanner = _scanners.get(key)
        if scanner is None:
            entries = _hunting_entries(store, run)
            scanner = RetroScanner(
                entries, store, policy, local, pdq_review_search, pool=pool, parts=parts
            )
            _scanners.clear()  # one run's scanner at a time
            _scanners[key] = scanner
        return store, scanner, run


def close_stores() -> None:
    with _lock:
        for store in _stores.values():
            store.close()
        _stores.clear()
        _scanners.clear()


def _hunting_entries(store: Store, run: RetroRun) -> list:
    """The run's entries that may hunt (the server holds each hit to that
    again), read from the store: a worker has no live index."""
    sets: dict[int, object] = {}

    def set_of(set_id: int):
        if set_id not in sets:
            sets[set_id] = store.get_set_by_id(set_id)
        return sets[set_id]

    entries = store.get_entries(run.entry_ids, with_signals=True).values()
    return hunting_entries(entries, set_of)
