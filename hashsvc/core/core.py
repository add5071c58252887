"""The core that the gRPC layer calls: wiring of store, index, hashing and
policy, and the Match operation with its history record. Testable without a
network: tests build a Core and call it directly."""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from hashdb import NewEvent, RetroPending, RetroRun, Store, TokenRecord, open_store
from hashdb.times import to_micros
from hashsvc.base import media_kinds
from hashsvc.base.errors import (
    FailedPrecondition,
    HashsvcError,
    InvalidArgument,
    NotFound,
    Unavailable,
    quoted,
    status_name,
)
from hashsvc.base.signals import Signal, signal_type
from hashsvc.core import auth, events, export
from hashsvc.core.audit import Audit, acting_token_id
from hashsvc.core.bulk import BulkLoad, BulkResult, PackedRows, RowBatch
from hashsvc.core.config import Config, is_in_memory_sqlite
from hashsvc.core.curation import Curation
from hashsvc.core.event_feed import EventFeed
from hashsvc.core.retro import RetroHunt
from hashsvc.core.review import ReviewQueue
from hashsvc.core.signal_values import checked_value
from hashsvc.core.two_step import NOT_HASHED, CallerBlocks
from hashsvc.core.webhooks import Webhooks
from hashsvc.index.live import LiveIndex
from hashsvc.matching.feedback import Feedback
from hashsvc.matching.flood import FloodCounter
from hashsvc.matching.matcher import LOCAL_NOT_COMPUTED, Match, Matcher, MatchResult
from hashsvc.matching.policy import Policy
from hashsvc.media import sniff
from hashsvc.media.audio_words import parse_shift_variant
from hashsvc.media.dispatch import (
    Hashed,
    MediaLimits,
    MediaSource,
    exact_signals,
    head_of,
    size_of,
)
from hashsvc.media.hashing import HashingPool, StartedJob
from hashsvc.media.limits import STAGE_LOCAL, STAGE_VIEWS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MatchQuery:
    """One upload: media bytes, or a precomputed hash (signal_type, hex value)."""

    media: MediaSource | None = None
    signal_type: str = ""
    signal_value: str = ""
    signal_quality: int | None = None
    client_ref: str = ""
    sets: tuple[str, ...] = ()


@dataclass(frozen=True)
class MatchOutcome:
    request_id: str
    decision: str
    media_type: str
    query_signals: list[Signal]
    matches: list[Match] = field(default_factory=list)
    client_ref: str = ""
    notes: tuple[str, ...] = ()  # what was left out within the limits


def call_status(exc: BaseException | None) -> str:
    """The status code name of a call that raised `exc` (None: it did not)."""
    return "OK" if exc is None else status_name(exc)


