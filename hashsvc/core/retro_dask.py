"""Retro-hunt runs on Dask's distributed scheduler (retro_engine = "dask";
issue 20, Scale): past one machine, a run is a partitioned job over time
ranges of the history, on an engine that already schedules, retries and
places tasks, instead of a scheduler of our own.

The coordinator is the server's hunting thread (RetroHunt.scan). It cuts the
run's history into partitions (ranges of history ids cut where
retro_partition_seconds boundaries fall), writes them to the store, and
submits one task per partition not done yet. A task (scan_partition, on a
worker) opens the store from its URL, builds the run's scanner (the same
RetroScanner the in-process path uses), scans its range with it and returns
its hits only: a few uploads, not the history. The coordinator holds and
records each hit exactly as the in-process path does (RetroHunt._hold ->
record_retro_match: unique per entry and request), then marks the partition
done and moves the run's checkpoint over the partitions done in a row.

What survives what:
- a worker killed mid-task: the scheduler runs its task again elsewhere
  (Dask's allowed-failures); a task that raised is retried
  retro_task_retries times. Tasks only read, so a second try is harmless.
- the coordinator killed: the run stays running under its lease; the next
  server to claim it resubmits only the partitions not done (a partition
  whose hits were recorded but not its end is scanned again, and its hits
  are not reported again: they are unique in the store).
- the scheduler unreachable: the run fails with the reason, its partitions
  done kept; `hashsvc retro run --resume ID` queues it again.

Workers are given the store URL and plain settings, never the history key
or a caller's token; the URL is left out of every repr (Dask logs a failed
task's arguments). For a URL with a password use a tls:// scheduler, or
leave the password out and let each worker's libpq find it (PGPASSFILE).
"""

from __future__ import annotations

import logging
import math
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from hashdb import HistoryUpload, RetroPartition, RetroRun, Store
from hashdb.times import to_micros
from hashsvc.base.errors import Unavailable
from hashsvc.core.retro_scan import RetroScanner, RunLease, scan_batch
from hashsvc.core.retro_worker import run_scanner
from hashsvc.matching.matcher import Match
from hashsvc.matching.policy import LocalFeatureMatching, PdqPolicy, Policy

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DaskSettings:
    """Where and how a run's partitions are scanned (Config retro_*)."""

    # "tcp://host:8786" or "tls://..."; empty: a local cluster of `workers`
    # processes, started by the server when its first run needs it.
    scheduler_address: str = ""
    workers: int = 2
    # Each partition covers this much history time (widened so that a run
    # has at most max_partitions).
    partition_seconds: float = 3600.0
    max_partitions: int = 1000
    # Reaching the scheduler: past this the run fails (resumable).
    connect_seconds: float = 10.0
    # A task that raised runs again this many times (a worker that died is
    # Dask's own retry: distributed.scheduler.allowed-failures).
    task_retries: int = 2


@dataclass(frozen=True)
class PartitionScan:
    """What a task is given besides its partition: plain values only."""

    # The store the workers read (the server's db_url). Never in a repr: a
    # failed task's arguments are logged by Dask.
    store_url: str = field(repr=False)
    run_id: int
    pdq: PdqPolicy
    local: LocalFeatureMatching | None
    pdq_review_search: str | None
    batch_records: int
    connect_seconds: float


@dataclass(frozen=True)
class PartitionHits:
    """A task's answer: how many records it read, and the uploads it found
    with their hits (BLOCK or REVIEW, before allow lists and verdicts)."""

    number: int
    scanned: int
    hits: list[tuple[HistoryUpload, list[Match]]]


