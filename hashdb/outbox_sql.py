"""The event outbox in SQL, for both stores (mixed into SQLStore; `?`
placeholders, times as integer microseconds).

Events are appended inside the transaction of their cause (a Match's history
record, a review verdict, a flood alert), so an event exists exactly when its
cause committed. Its public id (seq) is given in the order events became
visible: at the insert on SQLite (one writer at a time), after the commit on
PostgreSQL (_sequence_events). Each webhook endpoint has one row that all
replicas share: the last event done, the failing one's attempts, and a lease.
Every write of a deliverer is fenced by its lease (`lease_owner = me AND
lease_until > now`), so a replica whose lease ran out can no longer move the
endpoint on, and only the lease holder sends: no event goes out twice at once.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterable
from contextlib import AbstractContextManager
from datetime import datetime

from hashdb.model import EndpointState, EventFailure, NewEvent, OutboxEvent
from hashdb.times import from_micros, now_micros, to_micros

_ENDPOINT_COLUMNS = (
    "name, delivered_through, attempts, first_failed_at, next_attempt_at, last_error, lease_until"
)


class OutboxSQL:
    _history_key: bytes | None = None
    # The legacy watermark once read (_legacy_through)
    _outbox_legacy: int | None = None
    # Events given their seq in one sequencing transaction at most.
    SEQUENCE_BATCH = 5_000
    # A store whose write transactions commit one at a time, in the order
    # they wrote (SQLite), gives the seq as it inserts.
    _sequence_at_insert = False

    def _endpoint_write(self) -> AbstractContextManager:
        """A transaction for an endpoint's row (it touches no change feed)."""
        return self._write()

    def _sequence_lock(self, cur) -> None:
        """Makes sequencing transactions take turns (PostgreSQL; SQLite's
        writes always do)."""

    def _db_now(self, cur) -> int:
        """Now, in microseconds, by the clock every replica's leases use."""
        return now_micros()

    # -- writing (in the cause's transaction)

    def _append_events(self, cur, events: Iterable[NewEvent]) -> None:
        """Appends within the caller's transaction. No lock: the event gets
        its public id (seq) once committed (_sequence_events). With a key its
        MAC covers the row id (known once inserted), and on SQLite, where
        the seq is given here, its seq MAC too."""
        now = now_micros()
        seq = "(SELECT COALESCE(MAX(seq), 0) + 1 FROM event_outbox)"
        if not self._sequence_at_insert:
            seq = "NULL"
        signed = []
        for event in events:
            fields = (
                event.type,
                now,
                json.dumps(list(event.set_names), ensure_ascii=False),
                json.dumps(event.body, ensure_ascii=False, sort_keys=True),
            )
            cur.execute(
                "INSERT INTO event_outbox (seq, type, created_at, set_names, body, mac_format)"
                f" VALUES ({seq}, ?, ?, ?, ?, 2) RETURNING id, seq",
                fields,
            )
            row_id, row_seq = cur.fetchone()
            if self._history_key:
                mac = _mac(self._history_key, (row_id, *fields))
                seq_mac = _seq_mac(self._history_key, row_seq, row_id, mac)
                signed.append((mac, seq_mac, row_id))
        if signed:
            cur.executemany("UPDATE event_outbox SET mac = ?, seq_mac = ? WHERE id = ?", signed)

    def append_events(self, events: Iterable[NewEvent]) -> None:
        with self._endpoint_write() as cur:
            self._append_events(cur, events)

    def _sequence_events(self) -> None:
        """Gives committed events without a seq the next seqs, in id order.
        A sequencing transaction sees only committed rows and runs alone, so
        seq order is the order events became visible: a reader following
        seqs never passes one that shows up later. Causal order holds too: an
        event caused by another was written after that one had committed."""
        with self._read() as cur:
            cur.execute("SELECT 1 FROM event_outbox WHERE seq IS NULL LIMIT 1")
            if cur.fetchone() is None:
                return
        with self._endpoint_write() as cur:
            self._sequence_lock(cur)
            cur.execute("SELECT COALESCE(MAX(seq), 0) FROM event_outbox")
            head = cur.fetchone()[0]
            cur.execute(
                "UPDATE event_outbox SET seq = ? + t.rn FROM (SELECT id,"
                " ROW_NUMBER() OVER (ORDER BY id) AS rn FROM event_outbox WHERE seq IS NULL"
                " ORDER BY id LIMIT ?) AS t WHERE event_outbox.id = t.id"
                " RETURNING event_outbox.id, event_outbox.seq, event_outbox.mac",
                (head, self.SEQUENCE_BATCH),
            )
            # The seq MAC binds the row (its id and MAC) to its place. A row
            # without a MAC gets none: it never verifies anyway.
            signed = [
                (_seq_mac(self._history_key, seq, row_id, mac), row_id)
                for row_id, seq, mac in cur.fetchall()
                if self._history_key and mac is not None
            ]
            if signed:
                cur.executemany("UPDATE event_outbox SET seq_mac = ? WHERE id = ?", signed)

    def sign_outbox_legacy(self) -> None:
        """Signs the watermark of rows written before MACs covered their place
        (migration _OUTBOX_PLACE) under the history key, once: the first
        store opened with the key after the migration. Not if rows of the new
        format were signed already (then someone cleared the watermark's MAC
        to move it: every old row stays unverified)."""
        if not self._history_key:
            return
        with self._endpoint_write() as cur:
            cur.execute("SELECT through_id, mac FROM event_outbox_legacy")
            row = cur.fetchone()
            if row is None or row[1] is not None:
                return
            cur.execute(
                "SELECT 1 FROM event_outbox WHERE mac_format = 2 AND mac IS NOT NULL LIMIT 1"
            )
            if cur.fetchone() is not None:
                return
            cur.execute(
                "UPDATE event_outbox_legacy SET mac = ?",
                (_legacy_mac(self._history_key, row[0]),),
            )

    def _legacy_through(self, cur) -> int:
        """The last row id of the old MAC format that verifies the old way (0
        when the watermark is unsigned or its MAC does not verify)."""
        if self._outbox_legacy is not None:
            return self._outbox_legacy
        cur.execute("SELECT through_id, mac FROM event_outbox_legacy")
        row = cur.fetchone()
        through = 0
        if row is not None and row[1] is not None:
            expected = _legacy_mac(self._history_key, row[0])
            if hmac.compare_digest(expected, row[1]):
                through = row[0]
        self._outbox_legacy = through
        return through

    # -- reading

    def events_after(self, after_id: int, limit: int = 100) -> list[OutboxEvent]:
        self._sequence_events()
        with self._read() as cur:
            cur.execute(
                "SELECT seq, type, created_at, set_names, body, mac, id, seq_mac, mac_format"
                " FROM event_outbox WHERE seq > ? ORDER BY seq LIMIT ?",
                (after_id, limit),
            )
            rows = cur.fetchall()
            legacy = self._legacy_through(cur) if self._history_key else 0
            return [_event(row, self._history_key, legacy) for row in rows]

    def last_event_id(self) -> int:
        self._sequence_events()
        with self._read() as cur:
            cur.execute("SELECT COALESCE(MAX(seq), 0) FROM event_outbox")
            return cur.fetchone()[0]

    def prune_events(self, before: datetime, through_id: int, limit: int = 10_000) -> int:
        """Deletes up to `limit` events created before `before` with ids up
        to through_id (delivered everywhere); how many it deleted. The newest
        event always stays: the next id follows it, so it must never start
        again below an endpoint's position."""
        with self._endpoint_write() as cur:
            cur.execute(
                "DELETE FROM event_outbox WHERE id IN (SELECT id FROM event_outbox"
                " WHERE created_at < ? AND seq <= ?"
                " AND seq < (SELECT MAX(seq) FROM event_outbox) ORDER BY created_at LIMIT ?)",
                (to_micros(before), through_id, limit),
            )
            return cur.rowcount

    def endpoint_states(self) -> list[EndpointState]:
        with self._read() as cur:
            cur.execute(f"SELECT {_ENDPOINT_COLUMNS} FROM webhook_endpoints ORDER BY name")
            return [_endpoint(row, 0) for row in cur.fetchall()]

    def event_failures(self, after: tuple[int, str] = (0, ""), limit: int = 100):
        """Failed deliveries ordered by (event id, endpoint), after `after`."""
        event_id, endpoint = after
        with self._read() as cur:
            cur.execute(
                "SELECT f.endpoint, f.event_id, COALESCE(o.type, ''), f.failed_at, f.attempts,"
                " f.last_error FROM webhook_failures f LEFT JOIN event_outbox o"
                " ON o.seq = f.event_id WHERE f.event_id > ? OR (f.event_id = ? AND f.endpoint > ?)"
                " ORDER BY f.event_id, f.endpoint LIMIT ?",
                (event_id, event_id, endpoint, limit),
            )
            return [
                EventFailure(name, eid, etype, from_micros(at), attempts, error)
                for name, eid, etype, at, attempts, error in cur.fetchall()
            ]

    def count_event_failures(self) -> dict[str, int]:
        with self._read() as cur:
            cur.execute("SELECT endpoint, COUNT(*) FROM webhook_failures GROUP BY endpoint")
            return dict(cur.fetchall())

    # -- delivering (fenced by the endpoint's lease)

    def start_endpoint(self, name: str) -> None:
        """Registers an endpoint at the outbox's head: a new receiver gets
        what happens from now on, not the outbox's past."""
        head = self.last_event_id()
        with self._endpoint_write() as cur:
            cur.execute(
                "INSERT INTO webhook_endpoints (name, delivered_through, updated_at)"
                " VALUES (?, ?, ?) ON CONFLICT (name) DO NOTHING",
                (name, head, now_micros()),
            )

    def claim_endpoint(self, name: str, owner: str, lease_seconds: float) -> EndpointState | None:
        """The endpoint's state with a lease for `owner`, if no other
        replica holds a live lease on it (or `owner` holds it already)."""
        with self._endpoint_write() as cur:
            now = self._db_now(cur)
            cur.execute(
                "UPDATE webhook_endpoints SET lease_owner = ?, lease_until = ?"
                " WHERE name = ? AND (lease_owner = ? OR lease_until <= ? OR lease_owner IS NULL)"
                f" RETURNING {_ENDPOINT_COLUMNS}",
                (owner, now + int(lease_seconds * 1e6), name, owner, now),
            )
            row = cur.fetchone()
            return _endpoint(row, now) if row else None

    def advance_endpoint(
        self, name: str, owner: str, through_id: int, lease_seconds: float
    ) -> EndpointState | None:
        """Marks events up to through_id done and renews the lease; None if
        the lease was lost (then nothing is written)."""
        with self._endpoint_write() as cur:
            now = self._db_now(cur)
            cur.execute(
                "UPDATE webhook_endpoints SET delivered_through = ?, attempts = 0,"
                " first_failed_at = NULL, next_attempt_at = NULL, last_error = '',"
                " lease_until = ?, updated_at = ?"
                " WHERE name = ? AND lease_owner = ? AND lease_until > ?"
                " AND delivered_through <= ?"
                f" RETURNING {_ENDPOINT_COLUMNS}",
                (through_id, now + int(lease_seconds * 1e6), now, name, owner, now, through_id),
            )
            row = cur.fetchone()
            return _endpoint(row, now) if row else None

    def endpoint_attempt_failed(
        self,
        name: str,
        owner: str,
        error: str,
        retry_in_seconds: float,
        lease_seconds: float,
    ) -> EndpointState | None:
        """One more failed attempt at the next event (first_failed_at set on
        the first one); None if the lease was lost."""
        with self._endpoint_write() as cur:
            now = self._db_now(cur)
            cur.execute(
                "UPDATE webhook_endpoints SET attempts = attempts + 1,"
                " first_failed_at = COALESCE(first_failed_at, ?), next_attempt_at = ?,"
                " last_error = ?, lease_until = ?, updated_at = ?"
                " WHERE name = ? AND lease_owner = ? AND lease_until > ?"
                f" RETURNING {_ENDPOINT_COLUMNS}",
                (
                    now,
                    now + int(retry_in_seconds * 1e6),
                    error[:1000],
                    now + int(lease_seconds * 1e6),
                    now,
                    name,
                    owner,
                    now,
                ),
            )
            row = cur.fetchone()
            return _endpoint(row, now) if row else None

    def endpoint_give_up(
        self, name: str, owner: str, event_id: int, lease_seconds: float
    ) -> EndpointState | None:
        """Records the event as failed for this endpoint and moves past it,
        in one transaction; None (nothing written) if the lease was lost."""
        with self._endpoint_write() as cur:
            now = self._db_now(cur)
            cur.execute(
                "SELECT attempts, last_error FROM webhook_endpoints"
                " WHERE name = ? AND lease_owner = ? AND lease_until > ? AND delivered_through < ?",
                (name, owner, now, event_id),
            )
            held = cur.fetchone()
            if held is None:
                return None
            cur.execute(
                "INSERT INTO webhook_failures (endpoint, event_id, failed_at, attempts,"
                " last_error) VALUES (?, ?, ?, ?, ?) ON CONFLICT (endpoint, event_id) DO NOTHING",
                (name, event_id, now, held[0], held[1]),
            )
            cur.execute(
                "UPDATE webhook_endpoints SET delivered_through = ?, attempts = 0,"
                " first_failed_at = NULL, next_attempt_at = NULL, last_error = '',"
                " lease_until = ?, updated_at = ? WHERE name = ?"
                f" RETURNING {_ENDPOINT_COLUMNS}",
                (event_id, now + int(lease_seconds * 1e6), now, name),
            )
            return _endpoint(cur.fetchone(), now)

    def release_endpoint(self, name: str, owner: str) -> None:
        with self._endpoint_write() as cur:
            cur.execute(
                "UPDATE webhook_endpoints SET lease_owner = NULL, lease_until = 0"
                " WHERE name = ? AND lease_owner = ?",
                (name, owner),
            )


