"""The match history in SQL, for both stores: append-only records in a hash
chain (each record's hash covers the previous one's, an HMAC under the
history key when there is one), the per-set index that `history --set`
reads, and what verification and checkpoints need (hashsvc/core/audit.py).

A mixin of SQLStore: it uses the store's _read(), _write() and history key.
"""

from __future__ import annotations

import bisect
import hashlib
import hmac
import json
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from datetime import UTC, datetime

from hashdb.model import HistoryFilter, HistoryRecord, HistoryVerification, NewEvent
from hashdb.times import from_micros, now_micros, to_micros
from hashsvc.base.signals import SIGNAL_TYPES

# The query signals of a record whose signals were pruned (`history prune`).
PRUNED_SIGNALS = "[]"
# The action record a prune writes (hashsvc/core/core.py prune_history): a
# pruned record verifies only when an intact one covers it.
PRUNE_RPC = "PruneHistory"
# The statuses of a prune refused before it touched a record: it covers none.
PRUNE_REFUSED = ("INVALID_ARGUMENT", "FAILED_PRECONDITION", "PERMISSION_DENIED")

# A PDQ hash's bytes, and what precedes its hex value in the stored signals
# text (json.dumps of the signal dicts audit.py writes).
PDQ_VIEW_BYTES = 32
_PDQ_VALUE_PREFIX = '"signal_type": "pdq", "value": "'

_HISTORY_COLUMNS = (
    "h.id, h.request_id, h.time, h.caller, h.rpc, h.media_type, h.decision, h.status,"
    " h.error_message, h.client_ref, h.media_bytes, h.query_signals, h.matches, h.detail,"
    " h.caller_token_id"
)


