"""Retro-hunt: when entries are added, find the uploads of the last days that
they match, which were let through before their hashes were known.

The history keeps every Match's query signals (hashsvc/core/audit.py). A run
streams the history records of its window through a small index built of the
NEW entries' signals only (the same index and matcher classes as Match, in
hashsvc/index and hashsvc/matching), so its cost grows with the window, not
with the known sets. A hit is then held to what Match would apply today:
allow lists and reviewers' false-positive verdicts (hashsvc/matching/
feedback.py), a set still enabled, an entry not removed meanwhile.

Every hit is a retro-match (record_retro_match): a review item with source
"retro" and the original upload's request id, and its own record in the
hash-chained history. Runs live in the store with a checkpoint (the last
history id scanned) and a lease, so a run survives a restart or a replica's
death; a hit is unique per (entry, request id), so it is never reported twice.

Runs are made by triggers (entries_added: AddEntry, AddEntryUpload, BulkLoad,
a confirmed review added to a set, partner feeds) and by hand (start_run),
and scanned by one background thread per server: the RPC that added the
entry only writes the queued run.

A triggered hunt is owed in the store before anything can lose it: a
RetroPending row written in the entry's own transaction (AddEntry, a
confirmed review) or before a load's or a feed's first entry, held by this
process while it works on it (a live load's hold is renewed) and cleared
once its runs are queued. A second thread takes every row nobody holds
(its writer died, or queueing failed and the hold lapsed) at start and every
poll_seconds while the server runs, so no hunt waits for a restart.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from hashdb import (
    EntryRecord,
    HashSetRecord,
    HistoryUpload,
    RetroOwed,
    RetroPending,
    RetroRun,
    Store,
)
from hashdb.retro_sql import DONE, FAILED, QUEUED, SKIPPED
from hashdb.times import from_micros, to_micros
from hashsvc.base.errors import FailedPrecondition, InvalidArgument, NotFound, TooLarge
from hashsvc.base.media_kinds import worth_keeping
from hashsvc.base.retro_json import retro_run_json
from hashsvc.base.signals import Signal, signal_json
from hashsvc.core import events
from hashsvc.core.audit import SYSTEM_ACTOR, Audit
from hashsvc.core.retro_dask import DaskRetroEngine, DaskSettings
from hashsvc.core.retro_process import ProcessRetroEngine, ProcessSettings
from hashsvc.core.retro_scan import (
    RetroScanner,
    RunLease,
    history_signals,
    hunting_entries,
    hunts,
    scan_batch,
)
from hashsvc.index.binary import search_on_this_thread
from hashsvc.index.live import LiveIndex
from hashsvc.matching.feedback import Feedback
from hashsvc.matching.matcher import Match, Matcher, MatchResult
from hashsvc.matching.policy import BLOCK, REVIEW, LocalFeatureMatching, Policy

log = logging.getLogger(__name__)

RETRO_RUN_RPC = "RetroRun"  # a finished run's record (by hand or triggered)
SECONDS_PER_DAY = 86_400
# How long a stopping server waits for the thread queueing pending hunts.
_PENDING_STOP_SECONDS = 2.0
# A step cut short by the server stopping (RetroHunt._scan_step).
_STOPPED = object()
_LOST = object()  # a step cut because another server took the run
MAX_WINDOW_SECONDS = 10 * 365 * SECONDS_PER_DAY


@dataclass(frozen=True)
class RetroSettings:
    """Limits of retro-hunts (Config retro_*)."""

    # How far back a run looks (a set's own retro window overrides it; 0: off)
    window_seconds: float = 7 * SECONDS_PER_DAY
    # New entries one run hunts with; a larger addition (a bulk load) is
    # split into several runs. Each entry's signals go into the run's index.
    max_entries_per_run: int = 100_000
    # Runs queued or running at once; past it a triggered run is recorded as
    # skipped (visible in `retro list`, rerun by hand) and a run asked for by
    # hand is RESOURCE_EXHAUSTED: a flood of new entries cannot pile up work.
    max_open_runs: int = 100
    # History records read per step; the checkpoint is saved after each.
    # Larger steps compare faster (the bound scan's tables are read once a
    # step per block: 10,000 against 2,000 measured 7.0 against 7.8 us an
    # upload) and checkpoint less often; a resumed run redoes at most one.
    batch_records: int = 10_000
    # A run's lease: a server that died holding it loses it after this, and
    # another (or the restarted one) resumes from the checkpoint.
    lease_seconds: float = 60.0
    # How often the worker looks for runs it was not woken for (other
    # replicas' triggers, expired leases).
    poll_seconds: float = 5.0
    # Pause after each step (seconds): leaves the cores to Match on a busy
    # server. 0: none.
    pause_seconds: float = 0.0
    # How long stop() waits for the hunting thread: it stops between steps
    # (and between a step's hits), so this bounds one step. A thread still
    # running then is left behind (daemon), logged.
    stop_seconds: float = 30.0
    # The hunting thread's nice value (Linux: per thread): the scheduler
    # gives Match's threads and the hashing workers the cores first.
    nice: int = 10
    # Threads comparing a step's PDQ views with the new hashes (the hunting
    # thread and threads-1 more, each at `nice`). 1 leaves the other cores
    # to Match; each more makes a run faster on cores that are free.
    threads: int = 1
    # Where runs are scanned: "inprocess" (this thread and its helpers) or
    # "dask" (one task per partition of the history on a Dask cluster,
    # hashsvc/core/retro_dask.py; `dask` then says where).
    engine: str = "inprocess"
    dask: DaskSettings = field(default_factory=DaskSettings)
    # "process": a batch the child scans for longer than this is given up
    # (the child killed, the run retried from its checkpoint)
    process_batch_seconds: float = 600.0
    # A run whose step fails (the store restarted, a connection dropped, a
    # lock timed out) is retried from its checkpoint after retry_initial_
    # seconds, doubling up to retry_max_seconds; after max_attempts failed
    # attempts (on any server: kept with the run in the store) it is marked
    # failed (`retro run --resume ID` queues it again, its count anew). The
    # attempt and its error show in `retro list` meanwhile.
    max_attempts: int = 5
    retry_initial_seconds: float = 2.0
    retry_max_seconds: float = 120.0


class RetroHunt:
    def __init__(
        self,
        store: Store,
        live: LiveIndex,
        matcher: Matcher,
        feedback: Feedback,
        policy: Policy,
        audit: Audit,
        settings: RetroSettings,
        local: LocalFeatureMatching | None = None,
        pdq_review_search: str | None = None,
        store_url: str = "",
    ) -> None:
        self.store = store
        self.live = live
        self.matcher = matcher
        self.feedback = feedback
        self.policy = policy
        self.audit = audit
        self.settings = settings
        self.local = local
        self.pdq_review_search = pdq_review_search
        self.wake = threading.Event()
        self._stopping = threading.Event()
        # start() and stop() in order: a start that comes after stop() (a
        # server closed while it was still starting) starts nothing
        self._life = threading.Lock()
        self._thread: threading.Thread | None = None
        # runs scanned on Dask: the workers open the store from its URL
        self.engine: DaskRetroEngine | None = None
        if settings.engine == "dask":
            self.engine = DaskRetroEngine(
                store,
                store_url,
                settings.dask,
                policy.pdq,
                local,
                pdq_review_search,
                settings.batch_records,
                settings.lease_seconds,
            )
        # runs scanned by a child process of this server (one, long-lived)
        self.child: ProcessRetroEngine | None = None
        if settings.engine == "process":
            self.child = ProcessRetroEngine(
                store_url,
                ProcessSettings(
                    nice=settings.nice,
                    threads=settings.threads,
                    batch_seconds=settings.process_batch_seconds,
                    pause_seconds=settings.pause_seconds,
                ),
                policy.pdq,
                local,
                pdq_review_search,
            )
        self._pending_thread: threading.Thread | None = None
        # RetroPending ids this process holds: loads and fetches still
        # running (their hold renewed), and hunts whose queueing failed
        # (their hold lapses, then any replica retries them); let go on stop
        self._held_pending: set[int] = set()
        self._failed_pending: set[int] = set()
        self._pending_lock = threading.Lock()

    # -- triggers

    def owed(self, trigger: str) -> RetroOwed:
        """What the store writes with an entry (AddEntry, a confirmed review)
        in its own transaction: the hunt it owes, held by this process until
        entries_added has queued it."""
        return RetroOwed(trigger, self.settings.lease_seconds)

    def entries_added(self, entry_ids: Iterable[int], trigger: str, caller: str) -> list[RetroRun]:
        """Queues runs for entries just added with a RetroPending of their own
        (AddEntry, a confirmed review: `owed`), then clears it. Never raises:
        the entries are added whatever happens here (logged); the hunt stays
        owed in the store and is queued once its hold lapses."""
        ids = list(entry_ids)
        try:
            runs = self._queue(ids, trigger, caller)
            self.store.clear_retro_pending_of_entries(ids)
            return runs
        except Exception:
            log.exception("queueing a retro-hunt for %s failed: left pending", trigger)
            return []

    def hunt_pending(self, set_id: int, since: datetime, trigger: str, caller: str) -> RetroPending:
        """Writes down, BEFORE a bulk load or a feed fetch writes its first
        entry, that the set's entries changed since `since` are to hunt;
        queue_pending clears it once their runs are queued. This process
        holds it meanwhile (renewed however long the load runs); a server
        killed in between lets the hold lapse, and then this or another
        server queues it, so the uploads they match do not stay allowed.
        Raises: no entry is written then."""
        pending = self.store.add_retro_pending(
            set_id, to_micros(since), trigger, caller, self.settings.lease_seconds
        )
        with self._pending_lock:
            self._held_pending.add(pending.id)
        return pending

    def queue_pending(self, pending: RetroPending) -> None:
        """Queues the runs a pending hunt owes, then clears it. When this
        raises it stays in the store, held until its hold lapses, and is
        tried again then (by the pending-hunt thread of any server)."""
        with self._pending_lock:
            self._held_pending.discard(pending.id)
        try:
            ids = list(pending.entry_ids) or self.store.entries_changed_since(
                pending.set_id, pending.since
            )
            if ids:
                # the window ends when the entries came, not when this runs:
                # a hunt queued late (after a crash, a lapsed hold) still
                # looks at the uploads just before them
                added_at = from_micros(pending.since)
                self._queue(ids, pending.trigger, pending.requested_by, added_at)
            self.store.clear_retro_pending(pending.id)
        except BaseException:
            with self._pending_lock:
                self._failed_pending.add(pending.id)
            raise
        with self._pending_lock:
            self._failed_pending.discard(pending.id)

    def queue_unheld_pending(self) -> int:
        """Queues the hunts nobody holds: left by a server that died before
        queueing them (a load's, a fetch's, an AddEntry's), or whose queueing
        failed (its hold lapsed). The number queued."""
        queued = 0
        for pending in self.store.claim_retro_pending(self.settings.lease_seconds):
            try:
                self.queue_pending(pending)
                queued += 1
                log.info("queued the pending retro-hunt of a %s", pending.trigger)
            except Exception:
                log.exception("queueing a pending retro-hunt (%s) failed", pending.trigger)
        return queued

    def _follow_pending(self) -> None:
        """At start and every poll_seconds: the holds of running loads
        renewed, then the hunts nobody holds queued."""
        while True:
            try:
                with self._pending_lock:
                    held = set(self._held_pending)
                self.store.hold_retro_pending(held, self.settings.lease_seconds)
                self.queue_unheld_pending()
            except Exception:
                log.exception("following the pending retro-hunts failed")
            if self._stopping.wait(self.settings.poll_seconds):
                return

    def start_run(
        self, caller: str, set_name: str = "", since_seconds: float | None = None
    ) -> RetroRun:
        """One run by hand: the entries added within the window to the set
        (to every set that hunts, without a name) against the uploads within
        it. The window: since_seconds, else the set's (the server's)."""
        if since_seconds is not None and not since_seconds > 0:
            raise InvalidArgument("since must be more than 0 seconds", field="since_seconds")
        if set_name:
            hash_set = self.store.get_set(set_name)
            if hash_set is None:
                raise NotFound(f"no such set: {set_name}", field="set")
            if not hunts(hash_set):
                raise FailedPrecondition(
                    f"set {set_name} is disabled or an allow list: it does not hunt"
                )
            sets, set_id = [hash_set], hash_set.id
            window = since_seconds or self._window(hash_set)
        else:
            sets = [s for s in self.store.list_sets(include_disabled=False) if hunts(s)]
            set_id, window = None, since_seconds or self.settings.window_seconds
        if not window:
            raise FailedPrecondition("the retro window is 0 (off): give since_seconds")
        # the run's creation time is this instant, not the insert's: reads
        # between the two took over a second on a loaded machine, and the
        # run then showed a window one second longer than asked
        asked_at = datetime.now(UTC)
        since = to_micros(asked_at - timedelta(seconds=window))
        ids = [i for s in sets for i in self.store.entries_changed_since(s.id, since)]
        active = sorted(
            i for found in self.store.active_entries_by_set(ids).values() for i in found
        )
        if not active:
            raise NotFound("no entries to hunt with: none was added within the window")
        if len(active) > self.settings.max_entries_per_run:
            raise TooLarge(
                f"{len(active)} entries were added within the window, more than one run takes"
                f" ({self.settings.max_entries_per_run}): hunt with a shorter window or per set",
                limit="retro_max_entries_per_run",
            )
        self._refuse_when_full()
        run = self.store.create_retro_run(
            "manual", caller, set_id, active, since, created_micros=to_micros(asked_at)
        )
        self.wake.set()
        return run

    def _refuse_when_full(self, set_name: str = "") -> str:
        """Why no run may be queued now ("" when it may); raises for a run
        by hand (set_name empty)."""
        open_runs = self.store.count_open_retro_runs()
        if open_runs < self.settings.max_open_runs:
            return ""
        why = f"{open_runs} retro-hunts are queued or running (retro_max_open_runs)"
        if not set_name:
            raise TooLarge(f"{why}; retry later", limit="retro_max_open_runs")
        return f"{why}; hunt later with `hashsvc retro run --set {set_name}`"

    def _queue(
        self,
        entry_ids: list[int],
        trigger: str,
        caller: str,
        added_at: datetime | None = None,
    ) -> list[RetroRun]:
        """Runs for added entries: one per set (at most max_entries_per_run
        entries each), over the set's window before `added_at` (now)."""
        window_end = min(added_at or datetime.now(UTC), datetime.now(UTC))
        by_set = self.store.active_entries_by_set(entry_ids)
        runs = []
        step = self.settings.max_entries_per_run
        for set_id, ids in sorted(by_set.items()):
            # not counted: the count is a scan of the set (0.4 s at 1M entries)
            hash_set = self.store.get_set_by_id(set_id, count_entries=False)
            if hash_set is None or not hunts(hash_set):
                continue  # a disabled set or an allow list does not hunt
            window = self._window(hash_set)
            if not window:
                continue
            since = to_micros(window_end - timedelta(seconds=window))
            for start in range(0, len(ids), step):
                chunk = ids[start : start + step]
                skipped = self._refuse_when_full(hash_set.name)
                if skipped:
                    log.warning("retro-hunt for %d entries skipped: %s", len(chunk), skipped)
                    run = self.store.create_retro_run(
                        trigger, caller, set_id, chunk, since, state=SKIPPED, error=skipped
                    )
                else:
                    run = self.store.create_retro_run(trigger, caller, set_id, chunk, since)
                runs.append(run)
        if any(r.state == QUEUED for r in runs):
            self.wake.set()
        return runs

    def _window(self, hash_set: HashSetRecord) -> float:
        if hash_set.retro_window_seconds is not None:
            return float(hash_set.retro_window_seconds)
        return self.settings.window_seconds

    def longest_window(self) -> float:
        """The longest window any hunt may look back over now: the server's
        and every set's own (a disabled set's too: it may be enabled again)."""
        own = (s.retro_window_seconds for s in self.store.list_sets(include_disabled=True))
        return max([self.settings.window_seconds, *(float(w) for w in own if w is not None)])

    def set_window(self, set_name: str, seconds: int | None) -> HashSetRecord:
        """The set's own retro window (None: the server's; 0: off)."""
        check_window(seconds)
        hash_set = self.store.get_set(set_name)
        if hash_set is None:
            raise NotFound(f"no such set: {set_name}", field="set")
        self.store.set_retro_window(hash_set.id, seconds)
        self.live.catch_up()
        return self.store.get_set_by_id(hash_set.id)

    def resume_run(self, run_id: int) -> RetroRun:
        """A failed run queued again: it goes on from its checkpoint (on an
        engine: its partitions not done); hits found before stay reported
        once."""
        run = self.get_run(run_id)
        if run.state == FAILED:
            self._refuse_when_full()  # as a run by hand: RESOURCE_EXHAUSTED when full
        if not self.store.resume_retro_run(run_id):
            raise FailedPrecondition(
                f"retro run {run_id} is {run.state}: only a failed run resumes"
            )
        self.wake.set()
        return self.get_run(run_id)

    def list_runs(self, after_id: int = 0, limit: int = 100) -> list[RetroRun]:
        return self.store.list_retro_runs(after_id, limit)

    def get_run(self, run_id: int) -> RetroRun:
        run = self.store.get_retro_run(run_id)
        if run is None:
            raise NotFound(f"no retro run {run_id}", field="run_id")
        return run

    # -- the worker

    def start(self) -> None:
        """Starts the hunting threads; nothing once stop() was called (a
        server stopped while it was starting: the threads would outlive the
        store it closes)."""
        with self._life:
            if self._stopping.is_set():
                return
            self._pending_thread = threading.Thread(
                target=self._follow_pending, daemon=True, name="retro-pending"
            )
            self._pending_thread.start()
            self._thread = threading.Thread(target=self._work, daemon=True, name="retro")
            self._thread.start()

    def stop(self) -> None:
        """Stops the hunting threads and waits for them (bounded): the
        hunting thread ends its step, then gives its run back at the
        checkpoint."""
        with self._life:
            self._stopping.set()
        self.wake.set()
        if self._pending_thread is not None:
            # not waited for past a moment: queueing a large load's hunt can
            # take long, and what it took stays owed in the store (its hold
            # lapses, then this or another server queues it again)
            self._pending_thread.join(timeout=_PENDING_STOP_SECONDS)
        if self._thread is not None:
            self._thread.join(timeout=self.settings.stop_seconds)
            if self._thread.is_alive():
                log.warning(
                    "the retro-hunt thread is still in a step after %g s (retro_stop_seconds);"
                    " its run resumes from its checkpoint once its lease expires",
                    self.settings.stop_seconds,
                )
        if self.engine is not None:
            self.engine.close()
        if self.child is not None:
            self.child.close()
        # what this process held is free at once for the next start (or
        # another replica), not after the hold
        with self._pending_lock:
            mine = self._held_pending | self._failed_pending
        try:
            self.store.release_retro_pending(mine)
        except Exception:
            log.warning("could not let go of %d pending retro-hunts: their hold lapses", len(mine))

    def _work(self) -> None:
        lower_priority(self.settings.nice)
        # Unfinished runs (a restart) are claimed like queued ones once their
        # lease has expired.
        while not self._stopping.is_set():
            try:
                run = self.store.claim_retro_run(self.settings.lease_seconds)
            except Exception:
                log.exception("claiming a retro-hunt failed")
                run = None
            if run is None:
                self.wake.wait(self.settings.poll_seconds)
                self.wake.clear()
                continue
            try:
                self.scan(run)
            except Exception as exc:
                if self._stopping.is_set():
                    # The server stopped under the step (its store closed after
                    # stop()'s wait): not a failed hunt. The run stays claimed
                    # at its checkpoint and resumes when its lease expires; a
                    # FAILED run would never look at those uploads again.
                    log.warning("retro-hunt %d cut by the server stopping: %s", run.id, exc)
                    return
                self._failed_attempt(run, exc)

    def _failed_attempt(self, run: RetroRun, exc: Exception) -> None:
        """A run's step raised: retried from its checkpoint after a backoff
        (its lease is set to end then, so this or any server claims it
        again, and this thread is free meanwhile), failed after
        max_attempts. Attempts are kept with the run in the store (read when
        it was claimed): a run another replica claims goes on counting there,
        rather than starting again and going round the replicas forever."""
        attempt = run.failed_attempts + 1
        most = self.settings.max_attempts
        if attempt >= most:
            log.exception("retro-hunt %d failed (attempt %d of %d)", run.id, attempt, most)
            try:
                if self.store.finish_retro_run(
                    run.id,
                    FAILED,
                    f"{exc} (attempt {attempt} of {most}: failed)",
                    owner=run.lease_owner,
                ):
                    self._record_run(run.id)
                else:
                    log.warning("retro-hunt %d was taken over by another server", run.id)
            except Exception:
                log.exception("recording retro-hunt %d as failed failed", run.id)
            return
        delay = min(
            self.settings.retry_max_seconds,
            self.settings.retry_initial_seconds * 2 ** (attempt - 1),
        )
        why = (
            f"attempt {attempt} of {most} failed: {exc}; retried from its checkpoint in {delay:g} s"
        )
        log.warning("retro-hunt %d: %s", run.id, why)
        while not self._stopping.is_set():
            try:
                if not self.store.retry_retro_run(
                    run.id, why, delay, attempt, owner=run.lease_owner
                ):
                    log.warning("retro-hunt %d was taken over by another server", run.id)
                return
            except Exception as again:
                # The store is still down: noted once it is back (not another
                # attempt: nothing was scanned), so the run is claimed again
                # after the delay, not after its whole lease.
                log.warning("retro-hunt %d: could not note the retry yet: %s", run.id, again)
                self._stopping.wait(delay)

    def scan(self, run: RetroRun) -> None:
        """Scans the run from its checkpoint to its end (the worker's lease
        is renewed at every step); stops early when the server stops (the
        run resumes at its checkpoint)."""
        search_on_this_thread()  # not on OpenMP's threads: retro_threads says how many
        # hits an earlier holder committed without their record (it lost the
        # run, or died, in between): recorded now, whatever this scan finds
        if not self.record_unrecorded_hits(run):
            return
        self.live.catch_up()  # the index the hits are held to knows the new entries
        entries = self._hunting_entries(run.entry_ids)
        if self._stopping.is_set():
            self.store.release_retro_run(run.id, owner=run.lease_owner)
            return
        if entries and self.engine is not None:
            # the partitions are scanned by the engine's workers, the hits
            # held and recorded here, as below
            def hold(upload: HistoryUpload, hit: Match) -> None:
                self._hold(run, upload, hit, history_signals(upload.query_signals))

            if not self.engine.run(run, hold, self._stopping):
                if self._stopping.is_set():
                    self.store.release_retro_run(run.id, owner=run.lease_owner)
                return
        elif entries and self.child is not None:
            if not self._scan_child_batches(run):
                return
        elif entries:
            helpers = self.settings.threads - 1
            pool = None
            if helpers:
                pool = ThreadPoolExecutor(
                    helpers, "retro-scan", _hunting_thread, (self.settings.nice,)
                )
            try:
                scanner = RetroScanner(
                    entries,
                    self.store,
                    self.policy,
                    self.local,
                    self.pdq_review_search,
                    pool=pool,
                    parts=self.settings.threads,
                )
                if not self._scan_steps(run, scanner):
                    return
            finally:
                if pool is not None:
                    pool.shutdown()
        if not self.record_unrecorded_hits(run):
            return
        if self.store.finish_retro_run(run.id, DONE, owner=run.lease_owner):
            self._record_run(run.id)
        else:
            log.warning("retro-hunt %d was taken over by another server", run.id)

    def _scan_steps(self, run: RetroRun, scanner: RetroScanner) -> bool:
        """scan()'s steps from the checkpoint to the run's end; False when
        it stopped before (the server stops, or another took the run). The
        lease is renewed at every step's end and, while a step takes long
        (many hits to write), from inside it (RunLease)."""
        lease = RunLease(self.store, run, self.settings.lease_seconds)
        checkpoint = run.checkpoint
        while not self._stopping.is_set():
            step = self._scan_step(run, scanner, checkpoint, lease)
            if step is _LOST:
                return False  # logged once by the lease; nothing more is written
            if step is None or step is _STOPPED:
                break
            checkpoint, scanned = step
            if not lease.renew(checkpoint, scanned):
                return False
            if self.settings.pause_seconds:
                self._stopping.wait(self.settings.pause_seconds)
        if self._stopping.is_set():
            # a restart (or another replica) resumes it at once, from the
            # checkpoint, instead of after the lease; after a crash it waits
            # for the lease
            self.store.release_retro_run(run.id, owner=run.lease_owner)
            return False
        return True

    def _scan_child_batches(self, run: RetroRun) -> bool:
        """_scan_steps with the batches scanned by the child process: each
        batch's hits held and recorded here, then its checkpoint saved (the
        lease renewed, also while waiting for a batch and between hits)."""
        assert self.child is not None
        lease = RunLease(self.store, run, self.settings.lease_seconds)
        checkpoint = run.checkpoint

        def keep() -> bool:
            return lease.keep(checkpoint)

        batches = self.child.batches(
            run, checkpoint, self.settings.batch_records, self._stopping, keep
        )
        with closing(batches):
            for last_id, read, found in batches:
                for upload, hits in found:
                    if self._stopping.is_set():
                        break
                    for hit in hits:
                        if not keep():
                            return False
                        self._hold(run, upload, hit, history_signals(upload.query_signals))
                if self._stopping.is_set():
                    break  # the batch's hits held so far stay; the checkpoint stays
                if not lease.renew(last_id, read):
                    return False
                checkpoint = last_id
                # no pause here: the child pauses before each batch
                # (ProcessSettings.pause_seconds), while these hits were held
        if lease.lost:
            return False
        if self._stopping.is_set():
            self.store.release_retro_run(run.id, owner=run.lease_owner)
            return False
        return True

    def _scan_step(
        self, run: RetroRun, scanner: RetroScanner, checkpoint: int, lease: RunLease
    ) -> tuple[int, int] | object | None:
        """One batch of records after the checkpoint scanned and its hits
        held: (the new checkpoint, records read), None past the run's end,
        _STOPPED when the server stops before all its hits were held (the
        checkpoint stays: a resumed run holds them; those held are not
        reported again), _LOST when another server took the run meanwhile
        (its writes would be refused: none is tried)."""

        def keep() -> bool:
            return lease.keep(checkpoint)

        batch = scan_batch(
            self.store, scanner, run.since, checkpoint, run.last_history_id,
            self.settings.batch_records, keep,
        )  # fmt: skip
        if lease.lost:
            return _LOST
        if batch is None:
            return None
        last_id, read, found = batch
        for upload, hits in found:
            if self._stopping.is_set():
                return _STOPPED
            for hit in hits:
                if not keep():
                    return _LOST
                self._hold(run, upload, hit, scanner.signals_of(upload))
        return last_id, read

    def record_unrecorded_hits(self, run: RetroRun) -> bool:
        """Writes the history record of each of the run's hits committed
        without one (review item and notification already out: a holder
        lost the run, or died, between the two), as the hit was decided:
        its match as its review item holds it, not decided again (the entry
        may be gone since, or the run never find the upload again). False
        when the run is no longer this server's (nothing more written)."""
        for entry_id, request_id, history_id, review_id in self.store.unrecorded_retro_hits(run.id):
            item = self.store.get_review_item(review_id) if review_id is not None else None
            uploads = self.store.history_uploads_by_id([history_id])
            match = (
                next((m for m in item.matches if m.get("entry_id") == entry_id), None)
                if item
                else None
            )
            if not uploads or match is None:
                log.error(
                    "retro-hunt %d: the hit of entry %d on %s cannot be recorded: its upload's"
                    " record or its review item is missing",
                    run.id,
                    entry_id,
                    request_id,
                )
                continue
            upload = uploads[0]
            recorded = _record_hit(self.audit, run, upload, match, review_id)
            if recorded is None and self.store.get_retro_run(run.id).lease_owner != run.lease_owner:
                log.warning("retro-hunt %d was taken over by another server", run.id)
                return False
            if recorded is not None:
                log.info(
                    "retro-hunt %d: recorded the hit of entry %d on %s",
                    run.id,
                    entry_id,
                    request_id,
                )
        return True

    def _hunting_entries(self, entry_ids: Iterable[int]) -> list[EntryRecord]:
        entries = self.store.get_entries(entry_ids, with_signals=True).values()
        return hunting_entries(entries, self.live.sets_by_id.get)

    def _hold(
        self, run: RetroRun, upload: HistoryUpload, hit: Match, signals: list[Signal]
    ) -> None:
        """The hit as Match would decide it today: allow lists and
        false-positive verdicts applied, the entry still there, its set still
        enabled; then recorded."""
        allow_ids = {s.id for s in self.live.sets_by_id.values() if s.enabled and s.allow_list}
        matches = [hit]
        if allow_ids:
            matches += self.matcher.match(signals, only_sets=allow_ids).matches
        result = self.feedback.apply(
            MatchResult(hit.decision, matches), signals, self.live.sets_by_id
        )
        held = next((m for m in result.matches if m.entry_id == hit.entry_id), None)
        if held is None or held.decision not in (BLOCK, REVIEW):
            return
        entry = self.store.get_entries([hit.entry_id]).get(hit.entry_id)
        hash_set = self.store.get_set_by_id(hit.set_id, count_entries=False)
        if entry is None or entry.removed_at is not None or hash_set is None:
            return
        if not hunts(hash_set):
            return
        record_retro_match(self.store, self.audit, run, upload, signals, held)

    def _record_run(self, run_id: int) -> None:
        # A run that found something or failed is recorded (every run is in
        # `retro list`); not indexed under the set: `history --set` shows
        # what people did to the set, and each hit has its RetroMatch there.
        run = self.store.get_retro_run(run_id)
        if run.state == DONE and not run.hits:
            return
        self.audit.record_action(
            RETRO_RUN_RPC,
            SYSTEM_ACTOR,
            run_json(run),
            status="OK" if run.state == DONE else "INTERNAL",
            error_message=run.error,
        )


