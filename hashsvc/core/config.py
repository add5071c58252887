"""All settings in one object, with defaults; every limit is named here.

Read from a TOML file (`hashsvc serve --config FILE`), then overridden by
command-line flags. Unknown keys in the file are an error, so a typo in a limit
never silently leaves the default in force.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from hashsvc.base.addresses import is_loopback
from hashsvc.base.errors import InvalidArgument
from hashsvc.core.webhook_config import EventSettings, WebhookConfig, check_webhooks
from hashsvc.matching.policy import LocalFeatureMatching, PdqPolicy
from hashsvc.media.limits import AudioLimits, ImageLimits, PdfLimits, VideoLimits
from hashsvc.media.spool import Spool

# Where retro-hunt runs are scanned (Config.retro_engine).
RETRO_ENGINES = ("inprocess", "process", "dask")
# Threads a retro-hunt compares views on (more than the cores only waits).
MAX_RETRO_THREADS = 64
# The longest retro_pause_seconds: an hour between batches already stretches
# a 100,000-entry hunt over years of history past any use.
MAX_RETRO_PAUSE_SECONDS = 3600.0


@dataclass(frozen=True)
class StringLimits:
    """Lengths (in characters) of the strings a caller sends, checked where
    requests arrive (hashsvc/base/validation.py request_strings) before anything
    is stored: a 15 MiB client_ref in five Matches made every page of the
    review queue and of the history larger than a gRPC message, for good
    (the history is append-only). A string may not hold a NUL either
    (PostgreSQL text cannot)."""

    # The caller's reference to an upload: an id or a URL in its own store.
    # The history keeps 1000 characters of it (hashsvc/core/core.py).
    client_ref_chars: int = 1000
    # Set descriptions and reviewers' notes (as validation.MAX_TEXT).
    text_chars: int = 2000
    # A hash in its text form: 4 hours of Chromaprint are ~930k hex digits.
    signal_value_chars: int = 2 * 1024 * 1024
    # Every other string: names, filters, labels, page tokens, roles...
    other_chars: int = 1024
    # Items of a repeated field (MatchRequest.sets, thresholds) and labels.
    repeated_items: int = 1000

    @staticmethod
    def limit_for(field: str) -> str:
        """The field of this class that bounds a request string of this name
        (the gRPC and the HTTP API name their fields alike)."""
        if field == "client_ref":
            return "client_ref_chars"
        if field in ("description", "note"):
            return "text_chars"
        if field == "value":  # a hash's hex
            return "signal_value_chars"
        return "other_chars"

    def check(self, value: str, where: str, limit: str, field: str) -> None:
        """InvalidArgument naming the field and the limit's config key, if the
        string is longer than its limit or holds a NUL."""
        most = getattr(self, limit)
        if len(value) > most:
            raise InvalidArgument(
                f"{where} is longer than {most} characters ({len(value)})",
                field=field,
                limit=f"strings.{limit}",
            )
        if "\x00" in value:
            raise InvalidArgument(f"{where} holds a NUL character", field=field)


@dataclass(frozen=True)
class ConsoleSettings:
    """The web console's (hashsvc/http/console) settings and limits; the
    core's apply to what it does as well."""

    # Reviewers' previews: an https URL with {client_ref} and/or {request_id}
    # (each filled in percent-encoded whole), shown only when its host is one
    # of preview_allowed_hosts; "" = no previews.
    preview_url_template: str = ""
    preview_allowed_hosts: tuple[str, ...] = ()
    # A session ends after this long without a request, or this long after sign-in.
    session_idle_seconds: float = 1800.0
    session_max_seconds: float = 12 * 3600.0
    max_sessions: int = 10_000  # past it, the least recently used session ends
    page_size: int = 50  # rows of a queue, history or entries page
    upload_max_bytes: int = 64 * 1024 * 1024  # one media file added by upload
    upload_max_files: int = 100  # files in one upload form
    hash_list_max_bytes: int = 512 * 1024 * 1024  # a hash list loaded from the console
    max_load_jobs: int = 20  # loads kept for their progress page (running: all refused past it)
    max_load_jobs_per_token: int = 2  # loads one token may have running at once
    # Failed sign-ins a client address may make in a minute, bad tokens on
    # the HTTP and gRPC APIs included (hashsvc/core/sign_in_limits.py); past
    # it the address may not authenticate (429, RESOURCE_EXHAUSTED) until its
    # oldest failure is a minute old.
    # Each replica counts its own; behind a proxy every caller shares its
    # address (uvicorn's --proxy-headers gives the client's).
    sign_in_failures_per_minute: int = 10
    sign_in_tracked_addresses: int = 100_000  # past it, the longest-quiet address is forgotten
    shown_rejected_rows: int = 1000  # a load's rejected rows listed (all are counted)
    top_entries_records: int = 2000  # newest block/review records the top entries come from
    export_max_records: int = 1_000_000  # rows of one history export

    def __post_init__(self) -> None:
        # TOML gives a list; the settings are frozen
        object.__setattr__(self, "preview_allowed_hosts", tuple(self.preview_allowed_hosts))
        if not 1 <= self.page_size <= 1000:
            raise ValueError("console.page_size must be within 1..1000")
        numbers = (
            self.session_idle_seconds, self.session_max_seconds, self.max_sessions,
            self.upload_max_bytes, self.upload_max_files, self.hash_list_max_bytes,
            self.max_load_jobs, self.max_load_jobs_per_token, self.top_entries_records,
            self.export_max_records, self.sign_in_failures_per_minute,
            self.sign_in_tracked_addresses,
        )  # fmt: skip
        if min(numbers) <= 0 or self.shown_rejected_rows < 0:
            raise ValueError("console limits must be positive")


