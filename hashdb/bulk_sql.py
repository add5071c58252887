"""Bulk writes for loading hash lists: many entries per transaction.

`bulk_upsert` is idempotent by entry name (the external id): an entry that is
already there with the same labels and signals is left alone, one whose labels
differ (or that gains signals) is updated, a tombstone removes it. Each write
still records one change per entry, so every replica's index follows the feed
incrementally. One call is one transaction: a load killed between calls keeps
every batch it committed and loses none of them half-way.

Mixed into SQLStore; the dialect differences (name lookups, COPY, id ranges)
are hooks that hashdb/sqlite.py and hashdb/postgres.py override.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from hashdb import columns
from hashdb.label_sets import (
    NO_LABELS,
    SOURCE_ID_LABEL,
    joined_text,
    parsed_labels,
    split_labels,
    split_text,
)
from hashdb.model import IndexedSignal
from hashdb.times import now_micros
from hashsvc.base.signals import Signal

# The entries one bulk write creates are one change row, not one each (a row
# a hash was a quarter of a load's writes and of every replica's catch-up):
# op "add_entries:<last id>", entry_id the first; their ids are consecutive.
ADD_RANGE = "add_entries:"


def added_range(op: str, first_id: int) -> range | None:
    """The entry ids an "add_entries" change adds; None for other ops."""
    if not op.startswith(ADD_RANGE):
        return None
    return range(first_id, int(op[len(ADD_RANGE) :]) + 1)


# A video's frames are signals too: 1 per second of a 24-hour video fits.
MAX_SIGNALS_PER_ENTRY = 100_000

# Runs of at least this many consecutive entry ids are read as one range.
_SPAN = 16


@dataclass(frozen=True)
class EntryUpsert:
    """One entry as a load wants it: labels None keeps an existing entry's."""

    name: str
    signals: Sequence[Signal] = ()
    labels: dict[str, str] | None = None
    media_type: str = "hash"
    deleted: bool = False