class HistorySQL:
    _history_key: bytes | None = None
    _history_key_id: str = ""

    # -- history

    def record_match(self, record: HistoryRecord, events: Iterable[NewEvent] = ()) -> int:
        """Appends the record, and `events` to the outbox in the same transaction."""
        history_id = self._append_record(record, events)
        assert history_id is not None  # no guard: always written
        return history_id

    def _append_record(
        self,
        record: HistoryRecord,
        events: Iterable[NewEvent] = (),
        guard: Callable[[object], bool] | None = None,
    ) -> int | None:
        """record_match; with a guard, it runs first in the record's
        transaction and nothing is written (None) when it answers False."""
        set_ids = sorted(
            {m["set_id"] for m in record.matches if m.get("set_id") is not None}
            | set(record.set_ids)
        )
        signals_text = json.dumps(record.query_signals)
        packed_views = pack_pdq_views(record.query_signals)
        # a record whose views cannot be packed is read from its text whole
        packed_others = (
            pack_other_signals(record.query_signals) if packed_views is not None else None
        )
        signals_digest = hashlib.sha256(signals_text.encode()).hexdigest()
        fields = (
            record.request_id,
            to_micros(record.time),
            record.caller,
            record.rpc,
            record.media_type,
            record.decision,
            record.status,
            record.error_message,
            record.client_ref,
            record.media_bytes,
            signals_text,
            json.dumps(record.matches, ensure_ascii=False),
        )
        detail = (
            json.dumps(record.detail, ensure_ascii=False, sort_keys=True) if record.detail else None
        )
        hashed = _format_3(fields, signals_digest, detail, record.caller_token_id, set_ids)
        with self._history_write() as cur:  # serialised: one chain, one head
            if guard is not None and not guard(cur):
                return None
            cur.execute(
                "SELECT record_hash FROM match_history WHERE record_hash IS NOT NULL"
                " ORDER BY id DESC LIMIT 1"
            )
            head = cur.fetchone()
            prev_hash = head[0] if head else ""
            record_hash = chain_hash(prev_hash, hashed, self._history_key)
            cur.execute(
                "INSERT INTO match_history (request_id, time, caller, rpc, media_type, decision,"
                " status, error_message, client_ref, media_bytes, query_signals, matches,"
                " prev_hash, record_hash, chain_key_id, detail, caller_token_id, chain_format,"
                " query_signals_sha256)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 3, ?) RETURNING id",
                (
                    *fields,
                    prev_hash,
                    record_hash,
                    self._history_key_id,
                    detail,
                    record.caller_token_id,
                    signals_digest,
                ),
            )
            history_id = cur.fetchone()[0]
            if _hunted(record.rpc, record.decision):
                # the store's trigger added the upload's row (views NULL)
                # with the record; written here too, so a trigger switched
                # off cannot leave an upload out of retro-hunts
                cur.execute(
                    "INSERT INTO match_history_views (history_id, time, views, others)"
                    " VALUES (?, ?, ?, ?) ON CONFLICT (history_id) DO UPDATE SET"
                    " views = excluded.views, others = excluded.others"
                    " WHERE match_history_views.views IS NULL AND excluded.views IS NOT NULL",
                    (history_id, fields[1], packed_views, packed_others),
                )
            if set_ids:
                cur.executemany(
                    "INSERT INTO match_history_sets (history_id, set_id) VALUES (?, ?)",
                    [(history_id, s) for s in set_ids],
                )
            self._append_events(cur, events)
        return history_id

    def _history_write(self) -> AbstractContextManager:
        # History does not touch the change feed: no need for the writer lock.
        return self._write()

    def query_history(
        self, filter: HistoryFilter, after_id: int = 0, limit: int = 100
    ) -> list[HistoryRecord]:
        # A time range bounds the ids too (the first and last record in it,
        # found on the time index), and the page is then read in id order
        # (`+h.time`: not through the time index, which sorted every record
        # of the range: the last day of 1M records took 330 ms).
        lowest, highest = after_id, None
        with self._read() as cur:
            if filter.since is not None:
                cur.execute(
                    "SELECT MIN(+id) FROM match_history WHERE time >= ?", (to_micros(filter.since),)
                )
                first = cur.fetchone()[0]
                if first is None:
                    return []
                lowest = max(lowest, first - 1)
            if filter.since is not None and filter.until is not None:
                # only over the range: below `until` alone is most of a history
                cur.execute(
                    "SELECT MAX(+id) FROM match_history WHERE time >= ? AND time < ?",
                    (to_micros(filter.since), to_micros(filter.until)),
                )
                highest = cur.fetchone()[0]
                if highest is None:
                    return []
        clauses, params = ["h.id > ?"], [lowest]
        if highest is not None:
            clauses.append("h.id <= ?")
            params.append(highest)
        if filter.since is not None:
            clauses.append("+h.time >= ?")
            params.append(to_micros(filter.since))
        if filter.until is not None:
            clauses.append("+h.time < ?")
            params.append(to_micros(filter.until))
        if filter.decision:
            clauses.append("h.decision = ?")
            params.append(filter.decision)
        if filter.caller:
            clauses.append("h.caller = ?")
            params.append(filter.caller)
        if filter.set_id is not None:
            clauses.append(
                "EXISTS (SELECT 1 FROM match_history_sets hs"
                " WHERE hs.history_id = h.id AND hs.set_id = ?)"
            )
            params.append(filter.set_id)
        with self._read() as cur:
            cur.execute(
                f"SELECT {_HISTORY_COLUMNS} FROM match_history h WHERE {' AND '.join(clauses)}"
                " ORDER BY h.id LIMIT ?",
                (*params, limit),
            )
            return [_history(row) for row in cur.fetchall()]

    def verify_history(self, max_problems: int = 100) -> HistoryVerification:
        chained_from_start = self._chained_from_start()
        prunes = self._intact_prunes()
        checked = unchained = 0
        expected_prev, head = "", ""
        problems: list[tuple[int, str]] = []
        after_id = 0
        while len(problems) < max_problems:
            with self._read() as cur:
                cur.execute(
                    f"SELECT id, {_CHAINED_FIELDS}, prev_hash, record_hash, chain_key_id, detail,"
                    " caller_token_id, chain_format, query_signals_sha256, signals_pruned_at"
                    " FROM match_history WHERE id > ? ORDER BY id LIMIT 1000",
                    (after_id,),
                )
                rows = cur.fetchall()
                if rows:
                    cur.execute(
                        "SELECT history_id, set_id FROM match_history_sets"
                        " WHERE history_id > ? AND history_id <= ? ORDER BY history_id, set_id",
                        (after_id, rows[-1][0]),
                    )
                    sets_of: dict[int, list[int]] = {}
                    for history_id, set_id in cur.fetchall():
                        sets_of.setdefault(history_id, []).append(set_id)
                    cur.execute(
                        "SELECT history_id, time, views, others FROM match_history_views"
                        " WHERE history_id > ? AND history_id <= ?",
                        (after_id, rows[-1][0]),
                    )
                    views_of = {r[0]: r for r in cur.fetchall()}
            if not rows:
                break
            for row in rows:
                history_id, prev_hash, record_hash = row[0], row[13], row[14]
                found_before = len(problems)
                if row[18] == 3:
                    digest, pruned_at, signals_text = row[19], row[20], row[11]
                    fields = _format_3(
                        row[1:13], digest, row[16], row[17], sets_of.get(history_id, [])
                    )
                    if pruned_at is not None and signals_text != PRUNED_SIGNALS:
                        problems.append((history_id, "pruned record holds query signals again"))
                    elif pruned_at is not None and not prunes.covers(history_id, row[2]):
                        problems.append(
                            (
                                history_id,
                                "query signals were dropped, but no intact PruneHistory record"
                                " after it has a `before` past its time: stripped outside hashsvc",
                            )
                        )
                    elif pruned_at is None and (
                        hashlib.sha256(signals_text.encode()).hexdigest() != digest
                    ):
                        problems.append(
                            (history_id, "record was edited: its query signals do not match")
                        )
                elif row[18] == 2:
                    fields = _format_2(row[1:13], row[16], row[17], sets_of.get(history_id, []))
                else:
                    fields = _with_detail(tuple(row[1:13]), row[16])
                # the views row's problem only if the record has none (a
                # decision rewritten also leaves its row unexpected)
                views_problem = _views_problem(row, views_of.get(history_id))
                signed_with = row[15] or ""
                after_id = history_id
                checked += 1
                if record_hash is None:
                    if head:  # an unchained record after the chain began
                        problems.append(
                            (history_id, "record has no hash: inserted outside hashsvc")
                        )
                    elif chained_from_start:
                        problems.append(
                            (
                                history_id,
                                "record has no hash, though this database chained its history"
                                " from the start: its chain columns were emptied",
                            )
                        )
                    else:
                        unchained += 1
                    if views_problem and len(problems) == found_before:
                        problems.append((history_id, views_problem))
                    continue
                if prev_hash != expected_prev:
                    problems.append(
                        (
                            history_id,
                            "chain broken before this record: a record was deleted,"
                            " inserted or edited",
                        )  # fmt: skip
                    )
                if signed_with and signed_with != self._history_key_id:
                    problems.append(
                        (history_id, f"signed with key {signed_with}, which this server lacks")
                    )
                elif self._history_key_id and not signed_with:
                    # a keyed history holds no unkeyed record after keying began
                    problems.append((history_id, "record is not signed: written without the key"))
                else:
                    key = self._history_key if signed_with else None
                    if chain_hash(prev_hash, fields, key) != record_hash:
                        problems.append((history_id, "record was edited: its hash does not match"))
                if views_problem and len(problems) == found_before:
                    problems.append((history_id, views_problem))
                expected_prev = head = record_hash
        return HistoryVerification(checked, unchained, head, problems[:max_problems])

    def _intact_prunes(self) -> PruneCover:
        """The PruneHistory actions that ran (OK, or failed in the store after
        some batches were committed; not those refused) whose own record is intact:
        its hash is that of its stored fields, and it is linked to the
        records either side of it. A record's signals may only be gone if
        one of them, written after it, names a `before` past its time. (An
        action forged whole with a consistent hash is what the history key
        and the checkpoint file are for.)"""
        cover = PruneCover()
        with self._read() as cur:
            cur.execute(
                f"SELECT id, {_CHAINED_FIELDS}, prev_hash, record_hash, chain_key_id, detail,"
                " caller_token_id, chain_format, query_signals_sha256"
                " FROM match_history WHERE rpc = ? ORDER BY id",
                (PRUNE_RPC,),
            )
            actions = cur.fetchall()
            for row in actions:
                history_id, prev_hash, record_hash, signed_with = row[0], row[13], row[14], row[15]
                if (
                    row[7] in PRUNE_REFUSED
                    or record_hash is None
                    or row[18] != 3
                    or (signed_with or "") != self._history_key_id
                ):
                    continue
                cur.execute(
                    "SELECT history_id, set_id FROM match_history_sets WHERE history_id = ?"
                    " ORDER BY set_id",
                    (history_id,),
                )
                set_ids = [s for _, s in cur.fetchall()]
                fields = _format_3(row[1:13], row[19], row[16], row[17], set_ids)
                key = self._history_key if signed_with else None
                if chain_hash(prev_hash, fields, key) != record_hash:
                    continue
                if hashlib.sha256(row[11].encode()).hexdigest() != row[19]:
                    continue
                cur.execute(
                    "SELECT record_hash FROM match_history WHERE id < ? AND record_hash IS NOT NULL"
                    " ORDER BY id DESC LIMIT 1",
                    (history_id,),
                )
                before_it = cur.fetchone()
                cur.execute(
                    "SELECT prev_hash FROM match_history WHERE id > ? ORDER BY id LIMIT 1",
                    (history_id,),
                )
                after_it = cur.fetchone()
                if (before_it[0] if before_it else "") != prev_hash or (
                    after_it is not None and after_it[0] != record_hash
                ):
                    continue
                try:
                    before = to_micros(_utc(json.loads(row[16])["before"]))
                except (TypeError, ValueError, KeyError):
                    continue
                cover.add(history_id, before)
        return cover

    def _chained_from_start(self) -> bool:
        # Unchained records are taken as written before the chain existed
        # (migration 2). A database created with the chain (migrations 1 and 2
        # applied in one run, within a second) holds none, so nulling every
        # record's chain columns cannot pass them off as older. (Someone who
        # also rewrites schema_migrations is caught by the checkpoints.)
        with self._read() as cur:
            cur.execute("SELECT version, applied_at FROM schema_migrations WHERE version <= 2")
            applied = dict(cur.fetchall())
        return len(applied) == 2 and abs(applied[2] - applied[1]) < 1_000_000

    def history_head(self, after: tuple[int, int] | None = None) -> tuple[int, str, int] | None:
        """(id, hash, records up to it) of the newest chained record: what a
        checkpoint holds. `after` = (id, records up to it) of an earlier
        checkpoint: only the records since are counted (a count of the whole
        history scans it: 133 ms for 1M records on SQLite, against 0.1 ms for
        the 100 since the last checkpoint)."""
        since_id, since_count = after or (0, 0)
        with self._read() as cur:
            cur.execute(
                "SELECT id, record_hash FROM match_history WHERE record_hash IS NOT NULL"
                " ORDER BY id DESC LIMIT 1"
            )
            row = cur.fetchone()
            if row is None:
                return None
            cur.execute(
                "SELECT COUNT(*) FROM match_history WHERE id > ? AND id <= ?", (since_id, row[0])
            )
            return row[0], row[1], since_count + cur.fetchone()[0]

    def can_extend_history(self) -> bool:
        """Whether a record this store writes keeps the chain verifying: the
        newest chained record is signed with this store's key, or with none
        when it has none (a tool opened without the key must not append to a
        keyed chain)."""
        with self._read() as cur:
            cur.execute(
                "SELECT chain_key_id FROM match_history WHERE record_hash IS NOT NULL"
                " ORDER BY id DESC LIMIT 1"
            )
            row = cur.fetchone()
        return row is None or (row[0] or "") == self._history_key_id

    def prune_history_signals(self, before_micros: int, batch: int = 10_000) -> int:
        """Drops the query signals of records before the time (chain format
        3 only: older formats hash the signals themselves); returns how many.
        In batches, so a large prune does not hold one long transaction."""
        pruned = 0
        while True:
            with self._history_write() as cur:
                cur.execute(
                    "UPDATE match_history SET query_signals = ?, signals_pruned_at = ?"
                    " WHERE id IN (SELECT id FROM match_history WHERE time < ?"
                    " AND chain_format = 3 AND signals_pruned_at IS NULL"
                    " AND query_signals <> ? ORDER BY id LIMIT ?) RETURNING id",
                    (PRUNED_SIGNALS, now_micros(), before_micros, PRUNED_SIGNALS, batch),
                )
                ids = [row[0] for row in cur.fetchall()]
                done = len(ids)
                if ids:
                    # their packed views go with them (the hunt reads '[]')
                    cur.execute(
                        "UPDATE match_history_views SET views = NULL, others = NULL"
                        " WHERE (views IS NOT NULL OR others IS NOT NULL)"
                        " AND history_id >= ? AND history_id <= ? AND history_id IN"
                        " (SELECT id FROM match_history WHERE id >= ? AND id <= ?"
                        " AND signals_pruned_at IS NOT NULL)",
                        (min(ids), max(ids), min(ids), max(ids)),
                    )
            pruned += done
            if done < batch:
                return pruned

    def last_history_id(self) -> int:
        with self._read() as cur:
            cur.execute("SELECT COALESCE(MAX(id), 0) FROM match_history")
            return cur.fetchone()[0]

    def history_anchor(self, history_id: int) -> tuple[str | None, int] | None:
        """(hash, records up to it) of one record, None if it is not there:
        what a checkpoint is checked against."""
        with self._read() as cur:
            cur.execute("SELECT record_hash FROM match_history WHERE id = ?", (history_id,))
            row = cur.fetchone()
            if row is None:
                return None
            cur.execute("SELECT COUNT(*) FROM match_history WHERE id <= ?", (history_id,))
            return row[0], cur.fetchone()[0]

    def last_history_record(self, rpc: str) -> HistoryRecord | None:
        """The newest record of one rpc (e.g. the last checkpoint written into
        the history)."""
        with self._read() as cur:
            cur.execute(
                f"SELECT {_HISTORY_COLUMNS} FROM match_history h WHERE h.rpc = ?"
                " ORDER BY h.id DESC LIMIT 1",
                (rpc,),
            )
            row = cur.fetchone()
        return _history(row) if row else None

    def count_history(self) -> int:
        with self._read() as cur:
            cur.execute("SELECT COUNT(*) FROM match_history")
            return cur.fetchone()[0]


