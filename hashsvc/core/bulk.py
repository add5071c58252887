"""Bulk loading of precomputed hashes into a set: the core of the BulkLoad RPC,
testable without a network.

Rows arrive in batches, column by column (`RowBatch`). Each row is checked
again here (the client's loader checked it too, but the server trusts no
client); bad rows are reported with their line and reason and the good ones
load. Rows are grouped into entries by external id (a row without one is an
entry of its own, named after its signal), and each batch is one store
transaction followed by an index catch-up, so what was committed matches at
once and a load killed at any point can simply be run again.

With `strict`, rows are only checked while they arrive and written when the
stream has ended without a single bad row. Meanwhile the checked batches wait
in a temporary file, not in memory (held as Python objects, 1M rows took
+874 MB at peak and the server kept 335 MB of it afterwards).
"""

from __future__ import annotations

import contextlib
import math
import pickle
import tempfile
import threading
import time
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Protocol

from hashdb import BulkStore, EntryLookup
from hashdb.bulk_sql import MAX_SIGNALS_PER_ENTRY, BulkCounts, PlainSignals
from hashsvc.base.errors import InvalidArgument, TooLarge, quoted
from hashsvc.base.media_kinds import is_exchanged
from hashsvc.base.signals import SIGNAL_TYPES, Signal
from hashsvc.core.bulk_rows import (
    BulkResult,
    CheckedPlainRows,
    EntryGroup,
    PackedRows,
    RejectedRow,
    RowBatch,
    RowError,
    checked_row_labels,
    plain_rows,
    row_entry_name,
    row_label_added,
    row_value,
    sorted_plain,
)
from hashsvc.core.signal_values import DEFAULT_MAX_KEYPOINTS
from hashsvc.index.binary import split_signal_id
from hashsvc.index.live import LiveIndex

# Rows one batch (one message, one transaction) may hold.
MAX_BATCH_ROWS = 200_000
# A strict load holds its rows until the end (on disk, ~40-150 bytes a row):
# bounded.
MAX_STRICT_ROWS = 5_000_000
# Entries per store transaction (a Match waits at most for one on SQLite).
WRITE_CHUNK = 4_000
# A plain hash list is written in transactions of about the store's
# bulk_write_seconds, their size following the measured rate within these bounds.
MIN_WRITE_ROWS = 1_000
MAX_WRITE_ROWS = 50_000
# ... and in value (= name) order, this many rows at a time: each transaction
# then writes a narrow slice of the name index, page after page, instead of a
# random page a row (at 1M rows on SQLite, 1/10 of the pages and WAL: 17k ->
# 88k rows/s bare). Rows wait in memory meanwhile (~70 bytes each).
SORT_ROWS = 250_000
# While plain runs are written, a follower thread brings the index up to
# what they committed, at most this often: each catch-up rebuilds the index's
# open segment, so fewer and bigger ones cost less (at 0.05 s the index took
# half as much CPU again as the store's writes).
FOLLOW_SECONDS = 0.25
# Threads that write plain runs while their loads receive the next, and
# follow the writes with the index: two a load (shared by all loads, so their
# store connections are reused).
_WRITERS = ThreadPoolExecutor(max_workers=8, thread_name_prefix="bulk-writer")
# The answer lists this many rejected rows (all are counted).
MAX_REPORTED_REJECTS = 1_000


