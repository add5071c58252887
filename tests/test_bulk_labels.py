"""A feed's rows (a source id and the source's labels on every row) load
column-wise on both stores, and say exactly what the row-by-row path says:
labels kept as given, one entry a name, a reload unchanged or updated as
before, bad rows rejected with their line and the same reason, an entry of
several rows across a block boundary kept whole, and what loads matches at
once and exports back the same."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

import loaders
from hashdb import open_store
from hashdb.bulk_sql import PlainSignals
from hashsvc.api.bulk_pb import rows_from_pb
from hashsvc.client import cli_bulk
from hashsvc.core.bulk import RowBatch, load
from hashsvc.core.bulk_rows import PackedRows, plain_rows
from hashsvc.index.live import LiveIndex
from hashsvc.v1 import hashsvc_pb2 as pb
from tests.test_round_trip import _contents, run  # noqa: F401 (a fixture)

LABEL_SETS = [
    {"source": "gifct", "entity": "isis", "content_type": "video"},
    {"source": "tcap", "ideology": "Islamist; Salafi", "file_type": " mp4 "},
    {"source": "te", "path": "C:\\x\\;y", "nbsp": "Al\u00a0Qaeda", "quote": 'say "x"'},
    {},
]


def _value(row: int) -> str:
    return f"{row:064x}"


def _csv(rows: list[tuple[str, str, dict | str]]) -> str:
    """signal_type,signal_value,entry,labels with labels as JSON cells."""
    out = io.StringIO()
    cells = [
        ["pdq", value, entry, labels if isinstance(labels, str) else json.dumps(labels)]
        for value, entry, labels in rows
    ]
    loaders.records.write_csv(out, ["signal_type", "signal_value", "entry", "labels"], cells)
    return out.getvalue()


def _feed(count: int, prefix: str = "gifct:") -> list[tuple[str, str, dict]]:
    return [(_value(row + 1), f"{prefix}{row}", LABEL_SETS[row % 4]) for row in range(count)]


@pytest.fixture
def store_and_index(store_url):
    store = open_store(store_url)
    live = LiveIndex(store, store)
    live.load()
    yield store, live
    store.close()


def _load_as_client(store, live, set_id: int, text: str, monkeypatch, block_rows: int = 7):
    """Through the client's reader (small blocks: many of them) and the wire
    form, as `hashsvc load` sends a file; client rejections added."""
    path = io.StringIO(text)
    monkeypatch.setattr(cli_bulk, "BATCH_ROWS", block_rows)
    monkeypatch.setattr(cli_bulk, "_sources", lambda paths: iter([("feed.csv", path)]))
    rejected = cli_bulk.RejectedRows()
    messages = list(
        cli_bulk.read_rows(["feed.csv"], "csv", cli_bulk.LoadProgress(None, False), rejected)
    )
    result = load(store, live, set_id, "op", [rows_from_pb(m) for m in messages])
    return result, rejected.kept, messages


def _load_row_by_row(store, live, set_id: int, text: str):
    items = list(loaders.read(io.StringIO(text), "csv", "feed.csv"))
    records = [i for i in items if isinstance(i, loaders.Record)]
    return load(store, live, set_id, "op", [RowBatch.from_records(records, "feed.csv")])


def _entries(store, set_id: int) -> dict[str, tuple[dict, list[tuple[str, bytes]]]]:
    out = {}
    for entry in store.list_entries(set_id, 0, 100_000):
        out[entry.name] = (entry.labels, sorted((s.kind, s.value) for s in entry.signals))
    return out


def test_a_feed_loads_column_wise_with_its_names_and_labels(store_and_index, monkeypatch):
    store, live = store_and_index
    hash_set = store.create_set("feed", "", {}, {})
    text = _csv(_feed(40))
    result, rejected, messages = _load_as_client(store, live, hash_set.id, text, monkeypatch)
    assert (result.added, result.rejected_count, rejected) == (40, 0, [])
    # every batch took the column-wise path, none row by row
    assert all(plain_rows(rows_from_pb(m)) is not None for m in messages)
    entries = _entries(store, hash_set.id)
    assert entries == {
        f"gifct:{row}": (LABEL_SETS[row % 4], [("pdq", bytes.fromhex(_value(row + 1)))])
        for row in range(40)
    }
    hits = live.indexes["pdq"].search([bytes.fromhex(_value(13))], 0)[0]
    assert {sid >> 20 for sid, _ in hits} == {store.get_entry(hash_set.id, "gifct:12").id}

    again, _, _ = _load_as_client(store, live, hash_set.id, text, monkeypatch)
    assert (again.added, again.updated, again.unchanged) == (0, 0, 40)

    # the partner relabels one entry and gives another a second hash
    feed = _feed(40)
    feed[5] = (feed[5][0], feed[5][1], {"source": "gifct", "entity": "aq"})
    feed[6] = ("e" * 64, feed[6][1], feed[6][2])
    changed, _, _ = _load_as_client(store, live, hash_set.id, _csv(feed), monkeypatch)
    assert (changed.added, changed.updated, changed.unchanged) == (0, 2, 38)
    entries = _entries(store, hash_set.id)
    assert entries["gifct:5"][0] == {"source": "gifct", "entity": "aq"}
    assert len(entries["gifct:6"][1]) == 2 and len(entries) == 40


@pytest.mark.parametrize("count,label_sets", [(2_000, 4), (5_000, 5_000)])
def test_many_rows_a_label_set_or_a_set_a_row(store_and_index, monkeypatch, count, label_sets):
    """Large batches: a few label sets shared by many rows (written a set at
    a time) and a set for every row, as a feed that puts its own id in the
    labels sends (more sets than any cache holds): each kept exactly."""
    store, live = store_and_index
    hash_set = store.create_set("many", "", {}, {})
    rows = [
        (_value(row + 1), f"te:{row}", {"source": "te", "n": str(row % label_sets)})
        for row in range(count)
    ]
    result, _, messages = _load_as_client(
        store, live, hash_set.id, _csv(rows), monkeypatch, block_rows=1_000
    )
    assert (result.added, result.rejected_count) == (count, 0)
    assert all(plain_rows(rows_from_pb(m)) is not None for m in messages)
    assert _entries(store, hash_set.id) == {
        name: (labels, [("pdq", bytes.fromhex(value))]) for value, name, labels in rows
    }


@pytest.mark.parametrize("named", [False, True])
def test_a_write_of_many_label_sets_keeps_each_rows_own(store_and_index, monkeypatch, named):
    """One write of rows under 150 label sets (SQLite numbers them, three
    digits before each name; names that are digits themselves too), named
    after their hashes or by the feed: every entry has exactly its row's
    name and labels, as the row-by-row path makes them."""
    store, live = store_and_index
    rows = [
        (
            f"{row * 7919 % 100_003 + 1:064x}",
            f"{row:07d}" if named else "",
            {"source": "gifct", "entity": f"e{row % 150}", "n": "9" * (row % 7)},
        )
        for row in range(900)
    ]
    text = _csv(rows)
    fast_set = store.create_set("fast", "", {}, {})
    fast, _, messages = _load_as_client(
        store, live, fast_set.id, text, monkeypatch, block_rows=1_000
    )
    assert all(plain_rows(rows_from_pb(m)) is not None for m in messages)
    slow_set = store.create_set("slow", "", {}, {})
    slow = _load_row_by_row(store, live, slow_set.id, text)
    assert (fast.added, fast.rejected_count) == (slow.added, slow.rejected_count) == (900, 0)
    entries = _entries(store, fast_set.id)
    assert entries == _entries(store, slow_set.id)
    assert entries == {
        (name or f"pdq:{value}"): (labels, [("pdq", bytes.fromhex(value))])
        for value, name, labels in rows
    }


def test_labelled_rows_without_names_and_empty_cells(store_and_index, monkeypatch):
    """Rows named after their hash, and a labels cell left empty (no labels)
    or a row without an entry among named ones."""
    store, live = store_and_index
    hash_set = store.create_set("mixed", "", {}, {})
    rows = [
        (_value(row + 1), "" if row % 3 else f"id-{row}", LABEL_SETS[row % 4]) for row in range(20)
    ]
    rows.append((_value(99), "", ""))
    text = _csv(rows)
    fast, _, _ = _load_as_client(store, live, hash_set.id, text, monkeypatch)
    other = store.create_set("mixed-row-by-row", "", {}, {})
    slow = _load_row_by_row(store, live, other.id, text)
    assert (fast.added, fast.rejected_count) == (slow.added, slow.rejected_count) == (21, 0)
    assert _entries(store, hash_set.id) == _entries(store, other.id)
    assert _entries(store, hash_set.id)[f"pdq:{_value(99)}"][0] == {}


def test_rows_named_after_their_hash_sent_again_later(store_and_index, monkeypatch):
    """Labelled rows without names go column-wise, named after their hash
    without a name made a row; a hash sent again in a later block is the
    same entry, its labels those of the later row, counted as an update
    (unchanged when they are the same)."""
    store, live = store_and_index
    rows = [(f"{row * 7919 % 1009 + 1:064x}", "", LABEL_SETS[row % 3]) for row in range(60)]
    rows += [(rows[5][0], "", LABEL_SETS[3]), (rows[40][0], "", LABEL_SETS[0])]
    rows.append((rows[41][0], "", rows[41][2]))  # the same labels again: unchanged
    hash_set = store.create_set("hashes", "", {}, {})
    result, _, messages = _load_as_client(
        store, live, hash_set.id, _csv(rows), monkeypatch, block_rows=9
    )
    assert len(messages) > 6 and all(plain_rows(rows_from_pb(m)) is not None for m in messages)
    assert (result.added, result.updated, result.unchanged, result.rejected_count) == (60, 2, 1, 0)
    last = {value: labels for value, _, labels in rows}
    assert _entries(store, hash_set.id) == {
        f"pdq:{value}": (labels, [("pdq", bytes.fromhex(value))]) for value, labels in last.items()
    }
    assert all(live.indexes["pdq"].search([bytes.fromhex(v)], 0)[0] for v in last)
    # without a repeat: one run, the entries as the row-by-row path makes them
    once = store.create_set("once", "", {}, {})
    _load_as_client(store, live, once.id, _csv(rows[:60]), monkeypatch, block_rows=9)
    slow = store.create_set("once-row-by-row", "", {}, {})
    _load_row_by_row(store, live, slow.id, _csv(rows[:60]))
    assert _entries(store, once.id) == _entries(store, slow.id)


def test_an_entry_of_several_rows_across_blocks_stays_whole(store_and_index, monkeypatch):
    store, live = store_and_index
    rows = _feed(12)
    # rows 6, 7, 8 (the end of the first block of 7 and the next) are one entry
    rows[6] = (rows[6][0], "video-1", {"group": "a", "outlet": "x"})
    rows[7] = (rows[7][0], "video-1", {"group": "b"})
    rows[8] = (rows[8][0], "video-1", {"group": "b"})
    rows[10] = (rows[10][0], "gifct:3", LABEL_SETS[0])  # a name again, later on
    text = _csv(rows)
    fast_set = store.create_set("fast", "", {}, {})
    fast, _, _ = _load_as_client(store, live, fast_set.id, text, monkeypatch)
    slow_set = store.create_set("slow", "", {}, {})
    slow = _load_row_by_row(store, live, slow_set.id, text)
    assert (fast.added, fast.rejected_count) == (slow.added, 0)
    assert _entries(store, fast_set.id) == _entries(store, slow_set.id)
    labels, signals = _entries(store, fast_set.id)["video-1"]
    assert labels == {"group": "b", "outlet": "x"} and len(signals) == 3
    assert len(_entries(store, fast_set.id)["gifct:3"][1]) == 2


BAD_ROWS = [
    ("{not json", "not a JSON object"),
    ('{"group": 1}', "not a JSON object of strings"),
    ('{"1bad": "x"}', "invalid label key"),
    ('{"group": "a\\u0007"}', "no control characters"),
    (json.dumps({f"k{n}": "v" for n in range(33)}), "at most 32 labels"),
]


@pytest.mark.parametrize("cell,reason", BAD_ROWS)
def test_bad_labels_are_rejected_with_their_line(store_and_index, monkeypatch, cell, reason):
    """The client rejects them as its row-by-row reader does; the server,
    sent them anyway, rejects the same rows with the same reasons."""
    store, live = store_and_index
    rows = _feed(15)
    rows[9] = (rows[9][0], rows[9][1], cell)
    text = _csv(rows)
    hash_set = store.create_set("bad", "", {}, {})
    result, rejected, _ = _load_as_client(store, live, hash_set.id, text, monkeypatch)
    expected = [
        r
        for r in loaders.read(io.StringIO(text), "csv", "feed.csv")
        if isinstance(r, loaders.Rejected)
    ]
    assert rejected == expected and [r.line for r in rejected] == [11]
    assert reason in rejected[0].reason and result.added == 14

    # a client that sends the bad row: the server's own checks
    raw = RowBatch(
        signal_type=["pdq"] * 15,
        value=[bytes.fromhex(v) for v, _, _ in rows],
        line=list(range(2, 17)),
        entry=[f"x{n}" for n in range(15)],
        labels=[c if isinstance(c, str) else json.dumps(c) for _, _, c in rows],
        source="feed.csv",
    )
    other = store.create_set("bad-server", "", {}, {})
    result = load(store, live, other.id, "op", [raw])
    assert result.added == 14 and [(r.line, reason in r.reason) for r in result.rejected] == [
        (11, True)
    ]


@pytest.mark.parametrize(
    "entry,reason",
    [("a\tb", "no control characters"), ("x" * 513, "1-512 characters")],
)
def test_bad_names_are_rejected_with_their_line(store_and_index, monkeypatch, entry, reason):
    store, live = store_and_index
    rows = _feed(10)
    rows[4] = (rows[4][0], entry, rows[4][2])
    hash_set = store.create_set("bad-name", "", {}, {})
    raw = RowBatch(
        signal_type=["pdq"] * 10,
        value=[bytes.fromhex(v) for v, _, _ in rows],
        line=list(range(2, 12)),
        entry=[e for _, e, _ in rows],
        labels=[json.dumps(c) for _, _, c in rows],
    )
    assert plain_rows(raw) is None  # the row-by-row path, which names the row
    result = load(store, live, hash_set.id, "op", [raw])
    assert result.added == 9 and [r.line for r in result.rejected] == [6]
    assert reason in result.rejected[0].reason


def test_a_repeated_name_in_a_batch_is_one_entry_as_before(store_and_index):
    """Two rows of one name in one batch (a tampered or careless feed) are
    one entry with both signals and the labels merged, not two entries."""
    store, live = store_and_index
    hash_set = store.create_set("repeat", "", {}, {})
    batch = RowBatch(
        signal_type=["pdq", "pdq", "pdq"],
        value=[bytes.fromhex(_value(n)) for n in (1, 2, 3)],
        line=[2, 3, 4],
        entry=["same", "same", "other"],
        labels=['{"a": "1"}', '{"b": "2"}', "{}"],
    )
    assert plain_rows(batch) is None
    result = load(store, live, hash_set.id, "op", [batch])
    assert result.added == 2
    assert _entries(store, hash_set.id)["same"][0] == {"a": "1", "b": "2"}
    assert store.get_set_by_id(hash_set.id).entry_count == 2


def test_a_feed_round_trips_through_the_cli(run, tmp_path):  # noqa: F811 (the fixture)
    feed = tmp_path / "feed.csv"
    feed.write_text(_csv(_feed(30)), encoding="utf-8")
    run("sets", "create", "feed")
    summary = json.loads(run("load", "--set", "feed", "--json", "--quiet", str(feed)))
    assert (summary["added"], summary["rejected"]) == (30, 0)
    want = _contents(run, "feed")
    assert (
        "gifct:2",
        "pdq",
        _value(3),
        "original",
        json.dumps(LABEL_SETS[2], sort_keys=True),
    ) in want
    exported = tmp_path / "export.csv"
    exported.write_text(run("export", "--set", "feed", "--format", "csv"), encoding="utf-8")
    run("sets", "create", "copy")
    summary = json.loads(run("load", "--set", "copy", "--json", "--quiet", str(exported)))
    assert (summary["added"], summary["rejected"]) == (30, 0)
    assert _contents(run, "copy") == want


def test_a_label_value_a_row_beside_shared_sets(store_and_index):
    """A feed's source id a row (RowBatch.label_key and label_values) beside
    a few shared label sets: the column-wise path stores exactly the labels
    text the row-by-row path stores (the key in its sorted place, a value
    needing JSON escapes, a set that has the key already, a row without a
    value); a bad value sends the batch row by row, which rejects that row
    with its line."""
    store, live = store_and_index
    shared = ['{"a": "1", "z": "2"}', '{"source_id": "theirs", "feed": "f"}', "", '{"m": "x"}']
    values = ["17", 'id "with" quotes\\', "", "123,456", "n\u00e9"]
    rows = 40

    def batch(first: int, bad_row: int | None = None) -> RowBatch:
        label_values = [values[row % len(values)] for row in range(rows)]
        if bad_row is not None:
            label_values[bad_row] = "tab\there"
        return RowBatch(
            signal_type=["pdq"] * rows,
            value=[bytes.fromhex(_value(first + row)) for row in range(rows)],
            line=list(range(2, rows + 2)),
            entry=[f"feed:{first + row}" for row in range(rows)],
            labels=[shared[row % len(shared)] for row in range(rows)],
            label_key="source_id",
            label_values=label_values,
        )

    def wanted(first: int) -> dict[str, dict]:
        out = {}
        for row in range(rows):
            labels = json.loads(shared[row % len(shared)] or "{}")
            if values[row % len(values)]:
                labels["source_id"] = values[row % len(values)]
            out[f"feed:{first + row}"] = labels
        return out

    column_wise = store.create_set("columns", "", {}, {})
    assert plain_rows(batch(1)) is not None
    assert load(store, live, column_wise.id, "op", [batch(1)]).added == rows
    row_by_row = store.create_set("rows", "", {}, {})
    # a name repeated in the batch sends it row by row
    repeated = batch(1)
    repeated.entry[-1] = repeated.entry[0]
    assert plain_rows(repeated) is None
    assert load(store, live, row_by_row.id, "op", [repeated]).added == rows - 1
    got = {name: labels for name, (labels, _) in _entries(store, column_wise.id).items()}
    assert got == wanted(1)
    expected = wanted(1)
    expected["feed:1"] = {**expected["feed:1"], **expected.pop(f"feed:{rows}")}
    assert {n: labels for n, (labels, _) in _entries(store, row_by_row.id).items()} == expected
    with store._read() as cur:  # stored: the canonical text of the shared set, the id beside it
        cur.execute(
            "SELECT e.name, l.labels, e.source_id FROM entries e"
            " JOIN label_sets l ON l.id = e.label_set_id WHERE e.set_id = ?",
            (column_wise.id,),
        )
        stored = cur.fetchall()
        for name, text, source_id in stored:
            labels = dict(wanted(1)[name])
            assert source_id == labels.pop("source_id", None)
            assert text == json.dumps(labels, sort_keys=True)
        # 40 entries, each with its own id, share the few sets (one of
        # which said a source id of its own: split off, the row's id wins)
        assert len({text for _, text, _ in stored}) == len(shared)

    bad = store.create_set("bad", "", {}, {})
    assert plain_rows(batch(100, bad_row=7)) is None
    result = load(store, live, bad.id, "op", [batch(100, bad_row=7)])
    assert (result.added, result.rejected_count) == (rows - 1, 1)
    assert result.rejected[0].line == 9 and "control characters" in result.rejected[0].reason


def test_a_feed_travels_packed_with_its_label_sets_once(store_and_index, monkeypatch):
    """The client sends a feed's block packed: the values in one field, the
    names as a column and each distinct labels text once (label_sets), a
    row's an index; the server reads it back row for row."""
    store, live = store_and_index
    hash_set = store.create_set("packed", "", {}, {})
    rows = _feed(30)
    _, _, messages = _load_as_client(store, live, hash_set.id, _csv(rows), monkeypatch, 10)
    named = [m for m in messages if m.packed_type]
    assert named and all(len(m.label_sets) <= 4 and not len(m.labels) for m in named)
    batches = [rows_from_pb(pb.BulkRows.FromString(m.SerializeToString())) for m in messages]
    assert [name for b in batches for name in b.entry] == [name for _, name, _ in rows]
    assert all(isinstance(b, PackedRows) and len(b.label_sets) <= 4 for b in batches)
    assert [json.loads(text) for b in batches for text in b.row_labels()] == [
        labels for _, _, labels in rows
    ]
    assert _entries(store, hash_set.id) == {
        name: (labels, [("pdq", bytes.fromhex(value))]) for value, name, labels in rows
    }