class PruneCover:
    """Which records an intact prune covers: one written after the record
    (a higher id) whose `before` is past the record's time. A suffix maximum
    of `before` over the actions in id order answers each record in
    O(log actions)."""

    def __init__(self) -> None:
        self._ids: list[int] = []
        self._latest_before: list[int] = []
        self._suffix: list[int] | None = None

    def add(self, action_id: int, before_micros: int) -> None:
        # called in id order; the suffix maxima are made on first use
        self._ids.append(action_id)
        self._latest_before.append(before_micros)
        self._suffix = None

    def covers(self, record_id: int, record_micros: int) -> bool:
        if not self._ids:
            return False
        if self._suffix is None:
            suffix, best = [0] * len(self._ids), -(2**63)
            for i in range(len(self._ids) - 1, -1, -1):
                best = max(best, self._latest_before[i])
                suffix[i] = best
            self._suffix = suffix
        first_after = bisect.bisect_right(self._ids, record_id)
        return first_after < len(self._ids) and self._suffix[first_after] > record_micros


def _utc(text: str) -> datetime:
    when = datetime.fromisoformat(text)
    return when if when.tzinfo else when.replace(tzinfo=UTC)


_CHAINED_FIELDS = (
    "request_id, time, caller, rpc, media_type, decision, status, error_message,"
    " client_ref, media_bytes, query_signals, matches"
)