def plan_partitions(
    store: Store, run: RetroRun, settings: DaskSettings, now: datetime | None = None
) -> list[RetroPartition]:
    """The run's partitions, planned once (a coordinator that restarts finds
    them in the store): ranges of history ids from the run's checkpoint to
    its end, cut at the first record of each time boundary. Ids are the
    order the run walks; times only say where to cut, so the ranges tile the
    run exactly even where records' times are slightly out of id order."""
    planned = store.retro_partitions(run.id)
    if planned:
        return planned
    # from the first upload to scan (a window wider than the history is cut
    # where there is history, not in the years before it)
    first = store.history_uploads(run.checkpoint, run.last_history_id, 1)
    start = max(run.since, first[0].time) if first else run.since
    end = now or datetime.now(UTC)
    span = max(0.0, (end - start).total_seconds())
    width = max(settings.partition_seconds, span / settings.max_partitions)
    boundaries = [
        to_micros(start + timedelta(seconds=width * k))
        for k in range(1, max(1, math.ceil(span / width)))
    ]
    inner = store.history_time_cuts(run.checkpoint, run.last_history_id, boundaries)
    cuts = [run.checkpoint, *inner, run.last_history_id]
    ranges = [(a, b) for a, b in zip(cuts, cuts[1:], strict=False) if b > a]
    store.plan_retro_partitions(run.id, ranges)
    return store.retro_partitions(run.id)


def scan_range(
    store: Store, scanner: RetroScanner, since: datetime, after_id: int, upto_id: int, batch: int
) -> Iterator[tuple[int, int, list[tuple[HistoryUpload, list[Match]]]]]:
    """The history records after_id < id <= upto_id through the scanner, a
    batch at a time (retro_scan.scan_batch, as the in-process hunt): (last id
    read, records read, uploads found with their hits) per batch."""
    checkpoint = after_id
    while (found := scan_batch(store, scanner, since, checkpoint, upto_id, batch)) is not None:
        checkpoint = found[0]
        yield found


# -- on a worker


def scan_partition(scan: PartitionScan, partition: RetroPartition) -> PartitionHits:
    """One task: the partition's records through the run's scanner."""
    store, scanner, run = _worker_scanner(scan)
    scanned, found = 0, []
    for _, read, hits in scan_range(
        store, scanner, run.since, partition.after_id, partition.upto_id, scan.batch_records
    ):
        scanned += read
        found += hits
    return PartitionHits(partition.number, scanned, found)


def _worker_scanner(scan: PartitionScan) -> tuple[Store, RetroScanner, RetroRun]:
    return run_scanner(
        scan.store_url,
        scan.run_id,
        Policy(scan.pdq),
        scan.local,
        scan.pdq_review_search,
        scan.connect_seconds,
    )


# -- the coordinator


