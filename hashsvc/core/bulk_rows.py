"""The rows of a bulk load, checked: column batches as they arrive
(RowBatch, PackedRows), each row's signal, entry name and labels checked
again (the server trusts no client), grouped into entries, and plain hash
lists recognised and sorted column-wise (numpy) for the fast path."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from hashdb import columns
from hashdb.bulk_sql import MAX_SIGNALS_PER_ENTRY, BulkCounts, EntryUpsert, PlainSignals
from hashdb.label_sets import SOURCE_ID_LABEL, parsed_labels
from hashsvc.base import validation
from hashsvc.base.errors import InvalidArgument, quoted
from hashsvc.base.media_kinds import HASH, SINGLE_MEDIA_TYPE, media_type_of
from hashsvc.base.signals import SIGNAL_TYPES, Signal
from hashsvc.core.signal_values import DEFAULT_MAX_KEYPOINTS, checked_value


@dataclass
class RowBatch:
    """Rows as columns; an optional column may be empty (all defaults)."""

    signal_type: Sequence[str]
    value: Sequence[bytes]
    line: Sequence[int] = ()
    entry: Sequence[str] = ()  # "" -> named after the signal
    labels: Sequence[str] = ()  # JSON object text; "" -> the row says nothing
    # With label_key, each row's labels also say label_key = label_values[row]
    # ("" -> not): a feed's source id, one a row, beside label sets shared by
    # many rows (each shared set is then checked once, not once a row).
    label_key: str = ""
    label_values: Sequence[str] = ()
    deleted: Sequence[bool] = ()
    quality: Sequence[int] = ()  # -1 -> none
    variant: Sequence[str] = ()  # "" -> "original"
    position: Sequence[float] = ()  # NaN -> none
    source: str = ""

    def __len__(self) -> int:
        return len(self.signal_type)

    @classmethod
    def from_records(cls, records: Sequence, source: str = "") -> RowBatch:
        """From loaders.Record objects (tests and in-process loads)."""
        return cls(
            signal_type=[r.signal_type for r in records],
            value=[r.signal_value for r in records],
            line=[r.line for r in records],
            entry=[r.entry for r in records],
            labels=[
                "" if r.labels is None else json.dumps(r.labels, sort_keys=True) for r in records
            ],
            deleted=[r.deleted for r in records],
            quality=[-1 if r.quality is None else r.quality for r in records],
            variant=[r.variant for r in records],
            position=[math.nan if r.position is None else r.position for r in records],
            source=source,
        )


@dataclass
class PackedRows:
    """A plain hash list's rows packed: one fixed-length signal type, every
    row's value joined in `values`, rows numbered from first_line. Each row
    is an entry of its own, as a RowBatch row with only a type and a value."""

    kind: str
    values: bytes
    first_line: int = 1
    source: str = ""
    # a feed's rows: each row's entry name and labels, as in RowBatch
    entry: Sequence[str] = ()
    labels: Sequence[str] = ()
    # or the labels as a file repeats them (instead of `labels`): each
    # distinct text once, and each row's index into them
    label_sets: Sequence[str] = ()
    label_codes: np.ndarray | None = None

    def __post_init__(self) -> None:
        sig_type = SIGNAL_TYPES.get(self.kind)
        if sig_type is None or sig_type.sequence or sig_type.opaque:
            raise InvalidArgument(
                f"packed rows need a fixed-length signal type, not {quoted(self.kind)}"
            )
        if len(self.values) % sig_type.nbytes:
            raise InvalidArgument(
                f"packed {self.kind} values must be a multiple of {sig_type.nbytes} bytes"
            )

    @classmethod
    def of_plain(cls, rows, source: str) -> PackedRows:
        """A reader's PlainRows (loaders) as they are loaded: with their entry
        names and labels, when the file has those columns."""
        return cls(
            rows.signal_type,
            rows.values,
            rows.first_line,
            source,
            entry=rows.entries or (),
            label_sets=rows.label_sets or (),
            label_codes=None
            if rows.label_codes is None
            else np.asarray(rows.label_codes, dtype=np.int64),
        )

    def row_labels(self) -> Sequence[str]:
        """Each row's labels text ("" -> says nothing), or () for none."""
        if self.label_codes is None:
            return self.labels
        sets = list(self.label_sets)
        return [sets[code] for code in self.label_codes.tolist()]

    def __len__(self) -> int:
        return len(self.values) // SIGNAL_TYPES[self.kind].nbytes

    def as_row_batch(self) -> RowBatch:
        width = SIGNAL_TYPES[self.kind].nbytes
        count = len(self)
        return RowBatch(
            signal_type=[self.kind] * count,
            value=[self.values[k * width : (k + 1) * width] for k in range(count)],
            line=range(self.first_line, self.first_line + count),
            entry=self.entry,
            labels=self.row_labels(),
            source=self.source,
        )