def _record_hit(audit, run: RetroRun, upload: HistoryUpload, match: dict, review_id: int):
    """A hit's record in the chained history, under the run's lease (None when
    another holder recorded it, or the run is no longer this server's)."""
    return audit.record_retro_match(
        request_id=upload.request_id,
        upload_time=upload.time,
        caller=upload.caller,
        caller_token_id=upload.caller_token_id,
        client_ref=upload.client_ref,
        media_type=upload.media_type,
        match=match,
        detail={"run_id": run.id, "review_id": review_id, "history_id": upload.id},
        run_id=run.id,
        owner=run.lease_owner,
    )


def record_retro_match(
    store: Store,
    audit: Audit,
    run: RetroRun,
    upload: HistoryUpload,
    signals: list[Signal],
    match: Match,
) -> int | None:
    """THE place a retro-match is made: its unique hit and review item (one
    transaction), then its record in the hash-chained history. None when the
    hit was reported and recorded before (a resumed run), or the run is no
    longer this server's (run.lease_owner: its lease expired and another
    took it over). A hit committed without its record (the server died in
    between) gets it when its run resumes: the hit is marked recorded in the
    record's own transaction, so it gets one however many servers try."""
    item = {
        "request_id": upload.request_id,
        "created_at": datetime.now(UTC),
        "caller": upload.caller,
        "media_type": upload.media_type,
        "client_ref": upload.client_ref,
        "query_signals": [signal_json(s) for s in signals if worth_keeping(s)],
        "matches": [match.to_json()],
    }
    # the notification goes out with the hit, in its transaction (the outbox
    # names the review item): a hit reported before writes neither again
    event = events.retro_match_event(
        request_id=upload.request_id,
        upload_time=upload.time.isoformat().replace("+00:00", "Z"),
        caller=upload.caller,
        client_ref=upload.client_ref,
        media_type=upload.media_type,
        decision=match.decision,
        matches=[match],
    )
    review_id = store.add_retro_match(
        run.id, match.entry_id, upload.id, match.decision, item, events=[event],
        owner=run.lease_owner,
    )  # fmt: skip
    if review_id is None:
        return None
    recorded = _record_hit(audit, run, upload, match.to_json(), review_id)
    if recorded is None:  # another holder of the run recorded it, or took the run over
        return None
    log.info(
        "retro-match: upload %s matches %s/%s (%s)",
        upload.request_id,
        match.set_name,
        match.entry_name,
        match.decision,
    )
    return review_id