class BulkLoad:
    """One load into one set: add_batch() for each batch, then finish()."""

    def __init__(
        self,
        bulk: BulkStore,
        entries: EntryLookup,
        live: LiveIndex,
        set_id: int,
        added_by: str,
        strict: bool = False,
        spool_dir: str = "",
        max_keypoints: int = DEFAULT_MAX_KEYPOINTS,
    ) -> None:
        self.max_keypoints = max_keypoints  # of a local_features row's blob
        self.bulk = bulk
        self.entries = entries
        self.live = live
        self.set_id = set_id
        self.added_by = added_by
        self.strict = strict
        self.result = BulkResult()
        # strict: the checked batches, written at the end. The file has no
        # name (deleted when closed, or when the process dies) and only this
        # load writes it, so what it reads back is what it checked.
        self._spool = tempfile.TemporaryFile(dir=spool_dir or None) if strict else None
        self._held_rows = 0
        self._write_rows = WRITE_CHUNK  # plain lists: rows per transaction, tuned as it goes
        self._expect_new = True  # plain lists: see BulkStore.bulk_add_plain
        self._pending: list[CheckedPlainRows] = []  # plain rows waiting to be sorted and written
        self._pending_rows = 0
        self._writing: Future | None = None  # the sorted run being written, see _flush_plain
        self._following: Future | None = None  # the index follower, see _follow
        self._committed = threading.Event()  # the writer committed rows
        self._done = threading.Event()  # the follower stops
        self._result_lock = threading.Lock()  # the writer thread counts too

    def add_batch(self, batch: RowBatch | PackedRows) -> None:
        if len(batch) > MAX_BATCH_ROWS:
            raise TooLarge(f"a batch may hold at most {MAX_BATCH_ROWS} rows")
        if isinstance(batch, RowBatch) and len(batch.value) != len(batch):
            raise InvalidArgument("every row needs a signal type and a value")
        if isinstance(batch, RowBatch) and len(batch.label_values) not in (0, len(batch)):
            raise InvalidArgument("every row needs a label value, or none does")
        self.result.rows += len(batch)
        if self.strict:
            self._check_and_hold(batch)
        else:
            self._load(batch)

    def _check_and_hold(self, batch: RowBatch | PackedRows) -> None:
        """Strict: the batch's rows are checked (bad ones rejected, as they
        would be when written) and the batch is spooled to be written by
        finish(); what checking it built is dropped."""
        if self._spool is None:
            raise InvalidArgument("this load was abandoned")
        self._held_rows += len(batch)
        if self._held_rows > MAX_STRICT_ROWS:
            raise TooLarge(f"a strict load holds at most {MAX_STRICT_ROWS} rows")
        if plain_rows(batch) is None:  # a plain hash list passed its checks there
            for _ in self._grouped(_row_batch(batch)):
                pass
        pickle.dump(batch, self._spool, protocol=pickle.HIGHEST_PROTOCOL)

    def _held_batches(self) -> Iterable[RowBatch | PackedRows]:
        self._spool.seek(0)
        while True:
            try:
                yield pickle.load(self._spool)
            except EOFError:
                return

    def _load(self, batch: RowBatch | PackedRows) -> None:
        plain = plain_rows(batch)
        if plain is not None:
            if self._pending and self._pending[0].kind_key != plain.kind_key:
                self._flush_plain()
            self._pending.append(plain)
            self._pending_rows += len(plain.values)
            # A batch of named rows (a feed's) is written as it arrives, as
            # rows of entries always were: a load that fails keeps what
            # arrived before, and names repeated in a later batch update
            # what this one wrote, in order. So are labelled rows named
            # after their hashes (their batches are larger: see the client's
            # HASH_NAMED_BATCH_ROWS).
            if plain.names is not None or plain.labelled or self._pending_rows >= SORT_ROWS:
                self._flush_plain()
            return
        self._flush_plain()  # rows are written in the order they came
        self.wait_for_writer()
        for groups in self._grouped(_row_batch(batch)):
            self._write(groups)

    def finish(self) -> BulkResult:
        if self.strict:
            if self._spool is None:
                raise InvalidArgument("this load was abandoned")
            # Every row was checked before this, except against the signal
            # limit of an entry already in the set: such rows are rejected as
            # they are written, and the answer still says the load was written.
            self.result.written = not self.result.rejected_count
            try:
                if self.result.written:
                    for batch in self._held_batches():
                        self._load(batch)  # as a load that is not strict
            finally:
                self._close_spool()
        self._flush_plain()
        self.wait_for_writer()
        self.stop_following()
        return self.result

    def _close_spool(self) -> None:
        spool, self._spool = self._spool, None
        if spool is not None:
            spool.close()

    def _write(self, groups: dict[str, EntryGroup]) -> None:
        if not groups:
            return
        if any(g.retracts for g in groups.values()):
            groups = self._with_retractions(groups)
        upserts = [g.upsert() for g in groups.values()]
        changed = False
        # Short transactions: on SQLite a write transaction holds the one
        # writer lock that every Match needs to append its history record.
        for start in range(0, len(upserts), WRITE_CHUNK):
            counts = self.bulk.bulk_upsert(
                self.set_id, upserts[start : start + WRITE_CHUNK], self.added_by
            )
            self._count(counts, groups)
            changed = changed or bool(counts.added or counts.updated or counts.removed)
        if changed:
            self.live.catch_up()  # committed rows match before the next batch

    def _flush_plain(self) -> None:
        """Sorts the plain rows waiting and hands them to a writer thread: the
        next ones are received, checked and sorted while it writes, and a
        follower thread indexes what it has committed (numpy, numba and the
        store drivers let go of the GIL); one run in flight at a time."""
        if self._pending:
            rows = sorted_plain(self._pending)
            self._pending, self._pending_rows = [], 0
            self.wait_for_writer()
            if self._following is None:
                self._following = _WRITERS.submit(self._follow)
            self._writing = _WRITERS.submit(self._write_plain, rows)

    def abandon(self) -> None:
        """After a failed or cancelled load: waits for the run being written
        and the index follower, so nothing is written after the call has
        ended (a client that reruns at once must not race the last write of
        its failed load) and the counts are final. A strict load's rows are
        dropped unwritten."""
        self._close_spool()
        with contextlib.suppress(Exception):
            self.wait_for_writer()
        with contextlib.suppress(Exception):
            self.stop_following()

    def wait_for_writer(self) -> None:
        """Until the run in flight is written; raises what its write raised."""
        writing, self._writing = self._writing, None
        if writing is not None:
            writing.result()

    def stop_following(self) -> None:
        """Stops the follower and indexes what is left: every committed row
        matches when this returns. Raises what the follower raised."""
        following, self._following = self._following, None
        if following is not None:
            self._done.set()
            self._committed.set()
            following.result()
            self.live.catch_up()

    def _follow(self) -> None:
        """Committed rows match at once: the index catches up with each write
        of the writer thread (several, when it is behind)."""
        while not self._done.is_set():
            if self._committed.wait(FOLLOW_SECONDS):
                self._committed.clear()
                self.live.catch_up()
                self._done.wait(FOLLOW_SECONDS)

    def _write_plain(self, rows: PlainSignals) -> None:
        """A hash list of one signal an entry (plain, or a feed's named and
        labelled rows): column-wise writes; the index takes the new signals
        as they were written instead of reading them back."""
        start = 0
        while start < len(rows):
            part = rows[start : start + self._write_rows]
            started = time.perf_counter()
            counts, _ = self.bulk.bulk_add_plain(
                self.set_id,
                part,
                self.added_by,
                expect_new=self._expect_new,
                noted=self.live.note_added,
            )
            # a fresh load finds no name there; a rerun or resume finds them
            self._expect_new = counts.added == len(part)
            self._tune(len(part), time.perf_counter() - started)
            self._count(counts, {})
            if counts.added or counts.updated:
                self._committed.set()
            start += len(part)

    def _tune(self, rows: int, seconds: float) -> None:
        if rows < self._write_rows:
            return  # a short last part says little about the rate
        wanted = rows * self.bulk.bulk_write_seconds / max(seconds, 1e-3)
        # move half way: one slow transaction (a checkpoint, a busy core) does
        # not halve the next
        self._write_rows = int(min(MAX_WRITE_ROWS, max(MIN_WRITE_ROWS, (rows + wanted) / 2)))

    def _with_retractions(self, groups: dict[str, EntryGroup]) -> dict[str, EntryGroup]:
        """A tombstone row that names no entry retracts its hash: partners
        send (type, value, deleted) for a hash they loaded with their own id
        (a ThreatExchange or HMA id), so the entry of that name is not the
        only one to go. Every active entry of the set whose signals are all
        that hash is removed too. An entry that holds it among other signals
        (a video and its frames) stays, and the row is rejected with the
        entries it names: removing a whole video for one retracted frame
        would be wrong, so the operator tombstones it by name if meant."""
        out = dict(groups)
        retracting = [g for g in groups.values() if g.retracts]
        holders = self._holders({g.retracts for g in retracting})
        for group in retracting:
            kind, value = group.retracts
            mixed = []
            for entry in holders.get(group.retracts, ()):
                if entry.name in out:
                    continue  # the hash's own name, or a row of this batch
                if all((s.kind, s.value) == (kind, value) for s in entry.signals):
                    out[entry.name] = EntryGroup(entry.name, True, group.source, group.line)
                else:
                    mixed.append(entry.name)
            if mixed:
                shown = ", ".join(quoted(name) for name in sorted(mixed)[:3])
                self._reject(
                    group.source,
                    group.line,
                    f"{kind} {value.hex()[:16]}... is also held by {len(mixed)} entr"
                    f"{'y' if len(mixed) == 1 else 'ies'} with other signals ({shown}):"
                    " tombstone them by entry to remove them",
                )
        return out

    def _holders(self, hashes: set[tuple[str, bytes]]) -> dict[tuple[str, bytes], list]:
        """The active entries of this set holding exactly each (kind, value),
        found by the in-memory index (distance 0; one search a kind) or, for
        exact types, the store's value index; one read of the entries for a
        whole batch. Chromaprint fingerprints are in neither: by name only."""
        entry_ids: set[int] = set()
        if any(kind in self.live.indexes for kind, _ in hashes):
            self.live.catch_up()  # this load's earlier writes
        for kind in {kind for kind, _ in hashes}:
            values = [value for k, value in hashes if k == kind]
            if kind in self.live.indexes:
                for found in self.live.indexes[kind].search(values, 0):
                    entry_ids.update(split_signal_id(sid)[0] for sid, _ in found)
            elif not SIGNAL_TYPES[kind].perceptual:
                for value in values:
                    entry_ids.update(e for e, _ in self.entries.find_exact(kind, value))
        out: dict[tuple[str, bytes], list] = {}
        for entry in self.entries.get_entries(entry_ids, with_signals=True).values():
            if entry.set_id != self.set_id or entry.removed_at is not None:
                continue
            for key in {(sig.kind, sig.value) for sig in entry.signals} & hashes:
                out.setdefault(key, []).append(entry)
        return out

    def _count(self, counts: BulkCounts, groups: dict[str, EntryGroup]) -> None:
        """Adds a write's counts; signals an entry had no room for (it was
        filled by an earlier load) are rejected rows, one an entry, at the
        entry's first row."""
        for name, count in counts.over_limit.items():
            group = groups.get(name)
            source, line = (group.source, group.line) if group else ("", 0)
            self._reject(
                source,
                line,
                f"entry {quoted(name)} holds at most {MAX_SIGNALS_PER_ENTRY} signals:"
                f" {count} not added",
            )
        counts.over_limit = {}
        with self._result_lock:
            self.result.counts += counts

    def _reject(self, source: str, line: int, reason: str) -> None:
        with self._result_lock:
            self.result.rejected_count += 1
            if len(self.result.rejected) < MAX_REPORTED_REJECTS:
                self.result.rejected.append(RejectedRow(source, line, reason))

    def _grouped(self, batch: RowBatch) -> Iterable[dict[str, EntryGroup]]:
        """The batch's rows as entries. A name that flips between tombstone
        and live within the batch splits it, so the removal and the new entry
        are written in order."""
        n = len(batch)
        lines = batch.line or range(1, n + 1)
        entries = batch.entry or [""] * n
        labels = batch.labels or [""] * n
        deleted = batch.deleted or [False] * n
        quality = batch.quality or [-1] * n
        variant = batch.variant or [""] * n
        position = batch.position or [math.nan] * n
        label_values = batch.label_values if batch.label_key else ()
        label_values = label_values or [""] * n
        groups: dict[str, EntryGroup] = {}
        for kind, value, line, entry, label_text, label_value, gone, q, var, pos in zip(
            batch.signal_type,
            batch.value,
            lines,
            entries,
            labels,
            label_values,
            deleted,
            quality,
            variant,
            position,
            strict=True,
        ):
            try:
                value = row_value(
                    kind, value, gone, self.max_keypoints, self.live.features.descriptor_bytes
                )
                name = row_entry_name(entry) if entry else f"{kind}:{value.hex()}"
                row_labels = checked_row_labels(label_text) if label_text else None
                if label_value:
                    row_labels = row_label_added(row_labels, batch.label_key, label_value)
                if not is_exchanged(kind, var):
                    raise RowError(f"variant {quoted(var)} is not exchanged for {kind}")
                if q != -1 and not 0 <= q <= 100:
                    raise RowError("quality must be within 0..100")
                if not (math.isnan(pos) or (math.isfinite(pos) and pos >= 0)):
                    raise RowError("position must be a finite number >= 0")
            except RowError as exc:
                self._reject(batch.source, line, str(exc))
                continue
            group = groups.get(name)
            if group is not None and group.deleted != gone:
                yield groups
                groups, group = {}, None
            if group is None:
                group = groups[name] = EntryGroup(name, gone, batch.source, line)
                if gone and value and not entry:
                    group.retracts = (kind, bytes(value))
            signal = (
                Signal(
                    kind,
                    bytes(value),
                    None if q == -1 else q,
                    var or "original",
                    None if math.isnan(pos) else pos,
                )
                if value
                else None
            )
            try:
                group.add(signal, row_labels)
            except RowError as exc:
                self._reject(batch.source, line, str(exc))
        yield groups


def _row_batch(batch: RowBatch | PackedRows) -> RowBatch:
    return batch.as_row_batch() if isinstance(batch, PackedRows) else batch


class LoadStore(BulkStore, EntryLookup, Protocol):
    """Both interfaces a BulkLoad takes, in one store (load() below)."""


def load(
    store: LoadStore,
    live: LiveIndex,
    set_id: int,
    added_by: str,
    batches: Iterable[RowBatch],
    strict: bool = False,
) -> BulkResult:
    """A whole load: every batch, then the result."""
    run = BulkLoad(store, store, live, set_id, added_by, strict)
    try:
        for batch in batches:
            run.add_batch(batch)
    except BaseException:
        run.abandon()
        raise
    return run.finish()