@dataclass
class PlainSignals:
    """Entries of one signal each, all of one fixed-length type: a hash list
    as arrays, a feed's too. Without entry_names each entry is named after
    its signal ("<kind>:<hex>") and the values are unique and sorted (so the
    name index is written page by page); with them, the names are unique and
    sorted. Without labels the rows say nothing about labels."""

    kind: str
    media_type: str
    values: np.ndarray  # (n, width) uint8
    qualities: np.ndarray | None = None  # int16, -1 = none; None: no row has one
    # object arrays of n: each entry's name; its labels as JSON text
    # (json.dumps(labels, sort_keys=True), the stored form) or None: the row
    # says nothing (a new entry has none, an existing one keeps its own).
    entry_names: np.ndarray | None = None
    labels: np.ndarray | None = None
    # the labels numbered (label_codes): given by the caller that numbered
    # them already (a load's label sets), or made once
    _codes: tuple[np.ndarray, list[str]] | None = field(default=None, repr=False)
    # object array of n: each row's source id (label_sets.SOURCE_ID_LABEL)
    # beside its labels text, or "": the text says all (a feed's rows share
    # a few label sets and each has an id of its own); None: no row has one
    source_ids: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.values)

    def __getitem__(self, part: slice | np.ndarray) -> PlainSignals:
        return PlainSignals(
            self.kind,
            self.media_type,
            self.values[part],
            None if self.qualities is None else self.qualities[part],
            None if self.entry_names is None else self.entry_names[part],
            None if self.labels is None else self.labels[part],
            None if self._codes is None else (self._codes[0][part], self._codes[1]),
            None if self.source_ids is None else self.source_ids[part],
        )

    @classmethod
    def numbered(
        cls,
        kind: str,
        media_type: str,
        values: np.ndarray,
        qualities: np.ndarray | None,
        entry_names: np.ndarray | None,
        codes: np.ndarray,
        texts: Sequence[str | None],
        source_ids: np.ndarray | None = None,
    ) -> PlainSignals:
        """Rows whose labels are label sets, numbered: row k's are
        texts[codes[k]] (stored JSON text, or None: the row says nothing),
        with source_ids[k] too when given and not "". Each row's text is
        shared, not copied, and the stores take the numbers as they are (no
        look-up a row)."""
        table = np.empty(len(texts), dtype=object)
        table[:] = list(texts)
        stored = [NO_LABELS if text is None else text for text in texts]
        return cls(
            kind,
            media_type,
            values,
            qualities,
            entry_names,
            table[codes],
            (np.asarray(codes, dtype=np.int64), stored),
            source_ids,
        )

    @property
    def name_prefix(self) -> str:
        return f"{self.kind}:"

    @property
    def named_after_values(self) -> bool:
        """Each entry named after its signal and saying nothing about labels:
        the stores write such rows from the values alone."""
        return self.entry_names is None and self.labels is None and self.source_ids is None

    def names(self) -> list[str]:
        """The entries' names (by default "<kind>:<hex>", as bulk.py names them)."""
        if self.entry_names is not None:
            return self.entry_names.tolist()
        return columns.names(self.name_prefix, self.values)

    def stored_labels(self) -> list[str]:
        """Each new entry's labels text as the row gives it ("{}" where the
        row says nothing), without its source id."""
        if self.labels is None:
            return [NO_LABELS] * len(self)
        return [text or NO_LABELS for text in self.labels.tolist()]

    def source_id(self, row: int) -> str | None:
        """The row's own source id, given beside its labels text; None: none."""
        if self.source_ids is None:
            return None
        return self.source_ids[row] or None

    def row_labels(self, row: int) -> dict[str, str] | None:
        """The row's labels (a shared dict: not to be changed), or None."""
        text = None if self.labels is None else self.labels[row]
        source_id = self.source_id(row)
        if source_id is not None:
            return {**(parsed_labels(text) if text else {}), SOURCE_ID_LABEL: source_id}
        return None if text is None else parsed_labels(text)

    def row_labels_text(self, row: int) -> str | None:
        """The row's labels as one canonical text, or None: it says nothing."""
        text = None if self.labels is None else self.labels[row]
        source_id = self.source_id(row)
        if source_id is not None:
            return joined_text(text or NO_LABELS, source_id)
        return text

    def label_codes(self) -> tuple[np.ndarray, list[str]]:
        """Each row's labels text (without its own source id) as a number
        (in order of first appearance), and the texts they number. A dict
        look-up a row: an array of the texts themselves cost 8x as much to
        build and sort."""
        if self._codes is None:
            if self.labels is None:
                self._codes = np.zeros(len(self), dtype=np.int64), [NO_LABELS]
                return self._codes
            texts = self.stored_labels()
            distinct = list(dict.fromkeys(texts))
            numbered = {text: code for code, text in enumerate(distinct)}
            codes = np.fromiter(map(numbered.__getitem__, texts), dtype=np.int64, count=len(self))
            self._codes = codes, distinct
        codes, texts = self._codes
        if len(texts) > 1:
            # A part of a run (rows[a:b]) keeps the run's whole numbering,
            # and a run may hold a label set a row (a file whose labels
            # carry an id each): a write of 2,000 such rows staged the
            # 20,000 sets of its batch. Only the sets these rows use,
            # numbered again.
            used, codes = np.unique(codes, return_inverse=True)
            if len(used) < len(texts):
                self._codes = codes.astype(np.int64), [texts[k] for k in used.tolist()]
        return self._codes

    def label_set_rows(self) -> tuple[np.ndarray, list[str], np.ndarray | None]:
        """The rows' labels as the stores write them: each row's label set
        (a number), the distinct sets' texts without source ids, and each
        row's source id (an object array, None where it has none; None when
        no row has one). A text that holds a source id itself (a file whose
        labels carry one a row) gives it to its rows and shares the rest."""
        codes, texts = self.label_codes()
        split = [split_text(text) for text in texts]
        sets = list(dict.fromkeys(set_text for set_text, _ in split))
        set_codes = codes
        if len(sets) < len(texts):
            number = {text: code for code, text in enumerate(sets)}
            renumber = np.array([number[set_text] for set_text, _ in split], dtype=np.int64)
            set_codes = renumber[codes]
        source_ids = None
        own = [source_id for _, source_id in split]
        if any(source_id is not None for source_id in own):
            table = np.empty(len(own), dtype=object)
            table[:] = own
            source_ids = table[codes]
        if self.source_ids is not None:
            given = self.source_ids
            fallback = np.full(len(self), None, dtype=object) if source_ids is None else source_ids
            source_ids = np.where(given == "", fallback, given)
            if all(source_id is None for source_id in source_ids.tolist()):
                source_ids = None
        return set_codes, sets, source_ids

    def quality(self, row: int) -> int | None:
        if self.qualities is None or self.qualities[row] < 0:
            return None
        return int(self.qualities[row])


