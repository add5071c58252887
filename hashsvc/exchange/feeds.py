"""Partner feeds: a feed loads one set from one exchange API, incrementally
from its stored checkpoint, through the bulk path (hashsvc/core/bulk.py), so
what bulk loads gain, feeds gain, and Match keeps running between its short
transactions.

Each page of a fetch is written as bulk rows (one entry per source item,
named FEED:ITEM, with the source's labels, its id and the feed's name), then
its item mapping, counts and checkpoint commit together. A fetch killed
between the two writes the page again when it resumes: the bulk path finds
the entries as they are (unchanged), so nothing is duplicated.

A feed's entries are its own (their names start with the feed's name): a
deletion at the source tombstones the feed's entry only, and an entry added
locally with the same hash keeps matching.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import json
import logging
import os
import queue
import re
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime

from hashdb import ExchangeStore
from hashdb.exchange_sql import (
    FEEDBACK_QUEUED,
    FEEDBACK_SENT,
    FEEDBACK_UNSUPPORTED,
    DeleteWindow,
    FeedbackRecord,
    FeedItem,
    FeedRecord,
    PageCounts,
    require_lease,
)
from hashdb.label_sets import SOURCE_ID_LABEL  # kept in its own column
from hashdb.times import now_micros
from hashsvc.base import validation
from hashsvc.base.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
    quoted,
)
from hashsvc.base.signals import SIGNAL_TYPES
from hashsvc.core import events
from hashsvc.core.bulk import BulkLoad, RowBatch
from hashsvc.core.bulk_rows import RowError, row_value
from hashsvc.core.config import ExchangeSettings
from hashsvc.core.core import Core
from hashsvc.exchange.credentials import CredentialBox
from hashsvc.exchange.fetch_process import FetchChildren, child_pages, error_text
from hashsvc.exchange.sources import (
    APIS,
    FeedbackUnsupported,
    SourceConfig,
    SourceItem,
    SourcePage,
    open_source,
)

log = logging.getLogger(__name__)

_FEED_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# Options each API takes (`exchange add` flags); base_url points a client at
# another server (a mirror, or the tests' local one).
API_OPTIONS = {
    "threatexchange": {"privacy_group", "base_url"},
    "tcap": {"base_url"},
    "ncmec": {"environment", "base_url"},
    "stopncii": {"base_url"},
    "file": {"path", "signal_type"},
}
VERDICTS = ("confirmed", "false_positive")
# A feed is fetched every 15 minutes unless told otherwise (`exchange add --every`)
DEFAULT_EVERY_SECONDS = 900
# Labels hashsvc sets on every feed entry (they win over the source's)
FEED_LABEL = "feed"
# Longest credentials text accepted (a token, user:password, two keys)
MAX_CREDENTIALS_CHARS = 4096


@dataclass
class FetchResult:
    feed: str
    pages: int = 0
    items: int = 0
    added: int = 0
    updated: int = 0
    deleted: int = 0
    skipped: int = 0  # signals of types hashsvc does not keep
    rejected: int = 0  # rows refused (bad hash, entry name or source id): never mapped
    seconds: float = 0.0
    error: str = ""
    # deletions refused past the deletion budget (none applied): a metric
    deletions_refused: int = 0


class DeletionsRefused(FailedPrecondition):
    """A fetch's deletions past exchange.max_delete_fraction or
    snapshot_max_delete_fraction over exchange.delete_window_seconds."""

    def __init__(self, message: str, count: int) -> None:
        super().__init__(message)
        self.count = count


def _window_text(seconds: float) -> str:
    return f"{seconds / 3600:g} h" if seconds >= 3600 else f"{seconds:g} s"


def check_deletions(
    deleting: int,
    held: int,
    window: DeleteWindow,
    limit: float,
    window_seconds: float,
    setting: str,
    what: str,
) -> None:
    """A fetch's deletions against the feed's budget: with those applied
    within the window, at most `limit` of the feed's items when the window's
    deleting began (its items before this fetch when nothing was deleted
    within it). Raises DeletionsRefused, deleting nothing."""
    base = held if window.held is None else window.held
    if not deleting or window.deleted + deleting <= limit * base:
        return
    before = ""
    if window.deleted:
        before = (
            f" after {window.deleted} deleted within the last {_window_text(window_seconds)}"
            " (exchange.delete_window_seconds)"
        )
    raise DeletionsRefused(
        f"{what} {deleting} of the feed's {base} items{before}, more than {limit:.0%}"
        f" ({setting}): nothing deleted, checkpoint kept",
        deleting,
    )


@dataclass
class _DeleteGuard:
    """A fetch's deletions at the source, held back until its last page: a
    broken or hostile page marking most hashes deleted would tombstone the
    set, which then answers ALLOW. Past exchange.max_delete_fraction of what
    the feed held before the fetch none is applied and the checkpoint stays
    before the first page that deleted, so every retry is refused the same
    way (never half now, half of the rest next time) until an operator acts."""

    held: int  # the feed's items before the fetch
    limit: float
    window: DeleteWindow  # deletions applied within exchange.delete_window_seconds
    window_seconds: float
    # keys the fetch mapped that the feed did not hold: deleted at once (they
    # take nothing held away)
    fresh: set[str] = field(default_factory=set)
    pending: dict[str, FeedItem] = field(default_factory=dict)  # held items deleted
    kept: str | None = None  # the checkpoint before the first pending deletion
    holding: bool = False

    def held_before(self, key: str, known: dict[str, FeedItem]) -> bool:
        """Whether the feed held the key before this fetch (mapped now, and
        not by this fetch's pages)."""
        return bool(self.held) and key in known and key not in self.fresh

    def checkpoint(self, previous: str | None, current: str | None) -> str | None:
        """The checkpoint a page commits: the page's, until a deletion is held."""
        if self.pending and not self.holding:
            self.holding, self.kept = True, previous
        return self.kept if self.holding else current

    def check(self) -> None:
        check_deletions(
            len(self.pending),
            self.held,
            self.window,
            self.limit,
            self.window_seconds,
            "exchange.max_delete_fraction",
            "the source deletes",
        )


@dataclass
class _BuiltPage:
    """A page as bulk rows, with its mapping and checkpoint to commit once
    the rows are written."""

    columns: dict[str, list]
    mapped: list[FeedItem]
    unmapped: list[str]
    counts: PageCounts
    checkpoint: str | None
    items: int
    # the feed's items before this fetch, when the page's deletions count in
    # its deletion window (against that size, not one the fetch's own
    # additions padded); None: not counted
    window_base: int | None = None


class _PageChain:
    """A fetch's pages, overlapped: page N is built (the fetch's thread)
    while page N-1's rows are written (the bulk path's writer thread) and
    the mapping and checkpoint of the page before commit (a committer
    thread); the next page is fetched meanwhile (_prefetched). Each stage
    still waits for its own previous one, never for the others. A page's
    checkpoint commits only after its rows are written and every page
    before it has committed (one committer, in order), so a server killed
    at any point resumes from a page whose rows, and all before, are in the
    store; the pages after it are written again and found unchanged."""

    def __init__(
        self,
        feeds: Feeds,
        feed: FeedRecord,
        run: BulkLoad,
        result: FetchResult,
        guard: _DeleteGuard | None,
        progress: Callable[[FetchResult], None] | None,
    ) -> None:
        self.feeds, self.feed, self.run = feeds, feed, run
        self.result, self.guard, self.progress = result, guard, progress
        self._written: _BuiltPage | None = None  # rows handed to the writer, not committed
        # the bulk path's counts when the page being written was handed over
        self._marks = (run.result.counts.updated, run.result.rejected_count)
        self._committing: collections.deque = collections.deque()  # (future, page), in order
        self._expect_new = not feed.items  # see _commit
        # the first commit that failed: every later page's commit is refused
        # (on the committer thread, in order), so no checkpoint moves past
        # a page whose mapping or checkpoint was not committed
        self._failed: BaseException | None = None

    def send(self, page: _BuiltPage) -> None:
        """The page's rows to the writer once the page before is written
        (whose commit then starts); returns without waiting for either."""
        self._hand_over()
        self.feeds._send_rows(self.feed, self.run, page)
        self._written = page
        self._settle(block=False)

    def drain(self) -> None:
        """Until every page sent is written and committed."""
        self._hand_over()
        self._settle(block=True)

    def close(self) -> None:
        # the committer is the server's (Feeds.committer): only this chain's
        # commits are waited for
        while self._committing:
            future, _ = self._committing.popleft()
            with contextlib.suppress(Exception):
                future.result()

    def abandon(self) -> None:
        """After a failure (the partner's, a refusal, the server stopping):
        the page being written is committed once its rows are (not if their
        write failed), and the commits in flight end and are counted; what
        fails here is dropped, and a fetch that resumes writes it again."""
        with contextlib.suppress(Exception):
            self._hand_over()
        while self._committing:
            future, page = self._committing.popleft()
            with contextlib.suppress(Exception):
                self._account(page, future.result())
        self.close()

    def _hand_over(self) -> None:
        if self._written is None:
            return
        page, self._written = self._written, None
        self.run.wait_for_writer()  # raises what the write raised: the page is not committed
        # updated: the bulk path's count (labels changed); added and deleted
        # are counted by the store with the checkpoint (see commit_feed_page);
        # rejected here: signals over an entry's limit (the entry loaded)
        updated, rejected = self.run.result.counts.updated, self.run.result.rejected_count
        page.counts.updated = updated - self._marks[0]
        page.counts.rejected += rejected - self._marks[1]
        self._marks = (updated, rejected)
        future = self.feeds.committer.submit(self._commit, page)
        self._committing.append((future, page))

    def _commit(self, page: _BuiltPage) -> PageCounts:
        """On the committer thread, pages in order: while every page maps
        only new items (a first fetch), the next one's are inserted without
        looking them up first. After a page's commit failed none is made:
        its checkpoint would cover the failed page's items, left unmapped
        (never deleted after), and the fetch stops there."""
        if self._failed is not None:
            raise FailedPrecondition(
                f"an earlier page was not committed ({error_text(self._failed)}): the fetch stops"
            )
        try:
            counts = self.feeds._commit_page(self.feed, page, self._expect_new)
        except BaseException as exc:
            self._failed = exc
            raise
        self._expect_new = counts.added == len(page.mapped)
        return counts

    def _settle(self, block: bool) -> None:
        while self._committing and (block or self._committing[0][0].done()):
            future, page = self._committing[0]
            counts = future.result()  # a lost lease: raised here, the fetch stops
            self._committing.popleft()
            self._account(page, counts)

    def _account(self, page: _BuiltPage, counts: PageCounts) -> None:
        result = self.result
        result.pages += 1
        result.items += page.items
        result.added += counts.added
        result.updated += counts.updated
        result.deleted += counts.deleted
        result.skipped += counts.skipped
        result.rejected += counts.rejected
        if self.guard is not None and self.guard.held:
            self.guard.fresh.update(counts.new_keys)
        if self.progress is not None:
            self.progress(result)


class _LeaseKeeper:
    """Renews the lease of every feed this replica is fetching, at least
    every lease_seconds/3, on a thread of its own (one for the server,
    started at the first fetch: a thread a fetch would leave a SQLite
    connection behind). A lease was renewed only by its feed's page commits,
    which run on the one committer thread for every feed: a huge feed's
    commits delayed another's past its lease, and a second replica then
    fetched that feed too. A replica killed stops renewing, so its leases
    lapse as before. `lost`: another replica holds the feed now."""

    def __init__(self, store: ExchangeStore, owner: str, seconds: float) -> None:
        self.store, self.owner, self.seconds = store, owner, seconds
        self._held: dict[int, bool] = {}  # feed id -> still ours
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def hold(self, feed_id: int) -> None:
        with self._lock:
            self._held[feed_id] = True
            if self._thread is None and not self._stopping.is_set():
                self._thread = threading.Thread(
                    target=self._run, daemon=True, name="exchange-lease"
                )
                self._thread.start()

    def release(self, feed_id: int) -> None:
        with self._lock:
            self._held.pop(feed_id, None)

    def lost(self, feed_id: int) -> bool:
        with self._lock:
            return self._held.get(feed_id) is False

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _run(self) -> None:
        every = max(0.05, self.seconds / 3)
        while not self._stopping.wait(every):
            with self._lock:
                feeds = [feed_id for feed_id, ours in self._held.items() if ours]
            for feed_id in feeds:
                try:
                    ours = self.store.renew_feed_lease(feed_id, self.owner, self.seconds)
                except Exception:  # the store is down: the next round retries
                    log.exception("renewing the lease of feed %d failed", feed_id)
                    continue
                with self._lock:
                    if not ours and feed_id in self._held:
                        self._held[feed_id] = False
                        log.warning("feed %d: another replica took its lease", feed_id)


def entry_name(feed: str, key: str) -> str:
    return f"{feed}:{key}"


class Feeds:
    """The use cases behind `hashsvc exchange ...` and the Exchange service,
    and the background fetcher. `owner` names this replica in leases."""

    def __init__(self, core: Core, settings: ExchangeSettings, owner: str) -> None:
        self.core = core
        self.store: ExchangeStore = core.store
        self.settings = settings
        self.owner = owner
        # Called after every fetch with its result (metrics); must not raise.
        self.on_fetch: Callable[[FetchResult], None] | None = None
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        # feeds this replica is fetching now: its lease is its own (one owner
        # a process), so it alone would let `exchange fetch` (gRPC, HTTP) and
        # the background loop fetch the same feed at once
        self._fetching: set[int] = set()
        self._fetching_lock = threading.Condition()
        # Pages' mappings and checkpoints commit on this one thread, for every
        # fetch (each chain's in order): a thread a fetch left a store
        # connection open a fetch (SQLite keeps one a thread), 3 file
        # descriptors every 15 minutes of a feed's background fetches
        self.committer = ThreadPoolExecutor(1, thread_name_prefix="exchange-commit")
        # leases are renewed apart from the commits (a commit waits for
        # every other feed's before it)
        self.leases = _LeaseKeeper(self.store, owner, settings.lease_seconds)
        self.box = CredentialBox(settings.credentials_key_file)
        # the processes that fetch and parse pages (exchange.fetch_process)
        self.children = FetchChildren(settings.fetch_nice)

    # -- feeds

    def add(
        self,
        actor: str,
        name: str,
        api: str,
        set_name: str,
        labels: dict[str, str],
        options: dict[str, str],
        every_seconds: int,
        credentials: str,
    ) -> FeedRecord:
        if not _FEED_NAME.fullmatch(name):
            raise InvalidArgument(
                f"invalid feed name {quoted(name)}: 1-64 letters, digits, '.', '_' or '-'"
            )
        if api not in APIS:
            raise InvalidArgument(f"unknown exchange API {quoted(api)} (known: {', '.join(APIS)})")
        unknown = set(options) - API_OPTIONS[api]
        if unknown:
            raise InvalidArgument(f"{api} feeds take no option {', '.join(sorted(unknown))}")
        if every_seconds < self.settings.min_every_seconds:
            raise InvalidArgument(
                f"--every must be at least {self.settings.min_every_seconds} s"
                " (exchange.min_every_seconds)"
            )
        labels = validation.labels(labels)
        if len(credentials) > MAX_CREDENTIALS_CHARS:
            raise InvalidArgument(f"credentials are longer than {MAX_CREDENTIALS_CHARS} characters")
        if api == "file":
            options = {**options, "path": self._file_path(options.get("path", ""))}
        hash_set = self.core.curation.get_set(set_name)
        if hash_set.allow_list:
            # a partner (or whoever holds its credentials) would decide what
            # hashsvc lets through: allow lists hold curated entries only
            raise FailedPrecondition(
                f"set {quoted(set_name)} is an allow list: feeds load only into block sets"
            )
        # the adapter checks options and the credentials' form now, not at
        # the first fetch (its errors never quote the secret)
        open_source(api, self._source_config(name, options, credentials or None))
        secret = self.box.seal(credentials, name, api, options) if credentials else None
        feed = self.store.create_feed(
            name, api, hash_set.id, labels, options, every_seconds, secret, actor
        )
        self._record(
            "ExchangeAdd",
            actor,
            {"feed": name, "api": api, "set": set_name, "every_seconds": every_seconds},
            set_name,
        )
        return feed

    def _file_path(self, path: str) -> str:
        """A file feed's path, resolved (symlinks followed), which must be
        within exchange.file_dir: without it an operator token (or a row
        changed in the database) would make the server read, and load as
        hashes, any file it can read. Checked when the feed is added and
        again at every fetch (a link swapped in later is caught then)."""
        root = self.settings.file_dir
        if not root:
            raise FailedPrecondition(
                "file feeds are off: set exchange.file_dir to the directory the server may"
                " read hash lists from"
            )
        if not path:
            raise InvalidArgument("a file feed needs --path FILE")
        real = os.path.realpath(path)
        real_root = os.path.realpath(root)
        if os.path.commonpath([real, real_root]) != real_root:
            raise InvalidArgument(f"a file feed's path must be within {root} (exchange.file_dir)")
        return real

    def get(self, name: str) -> FeedRecord:
        feed = self.store.get_feed(name)
        if feed is None:
            raise NotFound(f"no feed named {quoted(name)}")
        return feed

    def list(self) -> list[FeedRecord]:
        return self.store.list_feeds()

    def set_enabled(self, actor: str, name: str, enabled: bool) -> FeedRecord:
        feed = self.store.set_feed_enabled(name, enabled)
        self._record(
            "ExchangeEnable" if enabled else "ExchangeDisable", actor, {"feed": name}, None
        )
        return feed

    def remove(self, actor: str, name: str) -> FeedRecord:
        feed = self.store.remove_feed(name)
        self._record("ExchangeRemove", actor, {"feed": name}, None)
        return feed

    def set_name(self, feed: FeedRecord) -> str:
        return self.store.feed_set_name(feed.set_id)

    def feedback(self, name: str, entry: str | None = None) -> list[FeedbackRecord]:
        return self.store.feedback_for(self.get(name).id, entry)

    # -- fetching

    def fetch(
        self,
        name: str,
        actor: str,
        full: bool = False,
        progress: Callable[[FetchResult], None] | None = None,
        allow_mass_delete: bool = False,
    ) -> FetchResult:
        """One fetch now (`exchange fetch`): FAILED_PRECONDITION when another
        replica is fetching it. A failed fetch raises after it is recorded.
        allow_mass_delete (an operator who checked with the partner): this
        fetch only, past exchange.max_delete_fraction and
        snapshot_max_delete_fraction; never the background loop's."""
        feed = self.get(name)
        if self._stopping.is_set():
            raise Unavailable("the server is stopping: no new fetch")
        if not self._claim(feed.id):
            raise FailedPrecondition(f"feed {quoted(name)} is being fetched on this server")
        try:
            require_lease(self.store.acquire_feed_lease(feed.id, self.owner, self._lease()), name)
            result = self._fetch_leased(feed, actor, full, progress, allow_mass_delete)
        finally:
            self._release(feed.id)
        if result.error:
            raise FailedPrecondition(f"fetching feed {quoted(name)} failed: {result.error}")
        return result

    def run_due(self) -> list[FetchResult]:
        """Fetches every due feed this replica can lease (the background loop)."""
        results = []
        for feed in self.store.due_feeds(now_micros()):
            if self._stopping.is_set():
                break
            if not self._claim(feed.id):
                continue  # `exchange fetch` is fetching it here now
            try:
                if not self.store.acquire_feed_lease(feed.id, self.owner, self._lease()):
                    continue  # another replica took it
                results.append(self._fetch_leased(feed, "hashsvc", False, None))
            finally:
                self._release(feed.id)
        return results

    def _claim(self, feed_id: int) -> bool:
        with self._fetching_lock:
            if feed_id in self._fetching:
                return False
            self._fetching.add(feed_id)
            return True

    def _release(self, feed_id: int) -> None:
        with self._fetching_lock:
            self._fetching.discard(feed_id)
            self._fetching_lock.notify_all()

    def _fetch_leased(
        self,
        feed: FeedRecord,
        actor: str,
        full: bool,
        progress: Callable[[FetchResult], None] | None,
        allow_mass_delete: bool = False,
    ) -> FetchResult:
        result = FetchResult(feed.name)
        started = time.perf_counter()
        failed = False
        pending = None
        self.leases.hold(feed.id)
        try:
            # entries changed from here on: the retro-hunt's, pending in the
            # store before the first page is written (a crash does not lose it)
            pending = self.core.retro.hunt_pending(feed.set_id, datetime.now(UTC), "feed", actor)
            self._fetch(feed, full, result, progress, allow_mass_delete)
        except Exception as exc:  # recorded and retried with backoff; never lost
            failed = True
            result.error = error_text(exc)
            if isinstance(exc, DeletionsRefused):
                result.deletions_refused = exc.count
            log.warning("feed %s: fetch failed: %s", feed.name, result.error)
        finally:
            self.leases.release(feed.id)
        result.seconds = time.perf_counter() - started
        delay = feed.every_seconds
        if failed:
            delay = min(
                feed.every_seconds,
                self.settings.retry_max_seconds,
                self.settings.retry_base_seconds * 2 ** min(feed.failures, 20),
            )
        self.store.finish_feed_fetch(
            feed.id,
            self.owner,
            "failed" if failed else "ok",
            result.error,
            now_micros() + int(delay * 1_000_000),
            failed,
        )
        counts = {
            "added": result.added,
            "updated": result.updated,
            "deleted": result.deleted,
            "skipped": result.skipped,
            "rejected": result.rejected,
        }
        set_name = self.set_name(feed)
        changed = bool(result.added or result.updated or result.deleted)
        # the platform hears of a fetch that changed the set (even one that
        # failed after some pages), in the transaction of its history record
        told = ()
        if changed and set_name:
            told = (
                events.feed_updated_event(
                    set_name=set_name,
                    source=f"exchange:{feed.name}",
                    caller=actor,
                    counts=counts,
                    status="UNAVAILABLE" if failed else "OK",
                ),
            )
        self._record(
            "ExchangeFetch",
            actor,
            {
                "feed": feed.name,
                "full": full,
                "pages": result.pages,
                **counts,
                **({"allow_mass_delete": True} if allow_mass_delete else {}),
            },
            set_name,
            # a fetch fails on the partner's side (HTTP, credentials, timeouts)
            # or on a refusal (lease lost, mass deletion): one status for both
            status="UNAVAILABLE" if failed else "OK",
            error=result.error,
            events=told,
        )
        # uploads let through before these hashes arrived: the retro-hunt
        # looks back for them (pages committed before a failure count too)
        if pending is not None:
            self.core.hunt_changed_since(pending)
        if self.on_fetch is not None:
            self.on_fetch(result)
        return result

    def _fetch(
        self,
        feed: FeedRecord,
        full: bool,
        result: FetchResult,
        progress: Callable[[FetchResult], None] | None,
        allow_mass_delete: bool,
    ) -> None:
        options = feed.options
        if feed.api == "file":
            options = {**options, "path": self._file_path(options.get("path", ""))}
        config = self._source_config(feed.name, options, self._credentials(feed))
        source = open_source(feed.api, config)
        # A whole listing (a file each time; any API fetched from the start:
        # --full, or a checkpoint the API has forgotten the deletions after):
        # what it no longer lists is deleted, once every page has loaded.
        snapshot = source.snapshot or full or source.stale(feed.checkpoint)
        start = None if snapshot and not source.snapshot else feed.checkpoint
        run = BulkLoad(
            self.core.store,
            self.core.store,
            self.core.live,
            feed.set_id,
            f"exchange:{feed.name}",
            max_keypoints=self.core.config.local_features.max_keypoints,
        )
        seen: set[str] | None = set() if snapshot else None
        guard = _DeleteGuard(
            feed.items,
            1.0 if allow_mass_delete else self.settings.max_delete_fraction,
            self._delete_window(feed),
            self.settings.delete_window_seconds,
        )
        checkpoint = start
        if self.settings.fetch_process:
            settings = self.settings
            pages = child_pages(
                self.children, feed.api, config, start, settings.page_seconds, self._stopping
            )
        else:
            pages = _prefetched(source.pages(start), self._stopping)
        chain = _PageChain(self, feed, run, result, guard, progress)
        try:
            for page in pages:
                if seen is not None:
                    seen.update(item.key for item in page.items)
                previous = checkpoint
                checkpoint = page.checkpoint if page.checkpoint is not None else checkpoint
                if any(item.deleted for item in page.items):
                    # its deletions look up what the feed holds: every
                    # page before it committed first
                    chain.drain()
                chain.send(self._build_page(feed, page.items, checkpoint, guard, previous))
                if self._stopping.is_set():
                    raise FailedPrecondition("the server is stopping")
                if self.leases.lost(feed.id):
                    raise FailedPrecondition("this replica lost the feed's lease: the fetch stops")
            chain.drain()
            if guard.holding:  # also when every held deletion was listed again:
                guard.check()  # the fetch's own checkpoint, not the one kept
                deleted = [SourceItem(key, deleted=True) for key in guard.pending]
                self._write_page(feed, run, deleted, checkpoint, result, window_base=guard.held)
            if seen is not None:
                self._delete_unlisted(feed, run, seen, checkpoint, result, allow_mass_delete)
            run.finish()
        except BaseException:
            chain.abandon()
            run.abandon()
            raise
        finally:
            chain.close()
            pages.close()

    def _delete_unlisted(
        self,
        feed: FeedRecord,
        run: BulkLoad,
        seen: set[str],
        checkpoint: str | None,
        result: FetchResult,
        allow_mass_delete: bool,
    ) -> None:
        """A whole listing: the feed's items it no longer lists are deleted,
        unless that is more than exchange.snapshot_max_delete_fraction of
        them (a truncated file, a partner's bad day): then the fetch fails,
        deleting nothing, until an operator raises the fraction."""
        held = self.store.all_feed_items(feed.id)
        gone = [SourceItem(key, deleted=True) for key in held if key not in seen]
        limit = 1.0 if allow_mass_delete else self.settings.snapshot_max_delete_fraction
        # the fraction of what the feed held before this fetch: its own pages
        # are mapped by now, and a listing swapped for another (N new items,
        # the N old ones left out) must not halve its way past the limit
        before = max(len(held) - result.added + result.deleted, 0)
        check_deletions(
            len(gone),
            before,
            self._delete_window(feed),
            limit,
            self.settings.delete_window_seconds,
            "exchange.snapshot_max_delete_fraction",
            "the listing leaves out",
        )
        if gone:
            self._write_page(feed, run, gone, checkpoint, result, window_base=before)

    def _delete_window(self, feed: FeedRecord) -> DeleteWindow:
        seconds = self.settings.delete_window_seconds
        if not seconds:
            return DeleteWindow(0, None)
        return self.store.delete_window(feed.id, now_micros() - int(seconds * 1_000_000))

    def _write_page(
        self,
        feed: FeedRecord,
        run: BulkLoad,
        items: list[SourceItem],
        checkpoint: str | None,
        result: FetchResult,
        window_base: int | None = None,
    ) -> None:
        """A page of deletions (held until the fetch's end, or left out of a
        whole listing), written and committed before this returns.
        window_base: the feed's items before the fetch, when the page counts
        in the feed's deletion window."""
        chain = _PageChain(self, feed, run, result, None, None)
        try:
            chain.send(self._build_page(feed, items, checkpoint, None, None, window_base))
            chain.drain()
        finally:
            chain.close()

    def _build_page(
        self,
        feed: FeedRecord,
        items: list[SourceItem],
        checkpoint: str | None,
        guard: _DeleteGuard | None,
        previous: str | None,
        window_base: int | None = None,
    ) -> _BuiltPage:
        """One page's bulk rows, item mapping and checkpoint. With a guard (a
        source's page; previous: the checkpoint before it), deletions of
        items held before the fetch wait in the guard. The feed's mapping is
        looked up for deleted keys only, so every page before one that
        deletes must be committed (_PageChain.drain)."""
        known = self.store.feed_items(feed.id, [i.key for i in items if i.deleted])
        held_back = dict(guard.pending) if guard is not None else {}
        counts, columns, final = self._page_rows(feed, items, known, guard, set())
        if not (
            validation.entry_names_valid(columns["entry"] or ["-"])
            and validation.label_values_valid(columns["label_values"])
        ):
            # a name or source id the bulk path would refuse (rare): the page
            # again without those items, which are rejected and never mapped
            if guard is not None:
                guard.pending.clear()
                guard.pending.update(held_back)
            refused = _refused_items(feed.name, items)
            counts, columns, final = self._page_rows(feed, items, known, guard, refused)
        if guard is not None:
            checkpoint = guard.checkpoint(previous, checkpoint)
        return _BuiltPage(
            columns,
            [mapping for mapping in final.values() if mapping is not None],
            [key for key, mapping in final.items() if mapping is None],
            counts,
            checkpoint,
            len(items),
            window_base,
        )

    def _page_rows(
        self,
        feed: FeedRecord,
        items: list[SourceItem],
        known: dict[str, FeedItem],
        guard: _DeleteGuard | None,
        refused: set[str],
    ) -> tuple[PageCounts, dict[str, list], dict[str, FeedItem | None]]:
        """The page's bulk rows as columns, its counts, and each key's last
        state in it (a page may add and then delete, or delete and add again,
        the same item; rows are written in order). The loop every fetched
        hash goes through: list appends bound once, each label set and
        signal type worked out once a page."""
        counts = PageCounts()
        kinds, values, names, label_texts, source_ids, deletes = [], [], [], [], [], []
        columns = {
            "signal_type": kinds,
            "value": values,
            "entry": names,
            "labels": label_texts,
            "label_values": source_ids,
            "deleted": deletes,
        }
        add_kind, add_value, add_name = kinds.append, values.append, names.append
        add_labels, add_id, add_deleted = label_texts.append, source_ids.append, deletes.append
        final: dict[str, FeedItem | None] = {}
        label_cache: dict = {}
        sizes = _fixed_sizes()
        prefix = f"{feed.name}:"
        max_id = validation.MAX_LABEL_VALUE
        for item in items:
            key = item.key
            if item.skipped:
                counts.skipped += item.skipped
            if item.deleted:
                if guard is not None and guard.held_before(key, known):
                    guard.pending[key] = known[key]
                    continue
                held = final.get(key) or known.get(key)
                if held is not None:
                    _add_row(columns, "md5", b"", held.entry_name, "", "", True)
                    final[key] = None
                continue
            signals = item.signals
            if not signals:
                continue
            if key in refused:
                counts.rejected += len(signals)
                continue
            name = prefix + key
            labels = self._labels_json(feed, item, label_cache)
            source_id = item.source_id
            if len(source_id) > max_id:
                source_id = source_id[:max_id]
            good = 0
            for kind, hex_value in signals:
                try:  # the bulk path's own check, here so a bad hash is never mapped
                    value = bytes.fromhex(hex_value)
                    if len(value) != sizes.get(kind, -1):
                        value = row_value(kind, value, False)
                except (ValueError, RowError):
                    counts.rejected += 1
                    continue
                add_kind(kind)
                add_value(value)
                add_name(name)
                add_labels(labels)
                add_id(source_id)
                add_deleted(False)
                good += 1
            if good:
                final[key] = FeedItem(key, name, item.source_id)
                if guard is not None and guard.pending:  # listed again after a held deletion
                    guard.pending.pop(key, None)
        return counts, columns, final

    def _send_rows(self, feed: FeedRecord, run: BulkLoad, page: _BuiltPage) -> None:
        """The page's rows to the bulk path's writer thread, in batches of
        write_rows (it makes short transactions of them, so a Match waits
        for a small one at most); returns once they are handed over."""
        step = self.settings.write_rows
        columns = page.columns
        for start in range(0, len(columns["value"]), step):
            part = {key: values[start : start + step] for key, values in columns.items()}
            run.add_batch(
                RowBatch(**part, label_key=SOURCE_ID_LABEL, source=f"exchange:{feed.name}")
            )

    def _commit_page(
        self, feed: FeedRecord, page: _BuiltPage, expect_new: bool = False
    ) -> PageCounts:
        """The page's mapping, counts and checkpoint (its rows are written)."""
        return self.store.commit_feed_page(
            feed.id,
            self.owner,
            page.checkpoint,
            page.mapped,
            page.unmapped,
            page.counts,
            self._lease(),
            page.window_base,
            expect_new,
        )

    def _labels_json(self, feed: FeedRecord, item: SourceItem, cache: dict) -> str:
        """The entry's labels as the bulk rows carry them (JSON text): the
        source's, then the feed's, then the feed's name; the source id goes
        beside them (RowBatch.label_values, as SOURCE_ID_LABEL), so a
        partner cannot pose as another feed or drop its id. Source labels
        past the per-entry limit or invalid are dropped (the hashes still
        load). Rows of a page share few label sets: each is checked once."""
        # the source's order (a source builds its items' labels alike);
        # the text is sorted either way
        shared = tuple(item.labels.items())
        text = cache.get(shared)
        if text is None:
            ours = {**feed.labels, FEED_LABEL: feed.name}
            room = validation.MAX_LABELS - len(ours) - 1  # one for the source id
            theirs = {}
            for key, value in sorted(shared):
                if len(theirs) >= room or key in ours or key == SOURCE_ID_LABEL:
                    continue
                try:
                    validation.labels({key: value})
                except InvalidArgument:
                    continue
                theirs[key] = value
            text = cache[shared] = json.dumps({**theirs, **ours}, sort_keys=True)
        return text

    # -- feedback to the source

    def queue_feedback(self, actor: str, name: str, entry: str, verdict: str) -> int:
        """A reviewer's verdict on a feed entry, queued durably; the fetcher
        sends it (and retries) where the API takes feedback."""
        if verdict not in VERDICTS:
            raise InvalidArgument(f"verdict must be one of {', '.join(VERDICTS)}")
        feed = self.get(name)
        if self.store.feed_item_for_entry(feed.id, entry) is None:
            raise NotFound(f"feed {quoted(name)} loaded no entry {quoted(entry)}")
        feedback_id = self.store.queue_feedback(feed.id, entry, verdict, actor)
        self._record(
            "ExchangeFeedback",
            actor,
            {"feed": name, "entry": entry, "verdict": verdict},
            self.set_name(feed),
        )
        return feedback_id

    def review_resolved(self, item) -> None:
        """A resolved review item (ReviewQueue.on_resolved): its verdict is
        queued for every matched entry a feed loaded. Never raises (the
        review is resolved either way; a failure is logged)."""
        try:
            ids = [m["entry_id"] for m in item.matches if m.get("entry_id")]
            entries = self.core.store.get_entries(ids)
            for entry in entries.values():
                feed = self.store.get_feed(entry.name.partition(":")[0])
                if feed is None or feed.set_id != entry.set_id:
                    continue
                if self.store.feed_item_for_entry(feed.id, entry.name) is None:
                    continue
                self.store.queue_feedback(feed.id, entry.name, item.status, item.resolved_by)
        except Exception:
            log.exception("queueing feedback for review item %d failed", item.id)

    def send_due_feedback(self) -> int:
        """Sends queued feedback that is due; returns how many were sent."""
        sent = 0
        feeds = {f.id: f for f in self.store.list_feeds()}
        for item in self.store.due_feedback(now_micros()):
            feed = feeds.get(item.feed_id)
            if feed is None:
                continue
            wait = self.settings.feedback_retry_seconds * 2 ** min(item.attempts, 20)
            if not self.store.claim_feedback(item.id, now_micros() + int(wait * 1_000_000)):
                continue  # another replica is sending it
            try:
                mapped = self.store.feed_item_for_entry(feed.id, item.entry_name)
                if mapped is None:
                    raise FeedbackUnsupported("the entry is no longer in the feed")
                source = open_source(
                    feed.api,
                    self._source_config(feed.name, feed.options, self._credentials(feed)),
                )
                source.send_feedback(mapped.key, mapped.source_id, item.verdict)
            except FeedbackUnsupported as exc:
                self.store.mark_feedback(item.id, FEEDBACK_UNSUPPORTED, str(exc))
                continue
            except Exception as exc:  # kept queued: retried after `wait`
                error = error_text(exc)
                state = FEEDBACK_QUEUED
                if item.attempts + 1 >= self.settings.feedback_max_attempts:
                    state = "failed"
                self.store.mark_feedback(item.id, state, error)
                log.warning("feed %s: feedback %d not sent: %s", feed.name, item.id, error)
                continue
            self.store.mark_feedback(item.id, FEEDBACK_SENT)
            sent += 1
        return sent

    # -- the background loop

    def start(self) -> None:
        if not self.settings.background:
            return
        self._thread = threading.Thread(target=self._loop, daemon=True, name="exchange")
        self._thread.start()

    def stop(self) -> None:
        """Stops the background loop and every fetch of this process (each
        stops after its page in progress, recorded as failed, its committed
        pages kept), before the store they write to closes."""
        self._stopping.set()
        most = self.settings.http_timeout_seconds + 10
        if self._thread is not None:
            self._thread.join(timeout=most)
        with self._fetching_lock:  # `exchange fetch`es (gRPC, HTTP) run on threads of their own
            if not self._fetching_lock.wait_for(lambda: not self._fetching, timeout=most):
                log.warning("feeds %s still fetching after %g s", sorted(self._fetching), most)
        # the commits in flight end before the store closes (none are left
        # once every fetch has stopped)
        self.committer.shutdown(wait=True)
        self.leases.stop()
        self.children.close()

    def _loop(self) -> None:
        while not self._stopping.wait(self.settings.poll_seconds):
            try:
                self.run_due()
                self.send_due_feedback()
            except Exception:  # the store is down: the next round retries
                log.exception("the exchange fetcher failed a round")

    # --

    def _credentials(self, feed: FeedRecord) -> str | None:
        secret = self.store.feed_secret(feed.id)
        return None if secret is None else self.box.open(secret, feed.name, feed.api, feed.options)

    def _lease(self) -> float:
        return self.settings.lease_seconds

    def _source_config(
        self, name: str, options: dict[str, str], credentials: str | None
    ) -> SourceConfig:
        return SourceConfig(
            name,
            dict(options),
            credentials,
            self.settings.http_timeout_seconds,
            self.settings.http_retries,
            self.settings.max_response_bytes,
            self.settings.max_file_bytes,
        )

    def _record(
        self,
        action: str,
        actor: str,
        detail: dict,
        set_name: str | None,
        status: str = "OK",
        error: str = "",
        events: tuple = (),
    ) -> None:
        # credentials never reach here: details name the feed, not its secret
        try:
            self.core.record_action(
                action,
                actor,
                detail,
                status,
                error,
                set_names=(set_name,) if set_name else (),
                events=events,
            )
        except Exception:
            log.exception("the history record of %s on a feed failed", action)


def _prefetched(pages: Iterator[SourcePage], stopping: threading.Event) -> Iterator[SourcePage]:
    """The pages, the next one fetched (and parsed) by a thread while the
    current one is written: the partner's server and the network work while
    the store does. One page ahead at most (memory)."""
    ahead: queue.Queue = queue.Queue(maxsize=1)
    done = threading.Event()
    end = object()

    def fetch() -> None:
        try:
            for page in pages:
                while not done.is_set():
                    try:
                        ahead.put(page, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if done.is_set() or stopping.is_set():
                    return
            ahead.put(end)
        except BaseException as exc:  # raised in the fetching thread below
            ahead.put(exc)

    thread = threading.Thread(target=fetch, daemon=True, name="exchange-prefetch")
    thread.start()
    try:
        while True:
            page = ahead.get()
            if page is end:
                return
            if isinstance(page, BaseException):
                raise page
            yield page
    finally:
        done.set()
        with contextlib.suppress(queue.Empty):
            ahead.get_nowait()  # lets a blocked put see `done`
        thread.join(timeout=60)


@functools.cache
def _fixed_sizes() -> dict[str, int]:
    """Signal types whose values have one size (PDQ, MD5, SHA-*), by
    kind: a value of that size passes row_value() as it is."""
    return {
        kind: sig.nbytes for kind, sig in SIGNAL_TYPES.items() if not (sig.opaque or sig.sequence)
    }


def _refused_items(feed: str, items: list[SourceItem]) -> set[str]:
    """Keys of the page's items whose entry name or source id the bulk path
    would refuse (too long, control characters): such an item is counted as
    rejected and never mapped, as if loaded. Checked a column at a time;
    item by item only when a column fails."""
    listed = [item for item in items if item.signals and not item.deleted]
    names = [entry_name(feed, item.key) for item in listed]
    ids = [item.source_id[: validation.MAX_LABEL_VALUE] for item in listed]
    if (not names or validation.entry_names_valid(names)) and validation.label_values_valid(ids):
        return set()
    return {
        item.key
        for item, name, source_id in zip(listed, names, ids, strict=True)
        if not (validation.entry_names_valid([name]) and validation.label_values_valid([source_id]))
    }


def _add_row(
    columns: dict[str, list],
    kind: str,
    value: bytes,
    entry: str,
    labels: str,
    source_id: str,
    deleted: bool,
) -> None:
    columns["signal_type"].append(kind)
    columns["value"].append(value)
    columns["entry"].append(entry)
    columns["labels"].append(labels)
    columns["label_values"].append(source_id)
    columns["deleted"].append(deleted)
