"""Auditors' view of the match history: filtered, paginated, exportable; and
what keeps it honest beyond its hash chain: signed checkpoints of the head,
written into the history and to a file outside the database, that `history
verify` holds the database to."""

from __future__ import annotations

import contextvars
import hashlib
import hmac
import json
import logging
import os
import threading
import time
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime

from hashdb import (
    HistoryFilter,
    HistoryRecord,
    HistoryStore,
    HistoryVerification,
    NewEvent,
    SetLookup,
)
from hashdb.history_sql import key_id
from hashsvc.base import validation
from hashsvc.base.errors import InvalidArgument, NotFound
from hashsvc.base.signals import Signal, signal_json, signal_type
from hashsvc.matching.policy import DECISIONS

log = logging.getLogger(__name__)

CHECKPOINT_RPC = "HistoryCheckpoint"
SYSTEM_ACTOR = "hashsvc"  # the server's own records (checkpoints, quarantine)
# verify reads at most this much of the checkpoint file's end (a line is ~250
# bytes; the file grows one line per 100 records, ~2.5 MB per 1M records)
_FILE_TAIL_BYTES = 64 * 1024

# (name, id) of the token whose call this thread is serving (set by the gRPC
# auth interceptor): an action record by that name carries that token's id.
ACTING_TOKEN: contextvars.ContextVar[tuple[str, int] | None] = contextvars.ContextVar(
    "acting_token", default=None
)


def acting_token_id(actor: str) -> int | None:
    """The token id of `actor` if it is the caller this thread serves."""
    return _who(actor)[1]


def _who(actor: str) -> tuple[str, int | None]:
    """(name, token id) of an actor: the caller this thread serves, by name
    or as NAME#ID (a reviewer's identity on review items), else (actor, None)."""
    acting = ACTING_TOKEN.get()
    if acting is not None and actor in (acting[0], f"{acting[0]}#{acting[1]}"):
        return acting
    return actor, None


def action_record(
    action: str,
    actor: str,
    detail: dict,
    *,
    status: str = "OK",
    error_message: str = "",
    client_ref: str = "",
    actor_token_id: int | None = None,
    set_ids: tuple[int, ...] = (),
) -> HistoryRecord:
    """One reviewer's, operator's or admin's action as a history record."""
    name, acting_id = _who(actor)
    return HistoryRecord(
        request_id=f"{action.lower()}-{time.time_ns()}",
        time=datetime.now(UTC),
        caller=name,
        rpc=action,
        media_type="",
        decision="",
        status=status,
        error_message=storable(error_message)[:1000],
        client_ref=storable(client_ref),
        detail=detail,
        caller_token_id=actor_token_id if actor_token_id is not None else acting_id,
        set_ids=tuple(set_ids),
    )


def storable(text: str) -> str:
    # PostgreSQL text cannot hold NUL: a record must not be lost to one (it
    # was: the call then had no record at all). Shown escaped instead.
    return text.replace("\x00", "\\x00")


def history_signal_json(sig: Signal, keep_opaque: bool = False) -> dict:
    """A query signal as the match history keeps it, with where in the media
    it was taken (a video frame's or audio stretch's seconds, a PDF page),
    so a retro-hunt finds time ranges and pages as Match does. An opaque blob
    (a picture's local features, ~18 KB) is kept as its size and SHA-256, not
    its bytes, unless keep_opaque (history_keep_local_features): every Match
    is recorded, and the blobs would be most of the history's size (see the
    README's Retro-hunt). A review item keeps the whole blob (it may become
    an entry)."""
    out = signal_json(sig)
    if sig.position is not None:
        out["position"] = sig.position
    try:
        opaque = signal_type(sig.kind).opaque
    except InvalidArgument:
        opaque = False
    if opaque and not keep_opaque:
        out.update(value="", bytes=len(sig.value), sha256=hashlib.sha256(sig.value).hexdigest())
    return out


