"""The Store interface and open_store(url)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from typing import Protocol

from hashdb.bulk_sql import AddedSignals, BulkCounts, EntryUpsert, PlainSignals
from hashdb.exchange_sql import DeleteWindow, FeedbackRecord, FeedItem, FeedRecord, PageCounts
from hashdb.model import (
    Change,
    EndpointState,
    EntryRecord,
    EventFailure,
    HashSetRecord,
    HistoryFilter,
    HistoryRecord,
    HistoryUpload,
    HistoryVerification,
    IndexedSignal,
    NewEntry,
    NewEvent,
    OutboxEvent,
    RetroOwed,
    RetroPartition,
    RetroPending,
    RetroRun,
    ReviewFilter,
    ReviewItem,
    Suppression,
    Thresholds,
    TokenRecord,
)
from hashdb.urls import CONNECT_TIMEOUT_SECONDS, safe_url
from hashsvc.base.signals import Signal


class SetLookup(Protocol):
    """Reading hash sets (the live index, audit filters, review)."""

    def get_set(self, name: str) -> HashSetRecord | None: ...

    def get_set_by_id(self, set_id: int, count_entries: bool = True) -> HashSetRecord | None:
        """count_entries=False: entry_count is -1 (not counted; counting a
        set of 1M entries takes a scan of them)."""

    def set_ids_by_name(self, names: Iterable[str]) -> dict[str, int]:
        """The ids of the sets among `names` that exist (no entry count)."""

    def list_sets(self, include_disabled: bool = True) -> list[HashSetRecord]:
        """Ordered by name, with entry_count filled in."""


class SetStore(SetLookup, Protocol):
    """Hash sets (curation)."""

    def create_set(
        self,
        name: str,
        description: str,
        labels: dict[str, str],
        thresholds: dict[str, Thresholds],
        allow_list: bool = False,
        review_blocks: bool = False,
        review_target: bool = False,
    ) -> HashSetRecord:
        """Raises AlreadyExists if the name is taken, InvalidArgument for an
        allow list that is a review target. Records an update_set change."""

    def update_set(
        self,
        set_id: int,
        *,
        enabled: bool | None = None,
        description: str | None = None,
        labels: dict[str, str] | None = None,
        thresholds: dict[str, Thresholds] | None = None,
        review_blocks: bool | None = None,
        review_target: bool | None = None,
    ) -> HashSetRecord:
        """Replaces the given fields (thresholds: whole dict). Records an
        update_set change. Raises NotFound, or InvalidArgument (nothing
        changed) if an allow list would become a review target."""


class EntryLookup(Protocol):
    """Entries by id and by exact signal (the matcher, bulk loads, review)."""

    def get_entries(
        self, entry_ids: Iterable[int], with_signals: bool = False
    ) -> dict[int, EntryRecord]:
        """By id, removed ones included (removed_at set)."""

    def find_exact(self, kind: str, value: bytes) -> list[tuple[int, int]]:
        """(entry_id, variant_no) of active entries holding exactly this signal."""


class EntryStore(EntryLookup, Protocol):
    """Entries one at a time, pages and exports (curation, bulk export)."""

    def add_entry(
        self,
        set_id: int,
        name: str,
        labels: dict[str, str],
        media_type: str,
        signals: Iterable[Signal],
        added_by: str,
        retro: RetroOwed | None = None,
    ) -> EntryRecord:
        """Adds the entry and all its signals in one transaction, with an
        add_entry change (and, with `retro`, the retro-hunt it owes: a
        RetroPending for it). signals[i] gets variant_no i (at most 64 signals).
        Raises AlreadyExists if an active entry of that name is in the set."""

    def get_entry(self, set_id: int, name: str) -> EntryRecord | None:
        """The active entry of that name, with its signals."""

    def list_entries(
        self, set_id: int, after_id: int = 0, limit: int = 100, max_signals: int | None = None
    ) -> list[EntryRecord]:
        """Active entries with id > after_id, by id, with signals; with
        max_signals, only the first ones that hold that many signals in all
        (always at least one)."""

    def next_entry_id(self, set_id: int, after_id: int) -> int | None:
        """The first active entry's id after after_id, if any."""

    def signal_counts(self, entry_ids: Iterable[int]) -> dict[int, int]:
        """Signals each entry holds, by id (entries without any left out)."""

    def remove_entry(self, set_id: int, name: str) -> EntryRecord:
        """Marks the active entry removed (its rows stay for the record) and
        records a remove_entry change. Raises NotFound."""

    def count_signals(self) -> dict[str, int]:
        """Signal kind -> number of signals of active entries."""

    def entries_changed_since(self, set_id: int, since: int) -> list[int]:
        """Ids of the set's entries with a change at or after `since`
        (microseconds since the epoch), removed ones included."""

    def active_entries_by_set(self, entry_ids: Iterable[int]) -> dict[int, list[int]]:
        """Set id -> those of the entries that are active in it, in id order:
        what a retro-hunt of a load's entries needs, without an entry record
        each."""