@dataclass(frozen=True)
class RejectedRow:
    source: str
    line: int
    reason: str


@dataclass
class BulkResult:
    rows: int = 0
    counts: BulkCounts = field(default_factory=BulkCounts)
    rejected_count: int = 0
    rejected: list[RejectedRow] = field(default_factory=list)
    # False only for a strict load that found bad rows and wrote nothing
    written: bool = True

    @property
    def added(self) -> int:
        return self.counts.added

    @property
    def updated(self) -> int:
        return self.counts.updated

    @property
    def removed(self) -> int:
        return self.counts.removed

    @property
    def unchanged(self) -> int:
        return self.counts.unchanged


class RowError(ValueError):
    pass


@lru_cache(maxsize=4096)
def checked_row_labels(text: str) -> dict[str, str]:
    try:
        return validation.labels_json(text)
    except InvalidArgument as exc:
        raise RowError(str(exc)) from None


def row_label_added(labels: dict[str, str] | None, key: str, value: str) -> dict[str, str]:
    """The row's labels with key = value too (RowBatch.label_key), checked."""
    try:
        return validation.labels({**(labels or {}), key: value})
    except InvalidArgument as exc:
        raise RowError(str(exc)) from None


def row_entry_name(name: str) -> str:
    try:
        return validation.entry_name(name)
    except InvalidArgument as exc:
        raise RowError(str(exc)) from None


def row_value(
    kind: str,
    value: bytes,
    deleted: bool,
    max_keypoints: int = DEFAULT_MAX_KEYPOINTS,
    descriptor_bytes: int | None = None,
) -> bytes:
    sig_type = SIGNAL_TYPES.get(kind)
    if sig_type is None:
        raise RowError(f"unsupported signal type {quoted(kind)}")
    if deleted and not value:
        return value
    if sig_type.opaque:
        if not value or len(value) > sig_type.max_bytes:
            raise RowError(f"{kind} value must be 1..{sig_type.max_bytes} bytes, got {len(value)}")
        try:
            checked_value(kind, value, max_keypoints, descriptor_bytes)
        except InvalidArgument as exc:
            raise RowError(str(exc)) from None
    elif sig_type.sequence:
        if not value or len(value) % sig_type.nbytes:
            raise RowError(f"{kind} value must be a non-empty multiple of {sig_type.nbytes} bytes")
    elif len(value) != sig_type.nbytes:
        raise RowError(f"{kind} value must be {sig_type.nbytes} bytes, got {len(value)}")
    return value