class DaskRetroEngine:
    """Submits a run's partitions to a Dask scheduler and records what they
    find (RetroHunt.scan calls run())."""

    def __init__(
        self,
        store: Store,
        store_url: str,
        settings: DaskSettings,
        pdq: PdqPolicy,
        local: LocalFeatureMatching | None,
        pdq_review_search: str | None,
        batch_records: int,
        lease_seconds: float,
    ) -> None:
        self.store = store
        self.settings = settings
        self.lease_seconds = lease_seconds
        self._scan_values = (store_url, pdq, local, pdq_review_search, batch_records)
        self._cluster = None  # a local cluster, when no scheduler is named
        self._lock = threading.Lock()

    def describe(self) -> str:
        return self.settings.scheduler_address or "a local Dask cluster"

    def _connect(self):
        """A client of the scheduler (a local cluster started once, when no
        address is given); Unavailable when it cannot be reached."""
        from distributed import Client, LocalCluster
        from distributed.security import Security

        address = self.settings.scheduler_address
        security = None
        try:
            with self._lock:
                if not address:
                    if self._cluster is None:
                        # TLS with certificates made for this cluster: another
                        # user of this machine cannot submit code to the
                        # workers, which hold the store's connections; no
                        # dashboard (it would listen unauthenticated)
                        self._cluster = LocalCluster(
                            n_workers=self.settings.workers,
                            threads_per_worker=1,
                            processes=True,
                            dashboard_address=None,
                            host="127.0.0.1",
                            security=Security.temporary(),
                        )
                    address = self._cluster.scheduler_address
                    security = self._cluster.security
            return Client(
                address,
                timeout=self.settings.connect_seconds,
                set_as_default=False,
                security=security,
            )
        except (OSError, TimeoutError) as exc:
            raise Unavailable(
                f"the retro-hunt's Dask scheduler {self.describe()} cannot be reached"
                f" ({type(exc).__name__}: {exc})"
            ) from exc

    def close(self) -> None:
        with self._lock:
            if self._cluster is not None:
                self._cluster.close()
                self._cluster = None

    def run(
        self,
        run: RetroRun,
        hold: Callable[[HistoryUpload, Match], None],
        stopping: threading.Event,
    ) -> bool:
        """Scans the run's partitions not done on the engine and records
        their hits (hold); True when every partition is done, False when it
        stopped before (the server stops, or another server took the run).
        Raises Unavailable when the scheduler cannot be reached, and a
        partition's error once Dask has given up on it."""
        partitions = plan_partitions(self.store, run, self.settings)
        todo = [p for p in partitions if not p.done]
        if not todo:
            return True
        from distributed import wait

        store_url, pdq, local, review_search, batch = self._scan_values
        scan = PartitionScan(
            store_url, run.id, pdq, local, review_search, batch, self.settings.connect_seconds
        )
        client = self._connect()
        attempt = uuid.uuid4().hex[:8]
        try:
            futures = {
                client.submit(
                    scan_partition,
                    scan,
                    part,
                    key=f"retro-run{run.id}-part{part.number}-{attempt}",
                    retries=self.settings.task_retries,
                    pure=False,
                ): part
                for part in todo
            }
            log.info(
                "retro-hunt %d: %d of %d partitions submitted to %s",
                run.id,
                len(todo),
                len(partitions),
                self.describe(),
            )
            done = {p.number for p in partitions if p.done}
            pending = set(futures)
            lease = RunLease(self.store, run, self.lease_seconds)
            look_every = min(lease.every, 0.5)  # a stopping server is not kept waiting
            while pending:
                if stopping.is_set():
                    client.cancel(list(pending))
                    return False
                try:
                    with client.as_current():  # wait() asks for the current client
                        finished, pending = wait(
                            pending, timeout=look_every, return_when="FIRST_COMPLETED"
                        )
                except TimeoutError:
                    finished = set()  # none yet: the lease is renewed below
                scanned = 0
                for future in finished:
                    part = futures[future]
                    if future.status != "finished":
                        raise RuntimeError(
                            f"retro-hunt {run.id}, partition {part.number} (history ids"
                            f" {part.after_id + 1}..{part.upto_id}) failed on {self.describe()}:"
                            f" {_error_of(future)}"
                        )
                    answer: PartitionHits = future.result()
                    hits = 0
                    # a partition's many hits may take longer than the lease
                    # to write: renewed meanwhile, at the checkpoint so far
                    held_from = _done_prefix(partitions, done, run.checkpoint)
                    for upload, matches in answer.hits:
                        for match in matches:
                            if not lease.keep(held_from):
                                client.cancel(list(pending))
                                return False
                            hold(upload, match)
                            hits += 1
                    if not self.store.finish_retro_partition(
                        run.id, part.number, answer.scanned, hits, owner=run.lease_owner
                    ):
                        log.warning("retro-hunt %d was taken over by another server", run.id)
                        client.cancel(list(pending))
                        return False
                    done.add(part.number)
                    scanned += answer.scanned
                if finished or lease.due():
                    checkpoint = _done_prefix(partitions, done, run.checkpoint)
                    if not lease.renew(checkpoint, scanned):
                        client.cancel(list(pending))
                        return False
            return True
        finally:
            client.close()


def _done_prefix(partitions: list[RetroPartition], done: set[int], start: int) -> int:
    """The run's checkpoint: the end of the partitions done in a row from
    its start (an in-process scan could resume from there)."""
    checkpoint = start
    for part in partitions:
        if part.number not in done:
            break
        checkpoint = part.upto_id
    return checkpoint


def _error_of(future) -> str:
    try:
        exc = future.exception(timeout=5)
    except Exception as reason:  # cancelled, or the scheduler went away
        return f"{type(reason).__name__}: {reason}"
    return f"{type(exc).__name__}: {exc}"