@dataclass
class AddedSignals:
    """What a bulk write created: entries with consecutive ids from first_id,
    each with its one signal (variant 0), so the index can take them without
    reading them back."""

    kind: str
    first_id: int = 0
    values: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=np.uint8))
    noted: float = 0.0  # monotonic time, set by LiveIndex.note_added

    def __len__(self) -> int:
        return len(self.values)


@dataclass
class BulkCounts:
    added: int = 0
    updated: int = 0
    removed: int = 0
    unchanged: int = 0
    # entry name -> signals not added: the entry holds MAX_SIGNALS_PER_ENTRY
    over_limit: dict[str, int] = field(default_factory=dict)

    def __iadd__(self, other: BulkCounts) -> BulkCounts:
        self.added += other.added
        self.updated += other.updated
        self.removed += other.removed
        self.unchanged += other.unchanged
        for name, count in other.over_limit.items():
            self.over_limit[name] = self.over_limit.get(name, 0) + count
        return self


def _signal_key(kind: str, value: bytes, variant: str) -> tuple[str, bytes, str]:
    return kind, bytes(value), variant


def _same_labels(stored: str, wanted: str, wanted_labels: dict | None = None) -> bool:
    """Whether stored labels text says what `wanted` (text, parsed as
    wanted_labels if given) says; the same text is the common case."""
    if stored == wanted:
        return True
    return parsed_labels(stored) == (
        parsed_labels(wanted) if wanted_labels is None else wanted_labels
    )