def test_one_hash_in_both_cases_in_a_labelled_block_is_one_entry(store_and_index, monkeypatch):
    """Labelled rows named after their hash are checked distinct by their
    digits without a name made a row: the same hash in upper and lower case
    is one entry (its rows read row by row, the labels merged), as the
    row-by-row path makes it."""
    store, live = store_and_index
    twin = f"{0xABC:064x}"
    rows = [(_value(row + 1), "", LABEL_SETS[row % 3]) for row in range(7)]
    rows.append((twin, "", LABEL_SETS[1]))
    rows.append((twin.upper(), "", LABEL_SETS[3] | {"late": "yes"}))
    rows.append(("AB" * 32, "", LABEL_SETS[0]))  # upper case, no twin: still one entry
    text = _csv(rows)
    blocks = list(loaders.read_blocks(io.StringIO(text), "csv", "f.csv", 50, 50))
    assert not any(isinstance(b, loaders.PlainRows) for b in blocks)
    fast_set = store.create_set("cases", "", {}, {})
    fast, _, _ = _load_as_client(store, live, fast_set.id, text, monkeypatch, block_rows=50)
    slow_set = store.create_set("cases-row-by-row", "", {}, {})
    slow = _load_row_by_row(store, live, slow_set.id, text)
    assert (fast.added, fast.rejected_count) == (slow.added, slow.rejected_count) == (9, 0)
    assert _entries(store, fast_set.id) == _entries(store, slow_set.id)
    assert _entries(store, fast_set.id)[f"pdq:{twin}"][0] == LABEL_SETS[1] | {"late": "yes"}
    # without the twin the block is packed, the upper-case hash named in lower case
    single = _csv([r for r in rows if r[0] != twin.upper()])
    packed = list(loaders.read_blocks(io.StringIO(single), "csv", "f.csv", 50, 50))
    assert [type(b) for b in packed] == [loaders.PlainRows]
    assert packed[0].label_sets is not None and len(packed[0].label_sets) == 3
    assert [packed[0].label_sets[c] for c in packed[0].label_codes] == packed[0].labels


