"""The review queue's storage, shared by the SQLite and PostgreSQL stores
(mixed into SQLStore; `?` placeholders, times as integer microseconds).

Claims are single UPDATE statements whose WHERE clause says the item is free
(open, and unclaimed, or its claim expired, or already this reviewer's): the
database serialises two reviewers racing for one item, and exactly one row
comes back to exactly one of them.
"""

from __future__ import annotations

import json
from datetime import datetime

from hashdb.model import ReviewFilter, ReviewItem, Suppression
from hashdb.sqlbase import from_micros, now_micros, to_micros

_ITEM_COLUMNS = (
    "id, request_id, created_at, caller, media_type, client_ref, query_signals, matches,"
    " status, claimed_by, claim_expires_at, resolved_by, resolved_at, note, added_entry_id"
)
OPEN = "open"
RESOLUTIONS = ("confirmed", "false_positive")


class ReviewSQL:
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
        set_ids = sorted({m["set_id"] for m in matches if m.get("set_id") is not None})
        labels = sorted({f"{k}={v}" for m in matches for k, v in m.get("labels", {}).items()})
        with self._write() as cur:
            cur.execute(
                "INSERT INTO review_items (request_id, created_at, caller, media_type,"
                " client_ref, query_signals, matches, set_ids, labels, status)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
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
                ),
            )
            return cur.fetchone()[0]

    def get_review_item(self, item_id: int) -> ReviewItem | None:
        with self._read() as cur:
            cur.execute(f"SELECT {_ITEM_COLUMNS} FROM review_items WHERE id = ?", (item_id,))
            row = cur.fetchone()
        return _item(row) if row else None

    def list_review_items(
        self, filter: ReviewFilter, after_id: int = 0, limit: int = 100
    ) -> list[ReviewItem]:
        """Oldest first."""
        where, params = _where(filter)
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
            where, params = _where(filter or ReviewFilter())
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
        added_entry_id: int | None = None,
    ) -> ReviewItem | None:
        """Resolve an item the reviewer holds a live claim on; None otherwise."""
        with self._write() as cur:
            cur.execute(
                "UPDATE review_items SET status = ?, resolved_by = ?, resolved_at = ?, note = ?,"
                " added_entry_id = ? WHERE id = ? AND status = ? AND claimed_by = ?"
                " AND claim_expires_at >= ? RETURNING id",
                (resolution, reviewer, now_micros(), note, added_entry_id, item_id, OPEN,
                 reviewer, now_micros()),
            )  # fmt: skip
            done = cur.fetchone() is not None
        return self.get_review_item(item_id) if done else None

    # -- false positives

    def add_suppressions(self, suppressions: list[Suppression]) -> None:
        with self._write() as cur:
            cur.executemany(
                "INSERT INTO review_suppressions (entry_id, kind, value, review_id, created_at)"
                " VALUES (?, ?, ?, ?, ?)",
                [
                    (s.entry_id, s.kind, bytes(s.value), s.review_id, now_micros())
                    for s in suppressions
                ],
            )

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

    # -- quarantine

    def quarantine_entry(self, entry_id: int, reason: str) -> bool:
        """True if the entry was not quarantined before."""
        with self._write() as cur:
            cur.execute("SELECT 1 FROM entry_quarantine WHERE entry_id = ?", (entry_id,))
            if cur.fetchone() is not None:
                return False
            cur.execute(
                "INSERT INTO entry_quarantine (entry_id, since, reason) VALUES (?, ?, ?)",
                (entry_id, now_micros(), reason),
            )
            return True

    def release_entry(self, entry_id: int) -> bool:
        with self._write() as cur:
            cur.execute(
                "DELETE FROM entry_quarantine WHERE entry_id = ? RETURNING entry_id", (entry_id,)
            )
            return cur.fetchone() is not None

    def quarantined(self, entry_ids) -> dict[int, str]:
        ids = sorted(set(entry_ids))
        if not ids:
            return {}
        marks = ", ".join("?" * len(ids))
        with self._read() as cur:
            cur.execute(
                f"SELECT entry_id, reason FROM entry_quarantine WHERE entry_id IN ({marks})", ids
            )
            return {row[0]: row[1] for row in cur.fetchall()}


def _where(filter: ReviewFilter) -> tuple[str, list]:
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
        request_id=row[1],
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
    )