# The calls whose allowed records retro-hunts read (hashdb/retro_sql.py
# MATCH_RPCS; the migration's trigger adds their match_history_views rows).
_HUNTED_RPCS = ("Match", "MatchUpload", "MatchBatch")


def _hunted(rpc: str, decision: str | None) -> bool:
    return rpc in _HUNTED_RPCS and decision == "allow"


def _views_problem(row, views_row) -> str:
    """What is wrong with a history row's match_history_views row (verify;
    row: the verify query's; views_row: (history_id, time, views, others) or
    None),
    or "". Someone with database access who deletes it, moves
    its time or rewrites its views hides the upload from retro-hunts: the
    chain covers only the record."""
    rpc, decision, time, signals_text = row[4], row[6], row[2], row[11]
    if views_row is None:
        if _hunted(rpc, decision):
            return "its retro-hunt views row is missing: hidden from retro-hunts"
        return ""
    if not _hunted(rpc, decision):
        return "a retro-hunt views row for a record that is not an allowed upload"
    _, views_time, views, others = views_row
    if views_time != time:
        return "its retro-hunt views row has another time"
    if not packed_views_match(views, signals_text, row[20] is not None):
        return "record was edited: its packed PDQ views are not its signals'"
    if not packed_others_match(others, views, signals_text):
        return "record was edited: its packed signals other than PDQ are not its signals'"
    return ""


