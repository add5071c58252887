"""Bulk loads in the auditors' history, and `hashsvc load --json` on a file of
many bad rows: end to end over a real gRPC channel, on both stores."""

from __future__ import annotations

import json
import os
import threading
import time

import grpc
import pytest

from hashsvc.client import cli, cli_bulk
from hashsvc.core import bulk
from hashsvc.v1 import hashsvc_pb2 as pb

PDQ = "f" * 64


@pytest.fixture
def operator(operator):
    """The operator's (stubs, metadata), with the set the loads go into."""
    stubs, metadata = operator
    stubs.curation.CreateSet(pb.CreateSetRequest(name="partner-list"), metadata=metadata)
    return stubs, metadata


def _header(strict: bool = False) -> pb.BulkLoadRequest:
    return pb.BulkLoadRequest(header=pb.BulkLoadHeader(set="partner-list", strict=strict))


def _labelled(values: list[bytes], **columns) -> pb.BulkLoadRequest:
    rows = pb.BulkRows(
        signal_type=["pdq"] * len(values), value=values, labels=['{"group": "ISIS"}'] * len(values)
    )
    for name, column in columns.items():
        getattr(rows, name).extend(column)
    return pb.BulkLoadRequest(rows=rows)


def _end(rows: int) -> pb.BulkLoadRequest:
    return pb.BulkLoadRequest(end=pb.BulkLoadEnd(rows=rows))


def _bulk_records(harness) -> list[tuple[pb.HistoryRecord, dict]]:
    """The BulkLoad records, as an auditor queries them."""
    auditor, metadata = harness.stubs("auditor")
    records = auditor.audit.QueryHistory(pb.QueryHistoryRequest(), metadata=metadata).records
    return [(r, json.loads(r.detail_json)) for r in records if r.rpc == "BulkLoad"]


def _counts(**counts) -> dict:
    base = {"rows": 0, "added": 0, "updated": 0, "removed": 0, "unchanged": 0, "rejected": 0}
    return {"set": "partner-list", "strict": False, "written": True, **base, **counts}


def _chain_intact(harness) -> bool:
    auditor, metadata = harness.stubs("auditor")
    result = auditor.audit.VerifyHistory(pb.VerifyHistoryRequest(), metadata=metadata)
    return result.intact and not result.problems


def _entries(harness) -> int:
    return harness.core.store.get_set("partner-list").entry_count


def test_a_load_and_a_tombstone_load_are_one_record_each(harness, operator):
    stubs, metadata = operator
    values = [os.urandom(32) for _ in range(3)]
    names = ["amaq-1", "amaq-2", "amaq-3"]
    first = stubs.curation.BulkLoad(
        iter([_header(), _labelled(values, entry=names)]), metadata=metadata
    )
    assert (first.added, first.written) == (3, True)
    tombstone = pb.BulkRows(signal_type=["pdq"], value=[b""], entry=["amaq-2"], deleted=[True])
    second = stubs.curation.BulkLoad(
        iter([_header(), pb.BulkLoadRequest(rows=tombstone)]), metadata=metadata
    )
    assert second.removed == 1

    [(loaded, detail), (removed, removed_detail)] = _bulk_records(harness)
    assert (loaded.caller, loaded.status, loaded.error_message) == ("test-operator", "OK", "")
    assert detail == _counts(rows=3, added=3)
    assert (removed.caller, removed.status) == ("test-operator", "OK")
    assert removed_detail == _counts(rows=1, removed=1)
    assert _chain_intact(harness)


def test_a_strict_load_refused_for_a_bad_row_is_recorded_unwritten(harness, operator):
    stubs, metadata = operator
    values = [os.urandom(32), os.urandom(16)]  # the second is no PDQ hash
    answer = stubs.curation.BulkLoad(
        iter([_header(strict=True), _labelled(values, line=[2, 3]), _end(2)]), metadata=metadata
    )
    assert (answer.written, answer.rejected_count, answer.added) == (False, 1, 0)
    [(record, detail)] = _bulk_records(harness)
    assert (record.caller, record.status) == ("test-operator", "OK")
    assert detail == _counts(strict=True, rows=2, rejected=1, written=False)
    assert _entries(harness) == 0
    assert _chain_intact(harness)


def test_a_load_failing_part_way_records_what_it_committed(harness, operator):
    stubs, metadata = operator
    good = _labelled([os.urandom(32) for _ in range(50)])  # committed as it arrives
    bad = pb.BulkLoadRequest(rows=pb.BulkRows(packed_type="pdq", packed_values=bytes(33)))
    with pytest.raises(grpc.RpcError) as err:
        stubs.curation.BulkLoad(iter([_header(), good, bad]), metadata=metadata)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    [(record, detail)] = _bulk_records(harness)
    assert (record.caller, record.status) == ("test-operator", "INVALID_ARGUMENT")
    assert "multiple of 32 bytes" in record.error_message
    assert detail == _counts(rows=50, added=50)
    assert _entries(harness) == 50  # what the record says was committed
    assert _chain_intact(harness)