class Core:
    def __init__(self, config: Config, store: Store, hashing: HashingPool) -> None:
        self.config = config
        self.store = store
        self.hashing = hashing
        self.policy = Policy(config.pdq)
        # Each part is handed the store interfaces it uses (hashdb/store.py),
        # all one store here.
        self.live = LiveIndex(store, store, _snapshot_dir(config), config.pdq_review_search)
        self.matcher = Matcher(self.live, store, self.policy, local=config.local_features)
        self.recent_blocks = CallerBlocks(
            config.image.local_after_views_window,
            config.image.local_after_views_share,
            config.image.local_after_views_callers,
        )
        # exact copies of known media, per caller alike (two_step.NOT_HASHED)
        self.exact_floods = CallerBlocks(
            config.image.local_after_views_window,
            config.image.local_after_views_share,
            config.image.local_after_views_callers,
        )
        self.curation = Curation(
            store, store, self.live, hashing, config.local_features.max_keypoints
        )
        self.audit = Audit(
            store,
            store,
            config.history_checkpoint_file,
            config.history_key(),
            config.history_checkpoint_records,
            config.history_checkpoint_seconds,
            keep_local_features=config.history_keep_local_features,
        )
        self.feedback = Feedback(store, self.policy)
        self.review = ReviewQueue(
            reviews=store,
            flood=store,
            entries=store,
            sets=store,
            audit=self.audit,
            curation=self.curation,
            claim_seconds=config.review_claim_seconds,
        )
        self.retro = RetroHunt(
            store,
            self.live,
            self.matcher,
            self.feedback,
            self.policy,
            self.audit,
            config.retro_settings(),
            local=config.local_features,
            pdq_review_search=config.pdq_review_search,
            store_url=config.db_url,
        )
        self.curation.on_entries_added = self.retro.entries_added
        self.curation.owe_retro = self.retro.owed
        self.flood = FloodCounter(
            store,
            config.quarantine_matches,
            config.quarantine_window_seconds,
            config.flood_max_pending_entries,
            self._flood_alerts,
        )
        self.event_feed = EventFeed(store, config.events)
        self._pruned_at = time.monotonic()
        # Webhook deliverers (threads of their own), started with the server.
        self.webhooks = Webhooks(store, config.webhook, config.events) if config.webhook else None
        self._poller: threading.Thread | None = None
        self._flusher: threading.Thread | None = None
        self._stopping = threading.Event()
        # start() and close() in order: a close() during start() (a server
        # stopped while its index loaded) leaves no thread of start() running
        # on the store it closed
        self._life = threading.Lock()
        # Set while the change feed cannot be read: the index may miss what
        # other replicas changed, so matching stops until it has caught up.
        self._index_lost = threading.Event()
        # Called with every successful Match outcome (metrics); must not raise.
        self.on_match: Callable[[MatchOutcome], None] | None = None
        # Called with the set's name for every flood alert this replica raises.
        self.on_flood_alert: Callable[[str], None] | None = None

    @classmethod
    def open(cls, config: Config, hash_in_process: bool = False) -> Core:
        store = open_store(
            config.db_url,
            history_key=config.history_key(),
            connect_timeout=config.db_connect_timeout_seconds,
        )
        workers = 0 if hash_in_process else config.worker_count()
        pool = HashingPool(
            workers,
            MediaLimits(config.image, config.video, config.audio, config.pdf),
            config.hash_timeout_seconds,
            config.worker_memory_bytes,
            split_queries=config.split_query_hashing,
            media_timeout_seconds=config.media_timeout_seconds,
            worker_max_jobs=config.worker_max_jobs,
        )
        core = cls(config, store, pool)
        return core

    def start(self) -> None:
        """Load the index (the slow part) and follow other replicas' changes."""
        self.hashing.warm_up()
        self.matcher.warm_up()
        self.live.load()
        with self._life:
            if self._stopping.is_set():
                return
            self._poller = threading.Thread(target=self._poll_changes, daemon=True, name="changes")
            self._poller.start()
            self._flusher = threading.Thread(target=self._flush_floods, daemon=True, name="flood")
            self._flusher.start()
            if self.webhooks is not None:
                self.webhooks.start()
            self.retro.start()  # resumes unfinished runs too

    def _flush_floods(self) -> None:
        while not self._stopping.is_set():
            self.flood.wake.wait(self.config.flood_flush_seconds)
            self.flood.wake.clear()
            if self._stopping.is_set():
                return
            try:
                self.flood.flush()
            except Exception:  # the counts are kept; the next flush retries
                log.exception("flushing flood counts failed")

    def _flood_alerts(self, over: dict[int, int]) -> None:
        for entry_id, count in sorted(over.items()):
            set_name = self.review.raise_flood_alert(
                entry_id, count, self.config.quarantine_window_seconds
            )
            if set_name is not None:
                log.warning("flood alert: entry %d matched %d times", entry_id, count)
                if self.on_flood_alert is not None:
                    self.on_flood_alert(set_name)

    def _prune_events(self) -> None:
        # the outbox keeps what is not yet everywhere, and keep_seconds more
        if time.monotonic() - self._pruned_at < self.config.events.prune_every_seconds:
            return
        self._pruned_at = time.monotonic()
        try:
            self.event_feed.prune([w.name for w in self.config.webhook])
        except Exception:
            log.exception("pruning the event outbox failed")

    def _poll_changes(self) -> None:
        saved_seq, saved_at = self.live.seq, time.monotonic()
        while not self._stopping.is_set():
            try:
                # woken at once by a PostgreSQL NOTIFY, else after the poll interval
                if self.store.wait_for_change(self.config.change_poll_seconds):
                    # ... but not at every commit of a bulk write (each
                    # catch-up rebuilds the index's open segment): the load's
                    # own follower or this poller applied a bulk write's
                    # entries a moment ago. Single changes (an entry another
                    # replica added, a set created) are applied at once:
                    # waiting after any recent read let a known hash ALLOW
                    # here for 17 Matches (tests/test_events_process.py).
                    follow = min(self.config.change_follow_seconds, self.config.change_poll_seconds)
                    since = time.monotonic() - self.live.bulk_applied_at
                    self._stopping.wait(max(follow - since, 0))
                if self._stopping.is_set():
                    return
                self.live.catch_up()
            except Exception as exc:  # keep following; the next poll retries
                if not self._index_lost.is_set():
                    log.exception("the index cannot follow the store; matching stops: %s", exc)
                self._index_lost.set()
                self._stopping.wait(self.config.change_poll_seconds)  # no busy retry
                continue
            if self._index_lost.is_set():
                self._index_lost.clear()
                log.warning("the index caught up with the store again; matching resumes")
            self._prune_events()
            try:
                self._checkpoint_history()
                # A fresh snapshot keeps restarts fast even after a crash.
                due = time.monotonic() - saved_at > self.config.snapshot_seconds
                if due and self.live.seq != saved_seq:
                    self.live.save_snapshot()
                    saved_seq, saved_at = self.live.seq, time.monotonic()
            except Exception:
                log.exception("saving the index snapshot failed")

    def _checkpoint_history(self, final: bool = False) -> None:
        # A history that cannot be checkpointed still serves: the failure is
        # logged, and verify shows how old the last checkpoint is.
        try:
            if final:
                self.audit.checkpoint()
            else:
                self.audit.maybe_checkpoint()
        except Exception:
            log.exception("checkpointing the history failed")

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def close(self) -> None:
        with self._life:
            self._stopping.set()
        if self.webhooks is not None:
            self.webhooks.stop()
        self.retro.stop()  # a run stops at its checkpoint; the next start resumes it
        self.flood.wake.set()
        if self._flusher is not None:
            self._flusher.join(timeout=10)
            try:  # the last counts of this replica still count
                self.flood.flush()
            except Exception:
                log.exception("flushing flood counts failed")
        if self._poller is not None:  # a server: anchor the head it leaves
            self._checkpoint_history(final=True)
        if self.live.ready.is_set():
            try:
                self.live.save_snapshot()
            except Exception:
                log.exception("saving the index snapshot failed")
        self.hashing.close()
        self.store.close()

    # -- matching

    def match(
        self,
        query: MatchQuery,
        caller: str,
        rpc: str = "Match",
        caller_token_id: int | None = None,
    ) -> MatchOutcome:
        """Hash (if media), match, decide; every call, failed or not, is recorded."""
        if caller_token_id is None:
            caller_token_id = acting_token_id(caller)
        request_id = uuid.uuid4().hex
        started = datetime.now(UTC)
        media_type, signals, notes = "", [], ()
        try:
            self._require_ready()  # before hashing: no work for a refused call
            only_sets = self._set_ids(query.sets)
            # the caller's own flood window: its token, or its name without one
            flooder = caller_token_id if caller_token_id is not None else caller
            media_type, signals, notes, result = self._hash_and_match(query, only_sets, flooder)
            result = self.feedback.apply(result, signals, self.live.sets_by_id)
            self._require_ready()  # the index may have been lost while hashing
            recorded = self._kept_in_history(signals)
            signals = _without_shifted_views(signals)
        except Exception as exc:
            if not isinstance(exc, HashsvcError):
                log.exception("match %s failed", request_id)
            self._record(
                request_id, started, caller, rpc, query, media_type,
                self._kept_in_history(signals), None, exc, caller_token_id,
            )  # fmt: skip
            raise
        outcome = MatchOutcome(
            request_id,
            result.decision,
            media_type,
            signals,
            result.matches,
            query.client_ref,
            notes,
        )
        self._record(
            request_id, started, caller, rpc, query, media_type, recorded, outcome, None,
            caller_token_id,
        )  # fmt: skip
        self._after_match(outcome, caller)
        if self.on_match is not None:
            self.on_match(outcome)
        return outcome

    def _kept_in_history(self, signals: list[Signal]) -> list[Signal]:
        """The query signals a Match's history record keeps (what retro-hunts
        read): an audio upload's shifted views only when configured."""
        if self.config.history_keep_audio_shifted_views:
            return signals
        return _without_shifted_views(signals)

    def _after_match(self, outcome: MatchOutcome, caller: str) -> None:
        # The answer stands even if the queue cannot be written: the history
        # holds the REVIEW decision, and the failure is logged.
        try:
            self.review.enqueue(outcome, caller, self.live.sets_by_id)
            # counted in memory; the flusher thread adds the counts to the store
            self.flood.observe(m.entry_id for m in outcome.matches if m.decision != "allow")
        except Exception:
            log.exception("review queue update for %s failed", outcome.request_id)

    def record_action(
        self,
        action: str,
        actor: str,
        detail: dict,
        status: str = "OK",
        error_message: str = "",
        set_names: tuple[str, ...] = (),
        events: Iterable[NewEvent] = (),
    ) -> None:
        """An operator's write in the hash-chained history; a failed one names
        its status, as a failed Match does. Indexed under the sets it names
        (that exist), so `history --set S` shows what was done to S."""
        # ids alone: a set's record counts its entries (a scan: 0.4 s at 1M,
        # in every feed fetch's and bulk load's record)
        known = self.store.set_ids_by_name(set_names)
        set_ids = tuple(known[name] for name in set_names if name in known)
        self.audit.record_action(
            action,
            actor,
            detail,
            status=status,
            error_message=error_message,
            set_ids=set_ids,
            events=events,
        )

    def record_failed_match(
        self,
        rpc: str,
        caller: str,
        exc: BaseException,
        client_ref: str = "",
        media_bytes: int = 0,
        status: str = "",
        caller_token_id: int | None = None,
    ) -> None:
        """A Match call that failed before it reached match() (an upload that
        was too large, had no header or two): recorded as a failed Match is."""
        try:
            self._record(
                uuid.uuid4().hex,
                datetime.now(UTC),
                caller,
                rpc,
                MatchQuery(client_ref=client_ref),
                "unknown",
                [],
                None,
                exc,
                caller_token_id if caller_token_id is not None else acting_token_id(caller),
                media_bytes,
                status,
            )
        except Exception:  # the call's own error is what its client hears
            log.exception("the history record of a failed %s call failed", rpc)

    # -- bulk loads

    def bulk_load(
        self,
        set_name: str,
        caller: str,
        batches: Iterable[RowBatch | PackedRows],
        strict: bool = False,
        status_of: Callable[[BaseException | None], str] = call_status,
    ) -> BulkResult:
        """Loads the batches into the set (hashsvc/core/bulk.py). Every load, failed
        or not, leaves one history record: each batch commits on its own, so a
        load that failed part-way changed the set too, and its record holds
        what was committed before it failed. `status_of(exception or None)`
        names the status the call ends with: the gRPC layer knows a cancelled
        call (grpc may end a cancelled call's request stream as if the client
        had sent everything: the load then completes, and its client never
        hears of it)."""
        run: BulkLoad | None = None
        pending: RetroPending | None = None
        started = datetime.now(UTC)
        try:
            hash_set = self.curation.get_set(set_name)
            pending = self.retro.hunt_pending(hash_set.id, started, "BulkLoad", caller)
            run = BulkLoad(
                self.store,
                self.store,
                self.live,
                hash_set.id,
                caller,
                strict,
                self.config.spool_dir,
                self.config.local_features.max_keypoints,
            )
            for batch in batches:
                run.add_batch(batch)
            result = run.finish()
        except BaseException as exc:  # a cancelled call is recorded too
            if run is not None:
                run.abandon()
            partial = run.result if run is not None else BulkResult()
            committed = partial.added + partial.updated + partial.removed + partial.unchanged
            self._record_bulk_load(
                set_name, caller, strict, partial, bool(committed), status_of, exc
            )
            if pending is not None:
                self.hunt_changed_since(pending)
            raise
        self._record_bulk_load(set_name, caller, strict, result, result.written, status_of)
        self.hunt_changed_since(pending)
        return result

    def hunt_changed_since(self, pending: RetroPending) -> None:
        """The retro-hunt a bulk load or a partner feed's fetch owes (written
        by RetroHunt.hunt_pending before its first entry): runs for the
        set's entries added or given new signals since then (a concurrent
        load's too: a hit is reported once whichever run finds it). When
        queueing fails the hunt stays pending, and once its hold lapses this
        server (or another) queues it, without waiting for a restart."""
        try:
            self.retro.queue_pending(pending)
        except Exception:
            log.exception("queueing the retro-hunt of a %s failed: left pending", pending.trigger)

    def start_retro_run(
        self, actor: str, set_name: str = "", since_seconds: int = 0, resume_run_id: int = 0
    ) -> RetroRun:
        """A retro-hunt by hand (StartRetroRun, POST /v1/retro/runs), in the
        history; or, with resume_run_id, a failed run queued again (it goes
        on from its checkpoint: no set or window of its own)."""
        if resume_run_id:
            if set_name or since_seconds:
                raise InvalidArgument(
                    "resume_run_id resumes a run as it was: give no set or since",
                    field="resume_run_id",
                )
            run = self.retro.resume_run(resume_run_id)
            self.record_action("ResumeRetroRun", actor, {"run_id": run.id})
            return run
        if since_seconds < 0:
            raise InvalidArgument(
                "since_seconds must be 0 (the window) or more", field="since_seconds"
            )
        run = self.retro.start_run(actor, set_name, float(since_seconds) or None)
        self.record_action(
            "StartRetroRun",
            actor,
            {"run_id": run.id, "set": set_name, "since_seconds": since_seconds},
            set_names=(set_name,) if set_name else (),
        )
        return run

    def prune_history(self, actor: str, before: datetime) -> int:
        """Drops the query signals of the history's records before `before`
        (what retro-hunts read; 18 views of an upload are most of a record):
        the records stay and the chain verifies (hashdb/history_sql.py chain
        format 3). Records written before format 3 keep their signals.

        Refused for a `before` within the longest retro window in force plus
        history_prune_margin_seconds: the uploads a hunt may still read keep
        their signals, or a careless or hostile admin could blind retro-hunts
        (a prune of yesterday's uploads before today's entries arrive)."""
        try:
            self._check_prune_before(before)
            # Recorded before the first batch commits: a prune killed between
            # its batches still has the record that covers what it pruned
            # (`history verify` would report those records as stripped
            # outside hashsvc); the outcome is recorded after.
            self.record_action(
                "PruneHistory", actor, {"before": before.isoformat(), "started": True}
            )
            pruned = self.store.prune_history_signals(to_micros(before))
        except Exception as exc:
            self.record_action(
                "PruneHistory", actor, {"before": before.isoformat()}, status_name(exc), str(exc)
            )
            raise
        self.record_action(
            "PruneHistory", actor, {"before": before.isoformat(), "records_pruned": pruned}
        )
        return pruned

    def _check_prune_before(self, before: datetime) -> None:
        # A refused prune is recorded too (its status says it touched nothing;
        # `history verify` does not count it as covering any record).
        now = datetime.now(UTC)
        if before > now:
            raise InvalidArgument("before must not be in the future", field="before")
        window = self.retro.longest_window()
        latest = now - timedelta(seconds=window + self.config.history_prune_margin_seconds)
        if before > latest:
            raise FailedPrecondition(
                f"before must be {latest.isoformat(timespec='seconds')} or earlier: retro-hunts"
                f" read the uploads of the last {_days(window)} (the longest retro window:"
                f" retro_window or a set's own) and history_prune_margin_seconds adds"
                f" {_days(self.config.history_prune_margin_seconds)}",
                field="before",
                limit="history_prune_margin_seconds",
            )

    def _record_bulk_load(
        self,
        set_name: str,
        caller: str,
        strict: bool,
        result: BulkResult,
        written: bool,
        status_of: Callable[[BaseException | None], str],
        exc: BaseException | None = None,
    ) -> None:
        # The load's own answer or error stands even if its record cannot be
        # written (what it committed is in the store either way): logged.
        try:
            detail = {
                "set": set_name[:1000],
                "strict": strict,
                "rows": result.rows,
                "added": result.added,
                "updated": result.updated,
                "removed": result.removed,
                "unchanged": result.unchanged,
                "rejected": result.rejected_count,
                "written": written,
            }
            error = "" if exc is None else str(exc)
            counts = {
                k: detail[k] for k in ("added", "updated", "removed", "unchanged", "rejected")
            }
            feed = []
            if result.added + result.updated + result.removed:
                # a partner's list changed the set (part of it, if the load failed)
                feed.append(
                    events.feed_updated_event(
                        set_name=set_name,
                        source="bulk_load",
                        caller=caller,
                        counts=counts,
                        status=status_of(exc),
                    )
                )
            self.record_action(
                "BulkLoad",
                caller,
                detail,
                status_of(exc),
                error,
                set_names=(set_name,),
                events=feed,
            )
        except Exception:
            log.exception("the history record of a bulk load into %s failed", quoted(set_name))

    def _hash_and_match(
        self, query: MatchQuery, only_sets: set[int] | None, flooder: object = None
    ) -> tuple[str, list[Signal], tuple[str, ...], MatchResult]:
        """The query's signals and matches, and what either left out; an
        upload hashed in one step or, during the caller's flood of known
        pictures, in two (hashsvc/core/two_step.py)."""
        if query.media is not None and query.signal_type:
            raise InvalidArgument("send media or a hash, not both")
        if query.media is None:
            hashed = self._query_signals(query)
            result = self.matcher.match(hashed.signals, only_sets)
            return hashed.media_type, hashed.signals, (*hashed.notes, *result.notes), result
        media = query.media
        first: StartedJob | None = None
        second: StartedJob | None = None
        try:
            kind = self.hashing.check(media)  # the errors hashing gives first
            flood = self.exact_floods.flooding(flooder)
            if not flood:
                # Outside the caller's flood of exact copies the upload is
                # hashed whatever its exact hashes find: sent to the workers
                # first, and its exact hashes looked up while they hash.
                first, second = self._start_hashing(media, kind, flooder)
            # The exact hashes (hashsvc/core/two_step.py: NOT_HASHED): during
            # the caller's flood of exact copies, one that blocks everywhere
            # is not hashed.
            exact = exact_signals(media)
            known_bytes = any(self.store.find_exact(s.kind, s.value) for s in exact)
            self.exact_floods.observe(flooder, known_bytes)
            if known_bytes and flood:
                answered = self._exact_copy(media, kind, exact, only_sets)
                if answered is not None:
                    return answered
            if first is None:
                first, second = self._start_hashing(media, kind, flooder)
            # bytes no known entry holds were just looked up: not again
            searched_exact = exact if known_bytes else []
            # collected, not dropped, if its answer is an error (as a job
            # waited for at once: its error is seen and handled once)
            job, first = first, None
            hashed = job.result()
            media_type, own, notes = hashed.media_type, hashed.signals, hashed.notes
            result = self.matcher.match([*searched_exact, *own], only_sets)
            if not hashed.complete and not result.blocked_everywhere:
                if second is not None:
                    job, second = second, None
                    rest = job.result()
                else:
                    # the first step's decoded picture: not decoded again
                    rest = self.hashing.hash_query(
                        media, STAGE_LOCAL, picture=hashed.picture, exact=False
                    )
                own = [*own, *rest.signals]
                result = self.matcher.match([*searched_exact, *own], only_sets)
            elif not hashed.complete:
                # (a second step started ahead may be computing them: unused)
                notes = (*notes, LOCAL_NOT_COMPUTED)
        finally:
            for job in (first, second):
                if job is not None:
                    job.abandon()
        if media_type == media_kinds.IMAGE:
            self.recent_blocks.observe(flooder, result.blocked_everywhere)
        return media_type, [*exact, *own], (*notes, *result.notes), result

    def _start_hashing(
        self, media: MediaSource, kind: str, flooder: object
    ) -> tuple[StartedJob, StartedJob | None]:
        """(the upload's first job sent to the workers, its second step
        started ahead or None): one step unless the caller floods known
        pictures (hashsvc/core/two_step.py)."""
        two_steps = self.recent_blocks.flooding(flooder)
        second = self._second_step_ahead(media, kind) if two_steps else None
        try:
            # a second step started ahead decodes the upload itself
            first = self.hashing.start_query(
                media, STAGE_VIEWS if two_steps else None, exact=False, with_picture=second is None
            )
        except BaseException:
            if second is not None:
                second.abandon()
            raise
        return first, second

    def _second_step_ahead(self, media: MediaSource, kind: str) -> StartedJob | None:
        """An image's second step (STAGE_LOCAL) started beside its first on a
        hashing worker that has nothing else to do (ImageLimits.
        second_step_when_idle), or None: the first step's answer then says
        whether it is needed at all. Not for a GIF: an animated one is hashed
        whole as a video in its first step."""
        if not self.config.image.second_step_when_idle or kind != sniff.IMAGE:
            return None
        if head_of(media).startswith(b"GIF"):
            return None
        return self.hashing.started_when_idle(media, STAGE_LOCAL, exact=False)

    def _exact_copy(
        self,
        media: MediaSource,
        kind: str,
        exact: list[Signal],
        only_sets: set[int] | None,
    ) -> tuple[str, list[Signal], tuple[str, ...], MatchResult] | None:
        """The answer to an upload whose bytes a known entry holds, when that
        blocks it in every set asked (Matcher's blocked_everywhere: no allow-list
        set asked), without hashing it: no other signal could change the
        decision. None when it does not, or when the upload's media type is
        not known without hashing (a sound or video container, or a GIF, that
        no known entry of one media type holds)."""
        result = self.matcher.match(exact, only_sets)
        if not result.blocked_everywhere:
            return None
        if kind == sniff.PDF:
            media_type = media_kinds.PDF
        elif kind == sniff.IMAGE and not head_of(media).startswith(b"GIF"):
            media_type = media_kinds.IMAGE  # a GIF's frames say whether it is a video
        else:
            entries = self.store.get_entries({m.entry_id for m in result.matches})
            types = {e.media_type for e in entries.values()} - {media_kinds.HASH}
            if len(types) != 1:
                return None
            media_type = types.pop()
        return media_type, exact, (NOT_HASHED,), result

    def _query_signals(self, query: MatchQuery) -> Hashed:
        """The signal of a query that sends a hash, not media."""
        if query.signal_type:
            sig_type = signal_type(query.signal_type)
            quality = query.signal_quality
            if quality is not None and not 0 <= quality <= 100:
                raise InvalidArgument("quality must be within 0..100")
            value = checked_value(
                sig_type.name,
                sig_type.parse(query.signal_value),
                self.config.local_features.max_keypoints,
                self.live.features.descriptor_bytes,
            )
            return Hashed(media_kinds.HASH, [Signal(sig_type.name, value, quality)])
        raise InvalidArgument("the request holds neither media nor a hash")

    def _set_ids(self, names: tuple[str, ...]) -> set[int] | None:
        if not names:
            return None
        by_name = self.set_ids_by_name()
        missing = [n for n in names if n not in by_name]
        if missing:
            raise NotFound(f"no such set: {', '.join(missing)}")
        return {by_name[n] for n in names}

    def _record(
        self,
        request_id: str,
        started: datetime,
        caller: str,
        rpc: str,
        query: MatchQuery,
        media_type: str,
        signals: list[Signal],
        outcome: MatchOutcome | None = None,
        exc: BaseException | None = None,
        caller_token_id: int | None = None,
        media_bytes: int = 0,
        status: str = "",
    ) -> None:
        self.audit.record_call(
            request_id=request_id,
            started=started,
            caller=caller,
            rpc=rpc,
            media_type=media_type or (media_kinds.HASH if query.signal_type else "unknown"),
            decision=outcome.decision if outcome else "",
            status=status or call_status(exc),
            error_message="" if exc is None else str(exc),
            client_ref=query.client_ref,
            media_bytes=size_of(query.media) if query.media is not None else media_bytes,
            query_signals=signals,
            matches=[m.to_json() for m in outcome.matches] if outcome else [],
            notes=outcome.notes if outcome else (),
            caller_token_id=caller_token_id,
            events=_decision_events(outcome, caller, query.client_ref),
        )

    def ready(self) -> bool:
        """Whether matching may decide: the index is loaded and current."""
        return not self.not_ready_reason()

    def not_ready_reason(self) -> str:
        """Why matching may not decide now ("" when it may): without the
        whole index an exact copy of a known item would be allowed."""
        if not self.live.ready.is_set():
            return "the index is loading; no decision until it is loaded, retry shortly"
        if self._index_lost.is_set():
            return "the index cannot read the store's changes; no decision until it has caught up"
        limit = self.config.index_stale_seconds
        behind = time.monotonic() - self.live.read_at
        if limit > 0 and behind > limit + self.config.change_poll_seconds:
            return (
                f"the index has not read the store's changes for {behind:.0f} s "
                f"(index_stale_seconds = {limit:g}); no decision until it has caught up"
            )
        return ""

    def _require_ready(self) -> None:
        reason = self.not_ready_reason()
        if reason:
            raise Unavailable(reason)

    # -- what the API layer asks of the core (it reaches no store itself)

    def set_ids_by_name(self) -> dict[str, int]:
        return {s.name: s.id for s in self.live.sets_by_id.values()}

    def export_entries(self, set_name: str, since_micros: int | None = None):
        """Batches of the set's entries (hashsvc/core/export.py)."""
        hash_set = self.curation.get_set(set_name)
        return export.export_entries(self.store, hash_set.id, since_micros)

    def create_token(
        self, actor: str, role: str, name: str, expires_in_seconds: int = 0
    ) -> tuple[TokenRecord, str]:
        """A new API token (the secret is returned once, never recorded)."""
        made: list[str] = []

        def create() -> TokenRecord:
            record, token = auth.create_token(self.store, role, name, expires_in_seconds)
            made.append(token)
            return record

        record = self._token_action(
            "CreateToken", actor, {"name": name[:200], "role": role[:50]}, create
        )
        return record, made[0]

    def list_tokens(self) -> list[TokenRecord]:
        return self.store.list_tokens()

    def revoke_token(self, actor: str, token_id: int) -> TokenRecord:
        return self._token_action(
            "RevokeToken", actor, {"token_id": token_id}, lambda: self.store.revoke_token(token_id)
        )

    def _token_action(self, action: str, actor: str, detail: dict, do) -> TokenRecord:
        """do(), recorded in the history whether it succeeds or fails (never
        the token itself: only its id, name, role and expiry)."""
        try:
            record = do()
        except Exception as exc:
            self.record_action(action, actor, detail, status_name(exc), str(exc))
            raise
        expires = record.expires_at.isoformat() if record.expires_at else None
        done = {"token_id": record.id, "name": record.name, "role": record.role}
        self.record_action(action, actor, {**detail, **done, "expires_at": expires})
        return record

    def stats(self) -> dict:
        sets = list(self.live.sets_by_id.values())
        return {
            "sets": len(sets),
            "enabled_sets": sum(1 for s in sets if s.enabled),
            "entries": sum(s.entry_count for s in self.store.list_sets()),
            "indexed_signals": self.store.count_signals(),
            "history_records": self.store.count_history(),
            "index_version": self.live.seq,
        }


