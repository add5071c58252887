"""The plain record every format reads into and writes from, and the per-row
checks they share.

A record is one signal of one entry. Rows of several formats carry only part
of it: an entry without an external id is named after its signal
("pdq:<hex>"), so loading the same file twice finds the same entries.
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache

from hashsvc.base import validation
from hashsvc.base.errors import InvalidArgument, quoted
from hashsvc.base.media_kinds import (
    EXCHANGED_FEATURE_VARIANTS,
    EXCHANGED_VARIANT,
    is_exchanged,
)
from hashsvc.base.signals import SIGNAL_TYPES, Signal


@dataclass(frozen=True, slots=True)
class Record:
    signal_type: str
    signal_value: bytes  # b"" only on a tombstone (deleted) row
    entry: str = ""  # the external id; "" -> named after the signal
    # None: the row says nothing about labels (an existing entry keeps its own);
    # {}: the entry has no labels.
    labels: dict[str, str] | None = None
    deleted: bool = False
    line: int = 0
    quality: int | None = None
    variant: str = "original"  # "frame:<n>" for a video frame, "page", "document"
    position: float | None = None  # seconds of a frame, page number

    @property
    def entry_name(self) -> str:
        return self.entry or f"{self.signal_type}:{self.signal_value.hex()}"


@dataclass(slots=True)
class PlainRows:
    """Checked rows of a hash list of one fixed-length type, a signal each,
    packed: row k is the Record(signal_type, values[k * width : (k + 1) *
    width], entries[k], labels[k], line=first_line + k) the row-by-row reader
    would make. A plain list has neither entries nor labels; with entries,
    no two rows name the same entry."""

    signal_type: str
    values: bytes  # every row's value, joined
    first_line: int
    count: int
    entries: list[str] | None = None  # "" -> named after the signal
    # Labels as a file repeats them: each distinct text once (in the wire
    # form of labels_json(), in order of first appearance) and each row's
    # index into them; None: the rows have no labels column.
    label_sets: list[str] | None = None
    label_codes: list[int] | None = None

    def __len__(self) -> int:
        return self.count

    @property
    def labels(self) -> list[str] | None:
        """Each row's labels text (wire form), or None."""
        if self.label_codes is None or self.label_sets is None:
            return None
        return list(map(self.label_sets.__getitem__, self.label_codes))


@dataclass(frozen=True, slots=True)
class Rejected:
    """A row that did not load, and why."""

    line: int
    reason: str
    source: str = ""


class RowError(ValueError):
    """One row is invalid; the message says why (line numbers are added by the reader)."""


# Names partners use for our signal types (python-threatexchange, TCAP, ...).
SIGNAL_ALIASES = {
    **{name: name for name in SIGNAL_TYPES},
    "sha-256": "sha256",
    "sha_256": "sha256",
    "photo_md5": "md5",
    "video_md5": "md5",
    "pdq_hash": "pdq",
    "text-sha256": "text_sha256",
    "text-simhash": "text_simhash",
}
_HEX = re.compile(r"(?:0x)?([0-9a-fA-F]*)")
# Exports in other tools' formats (HMA / python-threatexchange, TCAP) leave out
# the signal types only hashsvc reads (CSV, TSV and JSON lines carry them).
OTHER_TOOLS_FORMATS = ("hma", "tcap")
HASHSVC_ONLY_TYPES = ("local_features",)


def entry_records(
    name: str, labels: dict[str, str], removed: bool, signals: Iterable[Signal]
) -> list[Record]:
    """An entry's exchangeable signals as records, as every export writes
    them (`hashsvc export` from the API's entries, the HTTP API's and the
    console's from the store's): hashsvc's own views (crops, bands, small
    copies) left out; a removed entry is one tombstone record."""
    out = []
    for sig in signals:
        variant = sig.variant or "original"
        if not is_exchanged(sig.kind, variant):
            continue
        quality = sig.quality if sig.kind == "pdq" else None
        out.append(
            Record(
                sig.kind, sig.value, name, dict(labels), removed, 0, quality, variant, sig.position
            )
        )
        if removed:
            break
    return out


def carried_by(records: Iterable[Record], fmt: str) -> Iterable[Record]:
    """The records format `fmt` carries (OTHER_TOOLS_FORMATS: not hashsvc's
    own types, nor a PDF's rendered pages: those tools take a PDQ for a photo)."""
    if fmt not in OTHER_TOOLS_FORMATS:
        return records
    return (
        r
        for r in records
        if r.signal_type not in HASHSVC_ONLY_TYPES and r.variant != "page:original"
    )


