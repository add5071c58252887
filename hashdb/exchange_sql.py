"""Partner feeds' storage (issue 22), shared by the SQLite and PostgreSQL
stores (mixed into SQLStore; `?` placeholders, times as integer microseconds).

A feed's credentials are in exchange_credentials, read by feed_secret() only:
no listing joins them, so no answer, log line or history record can carry
them. A page of a fetch commits its item mapping, its counts and the new
checkpoint in short transactions (the mapping's parts, each with its own
counts, then the checkpoint), under the feed's lease: a
replica that lost the lease (it stalled past lease_until and another took
over) writes nothing more.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from operator import itemgetter
from typing import NamedTuple

from hashdb.times import now_micros
from hashsvc.base.errors import AlreadyExists, FailedPrecondition, NotFound

_FEED_COLUMNS = (
    "f.id, f.name, f.api, f.set_id, f.labels, f.options, f.every_seconds, f.enabled,"
    " f.checkpoint, f.created_at, f.created_by, f.last_fetch_at, f.last_result, f.last_error,"
    " f.added, f.updated, f.deleted, f.skipped, f.failures, f.next_run_at, f.lease_owner,"
    " f.lease_until, f.items,"
    " (SELECT COUNT(*) FROM exchange_credentials c WHERE c.feed_id = f.id), f.rejected"
)
_FEEDBACK_COLUMNS = (
    "id, feed_id, entry_name, verdict, state, attempts, last_error, created_at, created_by,"
    " next_attempt_at, sent_at"
)
# Feedback states: queued (to send, or to retry at next_attempt_at), sent,
# unsupported (the API takes no feedback: kept, so the entry shows it).
FEEDBACK_QUEUED = "queued"
FEEDBACK_SENT = "sent"
FEEDBACK_UNSUPPORTED = "unsupported"
# exchange_items rows written per statement batch
_ITEM_CHUNK = 5_000
# A mapping transaction's fewest items (when tuned down, see _tune_feed_part)
_MIN_PART_ROWS = 500
_ITEM_COLUMNS = "feed_id, item_key, entry_name, source_id"


@dataclass(frozen=True)
class FeedRecord:
    id: int
    name: str
    api: str
    set_id: int
    labels: dict[str, str]
    options: dict[str, str]
    every_seconds: int
    enabled: bool
    checkpoint: str | None  # the API's checkpoint as JSON; None: fetch from the start
    created_at: int
    created_by: str
    last_fetch_at: int | None
    last_result: str  # "", "ok", "failed", "running"
    last_error: str
    added: int
    updated: int
    deleted: int
    skipped: int
    failures: int  # consecutive failed fetches (backoff)
    next_run_at: int
    lease_owner: str | None
    lease_until: int | None
    items: int  # source items mapped to entries
    has_credentials: bool
    rejected: int = 0  # rows refused (bad hash, name or id): counted, never mapped


class FeedItem(NamedTuple):
    """A source item (the API's signal type and value) and its entry (a
    tuple: a fetch makes one per item, a dataclass cost 5x as much)."""

    key: str
    entry_name: str
    source_id: str


@dataclass(frozen=True)
class FeedbackRecord:
    id: int
    feed_id: int
    entry_name: str
    verdict: str  # "confirmed" | "false_positive"
    state: str
    attempts: int
    last_error: str
    created_at: int
    created_by: str
    next_attempt_at: int
    sent_at: int | None


@dataclass
class PageCounts:
    added: int = 0
    updated: int = 0
    deleted: int = 0
    skipped: int = 0
    rejected: int = 0
    # committed: the keys this page mapped that the feed did not hold
    new_keys: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class DeleteWindow:
    """A feed's deletions within exchange.delete_window_seconds."""

    deleted: int  # applied within the window
    held: int | None  # the feed's items before the window's first deletion; None: none