def test_lines_read_in_chunks_keep_multiline_cells_and_count_progress(monkeypatch, tmp_path):
    """The client reads a file ~1 MB at a time: a quoted cell over several
    lines that a chunk ends inside is read whole (one row, rejected for its
    control character), the rows sent, the rejections and the progress
    (characters read) are the same whatever the chunk size."""
    rows = _feed(40)
    rows[7] = (rows[7][0], rows[7][1], "note=two\nlines;source=x")  # a cell of two lines
    path = tmp_path / "feed.csv"
    text = _csv(rows)
    with open(path, "w", newline="") as f:
        f.write(text)

    def read(chars: int):
        monkeypatch.setattr(cli_bulk, "_READ_CHARS", chars)
        progress = cli_bulk.LoadProgress(None, False)
        rejected = cli_bulk.RejectedRows()
        messages = list(cli_bulk.read_rows([str(path)], "csv", progress, rejected))
        lines = [r.line for r in rejected.kept]
        return [m.SerializeToString() for m in messages], progress.bytes, rejected.count, lines

    whole = read(1 << 20)
    assert whole[1] == len(text) and whole[2] == 1 and "two\nlines" in text
    assert sum(len(pb.BulkRows.FromString(m).entry) for m in whole[0]) == 39
    for chars in (1, 7, 150, 1000):
        assert read(chars) == whole, chars


