"""Bulk loads on both stores: idempotent, labels updated, tombstones removed,
what was committed matches at once, a set round-trips through export, and a
load killed with kill -9 (client or server) completes when run again."""

from __future__ import annotations

import io
import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import loaders
from hashdb import open_store
from hashsvc.client import cli
from hashsvc.core import auth
from hashsvc.core.bulk import RowBatch, load
from hashsvc.index.live import LiveIndex
from hashsvc.v1 import hashsvc_pb2 as pb
from hashsvc.v1 import hashsvc_pb2_grpc as pb_grpc
from loaders.records import Record
from tests.helpers import popen
from tests.test_process import REPO, ServerProcess

PDQ = "0123456789abcdef" * 4


def _records(text: str) -> list[Record]:
    items = list(loaders.read(io.StringIO(text), "csv", "f.csv"))
    assert all(isinstance(i, Record) for i in items), items
    return items


def _load(store, live, set_id, text: str, strict: bool = False):
    return load(store, live, set_id, "op", [RowBatch.from_records(_records(text))], strict)


@pytest.fixture
def store_and_index(store_url):
    store = open_store(store_url)
    live = LiveIndex(store, store)
    live.load()
    yield store, live
    store.close()


def _near(live, hex_value: str) -> set[int]:
    hits = live.indexes["pdq"].search([bytes.fromhex(hex_value)], 0)[0]
    return {sid >> 20 for sid, _ in hits}


def test_idempotent_labels_update_and_tombstones(store_and_index):
    store, live = store_and_index
    hash_set = store.create_set("partner", "", {}, {})
    other = "f" * 64
    text = (
        "signal_type,signal_value,entry,labels\n"
        f"pdq,{PDQ},amaq-1,group=ISIS\n"
        f"md5,{'a' * 32},amaq-1,group=ISIS\n"
        f"pdq,{other},,group=AQ\n"
    )
    first = _load(store, live, hash_set.id, text)
    assert (first.added, first.updated, first.unchanged) == (2, 0, 0)
    entry = store.get_entry(hash_set.id, "amaq-1")
    assert entry.labels == {"group": "ISIS"} and len(entry.signals) == 2
    assert _near(live, PDQ) == {entry.id}  # matches as soon as the load returns

    again = _load(store, live, hash_set.id, text)
    assert (again.added, again.updated, again.unchanged) == (0, 0, 2)
    assert store.get_set_by_id(hash_set.id).entry_count == 2

    relabelled = _load(store, live, hash_set.id, text.replace("group=ISIS", "group=IS"))
    assert (relabelled.added, relabelled.updated, relabelled.unchanged) == (0, 1, 1)
    assert store.get_entry(hash_set.id, "amaq-1").labels == {"group": "IS"}

    gone = _load(
        store,
        live,
        hash_set.id,
        f"signal_type,signal_value,entry,deleted\npdq,,amaq-1,true\npdq,{other},,yes\n"
        f"pdq,,never-there,true\n",
    )
    assert (gone.removed, gone.unchanged) == (2, 1)
    assert store.get_set_by_id(hash_set.id).entry_count == 0
    assert _near(live, PDQ) == set() and _near(live, other) == set()
    # a replica that follows the change feed from scratch agrees
    replica = LiveIndex(store, store)
    replica.load()
    assert len(replica.indexes["pdq"]) == 0


