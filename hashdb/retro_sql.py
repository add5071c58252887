"""Retro-hunt runs, their hits, and the history they read, in SQL for both
stores (mixed into SQLStore; `?` placeholders, times in microseconds).

A run is claimed with a lease (one UPDATE whose WHERE says it is free): of
several replicas exactly one scans it, and a run whose server died (lease
expired) is taken over from its checkpoint. Each claim draws an owner token
(RetroRun.lease_owner); every write the scanning server makes to the run
(progress, retry, release, finish, a partition done, a hit, a hit's history
record) is conditional on the run still being its own, so a server whose
lease expired while it stalled is refused instead of writing over the new
owner's. A hit is inserted under the unique key (entry, original request
id) together with its review item, and its history record is written in the
transaction that marks it recorded, so neither is reported twice.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterable

from hashdb.model import HistoryRecord, HistoryUpload, NewEvent, RetroPartition, RetroRun
from hashdb.retro_pending_sql import RetroPendingSQL
from hashdb.review_sql import insert_review_item, with_review_id
from hashdb.times import from_micros, now_micros

_RUN_COLUMNS = (
    "id, trigger, requested_by, set_id, entry_ids, since, last_history_id, checkpoint,"
    " scanned, hits, state, error, created_at, started_at, finished_at, failed_attempts,"
    " lease_owner"
)
QUEUED, RUNNING, DONE, FAILED, SKIPPED = "queued", "running", "done", "failed", "skipped"
OPEN_STATES = (QUEUED, RUNNING)
# The history records of uploads (the calls hashsvc/api/servicers.py records).
MATCH_RPCS = ("Match", "MatchUpload", "MatchBatch")
# The WHERE of a write only the run's current holder may make (run id, owner).
_HELD = "id = ? AND state = 'running' AND lease_owner = ?"
_HELD_RUN = "EXISTS (SELECT 1 FROM retro_runs WHERE " + _HELD + ")"


class RetroSQL(RetroPendingSQL):
    # The query_signals column as UTF-8 bytes (SQLite; PostgreSQL overrides):
    # what the scan reads, without decoding to str and encoding back.
    _SIGNALS_AS_BYTES = "CAST(query_signals AS BLOB)"
    # How a holder's write locks its run's row against a claim until it
    # commits (PostgreSQL overrides; SQLite's writes are serialized anyway).
    _HELD_LOCK = ""

    # -- runs

    def create_retro_run(
        self,
        trigger: str,
        requested_by: str,
        set_id: int | None,
        entry_ids: Iterable[int],
        since_micros: int,
        state: str = QUEUED,
        error: str = "",
        created_micros: int | None = None,
    ) -> RetroRun:
        """A run over the history from since_micros up to its newest record
        (now, and again when the run first starts); starts at the first
        record of the window (the time index finds it once, the scan then
        walks ids)."""
        now = now_micros() if created_micros is None else min(created_micros, now_micros())
        # before the transaction: 100k ids are ~20 ms of CPU, which on SQLite
        # a Match's history record waited for (a feed's fetch queues ten)
        ids_text = json.dumps(sorted(set(entry_ids)))
        with self._write() as cur:
            cur.execute("SELECT COALESCE(MAX(id), 0) FROM match_history")
            last_id = cur.fetchone()[0]
            cur.execute("SELECT MIN(id) FROM match_history WHERE time >= ?", (since_micros,))
            first = cur.fetchone()[0]
            checkpoint = (first - 1) if first is not None else last_id
            cur.execute(
                "INSERT INTO retro_runs (trigger, requested_by, set_id, entry_ids, since,"
                " last_history_id, checkpoint, state, error, created_at,"
                " finished_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                (
                    trigger,
                    requested_by,
                    set_id,
                    ids_text,
                    since_micros,
                    last_id,
                    checkpoint,
                    state,
                    error,
                    now,
                    None if state in OPEN_STATES else now,
                ),
            )
            run_id = cur.fetchone()[0]
        return self.get_retro_run(run_id)

    def get_retro_run(self, run_id: int) -> RetroRun | None:
        with self._read() as cur:
            cur.execute(f"SELECT {_RUN_COLUMNS} FROM retro_runs WHERE id = ?", (run_id,))
            row = cur.fetchone()
        return _run(row) if row else None

    def list_retro_runs(self, after_id: int = 0, limit: int = 100) -> list[RetroRun]:
        """Newest first: ids below after_id (0: from the newest)."""
        with self._read() as cur:
            cur.execute(
                f"SELECT {_RUN_COLUMNS} FROM retro_runs WHERE (? = 0 OR id < ?)"
                " ORDER BY id DESC LIMIT ?",
                (after_id, after_id, limit),
            )
            return [_run(row) for row in cur.fetchall()]

    def count_open_retro_runs(self) -> int:
        with self._read() as cur:
            cur.execute("SELECT COUNT(*) FROM retro_runs WHERE state IN (?, ?)", OPEN_STATES)
            return cur.fetchone()[0]

    def claim_retro_run(self, lease_seconds: float) -> RetroRun | None:
        """The oldest queued run, or a running one whose lease expired (its
        server died), now this caller's for lease_seconds; None if none."""
        now = now_micros()
        with self._read() as cur:
            cur.execute(
                "SELECT id FROM retro_runs WHERE state = ? OR (state = ? AND lease_until < ?)"
                " ORDER BY id LIMIT 10",
                (QUEUED, RUNNING, now),
            )
            candidates = [row[0] for row in cur.fetchall()]
        for run_id in candidates:
            owner = secrets.token_hex(16)
            with self._write() as cur:
                # A run's end is the history's newest record when it first
                # starts, not when it was queued: a Match that had matched
                # without the entry may write its record a moment after the
                # run was queued. Uploads matched later with the entry known
                # were not allowed, and only allowed ones are scanned.
                cur.execute(
                    "UPDATE retro_runs SET state = ?, lease_until = ?, lease_owner = ?,"
                    " last_history_id = CASE WHEN started_at IS NULL THEN"
                    " (SELECT COALESCE(MAX(id), 0) FROM match_history) ELSE last_history_id END,"
                    " started_at = COALESCE(started_at, ?)"
                    " WHERE id = ? AND (state = ? OR (state = ? AND lease_until < ?)) RETURNING id",
                    (
                        RUNNING,
                        now + int(lease_seconds * 1e6),
                        owner,
                        now,
                        run_id,
                        QUEUED,
                        RUNNING,
                        now,
                    ),
                )
                won = cur.fetchone() is not None
            if won:
                return self.get_retro_run(run_id)
        return None

    def retro_progress(
        self, run_id: int, checkpoint: int, scanned: int, lease_seconds: float, *, owner: str
    ) -> bool:
        """Saves the checkpoint and renews the lease; False (nothing written)
        if the run is no longer this owner's (its lease expired and another
        server took it, or it was released or finished)."""
        with self._write() as cur:
            cur.execute(
                "UPDATE retro_runs SET checkpoint = ?, scanned = scanned + ?, lease_until = ?"
                f" WHERE {_HELD} RETURNING id",
                (checkpoint, scanned, now_micros() + int(lease_seconds * 1e6), run_id, owner),
            )
            return cur.fetchone() is not None

    def retry_retro_run(
        self, run_id: int, error: str, delay_seconds: float, failed_attempts: int, *, owner: str
    ) -> bool:
        """A running run whose step failed (hashsvc/core/retro.py): the error
        shown in `retro list`, its failed attempts so far (kept with the run,
        so a server that claims it next goes on counting), and its lease set
        to end after the delay, when any server claims it again from its
        checkpoint; False (nothing written) if it is no longer this owner's.
        Writing the same count again (the note retried after a store fault)
        counts nothing twice."""
        with self._write() as cur:
            cur.execute(
                "UPDATE retro_runs SET error = ?, lease_until = ?, failed_attempts = ?"
                f" WHERE {_HELD} RETURNING id",
                (
                    error[:1000],
                    now_micros() + int(delay_seconds * 1e6),
                    failed_attempts,
                    run_id,
                    owner,
                ),
            )
            return cur.fetchone() is not None

    def release_retro_run(self, run_id: int, *, owner: str) -> bool:
        """Gives a running run back (its server is stopping): queued again,
        from its checkpoint, for the next server that looks; False (nothing
        written) if it is no longer this owner's."""
        with self._write() as cur:
            cur.execute(
                "UPDATE retro_runs SET state = ?, lease_until = 0, lease_owner = NULL"
                f" WHERE {_HELD} RETURNING id",
                (QUEUED, run_id, owner),
            )
            return cur.fetchone() is not None

    def finish_retro_run(
        self, run_id: int, state: str, error: str = "", *, owner: str | None
    ) -> bool:
        """The run done or failed by the server holding it (owner); owner
        None: a run nobody scans (not running: a skipped one failed by hand).
        False (nothing written) if the run is not the owner's (not running,
        for None)."""
        where = _HELD if owner is not None else "id = ? AND state <> 'running'"
        params = (run_id, owner) if owner is not None else (run_id,)
        with self._write() as cur:
            cur.execute(
                "UPDATE retro_runs SET state = ?, error = ?, finished_at = ?, lease_owner = NULL"
                f" WHERE {where} RETURNING id",
                (state, error[:1000], now_micros(), *params),
            )
            return cur.fetchone() is not None

    def resume_retro_run(self, run_id: int) -> bool:
        """A failed run queued again: it goes on from its checkpoint (and,
        on an engine, skips its partitions done); False unless it failed."""
        with self._write() as cur:
            cur.execute(
                "UPDATE retro_runs SET state = ?, error = '', finished_at = NULL, lease_until = 0,"
                " failed_attempts = 0, lease_owner = NULL WHERE id = ? AND state = ? RETURNING id",
                (QUEUED, run_id, FAILED),
            )
            return cur.fetchone() is not None

    # -- a run's partitions (on an engine: hashsvc/core/retro_dask.py)

    def history_time_cuts(self, after_id: int, upto_id: int, times: list[int]) -> list[int]:
        """For each time (microseconds, ascending), the id before the first
        record at or after it within after_id < id <= upto_id (upto_id when
        none is): the after_id of the partition that starts there."""
        cuts = []
        with self._read() as cur:
            for at in times:
                cur.execute(
                    "SELECT MIN(id) FROM match_history WHERE id > ? AND id <= ? AND time >= ?",
                    (after_id, upto_id, at),
                )
                first = cur.fetchone()[0]
                cuts.append(upto_id if first is None else first - 1)
        return cuts

    def plan_retro_partitions(self, run_id: int, cuts: list[tuple[int, int]]) -> None:
        """The run's partitions, numbered in order; a run planned before
        (a coordinator that restarted) keeps its own."""
        with self._write() as cur:
            cur.execute("SELECT COUNT(*) FROM retro_partitions WHERE run_id = ?", (run_id,))
            if cur.fetchone()[0]:
                return
            for number, (after_id, upto_id) in enumerate(cuts):
                cur.execute(
                    "INSERT INTO retro_partitions (run_id, number, after_id, upto_id)"
                    " VALUES (?, ?, ?, ?)",
                    (run_id, number, after_id, upto_id),
                )

    def retro_partitions(self, run_id: int) -> list[RetroPartition]:
        with self._read() as cur:
            cur.execute(
                "SELECT run_id, number, after_id, upto_id, done, scanned, hits"
                " FROM retro_partitions WHERE run_id = ? ORDER BY number",
                (run_id,),
            )
            return [
                RetroPartition(r[0], r[1], r[2], r[3], bool(r[4]), r[5], r[6])
                for r in cur.fetchall()
            ]

    def finish_retro_partition(
        self, run_id: int, number: int, scanned: int, hits: int, *, owner: str
    ) -> bool:
        """The partition done; False (nothing written) if the run is no
        longer this owner's."""
        with self._write() as cur:
            cur.execute(
                "UPDATE retro_partitions SET done = ?, scanned = ?, hits = ?, finished_at = ?"
                f" WHERE run_id = ? AND number = ? AND {_HELD_RUN} RETURNING run_id",
                (True, scanned, hits, now_micros(), run_id, number, run_id, owner),
            )
            return cur.fetchone() is not None

    # -- what a run reads

    def history_uploads(self, after_id: int, upto_id: int, limit: int) -> list[HistoryUpload]:
        """Match records that were allowed, after_id < id <= upto_id, by id
        (the last one is the checkpoint after them): what was let through.
        Blocked uploads were stopped, reviewed ones are in the queue already
        (and a confirmed one added as an entry would find itself). Records
        whose signals were pruned hold none."""
        with self._read() as cur:
            cur.execute(
                "SELECT id, request_id, time, caller, client_ref, media_type, query_signals,"
                " caller_token_id FROM match_history"
                " WHERE id > ? AND id <= ? AND rpc IN (?, ?, ?) AND decision = 'allow'"
                " ORDER BY id LIMIT ?",
                (after_id, upto_id, *MATCH_RPCS, limit),
            )
            rows = cur.fetchall()
        return [
            HistoryUpload(r[0], r[1], from_micros(r[2]), r[3], r[4], r[5], r[6], r[7]) for r in rows
        ]

    def history_pdq_views(
        self, after_id: int, upto_id: int, limit: int
    ) -> list[tuple[int, int, bytes | None, bytes | None]]:
        """What a retro-hunt's PDQ scan reads of the records history_uploads
        gives (the same records, in the same order): (id, time in
        microseconds, the packed PDQ views (match_history_views: n x 32
        bytes), the query_signals text as UTF-8 bytes only where there are
        none packed (records written before the table or by an older server,
        values not packable, pruned)). Read from the narrow views table (one
        row for each allowed upload, added by the store with its record):
        ~600 bytes a record, where the history row is ~3 KB; the few that
        may match are read whole by history_uploads_by_id."""
        with self._read() as cur:
            cur.execute(
                "SELECT v.history_id, v.time, v.views, CASE WHEN v.views IS NULL THEN"
                f" (SELECT {self._SIGNALS_AS_BYTES} FROM match_history h"
                " WHERE h.id = v.history_id) END FROM match_history_views v"
                " WHERE v.history_id > ? AND v.history_id <= ? ORDER BY v.history_id LIMIT ?",
                (after_id, upto_id, limit),
            )
            return cur.fetchall()

    def history_packed_signals(
        self, after_id: int, upto_id: int, limit: int
    ) -> list[tuple[int, int, bytes | None, bytes | None, bytes | None]]:
        """history_pdq_views for a run whose new entries hold other kinds
        too (a picture's md5, sha256, local features): (id, time in
        microseconds, the packed PDQ views, the packed other signals
        (hashdb/history_sql.py pack_other_signals), the query_signals text
        as UTF-8 bytes only where either is not packed)."""
        with self._read() as cur:
            cur.execute(
                "SELECT v.history_id, v.time, v.views, v.others, CASE WHEN v.views IS NULL"
                f" OR v.others IS NULL THEN (SELECT {self._SIGNALS_AS_BYTES} FROM match_history h"
                " WHERE h.id = v.history_id) END FROM match_history_views v"
                " WHERE v.history_id > ? AND v.history_id <= ? ORDER BY v.history_id LIMIT ?",
                (after_id, upto_id, limit),
            )
            return cur.fetchall()

    def history_uploads_by_id(self, ids: Iterable[int]) -> list[HistoryUpload]:
        """The records of these ids that history_uploads would give, by id."""
        wanted = sorted(set(ids))
        out: list[HistoryUpload] = []
        for start in range(0, len(wanted), 500):
            part = wanted[start : start + 500]
            with self._read() as cur:
                cur.execute(
                    "SELECT id, request_id, time, caller, client_ref, media_type, query_signals,"
                    " caller_token_id FROM match_history"
                    f" WHERE id IN ({', '.join('?' * len(part))})"
                    " AND rpc IN (?, ?, ?) AND decision = 'allow' ORDER BY id",
                    (*part, *MATCH_RPCS),
                )
                rows = cur.fetchall()
            out += [
                HistoryUpload(r[0], r[1], from_micros(r[2]), r[3], r[4], r[5], r[6], r[7])
                for r in rows
            ]
        return out

    # -- hits

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
        """The hit, its review item (`item`: insert_review_item's arguments,
        request_id the upload's) and its events (outbox, naming the item) in
        one transaction; the review item's id while the hit's history record
        is to be written: a new hit, or one this run made without its record
        (the server died in between; no item or event is written again).
        None if this (entry, request) was reported and recorded already, or
        is another run's (that run writes its record when it resumes), or
        the run is no longer this owner's (nothing written)."""
        request_id = item["request_id"]
        with self._write() as cur:
            # The holder's check and the insert are one statement, the run's
            # row locked against a claim until the hit commits (PostgreSQL,
            # _HELD_LOCK): a replica whose lease just expired cannot insert
            # a hit after another server took the run (a separate SELECT
            # could see the old owner a moment before the claim commits).
            # SQLite's write transaction already excludes the claim.
            cur.execute(
                "INSERT INTO retro_matches (run_id, entry_id, request_id, history_id, decision,"
                " created_at, history_recorded) SELECT id, ?, ?, ?, ?, ?, ? FROM retro_runs"
                f" WHERE {_HELD}{self._HELD_LOCK}"
                " ON CONFLICT (entry_id, request_id) DO NOTHING RETURNING id",
                (entry_id, request_id, history_id, decision, now_micros(), False, run_id, owner),
            )
            row = cur.fetchone()
            if row is None:
                # reported before, or the run is not this owner's (then None)
                cur.execute(
                    "SELECT review_item_id FROM retro_matches WHERE entry_id = ?"
                    " AND request_id = ? AND run_id = ? AND history_recorded = ?"
                    f" AND {_HELD_RUN}",
                    (entry_id, request_id, run_id, False, run_id, owner),
                )
                unrecorded = cur.fetchone()
                return unrecorded[0] if unrecorded else None
            review_id = insert_review_item(
                cur,
                **{**item, "request_id": f"retro:{entry_id}:{request_id}"},
                source="retro",
                origin_request_id=request_id,
            )
            cur.execute(
                "UPDATE retro_matches SET review_item_id = ? WHERE id = ?", (review_id, row[0])
            )
            cur.execute("UPDATE retro_runs SET hits = hits + 1 WHERE id = ?", (run_id,))
            self._append_events(cur, [with_review_id(e, review_id) for e in events])
            return review_id

    def record_retro_hit(
        self, record: HistoryRecord, run_id: int, owner: str, entry_id: int, request_id: str
    ) -> int | None:
        """The hit's record appended to the history in the transaction that
        marks the hit recorded: its id, or None (nothing written) when the
        hit was recorded already (by a server that held the run before) or
        the run is no longer this owner's. Two servers that both found the
        hit unrecorded (add_retro_match) write one record between them."""

        def mark_recorded(cur) -> bool:
            # The run's row locked against a claim until the record commits
            # (PostgreSQL, _HELD_LOCK; the history's own lock does not order
            # it with a claim): a holder whose lease just expired cannot
            # write the record after another server took the run, which
            # records the run's unrecorded hits when it claims it.
            cur.execute(
                "UPDATE retro_matches SET history_recorded = ? WHERE entry_id = ?"
                " AND request_id = ? AND run_id = ? AND history_recorded = ?"
                f" AND EXISTS (SELECT 1 FROM retro_runs WHERE {_HELD}{self._HELD_LOCK})"
                " RETURNING id",
                (True, entry_id, request_id, run_id, False, run_id, owner),
            )
            return cur.fetchone() is not None

        return self._append_record(record, guard=mark_recorded)

    def unrecorded_retro_hits(self, run_id: int) -> list[tuple[int, str, int, int | None]]:
        """(entry id, request id, history id, review item id) of the run's
        hits committed without their history record (their holder lost the
        run or died in between): their review item and notification are
        out, their record is owed (RetroHunt records them as they were)."""
        with self._read() as cur:
            cur.execute(
                # the literal, so the partial index (retro_matches_unrecorded) serves
                "SELECT entry_id, request_id, history_id, review_item_id FROM retro_matches"
                " WHERE run_id = ? AND history_recorded = FALSE ORDER BY id",
                (run_id,),
            )
            return [tuple(r) for r in cur.fetchall()]

    def retro_matches_of(self, run_id: int) -> list[tuple[int, str, str, int | None]]:
        """(entry id, request id, decision, review item id) of a run's hits."""
        with self._read() as cur:
            cur.execute(
                "SELECT entry_id, request_id, decision, review_item_id FROM retro_matches"
                " WHERE run_id = ? ORDER BY id",
                (run_id,),
            )
            return [tuple(r) for r in cur.fetchall()]

    # -- sets

    def set_retro_window(self, set_id: int, seconds: int | None) -> None:
        """The set's own window (None: the server's); records an update_set
        change so every replica's view of the set follows."""
        with self._write() as cur:
            cur.execute(
                "UPDATE hash_sets SET retro_window_seconds = ?, updated_at = ? WHERE id = ?",
                (seconds, now_micros(), set_id),
            )
            self._change(cur, "update_set", set_id, None)


def _run(row) -> RetroRun:
    return RetroRun(
        id=row[0],
        trigger=row[1],
        requested_by=row[2],
        set_id=row[3],
        entry_ids=tuple(json.loads(row[4])),
        since=from_micros(row[5]),
        last_history_id=row[6],
        checkpoint=row[7],
        scanned=row[8],
        hits=row[9],
        state=row[10],
        error=row[11],
        created_at=from_micros(row[12]),
        started_at=from_micros(row[13]),
        finished_at=from_micros(row[14]),
        failed_attempts=row[15],
        lease_owner=row[16],
    )