class EntryGroup:
    """What the rows of one batch say about one entry."""

    __slots__ = ("name", "signals", "keys", "labels", "deleted", "retracts", "source", "line")

    def __init__(self, name: str, deleted: bool, source: str, line: int) -> None:
        self.name = name
        self.signals: list[Signal] = []
        self.keys: set | None = None  # made when a second signal arrives
        self.labels: dict[str, str] | None = None
        self.deleted = deleted
        # a tombstone that names no entry but a hash: (kind, value)
        self.retracts: tuple[str, bytes] | None = None
        self.source, self.line = source, line  # the entry's first row

    def add(self, signal: Signal | None, labels: dict[str, str] | None) -> None:
        """Raises RowError, adding nothing, when the entry is full."""
        if signal is not None and not self.deleted and self.signals:
            if self.keys is None:
                self.keys = {(s.kind, s.value, s.variant) for s in self.signals}
            key = (signal.kind, signal.value, signal.variant)
            if key in self.keys:
                signal = None  # a repeat: its labels still count
            elif len(self.signals) >= MAX_SIGNALS_PER_ENTRY:
                raise RowError(
                    f"entry {quoted(self.name)} holds at most {MAX_SIGNALS_PER_ENTRY} signals"
                )
            else:
                self.keys.add(key)
        if labels is not None:
            self.labels = labels if self.labels is None else {**self.labels, **labels}
        if signal is not None and not self.deleted:
            self.signals.append(signal)

    def upsert(self) -> EntryUpsert:
        return EntryUpsert(
            self.name, self.signals, self.labels, media_type_of(self.signals), self.deleted
        )


@dataclass
class CheckedPlainRows:
    """A batch's rows as a hash list of one signal each, checked; in row
    order. Plain (no names, no labels): repeats included. With names (a
    feed's ids, some rows perhaps "<kind>:<hex>"): every name unique, so
    each row is an entry of its own. Labelled rows without names (each
    named after its hash) have no names here and distinct values."""

    kind: str
    values: np.ndarray  # (n, width) uint8
    qualities: np.ndarray | None  # int16, -1 -> none; None: no row has one
    names: list[str] | None = None
    # Labels numbered: row k's are label_texts[label_codes[k]], stored JSON
    # text or None (the row says nothing); both None when no row says any.
    label_codes: np.ndarray | None = None
    label_texts: list[str | None] | None = None
    # _value_order(values), when checking the rows made it (sorted_plain reuses it)
    value_order: tuple[np.ndarray, np.ndarray] | None = None
    # each row's source id beside its labels (a feed's, see PlainSignals), or
    # "": none; None: no row has one
    source_ids: np.ndarray | None = None

    @property
    def labelled(self) -> bool:
        return self.label_codes is not None

    @property
    def kind_key(self) -> tuple[str, bool, bool, bool]:
        """Rows of one key are written together, in one run."""
        return self.kind, self.qualities is not None, self.names is not None, self.labelled


def plain_rows(batch: RowBatch | PackedRows) -> CheckedPlainRows | None:
    """The batch as a hash list of one signal an entry, checked column-wise:
    one fixed-length signal type, every value of its length, no tombstone,
    variant or position, and entry names (if any) valid and unique, labels
    (if any) valid. None when a row needs the row-by-row path (which also
    reports bad rows)."""
    if isinstance(batch, PackedRows):
        width = SIGNAL_TYPES[batch.kind].nbytes
        values = np.frombuffer(batch.values, dtype=np.uint8).reshape(-1, width)
        if batch.label_codes is not None:
            numbered = _numbered_sets(batch.label_sets, batch.label_codes)
            return _named_rows(batch.kind, values, None, batch.entry, numbered)
        if not batch.entry and not batch.labels:
            return CheckedPlainRows(batch.kind, values, None)
        return _named_rows(batch.kind, values, None, batch.entry, _numbered_texts(batch.labels))
    says_more = (
        any(batch.deleted)
        or not set(batch.variant) <= {"", "original"}
        or not all(map(math.isnan, batch.position))
    )
    if says_more:
        return None
    kinds = set(batch.signal_type)
    if len(kinds) != 1:
        return None
    kind = kinds.pop()
    sig_type = SIGNAL_TYPES.get(kind)
    if (
        sig_type is None
        or sig_type.sequence
        or sig_type.opaque
        or set(map(len, batch.value)) != {sig_type.nbytes}
    ):
        return None
    if batch.quality and (min(batch.quality) < -1 or max(batch.quality) > 100):
        return None
    values = np.frombuffer(b"".join(batch.value), dtype=np.uint8).reshape(-1, sig_type.nbytes)
    qualities = np.asarray(batch.quality, dtype=np.int16) if batch.quality else None
    if batch.label_key and any(batch.label_values):
        texts = batch.labels or [""] * len(batch)
        if batch.label_key == SOURCE_ID_LABEL:
            # kept beside the shared sets, as the stores keep it
            numbered = _numbered_beside(texts, batch.label_values)
            if numbered is None:
                return None
            rows = _named_rows(kind, values, qualities, batch.entry, numbered[0])
            if rows is not None:
                rows.source_ids = numbered[1]
            return rows
        labels = _stored_labels_with(texts, batch.label_key, batch.label_values)
        if labels is None:
            return None
        return _named_rows(kind, values, qualities, batch.entry, _numbered(labels))
    return _named_rows(kind, values, qualities, batch.entry, _numbered_texts(batch.labels))