def test_a_tombstone_by_hash_retracts_entries_loaded_under_a_partner_id(store_and_index):
    """A partner loads hashes under its own ids, then retracts one by type and
    value alone: the entries that are only that hash go, in this set only;
    an entry holding it among other signals stays and the row says so."""
    store, live = store_and_index
    hash_set = store.create_set("te", "", {}, {})
    elsewhere = store.create_set("other", "", {}, {})
    md5 = "b" * 32
    loaded = (
        "signal_type,signal_value,entry,labels\n"
        f"pdq,{PDQ},te-1001,group=ISIS\n"
        f"pdq,{PDQ},te-1002,group=ISIS\n"  # a second partner id for the same hash
        f"md5,{md5},te-2001,group=AQ\n"
        f"pdq,{PDQ},video-7,group=ISIS\n"  # a video: the hash is one of its frames
        f"pdq,{'e' * 64},video-7,group=ISIS\n"
    )
    assert _load(store, live, hash_set.id, loaded).added == 4
    assert _load(store, live, elsewhere.id, loaded).added == 4
    retract = f"signal_type,signal_value,deleted\npdq,{PDQ},true\nmd5,{md5},true\n"
    result = _load(store, live, hash_set.id, retract)
    assert result.removed == 3  # te-1001, te-1002, te-2001
    assert [(r.line, "video-7" in r.reason) for r in result.rejected] == [(2, True)]
    names = {e.name for e in store.list_entries(hash_set.id, 0, 100)}
    assert names == {"video-7"}
    assert {e.name for e in store.list_entries(elsewhere.id, 0, 100)} >= {"te-1001", "te-2001"}
    assert _near(live, PDQ) == {
        e.id
        for e in store.list_entries(elsewhere.id, 0, 100)
        if e.name in ("te-1001", "te-1002", "video-7")
    } | {store.get_entry(hash_set.id, "video-7").id}
    # again: nothing left to retract but the video, still reported
    again = _load(store, live, hash_set.id, retract)
    assert (again.removed, again.rejected_count) == (0, 1)


def test_plain_hash_list_is_idempotent_and_matches_at_once(store_and_index):
    store, live = store_and_index
    hash_set = store.create_set("plain", "", {}, {})
    values = [os.urandom(32) for _ in range(3000)]
    # an entry named as the list names values[0], with another signal: it gains this one
    _load(
        store,
        live,
        hash_set.id,
        f"signal_type,signal_value,entry\nmd5,{'b' * 32},pdq:{values[0].hex()}\n",
    )
    rows = RowBatch(signal_type=["pdq"] * 3001, value=[*values, values[1]], quality=[80] * 3001)
    first = load(store, live, hash_set.id, "op", [rows])
    assert (first.added, first.updated, first.unchanged) == (2999, 1, 0)
    entry = store.get_entry(hash_set.id, f"pdq:{values[2].hex()}")
    assert [(s.kind, s.value, s.quality) for s in entry.signals] == [("pdq", values[2], 80)]
    assert _near(live, values[2].hex()) == {entry.id}
    assert _near(live, values[0].hex()) == {
        store.get_entry(hash_set.id, f"pdq:{values[0].hex()}").id
    }

    again = load(store, live, hash_set.id, "op", [rows])
    assert (again.added, again.updated, again.unchanged) == (0, 0, 3000)
    assert store.get_set_by_id(hash_set.id).entry_count == 3000
    # a replica that follows the change feed from scratch agrees
    replica = LiveIndex(store, store)
    replica.load()
    assert len(replica.indexes["pdq"]) == len(live.indexes["pdq"]) == 3000