def test_label_sets_that_say_nothing_load_column_wise(store_and_index):
    """Packed rows whose one label set is "" (the rows say nothing about
    labels: an API caller's, the CLI sends an empty cell as {}) are checked
    column-wise as rows without labels, and an entry already there keeps
    its labels, as on the row-by-row path."""
    store, live = store_and_index
    hash_set = store.create_set("say-nothing", "", {}, {})
    values = [bytes.fromhex(_value(row + 1)) for row in range(6)]
    load(
        store,
        live,
        hash_set.id,
        "op",
        [RowBatch(["pdq"], [values[0]], labels=['{"group": "ISIS"}'])],
    )
    packed = rows_from_pb(
        pb.BulkRows(
            packed_type="pdq", packed_values=b"".join(values), label_sets=[""], label_set=[0] * 6
        )
    )
    checked = plain_rows(packed)
    assert checked is not None and not checked.labelled
    result = load(store, live, hash_set.id, "op", [packed])
    assert (result.added, result.unchanged, result.rejected_count) == (5, 1, 0)
    entries = _entries(store, hash_set.id)
    assert entries[f"pdq:{_value(1)}"][0] == {"group": "ISIS"}
    assert all(entries[f"pdq:{_value(row + 1)}"][0] == {} for row in range(1, 6))


