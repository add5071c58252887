"""CSV and TSV with a header row:
`signal_type,signal_value[,entry][,labels][,quality][,variant][,position][,deleted]`
(labels as `key=value;key=value`). Columns may come in any order; others are ignored."""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator
from typing import TextIO

from loaders import records as r
from loaders.records import Record, Rejected, RowError

COLUMNS = [
    "signal_type",
    "signal_value",
    "entry",
    "labels",
    "quality",
    "variant",
    "position",
    "deleted",
]
# Other names for the same columns, so files from other tools load as they are.
ALIASES = {
    "type": "signal_type",
    "value": "signal_value",
    "hash": "signal_value",
    "signal": "signal_value",
    "entry_id": "entry",
    "external_id": "entry",
    "id": "entry",
    "name": "entry",
    "tombstone": "deleted",
    "removed": "deleted",
}


def column_map(header: list[str]) -> dict[str, int]:
    """Our column name -> its index in the header."""
    found: dict[str, int] = {}
    for index, name in enumerate(header):
        key = name.strip().lower().lstrip("\ufeff")
        key = ALIASES.get(key, key)
        if key in COLUMNS and key not in found:
            found[key] = index
    return found


def read(stream: TextIO, source: str = "", delimiter: str = ",") -> Iterator[Record | Rejected]:
    rows = csv.reader(stream, delimiter=delimiter)
    header = next(rows, None)
    if header is None:
        return
    columns = column_map(header)
    missing = [c for c in ("signal_type", "signal_value") if c not in columns]
    if missing:
        yield Rejected(1, f"header lacks column(s) {', '.join(missing)}", source)
        return
    yield from read_rows(rows, columns, source, start_line=2)


def read_rows(
    rows: Iterable[list[str]], columns: dict[str, int], source: str, start_line: int
) -> Iterator[Record | Rejected]:
    at_type, at_value = columns["signal_type"], columns["signal_value"]
    at_entry = columns.get("entry")
    at_labels = columns.get("labels")
    at_quality = columns.get("quality")
    at_variant = columns.get("variant")
    at_position = columns.get("position")
    at_deleted = columns.get("deleted")
    width = max(columns.values()) + 1
    kinds: dict[str, str] = {}
    for line, row in enumerate(rows, start=start_line):
        if not row or (len(row) == 1 and not row[0].strip()):
            continue  # blank line
        try:
            if len(row) < width:
                row = row + [""] * (width - len(row))
            kind = kinds.get(row[at_type])
            if kind is None:
                kind = kinds[row[at_type]] = r.signal_type_name(row[at_type])
            deleted = r.flag(row[at_deleted]) if at_deleted is not None else False
            entry = r.entry_name(row[at_entry].strip()) if at_entry is not None else ""
            if deleted and not row[at_value].strip():
                if not entry:
                    raise RowError("a deleted row needs an entry or a signal value")
                value = b""
            else:
                value = r.signal_value(kind, row[at_value])
            yield Record(
                kind,
                value,
                entry,
                r.parse_labels(row[at_labels]) if at_labels is not None else None,
                deleted,
                line,
                r.quality(row[at_quality]) if at_quality is not None else None,
                r.variant(row[at_variant].strip()) if at_variant is not None else "original",
                r.position(row[at_position]) if at_position is not None else None,
            )
        except RowError as exc:
            yield Rejected(line, str(exc), source)


def write(stream: TextIO, records: Iterable[Record], delimiter: str = ",") -> int:
    """Writes the header and one row per record; returns the number of rows."""
    out = csv.writer(stream, delimiter=delimiter, lineterminator="\n")
    out.writerow(COLUMNS)
    count = 0
    for rec in records:
        out.writerow(
            [
                rec.signal_type,
                rec.signal_value.hex(),
                rec.entry,
                r.format_labels(rec.labels or {}),
                "" if rec.quality is None else rec.quality,
                rec.variant,
                "" if rec.position is None else f"{rec.position:g}",
                "true" if rec.deleted else "",
            ]
        )
        count += 1
    return count
