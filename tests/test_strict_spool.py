"""A strict BulkLoad checks rows as they arrive and writes them only at the
end; meanwhile they wait on disk, not in memory (1M rows held +600 MB, and
the server kept it afterwards; 5M ~3 GB) (issue 16, item 14)."""

from __future__ import annotations

import gc
import json
import os
import tracemalloc

import pytest

from hashdb import open_store
from hashsvc.base.errors import InvalidArgument
from hashsvc.core.bulk import BulkLoad, PackedRows, RowBatch
from hashsvc.index.live import LiveIndex

PACKED_ROWS = 40_000  # a plain hash list, as `hashsvc load` packs it
ENTRY_ROWS = 10_000  # rows with names, labels and frames: the row-by-row path


@pytest.fixture
def store_and_index(store_url):
    store = open_store(store_url)
    live = LiveIndex(store, store)
    live.load()
    yield store, live
    store.close()


def _batches(seed: int):
    values = os.urandom(32 * PACKED_ROWS)
    yield PackedRows("pdq", values, first_line=1, source="plain.csv")
    n = ENTRY_ROWS
    yield RowBatch(
        signal_type=["pdq"] * n,
        value=[os.urandom(32) for _ in range(n)],
        line=list(range(1, n + 1)),
        entry=[f"video-{seed}-{k // 100}" for k in range(n)],  # 100 frames a video
        labels=[json.dumps({"group": f"g{k % 7}", "source": "partner"}) for k in range(n)],
        variant=[f"frame:{k % 100}" for k in range(n)],
        position=[float(k % 100) for k in range(n)],
        source="videos.csv",
    )


def test_a_strict_load_holds_its_rows_on_disk_until_written(store_and_index, tmp_path):
    store, live = store_and_index
    hash_set = store.create_set("strict", "", {}, {})
    spool = tmp_path / "spool"
    spool.mkdir()
    run = BulkLoad(store, store, live, hash_set.id, "op", strict=True, spool_dir=str(spool))
    gc.collect()
    tracemalloc.start()
    try:
        for batch in _batches(1):
            run.add_batch(batch)
            del batch
        gc.collect()
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Held as Python objects, the 50k rows took ~30 MB (~600 bytes a row);
    # the rows of the last message are all that may stay.
    assert held < 4 * 1024 * 1024, f"{held / 1e6:.1f} MB held"
    assert store.list_entries(hash_set.id, 0, 10) == []  # nothing written before the end
    assert os.listdir(spool) == []  # the spool file has no name: gone with the load
    result = run.finish()
    assert result.written and result.rejected_count == 0
    assert (result.rows, result.added) == (PACKED_ROWS + ENTRY_ROWS, PACKED_ROWS + 100)
    entry = store.get_entry(hash_set.id, "video-1-7")
    # the labels of the entry's last row (799 % 7 = 1) win, as in any load
    assert entry.labels == {"group": "g1", "source": "partner"}
    assert sorted(s.variant for s in entry.signals) == sorted(f"frame:{k}" for k in range(100))


def test_a_strict_load_with_a_bad_row_writes_nothing(store_and_index, tmp_path):
    store, live = store_and_index
    hash_set = store.create_set("strict", "", {}, {})
    spool = tmp_path / "spool"
    spool.mkdir()
    run = BulkLoad(store, store, live, hash_set.id, "op", strict=True, spool_dir=str(spool))
    batches = list(_batches(2))
    bad = batches[1]
    bad.labels[5000] = '{"k": ' + "[" * 5000  # nested too deeply: a rejected row
    for batch in batches:
        run.add_batch(batch)
    result = run.finish()
    assert not result.written and result.rejected_count == 1
    assert result.rejected[0].line == 5001
    assert store.list_entries(hash_set.id, 0, 10) == []
    assert os.listdir(spool) == []


def test_a_strict_load_abandoned_writes_nothing(store_and_index, tmp_path):
    store, live = store_and_index
    hash_set = store.create_set("strict", "", {}, {})
    spool = tmp_path / "spool"
    spool.mkdir()
    run = BulkLoad(store, store, live, hash_set.id, "op", strict=True, spool_dir=str(spool))
    for batch in _batches(3):
        run.add_batch(batch)
    run.abandon()
    assert store.list_entries(hash_set.id, 0, 10) == []
    with pytest.raises(InvalidArgument):
        run.finish()  # an abandoned load cannot be written afterwards
    assert store.list_entries(hash_set.id, 0, 10) == []