def test_a_part_of_a_run_carries_only_its_own_label_sets(store_and_index):
    """A run of rows each under a label set of its own (a feed's source id)
    is written in parts: each part stages the sets its rows use, not the
    whole run's (a feed's write of 2,000 rows staged its batch's 20,000),
    and every row keeps exactly its own labels."""
    store, _ = store_and_index
    hash_set = store.create_set("parts", "", {}, {})
    count = 600
    texts = [json.dumps({"feed": "f", "source_id": str(row)}) for row in range(count)]
    codes = np.arange(count, dtype=np.int64)[::-1].copy()  # not in order of the texts
    rows = PlainSignals.numbered(
        "pdq",
        "photo",
        np.array([bytes.fromhex(_value(row + 1)) for row in range(count)])
        .view(np.uint8)
        .reshape(count, 32),
        None,
        np.array([f"f:{row:04d}" for row in range(count)], dtype=object),
        codes,
        texts,
    )
    for start in range(0, count, 150):
        part = rows[start : start + 150]
        part_codes, part_texts = part.label_codes()
        assert len(part_texts) == 150
        assert [part_texts[c] for c in part_codes.tolist()] == [
            texts[c] for c in codes[start : start + 150].tolist()
        ]
        counts, _ = store.bulk_add_plain(hash_set.id, part, "op")
        assert counts.added == 150
    entries = _entries(store, hash_set.id)
    assert {name: labels for name, (labels, _) in entries.items()} == {
        f"f:{row:04d}": json.loads(texts[codes[row]]) for row in range(count)
    }
