"""Downloads: a set's entries in an interchange format (as `hashsvc export`
writes them) and a history search as CSV or JSON lines. Written a batch at a
time into the streamed answer, never held whole."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator

import loaders
from hashdb import EntryRecord, HistoryRecord
from loaders.records import carried_by, entry_records

HISTORY_COLUMNS = (
    "id", "time", "request_id", "caller", "rpc", "media_type", "decision", "status",
    "client_ref", "sets", "entries", "error_message",
)  # fmt: skip


def entry_rows(batches: Iterable[list[EntryRecord]], fmt: str) -> Iterator[str]:
    for batch in batches:
        records = carried_by(
            (
                r
                for e in batch
                for r in entry_records(e.name, e.labels, e.removed_at is not None, e.signals)
            ),
            fmt,
        )
        out = io.StringIO()
        loaders.write(out, records, fmt)
        yield out.getvalue()


def spreadsheet_safe(value: str) -> str:
    """A cell a spreadsheet will not run as a formula (an uploader's
    client_ref of `=HYPERLINK(...)` opened by an auditor)."""
    return "'" + value if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value


def history_row(record: HistoryRecord) -> dict:
    return {
        "id": record.id,
        "time": record.time.isoformat(),
        "request_id": record.request_id,
        "caller": record.caller,
        "rpc": record.rpc,
        "media_type": record.media_type,
        "decision": record.decision,
        "status": record.status,
        "client_ref": record.client_ref,
        "sets": sorted({m.get("set", "") for m in record.matches}),
        "entries": [f"{m.get('set', '')}/{m.get('entry', '')}" for m in record.matches],
        "error_message": record.error_message,
        "matches": record.matches,
        "detail": record.detail,
    }


def history_lines(records: Iterable[HistoryRecord], fmt: str, limit: int) -> Iterator[str]:
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(HISTORY_COLUMNS)
        yield out.getvalue()
    for n, record in enumerate(records):
        if n >= limit:
            return
        row = history_row(record)
        if fmt == "jsonl":
            yield json.dumps(row, ensure_ascii=False) + "\n"
            continue
        out = io.StringIO()
        cells = [";".join(v) if isinstance(v, list) else str(v) for v in
                 (row[c] for c in HISTORY_COLUMNS)]  # fmt: skip
        csv.writer(out).writerow([spreadsheet_safe(c) for c in cells])
        yield out.getvalue()