def signal_type_name(text: str) -> str:
    name = SIGNAL_ALIASES.get(text.strip().lower())
    if name is None:
        raise RowError(f"unsupported signal type {quoted(text.strip())}")
    return name


def signal_value(kind: str, text: str) -> bytes:
    """Hex text of a signal of this type -> bytes; RowError says what is wrong
    (length, alphabet): a 32-digit value labelled PDQ is refused here."""
    sig_type = SIGNAL_TYPES[kind]
    found = _HEX.fullmatch(text.strip())
    if found is None:
        raise RowError(f"{kind} value is not hexadecimal")
    digits = found.group(1)
    want = sig_type.nbytes * 2
    if sig_type.opaque:
        # a blob's structure is checked by the server (hashsvc/core)
        if not digits or len(digits) % 2 or len(digits) > sig_type.max_bytes * 2:
            raise RowError(
                f"{kind} value must be a non-empty, even number of hex digits, at most"
                f" {sig_type.max_bytes * 2}; got {len(digits)}"
            )
    elif sig_type.sequence:
        if not digits or len(digits) % want:
            raise RowError(
                f"{kind} value must be a non-empty multiple of {want} hex digits, got {len(digits)}"
            )
    elif len(digits) != want:
        raise RowError(f"{kind} value must be {want} hex digits, got {len(digits)}")
    return bytes.fromhex(digits)


@lru_cache(maxsize=4096)
def parse_labels(text: str) -> dict[str, str]:
    """`key=value;key=value` -> dict, or a JSON object of strings when the
    text starts with `{` (cached: a file repeats the same few; callers must
    not change the dict they get).

    The JSON form carries what the plain one cannot: a `;` in a value, or
    spaces at either end (plain values are stripped). It takes nothing from
    the plain form: a key starts with a letter, so text starting with `{` was
    never valid, and every text that loaded before reads the same (a
    backslash is an ordinary character, an `=` after the first belongs to
    the value)."""
    if text.lstrip().startswith("{"):
        return _json_labels(text.strip())
    try:
        return validation.label_pairs(p for p in text.split(";") if p.strip())
    except InvalidArgument as exc:
        raise RowError(str(exc)) from None


def _json_labels(text: str) -> dict[str, str]:
    try:
        return validation.labels_json(text)
    except InvalidArgument as exc:
        raise RowError(str(exc)) from None


def checked_labels(values: dict[str, str]) -> dict[str, str]:
    try:
        return validation.labels(values)
    except InvalidArgument as exc:
        raise RowError(str(exc)) from None


def format_labels(labels: dict[str, str]) -> str:
    """The text parse_labels reads back as these labels: `key=value;...`, or
    the JSON object when a value would not survive that."""
    if all(";" not in v and v == v.strip() for v in labels.values()):
        return ";".join(f"{k}={v}" for k, v in sorted(labels.items()))
    return json.dumps(labels, sort_keys=True, ensure_ascii=False)


def fits_cell(value: str) -> bool:
    """Whether a value reads back as itself from a cell of its own (readers
    strip cells, and an empty cell says nothing)."""
    return bool(value) and value == value.strip()


def exported_entry(rec: Record) -> str:
    """A written row's entry cell. An entry named after the row's signal
    (`kind:hex`, see Record.entry_name) whose name is longer than an entry
    name may be (a long Chromaprint fingerprint's) is written without it:
    reading the row names it so again, while the name itself would be
    refused. A shorter name is written as it is."""
    if (
        len(rec.entry) > validation.MAX_ENTRY_NAME
        and rec.signal_value
        and rec.entry == f"{rec.signal_type}:{rec.signal_value.hex()}"
    ):
        return ""
    return rec.entry


def entry_name(text: str) -> str:
    if not text:
        return ""
    try:
        return validation.entry_name(text)
    except InvalidArgument as exc:
        raise RowError(str(exc)) from None


def quality(text) -> int | None:
    if text in (None, ""):
        return None
    try:
        value = int(text)
    except (TypeError, ValueError):
        raise RowError(f"quality {quoted(text)} is not a whole number") from None
    if not 0 <= value <= 100:
        raise RowError("quality must be within 0..100")
    return value