class ChangeFeed(Protocol):
    """The change feed and what an index build reads (the live index)."""

    def current_seq(self) -> int:
        """The newest change's seq (0 when there is none)."""

    def changes_since(self, seq: int, limit: int = 10_000) -> list[Change]:
        """Changes with seq > the given one, oldest first."""

    def wait_for_change(self, timeout: float) -> bool:
        """Blocks up to `timeout` seconds; True as soon as another connection
        may have added changes (PostgreSQL: NOTIFY), False on timeout. A store
        that cannot tell just waits and returns False: callers poll anyway."""

    def iter_signals(
        self, kinds: Iterable[str], after_entry_id: int = 0
    ) -> Iterator[IndexedSignal]:
        """Signals of the given kinds of all active entries, by entry id, in
        batches under the hood (for building an index of millions)."""

    def indexed_signals(self, entry_ids: Iterable[int]) -> list[IndexedSignal]:
        """Signals of those of the entries that are active, by entry and variant."""


class BulkStore(Protocol):
    """Bulk writes (hashdb/bulk_sql.py) for bulk loads."""

    def bulk_upsert(self, set_id: int, entries: Iterable[EntryUpsert], added_by: str) -> BulkCounts:
        """Adds, updates (labels replaced when given, new signals appended) or
        removes (tombstones) entries by name, in one transaction, with one
        update_entry / remove_entry change per entry changed and one
        add_entries range change for the new ones (consecutive ids).
        Idempotent: entries already as wanted are counted unchanged."""

    def bulk_add_plain(
        self,
        set_id: int,
        rows: PlainSignals,
        added_by: str,
        expect_new: bool = False,
        noted: Callable[[AddedSignals], None] | None = None,
    ) -> tuple[BulkCounts, AddedSignals]:
        """bulk_upsert for a hash list of one signal an entry, column-wise:
        plain (named after the signal, no labels) or a feed's (its names and
        labels, see PlainSignals); also returns what it created and tells
        `noted` (on PostgreSQL before the commit wakes other threads, see
        hashdb/bulk_sql.py). With expect_new
        the names are not looked up first (same outcome; faster when none is
        there, slower when some are)."""

    @property
    def bulk_write_seconds(self) -> float:
        """About how long one bulk write transaction should take."""


class TokenStore(Protocol):
    """API tokens (auth, admin)."""

    def add_token(
        self, name: str, role: str, token_hash: str, expires_at: datetime | None = None
    ) -> TokenRecord: ...

    def find_token(self, token_hash: str) -> TokenRecord | None: ...

    def list_tokens(self) -> list[TokenRecord]: ...

    def revoke_token(self, token_id: int) -> TokenRecord:
        """Raises NotFound."""


class HistoryWriter(Protocol):
    """Appending to the match history (append-only: there is no update or
    delete)."""

    def record_match(self, record: HistoryRecord, events: Iterable[NewEvent] = ()) -> int:
        """Appends; returns the new id. `events` go to the outbox in the
        same transaction (the record is their cause)."""

    def record_retro_hit(
        self, record: HistoryRecord, run_id: int, owner: str, entry_id: int, request_id: str
    ) -> int | None:
        """A retro-hunt hit's record (RetroStore.add_retro_match), written
        with the mark that it is: None, nothing written, when it was recorded
        before or the run is no longer the owner's (RetroStore.claim_retro_run)."""


class HistoryStore(HistoryWriter, Protocol):
    """The match history, read and verified (audit)."""

    def query_history(
        self, filter: HistoryFilter, after_id: int = 0, limit: int = 100
    ) -> list[HistoryRecord]:
        """Records with id > after_id that pass the filter, oldest first."""

    def count_history(self) -> int: ...

    def verify_history(self, max_problems: int = 100) -> HistoryVerification:
        """Walks the whole history and checks every record's hash and link."""

    def history_head(self, after: tuple[int, int] | None = None) -> tuple[int, str, int] | None:
        """(id, hash, records up to it) of the newest chained record."""

    def last_history_id(self) -> int: ...

    def can_extend_history(self) -> bool:
        """A record written now keeps the chain verifying (same key or none)."""

    def history_anchor(self, history_id: int) -> tuple[str | None, int] | None:
        """(hash, records up to it) of one record; None if it is not there."""

    def last_history_record(self, rpc: str) -> HistoryRecord | None: ...

    def prune_history_signals(self, before_micros: int, batch: int = 10_000) -> int:
        """Drops the query signals of records before the time, keeping the
        chain verifying; how many records were pruned."""


