"""What a retro-hunt run scans with (hashsvc/core/retro.py): the new
entries' signals as a small index and a matcher over it, the classes Match
uses built of these entries only, and the uploads' query signals read back
from their history records."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor
from datetime import datetime

import numpy as np

from hashdb import EntryRecord, HistoryUpload, IndexedSignal, RetroRun, SetLookup
from hashdb.history_sql import unpack_other_signals
from hashdb.times import to_micros
from hashsvc.base.signals import PDQ, SIGNAL_TYPES, Signal
from hashsvc.core.history_views import PDQ_BYTES, read_pdq_views
from hashsvc.index.binary import BinaryIndex, signal_id
from hashsvc.index.bound_scan import any_within_scan
from hashsvc.index.live import LiveIndex
from hashsvc.matching.matcher import Match, Matcher
from hashsvc.matching.policy import BLOCK, REVIEW, LocalFeatureMatching, Policy

# Signal kinds compared byte for byte (looked up, not searched).
EXACT_KINDS = frozenset(t.name for t in SIGNAL_TYPES.values() if not t.perceptual)


log = logging.getLogger(__name__)


class RetroScanner:
    """The new entries' signals as a small index and a matcher over it: the
    classes Match uses, built of these entries only."""

    def __init__(
        self,
        entries: list[EntryRecord],
        sets: SetLookup,
        policy: Policy,
        local: LocalFeatureMatching | None = None,
        pdq_review_search: str | None = None,
        pool: Executor | None = None,
        parts: int = 1,
    ) -> None:
        # the step's views are compared in `parts` parts, all but one on
        # the pool's threads (RetroSettings.threads)
        self.pool, self.parts = pool, parts
        self.entries = {e.id: e for e in entries}
        self.set_ids = {e.set_id for e in entries}
        self.source = _NewEntries(self.entries)
        self.index = LiveIndex(self.source, sets, "", pdq_review_search)
        self.index.load()
        # The new entries are few: a flat index searches them exactly, where
        # Match's multi-index (built for millions) approximates the review
        # band, and faster at this size (10k hashes, 36k views: 38k against
        # 24k views/s; bench/retro.py).
        flat = BinaryIndex(PDQ.bits)
        pdq = list(self.source.iter_signals([PDQ.name]))
        flat.add([signal_id(s.entry_id, s.variant_no) for s in pdq], [s.value for s in pdq])
        self.index.indexes[PDQ.name] = flat
        self.matcher = Matcher(self.index, self.source, policy, local=local)
        # the signal kinds the new entries hold: no other kind can match
        self.kinds = {sig.kind for e in entries for sig in e.signals}
        hunting_sets = [s for s in self.index.sets_by_id.values() if s.id in self.set_ids]
        self.pdq_radius = policy.search_radius(hunting_sets, PDQ.name)
        # which uploads may match at all: the whole history goes through it
        # (hashsvc/index/bound_scan.py, chosen for the radius); the few that
        # may are matched above
        self.pdq_scan = any_within_scan(
            np.frombuffer(b"".join(s.value for s in pdq), dtype=np.uint8).reshape(-1, PDQ_BYTES),
            self.pdq_radius,
        )

    def signals_of(self, upload: HistoryUpload) -> list[Signal]:
        return history_signals(upload.query_signals)

    def hits(self, upload: HistoryUpload) -> list[Match]:
        """The upload's matches with the new entries (BLOCK or REVIEW)."""
        signals = self.signals_of(upload)
        if not signals:
            return []
        result = self.matcher.match(signals, only_sets=self.set_ids, every_match=True)
        return [m for m in result.matches if m.decision in (BLOCK, REVIEW)]

    def reads_views(self) -> bool:
        """Whether candidate_views can judge the new entries' kinds (PDQ
        only: the records' PDQ views are all it reads); else candidates."""
        return self.kinds <= {PDQ.name}

    def candidate_views(self, records: list[tuple[bytes | None, bytes | None]]) -> list[int]:
        """candidates() of records given as (packed PDQ views, or their
        query_signals text as UTF-8 bytes where none are packed;
        HistoryStore.history_pdq_views), PDQ-only runs: the indexes of those
        that may match a new entry, in order."""
        views, owners, unread = pdq_views_of_records(records)
        out = set(unread)
        if len(views) and len(self.pdq_scan):
            found = self.pdq_scan.any_within(views, self.pdq_radius, self.pool, self.parts)
            out.update(owners[found].tolist())
        return sorted(out)

    def candidate_packed(
        self, records: list[tuple[bytes | None, bytes | None, bytes | None]]
    ) -> list[int]:
        """The indexes, in order, of the records that may match a new entry,
        for a run whose entries hold other kinds than PDQ (a picture added by
        AddEntry: PDQ, md5, sha256, local features). Records are given as
        (packed PDQ views, packed other signals, their query_signals text
        only where either is not packed; HistoryStore.history_packed_signals).
        PDQ views in one search of the step's views, exact hashes by lookup,
        a perceptual kind other than PDQ that a record holds sends it to the
        matcher whole; a record not packed is parsed. An upload left out has
        no signal within reach of any new entry, so the matcher would find
        nothing in it either."""
        out: set[int] = set()
        packed = [(i, views, others) for i, (views, others, _) in enumerate(records)
                  if views is not None and others is not None]  # fmt: skip
        at = np.array([i for i, _, _ in packed], dtype=np.int64)
        if PDQ.name in self.kinds and len(self.pdq_scan):
            views, owners, unread = pdq_views_of_records([(v, None) for _, v, _ in packed])
            out.update(at[unread].tolist())
            if len(views):
                found = self.pdq_scan.any_within(views, self.pdq_radius, self.pool, self.parts)
                out.update(at[owners[found]].tolist())
        for i, _, others in packed:
            if not others:
                continue
            try:
                items = unpack_other_signals(bytes(others))
            except (ValueError, UnicodeDecodeError):
                out.add(i)  # not as the store packs them: the matcher reads the text
                continue
            for kind, value in items:
                if kind not in self.kinds:
                    continue
                if not value or self.source.find_exact(kind, value):
                    out.add(i)  # a perceptual kind (or a long value): the matcher compares
                    break
        texts = [(i, text) for i, (views, others, text) in enumerate(records)
                 if views is None or others is None]  # fmt: skip
        if texts:
            parsed = [parse_signals(text) for _, text in texts]
            views, owners = self._parsed_views(parsed, out, [i for i, _ in texts])
            if len(views) and len(self.pdq_scan):
                found = self.pdq_scan.any_within(views, self.pdq_radius, self.pool, self.parts)
                out.update(owners[found].tolist())
        return sorted(out)

    def _parsed_views(
        self, parsed: list[list[dict]], out: set[int], where: list[int]
    ) -> tuple[np.ndarray, np.ndarray]:
        """The PDQ views of parsed records' signals, each owned by its
        record's index in `where` (and the records that other kinds send to
        the matcher, added to out)."""
        pdq_views: list[bytes] = []
        owners: list[int] = []
        for i, signals in zip(where, parsed, strict=True):
            for sig in signals:
                kind = sig.get("signal_type")
                if kind not in self.kinds or not sig.get("value"):
                    continue
                try:
                    value = bytes.fromhex(sig["value"])
                except (TypeError, ValueError):
                    continue  # not as the history writes it: nothing to compare
                if kind == PDQ.name:
                    if len(value) == PDQ_BYTES:
                        pdq_views.append(value)
                        owners.append(i)
                    else:
                        out.add(i)  # not comparable here: the matcher judges
                elif kind in EXACT_KINDS:
                    if self.source.find_exact(kind, value):
                        out.add(i)
                else:
                    out.add(i)
        views = np.frombuffer(b"".join(pdq_views), dtype=np.uint8).reshape(-1, PDQ_BYTES)
        return views, np.array(owners, dtype=np.int64)