# hashsvc/index/multi_index.py REVIEW_SEARCHES (named here without importing it).
PDQ_REVIEW_SEARCHES = ("fast", "balanced", "thorough")


@dataclass(frozen=True)
class ExchangeSettings:
    """Partner feeds (hashsvc/exchange): the background fetcher's limits.
    Config file: an [exchange] table."""

    # The server fetches due feeds in the background (false: only
    # `exchange fetch` fetches).
    background: bool = True
    # How often the fetcher looks for due feeds and queued feedback (seconds).
    poll_seconds: float = 5.0
    # A replica holds a feed this long past its last committed page; a replica
    # that died mid-fetch frees its feeds after it (PostgreSQL: one fetcher a feed).
    lease_seconds: float = 300.0
    # Every HTTP call to a partner: its timeout and retries (5xx, 429).
    http_timeout_seconds: float = 60.0
    http_retries: int = 2
    # Bytes one partner answer (a page) may have at most, read or declared:
    # past it the fetch fails, its committed pages and checkpoint kept (an
    # endless or huge answer would otherwise be held whole in memory).
    max_response_bytes: int = 64 << 20
    # A failed fetch is retried after retry_base_seconds, doubling per
    # failure up to retry_max_seconds (never later than the feed's --every).
    retry_base_seconds: float = 30.0
    retry_max_seconds: float = 3600.0
    # The shortest --every a feed may have (a partner's rate limits).
    min_every_seconds: int = 60
    # Feedback to a partner that failed is retried after this (doubling,
    # at most feedback_max_attempts times).
    feedback_retry_seconds: float = 60.0
    feedback_max_attempts: int = 20
    # A fetched page is handed to the bulk path this many rows at a time; its
    # writer splits them into transactions of the store's bulk_write_seconds
    # (a Match waits for at most one) and its follower indexes what they
    # committed. Smaller hand-overs only add waits: at 2,000 a 10k-row page
    # waited for the writer five times.
    write_rows: int = 20_000
    # File feeds read lists on the server's disk, only under this directory
    # (symlinks resolved, at `exchange add` and at every fetch). "" = file
    # feeds are refused (FAILED_PRECONDITION): an operator token must not make
    # the server read any file it can.
    file_dir: str = ""
    # Bytes a file feed's list may have (its size when a fetch starts): the
    # library reads a listing whole, so a file grown by mistake (or by whoever
    # may write to file_dir) must not be held in the server's memory; past it
    # the fetch fails, reading and deleting nothing. 256 MiB: ~3.8M PDQ lines.
    max_file_bytes: int = 256 << 20
    # A secret file (>= 32 bytes, outside the database): feed credentials are
    # sealed under it, bound to their feed's settings (hashsvc/exchange/
    # credentials.py). "" = kept as text in their own table.
    credentials_key_file: str = ""
    # A whole listing (a file feed; --full; a stale checkpoint) deletes what it
    # no longer lists, but never more than this fraction of the feed's items
    # (a truncated file, a partner's bad day): past it the fetch fails.
    snapshot_max_delete_fraction: float = 0.5
    # A fetch's deletions at the source (tombstones in its pages) remove at
    # most this fraction of the items the feed held before it (a broken or
    # hostile page): the page past it is not applied and the fetch fails.
    max_delete_fraction: float = 0.5
    # Both fractions hold over a rolling window per feed, not per fetch: the
    # deletions applied within this many seconds, and a fetch's, may remove
    # at most the fraction of the feed's items when the window's deleting
    # began (a feed deleting 49% at every fetch emptied a set in a few).
    # 0 = each fetch on its own.
    delete_window_seconds: float = 86400.0
    # A feed's pages are fetched and parsed (python-threatexchange's client)
    # by a child process of the server, one a fetch, at fetch_nice: parsing
    # in the server held its GIL, and a Match (and the bulk writes its history
    # record waits for) waited (bench/exchange.py --breakdown). false: a
    # thread of the server fetches them.
    fetch_process: bool = True
    fetch_nice: int = 10
    # The longest the server waits for the child's next page (its HTTP calls,
    # retries and parsing): past it the child is killed and the fetch fails,
    # its committed pages kept, and is retried with backoff.
    page_seconds: float = 600.0

    def __post_init__(self) -> None:
        for name in (
            "page_seconds",
            "poll_seconds",
            "lease_seconds",
            "http_timeout_seconds",
            "retry_base_seconds",
            "retry_max_seconds",
            "feedback_retry_seconds",
        ):
            if not getattr(self, name) > 0:
                raise ValueError(f"exchange.{name} must be more than 0")
        if self.delete_window_seconds < 0:
            raise ValueError("exchange.delete_window_seconds must be >= 0")
        if self.max_response_bytes < 1024:
            raise ValueError("exchange.max_response_bytes must be at least 1024")
        if self.max_file_bytes < 1:
            raise ValueError("exchange.max_file_bytes must be at least 1")
        for name in ("snapshot_max_delete_fraction", "max_delete_fraction"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"exchange.{name} must be within 0..1")
        if self.write_rows < 1:
            raise ValueError("exchange.write_rows must be 1 or more")
        if not 0 <= self.fetch_nice <= 19:
            raise ValueError("exchange.fetch_nice must be within 0..19")
        if self.http_retries < 0 or self.min_every_seconds < 1 or self.feedback_max_attempts < 1:
            raise ValueError(
                "exchange.http_retries must be >= 0, min_every_seconds and"
                " feedback_max_attempts >= 1"
            )