class SuppressionLookup(Protocol):
    """Reviewers' verdicts that suppress matches (feedback)."""

    def suppressions_for(self, entry_ids: Iterable[int]) -> list[Suppression]: ...


class ReviewStore(SuppressionLookup, Protocol):
    """The review queue (hashdb/review_sql.py)."""

    def create_review_item(
        self,
        request_id: str,
        created_at: datetime,
        caller: str,
        media_type: str,
        client_ref: str,
        query_signals: list[dict],
        matches: list[dict],
    ) -> int: ...

    def get_review_item(self, item_id: int) -> ReviewItem | None: ...

    def list_review_items(
        self, filter: ReviewFilter, after_id: int = 0, limit: int = 100
    ) -> list[ReviewItem]:
        """Oldest first."""

    def claim_review_item(
        self,
        reviewer: str,
        claim_seconds: float,
        item_id: int | None = None,
        filter: ReviewFilter | None = None,
    ) -> ReviewItem | None:
        """Atomic: of reviewers racing for an item, exactly one gets it."""

    def resolve_review_item(
        self,
        item_id: int,
        reviewer: str,
        resolution: str,
        note: str,
        new_entry: NewEntry | None = None,
        suppressions: list[Suppression] | None = None,
        events: Iterable[NewEvent] = (),
        retro: RetroOwed | None = None,
        claim_expires_at: int | None = None,
    ) -> ReviewItem | None:
        """Only with a live claim of this reviewer (and, given
        claim_expires_at in microseconds, that very claim); None otherwise. Adds
        new_entry (to a review-target set that is not an allow list, else
        FailedPrecondition; AlreadyExists if its name is taken; with `retro`
        the retro-hunt it owes) and the suppressions and the events in the
        same transaction: all of it or none."""

    def add_suppressions(self, suppressions: list[Suppression]) -> None: ...


class FloodStore(Protocol):
    """Flood counts and alerts, shared by all replicas (flood counter, review)."""

    def add_flood_counts(
        self, counts: dict[int, int], bucket: int, window_buckets: int, threshold: int
    ) -> dict[int, int]:
        """Adds matches per entry to `bucket`, forgets buckets before the
        window; entry id -> matches in the window, for the counted entries past
        threshold without an open alert."""

    def flood_counted_entries(self) -> int: ...

    def raise_flood_alert(
        self, entry_id: int, reason: str, item: dict, events: Iterable[NewEvent] = ()
    ) -> int | None:
        """Opens the alert, its review item (create_review_item's
        arguments) and the events (each given the item's id as review_id) in
        one transaction: the item's id, or None if an alert was open already."""

    def release_entry(self, entry_id: int) -> bool:
        """Acknowledges the open alert and restarts the count; False if none."""

    def open_flood_alerts(self, entry_ids: Iterable[int]) -> dict[int, str]:
        """entry id -> reason, for those with an open alert."""


class EventWriter(Protocol):
    """Appending events with no other cause to write (hashsvc/core/events.py)."""

    def append_events(self, events: Iterable[NewEvent]) -> None:
        """In one transaction (their ids are given when they are read)."""


class OutboxStore(EventWriter, Protocol):
    """The event outbox and the webhook endpoints' positions, shared by all
    replicas (hashdb/outbox_sql.py; delivery and Events/Subscribe)."""

    def events_after(self, after_id: int, limit: int = 100) -> list[OutboxEvent]:
        """Events with id > after_id, oldest first: ids are given to committed
        events in the order they became visible, so a follower skips none."""

    def last_event_id(self) -> int: ...

    def endpoint_states(self) -> list[EndpointState]: ...

    def event_failures(
        self, after: tuple[int, str] = (0, ""), limit: int = 100
    ) -> list[EventFailure]:
        """By (event id, endpoint), after `after`."""

    def count_event_failures(self) -> dict[str, int]:
        """Endpoint name -> events it never took."""

    def start_endpoint(self, name: str) -> None:
        """Registers the endpoint at the outbox's head if it is new."""

    def claim_endpoint(self, name: str, owner: str, lease_seconds: float) -> EndpointState | None:
        """A lease on the endpoint for owner, unless another owner holds a live one."""

    def advance_endpoint(
        self, name: str, owner: str, through_id: int, lease_seconds: float
    ) -> EndpointState | None:
        """Events up to through_id done, lease renewed; None: lease lost."""

    def endpoint_attempt_failed(
        self, name: str, owner: str, error: str, retry_in_seconds: float, lease_seconds: float
    ) -> EndpointState | None:
        """One more failed attempt at the next event; None: lease lost."""

    def endpoint_give_up(
        self, name: str, owner: str, event_id: int, lease_seconds: float
    ) -> EndpointState | None:
        """Records event_id as failed for the endpoint and moves past it; None: lease lost."""

    def release_endpoint(self, name: str, owner: str) -> None: ...

    def prune_events(self, before: datetime, through_id: int, limit: int = 10_000) -> int:
        """Deletes events created before `before` with ids up to through_id."""


