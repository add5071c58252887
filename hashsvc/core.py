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
from datetime import UTC, datetime

from hashdb import HistoryRecord, Store, open_store
from hashsvc.audit import Audit
from hashsvc.bulk import BulkLoad, BulkResult, PackedRows, RowBatch
from hashsvc.config import Config
from hashsvc.curation import Curation
from hashsvc.errors import HashsvcError, InvalidArgument, NotFound, quoted, status_name
from hashsvc.hashing import HashingPool
from hashsvc.live_index import LiveIndex
from hashsvc.matcher import Match, Matcher
from hashsvc.media.dispatch import MediaLimits, MediaSource, size_of
from hashsvc.policy import Policy
from hashsvc.review import Feedback, FloodGuard, ReviewQueue
from hashsvc.signals import Signal, signal_type

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
        self.live = LiveIndex(store, _snapshot_dir(config), config.pdq_review_search)
        self.matcher = Matcher(self.live, self.policy)
        self.curation = Curation(store, self.live, hashing)
        self.audit = Audit(store)
        self.feedback = Feedback(store)
        self.review = ReviewQueue(store, self.curation, config.review_claim_seconds)
        self.flood = FloodGuard(config.quarantine_matches, config.quarantine_window_seconds)
        self._poller: threading.Thread | None = None
        self._stopping = threading.Event()
        # Called with every successful Match outcome (metrics); must not raise.
        self.on_match: Callable[[MatchOutcome], None] | None = None

    @classmethod
    def open(cls, config: Config, hash_in_process: bool = False) -> Core:
        store = open_store(config.db_url, history_key=config.history_key())
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
        self.live.load()
        self._poller = threading.Thread(target=self._poll_changes, daemon=True, name="changes")
        self._poller.start()

    def _poll_changes(self) -> None:
        saved_seq, saved_at = self.live.seq, time.monotonic()
        while not self._stopping.is_set():
            try:
                # woken at once by a PostgreSQL NOTIFY, else after the poll interval
                self.store.wait_for_change(self.config.change_poll_seconds)
                if self._stopping.is_set():
                    return
                self.live.catch_up()
                # A fresh snapshot keeps restarts fast even after a crash.
                due = time.monotonic() - saved_at > self.config.snapshot_seconds
                if due and self.live.seq != saved_seq:
                    self.live.save_snapshot()
                    saved_seq, saved_at = self.live.seq, time.monotonic()
            except Exception:  # keep following; the next poll retries
                log.exception("applying changes failed")

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def close(self) -> None:
        self._stopping.set()
        if self.live.ready.is_set():
            try:
                self.live.save_snapshot()
            except Exception:
                log.exception("saving the index snapshot failed")
        self.hashing.close()
        self.store.close()

    # -- matching

    def match(self, query: MatchQuery, caller: str, rpc: str = "Match") -> MatchOutcome:
        """Hash (if media), match, decide; every call, failed or not, is recorded."""
        request_id = uuid.uuid4().hex
        started = datetime.now(UTC)
        media_type, signals, notes = "", [], ()
        try:
            only_sets = self._set_ids(query.sets)
            media_type, signals, notes = self._query_signals(query)
            result = self.matcher.match(signals, only_sets)
            result = self.feedback.apply(result, signals, self.live.sets_by_id)
        except HashsvcError as exc:
            self._record(request_id, started, caller, rpc, query, media_type, signals, exc=exc)
            raise
        except Exception as exc:
            log.exception("match %s failed", request_id)
            self._record(request_id, started, caller, rpc, query, media_type, signals, exc=exc)
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
        self._record(request_id, started, caller, rpc, query, media_type, signals, outcome)
        self._after_match(outcome, caller)
        if self.on_match is not None:
            self.on_match(outcome)
        return outcome

    def _after_match(self, outcome: MatchOutcome, caller: str) -> None:
        # The answer stands even if the queue cannot be written: the history
        # holds the REVIEW decision, and the failure is logged.
        try:
            self.review.enqueue(outcome, caller, self.live.sets_by_id)
            hit = [m.entry_id for m in outcome.matches if m.decision != "allow"]
            for entry_id, count in self.flood.observe(hit):
                self.review.quarantine(entry_id, count, self.flood.window_seconds)
        except Exception:
            log.exception("review queue update for %s failed", outcome.request_id)

    def record_action(
        self, action: str, actor: str, detail: dict, status: str = "OK", error_message: str = ""
    ) -> None:
        """An operator's write in the hash-chained history; a failed one names
        its status, as a failed Match does."""
        self.review.record_action(action, actor, detail, status=status, error_message=error_message)

    # -- bulk loads

    def bulk_load(
        self,
        set_name: str,
        caller: str,
        batches: Iterable[RowBatch | PackedRows],
        strict: bool = False,
        status_of: Callable[[BaseException | None], str] = call_status,
    ) -> BulkResult:
        """Loads the batches into the set (hashsvc/bulk.py). Every load, failed
        or not, leaves one history record: each batch commits on its own, so a
        load that failed part-way changed the set too, and its record holds
        what was committed before it failed. `status_of(exception or None)`
        names the status the call ends with: the gRPC layer knows a cancelled
        call (grpc may end a cancelled call's request stream as if the client
        had sent everything: the load then completes, and its client never
        hears of it)."""
        run: BulkLoad | None = None
        try:
            hash_set = self.curation.get_set(set_name)
            run = BulkLoad(
                self.store, self.live, hash_set.id, caller, strict, self.config.spool_dir
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
            raise
        self._record_bulk_load(set_name, caller, strict, result, result.written, status_of)
        return result

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
            self.record_action("BulkLoad", caller, detail, status_of(exc), error)
        except Exception:
            log.exception("the history record of a bulk load into %s failed", quoted(set_name))

    def _query_signals(self, query: MatchQuery) -> tuple[str, list[Signal], tuple[str, ...]]:
        if query.media is not None and query.signal_type:
            raise InvalidArgument("send media or a hash, not both")
        if query.media is not None:
            hashed = self.hashing.hash_query(query.media)
            return hashed.media_type, hashed.signals, hashed.notes
        if query.signal_type:
            sig_type = signal_type(query.signal_type)
            quality = query.signal_quality
            if quality is not None and not 0 <= quality <= 100:
                raise InvalidArgument("quality must be within 0..100")
            signal = Signal(sig_type.name, sig_type.parse(query.signal_value), quality)
            return "hash", [signal], ()
        raise InvalidArgument("the request holds neither media nor a hash")

    def _set_ids(self, names: tuple[str, ...]) -> set[int] | None:
        if not names:
            return None
        by_name = {s.name: s.id for s in self.live.sets_by_id.values()}
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
    ) -> None:
        record = HistoryRecord(
            request_id=request_id,
            time=started,
            caller=caller,
            rpc=rpc,
            media_type=media_type or ("hash" if query.signal_type else "unknown"),
            decision=outcome.decision if outcome else "",
            status="OK" if exc is None else status_name(exc),
            error_message="" if exc is None else str(exc)[:1000],
            client_ref=query.client_ref[:1000],
            media_bytes=size_of(query.media) if query.media is not None else 0,
            query_signals=[signal_json(s) for s in signals],
            matches=[m.to_json() for m in outcome.matches] if outcome else [],
            detail={"notes": list(outcome.notes)} if outcome and outcome.notes else {},
        )
        self.store.record_match(record)

    def ready(self) -> bool:
        return self.live.ready.is_set()

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


def signal_json(sig: Signal) -> dict:
    return {
        "signal_type": sig.kind,
        "value": sig.hex(),
        "quality": sig.quality,
        "variant": sig.variant,
    }


def _snapshot_dir(config: Config) -> str:
    if config.index_snapshot:
        return config.index_snapshot
    if config.db_url.startswith("sqlite:///") and ":memory:" not in config.db_url:
        path = config.db_url[len("sqlite:///") :]
        return os.path.abspath(path) + ".index"
    return ""