def run_duration(run: RetroRun) -> float | None:
    """Seconds the run has been running (so far, while it runs); None: not started."""
    if run.started_at is None:
        return None
    end = run.finished_at or datetime.now(UTC)
    return round((end - run.started_at).total_seconds(), 3)


def public_run_json(run: RetroRun, set_name: str) -> dict:
    """The run as `hashsvc retro list --json` prints it (hashsvc/base/retro_json.py)."""
    return retro_run_json(
        run_id=run.id,
        trigger=run.trigger,
        requested_by=run.requested_by,
        set_name=set_name,
        entries=len(run.entry_ids),
        since=run.since,
        uploads_scanned=run.scanned,
        hits=run.hits,
        duration_seconds=run_duration(run) or 0.0,
        state=run.state,
        error=run.error,
        created_at=run.created_at,
        finished_at=run.finished_at,
    )


def run_json(run: RetroRun) -> dict:
    """The run as its action record in the history holds it (ids, not names:
    a set renamed later is still the same set)."""
    return {
        "run_id": run.id,
        "trigger": run.trigger,
        "requested_by": run.requested_by,
        "set_id": run.set_id,
        "entries": len(run.entry_ids),
        "since": run.since.isoformat(),
        "uploads_scanned": run.scanned,
        "hits": run.hits,
        "duration_seconds": run_duration(run),
        "state": run.state,
        "error": run.error,
    }


def _hunting_thread(nice: int) -> None:
    """A retro-hunt helper thread starts as the hunting thread runs."""
    lower_priority(nice)
    search_on_this_thread()


def lower_priority(nice: int) -> None:
    """Lowers the calling thread's CPU priority by `nice` (Linux schedules
    threads one by one; elsewhere, or without permission, nothing)."""
    if nice <= 0 or not hasattr(os, "setpriority"):
        return
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice))
    except OSError:
        log.warning("could not lower the retro-hunt thread's priority")


def check_window(seconds: int | None) -> None:
    if seconds is not None and not 0 <= seconds <= MAX_WINDOW_SECONDS:
        raise InvalidArgument(
            "retro_window_seconds must be within 0 (off) .. 10 years", field="retro_window_seconds"
        )