class RetroStore(Protocol):
    """Retro-hunt runs, their hits and what they read (hashdb/retro_sql.py)."""

    def create_retro_run(
        self,
        trigger: str,
        requested_by: str,
        set_id: int | None,
        entry_ids: Iterable[int],
        since_micros: int,
        state: str = "queued",
        error: str = "",
        created_micros: int | None = None,
    ) -> RetroRun:
        """created_micros: the instant the window was measured back from
        (now when None), so a run's window is what was asked however long
        the reads before the insert took."""

    def get_retro_run(self, run_id: int) -> RetroRun | None: ...

    def list_retro_runs(self, after_id: int = 0, limit: int = 100) -> list[RetroRun]:
        """Newest first."""

    def count_open_retro_runs(self) -> int: ...

    def claim_retro_run(self, lease_seconds: float) -> RetroRun | None:
        """Atomic: of replicas racing for a run, exactly one gets it, with a
        fresh lease_owner token that each of its writes below must give:
        one whose lease expired and was claimed again is refused (False,
        None: nothing written)."""

    def retro_progress(
        self, run_id: int, checkpoint: int, scanned: int, lease_seconds: float, *, owner: str
    ) -> bool: ...

    def retry_retro_run(
        self, run_id: int, error: str, delay_seconds: float, failed_attempts: int, *, owner: str
    ) -> bool:
        """A failed step: the error and the run's failed attempts so far
        kept with it, the run claimed again (by any server) after the delay."""

    def release_retro_run(self, run_id: int, *, owner: str) -> bool:
        """A stopping server gives its run back (queued, from its checkpoint)."""

    def finish_retro_run(
        self, run_id: int, state: str, error: str = "", *, owner: str | None
    ) -> bool:
        """owner None: a run that is not running (failed by hand)."""

    def history_uploads(self, after_id: int, upto_id: int, limit: int) -> list[HistoryUpload]: ...

    def history_pdq_views(
        self, after_id: int, upto_id: int, limit: int
    ) -> list[tuple[int, int, bytes | None, bytes | None]]: ...

    def history_packed_signals(
        self, after_id: int, upto_id: int, limit: int
    ) -> list[tuple[int, int, bytes | None, bytes | None, bytes | None]]:
        """(id, time, packed PDQ views, packed other signals, the text where
        either is not packed) of the records history_uploads gives."""

    def history_uploads_by_id(self, ids: Iterable[int]) -> list[HistoryUpload]: ...

    def add_retro_match(
        self,
        run_id: int,
        entry_id: int,
        history_id: int,
        decision: str,
        item: dict,
        events: Iterable[NewEvent] = (),
        *,
        owner: str,
    ) -> int | None:
        """The review item's id while the hit's history record is still to
        be written (a new hit, or one this run made before the server died),
        else None; the events (retro_match) are written with a new hit."""

    def add_retro_pending(
        self,
        set_id: int,
        since_micros: int,
        trigger: str,
        requested_by: str,
        hold_seconds: float = 0.0,
    ) -> RetroPending: ...

    def list_retro_pending(self) -> list[RetroPending]: ...

    def claim_retro_pending(self, hold_seconds: float, limit: int = 100) -> list[RetroPending]:
        """Rows nobody holds (their writer died, or failed to queue them),
        now held by the caller for hold_seconds; oldest first."""

    def hold_retro_pending(self, pending_ids: Iterable[int], hold_seconds: float) -> None: ...

    def release_retro_pending(self, pending_ids: Iterable[int]) -> None: ...

    def clear_retro_pending(self, pending_id: int) -> None: ...

    def clear_retro_pending_of_entries(self, entry_ids: Iterable[int]) -> list[int]:
        """Deletes the rows written with exactly these entries; their ids."""

    def unrecorded_retro_hits(self, run_id: int) -> list[tuple[int, str, int, int | None]]: ...

    def retro_matches_of(self, run_id: int) -> list[tuple[int, str, str, int | None]]: ...

    def set_retro_window(self, set_id: int, seconds: int | None) -> None: ...

    def resume_retro_run(self, run_id: int) -> bool:
        """A failed run queued again (from its checkpoint and partitions)."""

    def history_time_cuts(self, after_id: int, upto_id: int, times: list[int]) -> list[int]:
        """For each time (microseconds), the last id before its first record
        after_id < id <= upto_id (a partition's after_id)."""

    def plan_retro_partitions(self, run_id: int, cuts: list[tuple[int, int]]) -> None:
        """The run's partitions, (after_id, upto_id) each; kept if planned before."""

    def retro_partitions(self, run_id: int) -> list[RetroPartition]: ...

    def finish_retro_partition(
        self, run_id: int, number: int, scanned: int, hits: int, *, owner: str
    ) -> bool: ...