def pack_pdq_views(signals: list) -> bytes | None:
    """A record's PDQ views packed for retro-hunts (match_history_views):
    each PDQ signal's 32 bytes, in order; None (not packed: the hunt reads the
    text) if a PDQ value is not 64 hex digits."""
    views = []
    for sig in signals:
        if not isinstance(sig, dict) or sig.get("signal_type") != "pdq":
            continue
        value = sig.get("value")
        if not isinstance(value, str) or len(value) != 2 * PDQ_VIEW_BYTES:
            return None
        try:
            views.append(bytes.fromhex(value))
        except ValueError:
            return None
    return b"".join(views)


def pack_other_signals(signals: list) -> bytes:
    """What a retro-hunt needs of a record's signals other than PDQ, packed
    beside its PDQ views (match_history_views.others), so a run whose new
    entries hold them (a picture's md5, sha256 and local features) need not
    parse every record's JSON: for each signal with a value, in order and
    once each, its kind and, for an exact kind, its bytes (a perceptual kind
    is marked present: the upload then goes to the matcher whole). Each
    item: kind length (1 byte), kind (ASCII), value length (1 byte), value.
    Signals a hunt skips (unknown kinds, values that are not hex) are left
    out, as hashsvc/core/retro_scan.py history_signals leaves them out."""
    out, seen = bytearray(), set()
    for sig in signals:
        if not isinstance(sig, dict):
            continue
        kind, value = sig.get("signal_type"), sig.get("value")
        if kind == "pdq" or kind not in SIGNAL_TYPES or not value or not isinstance(value, str):
            continue
        try:
            raw = bytes.fromhex(value)
        except ValueError:
            continue
        if SIGNAL_TYPES[kind].perceptual or len(raw) > 255:
            raw = b""  # present; the matcher compares it
        if (kind, raw) in seen:
            continue
        seen.add((kind, raw))
        name = kind.encode("ascii")
        out += bytes([len(name)]) + name + bytes([len(raw)]) + raw
    return bytes(out)