def _snapshot_dir(config: Config) -> str:
    if config.index_snapshot:
        return config.index_snapshot
    if config.db_url.startswith("sqlite:///") and not is_in_memory_sqlite(config.db_url):
        path = config.db_url[len("sqlite:///") :]
        return os.path.abspath(path) + ".index"
    return ""


def _decision_events(outcome: MatchOutcome | None, caller: str, client_ref: str) -> list:
    """match.block / match.review for a decided Match (none for allow or a
    failed call): written with its history record."""
    if outcome is None:
        return []
    event = events.decision_event(
        request_id=outcome.request_id,
        decision=outcome.decision,
        media_type=outcome.media_type,
        client_ref=client_ref,
        caller=caller,
        matches=outcome.matches,
    )
    return [event] if event is not None else []


def _without_shifted_views(signals: list[Signal]) -> list[Signal]:
    """An audio upload's shifted views are searched, not shown, nor recorded
    unless history_keep_audio_shifted_views: 63 re-fingerprinted stretches
    (62 KB of JSON) would dwarf the fingerprint in every answer and history
    record (README: Retro-hunt says what retro-hunts lose by it)."""
    return [s for s in signals if parse_shift_variant(s.variant) is None]


def _days(seconds: float) -> str:
    days = seconds / 86_400
    return f"{days:g} day(s)" if days >= 1 else f"{seconds:g} s"