# Labels numbered and checked (CheckedPlainRows.label_codes, label_texts);
# None: no row says any; False: some row's are invalid.
_Numbered = tuple[np.ndarray, list[str | None]] | None


def _numbered(labels: Sequence[str | None]) -> _Numbered:
    """Each row's stored labels text (or None) numbered by distinct text."""
    numbers: dict[str | None, int] = {}
    codes = np.fromiter(
        (numbers.setdefault(text, len(numbers)) for text in labels),
        dtype=np.int64,
        count=len(labels),
    )
    return None if list(numbers) == [None] else (codes, list(numbers))


def _numbered_texts(texts: Sequence[str]) -> _Numbered | bool:
    """Each row's labels text as sent ("" -> says nothing), checked (each
    distinct text once) and numbered; False if one is invalid."""
    if not any(texts):
        return None
    numbers: dict[str, int] = {}
    codes = np.fromiter(
        (numbers.setdefault(text, len(numbers)) for text in texts), dtype=np.int64, count=len(texts)
    )
    stored = _stored_labels(list(numbers))
    return False if stored is None else (codes, stored)


def _numbered_sets(sets: Sequence[str], codes: np.ndarray) -> _Numbered | bool:
    """Label sets as sent once (each checked once) and each row's index
    into them; False if one is invalid."""
    stored = _stored_labels(sets)
    if stored is None:
        return False
    if all(text is None for text in stored):
        return None
    return codes, stored


def _named_rows(
    kind: str,
    values: np.ndarray,
    qualities: np.ndarray | None,
    entries: Sequence[str],
    labels: _Numbered | bool,
) -> CheckedPlainRows | None:
    """The rows with their names and (numbered, checked) labels, or None
    (see plain_rows)."""
    if labels is False:
        return None
    codes, texts = labels or (None, None)
    names = value_order = None
    if any(entries):
        names = _entry_names(kind, entries, values)
        if names is None:
            return None
    elif codes is not None:
        # Named after their hashes: no names made here (the store makes
        # them from the values; 500k strings, a set and sort keys of them
        # were a fifth of the server's CPU), distinct when the values are.
        value_order = _value_order(values)
        if not value_order[1].all():
            return None  # an entry of several rows (labels merged): row by row
    return CheckedPlainRows(kind, values, qualities, names, codes, texts, value_order)


def _entry_names(kind: str, entries: Sequence[str], values: np.ndarray) -> list[str] | None:
    """Each row's entry name (its own, or "<kind>:<hex>"), when all are valid
    and no two rows name the same entry; else None. Some row has a name."""
    if all(entries):
        names = list(entries)
        if not validation.entry_names_valid(names):
            return None
    else:
        own = [name for name in entries if name]
        if not validation.entry_names_valid(own):
            return None
        derived = columns.names(f"{kind}:", values)
        names = [name or after for name, after in zip(entries, derived, strict=True)]
    if len(set(names)) != len(names):
        return None  # an entry of several rows (signals, labels merged): row by row
    return names


