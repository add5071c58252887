"""An entry as export rows is written once (loaders/records.py entry_records):
the HTTP API's export and the console's from the store's entry, `hashsvc
export` from the API's message, give the same rows for the same entry: only
the exchanged views, a removed entry as one tombstone, and no hashsvc-only
signal type in other tools' formats."""

from __future__ import annotations

import io
from datetime import UTC, datetime

import pytest

import loaders
from hashdb import EntryRecord
from hashsvc.api.convert import entry
from hashsvc.base.signals import Signal
from hashsvc.client.cli_bulk import entry_records as cli_entry_records
from hashsvc.http.console.exports import entry_rows
from hashsvc.http.routes_curation import entry_records as http_entry_records
from loaders.records import carried_by

NOW = datetime(2026, 1, 31, 12, tzinfo=UTC)
SIGNALS = (
    Signal("pdq", bytes(range(32)), 90),
    Signal("pdq", bytes(32), 80, "crop_c10"),  # hashsvc's own view: never exported
    Signal("pdq", bytes([7] * 32), 70, "frame:3", 1.5),
    Signal("md5", bytes(16)),
    Signal("local_features", b"\x01" * 64),
)


def _entry(removed: bool) -> EntryRecord:
    return EntryRecord(
        id=1, set_id=1, name="amaq-1", labels={"source": "test"}, media_type="video",
        created_at=NOW, added_by="op", removed_at=NOW if removed else None, signals=SIGNALS,
    )  # fmt: skip


def _text(records, fmt: str) -> str:
    out = io.StringIO()
    loaders.write(out, records, fmt)
    return out.getvalue()


@pytest.mark.parametrize("removed", [False, True])
@pytest.mark.parametrize("fmt", ["csv", "jsonl", "hma"])
def test_every_export_writes_the_same_rows(removed, fmt):
    record = _entry(removed)
    http = http_entry_records(record)
    cli = cli_entry_records(entry(record, "isis"))
    assert http == cli
    expected = ["original", "frame:3", "original", "original"][: 1 if removed else 4]
    assert [r.variant for r in http] == expected
    assert all(r.deleted == removed for r in http)
    rows = _text(carried_by(http, fmt), fmt)
    assert "".join(entry_rows([[record]], fmt)) == rows  # the console's download
    assert ("local_features" in rows) == (fmt != "hma" and not removed)