def unpack_other_signals(packed: bytes) -> list[tuple[str, bytes]]:
    """pack_other_signals' (kind, value) items (value b"" for a kind that is
    only marked present). Raises ValueError if it is not such a packing."""
    items, at, end = [], 0, len(packed)
    while at < end:
        name_end = at + 1 + packed[at]
        if name_end >= end:
            raise ValueError("truncated packed signals")
        kind = packed[at + 1 : name_end].decode("ascii")
        value_end = name_end + 1 + packed[name_end]
        if value_end > end:
            raise ValueError("truncated packed signals")
        items.append((kind, packed[name_end + 1 : value_end]))
        at = value_end
    return items


def packed_others_match(others: bytes | None, views: bytes | None, signals_text: str) -> bool:
    """Whether a record's packed other signals are its signals' (or not
    read: NULL, as for every record written before the column, or beside
    views that are NULL; the hunt reads the text then).
    Someone with database access who dropped an md5 from them would hide the
    upload from a retro-hunt by exact hash; the chain covers only the text."""
    if others is None or views is None:
        return True  # not read: a hunt reads the record's text
    if not others and '"signal_type": "' not in signals_text.replace('"signal_type": "pdq"', ""):
        return True  # PDQ only (read without parsing, as written)
    try:
        signals = json.loads(signals_text)
    except (ValueError, RecursionError):
        return False
    return isinstance(signals, list) and pack_other_signals(signals) == bytes(others)