def _stored_labels(texts: Sequence[str]) -> list[str | None] | None:
    """Each row's labels as stored (checked and canonical JSON text, each
    distinct text checked once), None where a row says nothing; None when
    one is invalid."""
    stored: dict[str, str | None] = {"": None}
    for text in set(texts):
        if text not in stored:
            try:
                stored[text] = json.dumps(checked_row_labels(text), sort_keys=True)
            except RowError:
                return None
    return [stored[text] for text in texts]


def _numbered_beside(
    texts: Sequence[str], values: Sequence[str]
) -> tuple[_Numbered | bool, np.ndarray] | None:
    """Rows' labels texts numbered (as _numbered_texts) and their source
    ids (SOURCE_ID_LABEL; "": none) beside them, each checked a column at a
    time; None when a value is invalid or a set would hold too many labels
    with the id. A row's id wins over one its set says (the stores split
    that off the set: PlainSignals.label_set_rows)."""
    if len(values) != len(texts) or not validation.label_values_valid(values):
        return None
    numbered = _numbered_texts(texts)
    if numbered is False:
        return None
    sets = [] if numbered is None else numbered[1]
    for text in sets:
        if text is not None and len(parsed_labels(text).keys() | {SOURCE_ID_LABEL}) > (
            validation.MAX_LABELS
        ):
            return None
    if numbered is None:
        # no row has labels of its own: each says its source id alone
        numbered = np.zeros(len(texts), dtype=np.int64), [None]
    source_ids = np.empty(len(values), dtype=object)
    source_ids[:] = list(values)
    return numbered, source_ids


def _stored_labels_with(
    texts: Sequence[str], key: str, values: Sequence[str]
) -> list[str | None] | None:
    """As _stored_labels, each row's labels also saying key = values[row]
    (where not ""): each distinct text checked once and made a template
    with the key in its sorted place, each value checked a column at a time
    and put in (the stored text is exactly json.dumps(labels, sort_keys=True),
    as for any other row). None when one is invalid."""
    if len(values) != len(texts) or not validation.label_key_valid(key):
        return None
    if not validation.label_values_valid(values):
        return None
    plain_text = _stored_labels(texts)
    if plain_text is None:
        return None
    templates: dict[str, tuple[str, str]] = {}
    for text in set(texts):
        labels = checked_row_labels(text) if text else {}
        if len(labels.keys() | {key}) > validation.MAX_LABELS:
            return None
        items = sorted((k, v) for k, v in labels.items() if k != key)
        before = [f"{json.dumps(k)}: {json.dumps(v)}" for k, v in items if k < key]
        after = [f"{json.dumps(k)}: {json.dumps(v)}" for k, v in items if k > key]
        templates[text] = (
            "{" + "".join(f"{item}, " for item in before) + f"{json.dumps(key)}: ",
            "".join(f", {item}" for item in after) + "}",
        )
    # ids are digits (and commas) nearly always: quoted as they are
    quoted = (
        [f'"{value}"' for value in values]
        if _PLAIN_VALUE.fullmatch("".join(values))
        else [json.dumps(value) for value in values]
    )
    out: list[str | None] = []
    for text, value, stored, quoted_value in zip(texts, values, plain_text, quoted, strict=True):
        if value:
            head, tail = templates[text]
            out.append(head + quoted_value + tail)
        else:
            out.append(stored)
    return out


# Label values json.dumps() leaves as they are (inside quotes)
_PLAIN_VALUE = re.compile(r"[A-Za-z0-9 ,._:/-]*")


