"""Records the store reads and writes. Plain data; validation lives in the core."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property

from hashsvc.base.decisions import Thresholds
from hashsvc.base.signals import Signal


@dataclass(frozen=True)
class HashSetRecord:
    id: int
    name: str
    description: str
    labels: dict[str, str]
    # signal type name -> thresholds; a type missing here uses the core's defaults
    thresholds: dict[str, Thresholds]
    enabled: bool
    created_at: datetime
    updated_at: datetime
    entry_count: int = 0  # active (not removed) entries
    # An allow list: an upload matching one of its entries is allowed, and
    # its matches in other sets are suppressed (known-benign media).
    allow_list: bool = False
    # BLOCK decisions from this set also go to the review queue.
    review_blocks: bool = False
    # Reviewers may add confirmed uploads to this set (never an allow list:
    # a reviewer must not be able to un-block known content).
    review_target: bool = False
    # How far back a retro-hunt looks when entries are added to this set
    # (seconds); None: the server's retro_window; 0: no retro-hunt.
    retro_window_seconds: int | None = None


@dataclass(frozen=True)
class NewEntry:
    """An entry to add (Store.resolve_review_item adds one with the verdict)."""

    set_id: int
    name: str
    labels: dict[str, str]
    media_type: str
    signals: tuple[Signal, ...]
    added_by: str


@dataclass(frozen=True)
class EntryRecord:
    id: int
    set_id: int
    name: str
    labels: dict[str, str]
    media_type: str  # "image", "video", "audio", "pdf", "hash"
    created_at: datetime
    added_by: str
    removed_at: datetime | None = None
    # Filled by get_entry / get_entries(with_signals=True); empty otherwise.
    # Order is the variant number: signals[i] is stored with variant_no i.
    signals: tuple[Signal, ...] = ()


@dataclass(frozen=True)
class IndexedSignal:
    """One perceptual signal as the index needs it (see Store.iter_signals)."""

    entry_id: int
    variant_no: int
    kind: str
    value: bytes


@dataclass(frozen=True)
class Change:
    """One row of the change feed that keeps in-memory indexes current.

    op is "add_entry", "remove_entry" or "update_set". entry_id is set for the
    entry ops, set_id always. A bulk write's new entries are one change,
    op "add_entries:<last id>" with entry_id the first (hashdb.bulk_sql)."""

    seq: int
    op: str
    set_id: int
    entry_id: int | None


@dataclass(frozen=True)
class TokenRecord:
    id: int
    name: str
    role: str
    token_hash: str  # hex SHA-256 of the token; the token itself is never stored
    created_at: datetime
    revoked_at: datetime | None = None
    expires_at: datetime | None = None


@dataclass(frozen=True)
class ConsoleSession:
    """A web console session as the store keeps it (hashdb/console_sql.py),
    with the record of the token it was opened with, as it is now."""

    token: TokenRecord
    csrf: str
    created_at: datetime
    expires_at: datetime  # sign-in + the console's session_max_seconds
    flash: str | None = None  # a message for the next page, taken by this read


@dataclass(frozen=True)
class HistoryRecord:
    """One Match call (or failed call). Append-only once written."""

    request_id: str
    time: datetime
    caller: str
    rpc: str
    media_type: str
    decision: str  # "block" | "review" | "allow" | "" (failed call)
    status: str  # "OK" or a gRPC status code name
    error_message: str = ""
    client_ref: str = ""
    media_bytes: int = 0
    # JSON-ready dicts, stored as JSON text/jsonb:
    # query_signals: [{"signal_type","value","quality","variant"}]
    # matches: [{"set","set_id","entry","entry_id","signal_type","distance",
    #            "labels","decision","query_variant","known_variant","reason"}]
    query_signals: list[dict] = field(default_factory=list)
    matches: list[dict] = field(default_factory=list)
    id: int | None = None  # assigned by the store
    # What a reviewer's or operator's action did (rpc names the action), e.g.
    # {"review_id": 7, "resolution": "false_positive", "note": "..."}.
    detail: dict = field(default_factory=dict)
    # The caller's token (names are reused once a token is revoked; ids are
    # not); None for the server's own records and records older than it.
    caller_token_id: int | None = None
    # Sets an action touched (CreateSet, AddEntry, ...): indexed with the sets
    # of the matches, so `history --set` finds them.
    set_ids: tuple[int, ...] = ()


@dataclass(frozen=True)
class HistoryFilter:
    since: datetime | None = None  # inclusive
    until: datetime | None = None  # exclusive
    decision: str | None = None
    set_id: int | None = None  # records with at least one match in this set
    caller: str | None = None


@dataclass(frozen=True)
class HistoryVerification:
    """What `Store.verify_history` found. Problems name the first records
    where the chain does not hold (an edited record fails its own hash; a
    deleted or inserted one breaks the link of the record after it)."""

    records_checked: int
    unchained_records: int  # written before the chain existed
    head_hash: str  # the newest record's hash: anchor it elsewhere to detect truncation
    problems: list[tuple[int, str]] = field(default_factory=list)
    checkpoints_checked: int = 0  # checkpoints of the head the database was held against
    notes: list[str] = field(default_factory=list)  # what verify could not check
    # whether a deleted tail could show (a checkpoint file outside the database)
    truncation_checked: bool = False

    @property
    def intact(self) -> bool:
        return not self.problems


@dataclass(frozen=True)
class ReviewItem:
    """A Match that needs a person: what was asked, what matched, who decides."""

    id: int
    request_id: str
    created_at: datetime
    caller: str
    media_type: str
    client_ref: str
    query_signals: list[dict]
    matches: list[dict]
    status: str  # "open", "confirmed" or "false_positive"
    claimed_by: str = ""
    claim_expires_at: datetime | None = None
    resolved_by: str = ""
    resolved_at: datetime | None = None
    note: str = ""
    added_entry_id: int | None = None
    # "match" (a Match that needed a person) or "retro" (a retro-hunt found
    # an upload that was let through before its hash was known; request_id is
    # that upload's).
    source: str = "match"


@dataclass(frozen=True)
class ReviewFilter:
    status: str = "open"
    set_id: int | None = None
    label: tuple[str, str] | None = None  # (key, value) on any match
    media_type: str | None = None
    caller: str | None = None


@dataclass(frozen=True)
class Suppression:
    """A (query hash, known entry) pair a reviewer judged a false positive."""

    entry_id: int
    kind: str
    value: bytes
    review_id: int


@dataclass(frozen=True)
class NewEvent:
    """A notification to append to the outbox, in the transaction of its
    cause (hashsvc/core/events.py builds them). `body`: the event's JSON
    without its id, type and time (the store gives those)."""

    type: str
    body: dict
    # the hash sets it concerns: webhooks that name sets get only theirs
    set_names: tuple[str, ...] = ()


@dataclass(frozen=True)
class OutboxEvent:
    """An event as the outbox keeps it; ids grow in commit order."""

    id: int
    type: str
    time: datetime
    set_names: tuple[str, ...]
    body: dict
    # With a history key: whether the row's MAC verifies (False: not written
    # by hashsvc, never sent); None without a key.
    authentic: bool | None = None


@dataclass(frozen=True)
class EndpointState:
    """One webhook endpoint's delivery position, shared by all replicas.
    Events up to delivered_through are done (delivered, or failed and
    recorded); the next one is retried from first_failed_at on."""

    name: str
    delivered_through: int
    attempts: int
    first_failed_at: datetime | None
    next_attempt_at: datetime | None
    last_error: str
    # seconds of lease left, by the database's clock (claim and advance)
    lease_seconds_left: float = 0.0


@dataclass(frozen=True)
class EventFailure:
    """An event an endpoint never took within its retry_for_seconds."""

    endpoint: str
    event_id: int
    event_type: str
    failed_at: datetime
    attempts: int
    last_error: str


@dataclass(frozen=True)
class RetroPending:
    """A retro-hunt owed: for `entry_ids` (AddEntry, a confirmed review: the
    row is written in the entry's own transaction), or without them for the
    set's entries changed since `since` (microseconds; a bulk load or a feed
    fetch, written before its first entry). Cleared once its runs are
    queued. While the process that wrote it (or took it over) holds it
    (held_until, renewed while a load runs), no other queues it; once the
    hold lapses (that process died, or queueing failed) any replica does."""

    id: int
    set_id: int
    since: int
    trigger: str
    requested_by: str
    entry_ids: tuple[int, ...] = ()


@dataclass(frozen=True)
class RetroOwed:
    """Asks the store to write a RetroPending for an entry in the entry's
    own transaction, held by the writer for hold_seconds."""

    trigger: str
    hold_seconds: float


@dataclass(frozen=True)
class RetroRun:
    """One retro-hunt: new entries' signals against the uploads in the
    history since `since`, up to last_history_id (uploads after it were
    matched with the entries known); checkpoint is the last history id
    scanned, so a restarted server resumes there."""

    id: int
    trigger: str  # "AddEntry", "BulkLoad", "ResolveReview", "feed", "manual", ...
    requested_by: str
    set_id: int | None
    entry_ids: tuple[int, ...]
    since: datetime
    last_history_id: int
    checkpoint: int
    scanned: int
    hits: int
    state: str  # "queued", "running", "done", "failed", "skipped"
    error: str
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    # steps failed since it was queued or resumed, whichever server ran them
    # (hashsvc/core/retro.py fails the run at retro_max_attempts)
    failed_attempts: int = 0
    # the token of the claim that holds the run (claim_retro_run); the
    # holder's writes name it and are refused once another claim took over
    lease_owner: str | None = None


@dataclass(frozen=True)
class RetroPartition:
    """One task of a run on an engine (retro_engine = "dask"): the history
    records after_id < id <= upto_id, cut at a time boundary; done once its
    hits are recorded."""

    run_id: int
    number: int
    after_id: int
    upto_id: int
    done: bool = False
    scanned: int = 0
    hits: int = 0


_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HistoryUpload:
    """What a retro-hunt reads of one Match record in the history."""

    id: int
    request_id: str
    time: datetime
    caller: str
    client_ref: str
    media_type: str
    # the record's query_signals column as stored (JSON): a retro-hunt reads
    # the PDQ views out of it without parsing (hashsvc/core/retro_scan.py),
    # and parses the few uploads that may match (query_signals)
    signals_text: str
    caller_token_id: int | None = None

    @cached_property
    def query_signals(self) -> list[dict]:
        """The signals, parsed; none for a record that is not a list of
        signals as the history writes them (edited with database access:
        `history verify` says so). A retro-hunt skips it rather than fail,
        so one planted record cannot stop every hunt that covers it."""
        try:
            signals = json.loads(self.signals_text)
        except (ValueError, TypeError, RecursionError):
            signals = None
        if not isinstance(signals, list) or not all(isinstance(s, dict) for s in signals):
            _log.warning("history record %d: query signals unreadable, skipped", self.id)
            return []
        return signals