def test_a_cancelled_load_leaves_its_record(harness, operator, monkeypatch):
    stubs, metadata = operator
    live = harness.core.live
    catch_up, cancelled = live.catch_up, threading.Event()

    def after_the_cancel():
        # The server is busy with the batch when the client cancels, so the
        # next read of the stream raises (were it waiting for one, grpc might
        # end the stream as if the client had sent everything).
        cancelled.wait(10)
        catch_up()

    monkeypatch.setattr(live, "catch_up", after_the_cancel)

    def requests():
        yield _header()
        yield _labelled([os.urandom(32) for _ in range(100)])
        cancelled.wait(10)  # still "sending" when the client cancels

    call = stubs.curation.BulkLoad.future(requests(), metadata=metadata)
    try:
        deadline = time.monotonic() + 10
        while _entries(harness) < 100:
            assert time.monotonic() < deadline, "the first batch was not written"
            time.sleep(0.02)
        call.cancel()
        time.sleep(0.3)  # the server hears of it
    finally:
        cancelled.set()
    deadline = time.monotonic() + 10
    while not (records := _bulk_records(harness)):
        assert time.monotonic() < deadline, "the cancelled load left no record"
        time.sleep(0.05)
    [(record, detail)] = records
    assert (record.caller, record.status) == ("test-operator", "CANCELLED")
    assert detail == _counts(rows=100, added=100)
    assert _chain_intact(harness)


def test_a_failing_history_write_hides_neither_answer_nor_error(harness, operator, monkeypatch):
    stubs, metadata = operator
    store = harness.core.store
    record_match = store.record_match

    def broken(record, events=()):
        if record.rpc == "BulkLoad":
            raise OSError("disk full")
        return record_match(record, events=events)

    monkeypatch.setattr(store, "record_match", broken)
    answer = stubs.curation.BulkLoad(
        iter([_header(), _labelled([os.urandom(32)])]), metadata=metadata
    )
    assert answer.added == 1
    bad = pb.BulkLoadRequest(rows=pb.BulkRows(packed_type="pdq", packed_values=bytes(33)))
    with pytest.raises(grpc.RpcError) as err:
        stubs.curation.BulkLoad(iter([_header(), bad]), metadata=metadata)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "multiple of 32" in err.value.details()


# ------------------------------------------------------------------ hashsvc load --json

BAD_ROWS = 2 * cli_bulk.MAX_REPORTED_REJECTS + 500


def _run_cli(monkeypatch, capsys, harness, *argv):
    monkeypatch.setenv("HASHSVC_SERVER", harness.address)
    monkeypatch.setenv("HASHSVC_TOKEN", harness.tokens["operator"])
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _many_bad_rows(tmp_path, good: int = 5):
    path = tmp_path / "partner.csv"
    with open(path, "w") as f:
        f.write("signal_type,signal_value\n")
        for n in range(good):
            f.write(f"pdq,{n:064x}\n")
        for _ in range(BAD_ROWS):
            f.write(f"pdq,{'1' * 32}\n")  # half a PDQ hash
    return str(path)


def test_load_json_counts_every_bad_row_and_lists_at_most_the_cap(
    harness, operator, tmp_path, monkeypatch, capsys
):
    assert cli_bulk.MAX_REPORTED_REJECTS == bulk.MAX_REPORTED_REJECTS  # as the server
    path = _many_bad_rows(tmp_path)
    code, out, err = _run_cli(
        monkeypatch, capsys, harness, "load", "--set", "partner-list", "--json", path
    )
    assert code == 1, err  # some rows did not load
    summary = json.loads(out.strip().splitlines()[-1])
    assert (summary["rows"], summary["added"], summary["rejected"]) == (5 + BAD_ROWS, 5, BAD_ROWS)
    assert len(summary["rejected_rows"]) == cli_bulk.MAX_REPORTED_REJECTS
    assert [r["line"] for r in summary["rejected_rows"][:2]] == [7, 8]
    assert f"and {BAD_ROWS - cli_bulk.MAX_PRINTED_REJECTS} more" in err

    code, out, err = _run_cli(
        monkeypatch, capsys, harness, "load", "--set", "partner-list", "--strict", "--json", path
    )
    summary = json.loads(out.strip().splitlines()[-1])
    assert (summary["rejected"], summary["written"]) == (BAD_ROWS, False)
    assert len(summary["rejected_rows"]) == cli_bulk.MAX_REPORTED_REJECTS

    # while reading, the rows past the cap are counted, not kept
    rejected = cli_bulk.RejectedRows()
    progress = cli_bulk.LoadProgress(None, False)
    list(cli_bulk.read_rows([path], "csv", progress, rejected))
    assert (rejected.count, len(rejected.kept)) == (BAD_ROWS, cli_bulk.MAX_REPORTED_REJECTS)


def test_a_strict_stream_cut_short_writes_nothing(harness, operator):
    """grpc can end a cancelled call's stream as if the client had sent
    everything: a strict load is written only after the client's end message,
    which also counts the rows."""
    stubs, metadata = operator
    rows = _labelled([os.urandom(32) for _ in range(5)])
    cases = [
        ([_header(strict=True), rows], "must end with an end message"),
        ([_header(strict=True), rows, _end(6)], "counts 6 rows, 5 arrived"),
        ([_header(strict=True), rows, _end(5), rows], "nothing may follow the end message"),
    ]
    for messages, message in cases:
        with pytest.raises(grpc.RpcError) as err:
            stubs.curation.BulkLoad(iter(messages), metadata=metadata)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert message in err.value.details()
    assert _entries(harness) == 0
    statuses = [(r.status, d["written"]) for r, d in _bulk_records(harness)]
    assert statuses == [("INVALID_ARGUMENT", False)] * 3
    answer = stubs.curation.BulkLoad(iter([_header(strict=True), rows, _end(5)]), metadata=metadata)
    assert (answer.added, answer.written) == (5, True)
    # a load that is not strict writes as rows arrive: the end message is optional
    more = _labelled([os.urandom(32) for _ in range(2)])
    assert stubs.curation.BulkLoad(iter([_header(), more]), metadata=metadata).added == 2
