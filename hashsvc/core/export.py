"""Export of a set's entries in batches bounded by entries and signals (the
core of the ExportEntries RPC)."""

from __future__ import annotations

from hashdb import EntryStore

EXPORT_BATCH = 1_000
# Signals read a batch: ~100 bytes each as protobuf, a few messages' worth
# (they are sent in messages of Config.max_page_bytes).
EXPORT_BATCH_SIGNALS = 100_000


def export_entries(
    store: EntryStore,
    set_id: int,
    since_micros: int | None = None,
    max_signals: int = EXPORT_BATCH_SIGNALS,
):
    """Batches of the set's entries with their signals: all active ones, or
    those changed at or after `since_micros` (removed ones included, with
    removed_at set), oldest first. A batch holds at most EXPORT_BATCH entries
    and max_signals signals (or one entry): 1,000 four-hour videos are 14M."""
    if since_micros is None:
        after = 0
        while entries := store.list_entries(set_id, after, EXPORT_BATCH, max_signals):
            yield entries
            after = entries[-1].id
        return
    ids = store.entries_changed_since(set_id, since_micros)
    for start in range(0, len(ids), EXPORT_BATCH):
        chunk = ids[start : start + EXPORT_BATCH]
        counts = store.signal_counts(chunk)
        run, signals = [], 0
        for entry_id in [*chunk, None]:
            count = counts.get(entry_id, 0) if entry_id is not None else 0
            if run and (entry_id is None or signals + count > max_signals):
                found = store.get_entries(run, with_signals=True)
                yield [found[i] for i in sorted(found)]
                run, signals = [], 0
            if entry_id is not None:
                run.append(entry_id)
                signals += count
