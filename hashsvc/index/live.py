"""In-memory view of the store that matching reads: one BinaryIndex per
fixed-length perceptual signal type, the audio index, the local-feature index
(FeatureIndex: descriptors of known pictures, decoded from their
local_features blobs) and the hash sets, kept current from the change feed.

The store is the source of truth. On start the view is loaded from a snapshot
(index files plus the change seq they include) when one exists, else built from
the store; then every change after that seq is applied. Writes made through this
process call `catch_up()` before they return, so a removed entry stops matching
before RemoveEntry answers; changes from other replicas arrive by polling.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Iterable

import numpy as np

from hashdb import ChangeFeed, HashSetRecord, SetLookup
from hashdb.bulk_sql import AddedSignals, added_range
from hashsvc.base.errors import InvalidArgument
from hashsvc.base.signals import LOCAL_FEATURES, SIGNAL_TYPES
from hashsvc.index.audio import AudioIndex
from hashsvc.index.binary import (
    ID_LAYOUT,
    VARIANT_BITS,
    HashIndex,
    hash_matrix,
    signal_id,
)
from hashsvc.index.engines import load_index, new_index
from hashsvc.index.local_features import DEFAULT_WORDS_PER_PICTURE, FeatureIndex
from hashsvc.media import local_features

log = logging.getLogger(__name__)

# Fixed-length perceptual types live in a BinaryIndex; sequence types (audio)
# and opaque ones (local features) have their own index.
PERCEPTUAL_TYPES = tuple(
    t for t in SIGNAL_TYPES.values() if t.perceptual and not t.sequence and not t.opaque
)
# Local-feature pictures decoded and filed per index write while building.
_FEATURE_BATCH = 5_000
_BUILD_BATCH = 50_000
# Changes read per step of catch_up: each step costs one index write per
# signal type (a write scans the whole index), so a bulk load's steps are big.
_CHANGES_PAGE = 100_000
# How long a note waits for its change to show (see catch_up).
_NOTE_SECONDS = 30.0


class LiveIndex:
    def __init__(
        self,
        changes: ChangeFeed,
        sets: SetLookup,
        snapshot_dir: str = "",
        pdq_review_search: str | None = None,
    ) -> None:
        self.changes = changes
        self.sets = sets
        self.snapshot_dir = snapshot_dir
        self.pdq_review_search = pdq_review_search
        self.indexes: dict[str, HashIndex] = {}
        # Audio fingerprints (one per entry with sound), by entry id. Not part
        # of the snapshot: rebuilt from the store at start (a sequential read).
        self.audio = AudioIndex()
        # Known pictures' local features, by signal id; part of the snapshot.
        self.features = FeatureIndex()
        # Stored values this view could not index, by signal type, since start
        # (hashsvc_unindexed_signals_total): an entry that cannot match by them.
        self.unindexed: dict[str, int] = {}
        self.sets_by_id: dict[int, HashSetRecord] = {}
        self.seq = 0
        self.ready = threading.Event()
        # When the change feed was last read (monotonic): how current the view is.
        self.read_at = 0.0
        # When a read last applied a bulk write's entries (monotonic): a
        # stream of them (a bulk load's or feed fetch's commits) is followed
        # less often than single changes, which each apply at once.
        self.bulk_applied_at = 0.0
        self._apply_lock = threading.Lock()
        self._notes: list[AddedSignals] = []  # see note_added
        self._notes_lock = threading.Lock()

    # -- start-up

    def load(self) -> None:
        """Fill the view (snapshot + changes, or a full build), then mark ready."""
        with self._apply_lock:
            if not self._load_snapshot():
                self._build_from_store()
            self._build_audio_from_store()
            self._refresh_sets()
        self.catch_up()
        self.ready.set()

    def _build_from_store(self) -> None:
        # Take the seq first: changes racing the build are replayed afterwards,
        # and replaying an add or remove is idempotent.
        self.seq = self.changes.current_seq()
        for sig_type in PERCEPTUAL_TYPES:
            index = new_index(sig_type.name, sig_type.bits, self.pdq_review_search)
            ids: list[int] = []
            values: list[bytes] = []
            for sig in self.changes.iter_signals([sig_type.name]):
                ids.append(signal_id(sig.entry_id, sig.variant_no))
                values.append(sig.value)
                if len(ids) >= _BUILD_BATCH:
                    index.add(ids, values)
                    ids, values = [], []
            index.add(ids, values)
            self.indexes[sig_type.name] = index
        self.features = self._features_from_store()
        log.info("index built from store: %s", self.sizes())

    def _features_from_store(self) -> FeatureIndex:
        features = FeatureIndex()
        ids: list[int] = []
        descriptors: list[np.ndarray] = []
        for sig in self.changes.iter_signals([LOCAL_FEATURES.name]):
            found = self._descriptors(sig.entry_id, sig.value, features.descriptor_bytes)
            if found is not None:
                ids.append(signal_id(sig.entry_id, sig.variant_no))
                descriptors.append(found)
            if len(ids) >= _FEATURE_BATCH:
                features.add(ids, descriptors)
                ids, descriptors = [], []
        features.add(ids, descriptors)
        return features

    def _build_audio_from_store(self) -> None:
        # Replaying changes after this is harmless: adding a track is
        # idempotent, removing a removed one a no-op.
        audio = AudioIndex()
        fingerprints = self.changes.iter_signals(["chromaprint"])
        audio.add_many((sig.entry_id, words_of(sig.value)) for sig in fingerprints)
        self.audio = audio

    # -- snapshots

    def _snapshot_paths(self) -> tuple[str, dict[str, str]]:
        meta = os.path.join(self.snapshot_dir, "index-snapshot.json")
        files = {
            t.name: os.path.join(self.snapshot_dir, f"index-{t.name}.faiss")
            for t in PERCEPTUAL_TYPES
        }
        files[LOCAL_FEATURES.name] = os.path.join(self.snapshot_dir, "index-local_features.lfi")
        return meta, files

    def save_snapshot(self) -> None:
        if not self.snapshot_dir:
            return
        os.makedirs(self.snapshot_dir, exist_ok=True)
        meta_path, files = self._snapshot_paths()
        with self._apply_lock:  # no change applied between the files and the seq
            for name, path in files.items():
                if name == LOCAL_FEATURES.name:
                    self.features.save(path)
                else:
                    self.indexes[name].save(path)
            seq = self.seq
        tmp = meta_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"seq": seq, "files": files, "id_layout": ID_LAYOUT}, f)
        os.replace(tmp, meta_path)
        log.info("index snapshot saved at seq %d", seq)

    def _load_snapshot(self) -> bool:
        if not self.snapshot_dir:
            return False
        meta_path, files = self._snapshot_paths()
        try:
            with open(meta_path) as f:
                meta = json.load(f)
            if meta.get("id_layout") != ID_LAYOUT:
                raise ValueError("snapshot written with another index id layout")
            indexes = {
                t.name: load_index(files[t.name], t.bits, self.pdq_review_search)
                for t in PERCEPTUAL_TYPES
            }
            # A snapshot without it (older, or its file lost or damaged) is
            # rebuilt whole: an empty feature index would silently match nothing.
            features = FeatureIndex.load(files[LOCAL_FEATURES.name])
            if features.words_per_picture != DEFAULT_WORDS_PER_PICTURE:
                # filed by an older version: its pictures would score against new ones
                # filed with more words (scores grow with the words filed), so all are
                # filed again
                raise ValueError(
                    f"feature snapshot files {features.words_per_picture} words a picture;"
                    f" this version files {DEFAULT_WORDS_PER_PICTURE}"
                )
        except (OSError, ValueError, RuntimeError, KeyError) as exc:
            if os.path.exists(meta_path):
                log.warning("ignoring unusable index snapshot: %s", exc)
            return False
        if meta["seq"] > self.changes.current_seq():
            # The snapshot is from a newer database than this one (restored
            # backup, different URL): it would hold entries the store lacks.
            log.warning("ignoring index snapshot newer than the store")
            return False
        self.indexes, self.features, self.seq = indexes, features, meta["seq"]
        log.info("index snapshot loaded at seq %d: %s", self.seq, self.sizes())
        return True

    # -- keeping current

    def note_added(self, added: AddedSignals) -> None:
        """Signals of entries this process has just created (on PostgreSQL
        noted just before the commit, see BulkStore.bulk_add_plain), so the
        catch_up that applies their changes, whichever thread runs it (the
        change poller is woken by the same commit), need not read them back."""
        if len(added):
            added.noted = time.monotonic()
            with self._notes_lock:
                self._notes.append(added)

    def catch_up(self) -> int:
        """Apply every change after our seq; returns how many were applied."""
        applied = 0
        with self._apply_lock:
            notes: list[AddedSignals] = []
            used: set[int] = set()  # ids of the notes applied
            while True:
                changes = self.changes.changes_since(self.seq, limit=_CHANGES_PAGE)
                self.read_at = time.monotonic()
                with self._notes_lock:  # after the read: the changes' notes are there
                    notes += self._notes
                    self._notes = []
                if not changes:
                    # On PostgreSQL a write is noted just before its COMMIT: a
                    # note whose change was not there yet is kept for the next
                    # catch_up (a while: that of a write that failed never is).
                    now = time.monotonic()
                    kept = [n for n in notes if id(n) not in used and now - n.noted < _NOTE_SECONDS]
                    if kept:
                        with self._notes_lock:
                            self._notes[:0] = kept
                    return applied
                # Added and updated entries are indexed together, one index
                # write per signal type for the run of them (a bulk load brings
                # 100k at a time); a removal flushes the run first, so changes
                # still apply in order. Re-adding an entry's signals replaces
                # them, so an update_entry (new labels or signals) re-adds.
                run = _Run()
                sets_changed = False
                for change in changes:
                    if change.op == "add_entry":
                        run.single.append(change.entry_id)
                    elif change.op == "update_entry":
                        run.single.append(change.entry_id)
                        run.updated.add(change.entry_id)
                    elif (added := added_range(change.op, change.entry_id)) is not None:
                        run.ranges.append(added)  # a bulk write's entries
                        self.bulk_applied_at = time.monotonic()
                    elif change.op == "remove_entry":
                        self._add_entries(run, notes, used)
                        run = _Run()
                        self._remove_entry_signals(change.entry_id)
                    elif change.op == "update_set":
                        sets_changed = True
                    applied += 1
                self._add_entries(run, notes, used)
                self.seq = changes[-1].seq
                if sets_changed:
                    self._refresh_sets()

    def _add_entries(self, run: _Run, notes: list[AddedSignals], used: set[int]) -> None:
        """Index the run's entries; `notes`: signals noted by note_added (the
        ids of those applied are added to `used`)."""
        ids = run.entry_ids()
        if not len(ids):
            return
        by_type: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
        from_store = np.ones(len(ids), dtype=bool)
        # An entry id is never reused, so an add of a noted id is that entry's
        # creation with exactly the noted signal (variant 0); an update of it
        # in the same run reads the store, which has them all.
        not_updated = ~np.isin(ids, list(run.updated)) if run.updated else None
        for note in notes:
            hit = (ids >= note.first_id) & (ids < note.first_id + len(note))
            if not_updated is not None:
                hit &= not_updated
            if hit.any():
                used.add(id(note))
                from_store &= ~hit  # noted: not read back, even of a kind not indexed (md5)
                if note.kind in self.indexes:
                    noted_ids = ids[hit]
                    by_type.setdefault(note.kind, []).append(
                        (noted_ids << VARIANT_BITS, note.values[noted_ids - note.first_id])
                    )
        stored: dict[str, tuple[list[int], list[bytes]]] = {}
        feature_ids: list[int] = []
        feature_descriptors: list[np.ndarray] = []
        unnoted = ids[from_store]
        for sig in self.changes.indexed_signals(unnoted.tolist()) if len(unnoted) else ():
            if sig.kind == "chromaprint":
                self.audio.add(sig.entry_id, words_of(sig.value))
            if sig.kind == LOCAL_FEATURES.name:
                found = self._descriptors(sig.entry_id, sig.value, self.features.descriptor_bytes)
                if found is not None:
                    feature_ids.append(signal_id(sig.entry_id, sig.variant_no))
                    feature_descriptors.append(found)
            if sig.kind in self.indexes:
                sig_ids, values = stored.setdefault(sig.kind, ([], []))
                sig_ids.append(signal_id(sig.entry_id, sig.variant_no))
                values.append(sig.value)
        for kind, (sig_ids, values) in stored.items():
            by_type.setdefault(kind, []).append(
                (
                    np.array(sig_ids, dtype=np.int64),
                    hash_matrix(values, len(values), SIGNAL_TYPES[kind].bits),
                )
            )
        for kind, parts in by_type.items():
            self.indexes[kind].add(
                np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
            )
        self.features.add(feature_ids, feature_descriptors)

    def _add_entry_signals(self, entry_id: int, signals: Iterable) -> None:
        by_type: dict[str, tuple[list[int], list[bytes]]] = {}
        for variant_no, sig in enumerate(signals):
            if sig.kind == "chromaprint":
                self.audio.add(entry_id, words_of(sig.value))
            if sig.kind in self.indexes:
                ids, values = by_type.setdefault(sig.kind, ([], []))
                ids.append(signal_id(entry_id, variant_no))
                values.append(sig.value)
        for kind, (ids, values) in by_type.items():
            self.indexes[kind].add(ids, values)
        feature_ids = [
            signal_id(entry_id, n)
            for n, sig in enumerate(signals)
            if sig.kind == LOCAL_FEATURES.name
        ]
        found = [
            self._descriptors(entry_id, sig.value, self.features.descriptor_bytes)
            for sig in signals
            if sig.kind == LOCAL_FEATURES.name
        ]
        kept = [(i, d) for i, d in zip(feature_ids, found, strict=True) if d is not None]
        self.features.add([i for i, _ in kept], [d for _, d in kept])

    def _remove_entry_signals(self, entry_id: int) -> None:
        for index in self.indexes.values():
            index.remove_entry(entry_id)
        self.audio.remove(entry_id)
        self.features.remove_entry(entry_id)

    def _refresh_sets(self) -> None:
        self.sets_by_id = {s.id: s for s in self.sets.list_sets(include_disabled=True)}

    def _descriptors(self, entry_id: int, value: bytes, descriptor_bytes: int) -> np.ndarray | None:
        """A stored local_features blob's descriptors. Values are checked when
        they enter the store (hashsvc/core/signal_values.py), so one that does
        not decode, or holds another detector's descriptors than the index's
        vocabulary, was written by another tool or build, or around the checks
        with database access: logged and counted (a metric an operator can
        alert on: that entry cannot match by its local features), never a
        reason to stop indexing the rest."""
        try:
            descriptors = local_features.decode(value).descriptors
        except InvalidArgument as exc:
            log.error("entry %d: unreadable local_features value not indexed: %s", entry_id, exc)
            self._count_unindexed(LOCAL_FEATURES.name)
            return None
        if descriptors.shape[1] != descriptor_bytes:
            log.error(
                "entry %d: local_features of %d-byte descriptors not indexed (the index takes %d)",
                entry_id,
                descriptors.shape[1],
                descriptor_bytes,
            )
            self._count_unindexed(LOCAL_FEATURES.name)
            return None
        return descriptors

    def _count_unindexed(self, kind: str) -> None:
        with self._notes_lock:  # called from the loader and the change feed's thread
            self.unindexed[kind] = self.unindexed.get(kind, 0) + 1

    def sizes(self) -> dict[str, int]:
        return {
            **{name: len(index) for name, index in self.indexes.items()},
            "chromaprint": len(self.audio),
            LOCAL_FEATURES.name: len(self.features),
        }


class _Run:
    """Entries added or updated by consecutive changes: single ids, bulk
    writes' id ranges, and which of them were updates."""

    def __init__(self) -> None:
        self.single: list[int] = []
        self.ranges: list[range] = []
        self.updated: set[int] = set()

    def entry_ids(self) -> np.ndarray:
        parts = [np.arange(r.start, r.stop, dtype=np.int64) for r in self.ranges]
        parts.append(np.array(self.single, dtype=np.int64))
        return np.concatenate(parts)


def words_of(value: bytes) -> np.ndarray:
    """A chromaprint signal's value (big-endian 32-bit words) as an array."""
    return np.frombuffer(value, dtype=">u4").astype(np.uint32)