def parse_signals(text: bytes | str | None) -> list[dict]:
    """A record's query_signals text parsed as HistoryUpload.query_signals
    parses it (none for a record not written as the history writes it)."""
    try:
        signals = json.loads(text or b"")
    except (ValueError, TypeError, RecursionError):
        return []
    if not isinstance(signals, list) or not all(isinstance(s, dict) for s in signals):
        return []
    return signals


def pdq_views(uploads: list[HistoryUpload]) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """The PDQ views of the uploads' records: (views as (n, 32) uint8 rows,
    the index of each view's upload, the uploads with a view that cannot be
    compared here: the matcher judges them). Read out of the stored text
    (hashsvc/core/history_views.py); a record not written as the history
    writes it is parsed."""
    return pdq_views_of_texts([u.signals_text for u in uploads])


def pdq_views_of_records(
    records: list[tuple[bytes | None, bytes | None]],
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """pdq_views of records given as (packed views, text where none are
    packed). The packed ones are sliced, not decoded: one join, one view of
    the buffer. A packed value that is not whole views (written otherwise)
    sends its upload to the matcher, which judges its parsed signals."""
    # Python's per-record work is kept to a few C-level passes: it holds the
    # GIL, which Match's threads wait for (a hunting thread's nice value
    # does not help there; the compiled comparison holds no GIL)
    blobs = [p for p, _ in records]
    if None not in blobs:  # the usual step: every record packed
        lengths = np.fromiter(map(len, blobs), dtype=np.int64, count=len(blobs))
        whole = lengths % PDQ_BYTES == 0
        if whole.all():
            views = np.frombuffer(b"".join(blobs), dtype=np.uint8).reshape(-1, PDQ_BYTES)
            return views, np.repeat(np.arange(len(blobs)), lengths // PDQ_BYTES), []
    packed = [(i, p) for i, (p, _) in enumerate(records) if p is not None]
    texts = [(i, t) for i, (p, t) in enumerate(records) if p is None]
    lengths = np.fromiter((len(p) for _, p in packed), dtype=np.int64, count=len(packed))
    whole = lengths % PDQ_BYTES == 0
    unread = [packed[k][0] for k in np.flatnonzero(~whole).tolist()]
    at = np.fromiter((i for i, _ in packed), dtype=np.int64, count=len(packed))[whole]
    views = np.frombuffer(
        b"".join(p for (_, p), ok in zip(packed, whole.tolist(), strict=True) if ok),
        dtype=np.uint8,
    ).reshape(-1, PDQ_BYTES)
    owners = np.repeat(at, lengths[whole] // PDQ_BYTES)
    if texts:
        text_views, text_owners, text_unread = pdq_views_of_texts(
            [t if t is not None else b"" for _, t in texts]
        )
        where = np.array([i for i, _ in texts], dtype=np.int64)
        views = np.concatenate([views, text_views])
        owners = np.concatenate([owners, where[text_owners]])
        unread += [texts[k][0] for k in text_unread]
    return views, owners, unread


def pdq_views_of_texts(
    texts: list[str] | list[bytes],
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """pdq_views of the records' query_signals texts (str, or UTF-8 bytes)."""
    views, owners, odd = read_pdq_views(texts)
    unread: list[int] = []
    parsed: list[tuple[int, bytes]] = []
    for i in np.flatnonzero(odd).tolist():
        try:
            signals = json.loads(texts[i])
        except (ValueError, RecursionError):
            signals = None
        if not isinstance(signals, list):
            unread.append(i)  # not as written: parsed as no signals, skipped (HistoryUpload)
            continue
        for sig in signals:
            if not isinstance(sig, dict):
                continue
            if sig.get("signal_type") != PDQ.name or not sig.get("value"):
                continue
            try:
                value = bytes.fromhex(sig["value"])
            except (TypeError, ValueError):
                value = b""
            if len(value) == PDQ_BYTES:
                parsed.append((i, value))
            else:
                unread.append(i)
    if parsed:
        extra = np.frombuffer(b"".join(v for _, v in parsed), dtype=np.uint8)
        views = np.concatenate([views, extra.reshape(-1, PDQ_BYTES)])
        owners = np.concatenate([owners, np.array([i for i, _ in parsed], dtype=np.int64)])
    return views, owners, unread


def history_signals(stored: list[dict]) -> list[Signal]:
    """An upload's query signals from its history record (opaque values kept
    as size and digest only are left out: nothing to compare)."""
    out = []
    for sig in stored:
        kind = sig.get("signal_type")
        value = sig.get("value")
        if kind not in SIGNAL_TYPES or not value or not isinstance(value, str):
            continue
        try:
            raw = bytes.fromhex(value)
        except ValueError:
            continue  # not as the history writes it (edited): nothing to compare
        out.append(
            Signal(
                kind, raw, sig.get("quality"), sig.get("variant", "original"), sig.get("position")
            )
        )
    return out


class _NewEntries:
    """The change feed and entry lookup a RetroScanner's index and matcher
    read: the new entries only, from memory."""

    def __init__(self, entries: dict[int, EntryRecord]) -> None:
        self._entries = entries
        self._exact: dict[tuple[str, bytes], list[tuple[int, int]]] = {}
        for entry in entries.values():
            for variant_no, sig in enumerate(entry.signals):
                if not SIGNAL_TYPES[sig.kind].perceptual:
                    self._exact.setdefault((sig.kind, sig.value), []).append((entry.id, variant_no))

    def current_seq(self) -> int:
        return 0

    def changes_since(self, seq: int, limit: int = 10_000) -> list:
        return []

    def wait_for_change(self, timeout: float) -> bool:
        return False

    def iter_signals(
        self, kinds: Iterable[str], after_entry_id: int = 0
    ) -> Iterator[IndexedSignal]:
        wanted = set(kinds)
        for entry_id in sorted(self._entries):
            if entry_id <= after_entry_id:
                continue
            for variant_no, sig in enumerate(self._entries[entry_id].signals):
                if sig.kind in wanted:
                    yield IndexedSignal(entry_id, variant_no, sig.kind, sig.value)

    def indexed_signals(self, entry_ids: Iterable[int]) -> list[IndexedSignal]:
        return []

    def get_entries(self, entry_ids: Iterable[int], with_signals: bool = False) -> dict:
        return {i: self._entries[i] for i in entry_ids if i in self._entries}

    def find_exact(self, kind: str, value: bytes) -> list[tuple[int, int]]:
        return self._exact.get((kind, value), [])


class RunLease:
    """A run's lease kept by the server holding it while a step (or a Dask
    partition's hits) takes longer than the lease: renewed, the checkpoint
    kept, at least every lease_seconds/3 (the in-process hunt and the Dask
    engine alike). Without it a step whose hits are many (a flooding
    uploader's near-copies, then the entry added) outlasts the lease, its
    next write is refused and another replica redoes the batch, again and
    again. Once the run is found taken over (the owner token no longer
    holds it) the holder stops writing: `lost`."""

    def __init__(self, store, run: RetroRun, lease_seconds: float) -> None:
        self.store = store
        self.run = run
        self.lease_seconds = lease_seconds
        self.every = max(0.05, lease_seconds / 3)
        self.renewed_at = time.monotonic()
        self.lost = False

    def due(self) -> bool:
        return time.monotonic() - self.renewed_at >= self.every

    def renew(self, checkpoint: int, scanned: int = 0) -> bool:
        """Saves the checkpoint (and records read since the last save) and
        renews the lease; False, and `lost`, if the run is another's now."""
        if self.lost:
            return False
        if not self.store.retro_progress(
            self.run.id, checkpoint, scanned, self.lease_seconds, owner=self.run.lease_owner
        ):
            self.lost = True
            log.warning("retro-hunt %d was taken over by another server", self.run.id)
            return False
        self.renewed_at = time.monotonic()
        return True

    def keep(self, checkpoint: int) -> bool:
        """Renews the lease at `checkpoint` (the last one saved) when it is
        due; False once the run is lost (stop writing)."""
        if self.lost:
            return False
        return self.renew(checkpoint) if self.due() else True


def scan_batch(
    store,
    scanner: RetroScanner,
    since: datetime,
    after_id: int,
    upto_id: int,
    limit: int,
    keep: Callable[[], bool] | None = None,
) -> tuple[int, int, list[tuple[HistoryUpload, list[Match]]]] | None:
    """One batch of the history records after_id < id <= upto_id through the
    scanner: (last id read, records read, the uploads found with their hits),
    None past upto_id. The in-process hunt and a Dask worker's partition scan
    alike. The records' packed views are read (PDQ only), or their packed
    views and other signals (their texts where not packed), and whole
    records only of the few that may match. `keep` (the holder's lease,
    RunLease.keep) is called between candidates, whose full match is the
    slow part when many may match; when it answers False the batch stops
    there (its result is incomplete: the caller, which lost the run, drops
    it)."""
    if scanner.reads_views():
        rows = store.history_pdq_views(after_id, upto_id, limit)
        if not rows:
            return None
        since_micros = to_micros(since)
        in_window = [row for row in rows if row[1] >= since_micros]
        found = scanner.candidate_views([(row[2], row[3]) for row in in_window])
        candidates = store.history_uploads_by_id(in_window[i][0] for i in found)
        last_id, read = rows[-1][0], len(rows)
    else:
        rows = store.history_packed_signals(after_id, upto_id, limit)
        if not rows:
            return None
        since_micros = to_micros(since)
        in_window = [row for row in rows if row[1] >= since_micros]
        found = scanner.candidate_packed([(row[2], row[3], row[4]) for row in in_window])
        candidates = store.history_uploads_by_id(in_window[i][0] for i in found)
        last_id, read = rows[-1][0], len(rows)
    hits = []
    for upload in candidates:
        if keep is not None and not keep():
            break
        hits.append((upload, scanner.hits(upload)))
    return last_id, read, [(upload, found) for upload, found in hits if found]


def hunts(hash_set) -> bool:
    """Whether a set's entries hunt: an enabled set that is not an allow list."""
    return hash_set.enabled and not hash_set.allow_list


def hunting_entries(entries: Iterable[EntryRecord], set_of) -> list[EntryRecord]:
    """Those of a run's entries that may still hunt: not removed, in a set
    (`set_of(set_id)`, None when gone) that hunts. The in-process hunt and a
    Dask worker alike."""
    return [
        entry
        for entry in entries
        if entry.removed_at is None
        and (hash_set := set_of(entry.set_id)) is not None
        and hunts(hash_set)
    ]