class BulkSQL:
    """Needs the SQLStore attributes _write() and _read(); each store class
    (hashdb/sqlite.py, hashdb/postgres.py) overrides the dialect hooks below,
    which is all that differs between them here."""

    # About how long one bulk write transaction should take (Store.bulk_write_seconds).
    bulk_write_seconds: float

    # -- dialect hooks

    def _in_list(self, column: str) -> str:
        """SQL for `column IN <one list parameter>` in this dialect."""
        raise NotImplementedError

    def _list_param(self, values: list):
        """The one parameter _in_list takes."""
        raise NotImplementedError

    def _insert_rows(self, cur, table: str, columns: str, rows: list[tuple]) -> None:
        """Inserts the rows (tuples in `columns` order); none is fine."""
        raise NotImplementedError

    def _existing(self, cur, set_id: int, names: list[str]) -> dict[str, tuple[int, str]]:
        """name -> (id, labels text) of the set's active entries among names
        (label_sets.joined_text of their set and source id)."""
        raise NotImplementedError

    def _label_set_ids(self, cur, texts: list[str]) -> dict[str, int]:
        """Each label set text's id in label_sets, the new ones added, inside
        the caller's write transaction."""
        raise NotImplementedError

    def _reserve_entry_ids(self, cur, count: int) -> int:
        """The first of `count` (> 0) new consecutive entry ids, inside the
        caller's write transaction."""
        raise NotImplementedError

    def _insert_plain(self, cur, set_id, rows: PlainSignals, first_id, at, added_by) -> None:
        """New entries first_id, first_id + 1, ... and their one signal each."""
        raise NotImplementedError

    def _begin_bulk_write(self, cur) -> None:
        """Called first in each bulk write transaction."""

    def _before_plain_write(self) -> None:
        """Called before the transaction of a plain write (_add_plain)."""

    def _bulk_written(self, cur, changed: bool) -> None:
        """Called last in each bulk write transaction; `changed`: it recorded
        changes."""

    def _note_in_write(self, added: AddedSignals, noted) -> None:
        """Tells `noted` (if any) what a plain write creates, inside its
        transaction, where the store wants it then (see bulk_add_plain)."""

    def _note_after_write(self, added: AddedSignals, noted) -> None:
        """Tells `noted` (if any) what a plain write created, after its
        commit, where the store wants it then (see bulk_add_plain)."""

    def _after_bulk_write(self) -> None:
        """Called after each bulk write's commit."""

    # -- ids

    def _new_entry_ids(self, cur, count: int) -> list[int]:
        first = self._new_entry_range(cur, count)
        return list(range(first, first + count))

    def _new_entry_range(self, cur, count: int) -> int:
        """The first of `count` new consecutive entry ids."""
        if not count:
            return 0
        return self._reserve_entry_ids(cur, count)

    # -- the bulk write

    def bulk_upsert(
        self, set_id: int, entries: Iterable[EntryUpsert], added_by: str, now: int | None = None
    ) -> BulkCounts:
        wanted = {e.name: e for e in entries}  # the last word on a name wins
        counts = BulkCounts()
        if not wanted:
            return counts
        at = now or now_micros()
        with self._write() as cur:
            self._begin_bulk_write(cur)
            existing = self._existing(cur, set_id, list(wanted))
            new_entries, new_signals, changes = [], [], []
            # In name order: the name and value indexes are then written page by
            # page instead of at random (2x faster on a large SQLite set).
            fresh = sorted(
                (e for name, e in wanted.items() if name not in existing and not e.deleted),
                key=lambda e: e.name,
            )
            stored = [split_labels(e.labels) for e in fresh]
            set_ids = self._label_set_ids(cur, list({text for text, _ in stored}))
            for entry_id, e, (set_text, source_id) in zip(
                self._new_entry_ids(cur, len(fresh)), fresh, stored, strict=True
            ):
                new_entries.append(
                    (
                        entry_id,
                        set_id,
                        e.name,
                        set_ids[set_text],
                        source_id,
                        e.media_type,
                        at,
                        added_by,
                    )
                )
                new_signals.extend(
                    (entry_id, no, s.kind, s.variant, bytes(s.value), s.quality, s.position)
                    for no, s in enumerate(e.signals)
                )
            if new_entries:
                first, last = new_entries[0][0], new_entries[-1][0]
                changes.append((f"{ADD_RANGE}{last}", set_id, first, at))
            counts.added = len(fresh)
            counts.unchanged = sum(
                1 for name, e in wanted.items() if name not in existing and e.deleted
            )  # tombstones of names not there: nothing to remove
            self._insert_rows(
                cur,
                "entries",
                "id, set_id, name, label_set_id, source_id, media_type, created_at, added_by",
                new_entries,
            )
            self._insert_rows(
                cur,
                "entry_signals",
                "entry_id, variant_no, kind, variant, value, quality, position",
                new_signals,
            )
            self._insert_rows(cur, "changes", "op, set_id, entry_id, at", changes)
            counts += self._upsert_existing(
                cur, set_id, existing, [e for name, e in wanted.items() if name in existing], at
            )
            self._bulk_written(cur, bool(counts.added or counts.updated or counts.removed))
        self._after_bulk_write()
        return counts

    def _upsert_existing(
        self, cur, set_id: int, existing: dict, entries: list[EntryUpsert], at: int
    ) -> BulkCounts:
        """Updates and removals of entries already in the set (`existing`: name
        -> (id, labels text)), inside the caller's transaction."""
        counts = BulkCounts()
        if not entries:
            return counts
        known_signals = self._signals_by_entry(
            cur, [existing[e.name][0] for e in entries if not e.deleted]
        )
        new_signals, label_updates, removals, changes = [], [], [], []
        for e in entries:
            entry_id, labels_text = existing[e.name]
            if e.deleted:
                removals.append((at, entry_id))
                changes.append(("remove_entry", set_id, entry_id, at))
                counts.removed += 1
                continue
            changed = False
            if e.labels is not None:
                labels_json = json.dumps(e.labels, sort_keys=True)
                if not _same_labels(labels_text, labels_json, e.labels):
                    label_updates.append((*split_labels(e.labels), entry_id))
                    changed = True
            have, next_no = known_signals.get(entry_id, (set(), 0))
            for s in e.signals:
                key = _signal_key(s.kind, s.value, s.variant)
                if key in have:
                    continue
                if len(have) >= MAX_SIGNALS_PER_ENTRY:
                    counts.over_limit[e.name] = counts.over_limit.get(e.name, 0) + 1
                    continue
                have.add(key)
                new_signals.append(
                    (entry_id, next_no, s.kind, s.variant, bytes(s.value), s.quality, s.position)
                )
                next_no += 1
                changed = True
            if changed:
                changes.append(("update_entry", set_id, entry_id, at))
                counts.updated += 1
            else:
                counts.unchanged += 1
        self._insert_rows(
            cur,
            "entry_signals",
            "entry_id, variant_no, kind, variant, value, quality, position",
            new_signals,
        )
        if label_updates:
            set_ids = self._label_set_ids(cur, list({text for text, _, _ in label_updates}))
            cur.executemany(
                "UPDATE entries SET label_set_id = ?, source_id = ? WHERE id = ?",
                [
                    (set_ids[text], source_id, entry_id)
                    for text, source_id, entry_id in label_updates
                ],
            )
        if removals:
            cur.executemany("UPDATE entries SET removed_at = ? WHERE id = ?", removals)
        self._insert_rows(cur, "changes", "op, set_id, entry_id, at", changes)
        return counts

    def bulk_add_plain(
        self,
        set_id: int,
        rows: PlainSignals,
        added_by: str,
        now: int | None = None,
        expect_new: bool = False,
        noted: Callable[[AddedSignals], None] | None = None,
    ) -> tuple[BulkCounts, AddedSignals]:
        """bulk_upsert for a hash list of one signal an entry (plain, or a
        feed's names and labels), without an object per row: new
        names are inserted column-wise, names already in the set go through
        the general path (they may gain the signal). One transaction.

        expect_new: the caller expects none of the names to be there (the
        previous write of a load found none), so they are not looked up
        first: the unique name index checks each as it is inserted, and a
        name already there fails the insert (a rerun of a loaded file fails
        at its first row), which is then written as without expect_new.

        noted: told what the write creates once it is sure to be seen with
        its change (LiveIndex.note_added). On PostgreSQL that is just before
        COMMIT: the change poller, woken by the commit's NOTIFY, otherwise
        raced the caller and read every new signal back from the database.
        Ids come from a sequence there and are never reused, so the note of
        a write that then fails is never used. On SQLite, where a failed
        write's ids are used again, it is after COMMIT."""
        if not len(rows):
            return BulkCounts(), AddedSignals(rows.kind)
        at = now or now_micros()
        # Otherwise which names are there is read before the write
        # transaction, which is then shorter (on SQLite a Match's history
        # write waits for it). Inside, only the names found are checked
        # again; a name another writer added meanwhile fails the insert, and
        # the write is redone with every name checked inside.
        written = None
        if expect_new:
            try:
                written = self._add_plain(set_id, rows, added_by, at, set(), noted)
            except self._unique_violation:
                pass  # some are there: looked up first after all
        unchanged = 0
        if written is None:
            with self._read() as cur:
                # A rerun or resume: rows whose entry is there with this very
                # signal change nothing and need no write (one read of the
                # names and signals instead of an upsert each: 2-3x faster).
                there, found = self._already_there(cur, set_id, rows)
                if there.any():
                    unchanged = int(there.sum())
                    rows = rows[~there]
        if written is None and not len(rows):
            return BulkCounts(unchanged=unchanged), AddedSignals(rows.kind)
        if written is None:
            try:
                written = self._add_plain(set_id, rows, added_by, at, found, noted)
            except self._unique_violation:
                written = self._add_plain(set_id, rows, added_by, at, None, noted)
        written[0].unchanged += unchanged
        self._note_after_write(written[1], noted)
        self._after_bulk_write()
        return written

    def _already_there(self, cur, set_id: int, rows: PlainSignals) -> tuple[np.ndarray, set[str]]:
        """Which rows' entries (by name) are active in the set and already hold
        the row's signal (as variant "original"), and the names of the other
        rows' entries that are there. Two lookups by key, whatever the
        planner's statistics say (a single join with the signals scanned the
        whole table for every name while a load had left them stale)."""
        names = rows.names()
        existing = self._existing(cur, set_id, names)
        there = np.zeros(len(rows), dtype=bool)
        if not existing:
            return there, set()
        cur.execute(
            "SELECT entry_id, value FROM entry_signals"
            f" WHERE {self._in_list('entry_id')} AND kind = ? AND variant = 'original'",
            (self._list_param([entry_id for entry_id, _ in existing.values()]), rows.kind),
        )
        held = {(entry_id, bytes(value)) for entry_id, value in cur.fetchall()}
        for row, name in enumerate(names):
            found = existing.get(name)
            if found is not None and (found[0], rows.values[row].tobytes()) in held:
                # ... and its labels, when the row says what they are
                wanted = rows.row_labels_text(row)
                there[row] = wanted is None or _same_labels(found[1], wanted)
        return there, {
            name
            for name, row_there in zip(names, there, strict=True)
            if not row_there and name in existing
        }

    def _add_plain(
        self, set_id, rows: PlainSignals, added_by, at, found: set[str] | None, noted=None
    ):
        counts = BulkCounts()
        self._before_plain_write()
        with self._write() as cur:
            self._begin_bulk_write(cur)
            existing = {}
            if found is None or found:
                names = rows.names()
                checked = names if found is None else [n for n in names if n in found]
                existing = self._existing(cur, set_id, checked)
            if existing:
                old = [i for i, name in enumerate(names) if name in existing]
                counts += self._upsert_existing(
                    cur,
                    set_id,
                    existing,
                    [
                        EntryUpsert(
                            names[i],
                            [Signal(rows.kind, rows.values[i].tobytes(), rows.quality(i))],
                            rows.row_labels(i),
                            rows.media_type,
                        )
                        for i in old
                    ],
                    at,
                )
                keep = np.ones(len(rows), dtype=bool)
                keep[old] = False
                rows = rows[keep]
            first_id = self._new_entry_range(cur, len(rows))
            counts.added = len(rows)
            if len(rows):
                self._insert_plain(cur, set_id, rows, first_id, at, added_by)
                cur.execute(
                    "INSERT INTO changes (op, set_id, entry_id, at) VALUES (?, ?, ?, ?)",
                    (f"{ADD_RANGE}{first_id + len(rows) - 1}", set_id, first_id, at),
                )
            added = AddedSignals(rows.kind, first_id, rows.values)
            self._bulk_written(cur, bool(counts.added or counts.updated))
            self._note_in_write(added, noted)  # see bulk_add_plain
        return counts, added

    def _signals_by_entry(self, cur, entry_ids: list[int]) -> dict[int, tuple[set, int]]:
        """entry id -> (its signal keys, the next free variant number)."""
        out: dict[int, tuple[set, int]] = {}
        if not entry_ids:
            return out
        cur.execute(
            "SELECT entry_id, kind, value, variant, variant_no FROM entry_signals"
            f" WHERE {self._in_list('entry_id')}",
            (self._list_param(entry_ids),),
        )
        for entry_id, kind, value, variant, variant_no in cur.fetchall():
            keys, next_no = out.get(entry_id, (set(), 0))
            keys.add(_signal_key(kind, value, variant))
            out[entry_id] = (keys, max(next_no, variant_no + 1))
        return out

    # -- reading for the index and for export

    def indexed_signals(self, entry_ids: Iterable[int]) -> list[IndexedSignal]:
        """Signals of those entries that are still active, by entry and variant:
        what the in-memory index needs, without building entry records.
        Consecutive ids (a bulk write's entries) are read as ranges of the
        primary key instead of id by id, on both tables; whether an entry is
        active is read, not asked in the WHERE clause: PostgreSQL without
        statistics after a large load (none yet) read the whole partial index
        of active names for it (1,000 entries after a 500k load: 1.6 s)."""
        spans, singles = _spans_and_singles(entry_ids)
        query = (
            "SELECT s.entry_id, s.variant_no, s.kind, s.value, e.removed_at IS NULL"
            " FROM entry_signals s JOIN entries e ON e.id = s.entry_id WHERE {} AND {}"
            " ORDER BY s.entry_id, s.variant_no"
        )
        out: list[IndexedSignal] = []

        def active(rows) -> Iterator[IndexedSignal]:
            return (IndexedSignal(e, n, k, bytes(v)) for e, n, k, v, ok in rows if ok)

        with self._read() as cur:
            for lo, hi in spans:
                cur.execute(
                    query.format("s.entry_id BETWEEN ? AND ?", "e.id BETWEEN ? AND ?"),
                    (lo, hi, lo, hi),
                )
                out.extend(
                    IndexedSignal(e, n, k, bytes(v)) for e, n, k, v, a in cur.fetchall() if a
                )
            for start in range(0, len(singles), 50_000):
                ids = self._list_param(singles[start : start + 50_000])
                cur.execute(
                    query.format(self._in_list("s.entry_id"), self._in_list("e.id")), (ids, ids)
                )
                out.extend(
                    IndexedSignal(e, n, k, bytes(v)) for e, n, k, v, a in cur.fetchall() if a
                )
        if spans and singles:
            out.sort(key=lambda sig: (sig.entry_id, sig.variant_no))
        return out

    def active_entries_by_set(self, entry_ids: Iterable[int]) -> dict[int, list[int]]:
        """Set id -> the active ones of the entries, in id order. A load's
        entries (consecutive ids) are read as ranges of the primary key, two
        integers a row: reading an entry record each took 8 us a row (4 s of
        CPU after a 500k-row load, twice the load's own writes). Whether an
        entry is active is read, not asked in the WHERE clause: PostgreSQL
        without statistics after a large load (none yet) ANDed the id range
        with the partial index of active names, reading all of it (0.23 s at
        500k entries for a feed's 1,000 new ones, ~0.7 s at 1M)."""
        spans, singles = _spans_and_singles(entry_ids)
        query = "SELECT id, set_id, removed_at IS NULL FROM entries WHERE {}"
        rows: list[tuple[int, int, bool]] = []
        whole: list[tuple[int, range]] = []
        with self._read() as cur:
            for lo, hi in spans:
                # A range all active in one set (a load's, unless something
                # was removed since) is counted, not read row by row.
                cur.execute(
                    "SELECT set_id, SUM(CASE WHEN removed_at IS NULL THEN 1 ELSE 0 END)"
                    " FROM entries WHERE id BETWEEN ? AND ? GROUP BY set_id",
                    (lo, hi),
                )
                counts = cur.fetchall()
                if len(counts) == 1 and counts[0][1] == hi - lo + 1:
                    whole.append((counts[0][0], range(lo, hi + 1)))
                    continue
                cur.execute(query.format("id BETWEEN ? AND ?"), (lo, hi))
                rows.extend(cur.fetchall())
            for start in range(0, len(singles), 50_000):
                cur.execute(
                    query.format(self._in_list("id")),
                    (self._list_param(singles[start : start + 50_000]),),
                )
                rows.extend(cur.fetchall())
        out: dict[int, list[int]] = {}
        for entry_id, set_id, active in rows:
            if active:
                out.setdefault(set_id, []).append(entry_id)
        for set_id, ids in whole:
            out.setdefault(set_id, []).extend(ids)
        for ids in out.values():
            ids.sort()
        return out

    def entries_changed_since(self, set_id: int, since: int) -> list[int]:
        """Ids of the set's entries added, updated or removed at or after
        `since` (microseconds), in id order."""
        with self._read() as cur:
            cur.execute(
                "SELECT DISTINCT op, entry_id FROM changes WHERE set_id = ? AND at >= ?"
                " AND entry_id IS NOT NULL",
                (set_id, since),
            )
            ids: set[int] = set()
            for op, entry_id in cur.fetchall():
                added = added_range(op, entry_id)
                if added is None:
                    ids.add(entry_id)
                else:
                    ids.update(added)
            return sorted(ids)


def _spans_and_singles(entry_ids: Iterable[int]) -> tuple[list[tuple[int, int]], list[int]]:
    """Runs of at least _SPAN consecutive ids as (first, last), and the other ids."""
    ids = columns.unique_ids(np.fromiter(entry_ids, dtype=np.int64))
    breaks = np.flatnonzero(np.diff(ids) != 1) + 1
    starts, ends = np.r_[0, breaks], np.r_[breaks, len(ids)]
    spans = [
        (int(ids[a]), int(ids[b - 1])) for a, b in zip(starts, ends, strict=True) if b - a >= _SPAN
    ]
    singles = [
        int(ids[i]) for a, b in zip(starts, ends, strict=True) if b - a < _SPAN for i in range(a, b)
    ]
    return spans, singles
