"""What the web console (hashsvc/http/console) reads beyond the use cases'
own queries: the dashboard's aggregates, a history record by request id and
entries found by name or label. A mixin of SQLStore (`?` placeholders, times
as integer microseconds); every query is bounded by an index and a LIMIT."""

from __future__ import annotations

import json
from collections import Counter
from datetime import datetime

from hashdb.label_sets import SOURCE_ID_LABEL
from hashdb.model import ConsoleSession, EntryRecord, HistoryFilter, HistoryRecord, ReviewFilter
from hashdb.review_sql import review_where
from hashdb.times import from_micros, now_micros, to_micros

_HOUR_MICROS = 3_600_000_000


def like_pattern(text: str) -> str:
    """`%text%` with LIKE's wildcards taken literally (ESCAPE '\\')."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


class ConsoleSQL:
    def decisions_per_hour(self, first_hour: int, last_hour: int) -> dict[tuple[int, str], int]:
        """(hour since the epoch, decision) -> Match calls decided in the hours
        first_hour..last_hour. A query per hour on the (time, decision) index:
        one GROUP BY over a week of a busy history sorted 233k rows in a
        temporary B-tree (290 ms at 1M records); hour by hour, 110 ms."""
        out: dict[tuple[int, str], int] = {}
        with self._read() as cur:
            for hour in range(first_hour, last_hour + 1):
                cur.execute(
                    "SELECT decision, COUNT(*) FROM match_history"
                    " WHERE time >= ? AND time < ? AND decision <> '' GROUP BY decision",
                    (hour * _HOUR_MICROS, (hour + 1) * _HOUR_MICROS),
                )
                out.update(((hour, decision), int(n)) for decision, n in cur.fetchall())
        return out

    def open_review_summary(self) -> tuple[int, datetime | None]:
        """Open review items and when the oldest was created."""
        with self._read() as cur:
            cur.execute("SELECT COUNT(*), MIN(id) FROM review_items WHERE status = 'open'")
            count, oldest_id = cur.fetchone()
            if not oldest_id:
                return 0, None
            cur.execute("SELECT created_at FROM review_items WHERE id = ?", (oldest_id,))
            return int(count), from_micros(cur.fetchone()[0])

    def count_review_items(self, filter: ReviewFilter) -> int:
        where, params = review_where(filter)
        with self._read() as cur:
            cur.execute(f"SELECT COUNT(*) FROM review_items WHERE {where}", params)
            return int(cur.fetchone()[0])

    def top_matched_entries(
        self, since: datetime, records: int, limit: int
    ) -> list[tuple[str, str, int]]:
        """(set, entry, matches) of the entries that matched most often in the
        newest `records` block or review decisions since `since`."""
        counts: Counter[tuple[str, str]] = Counter()
        with self._read() as cur:
            cur.execute(
                "SELECT matches FROM match_history WHERE decision IN ('block', 'review')"
                " AND time >= ? ORDER BY id DESC LIMIT ?",
                (to_micros(since), records),
            )
            for (matches,) in cur.fetchall():
                seen = {(m.get("set", ""), m.get("entry", "")) for m in json.loads(matches)}
                counts.update(seen)
        return [(s, e, n) for (s, e), n in counts.most_common(limit)]

    def history_ids_by_request(self, request_id: str, limit: int = 10) -> list[int]:
        with self._read() as cur:
            cur.execute(
                "SELECT id FROM match_history WHERE request_id = ? ORDER BY id LIMIT ?",
                (request_id, limit),
            )
            return [row[0] for row in cur.fetchall()]

    def search_entries(
        self, set_id: int, text: str, after_id: int, limit: int
    ) -> list[EntryRecord]:
        """Active entries of the set whose name holds `text`, or with the
        label `key=value` when text is one; by id."""
        pattern = like_pattern(text)
        # the source id (in its own column, hashdb/label_sets.py): within the
        # text searched for, or the whole value of a source_id=... search
        source_id = "source_id LIKE ? ESCAPE '\\'"
        source_param = pattern
        key, eq, value = text.partition("=")
        if eq:  # label sets are stored as a JSON object: match the pair as written
            pattern = like_pattern(f"{json.dumps(key.strip())}: {json.dumps(value.strip())}")
            source_id = "source_id = ?"
            source_param = value.strip() if key.strip() == SOURCE_ID_LABEL else None
        with self._read() as cur:
            cur.execute(
                "SELECT id FROM entries WHERE set_id = ? AND id > ? AND removed_at IS NULL"
                " AND (name LIKE ? ESCAPE '\\' OR (SELECT l.labels FROM label_sets l"
                f" WHERE l.id = entries.label_set_id) LIKE ? ESCAPE '\\' OR {source_id})"
                " ORDER BY id LIMIT ?",
                (set_id, after_id, pattern, pattern, source_param, limit),
            )
            ids = [row[0] for row in cur.fetchall()]
        found = self.get_entries(ids)
        return [found[i] for i in ids if i in found]

    def history_record(self, history_id: int) -> HistoryRecord | None:
        records = self.query_history(HistoryFilter(), history_id - 1, 1)
        return records[0] if records and records[0].id == history_id else None

    # -- sessions (written without the change feed's lock, as flood counts are:
    # a bulk load holding it must not stall every page of the console)

    def open_console_session(
        self,
        id_hash: str,
        token_id: int,
        csrf: str,
        expires_at: datetime,
        idle_seconds: float,
        max_sessions: int,
    ) -> None:
        """Stores a new session after deleting the expired ones; past
        max_sessions the least recently used sessions end."""
        now = now_micros()
        with self._counter_write() as cur:
            cur.execute(
                "DELETE FROM console_sessions WHERE expires_at <= ? OR seen_at < ?",
                (now, now - int(idle_seconds * 1_000_000)),
            )
            cur.execute(
                "INSERT INTO console_sessions"
                " (id_hash, token_id, csrf, created_at, expires_at, seen_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (id_hash, token_id, csrf, now, to_micros(expires_at), now),
            )
            cur.execute("SELECT COUNT(*) FROM console_sessions")
            extra = int(cur.fetchone()[0]) - max_sessions
            if extra > 0:
                cur.execute(
                    "DELETE FROM console_sessions WHERE id_hash IN (SELECT id_hash FROM"
                    " console_sessions WHERE id_hash <> ? ORDER BY seen_at, id_hash LIMIT ?)",
                    (id_hash, extra),
                )

    def console_session(
        self, id_hash: str, idle_seconds: float, touch_seconds: float
    ) -> ConsoleSession | None:
        """The live session and its token's record (as it is now), or None
        (an ended session is deleted). Its last use is written when it is
        older than touch_seconds (not at every page), and its flash is taken."""
        now = now_micros()
        with self._read() as cur:
            cur.execute(
                "SELECT s.csrf, s.created_at, s.expires_at, s.seen_at, s.flash,"
                f" {', '.join('t.' + c.strip() for c in self._token_columns.split(','))}"
                " FROM console_sessions s JOIN tokens t ON t.id = s.token_id"
                " WHERE s.id_hash = ?",
                (id_hash,),
            )
            row = cur.fetchone()
        if row is None:
            return None
        csrf, created, expires, seen, flash = row[:5]
        if expires <= now or seen < now - int(idle_seconds * 1_000_000):
            self.close_console_session(id_hash)
            return None
        if flash is not None or seen < now - int(touch_seconds * 1_000_000):
            with self._counter_write() as cur:
                cur.execute(
                    "UPDATE console_sessions SET seen_at = ?, flash = NULL WHERE id_hash = ?",
                    (now, id_hash),
                )
        return ConsoleSession(
            self._token_row(row[5:]), csrf, from_micros(created), from_micros(expires), flash
        )

    def set_console_flash(self, id_hash: str, flash: str) -> None:
        with self._counter_write() as cur:
            cur.execute("UPDATE console_sessions SET flash = ? WHERE id_hash = ?", (flash, id_hash))

    def close_console_session(self, id_hash: str) -> None:
        with self._counter_write() as cur:
            cur.execute("DELETE FROM console_sessions WHERE id_hash = ?", (id_hash,))