def _mac(key: bytes | None, fields: tuple) -> str | None:
    """A row's MAC: mac_format 2 (fields = row id, type, created_at,
    set_names, body); mac_format 1, before (no row id)."""
    if not key:
        return None
    canonical = json.dumps(["hashsvc-event", *fields], ensure_ascii=False, separators=(",", ":"))
    return hmac.new(key, canonical.encode(), hashlib.sha256).hexdigest()


def _seq_mac(key: bytes | None, seq: int | None, row_id: int, mac: str | None) -> str | None:
    if not key or seq is None or mac is None:
        return None
    canonical = json.dumps(["hashsvc-event-seq", seq, row_id, mac], separators=(",", ":"))
    return hmac.new(key, canonical.encode(), hashlib.sha256).hexdigest()


def _legacy_mac(key: bytes, through_id: int) -> str:
    canonical = json.dumps(["hashsvc-event-legacy", through_id], separators=(",", ":"))
    return hmac.new(key, canonical.encode(), hashlib.sha256).hexdigest()


def _event(row, key: bytes | None, legacy_through: int = 0) -> OutboxEvent:
    seq, event_type, created_at, set_names, body, mac, row_id, seq_mac, mac_format = row
    authentic = None
    if key:
        if mac_format == 1:  # written before MACs covered the row's place
            expected = _mac(key, (event_type, created_at, set_names, body))
            authentic = row_id <= legacy_through and _same(expected, mac)
        else:
            expected = _mac(key, (row_id, event_type, created_at, set_names, body))
            authentic = _same(expected, mac) and _same(_seq_mac(key, seq, row_id, mac), seq_mac)
    return OutboxEvent(
        seq,
        event_type,
        from_micros(created_at),
        tuple(json.loads(set_names)),
        json.loads(body),
        authentic,
    )


def _same(expected: str | None, given: str | None) -> bool:
    return expected is not None and given is not None and hmac.compare_digest(expected, given)


def _endpoint(row, now: int) -> EndpointState:
    name, through, attempts, first_failed, next_attempt, error, lease_until = row
    return EndpointState(
        name,
        through,
        attempts,
        from_micros(first_failed),
        from_micros(next_attempt),
        error,
        max(0.0, (lease_until - now) / 1e6) if now else 0.0,
    )