def packed_views_match(packed: bytes | None, signals_text: str, pruned: bool = False) -> bool:
    """Whether a record's packed views (match_history_views) are its signals' PDQ views (or
    NULL, read from the text; NULL only once pruned). Someone with database access who changed it
    would hide an upload from retro-hunts; the chain covers only the text.
    Checked without parsing the text when it reads as written (each view's
    hex found in order, and "pdq" nowhere else), else parsed."""
    if packed is None or pruned:
        return packed is None
    packed = bytes(packed)
    if len(packed) % PDQ_VIEW_BYTES == 0:
        at, count = 0, len(packed) // PDQ_VIEW_BYTES
        for k in range(count):
            view = packed[k * PDQ_VIEW_BYTES : (k + 1) * PDQ_VIEW_BYTES].hex()
            found = signals_text.find(f'{_PDQ_VALUE_PREFIX}{view}"', at)
            if found < 0:
                break
            at = found + len(_PDQ_VALUE_PREFIX)
        else:
            if signals_text.count('"pdq"') == count:
                return True
    try:
        signals = json.loads(signals_text)
    except (ValueError, RecursionError):
        return False
    return isinstance(signals, list) and pack_pdq_views(signals) == packed


def _format_2(fields, detail: str | None, token_id: int | None, set_ids) -> tuple:
    # Chain format 2 (issue 16) also covers who called (token id) and the
    # per-set index rows, so neither can be changed without the hash showing.
    return (*fields, detail, token_id, list(set_ids))


def _format_3(fields, signals_digest: str, detail, token_id, set_ids) -> tuple:
    # Chain format 3 (issue 20) covers the query signals through their
    # SHA-256 (stored beside them), so pruning old signals keeps the chain.
    hashed = (*fields[:10], f"sha256:{signals_digest}", *fields[11:])
    return _format_2(hashed, detail, token_id, set_ids)


def _with_detail(fields: tuple, detail: str | None) -> tuple:
    # Records without a detail hash exactly as before the column existed, so
    # older chains still verify.
    return (*fields, detail) if detail else fields


def chain_hash(prev_hash: str, fields: tuple, key: bytes | None = None) -> str:
    """SHA-256 (or HMAC-SHA-256 with a key) over the previous record's hash and
    this record's stored fields."""
    canonical = json.dumps([prev_hash, *fields], ensure_ascii=False, separators=(",", ":"))
    if key:
        return hmac.new(key, canonical.encode(), hashlib.sha256).hexdigest()
    return hashlib.sha256(canonical.encode()).hexdigest()


def key_id(key: bytes) -> str:
    """A short public name for a key (never the key): which key signed a record."""
    return hashlib.sha256(b"hashsvc-history-key:" + key).hexdigest()[:16]


def _history(row) -> HistoryRecord:
    return HistoryRecord(
        id=row[0],
        request_id=row[1],
        time=from_micros(row[2]),
        caller=row[3],
        rpc=row[4],
        media_type=row[5],
        decision=row[6],
        status=row[7],
        error_message=row[8],
        client_ref=row[9],
        media_bytes=row[10],
        query_signals=json.loads(row[11]),
        matches=json.loads(row[12]),
        detail=json.loads(row[13]) if row[13] else {},
        caller_token_id=row[14],
    )