def test_plain_rows_are_sorted_across_batches_and_keep_their_order(store_and_index, monkeypatch):
    """Plain rows wait to be written in value order, a run at a time: a value
    repeated in a later batch is one entry with the first row's quality, a
    tombstone after them removes the entry, and every row matches once the
    load returns."""
    from hashsvc.core import bulk

    monkeypatch.setattr(bulk, "SORT_ROWS", 2_500)  # runs span batches
    monkeypatch.setattr(bulk, "MIN_WRITE_ROWS", 300)
    store, live = store_and_index
    hash_set = store.create_set("sorted", "", {}, {})
    values = [os.urandom(32) for _ in range(6_000)]
    batches = [
        RowBatch(["pdq"] * 1_000, values[i : i + 1_000], quality=[50 + i // 1_000] * 1_000)
        for i in range(0, 6_000, 1_000)
    ]
    batches.insert(2, RowBatch(["pdq"], [values[5_999]], quality=[99]))  # seen first here
    batches.append(RowBatch(["pdq"], [b""], entry=[f"pdq:{values[10].hex()}"], deleted=[True]))
    batches.append(RowBatch(["pdq"] * 2, [values[0], values[20]]))  # no quality column
    result = load(store, live, hash_set.id, "op", batches)
    # unchanged: values[5_999] again in a later run, values[0] and values[20]
    assert (result.added, result.removed, result.unchanged) == (6_000, 1, 3)
    assert store.get_set_by_id(hash_set.id).entry_count == 5_999
    last = store.get_entry(hash_set.id, f"pdq:{values[5_999].hex()}")
    assert [s.quality for s in last.signals] == [99]
    assert [
        s.quality for s in store.get_entry(hash_set.id, f"pdq:{values[3_500].hex()}").signals
    ] == [53]
    assert _near(live, values[10].hex()) == set()
    assert all(len(_near(live, v.hex())) == 1 for v in values[:10] + values[11:])
    replica = LiveIndex(store, store)
    replica.load()
    assert len(replica.indexes["pdq"]) == len(live.indexes["pdq"]) == 5_999


def test_rows_of_an_entry_add_signals_and_bad_rows_are_reported(store_and_index):
    store, live = store_and_index
    hash_set = store.create_set("videos", "", {}, {})
    frames = "".join(f"{n},90,{PDQ[:-2]}{n:02x},{n / 30:.3f}\n" for n in range(5))
    records = [r for r in loaders.read(io.StringIO(frames), "vpdq", "clip.mp4.txt")]
    result = load(store, live, hash_set.id, "op", [RowBatch.from_records(records[:3])])
    assert result.added == 1
    result = load(store, live, hash_set.id, "op", [RowBatch.from_records(records)])
    assert (result.added, result.updated) == (0, 1)
    entry = store.get_entry(hash_set.id, "clip.mp4")
    assert entry.media_type == "video" and len(entry.signals) == 5
    assert [s.variant for s in entry.signals] == [f"frame:{n}" for n in range(5)]

    bad = RowBatch(
        signal_type=["pdq", "pdq", "nope"],
        value=[bytes(16), bytes(32), bytes(32)],
        line=[7, 8, 9],
        source="x.csv",
    )
    result = load(store, live, hash_set.id, "op", [bad])
    assert result.added == 1 and result.rejected_count == 2
    assert [(r.line, r.source) for r in result.rejected] == [(7, "x.csv"), (9, "x.csv")]


def test_strict_loads_nothing_when_a_row_is_bad(store_and_index):
    store, live = store_and_index
    hash_set = store.create_set("strict", "", {}, {})
    good = RowBatch(signal_type=["pdq"], value=[bytes.fromhex(PDQ)], line=[2])
    bad = RowBatch(signal_type=["pdq"], value=[bytes(16)], line=[3])
    result = load(store, live, hash_set.id, "op", [good, bad], strict=True)
    assert result.rejected_count == 1 and result.added == 0 and not result.written
    assert store.get_set_by_id(hash_set.id).entry_count == 0
    result = load(store, live, hash_set.id, "op", [good], strict=True)
    assert result.added == 1 and result.written


def _run_cli(monkeypatch, capsys, harness, *argv, stdin: str | None = None):
    monkeypatch.setenv("HASHSVC_SERVER", harness.address)
    monkeypatch.setenv("HASHSVC_TOKEN", harness.tokens["operator"])
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_round_trip_and_since_through_the_cli(
    store_url, tmp_path, monkeypatch, capsys, make_harness
):
    harness = make_harness(store_url)
    run = lambda *a, **kw: _run_cli(monkeypatch, capsys, harness, *a, **kw)  # noqa: E731
    for name in ("src", "copy"):
        assert run("sets", "create", name)[0] == 0
    source = tmp_path / "list.csv"
    source.write_text(
        "signal_type,signal_value,entry,labels,quality,variant,position\n"
        f"pdq,{PDQ},a,group=ISIS;outlet=Amaq,90,,\n"
        f"md5,{'b' * 32},a,group=ISIS;outlet=Amaq,,,\n"
        f"pdq,{'c' * 64},vid,group=AQ,80,frame:0,0\n"
        f"pdq,{'d' * 64},vid,group=AQ,70,frame:30,1\n"
        f"chromaprint,{'0badf00d' * 3},song,,,,\n"
        f"text_sha256,{'e' * 64},doc,,,document,\n"
    )
    code, out, err = run("load", "--set", "src", "--json", str(source))
    assert code == 0, err
    assert json_of(out)["added"] == 4
    code, exported, err = run("export", "--set", "src", "--format", "jsonl")
    assert code == 0, err
    code, out, err = run("load", "--set", "copy", "--json", "-", stdin=exported)
    assert code == 0 and json_of(out)["added"] == 4, err
    code, again, _ = run("export", "--set", "copy", "--format", "jsonl")
    assert sorted(again.splitlines()) == sorted(exported.splitlines())
    for fmt in ("csv", "tsv"):  # hma has no place for frames' variants
        code, text, _ = run("export", "--set", "copy", "--format", fmt)
        code, out, err = run("load", "--set", "copy", "--json", "--format", fmt, "-", stdin=text)
        assert code == 0 and json_of(out)["unchanged"] == 4, (fmt, err, out)
    code, _, _ = run("export", "--set", "src", "--format", "vpdq", "--output", str(tmp_path / "v"))
    assert code == 0 and os.listdir(tmp_path / "v") == ["vid.txt"]

    time.sleep(0.01)
    mark = time.time()
    time.sleep(0.01)
    assert run("remove", "--set", "src", "a")[0] == 0
    since = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(mark)) + f".{int(mark % 1 * 1e6):06d}"
    code, delta, err = run("export", "--set", "src", "--since", since)
    assert code == 0, err
    rows = delta.splitlines()
    assert len(rows) == 2 and rows[1].startswith("pdq,") and rows[1].endswith(",true")
    code, out, err = run("load", "--set", "copy", "--json", "-", stdin=delta)
    assert code == 0 and json_of(out)["removed"] == 1, err
    # an addition and a relabelling after the mark are in the delta too;
    # the entries left alone are not
    changes = f"signal_type,signal_value,entry,labels\npdq,{'9' * 64},new,group=HTS\n"
    changes += f"chromaprint,{'0badf00d' * 3},song,group=AQ\n"
    assert run("load", "--set", "src", "-", stdin=changes)[0] == 0
    code, delta, err = run("export", "--set", "src", "--since", since, "--format", "jsonl")
    assert code == 0, err
    changed = {
        (row["entry"], row.get("deleted", False), json.dumps(row["labels"], sort_keys=True))
        for row in map(json.loads, delta.splitlines())
    }
    assert changed == {
        ("a", True, '{"group": "ISIS", "outlet": "Amaq"}'),  # its two signals
        ("new", False, '{"group": "HTS"}'),
        ("song", False, '{"group": "AQ"}'),
    }
    one_bad = f"signal_type,signal_value\npdq,{'1' * 64}\npdq,{'1' * 32}\n"
    code, out, err = run("load", "--set", "copy", "--strict", "--json", "-", stdin=one_bad)
    assert code == 1 and "stdin:3:" in err
    assert json_of(out)["rejected"] == 1
    assert json_of(out)["added"] == 0


def json_of(text: str) -> dict:
    import json

    return json.loads(text.strip().splitlines()[-1])


# ------------------------------------------------------------------ kill -9


ROWS = 60_000
# A plain list (no labels) goes the fast way: packed batches, sorted runs of
# bulk.SORT_ROWS written by a writer thread and followed by the index; this
# many rows make three runs, so a kill lands while runs are being written.
PLAIN_ROWS = 600_000


def _big_file(tmp_path, kind: str = "labelled") -> tuple[str, int]:
    path = tmp_path / "big.csv"
    if kind == "plain":
        with open(path, "w") as f:
            f.write("signal_type,signal_value\n")
            f.writelines(f"pdq,{os.urandom(32).hex()}\n" for _ in range(PLAIN_ROWS))
        return str(path), PLAIN_ROWS
    with open(path, "w") as f:
        f.write("signal_type,signal_value,labels\n")
        for _ in range(ROWS):
            f.write(f"pdq,{os.urandom(32).hex()},source=partner\n")
    return str(path), ROWS


def _load_process(server: ServerProcess, token: str, path: str) -> subprocess.Popen:
    env = {**os.environ, "HASHSVC_SERVER": f"127.0.0.1:{server.port}", "HASHSVC_TOKEN": token}
    return popen(
        [sys.executable, "-m", "hashsvc", "load", "--set", "s", "--quiet", "--json", path],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip


def _entry_count(server: ServerProcess, metadata) -> int:
    curation = pb_grpc.CurationStub(server.channel)
    return curation.GetSet(pb.GetSetRequest(name="s"), metadata=metadata, timeout=10).entry_count


def _wait_for_some_entries(server, metadata, proc) -> int:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        count = _entry_count(server, metadata)
        if count > 0:
            return count
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise AssertionError("the load wrote nothing")


@pytest.fixture
def admin_token(store_url):
    store = open_store(store_url)
    _, token = auth.create_token(store, "admin", "test")
    store.close()
    return token


@pytest.mark.parametrize("kind", ["labelled", "plain"])
@pytest.mark.parametrize("victim", ["client", "server"])
def test_load_killed_with_kill_9_completes_when_run_again(
    store_url, admin_token, tmp_path, victim, kind
):
    path, rows = _big_file(tmp_path, kind)
    metadata = (("authorization", f"Bearer {admin_token}"),)
    server = ServerProcess(store_url, tmp_path)
    pb_grpc.CurationStub(server.channel).CreateSet(pb.CreateSetRequest(name="s"), metadata=metadata)
    proc = _load_process(server, admin_token, path)
    _wait_for_some_entries(server, metadata, proc)
    if victim == "client":
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    else:
        server.stop(signal.SIGKILL)
        assert proc.wait(timeout=60) == 3  # unreachable
        server = ServerProcess(store_url, tmp_path)
    partial = _entry_count(server, metadata)
    assert 0 < partial < rows
    again = _load_process(server, admin_token, path)
    out, err = again.communicate(timeout=300)
    assert again.returncode == 0, err
    summary = json_of(out.decode())
    assert summary["added"] + summary["unchanged"] == rows and summary["rejected"] == 0
    assert summary["unchanged"] >= partial - 1  # the committed batches were kept
    assert _entry_count(server, metadata) == rows  # nothing lost, no duplicates
    if kind == "plain":  # every row matches once the load has returned
        matcher = pb_grpc.MatcherStub(server.channel)
        with open(path) as f:
            lines = f.read().splitlines()[1:]
        for line in random.Random(0).sample(lines, 20):
            value = line.split(",")[1]
            found = matcher.Match(
                pb.MatchRequest(signal=pb.SignalValue(signal_type="pdq", value=value)),
                metadata=metadata,
                timeout=10,
            )
            assert [(m.entry, m.distance) for m in found.matches] == [(f"pdq:{value}", 0)]
    server.stop(signal.SIGTERM)


def test_client_cancelling_a_load_is_a_clean_cancel(tmp_path, caplog, make_harness):
    """A client that goes away mid-load is no internal error: the server logs
    no traceback, and what it committed stays (a rerun completes it)."""
    import logging
    import threading

    harness = make_harness(f"sqlite:///{tmp_path}/db.sqlite")
    stubs, metadata = harness.stubs("operator")
    stubs.curation.CreateSet(pb.CreateSetRequest(name="s"), metadata=metadata)
    sent = threading.Event()
    release = threading.Event()

    def requests():
        yield pb.BulkLoadRequest(header=pb.BulkLoadHeader(set="s"))
        labelled = pb.BulkRows(
            signal_type=["pdq"] * 100,
            value=[os.urandom(32) for _ in range(100)],
            labels=['{"k": "v"}'] * 100,
        )
        yield pb.BulkLoadRequest(rows=labelled)
        sent.set()
        release.wait(10)  # the client is still "sending" when it cancels

    with caplog.at_level(logging.INFO):
        call = stubs.curation.BulkLoad.future(requests(), metadata=metadata)
        assert sent.wait(10)
        deadline = time.monotonic() + 10
        while harness.core.store.get_set("s").entry_count < 100:
            assert time.monotonic() < deadline, "the first batch was not written"
            time.sleep(0.02)
        call.cancel()
        release.set()
        time.sleep(0.5)  # the server notices the cancel
    assert call.cancelled()
    internal = [r for r in caplog.records if "internal error" in r.getMessage()]
    assert internal == [] and not [r for r in caplog.records if r.exc_info]
    assert harness.core.store.get_set("s").entry_count == 100


def test_an_entry_holds_at_most_the_signal_limit(store_and_index, monkeypatch):
    """Rows past an entry's signal limit are rejected with their line, in one
    load or across loads; the others load."""
    from hashdb import bulk_sql
    from hashsvc.core import bulk, bulk_rows

    monkeypatch.setattr(bulk, "MAX_SIGNALS_PER_ENTRY", 5)
    monkeypatch.setattr(bulk_rows, "MAX_SIGNALS_PER_ENTRY", 5)
    monkeypatch.setattr(bulk_sql, "MAX_SIGNALS_PER_ENTRY", 5)
    store, live = store_and_index
    hash_set = store.create_set("capped", "", {}, {})
    values = [os.urandom(32) for _ in range(10)]

    def rows(vals):  # lines 2, 3, ...
        header = "signal_type,signal_value,entry\n"
        text = header + "".join(f"pdq,{v.hex()},video-1\n" for v in vals)
        return RowBatch.from_records(_records(text), "f.csv")

    first = load(store, live, hash_set.id, "op", [rows(values[:7] + values[:1])])
    assert first.added == 1 and first.rejected_count == 2
    assert [(r.line, r.reason) for r in first.rejected] == [
        (7, "entry 'video-1' holds at most 5 signals"),
        (8, "entry 'video-1' holds at most 5 signals"),
    ]
    again = load(store, live, hash_set.id, "op", [rows(values[:1] + values[7:])])
    assert again.rejected_count == 1 and again.unchanged == 1
    assert [(r.source, r.line) for r in again.rejected] == [("f.csv", 2)]
    assert again.rejected[0].reason.endswith("holds at most 5 signals: 3 not added")
    assert len(store.get_entry(hash_set.id, "video-1").signals) == 5
    # strict checks every row before writing, but a full entry already in the
    # set only as it is written: the answer says it was written, with the rows
    # that did not fit
    other = load(store, live, hash_set.id, "op", [rows([os.urandom(32)])], strict=True)
    assert other.written and other.rejected_count == 1 and other.unchanged == 1


def test_plain_rows_keep_their_quality_or_none(store_and_index):
    """Plain rows with and without a quality (PostgreSQL writes a mix as
    COPY text, the rest as binary COPY); names, values and qualities as sent."""
    store, live = store_and_index
    hash_set = store.create_set("quality", "", {}, {})
    values = [os.urandom(32) for _ in range(4)]
    mixed = RowBatch(["pdq"] * 2, values[:2], quality=[-1, 70])
    every = RowBatch(["pdq"] * 2, values[2:], quality=[0, 100])
    result = load(store, live, hash_set.id, "op", [mixed])
    result.counts += load(store, live, hash_set.id, "op", [every]).counts
    assert result.added == 4
    for value, quality in zip(values, [None, 70, 0, 100], strict=True):
        entry = store.get_entry(hash_set.id, f"pdq:{value.hex()}")
        assert [(s.kind, s.value, s.quality, s.variant) for s in entry.signals] == [
            ("pdq", value, quality, "original")
        ]
        assert entry.labels == {} and entry.added_by == "op" and entry.media_type == "hash"
        assert _near(live, value.hex()) == {entry.id}


def test_packed_rows_load_like_rows_and_bad_packing_is_refused(store_and_index):
    from hashsvc.api.bulk_pb import rows_from_pb
    from hashsvc.base.errors import InvalidArgument

    store, live = store_and_index
    hash_set = store.create_set("packed", "", {}, {})
    values = [os.urandom(32) for _ in range(3)]
    packed = rows_from_pb(
        pb.BulkRows(packed_type="pdq", packed_values=b"".join(values), first_line=7)
    )
    assert len(packed) == 3
    result = load(store, live, hash_set.id, "op", [packed])
    assert (result.rows, result.added) == (3, 3)
    again = load(store, live, hash_set.id, "op", [packed])
    assert (again.added, again.unchanged) == (0, 3)
    assert all(_near(live, v.hex()) for v in values)
    # lines that do not follow each other: rows as usual, rejections name them
    spaced = rows_from_pb(
        pb.BulkRows(packed_type="md5", packed_values=bytes(32), line=[3, 9], source="f")
    )
    assert list(spaced.line) == [3, 9] and len(spaced.value) == 2
    for bad, message in [
        (pb.BulkRows(packed_type="pdq", packed_values=bytes(33)), "multiple of 32"),
        (pb.BulkRows(packed_type="nope", packed_values=bytes(32)), "fixed-length"),
        (pb.BulkRows(packed_type="chromaprint", packed_values=bytes(32)), "fixed-length"),
        (pb.BulkRows(packed_type="pdq", packed_values=bytes(32), deleted=[True]), "no deleted"),
        (
            pb.BulkRows(packed_type="pdq", packed_values=bytes(64), entry=["x"]),
            "column entry has 1 rows, not 2",
        ),
        (
            pb.BulkRows(packed_type="pdq", packed_values=bytes(64), label_sets=["{}"]),
            "each label_set must index label_sets",
        ),
        (
            pb.BulkRows(
                packed_type="pdq", packed_values=bytes(64), label_sets=["{}"], label_set=[0]
            ),
            "column labels has 1 rows, not 2",
        ),
        (
            pb.BulkRows(
                packed_type="pdq", packed_values=bytes(64), label_sets=["{}"], label_set=[0, 1]
            ),
            "must index label_sets",
        ),
        (
            pb.BulkRows(
                packed_type="pdq",
                packed_values=bytes(32),
                label_sets=["{}"],
                label_set=[0],
                labels=["{}"],
            ),
            "not both",
        ),
        (
            pb.BulkRows(packed_type="pdq", packed_values=bytes(32), signal_type=["pdq"]),
            "no signal_type",
        ),
        (pb.BulkRows(packed_type="pdq", packed_values=bytes(64), line=[1]), "line has 1"),
    ]:
        with pytest.raises(InvalidArgument, match=message):
            rows_from_pb(bad)


def test_a_note_made_before_its_commit_waits_for_its_change(store_and_index, monkeypatch):
    """PostgreSQL notes a bulk write's signals just before COMMIT: a catch_up
    in between must keep the note for the change, not read it back later."""
    from hashdb.bulk_sql import AddedSignals

    store, live = store_and_index
    hash_set = store.create_set("noted", "", {}, {})
    live.catch_up()
    values = np.frombuffer(os.urandom(32 * 5), dtype=np.uint8).reshape(5, 32)
    first_id = 10_000
    live.note_added(AddedSignals("pdq", first_id, values))
    assert live.catch_up() == 0  # its change is not there yet
    with store._write() as cur:  # the change as a bulk write commits it
        cur.execute(
            "INSERT INTO changes (op, set_id, entry_id, at) VALUES (?, ?, ?, ?)",
            (f"add_entries:{first_id + 4}", hash_set.id, first_id, 1),
        )

    def no_read_back(entry_ids):
        raise AssertionError("noted signals were read back")

    monkeypatch.setattr(store, "indexed_signals", no_read_back)
    assert live.catch_up() == 1
    assert _near(live, values[3].tobytes().hex()) == {first_id + 3}


def test_sqlite_foreign_keys_stay_on_outside_the_bulk_writer(tmp_path):
    """Plain bulk writes skip SQLite's foreign-key probes on their own
    connection only: the store's other writes are still checked."""
    import sqlite3

    store = open_store(f"sqlite:///{tmp_path}/fk.db")
    live = LiveIndex(store, store)
    live.load()
    try:
        hash_set = store.create_set("fk", "", {}, {})
        result = load(
            store, live, hash_set.id, "op", [RowBatch(["pdq"] * 3, [os.urandom(32) for _ in "abc"])]
        )
        assert result.added == 3
        with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY"):
            with store._write() as cur:
                cur.execute(
                    "INSERT INTO entry_signals (entry_id, variant_no, kind, variant, value)"
                    " VALUES (999999, 0, 'pdq', 'original', ?)",
                    (bytes(32),),
                )
    finally:
        store.close()


def test_an_entry_longer_than_a_batch_is_split_and_capped(store_and_index, monkeypatch):
    """The client sends an entry with more rows than a batch holds in several
    batches (it once failed the whole load as too large); each adds its
    signals, and rows past the entry's limit are rejected, the rest load."""
    from hashdb import bulk_sql
    from hashsvc.api.bulk_pb import rows_from_pb
    from hashsvc.client import cli_bulk
    from hashsvc.core import bulk, bulk_rows

    monkeypatch.setattr(cli_bulk, "BATCH_ROWS", 4)
    monkeypatch.setattr(cli_bulk, "ENTRY_SPLIT_ROWS", 6)
    monkeypatch.setattr(bulk, "MAX_SIGNALS_PER_ENTRY", 10)
    monkeypatch.setattr(bulk_rows, "MAX_SIGNALS_PER_ENTRY", 10)
    monkeypatch.setattr(bulk_sql, "MAX_SIGNALS_PER_ENTRY", 10)
    store, live = store_and_index
    hash_set = store.create_set("long", "", {}, {})
    values = [os.urandom(32) for _ in range(14)]
    text = "signal_type,signal_value,entry,variant\n" + "".join(
        f"pdq,{v.hex()},video-1,frame:{i}\n" for i, v in enumerate(values)
    )
    path = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"long-{os.getpid()}.csv")
    with open(path, "w") as f:
        f.write(text)
    try:
        messages = list(cli_bulk.read_rows([path], "csv", cli_bulk.LoadProgress(None, False), []))
    finally:
        os.remove(path)
    assert [len(m.signal_type) for m in messages] == [6, 6, 2]
    result = load(store, live, hash_set.id, "op", [rows_from_pb(m) for m in messages])
    # one rejection for each batch that brought rows past the limit, at its
    # first row of the entry, with how many were not added
    assert (result.added, result.updated, result.unchanged) == (1, 1, 1)
    assert [(r.line, r.reason[-11:]) for r in result.rejected] == [
        (8, "2 not added"),
        (14, "2 not added"),
    ]
    entry = store.get_entry(hash_set.id, "video-1")
    assert [s.value for s in entry.signals] == values[:10]
    assert _near(live, values[9].hex()) == {entry.id}


def test_a_plain_list_of_a_kind_not_indexed_is_not_read_back(store_and_index, monkeypatch):
    """An MD5 list's notes spare the index the read-back of every new entry,
    though MD5 has no in-memory index (exact hashes are found in the store)."""
    store, live = store_and_index
    hash_set = store.create_set("md5s", "", {}, {})
    live.catch_up()

    def no_read_back(entry_ids):
        raise AssertionError(f"{len(entry_ids)} noted entries were read back")

    monkeypatch.setattr(store, "indexed_signals", no_read_back)
    values = [os.urandom(16) for _ in range(50)]
    assert load(store, live, hash_set.id, "op", [RowBatch(["md5"] * 50, values)]).added == 50
    assert store.get_entry(hash_set.id, f"md5:{values[7].hex()}").signals[0].value == values[7]


def test_active_entries_by_set_reads_a_loads_ranges_and_single_ids(store):
    """What a load's retro-hunt reads: the active ones of its entries, by set,
    in id order; a removed entry inside a range and ids of two sets too."""
    live = LiveIndex(store, store)
    live.load()
    first = store.create_set("first", "", {}, {})
    second = store.create_set("second", "", {}, {})
    values = [os.urandom(32) for _ in range(60)]
    assert load(store, live, first.id, "op", [RowBatch(["pdq"] * 50, values[:50])]).added == 50
    assert load(store, live, second.id, "op", [RowBatch(["pdq"] * 10, values[50:])]).added == 10
    ids = {
        hash_set.id: sorted(e.id for e in store.list_entries(hash_set.id, limit=100))
        for hash_set in (first, second)
    }
    assert len(ids[first.id]) == 50 and len(ids[second.id]) == 10
    every = ids[first.id] + ids[second.id]
    assert store.active_entries_by_set(reversed(every)) == ids
    assert store.active_entries_by_set([ids[second.id][3], ids[first.id][0]]) == {
        first.id: [ids[first.id][0]],
        second.id: [ids[second.id][3]],
    }
    gone = store.get_entries([ids[first.id][20]])[ids[first.id][20]]
    store.remove_entry(first.id, gone.name)
    found = store.active_entries_by_set(every + [999_999_999])
    assert found[first.id] == [i for i in ids[first.id] if i != gone.id]
    assert found[second.id] == ids[second.id]
    assert store.active_entries_by_set([]) == {}


def test_indexed_signals_reads_the_active_entries_of_ranges_and_single_ids(store):
    """What the live index reads for entries it was not told of (another
    replica's writes): the signals of the active ones, by entry id, whether
    the ids come as a load's range or one by one; a removed entry's not."""
    live = LiveIndex(store, store)
    live.load()
    hash_set = store.create_set("s", "", {}, {})
    values = [os.urandom(32) for _ in range(40)]
    assert load(store, live, hash_set.id, "op", [RowBatch(["pdq"] * 40, values)]).added == 40
    entries = sorted(store.list_entries(hash_set.id, limit=100), key=lambda e: e.id)
    value_of = {e.id: bytes.fromhex(e.name.split(":", 1)[1]) for e in entries}
    ids = [e.id for e in entries]
    store.remove_entry(hash_set.id, entries[10].name)
    active = [i for i in ids if i != ids[10]]
    read = store.indexed_signals(ids)  # one range
    assert [s.entry_id for s in read] == active
    assert all(s.kind == "pdq" and s.value == value_of[s.entry_id] for s in read)
    some = [ids[0], ids[10], ids[25], 999_999_999]  # one by one
    assert [s.entry_id for s in store.indexed_signals(some)] == [ids[0], ids[25]]
    assert store.indexed_signals([]) == []
