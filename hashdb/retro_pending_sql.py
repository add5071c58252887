"""Retro-hunts owed (retro_pending), in SQL for both stores: written by a
bulk load or feed fetch before its first entry, or in the very transaction
that adds an entry (AddEntry, a confirmed review), and cleared once the
hunt's runs are queued. A row is held (held_until) by the process that wrote
or took it; once the hold lapses any replica takes it (one UPDATE whose
WHERE says it is free: exactly one of several gets it) and queues it."""

from __future__ import annotations

import json
from collections.abc import Iterable

from hashdb.model import RetroPending

_COLUMNS = "id, set_id, since, trigger, requested_by, entry_ids"


def insert_retro_pending(
    cur,
    now: int,
    set_id: int,
    since: int,
    trigger: str,
    requested_by: str,
    entry_ids: Iterable[int] = (),
    hold_seconds: float = 0.0,
) -> RetroPending:
    """Within the caller's transaction; `now` by the leases' clock."""
    ids = tuple(sorted(set(entry_ids)))
    cur.execute(
        "INSERT INTO retro_pending (set_id, since, trigger, requested_by, created_at,"
        " entry_ids, held_until) VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id",
        (
            set_id,
            since,
            trigger,
            requested_by,
            now,
            json.dumps(ids) if ids else None,
            now + int(hold_seconds * 1e6) if hold_seconds > 0 else None,
        ),
    )
    return RetroPending(cur.fetchone()[0], set_id, since, trigger, requested_by, ids)


def pending(row) -> RetroPending:
    ids = tuple(json.loads(row[5])) if row[5] else ()
    return RetroPending(row[0], row[1], row[2], row[3], row[4], ids)


class RetroPendingSQL:
    """Mixed into SQLStore (with OutboxSQL's _db_now: the leases' clock)."""

    def add_retro_pending(
        self,
        set_id: int,
        since_micros: int,
        trigger: str,
        requested_by: str,
        hold_seconds: float = 0.0,
    ) -> RetroPending:
        with self._write() as cur:
            return insert_retro_pending(
                cur,
                self._db_now(cur),
                set_id,
                since_micros,
                trigger,
                requested_by,
                hold_seconds=hold_seconds,
            )

    def list_retro_pending(self) -> list[RetroPending]:
        """Oldest first, held or not."""
        with self._read() as cur:
            cur.execute(f"SELECT {_COLUMNS} FROM retro_pending ORDER BY id")
            return [pending(row) for row in cur.fetchall()]

    def claim_retro_pending(self, hold_seconds: float, limit: int = 100) -> list[RetroPending]:
        """Takes (holds for hold_seconds) up to `limit` rows nobody holds,
        oldest first."""
        with self._write() as cur:
            now = self._db_now(cur)
            free = "(held_until IS NULL OR held_until < ?)"
            # the condition again outside the subquery: PostgreSQL rechecks it
            # on a row another transaction has just taken
            cur.execute(
                f"UPDATE retro_pending SET held_until = ? WHERE {free} AND id IN"
                f" (SELECT id FROM retro_pending WHERE {free} ORDER BY id LIMIT ?)"
                f" RETURNING {_COLUMNS}",
                (now + int(hold_seconds * 1e6), now, now, limit),
            )
            return sorted((pending(row) for row in cur.fetchall()), key=lambda p: p.id)

    def hold_retro_pending(self, pending_ids: Iterable[int], hold_seconds: float) -> None:
        """Renews the hold on rows this process is still working on."""
        ids = sorted(set(pending_ids))
        if not ids:
            return
        with self._write() as cur:
            until = self._db_now(cur) + int(hold_seconds * 1e6)
            marks = ", ".join("?" * len(ids))
            cur.execute(
                f"UPDATE retro_pending SET held_until = ? WHERE id IN ({marks})", (until, *ids)
            )

    def release_retro_pending(self, pending_ids: Iterable[int]) -> None:
        """Lets go of rows at once (a stopping server: the next start, or
        another replica, queues them without waiting for the hold)."""
        ids = sorted(set(pending_ids))
        if not ids:
            return
        marks = ", ".join("?" * len(ids))
        with self._write() as cur:
            cur.execute(f"UPDATE retro_pending SET held_until = NULL WHERE id IN ({marks})", ids)

    def clear_retro_pending(self, pending_id: int) -> None:
        with self._write() as cur:
            cur.execute("DELETE FROM retro_pending WHERE id = ?", (pending_id,))

    def clear_retro_pending_of_entries(self, entry_ids: Iterable[int]) -> list[int]:
        """Deletes the rows owed for exactly these entries (written with
        them); the ids of the rows deleted."""
        ids = tuple(sorted(set(entry_ids)))
        if not ids:
            return []
        with self._write() as cur:
            cur.execute(
                "DELETE FROM retro_pending WHERE entry_ids = ? RETURNING id", (json.dumps(ids),)
            )
            return [row[0] for row in cur.fetchall()]