class ExchangeSQL:
    # A page's item mapping is written at most this many items a transaction,
    # in key order (each transaction a narrow slice of the key index: item
    # keys are hashes), fewer when that takes longer than the store's
    # bulk_write_seconds: on SQLite a Match's history record waits for the
    # writer lock each transaction holds (20,000 unsorted items held it
    # 0.3-0.8 s on a loaded machine).
    feed_map_rows = 20_000
    # ... at most: fewer when that takes longer than bulk_write_seconds
    # (see _tune_feed_part), from this many on
    _feed_part = 2_000
    # A feed's items by key (the keys as _list_param makes them, then the feed id)
    _items_by_key = (
        "item_key, entry_name, source_id FROM exchange_items"
        " WHERE item_key IN (SELECT value FROM json_each(?)) AND feed_id = ?"
    )

    def create_feed(
        self,
        name: str,
        api: str,
        set_id: int,
        labels: dict[str, str],
        options: dict[str, str],
        every_seconds: int,
        secret: bytes | None,
        created_by: str,
    ) -> FeedRecord:
        now = now_micros()
        try:
            with self._counter_write() as cur:
                cur.execute(
                    "INSERT INTO exchange_feeds (name, api, set_id, labels, options,"
                    " every_seconds, enabled, checkpoint, created_at, created_by, next_run_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, NULL, ?, ?, ?) RETURNING id",
                    (
                        name,
                        api,
                        set_id,
                        json.dumps(labels, sort_keys=True),
                        json.dumps(options, sort_keys=True),
                        every_seconds,
                        True,
                        now,
                        created_by,
                        now,
                    ),
                )
                feed_id = cur.fetchone()[0]
                if secret is not None:
                    cur.execute(
                        "INSERT INTO exchange_credentials (feed_id, secret) VALUES (?, ?)",
                        (feed_id, secret),
                    )
        except self._unique_violation:
            raise AlreadyExists(f"a feed named {name!r} already exists") from None
        return self.get_feed(name)

    def get_feed(self, name: str) -> FeedRecord | None:
        with self._read() as cur:
            cur.execute(f"SELECT {_FEED_COLUMNS} FROM exchange_feeds f WHERE f.name = ?", (name,))
            row = cur.fetchone()
        return _feed(row) if row else None

    def list_feeds(self) -> list[FeedRecord]:
        with self._read() as cur:
            cur.execute(f"SELECT {_FEED_COLUMNS} FROM exchange_feeds f ORDER BY f.name")
            return [_feed(row) for row in cur.fetchall()]

    def set_feed_enabled(self, name: str, enabled: bool) -> FeedRecord:
        with self._counter_write() as cur:
            cur.execute(
                "UPDATE exchange_feeds SET enabled = ?, next_run_at = ?, failures = 0"
                " WHERE name = ? RETURNING id",
                (bool(enabled), now_micros(), name),
            )
            if cur.fetchone() is None:
                raise NotFound(f"no feed named {name!r}")
        return self.get_feed(name)

    def remove_feed(self, name: str) -> FeedRecord:
        """The feed, its credentials, item mapping and feedback queue go; the
        entries it loaded stay in their set (remove them there if meant)."""
        feed = self.get_feed(name)
        if feed is None:
            raise NotFound(f"no feed named {name!r}")
        with self._counter_write() as cur:
            for table in (
                "exchange_credentials",
                "exchange_items",
                "exchange_feedback",
                "exchange_deletions",
            ):
                cur.execute(f"DELETE FROM {table} WHERE feed_id = ?", (feed.id,))
            cur.execute("DELETE FROM exchange_feeds WHERE id = ?", (feed.id,))
        return feed

    def feed_set_name(self, set_id: int) -> str:
        """The name of a feed's set: its record counts the set's entries,
        a scan of a million rows at every fetch."""
        with self._read() as cur:
            cur.execute("SELECT name FROM hash_sets WHERE id = ?", (set_id,))
            row = cur.fetchone()
        return row[0] if row else ""

    def feed_secret(self, feed_id: int) -> bytes | None:
        """The credentials, for the fetcher and the feedback sender only."""
        with self._read() as cur:
            cur.execute("SELECT secret FROM exchange_credentials WHERE feed_id = ?", (feed_id,))
            row = cur.fetchone()
        return bytes(row[0]) if row else None

    def due_feeds(self, now: int) -> list[FeedRecord]:
        """Enabled feeds whose next run has come and that no replica holds."""
        with self._read() as cur:
            cur.execute(
                f"SELECT {_FEED_COLUMNS} FROM exchange_feeds f WHERE f.enabled AND"
                " f.next_run_at <= ? AND (f.lease_until IS NULL OR f.lease_until < ?)"
                " ORDER BY f.next_run_at",
                (now, now),
            )
            return [_feed(row) for row in cur.fetchall()]

    def acquire_feed_lease(self, feed_id: int, owner: str, seconds: float) -> bool:
        """True when this owner now holds the feed (free, expired or its own):
        one UPDATE, so two replicas racing get one row between them."""
        now = now_micros()
        with self._counter_write() as cur:
            cur.execute(
                "UPDATE exchange_feeds SET lease_owner = ?, lease_until = ?, last_result = ?"
                " WHERE id = ? AND (lease_owner IS NULL OR lease_until < ? OR lease_owner = ?)"
                " RETURNING id",
                (owner, now + int(seconds * 1_000_000), "running", feed_id, now, owner),
            )
            return cur.fetchone() is not None

    def renew_feed_lease(self, feed_id: int, owner: str, seconds: float) -> bool:
        """The lease moved on if this owner still holds it; False if not
        (another replica took it, or it was given back)."""
        with self._counter_write() as cur:
            cur.execute(
                "UPDATE exchange_feeds SET lease_until = ? WHERE id = ? AND lease_owner = ?"
                " RETURNING id",
                (now_micros() + int(seconds * 1_000_000), feed_id, owner),
            )
            return cur.fetchone() is not None

    def feed_items(self, feed_id: int, keys: list[str]) -> dict[str, FeedItem]:
        with self._read() as cur:
            known = self._mapped_keys(cur, feed_id, keys)
        return {key: FeedItem(key, entry, source) for key, (entry, source) in known.items()}

    def all_feed_items(self, feed_id: int) -> dict[str, FeedItem]:
        """Every mapped item (a snapshot API's deletions are those it no
        longer lists)."""
        with self._read() as cur:
            cur.execute(
                "SELECT item_key, entry_name, source_id FROM exchange_items WHERE feed_id = ?",
                (feed_id,),
            )
            return {key: FeedItem(key, entry, source) for key, entry, source in cur.fetchall()}

    def feed_item_for_entry(self, feed_id: int, entry_name: str) -> FeedItem | None:
        with self._read() as cur:
            cur.execute(
                "SELECT item_key, entry_name, source_id FROM exchange_items"
                " WHERE feed_id = ? AND entry_name = ?",
                (feed_id, entry_name),
            )
            row = cur.fetchone()
        return FeedItem(*row) if row else None

    def commit_feed_page(
        self,
        feed_id: int,
        owner: str,
        checkpoint: str | None,
        mapped: list[FeedItem],
        unmapped: list[str],
        counts: PageCounts,
        lease_seconds: float,
        window_base: int | None = None,
        expect_new: bool = False,
    ) -> PageCounts:
        """One page's mapping, counts and checkpoint; raises
        FailedPrecondition (writing nothing more) if the lease was lost.
        Items added and deleted are counted here, by the mapping, in the
        transactions that map them: a page written again after a crash (its
        entries already there) still counts once. The mapping is written in
        short transactions (see feed_map_rows: each holds SQLite's one
        writer lock, which a Match's history record waits for), new items in
        key order, then the deletions, then the checkpoint alone. Returns
        the counts as committed (counts.updated, .skipped and .rejected as
        given).
        window_base: the page's deletions are the fetch's held or unlisted
        ones, recorded for exchange.delete_window_seconds with the feed's
        items before the fetch (window_base).
        expect_new: none of the keys is expected to be mapped (the previous
        page's were all new), so they are inserted without a lookup first;
        one that is mapped fails the insert, which is then done with it."""
        # listed twice: the last; in key order, so each part writes a narrow
        # slice of the key index (item keys are hashes: unsorted, every item
        # of a part rewrote a page of its own)
        items = sorted({item.key: item for item in mapped}.values(), key=itemgetter(0))
        new_keys: list[str] = []
        start = 0
        while start < len(items):
            part = items[start : start + self._feed_part_rows()]
            started = time.perf_counter()
            with self._counter_write() as cur:
                self._hold_feed_lease(cur, feed_id, owner, lease_seconds)
                added = self._map_items(cur, feed_id, part, expect_new)
                cur.execute(
                    "UPDATE exchange_feeds SET added = added + ?, items = items + ? WHERE id = ?",
                    (len(added), len(added), feed_id),
                )
            self._tune_feed_part(len(part), time.perf_counter() - started)
            new_keys += added
            expect_new = expect_new and len(added) == len(part)
            start += len(part)
        deleted = 0
        start = 0
        while start < len(unmapped):
            part_keys = unmapped[start : start + self._feed_part_rows()]
            started = time.perf_counter()
            with self._counter_write() as cur:
                self._hold_feed_lease(cur, feed_id, owner, lease_seconds)
                gone = list(self._mapped_keys(cur, feed_id, part_keys))
                if window_base is not None and gone:
                    # the size the fetch's deletions were checked against (its
                    # items before the fetch), not the mapping's now: a fetch
                    # that adds junk first would widen the window's budget
                    cur.execute(
                        "INSERT INTO exchange_deletions (feed_id, at, deleted, held)"
                        " VALUES (?, ?, ?, ?)",
                        (feed_id, now_micros(), len(gone), window_base),
                    )
                if gone:
                    cur.executemany(
                        "DELETE FROM exchange_items WHERE feed_id = ? AND item_key = ?",
                        [(feed_id, key) for key in gone],
                    )
                    cur.execute(
                        "UPDATE exchange_feeds SET deleted = deleted + ?, items = items - ?"
                        " WHERE id = ?",
                        (len(gone), len(gone), feed_id),
                    )
            self._tune_feed_part(len(part_keys), time.perf_counter() - started)
            deleted += len(gone)
            start += len(part_keys)
        # the checkpoint last, alone: every row and mapping of the page (and,
        # the committer being one in order, of every page before) is in
        with self._counter_write() as cur:
            self._hold_feed_lease(cur, feed_id, owner, lease_seconds, (checkpoint,))
            cur.execute(
                "UPDATE exchange_feeds SET updated = updated + ?, skipped = skipped + ?,"
                " rejected = rejected + ? WHERE id = ?",
                (counts.updated, counts.skipped, counts.rejected, feed_id),
            )
        return PageCounts(
            len(new_keys), counts.updated, deleted, counts.skipped, counts.rejected, new_keys
        )

    def _feed_part_rows(self) -> int:
        return max(1, min(self.feed_map_rows, self._feed_part))

    def _tune_feed_part(self, rows: int, seconds: float) -> None:
        """Items a mapping transaction takes, following the measured rate
        towards the store's bulk_write_seconds (as the bulk path's writes
        do): on SQLite each transaction holds the writer lock a Match's
        history record waits for, and 20,000 items held it 0.3-0.8 s."""
        if rows < self._feed_part_rows():
            return  # a short last part says little about the rate
        wanted = rows * self.bulk_write_seconds / max(seconds, 1e-3)
        # half way: one slow transaction (a checkpoint, a busy core) does not
        # halve the next
        self._feed_part = int(min(self.feed_map_rows, max(_MIN_PART_ROWS, (rows + wanted) / 2)))

    def _hold_feed_lease(
        self, cur, feed_id: int, owner: str, lease_seconds: float, checkpoint: tuple = ()
    ) -> None:
        """The lease renewed (and the checkpoint set, when given) if this
        replica still holds it; else FailedPrecondition."""
        until = now_micros() + int(lease_seconds * 1_000_000)
        cur.execute(
            f"UPDATE exchange_feeds SET {'checkpoint = ?, ' if checkpoint else ''}lease_until = ?"
            " WHERE id = ? AND lease_owner = ? RETURNING id",
            (*checkpoint, until, feed_id, owner),
        )
        if cur.fetchone() is None:
            raise FailedPrecondition("this replica lost the feed's lease: the fetch stops")

    def delete_window(self, feed_id: int, since: int) -> DeleteWindow:
        """The feed's deletions applied since `since` (microseconds); older
        records are dropped."""
        with self._counter_write() as cur:
            cur.execute(
                "DELETE FROM exchange_deletions WHERE feed_id = ? AND at < ?", (feed_id, since)
            )
            cur.execute(
                "SELECT COALESCE(SUM(deleted), 0), MIN(at) FROM exchange_deletions"
                " WHERE feed_id = ?",
                (feed_id,),
            )
            deleted, first = cur.fetchone()
            held = None
            if first is not None:
                cur.execute(
                    "SELECT MAX(held) FROM exchange_deletions WHERE feed_id = ? AND at = ?",
                    (feed_id, first),
                )
                held = cur.fetchone()[0]
        return DeleteWindow(int(deleted), None if held is None else int(held))

    def _mapped_keys(self, cur, feed_id: int, keys: list[str]) -> dict[str, tuple[str, str]]:
        known: dict[str, tuple[str, str]] = {}
        for start in range(0, len(keys), _ITEM_CHUNK):
            cur.execute(
                f"SELECT {self._items_by_key}",
                (self._list_param(keys[start : start + _ITEM_CHUNK]), feed_id),
            )
            known.update({key: (entry, source) for key, entry, source in cur.fetchall()})
        return known

    def _map_items(
        self, cur, feed_id: int, items: list[FeedItem], expect_new: bool = False
    ) -> list[str]:
        """New items written in bulk (COPY on PostgreSQL), changed ones
        updated (a first fetch of 1M items wrote them one statement each).
        Keys are distinct. Returns the new ones' keys."""
        if not items:
            return []
        if expect_new:
            rows = _item_rows(feed_id, items)
            cur.execute("SAVEPOINT map_items")
            try:
                self._insert_rows(cur, "exchange_items", _ITEM_COLUMNS, rows)
            except self._unique_violation:
                cur.execute("ROLLBACK TO SAVEPOINT map_items")  # some are mapped
            else:
                cur.execute("RELEASE SAVEPOINT map_items")
                return [row[1] for row in rows]
        known = self._mapped_keys(cur, feed_id, [item.key for item in items])
        new = _item_rows(feed_id, [item for item in items if item.key not in known])
        self._insert_rows(cur, "exchange_items", _ITEM_COLUMNS, new)
        changed = [
            (i.entry_name, i.source_id, feed_id, i.key)
            for i in items
            if i.key in known and known[i.key] != (i.entry_name, i.source_id)
        ]
        if changed:
            cur.executemany(
                "UPDATE exchange_items SET entry_name = ?, source_id = ?"
                " WHERE feed_id = ? AND item_key = ?",
                changed,
            )
        return [row[1] for row in new]

    def finish_feed_fetch(
        self, feed_id: int, owner: str, result: str, error: str, next_run_at: int, failed: bool
    ) -> None:
        """Records the fetch's outcome and gives the lease back."""
        with self._counter_write() as cur:
            cur.execute(
                "UPDATE exchange_feeds SET last_fetch_at = ?, last_result = ?, last_error = ?,"
                " next_run_at = ?, failures = CASE WHEN ? THEN failures + 1 ELSE 0 END,"
                " lease_owner = NULL, lease_until = NULL WHERE id = ? AND lease_owner = ?",
                (now_micros(), result, error[:2000], next_run_at, bool(failed), feed_id, owner),
            )

    # -- feedback to the source

    def queue_feedback(self, feed_id: int, entry_name: str, verdict: str, created_by: str) -> int:
        now = now_micros()
        with self._counter_write() as cur:
            cur.execute(
                "INSERT INTO exchange_feedback (feed_id, entry_name, verdict, state, created_at,"
                " created_by, next_attempt_at) VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id",
                (feed_id, entry_name, verdict, FEEDBACK_QUEUED, now, created_by, now),
            )
            return cur.fetchone()[0]

    def due_feedback(self, now: int, limit: int = 100) -> list[FeedbackRecord]:
        with self._read() as cur:
            cur.execute(
                f"SELECT {_FEEDBACK_COLUMNS} FROM exchange_feedback WHERE state = ? AND"
                " next_attempt_at <= ? ORDER BY id LIMIT ?",
                (FEEDBACK_QUEUED, now, limit),
            )
            return [FeedbackRecord(*row) for row in cur.fetchall()]

    def claim_feedback(self, feedback_id: int, retry_at: int) -> bool:
        """Moves the item's next attempt on before it is sent, so another
        replica does not send it at the same time; False if taken."""
        now = now_micros()
        with self._counter_write() as cur:
            cur.execute(
                "UPDATE exchange_feedback SET next_attempt_at = ?, attempts = attempts + 1"
                " WHERE id = ? AND state = ? AND next_attempt_at <= ? RETURNING id",
                (retry_at, feedback_id, FEEDBACK_QUEUED, now),
            )
            return cur.fetchone() is not None

    def mark_feedback(self, feedback_id: int, state: str, error: str = "") -> None:
        sent_at = now_micros() if state == FEEDBACK_SENT else None
        with self._counter_write() as cur:
            cur.execute(
                "UPDATE exchange_feedback SET state = ?, last_error = ?, sent_at = ? WHERE id = ?",
                (state, error[:2000], sent_at, feedback_id),
            )

    def feedback_for(
        self, feed_id: int, entry_name: str | None = None, limit: int = 100
    ) -> list[FeedbackRecord]:
        """The feed's (or one entry's) newest feedback items, newest first."""
        query = f"SELECT {_FEEDBACK_COLUMNS} FROM exchange_feedback WHERE feed_id = ?"
        params: tuple = (feed_id,)
        if entry_name is not None:
            query += " AND entry_name = ?"
            params += (entry_name,)
        with self._read() as cur:
            cur.execute(query + " ORDER BY id DESC LIMIT ?", (*params, limit))
            return [FeedbackRecord(*row) for row in cur.fetchall()]


def _feed(row) -> FeedRecord:
    values = list(row)
    values[4] = json.loads(values[4])
    values[5] = json.loads(values[5])
    values[7] = bool(values[7])
    values[23] = bool(values[23])
    return FeedRecord(*values)


def require_lease(held: bool, name: str) -> None:
    if not held:
        raise FailedPrecondition(f"feed {name!r} is being fetched by another replica")


def _item_rows(feed_id: int, items: list[FeedItem]) -> list[tuple[int, str, str, str]]:
    """exchange_items rows in key order: the primary key's pages are written
    one after another (sorted by key alone: a tuple compare a pair costs 4x)."""
    rows = [(feed_id, i.key, i.entry_name, i.source_id) for i in items]
    rows.sort(key=itemgetter(1))
    return rows