@dataclass(frozen=True)
class Config:
    listen: str = "127.0.0.1:50051"
    db_url: str = "sqlite:///hashsvc.db"
    # Connecting to PostgreSQL gives up after this (libpq: whole seconds, at
    # least 2): a wrong host fails start-up in seconds with one line saying why.
    db_connect_timeout_seconds: float = 5.0
    # Hashing runs in worker processes; 0 means one per core.
    workers: int = 0
    # Hash each upload's two halves on two workers at once: p50 12.3 instead of
    # 13.5 ms for one client, but 113 instead of 136 req/s under load (each half
    # decodes the upload). Off by default: throughput matters more on 2 cores.
    split_query_hashing: bool = False
    # A hashing job past this is stopped (its worker killed and replaced).
    hash_timeout_seconds: float = 20.0
    # Address-space limit of each hashing worker: a decoder that balloons fails
    # that one request instead of taking the machine's memory. 0 = no limit.
    worker_memory_bytes: int = 2 * 1024 * 1024 * 1024
    # A hashing worker is replaced after this many jobs, returning the memory
    # a large decode left behind (bench/fuzz.py: 2 workers held 1.3 GB after
    # hostile videos). 0 = never. A replacement starts in ~1 s while the other
    # workers serve.
    worker_max_jobs: int = 2000
    # gRPC message limit; media larger than this is refused with RESOURCE_EXHAUSTED.
    max_message_bytes: int = 64 * 1024 * 1024
    max_batch_items: int = 1000
    # Requests per second per API token (each replica counts its own); 0 = off.
    rate_limit_per_second: float = 0.0
    rate_limit_burst: int = 0  # 0: one second's worth
    # Room for max_streams + twice max_unread_anonymous_calls and
    # max_unread_token_calls (48) held by idle callers, and 16 for the work
    # itself; an idle thread costs a stack and nothing else.
    grpc_threads: int = 64
    # Streams (uploads, BulkLoad, MatchBatch, exports, reflection) hold a gRPC
    # thread each for as long as they are open: 16 idle ones stalled every RPC
    # and the health check (issue 16). At most max_streams at once, fewer than
    # grpc_threads, so unary calls and health always find a thread; past a cap a
    # new stream gets RESOURCE_EXHAUSTED at once.
    max_streams: int = 8
    max_streams_per_token: int = 4  # callers without a token (reflection) share one
    # A stream that sends no message for this long ends with DEADLINE_EXCEEDED
    # (the server's own work between messages, e.g. a batch's items in flight,
    # does not count); one still receiving after stream_max_seconds ends too
    # (a 2 GiB upload at 1 MB/s takes ~36 min). A unary call's message must
    # arrive within stream_idle_seconds too (else the call is cancelled).
    stream_idle_seconds: float = 30.0
    stream_max_seconds: float = 3600.0
    # Calls without a token (health checks) whose request message has not
    # arrived yet (grpc waits for a message forever; headers only are enough):
    # past this many, the oldest are cancelled once they have waited
    # unread_grace_seconds, and past twice this many at once.
    max_unread_anonymous_calls: int = 4
    # The same for calls with a token (headers sent, the message never): per
    # token, and all tokens together. A pipeline's real calls are never the
    # ones cancelled: their message comes with the headers, and a busy server
    # hands it over within the grace (cancelling at once cancelled one real
    # Match of 8 concurrent clients on one token).
    max_unread_calls_per_token: int = 8
    max_unread_token_calls: int = 16
    unread_grace_seconds: float = 0.5
    # The interpreter makes a thread holding the GIL hand it over to a waiting
    # one after this (Python's default: 5 ms). A Match gives the GIL up at
    # every store round trip and gRPC step (~12 a call) and waits that long
    # for it each time while a feed fetch or bulk load keeps threads busy in
    # Python: with 1 ms Match's p99 during a 200k-hash fetch on PostgreSQL
    # fell 361 -> 266 ms (bench/exchange.py, median of three alternated runs
    # at load 14-17; nothing else changed there), for 0-10% more server CPU
    # (more hand-overs). On SQLite two alternated pairs disagreed (p99
    # 1133 -> 266 ms, 351 -> 622 ms): the machine's load swamps it there.
    # The setting is the whole process's: held while the server runs, given
    # back when it stops. 0: the process's interval left as it is (Python's
    # 5 ms unless changed). Under 0.1 ms refused: the interpreter would spend
    # its time handing the GIL back and forth (under 1 us it stores 0).
    gil_switch_seconds: float = 0.001
    # Server reflection (grpcurl and the like) needs no token: off unless asked for.
    reflection: bool = False
    # Review queue: a reviewer's claim on an item lasts this long.
    review_claim_seconds: float = 900.0
    # Flood alert: an entry matching more than this many uploads within the
    # window (counted across all replicas, in the store) raises one alert: a
    # metric, a history record and a review item, until an operator
    # acknowledges it (`hashsvc entries release`). Its matches are never
    # downgraded: a mass re-upload of known content stays blocked. 0 = off.
    # (Named after the quarantine this replaced, so existing configs work.)
    quarantine_matches: int = 200
    quarantine_window_seconds: float = 60.0
    # Each replica adds its flood counts to the store this often, in one
    # transaction, instead of a write per Match; an alert comes this much
    # later at most.
    flood_flush_seconds: float = 1.0
    # Entries counted in memory between flushes; past this a flush starts at
    # once (an int per entry: 100k entries are ~10 MB).
    flood_max_pending_entries: int = 100_000
    image: ImageLimits = field(default_factory=ImageLimits)
    # Media larger than a gRPC message comes as a stream of chunks (MatchUpload,
    # AddEntryUpload), spooled to a temporary file that is deleted after hashing.
    max_upload_bytes: int = 2 * 1024 * 1024 * 1024
    # Where uploads are spooled; "" = the system's temporary directory.
    spool_dir: str = ""
    # Bytes all uploads of this replica may hold in the spool at once (6 idle
    # streams held 901 MB before this limit; 16 x 2 GiB were possible), and
    # uploads one token may have in flight. Past either: RESOURCE_EXHAUSTED.
    spool_max_bytes: int = 4 * 1024 * 1024 * 1024
    max_uploads_per_token: int = 4
    # Hashing a video, audio or PDF may take this long (images: hash_timeout_seconds).
    media_timeout_seconds: float = 600.0
    video: VideoLimits = field(default_factory=VideoLimits)
    audio: AudioLimits = field(default_factory=AudioLimits)
    pdf: PdfLimits = field(default_factory=PdfLimits)
    pdq: PdqPolicy = field(default_factory=PdqPolicy)
    # Local features ([local_features] in the file): candidates asked of the
    # feature index, pictures verified per query, keypoints a blob may hold.
    local_features: LocalFeatureMatching = field(default_factory=LocalFeatureMatching)
    strings: StringLimits = field(default_factory=StringLimits)
    console: ConsoleSettings = field(default_factory=ConsoleSettings)
    exchange: ExchangeSettings = field(default_factory=ExchangeSettings)
    # A message of ListEntries, ExportEntries, QueryHistory or ListReviewItems
    # holds at most this much: pages are cut by size as well as by count (50
    # four-hour videos made a 69 MB page), and an entry larger than this is
    # split over several messages. grpc clients refuse messages over 4 MiB
    # unless told otherwise; what is past this is on the next page.
    max_page_bytes: int = 3 * 1024 * 1024
    # TLS: both set -> the server listens with TLS.
    tls_cert_file: str = ""
    tls_key_file: str = ""
    # Mutual TLS: set -> clients must present a certificate signed by this CA
    # (needs tls_cert_file and tls_key_file).
    tls_client_ca_file: str = ""
    # Plaintext (no TLS) is refused on a listen address other than loopback:
    # tokens and uploads would cross the network in clear. true allows it (a
    # TLS-terminating proxy in front, a trusted network), logged as a warning.
    allow_insecure: bool = False
    # A secret file: the match history's hash chain becomes an HMAC under it,
    # so database access alone cannot forge a consistent history. Needs
    # history_checkpoint_file: a key alone cannot show a deleted tail.
    history_key_file: str = ""
    # Checkpoints of the history's head (newest record's id and hash, and how
    # many records lead up to it), HMAC-signed with the history key when there
    # is one, are written into the history and appended to this file, which
    # should live outside the database's reach (another disk, a WORM mount,
    # shipped off-host): `history verify` holds the database to the file's
    # last checkpoint, so a cut-off tail or a nulled chain shows. "" = none
    # (only without history_key_file; verify then says it could not check
    # truncation).
    history_checkpoint_file: str = ""
    # A checkpoint after this many new records (one record in 100 more)...
    history_checkpoint_records: int = 100
    # ...or this long after the last one, if anything was written since: a
    # tail deleted after the last checkpoint is what verify cannot see.
    history_checkpoint_seconds: float = 60.0
    # The HTTP/JSON API (hashsvc/http) at HOST:PORT, in the same process and
    # over the same core, tokens, roles and limits as gRPC; empty = off. It
    # follows `listen`'s transport rules: TLS with tls_cert_file and
    # tls_key_file, plaintext only on loopback unless allow_insecure.
    http_listen: str = ""
    # HTTP connections served at once; past it a new one is answered 503 at
    # once (uvicorn's limit_concurrency): idle clients cannot take them all.
    http_max_connections: int = 64
    # Connections one address holds at once (past it: 429 and closed), and
    # how long a connection may wait for a request's headers (after it opens
    # or after an answer: keep-alive) before it is closed. Connections
    # waiting for headers are closed first when all http_max_connections are
    # taken, so only requests in progress fill the server, at most
    # http_max_connections_per_address of them from one address.
    http_max_connections_per_address: int = 16
    http_headers_seconds: float = 10.0
    # A request body must arrive at http_min_body_bytes_per_second on average
    # once http_body_grace_seconds have passed (counted only while the server
    # is reading it: not while a route has not asked for more, nor before
    # `100 Continue`); a slower one is answered 408 and its connection closed.
    # Without it, callers from many addresses sending a body a byte at a time
    # held every HTTP place for up to stream_max_seconds. 0 turns it off.
    # (Apache's mod_reqtimeout: body 20 s, then 500 bytes/s.)
    http_min_body_bytes_per_second: int = 1024
    http_body_grace_seconds: float = 10.0
    # A JSON request body at most (and max_message_bytes), refused 413 as it
    # passes. No JSON route carries media (uploads are raw or multipart; the
    # largest signal, local features, is 128 KiB of hex), and a body is
    # parsed on the event loop: json.loads holds the GIL, so a worker thread
    # would not free the loop (a 32 MiB array of numbers: 0.75 s of CPU
    # during which no other HTTP request is answered; 1 MiB: ~25 ms).
    http_max_json_bytes: int = 1024 * 1024
    # Threads that run the HTTP API's blocking work (matching, the store):
    # the rest wait their turn, so HTTP cannot starve the gRPC threads.
    http_threads: int = 16
    # Finished bulk-load jobs whose progress stays readable (the oldest
    # finished one is forgotten past this; so are feeds' last fetches over
    # HTTP), and jobs running at once.
    http_jobs_kept: int = 100
    http_jobs_running: int = 2
    # POST /v1/exchange/feeds/NAME/fetch waits this long for the fetch to end
    # and answers its result (200); a longer fetch goes on and is answered
    # 202 with its progress so far, polled at GET .../fetch. 0: always 202.
    http_fetch_wait_seconds: float = 10.0
    # Prometheus metrics over HTTP at HOST:PORT/metrics; empty = off.
    metrics_listen: str = ""
    # Where the index snapshot lives; empty -> next to a SQLite file, or none.
    index_snapshot: str = ""
    # How often to look for changes made by other replicas (seconds).
    change_poll_seconds: float = 1.0
    # A PostgreSQL NOTIFY wakes the change poller at once, and single changes
    # (AddEntry, a set's update, a removal) are applied at once; but a bulk
    # load or feed fetch commits (and notifies) every 0.25 s, and each
    # catch-up rebuilds the index's open segment, so after a catch-up that
    # applied a bulk write's entries (any thread's) the next comes at most
    # this much later (change_poll_seconds at most). 0 = at every NOTIFY.
    change_follow_seconds: float = 0.25
    # Matching answers UNAVAILABLE when the index has not read the store's
    # change feed for this long on top of change_poll_seconds (the wait
    # between reads): a replica cut off from its store cannot know what other
    # replicas added or removed meanwhile. A failed read counts at once. 0 =
    # only failed reads count.
    index_stale_seconds: float = 30.0
    # How often to refresh the index snapshot when something changed (seconds).
    snapshot_seconds: float = 300.0
    # How PDQ searches cover the review band (past 32 bits, where the index
    # cannot be exact): "fast", "balanced" or "thorough" (more of the band found
    # for more search time; hashsvc/index/multi_index.py, bench/scale.py).
    pdq_review_search: str = "balanced"
    # Notifications: [[webhook]] tables, one per endpoint, and [events]
    # (hashsvc/core/webhook_config.py).
    webhook: tuple[WebhookConfig, ...] = field(default=(), metadata={"table_of": WebhookConfig})
    events: EventSettings = field(default_factory=EventSettings)
    # Retro-hunt (hashsvc/core/retro.py): when entries are added, the uploads
    # of the last retro_window seconds (a set's own window overrides it; 0:
    # off) are matched against them. The other limits: RetroSettings.
    retro_window: float = 7 * 86_400
    # `history prune` keeps the query signals of every upload a retro-hunt
    # may still read: its `before` must be at least the longest retro window
    # in force (retro_window and every set's own, disabled sets too) plus
    # this margin in the past. The margin covers hunts that start late (an
    # owed hunt taken after its server died, a long bulk load, a full queue)
    # and looks back from when their entries were added.
    history_prune_margin_seconds: float = 86_400.0
    retro_max_entries_per_run: int = 100_000
    retro_max_open_runs: int = 100
    retro_batch_records: int = 10_000
    retro_lease_seconds: float = 60.0
    retro_poll_seconds: float = 5.0
    retro_pause_seconds: float = 0.0
    # How long a stopping server waits for its hunting thread (it stops at
    # the end of the step it is in; the run is given back at its checkpoint).
    retro_stop_seconds: float = 30.0
    retro_nice: int = 10
    retro_threads: int = 1
    # Where runs are scanned (hashsvc/core/retro_dask.py): "inprocess", the
    # default (the server's hunting thread), or "dask": one task per
    # partition of the history (time ranges of retro_partition_seconds, at
    # most retro_max_partitions) on Dask's distributed scheduler at
    # retro_scheduler_address (empty: a local cluster of retro_dask_workers
    # processes). Needs `pip install hashsvc[dask]`; workers read the store
    # at db_url, so a remote scheduler needs PostgreSQL.
    retro_engine: str = "inprocess"
    retro_scheduler_address: str = ""
    retro_dask_workers: int = 2
    retro_partition_seconds: float = 3600.0
    retro_max_partitions: int = 1000
    retro_engine_connect_seconds: float = 10.0
    retro_task_retries: int = 2
    # "process": a batch its child scans for longer than this is given up
    # (the child killed, the run retried from its checkpoint)
    retro_process_batch_seconds: float = 600.0
    # A run whose step fails (a store error) is retried from its checkpoint
    # after retro_retry_initial_seconds, doubling up to retro_retry_max_
    # seconds; marked failed after retro_max_attempts failed attempts (on any
    # server: counted with the run in the store; a resume starts it again).
    retro_max_attempts: int = 5
    retro_retry_initial_seconds: float = 2.0
    retro_retry_max_seconds: float = 120.0
    # Keep uploads' local features (~18 KB a picture) in the history, so a
    # retro-hunt can match crops and collages too. Off: the history keeps
    # their size and SHA-256 (README, Retro-hunt: the cost per day).
    history_keep_local_features: bool = False
    # Keep an audio upload's shifted views (63 re-fingerprinted stretches,
    # 62 KB of JSON a record) in the history, so a retro-hunt finds pitch-
    # and tempo-shifted copies too. Off: the fingerprint only (README,
    # Retro-hunt: what it costs and what is not found without them).
    history_keep_audio_shifted_views: bool = False

    def __post_init__(self) -> None:
        if self.history_checkpoint_records < 1 or self.history_checkpoint_seconds <= 0:
            raise ValueError(
                "history_checkpoint_records and history_checkpoint_seconds must be positive"
            )
        if self.history_key_file and not self.history_checkpoint_file:
            # A keyed chain with its tail (and the checkpoint records in it)
            # deleted is still a consistent chain: only a checkpoint outside
            # the database shows the cut. An operator who keys the history
            # wants that, so it is not left to be forgotten.
            raise ValueError(
                "history_key_file needs history_checkpoint_file (a file outside the database):"
                " without it a deleted tail of the history still verifies"
            )
        if self.pdq_review_search not in PDQ_REVIEW_SEARCHES:
            raise ValueError(f"pdq_review_search must be one of {', '.join(PDQ_REVIEW_SEARCHES)}")
        # A window or flush interval of 0 would divide by zero or spin the
        # flusher; a negative count would silently turn the alert off.
        if self.quarantine_matches < 0:
            raise ValueError("quarantine_matches must be 0 (off) or more")
        if self.quarantine_matches and not self.quarantine_window_seconds > 0:
            raise ValueError("quarantine_window_seconds must be more than 0")
        if not self.change_follow_seconds >= 0:  # NaN too
            raise ValueError("change_follow_seconds must be 0 or more")
        if not (self.gil_switch_seconds == 0 or 0.0001 <= self.gil_switch_seconds <= 1):  # NaN too
            raise ValueError(
                "gil_switch_seconds must be 0 (the process's interval kept) or within 0.0001..1"
            )
        if not self.flood_flush_seconds > 0:
            raise ValueError("flood_flush_seconds must be more than 0")
        if self.flood_max_pending_entries < 1:
            raise ValueError("flood_max_pending_entries must be 1 or more")
        for name in (
            "top_k",
            "max_verified",
            "max_verified_video",
            "frames_per_entry",
            "max_keypoints",
        ):
            if getattr(self.local_features, name) < 1:
                raise ValueError(f"local_features.{name} must be at least 1")
        if not self.local_features.min_votes >= 0:  # NaN too
            raise ValueError("local_features.min_votes must be 0 (verify all) or more")
        if not self.local_features.min_votes_spare >= 0:
            raise ValueError("local_features.min_votes_spare must be 0 or more")
        if self.local_features.max_verified_spare < 0:
            raise ValueError("local_features.max_verified_spare must be 0 (off) or more")
        self._check_transport()
        self._check_stream_limits()
        check_webhooks(self.webhook, self.events)
        self._check_retro()

    def _check_retro(self) -> None:
        if not 0 <= self.retro_window <= 10 * 365 * 86_400:
            raise ValueError("retro_window must be within 0 (off) .. 10 years, in seconds")
        if not 0 <= self.history_prune_margin_seconds <= 10 * 365 * 86_400:
            raise ValueError("history_prune_margin_seconds must be within 0 .. 10 years")
        for name in ("retro_max_entries_per_run", "retro_max_open_runs", "retro_batch_records"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        for name in ("retro_lease_seconds", "retro_poll_seconds", "retro_stop_seconds"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be more than 0")
        # bounded: an infinite or huge pause passed and then failed every batch
        # (the child's time.sleep and the thread's wait raise OverflowError)
        if not 0 <= self.retro_pause_seconds <= MAX_RETRO_PAUSE_SECONDS:  # NaN too
            raise ValueError(f"retro_pause_seconds must be within 0..{MAX_RETRO_PAUSE_SECONDS:.0f}")
        if not 0 <= self.retro_nice <= 19:
            raise ValueError("retro_nice must be within 0..19")
        if not 1 <= self.retro_threads <= MAX_RETRO_THREADS:
            raise ValueError(f"retro_threads must be within 1..{MAX_RETRO_THREADS}")
        for name in ("retro_dask_workers", "retro_max_partitions"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        for name in (
            "retro_partition_seconds",
            "retro_engine_connect_seconds",
            "retro_process_batch_seconds",
        ):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be more than 0")
        if self.retro_max_attempts < 1:
            raise ValueError("retro_max_attempts must be at least 1")
        if not 0 < self.retro_retry_initial_seconds <= self.retro_retry_max_seconds <= 86_400:
            raise ValueError(
                "retro_retry_initial_seconds must be more than 0 and at most"
                " retro_retry_max_seconds (at most a day)"
            )
        if self.retro_task_retries < 0:
            raise ValueError("retro_task_retries must be 0 or more")
        check_retro_engine(self.retro_engine, self.retro_scheduler_address, self.db_url)

    def retro_settings(self):
        from hashsvc.core.retro import RetroSettings
        from hashsvc.core.retro_dask import DaskSettings

        return RetroSettings(
            window_seconds=self.retro_window,
            max_entries_per_run=self.retro_max_entries_per_run,
            max_open_runs=self.retro_max_open_runs,
            batch_records=self.retro_batch_records,
            lease_seconds=self.retro_lease_seconds,
            poll_seconds=self.retro_poll_seconds,
            pause_seconds=self.retro_pause_seconds,
            stop_seconds=self.retro_stop_seconds,
            nice=self.retro_nice,
            threads=self.retro_threads,
            engine=self.retro_engine,
            max_attempts=self.retro_max_attempts,
            retry_initial_seconds=self.retro_retry_initial_seconds,
            retry_max_seconds=self.retro_retry_max_seconds,
            process_batch_seconds=self.retro_process_batch_seconds,
            dask=DaskSettings(
                scheduler_address=self.retro_scheduler_address,
                workers=self.retro_dask_workers,
                partition_seconds=self.retro_partition_seconds,
                max_partitions=self.retro_max_partitions,
                connect_seconds=self.retro_engine_connect_seconds,
                task_retries=self.retro_task_retries,
            ),
        )

    def _check_transport(self) -> None:
        # A half-made TLS config used to serve plaintext without a word.
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            given = "tls_cert_file" if self.tls_cert_file else "tls_key_file"
            raise ValueError(f"TLS needs both tls_cert_file and tls_key_file; only {given} is set")
        if self.tls_client_ca_file and not self.tls_cert_file:
            raise ValueError(
                "tls_client_ca_file (mutual TLS) needs tls_cert_file and tls_key_file too; "
                "without them the server would listen in plaintext"
            )
        for key in ("listen", "http_listen"):
            address = getattr(self, key)
            if not address or self.tls_cert_file or self.allow_insecure or is_loopback(address):
                continue
            raise ValueError(
                f"{key} = {address!r} is not a loopback address and TLS is not set: "
                "tokens and uploads would cross the network in clear; set tls_cert_file and "
                "tls_key_file, or allow_insecure = true (e.g. behind a TLS-terminating proxy)"
            )

    def _check_stream_limits(self) -> None:
        held = self.max_streams + 2 * (
            self.max_unread_anonymous_calls + self.max_unread_token_calls
        )
        if not 0 < self.unread_grace_seconds <= self.stream_idle_seconds:
            raise ValueError("unread_grace_seconds must be within (0, stream_idle_seconds]")
        if self.max_streams < 1 or held >= self.grpc_threads:
            raise ValueError(
                "max_streams must be at least 1 and max_streams + twice"
                " (max_unread_anonymous_calls + max_unread_token_calls) less than grpc_threads"
                f" ({held} >="
                f" {self.grpc_threads}): unary calls and the health check need threads that"
                " no idle caller can hold"
            )
        if not 1 <= self.http_max_connections_per_address <= self.http_max_connections:
            raise ValueError(
                "http_max_connections_per_address must be within 1..http_max_connections"
            )
        if self.http_max_json_bytes < 4096:
            raise ValueError("http_max_json_bytes must be at least 4096")
        if not 0 < self.http_headers_seconds <= 3600:
            raise ValueError("http_headers_seconds must be within 0 (not included) .. 3600")
        if self.http_min_body_bytes_per_second < 0:
            raise ValueError("http_min_body_bytes_per_second must be 0 (off) or more")
        if not 0 < self.http_body_grace_seconds <= 3600:
            raise ValueError("http_body_grace_seconds must be within 0 (not included) .. 3600")
        for name in (
            "http_max_connections",
            "http_threads",
            "http_jobs_kept",
            "http_jobs_running",
            "max_streams_per_token",
            "max_uploads_per_token",
            "max_unread_anonymous_calls",
            "max_unread_calls_per_token",
            "max_unread_token_calls",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        for name in ("stream_idle_seconds", "stream_max_seconds"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be more than 0")
        if not 0 <= self.http_fetch_wait_seconds <= 3600:
            raise ValueError("http_fetch_wait_seconds must be within 0..3600")
        if self.spool_max_bytes < self.max_upload_bytes:
            raise ValueError(
                f"spool_max_bytes ({self.spool_max_bytes}) must be at least max_upload_bytes"
                f" ({self.max_upload_bytes}): a largest upload must fit in the spool"
            )

    def history_key(self) -> bytes | None:
        if not self.history_key_file:
            return None
        with open(self.history_key_file, "rb") as f:
            key = f.read().strip()
        if len(key) < 16:
            raise ValueError(f"{self.history_key_file}: a history key needs at least 16 bytes")
        return key

    def page_bytes(self) -> int:
        """What a page or export message may hold: max_page_bytes, within
        half a gRPC message (the rest of the message, and room to spare)."""
        return max(4096, min(self.max_page_bytes, self.max_message_bytes // 2))

    def worker_count(self) -> int:
        return self.workers if self.workers > 0 else (os.cpu_count() or 1)


def load_config(path: str | None = None, **overrides) -> Config:
    values: dict = {}
    if path:
        with open(path, "rb") as f:
            values = tomllib.load(f)
    values.update({k: v for k, v in overrides.items() if v is not None})
    return _build(Config, values, "config")


def _build(cls, values: dict, where: str):
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(values) - set(fields)
    if unknown:
        raise ValueError(f"unknown setting(s) in {where}: {', '.join(sorted(unknown))}")
    kwargs = {}
    for name, value in values.items():
        default = (
            fields[name].default_factory()
            if callable(fields[name].default_factory)
            else fields[name].default
        )
        table_of = fields[name].metadata.get("table_of")
        if table_of is not None:  # [[name]]: a list of tables
            if not isinstance(value, list | tuple):
                raise ValueError(f"{where}.{name} must be a list of tables ([[{name}]])")
            items = []
            for i, item in enumerate(value):
                if isinstance(item, table_of):
                    items.append(item)
                elif isinstance(item, dict):
                    items.append(_build(table_of, item, f"{where}.{name}[{i}]"))
                else:
                    raise ValueError(f"{where}.{name}[{i}] must be a table")
            kwargs[name] = tuple(items)
        elif dataclasses.is_dataclass(default):
            if not isinstance(value, dict):
                raise ValueError(f"{where}.{name} must be a table")
            kwargs[name] = _build(type(default), value, f"{where}.{name}")
        else:
            kwargs[name] = value
    missing = [
        f.name
        for f in dataclasses.fields(cls)
        if f.name not in kwargs
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ValueError(f"{where} needs {', '.join(missing)}")
    return cls(**kwargs)


def new_spool(config: Config) -> Spool:
    """This replica's upload spool, within the configured limits."""
    return Spool(
        config.spool_dir,
        config.max_upload_bytes,
        config.spool_max_bytes,
        config.max_uploads_per_token,
    )


def is_in_memory_sqlite(db_url: str) -> bool:
    """A SQLite store that lives only in this process's memory: nothing else
    (a scanning process, a snapshot beside the file) can share it."""
    return (
        ":memory:" in db_url
        or db_url.rstrip("/") == "sqlite:"
        # SQLite reads "file:" names as URIs: file:NAME?mode=memory is in memory too
        or (db_url.startswith("sqlite:") and "mode=memory" in db_url)
    )


def check_retro_engine(engine: str, scheduler_address: str, db_url: str) -> None:
    """Refuses an engine setting that cannot work (Config, at start)."""
    if engine not in RETRO_ENGINES:
        raise ValueError(f"retro_engine must be one of {', '.join(RETRO_ENGINES)}")
    if engine == "process" and is_in_memory_sqlite(db_url):
        raise ValueError(
            'retro_engine = "process" cannot use an in-memory SQLite store: the scanning'
            " process opens the store itself and would see an empty database"
        )
    if engine != "dask":
        return
    try:
        import distributed  # noqa: F401
    except ImportError as exc:
        raise ValueError(
            'retro_engine = "dask" needs Dask\'s scheduler: pip install "hashsvc[dask]"'
        ) from exc
    if scheduler_address and "://" not in scheduler_address:
        raise ValueError("retro_scheduler_address must be a URL: tcp://HOST:PORT or tls://...")
    scheduler = urlsplit(scheduler_address) if scheduler_address else None
    if (
        scheduler is not None
        and scheduler.scheme != "tls"
        and not is_loopback(scheduler.netloc)
        and urlsplit(db_url).password
    ):
        # the workers get the store's URL through the scheduler: in clear
        # over the network, and to anyone who can reach a scheduler without TLS
        raise ValueError(
            "retro_scheduler_address: a remote scheduler without TLS would carry db_url's"
            " password in clear; use tls://, or a password file (PGPASSFILE) on each worker"
        )
    if db_url.startswith("sqlite:"):
        if is_in_memory_sqlite(db_url):
            raise ValueError(
                'retro_engine = "dask" cannot use an in-memory SQLite store: the workers'
                " are other processes and would each see an empty database"
            )
        if scheduler_address and not is_loopback(urlsplit(scheduler_address).netloc):
            raise ValueError(
                'retro_engine = "dask" with a remote scheduler needs PostgreSQL: a SQLite'
                " file is on this machine only, and workers elsewhere would read another"
                " file or none (a local cluster, retro_scheduler_address empty or on"
                " loopback, shares the file)"
            )