class Audit:
    def __init__(
        self,
        history: HistoryStore,
        sets: SetLookup,
        checkpoint_file: str = "",
        history_key: bytes | None = None,
        checkpoint_records: int = 100,
        checkpoint_seconds: float = 60.0,
        keep_local_features: bool = False,
    ) -> None:
        self.history = history
        self.keep_local_features = keep_local_features
        self.sets = sets
        self.checkpoint_file = checkpoint_file
        self._key = history_key or None
        self._key_id = key_id(history_key) if history_key else ""
        self.checkpoint_records = checkpoint_records
        self.checkpoint_seconds = checkpoint_seconds
        self._lock = threading.Lock()
        # (head id, records up to it, id of the checkpoint record) of the last
        # checkpoint; None until one is known
        self._last: tuple[int, int, int] | None = None
        # Nothing is taken from the database's own checkpoint records (someone
        # with database access could plant one to skew the counts or stop
        # checkpointing): a process's first checkpoint counts the whole
        # history once, and is taken at the first poll that finds any record.
        self._last_at = time.monotonic()

    # -- writing: every history record is built here

    def record_action(
        self,
        action: str,
        actor: str,
        detail: dict,
        *,
        status: str = "OK",
        error_message: str = "",
        client_ref: str = "",
        set_ids: tuple[int, ...] = (),
        events: Iterable[NewEvent] = (),
    ) -> int:
        """A reviewer's, operator's or admin's action (or a failed one, with
        its status), indexed under the sets it names; `events` go to the
        outbox in the record's transaction."""
        return self.history.record_match(
            action_record(
                action,
                actor,
                detail,
                status=status,
                error_message=error_message,
                client_ref=client_ref,
                set_ids=set_ids,
            ),
            events=events,
        )

    def record_call(
        self,
        *,
        request_id: str,
        started: datetime,
        caller: str,
        rpc: str,
        media_type: str,
        decision: str,
        status: str,
        error_message: str,
        client_ref: str,
        media_bytes: int,
        query_signals: list[Signal],
        matches: list[dict],
        notes: tuple[str, ...] = (),
        caller_token_id: int | None = None,
        events: Iterable[NewEvent] = (),
    ) -> int:
        """A Match call, failed or not: what was asked (the upload's hashes,
        never the media), what was found and decided; `events` (its
        notifications) go to the outbox in the record's transaction."""
        return self.history.record_match(
            HistoryRecord(
                request_id=request_id,
                time=started,
                caller=caller,
                rpc=rpc,
                media_type=media_type,
                decision=decision,
                status=status,
                error_message=storable(error_message)[:1000],
                client_ref=storable(client_ref[:1000]),
                media_bytes=media_bytes,
                query_signals=[
                    history_signal_json(s, self.keep_local_features) for s in query_signals
                ],
                matches=matches,
                detail={"notes": list(notes)} if notes else {},
                caller_token_id=caller_token_id,
            ),
            events=events,
        )

    def record_retro_match(
        self,
        *,
        request_id: str,
        upload_time: datetime,
        caller: str,
        caller_token_id: int | None,
        client_ref: str,
        media_type: str,
        match: dict,
        detail: dict,
        run_id: int,
        owner: str,
    ) -> int | None:
        """A retro-match (hashsvc/core/retro.py), its own record kind: the
        upload that was let through (its request id, time, caller), the new
        entry it matches and the decision the set's thresholds give now.
        Written by the server holding the run (owner); indexed under the
        entry's set. None, nothing written, when the hit has its record
        already or the run is no longer the owner's."""
        return self.history.record_retro_hit(
            HistoryRecord(
                request_id=f"retro-{request_id}-{match['entry_id']}",
                time=datetime.now(UTC),
                caller=SYSTEM_ACTOR,
                rpc="RetroMatch",
                media_type=media_type,
                decision=match["decision"],
                status="OK",
                client_ref=storable(client_ref[:1000]),
                matches=[match],
                detail={
                    **detail,
                    "source": "retro",
                    "request_id": request_id,
                    "upload_time": upload_time.isoformat(),
                    "upload_caller": caller,
                    "upload_caller_token_id": caller_token_id,
                },
            ),
            run_id,
            owner,
            match["entry_id"],
            request_id,
        )

    def make_filter(
        self,
        since: datetime | None = None,
        until: datetime | None = None,
        decision: str | None = None,
        set_name: str | None = None,
        caller: str | None = None,
    ) -> HistoryFilter:
        if decision and decision not in DECISIONS:
            raise InvalidArgument(f"decision must be one of {', '.join(DECISIONS)}")
        if since and until and since >= until:
            raise InvalidArgument("since must be before until")
        set_id = None
        if set_name:
            hash_set = self.sets.get_set(set_name)
            if hash_set is None:
                raise NotFound(f"no such set: {set_name}")
            set_id = hash_set.id
        return HistoryFilter(since, until, decision or None, set_id, caller or None)

    def query(
        self, filter: HistoryFilter, page_size: int = 100, page_token: str = ""
    ) -> tuple[list[HistoryRecord], str]:
        after_id, limit = validation.page(page_size, page_token)
        records = self.history.query_history(filter, after_id, limit)
        next_token = str(records[-1].id) if len(records) == limit else ""
        return records, next_token

    def export(self, filter: HistoryFilter) -> Iterator[HistoryRecord]:
        after_id = 0
        while True:
            records = self.history.query_history(filter, after_id, validation.MAX_PAGE_SIZE)
            yield from records
            if len(records) < validation.MAX_PAGE_SIZE:
                return
            after_id = records[-1].id

    # -- checkpoints

    def maybe_checkpoint(self) -> bool:
        """A checkpoint if checkpoint_records records were written since the
        last one, or checkpoint_seconds passed and anything was (called by the
        server's change poller: at most one a poll)."""
        last_record_id = self._last[2] if self._last else 0
        written = self.history.last_history_id() - last_record_id  # ids: ~records
        if written <= 0:
            return False
        due = time.monotonic() - self._last_at >= self.checkpoint_seconds
        if written >= self.checkpoint_records or due:
            return self.checkpoint()
        return False

    def checkpoint(self) -> bool:
        """Signs the history's head into the history and the checkpoint file.
        False if nothing was written since the last one."""
        with self._lock:
            since = (self._last[0], self._last[1]) if self._last else None
            head = self.history.history_head(since)
            if head is None or (self._last is not None and head[0] == self._last[2]):
                return False
            head_id, head_hash, records = head
            line = {
                "time": datetime.now(UTC).isoformat(),
                "head_id": head_id,
                "head_hash": head_hash,
                "records": records,
                "key_id": self._key_id,
            }
            line["signature"] = self._sign(line)
            # The file first: a checkpoint there names a record that exists.
            if self.checkpoint_file:
                self._append(line)
            record_id = self.history.record_match(
                action_record(
                    CHECKPOINT_RPC,
                    SYSTEM_ACTOR,
                    {"head_id": head_id, "head_hash": head_hash, "records": records},
                )
            )
            self._last = (head_id, records, record_id)
            self._last_at = time.monotonic()
            return True

    def _sign(self, line: dict) -> str:
        if not self._key:
            return ""
        fields = [line.get("time"), line["head_id"], line["head_hash"], line["records"]]
        message = json.dumps(fields, separators=(",", ":")).encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    def _append(self, line: dict) -> None:
        fd = os.open(self.checkpoint_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, (json.dumps(line, sort_keys=True) + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)

    # -- verification

    def verify(self) -> HistoryVerification:
        """The hash chain (Store.verify_history), then the database against
        the last checkpoint in the file and in the history: the checkpointed
        record must be there with that hash, with at least as many records up
        to it. A chain nulled wholesale (so that it looks older than the chain)
        or a cut-off tail fails here."""
        result = self.history.verify_history()
        problems, notes, checked = list(result.problems), list(result.notes), 0
        file_head = None
        in_history = self.history.last_history_record(CHECKPOINT_RPC)
        if self.checkpoint_file:
            line, problem = self._last_file_line()
            if problem:
                problems.append((0, problem))
            elif line is None and in_history is not None:
                # The history holds checkpoints, so the file held them too: it
                # was deleted or emptied, and a cut tail would not show.
                problems.append(
                    (
                        0,
                        f"checkpoint file {self.checkpoint_file} is missing or empty, though the"
                        " history holds checkpoints: it was deleted or replaced",
                    )
                )
            elif line is None:
                notes.append(f"checkpoint file {self.checkpoint_file} holds no checkpoint yet")
            else:
                file_head = line["head_id"]
                problems += self._check("file", line["head_id"], line["head_hash"], line["records"])
                checked += 1
        else:
            notes.append(
                "truncation NOT checked (no history_checkpoint_file): a deleted tail or a"
                " wholesale rewrite of the chain cannot be detected"
            )
        if in_history is not None and in_history.detail.get("head_id") != file_head:
            d = in_history.detail
            if _is_checkpoint(d.get("head_id"), d.get("head_hash"), d.get("records")):
                problems += self._check("history", d["head_id"], d["head_hash"], d["records"])
            else:
                problems.append((in_history.id, "checkpoint record is malformed"))
            checked += 1
        return HistoryVerification(
            result.records_checked,
            result.unchained_records,
            result.head_hash,
            problems,
            checked,
            notes,
            truncation_checked=bool(self.checkpoint_file),
        )

    def _check(self, where: str, head_id: int, head_hash, records: int) -> list[tuple[int, str]]:
        anchor = self.history.history_anchor(head_id)
        if anchor is None:
            return [
                (head_id, f"missing, though the {where} checkpoint names it: records were deleted")
            ]
        record_hash, count = anchor
        if record_hash != head_hash:
            return [
                (
                    head_id,
                    f"its hash is not the one in the {where} checkpoint: the record or the chain"
                    " before it was rewritten"
                    + (" (its chain columns are empty)" if record_hash is None else ""),
                )
            ]
        if count < records:
            return [
                (
                    head_id,
                    f"{records - count} record(s) up to it are missing: the {where} checkpoint"
                    f" counted {records}, the database holds {count}",
                )
            ]
        return []

    def _last_file_line(self) -> tuple[dict | None, str]:
        """(last checkpoint in the file, problem with it)."""
        try:
            with open(self.checkpoint_file, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - _FILE_TAIL_BYTES))
                tail = f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return None, ""
        except OSError as exc:  # a directory, no permission: nothing to hold the database to
            return None, f"checkpoint file {self.checkpoint_file} cannot be read: {exc.strerror}"
        lines = [x for x in tail.splitlines() if x.strip()]
        if not lines:
            return None, ""
        try:
            line = json.loads(lines[-1])
            if not _is_checkpoint(line["head_id"], line["head_hash"], line["records"]):
                raise ValueError
        except (ValueError, KeyError, TypeError):
            return (
                None,
                f"the last line of checkpoint file {self.checkpoint_file} is not a checkpoint",
            )
        if self._key:
            if line.get("key_id") and line["key_id"] != self._key_id:
                return None, (
                    f"the last checkpoint in {self.checkpoint_file} is signed with key"
                    f" {line['key_id']}, which this server lacks"
                )
            if not hmac.compare_digest(str(line.get("signature", "")), self._sign(line)):
                return None, (
                    f"the last checkpoint in {self.checkpoint_file} is not signed by the history"
                    " key: written by someone else"
                )
        return line, ""


def _is_checkpoint(head_id, head_hash, records) -> bool:
    return (
        type(head_id) is int
        and 0 < head_id < 2**63
        and isinstance(head_hash, str)
        and type(records) is int
        and 0 <= records < 2**63
    )
