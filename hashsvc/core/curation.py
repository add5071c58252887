"""Operators' work: hash sets and their entries. Every write waits until the
in-memory index has applied it, so an added entry matches, and a removed entry
or disabled set stops matching, before the call returns."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from hashdb import EntryRecord, EntryStore, HashSetRecord, RetroOwed, SetStore, Thresholds
from hashsvc.base import media_kinds, validation
from hashsvc.base.errors import InvalidArgument, NotFound, quoted
from hashsvc.base.signals import Signal, signal_type
from hashsvc.core.signal_values import DEFAULT_MAX_KEYPOINTS, checked_value
from hashsvc.index.live import LiveIndex
from hashsvc.media.dispatch import MediaSource
from hashsvc.media.hashing import HashingPool

# Reviewers add confirmed uploads to review targets; adding one to an allow
# list would un-block known content.
_ALLOW_LIST_TARGET = "an allow list cannot be a review target"


@dataclass(frozen=True)
class EntryPage:
    entries: list[EntryRecord]
    first_signal: int  # signals of the first entry sent by the page before
    more: bool  # entries after these


class Curation:
    def __init__(
        self,
        sets: SetStore,
        entries: EntryStore,
        live: LiveIndex,
        hashing: HashingPool,
        max_keypoints: int = DEFAULT_MAX_KEYPOINTS,
    ) -> None:
        self.max_keypoints = max_keypoints  # of a local_features blob added as a hash
        self.sets = sets
        self.entries = entries
        self.live = live
        self.hashing = hashing
        # Told of every entry added (ids, trigger, who): the retro-hunt
        # (hashsvc/core/retro.py RetroHunt.entries_added). Must not raise.
        self.on_entries_added: Callable[[list[int], str, str], object] | None = None
        # The hunt an entry owes, written in the entry's own transaction
        # (RetroHunt.owed), so a crash before on_entries_added loses nothing.
        self.owe_retro: Callable[[str], RetroOwed] | None = None

    def retro_owed(self, trigger: str) -> RetroOwed | None:
        return self.owe_retro(trigger) if self.owe_retro is not None else None

    def entries_added(self, entry_ids: list[int], trigger: str, added_by: str) -> None:
        if self.on_entries_added is not None and entry_ids:
            self.on_entries_added(entry_ids, trigger, added_by)

    # -- sets

    def create_set(
        self,
        name: str,
        description: str = "",
        labels: dict[str, str] | None = None,
        thresholds: dict[str, Thresholds] | None = None,
        allow_list: bool = False,
        review_blocks: bool = False,
        review_target: bool = False,
    ) -> HashSetRecord:
        if allow_list and review_target:
            raise InvalidArgument(_ALLOW_LIST_TARGET)
        record = self.sets.create_set(
            validation.set_name(name),
            validation.text(description, "description"),
            validation.labels(labels or {}),
            validation.thresholds(thresholds or {}),
            allow_list=allow_list,
            review_blocks=review_blocks,
            review_target=review_target,
        )
        self.live.catch_up()
        return record

    def get_set(self, name: str) -> HashSetRecord:
        record = self.sets.get_set(name)
        if record is None:
            raise NotFound(f"no such set: {name}")
        return record

    def list_sets(self, include_disabled: bool = True) -> list[HashSetRecord]:
        return self.sets.list_sets(include_disabled)

    def update_set(
        self,
        name: str,
        *,
        enabled: bool | None = None,
        description: str | None = None,
        labels: dict[str, str] | None = None,
        replace_labels: bool = False,
        thresholds: dict[str, Thresholds] | None = None,
        review_blocks: bool | None = None,
        review_target: bool | None = None,
    ) -> HashSetRecord:
        current = self.get_set(name)
        if review_target and current.allow_list:
            raise InvalidArgument(_ALLOW_LIST_TARGET)
        new_labels = None
        if labels or replace_labels:
            merged = labels or {} if replace_labels else {**current.labels, **(labels or {})}
            new_labels = validation.labels(merged)
        new_thresholds = None
        if thresholds:
            new_thresholds = validation.thresholds({**current.thresholds, **thresholds})
        record = self.sets.update_set(
            current.id,
            enabled=enabled,
            description=None
            if description is None
            else validation.text(description, "description"),
            labels=new_labels,
            thresholds=new_thresholds,
            review_blocks=review_blocks,
            review_target=review_target,
        )
        self.live.catch_up()
        return record

    # -- entries

    def add_entry(
        self,
        set_name: str,
        name: str,
        labels: dict[str, str],
        added_by: str,
        media: MediaSource | None = None,
        signal: tuple[str, str, int | None] | None = None,
    ) -> EntryRecord:
        """Adds media (hashed here; the bytes are not kept) or one precomputed
        hash given as (signal_type, hex value, quality)."""
        hash_set = self.get_set(set_name)
        name = validation.entry_name(name)
        labels = validation.labels(labels)
        if (media is None) == (signal is None):
            raise InvalidArgument("send media or a hash (exactly one)")
        if media is not None:
            hashed = self.hashing.hash_known(media)
            media_type, signals = hashed.media_type, hashed.signals
        else:
            kind, value, quality = signal
            sig_type = signal_type(kind)
            if quality is not None and not 0 <= quality <= 100:
                raise InvalidArgument("quality must be within 0..100")
            media_type = media_kinds.HASH
            checked = checked_value(
                sig_type.name,
                sig_type.parse(value),
                self.max_keypoints,
                self.live.features.descriptor_bytes,
            )
            signals = [Signal(sig_type.name, checked, quality)]
        entry = self.entries.add_entry(
            hash_set.id, name, labels, media_type, signals, added_by, self.retro_owed("AddEntry")
        )
        self.live.catch_up()
        self.entries_added([entry.id], "AddEntry", added_by)
        return entry

    def get_entry(self, set_name: str, name: str) -> EntryRecord:
        entry = self.entries.get_entry(self.get_set(set_name).id, name)
        if entry is None:
            raise NotFound(f"no entry {quoted(name)} in set {set_name}")
        return entry

    def entry_page(
        self, set_name: str, page_size: int, page_token: str, max_signals: int
    ) -> EntryPage:
        """A page of ListEntries, to be cut by size (hashsvc/api/convert.py
        entry_messages): at most max_signals signals are read, always at
        least one entry."""
        hash_set = self.get_set(set_name)
        after_id, limit, sent = validation.entry_page(page_size, page_token)
        entries = self.entries.list_entries(hash_set.id, after_id, limit, max_signals)
        if sent and (not entries or entries[0].id != after_id + 1):
            sent = 0  # the entry was removed meanwhile: go on with the next
        more = len(entries) == limit or (
            bool(entries) and self.entries.next_entry_id(hash_set.id, entries[-1].id) is not None
        )
        return EntryPage(entries, sent, more)

    def find_entries(self, set_name: str, kind: str, value: str) -> list[EntryRecord]:
        """Active entries of the set holding exactly this (exact-type) hash."""
        hash_set = self.get_set(set_name)
        sig_type = signal_type(kind)
        if sig_type.perceptual:
            raise InvalidArgument(f"{kind} is compared by distance: use Match to look it up")
        ids = {entry_id for entry_id, _ in self.entries.find_exact(kind, sig_type.parse(value))}
        entries = self.entries.get_entries(ids, with_signals=True)
        return [e for e in entries.values() if e.set_id == hash_set.id and e.removed_at is None]

    def remove_entry(self, set_name: str, name: str) -> EntryRecord:
        entry = self.entries.remove_entry(self.get_set(set_name).id, name)
        self.live.catch_up()
        return entry
