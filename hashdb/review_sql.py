"""The review queue's storage, shared by the SQLite and PostgreSQL stores
(mixed into SQLStore; `?` placeholders, times as integer microseconds).

Claims are single UPDATE statements whose WHERE clause says the item is free
(open, and unclaimed, or its claim expired, or already this reviewer's): the
database serialises two reviewers racing for one item, and exactly one row
comes back to exactly one of them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import replace
from datetime import datetime

from hashdb.model import (
    NewEntry,
    NewEvent,
    RetroOwed,
    ReviewFilter,
    ReviewItem,
    Suppression,
)
from hashdb.times import from_micros, now_micros, to_micros
from hashsvc.base.errors import AlreadyExists, FailedPrecondition

_ITEM_COLUMNS = (
    "id, request_id, created_at, caller, media_type, client_ref, query_signals, matches,"
    " status, claimed_by, claim_expires_at, resolved_by, resolved_at, note, added_entry_id,"
    " source, origin_request_id"
)
OPEN = "open"
RESOLUTIONS = ("confirmed", "false_positive")


class ReviewSQL:
    def _counter_write(self):
        # Flood counts and alerts touch no change feed: PostgreSQL writes them
        # without the change-feed lock (a bulk load holds it for a batch).
        return self._write()

    def create_review_item(
        self,
        request_id: str,
        created_at: datetime,
        caller: str,
        media_type: str,
        client_ref: str,
        query_signals: list[dict],
        matches: list[dict],
    ) -> int:
        with self._write() as cur:
            return insert_review_item(
                cur, request_id, created_at, caller, media_type, client_ref, query_signals, matches
            )

    def get_review_item(self, item_id: int) -> ReviewItem | None:
        with self._read() as cur:
            cur.execute(f"SELECT {_ITEM_COLUMNS} FROM review_items WHERE id = ?", (item_id,))
            row = cur.fetchone()
        return _item(row) if row else None

    def list_review_items(
        self, filter: ReviewFilter, after_id: int = 0, limit: int = 100
    ) -> list[ReviewItem]:
        """Oldest first."""
        where, params = review_where(filter)
        with self._read() as cur:
            cur.execute(
                f"SELECT {_ITEM_COLUMNS} FROM review_items WHERE id > ? AND {where}"
                " ORDER BY id LIMIT ?",
                (after_id, *params, limit),
            )
            return [_item(row) for row in cur.fetchall()]

    def claim_review_item(
        self,
        reviewer: str,
        claim_seconds: float,
        item_id: int | None = None,
        filter: ReviewFilter | None = None,
    ) -> ReviewItem | None:
        """Claim one item (or the oldest free one matching filter) for
        claim_seconds; None if it is taken, resolved, or nothing is free."""
        now = now_micros()
        expires = now + int(claim_seconds * 1_000_000)
        if item_id is not None:
            candidates = [item_id]
        else:
            where, params = review_where(filter or ReviewFilter())
            with self._read() as cur:
                cur.execute(
                    f"SELECT id FROM review_items WHERE {where}"
                    " AND (claimed_by IS NULL OR claim_expires_at < ?) ORDER BY id LIMIT 20",
                    (*params, now),
                )
                candidates = [row[0] for row in cur.fetchall()]
        for candidate in candidates:
            with self._write() as cur:
                cur.execute(
                    "UPDATE review_items SET claimed_by = ?, claim_expires_at = ?"
                    " WHERE id = ? AND status = ?"
                    " AND (claimed_by IS NULL OR claim_expires_at < ? OR claimed_by = ?)"
                    " RETURNING id",
                    (reviewer, expires, candidate, OPEN, now, reviewer),
                )
                won = cur.fetchone() is not None
            if won:
                return self.get_review_item(candidate)
        return None

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
        """Resolve an item the reviewer holds a live claim on (given
        claim_expires_at, microseconds: that claim, not one made since), adding the
        confirmed upload as new_entry (with the retro-hunt it owes, `retro`)
        and remembering a false positive's suppressions, all in one
        transaction: None (and nothing written) when the claim is gone;
        AlreadyExists (nothing written) when the entry's name is taken;
        FailedPrecondition when the set is not a review target
        or is an allow list (checked here too: the set may change meanwhile)."""
        try:
            with self._write() as cur:
                now = now_micros()
                same_claim, claim = "", ()
                if claim_expires_at is not None:
                    same_claim, claim = " AND claim_expires_at = ?", (claim_expires_at,)
                cur.execute(
                    "UPDATE review_items SET status = ?, resolved_by = ?, resolved_at = ?,"
                    " note = ? WHERE id = ? AND status = ? AND claimed_by = ?"
                    f" AND claim_expires_at >= ?{same_claim} RETURNING id",
                    (resolution, reviewer, now, note, item_id, OPEN, reviewer, now, *claim),
                )
                if cur.fetchone() is None:
                    return None
                if new_entry is not None:
                    cur.execute(
                        "SELECT allow_list, review_target FROM hash_sets WHERE id = ?",
                        (new_entry.set_id,),
                    )
                    row = cur.fetchone()
                    if row is None or row[0] or not row[1]:
                        raise FailedPrecondition(
                            "reviewers add only to sets marked as review targets,"
                            " never to an allow list"
                        )
                    entry_id = self._insert_entry(cur, new_entry)
                    if retro is not None:
                        self._owe_retro(cur, retro, new_entry.set_id, entry_id, reviewer)
                    cur.execute(
                        "UPDATE review_items SET added_entry_id = ? WHERE id = ?",
                        (entry_id, item_id),
                    )
                if suppressions:
                    _insert_suppressions(cur, suppressions)
                self._append_events(cur, events)
        except self._unique_violation:
            name = new_entry.name if new_entry else ""
            raise AlreadyExists(f"an entry named {name!r} is already in the set") from None
        return self.get_review_item(item_id)

    # -- false positives

    def add_suppressions(self, suppressions: list[Suppression]) -> None:
        with self._write() as cur:
            _insert_suppressions(cur, suppressions)

    def suppressions_for(self, entry_ids) -> list[Suppression]:
        ids = sorted(set(entry_ids))
        if not ids:
            return []
        marks = ", ".join("?" * len(ids))
        with self._read() as cur:
            cur.execute(
                "SELECT entry_id, kind, value, review_id FROM review_suppressions"
                f" WHERE entry_id IN ({marks})",
                ids,
            )
            return [Suppression(r[0], r[1], bytes(r[2]), r[3]) for r in cur.fetchall()]

    # -- flood alerts (hashsvc/matching/flood.py FloodCounter)

    def add_flood_counts(
        self, counts: dict[int, int], bucket: int, window_buckets: int, threshold: int
    ) -> dict[int, int]:
        """Adds this replica's match counts to the shared ones in `bucket`,
        forgets buckets older than the window, and returns entry id -> matches
        within the window (the last window_buckets buckets) of the counted
        entries past threshold that have no open alert. One transaction, a
        statement per kind of work, whatever the number of entries."""
        oldest = bucket - window_buckets + 1
        with self._counter_write() as cur:
            if counts:
                cur.executemany(
                    "INSERT INTO flood_counts (entry_id, bucket, count) VALUES (?, ?, ?)"
                    " ON CONFLICT (entry_id, bucket)"
                    " DO UPDATE SET count = flood_counts.count + excluded.count",
                    [(entry_id, bucket, n) for entry_id, n in sorted(counts.items())],
                )
            cur.execute("DELETE FROM flood_counts WHERE bucket < ?", (oldest,))
            over: dict[int, int] = {}
            ids = sorted(counts)
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                marks = ", ".join("?" * len(chunk))
                cur.execute(
                    "SELECT c.entry_id, SUM(c.count) FROM flood_counts c"
                    f" WHERE c.entry_id IN ({marks}) AND c.bucket >= ?"
                    " AND NOT EXISTS (SELECT 1 FROM entry_quarantine q"
                    " WHERE q.entry_id = c.entry_id)"
                    " GROUP BY c.entry_id HAVING SUM(c.count) > ?",
                    (*chunk, oldest, threshold),
                )
                over.update((row[0], int(row[1])) for row in cur.fetchall())
        return over

    def flood_counted_entries(self) -> int:
        """How many entries the shared counter holds counts for."""
        with self._read() as cur:
            cur.execute("SELECT COUNT(DISTINCT entry_id) FROM flood_counts")
            return cur.fetchone()[0]

    def raise_flood_alert(
        self, entry_id: int, reason: str, item: dict, events: Iterable[NewEvent] = ()
    ) -> int | None:
        """Opens the entry's alert and its review item together; None when an
        alert is open already (another replica raised it first). `item`: the
        create_review_item arguments."""
        with self._counter_write() as cur:
            cur.execute(
                "INSERT INTO entry_quarantine (entry_id, since, reason) VALUES (?, ?, ?)"
                " ON CONFLICT (entry_id) DO NOTHING RETURNING entry_id",
                (entry_id, now_micros(), reason),
            )
            if cur.fetchone() is None:
                return None
            item_id = insert_review_item(cur, **item)
            self._append_events(cur, [with_review_id(e, item_id) for e in events])
            return item_id

    def release_entry(self, entry_id: int) -> bool:
        """Acknowledges the entry's open alert and restarts its count; False
        if none was open."""
        with self._write() as cur:
            cur.execute(
                "DELETE FROM entry_quarantine WHERE entry_id = ? RETURNING entry_id", (entry_id,)
            )
            if cur.fetchone() is None:
                return False
            cur.execute("DELETE FROM flood_counts WHERE entry_id = ?", (entry_id,))
            return True

    def open_flood_alerts(self, entry_ids) -> dict[int, str]:
        """entry id -> reason, of those with an open (unacknowledged) alert."""
        ids = sorted(set(entry_ids))
        if not ids:
            return {}
        marks = ", ".join("?" * len(ids))
        with self._read() as cur:
            cur.execute(
                f"SELECT entry_id, reason FROM entry_quarantine WHERE entry_id IN ({marks})", ids
            )
            return {row[0]: row[1] for row in cur.fetchall()}


def _insert_suppressions(cur, suppressions: list[Suppression]) -> None:
    cur.executemany(
        "INSERT INTO review_suppressions (entry_id, kind, value, review_id, created_at)"
        " VALUES (?, ?, ?, ?, ?)",
        [(s.entry_id, s.kind, bytes(s.value), s.review_id, now_micros()) for s in suppressions],
    )


def insert_review_item(
    cur,
    request_id: str,
    created_at: datetime,
    caller: str,
    media_type: str,
    client_ref: str,
    query_signals: list[dict],
    matches: list[dict],
    source: str = "match",
    origin_request_id: str | None = None,
) -> int:
    set_ids = sorted({m["set_id"] for m in matches if m.get("set_id") is not None})
    labels = sorted({f"{k}={v}" for m in matches for k, v in m.get("labels", {}).items()})
    cur.execute(
        "INSERT INTO review_items (request_id, created_at, caller, media_type,"
        " client_ref, query_signals, matches, set_ids, labels, status, source, origin_request_id)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
        (
            request_id,
            to_micros(created_at),
            caller,
            media_type,
            client_ref,
            json.dumps(query_signals),
            json.dumps(matches, ensure_ascii=False),
            "," + ",".join(map(str, set_ids)) + ",",
            "\n" + "\n".join(labels) + "\n",
            OPEN,
            source,
            origin_request_id,
        ),
    )
    return cur.fetchone()[0]


def review_where(filter: ReviewFilter) -> tuple[str, list]:
    clauses, params = ["status = ?"], [filter.status]
    if filter.set_id is not None:
        clauses.append("set_ids LIKE ?")
        params.append(f"%,{filter.set_id},%")
    if filter.label is not None:
        clauses.append("labels LIKE ?")
        key, value = filter.label
        params.append(f"%\n{_like_escape(key)}={_like_escape(value)}\n%")
    if filter.media_type:
        clauses.append("media_type = ?")
        params.append(filter.media_type)
    if filter.caller:
        clauses.append("caller = ?")
        params.append(filter.caller)
    return " AND ".join(clauses), params


def _like_escape(text: str) -> str:
    # Labels are validated to plain key/value text; '%' and '_' would still
    # act as wildcards, so a label holding them matches a little wider, which
    # errs on the side of showing an item.
    return text


def _item(row) -> ReviewItem:
    return ReviewItem(
        id=row[0],
        # a retro item's own request_id only keys the hit: the upload's is shown
        request_id=row[16] or row[1],
        created_at=from_micros(row[2]),
        caller=row[3],
        media_type=row[4],
        client_ref=row[5],
        query_signals=json.loads(row[6]),
        matches=json.loads(row[7]),
        status=row[8],
        claimed_by=row[9] or "",
        claim_expires_at=from_micros(row[10]),
        resolved_by=row[11] or "",
        resolved_at=from_micros(row[12]),
        note=row[13] or "",
        added_entry_id=row[14],
        source=row[15],
    )


def with_review_id(event: NewEvent, item_id: int) -> NewEvent:
    """An event names the review item made with it (a flood alert, a retro-match)."""
    return replace(event, body={**event.body, "review_id": item_id})