def position(text) -> float | None:
    if text in (None, ""):
        return None
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise RowError(f"position {quoted(text)} is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise RowError("position must be a finite number >= 0")
    return value


def variant(text: str | None) -> str:
    if not text:
        return "original"
    # which signal types a variant may go with is checked with the type
    # (kind_variant), once both are read
    if not (EXCHANGED_VARIANT.fullmatch(text) or text in EXCHANGED_FEATURE_VARIANTS):
        raise RowError(
            f"variant {quoted(text)} is not exchanged (original, frame:N, page, document,"
            " page:original, image:original, image:exact; enlarged, contrast, enlarged:contrast"
            " for local_features)"
        )
    return text


def kind_variant(kind: str, variant_name: str) -> str:
    """The variant, when signals of this type are exchanged with it."""
    if not is_exchanged(kind, variant_name):
        raise RowError(f"variant {quoted(variant_name)} is not exchanged for {kind}")
    return variant_name


_TRUE = {"1", "true", "yes", "y", "t", "deleted"}
_FALSE = {"", "0", "false", "no", "n", "f"}


def flag(text) -> bool:
    if isinstance(text, bool):
        return text
    value = str(text or "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise RowError(f"deleted flag {quoted(text)} is not true/false")


def record(
    signal_type: str,
    value: str,
    entry: str = "",
    labels: dict[str, str] | None = None,
    deleted: bool = False,
    line: int = 0,
    quality_value: int | None = None,
    variant_name: str = "original",
    position_value: float | None = None,
) -> Record:
    """A checked record from already-split fields (value as hex text)."""
    kind = signal_type_name(signal_type)
    if deleted and not value.strip():
        if not entry:
            raise RowError("a deleted row needs an entry or a signal value")
        raw = b""
    else:
        raw = signal_value(kind, value)
    return Record(
        kind,
        raw,
        entry,
        labels,
        deleted,
        line,
        quality_value,
        kind_variant(kind, variant_name),
        position_value,
    )


def labels_json(labels: dict[str, str] | None) -> str:
    """The wire form of a record's labels: "" when the row says nothing."""
    return "" if labels is None else json.dumps(labels, sort_keys=True, ensure_ascii=False)


@lru_cache(maxsize=4096)
def labels_cell_json(text: str) -> str:
    """A labels cell's wire form (labels_json(parse_labels(text))); cached,
    as a file repeats a few label sets. Raises RowError."""
    return labels_json(parse_labels(text))


def named_rows(
    stream, required: tuple[str, ...], source: str = ""
) -> Iterator[Rejected | tuple[int, Callable[[str], str]]]:
    """The rows of a CSV file with a header, as (line number, cell) where
    cell(column name) is that row's stripped value ("" for a missing column);
    blank lines are skipped. A header lacking a required column yields one
    Rejected for line 1 and nothing else."""
    rows = csv.reader(stream)
    header = next(rows, None)
    if header is None:
        return
    at = {name.strip().lower().lstrip("\ufeff"): i for i, name in enumerate(header)}
    if not all(name in at for name in required):
        yield Rejected(1, f"header lacks {' or '.join(required)}", source)
        return
    for line, row in enumerate(rows, start=2):
        if not row or (len(row) == 1 and not row[0].strip()):
            continue
        row = row + [""] * (len(header) - len(row))

        def cell(name: str, row: list[str] = row) -> str:
            index = at.get(name)
            return row[index].strip() if index is not None else ""

        yield line, cell


def named_records(
    stream,
    required: tuple[str, ...],
    source: str,
    to_record: Callable[[int, Callable[[str], str]], Record],
) -> Iterator[Record | Rejected]:
    """Records of a CSV file with a header, one per row made by
    to_record(line, cell); a row whose cells fail (RowError) is Rejected."""
    for item in named_rows(stream, required, source):
        if isinstance(item, Rejected):
            yield item
            continue
        line, cell = item
        try:
            yield to_record(line, cell)
        except RowError as exc:
            yield Rejected(line, str(exc), source)


def write_csv(stream, header: list[str], rows: Iterable[list[str]]) -> int:
    """A header and rows as CSV; returns how many rows were written."""
    out = csv.writer(stream, lineterminator="\n")
    out.writerow(header)
    count = 0
    for row in rows:
        out.writerow(row)
        count += 1
    return count
