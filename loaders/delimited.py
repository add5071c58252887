"""CSV and TSV with a header row:
`signal_type,signal_value[,entry][,labels][,quality][,variant][,position][,deleted]`
(labels as `key=value;key=value`, or a JSON object `{"key": "value"}` when a
value holds a `;` or spaces at either end: see records.parse_labels). Columns
may come in any order; others are ignored."""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator
from itertools import islice
from typing import TextIO

from hashsvc.base import validation
from hashsvc.base.signals import SIGNAL_TYPES
from loaders import records as r
from loaders.records import PlainRows, Record, Rejected, RowError

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


# The columns a block may have: a hash list, a feed's ids and labels.
_BLOCK_COLUMNS = {"signal_type", "signal_value", "entry", "labels"}


def read_blocks(
    stream: TextIO,
    source: str = "",
    delimiter: str = ",",
    block_rows: int = 20_000,
    hash_named_block_rows: int | None = None,
) -> Iterator[PlainRows | Record | Rejected]:
    """As read(), but a file with only the type and value columns, and
    perhaps entry and labels, comes as PlainRows blocks, checked a column
    at a time (a million-row hash list is read 3x faster, a feed's 4x); a
    block with an odd row, or two rows of one entry, is read row by row.
    Labelled rows without an entry column (entries named after their hash)
    come in blocks of hash_named_block_rows, if given."""
    rows = csv.reader(stream, delimiter=delimiter)
    header = next(rows, None)
    if header is None:
        return
    columns = column_map(header)
    if not {"signal_type", "signal_value"} <= set(columns) <= _BLOCK_COLUMNS:
        yield from read_rows(rows, columns, source, start_line=2)
        return
    named = "entry" in columns or "labels" in columns
    if hash_named_block_rows and named and "entry" not in columns:
        block_rows = hash_named_block_rows  # labelled rows named after their hash
    line = 2
    carried: list[list[str]] = []
    while block := carried + list(islice(rows, block_rows - len(carried))):
        carried = []
        if named and len(block) == block_rows:
            # The last row waits for the next block: if the entry goes on
            # there, its rows are read (and sent) together, row by row.
            carried = [block.pop()]
        plain = _plain_block(block, columns, line)
        if plain is None:
            yield from read_rows(block, columns, source, start_line=line)
        else:
            yield plain
        line += len(block)


def _plain_block(block: list[list[str]], columns: dict[str, int], line: int):
    """PlainRows when every row of the block is a good row of one fixed-length
    type with exactly its number of hex digits, with valid entries (no two
    alike) and labels; else None."""
    at_type, at_value = columns["signal_type"], columns["signal_value"]
    try:
        types = {row[at_type] for row in block}
        if len(types) != 1:
            return None
        kind = r.signal_type_name(types.pop())
        sig_type = SIGNAL_TYPES[kind]
        digits = [row[at_value] for row in block]
        entries = [row[columns["entry"]].strip() for row in block] if "entry" in columns else None
        cells = [row[columns["labels"]] for row in block] if "labels" in columns else None
    except (IndexError, RowError):
        return None  # a short or blank row, an unknown type
    if sig_type.sequence or sig_type.opaque or set(map(len, digits)) != {sig_type.nbytes * 2}:
        return None
    try:
        # Every row has exactly 2n characters, so all of them are hex digits
        # when the whole comes out n bytes a row (fromhex skips spaces).
        joined = "".join(digits)
        values = bytes.fromhex(joined)
    except ValueError:
        return None
    if len(values) != sig_type.nbytes * len(block):
        return None
    if entries is None and cells is not None:
        # Every row named after its hash: the names are distinct when the
        # values are (as digits in one case; no name strings made).
        if joined != joined.lower():
            digits = [d.lower() for d in digits]
        if len(set(digits)) != len(digits):
            return None  # an entry of several rows: read row by row
    elif entries is not None:
        every = all(entries)  # a feed's: an id a row
        own = entries if every else [name for name in entries if name]
        if own and not validation.entry_names_valid(own):
            return None
        # as Record.entry_name names them
        names = (
            entries
            if every
            else [name or f"{kind}:{digits[k].lower()}" for k, name in enumerate(entries)]
        )
        if len(set(names)) != len(names):
            return None  # an entry of several rows: read row by row
        if not own:
            entries = None
    label_sets = label_codes = None
    if cells is not None:
        # each distinct cell parsed once; cells saying the same labels
        # (spacing, order) share a set
        numbered: dict[str, int] = {}
        code_of: dict[str, int] = {}
        try:
            for text in dict.fromkeys(cells):
                code_of[text] = numbered.setdefault(r.labels_cell_json(text), len(numbered))
        except RowError:
            return None
        label_sets, label_codes = list(numbered), list(map(code_of.__getitem__, cells))
    return PlainRows(kind, values, line, len(block), entries, label_sets, label_codes)


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
                r.kind_variant(kind, r.variant(row[at_variant].strip()))
                if at_variant is not None
                else "original",
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
                r.exported_entry(rec),
                r.format_labels(rec.labels or {}),
                "" if rec.quality is None else rec.quality,
                rec.variant,
                # repr: the shortest text that reads back as the same float
                "" if rec.position is None else repr(float(rec.position)),
                "true" if rec.deleted else "",
            ]
        )
        count += 1
    return count