def _value_order(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The rows' order by value (stable), and in that order which rows are
    the first of their value. In numpy, which lets other threads run
    meanwhile (sorted() held the GIL, and so every Match, for 250 ms a run)."""
    width = rows.shape[1]
    padded = np.zeros((len(rows), -(-width // 8) * 8), dtype=np.uint8)
    padded[:, :width] = rows
    words = padded.view(">u8").astype(np.uint64)
    # by the first 8 bytes (4x faster than by all), unless two rows share them
    order = np.argsort(words[:, 0], kind="stable")
    if words.shape[1] > 1 and (np.diff(words[order, 0]) == 0).any():
        order = np.lexsort(words.T[::-1])  # the first word the primary key; stable
    ordered = words[order]
    first = np.ones(len(order), dtype=bool)
    first[1:] = (ordered[1:] != ordered[:-1]).any(axis=1)
    return order, first


def sorted_plain(parts: Sequence[CheckedPlainRows]) -> PlainSignals:
    """Rows of one kind_key as entries in name order, so the store's name
    index is written page by page. Plain rows: one entry a value (its first
    row wins, as in the row-by-row path), named after it. Labelled rows
    named after their hashes: one batch (BulkLoad._load writes each as it
    comes), whose values are distinct (_named_rows)."""
    if parts[0].names is not None:
        return _sorted_named(parts)
    kind = parts[0].kind
    rows = np.concatenate([p.values for p in parts]) if len(parts) > 1 else parts[0].values
    if len(parts) == 1 and parts[0].value_order is not None:
        order, first = parts[0].value_order
    else:
        order, first = _value_order(rows)
    keep = order[first]
    qualities = None
    if parts[0].qualities is not None:
        qualities = np.concatenate([p.qualities for p in parts])[keep]
    media_type = SINGLE_MEDIA_TYPE.get(kind, HASH)
    if parts[0].labelled:
        codes, texts = _joined_labels(parts)
        source_ids = _joined_source_ids(parts)
        return PlainSignals.numbered(
            kind,
            media_type,
            rows[keep],
            qualities,
            None,
            codes[keep],
            texts,
            None if source_ids is None else source_ids[keep],
        )
    return PlainSignals(kind, media_type, rows[keep], qualities)


def _joined_labels(parts: Sequence[CheckedPlainRows]) -> tuple[np.ndarray, list[str | None]]:
    """The parts' numbered labels as one numbering (part by part, in order)."""
    if len(parts) == 1:
        return parts[0].label_codes, parts[0].label_texts
    codes, texts = [], []
    for p in parts:
        codes.append(p.label_codes + len(texts))
        texts.extend(p.label_texts)
    return np.concatenate(codes), texts


def _joined_source_ids(parts: Sequence[CheckedPlainRows]) -> np.ndarray | None:
    """The parts' source ids as one column ("" for a part without), or None."""
    if all(p.source_ids is None for p in parts):
        return None
    return np.concatenate(
        [
            np.full(len(p.values), "", dtype=object) if p.source_ids is None else p.source_ids
            for p in parts
        ]
    )


# Named rows are sorted by the first bytes of their names: the order only
# makes the name index's writes local, and a fixed width keeps it in numpy.
_NAME_SORT_BYTES = 48


def _sorted_named(parts: Sequence[CheckedPlainRows]) -> PlainSignals:
    """Named rows (names unique across the parts: one batch, see BulkLoad._load)."""
    kind = parts[0].kind
    rows = np.concatenate([p.values for p in parts]) if len(parts) > 1 else parts[0].values
    names = np.array([name for p in parts for name in p.names], dtype=object)
    keys = np.array(
        [name.encode()[:_NAME_SORT_BYTES] for name in names.tolist()],
        dtype=f"S{_NAME_SORT_BYTES}",
    )
    # in name order whatever the labels (the stores write a label set of
    # many rows in the same statement as the others), so that each short
    # write inserts into a narrow slice of the name index
    order = np.argsort(keys, kind="stable")
    qualities = None
    if parts[0].qualities is not None:
        qualities = np.concatenate([p.qualities for p in parts])[order]
    media_type = SINGLE_MEDIA_TYPE.get(kind, HASH)
    if parts[0].labelled:
        codes, texts = _joined_labels(parts)
        source_ids = _joined_source_ids(parts)
        return PlainSignals.numbered(
            kind,
            media_type,
            rows[order],
            qualities,
            names[order],
            codes[order],
            texts,
            None if source_ids is None else source_ids[order],
        )
    return PlainSignals(kind, media_type, rows[order], qualities, names[order])