class ExchangeStore(Protocol):
    """Partner feeds, their item mapping, lease and feedback queue
    (hashdb/exchange_sql.py has the methods and their contracts)."""

    def create_feed(
        self, name, api, set_id, labels, options, every_seconds, secret, created_by
    ) -> FeedRecord: ...
    def get_feed(self, name: str) -> FeedRecord | None: ...
    def list_feeds(self) -> list[FeedRecord]: ...
    def set_feed_enabled(self, name: str, enabled: bool) -> FeedRecord: ...
    def remove_feed(self, name: str) -> FeedRecord: ...
    def feed_secret(self, feed_id: int) -> bytes | None: ...
    def due_feeds(self, now: int) -> list[FeedRecord]: ...
    def acquire_feed_lease(self, feed_id: int, owner: str, seconds: float) -> bool: ...
    def renew_feed_lease(self, feed_id: int, owner: str, seconds: float) -> bool: ...
    def feed_items(self, feed_id: int, keys: list[str]) -> dict[str, FeedItem]: ...
    def all_feed_items(self, feed_id: int) -> dict[str, FeedItem]: ...
    def feed_item_for_entry(self, feed_id: int, entry_name: str) -> FeedItem | None: ...
    def commit_feed_page(
        self,
        feed_id,
        owner,
        checkpoint,
        mapped,
        unmapped,
        counts,
        lease_seconds,
        window_base=None,
        expect_new=False,
    ) -> PageCounts: ...
    def delete_window(self, feed_id: int, since: int) -> DeleteWindow: ...
    def feed_set_name(self, set_id: int) -> str: ...
    def finish_feed_fetch(self, feed_id, owner, result, error, next_run_at, failed) -> None: ...
    def queue_feedback(
        self, feed_id: int, entry_name: str, verdict: str, created_by: str
    ) -> int: ...
    def due_feedback(self, now: int, limit: int = 100) -> list[FeedbackRecord]: ...
    def claim_feedback(self, feedback_id: int, retry_at: int) -> bool: ...
    def mark_feedback(self, feedback_id: int, state: str, error: str = "") -> None: ...
    def feedback_for(self, feed_id: int, entry_name: str | None = None) -> list[FeedbackRecord]: ...


class Store(
    RetroStore,
    ExchangeStore,
    SetStore,
    EntryStore,
    ChangeFeed,
    BulkStore,
    TokenStore,
    HistoryStore,
    ReviewStore,
    FloodStore,
    OutboxStore,
    Protocol,
):
    """Everything hashsvc persists: what open_store returns. Implementations
    are thread-safe. Each consumer is handed only the small interfaces above
    that it calls.

    Errors: AlreadyExists / NotFound from hashsvc.base.errors where stated; anything
    else is a bug or an outage and propagates.
    """

    def close(self) -> None: ...


# How long connecting to PostgreSQL may take before start-up fails with a
# one-line reason (a wrong host waited 30 s and ended in a traceback).


def open_store(
    url: str,
    history_key: bytes | None = None,
    connect_timeout: float = CONNECT_TIMEOUT_SECONDS,
) -> Store:
    """sqlite:///relative/or/absolute/path, sqlite:///:memory: (tests),
    postgresql://host:port/db[?options=-csearch_path%3Dschema].
    history_key: sign the history chain with HMAC under this secret.
    A store that cannot be opened raises Unavailable with one line saying
    why (never the password)."""
    if url.startswith("sqlite://"):
        from hashdb.sqlite import SQLiteStore

        return SQLiteStore(url, history_key=history_key)
    if url.startswith(("postgresql://", "postgres://")):
        from hashdb.postgres import PostgresStore

        return PostgresStore(url, history_key=history_key, connect_timeout=connect_timeout)
    raise ValueError(
        f"unsupported store URL {safe_url(url)!r}: use sqlite:///PATH or postgresql://..."
    )
