"""`hashsvc load` and `hashsvc export`: hash lists in and out through the
BulkLoad and ExportEntries RPCs, in the formats of loaders/."""

from __future__ import annotations

import itertools
import json
import math
import os
import sys
import time
from collections.abc import Iterable, Iterator
from datetime import UTC

import loaders
from hashsvc.base.media_kinds import is_frame
from hashsvc.base.signals import SIGNAL_TYPES, Signal
from hashsvc.v1 import hashsvc_pb2 as pb
from loaders.records import PlainRows, Record, Rejected

# Rows per BulkRows message (one server transaction). A batch ends only
# between entries, so an entry's rows are written together, unless one entry
# has more than ENTRY_SPLIT_ROWS rows (a long video's frames): its rows then
# go in several batches, each adding its signals to the entry (under the
# server's limit of rows a message), and the rows past the entry's signal
# limit are rejected as such instead of failing the whole load.
BATCH_ROWS = 20_000
# Labelled rows without entries (TCAP's hashes, say) are entries named after
# their hash, so a batch's names fall all over the set's name index: the
# server writes a batch sorted, in short transactions, and each of them
# writes fewer pages of the index the larger the batch (SQLite, 500k rows:
# 20k-row batches ~5x slower than plain rows; 463 MB written at 100k-row
# batches, 234 MB at 200k). The server's limit, MAX_BATCH_ROWS.
HASH_NAMED_BATCH_ROWS = 200_000
# ...or once its values reach this many bytes: 20,000 rows of local features
# (~18 KB each) would be a 360 MB message, far past the server's 64 MiB.
BATCH_VALUE_BYTES = 16 * 1024 * 1024
ENTRY_SPLIT_ROWS = 100_000
# Client-side rejections printed before "... and N more".
MAX_PRINTED_REJECTS = 1_000
# Rejected rows the summary lists (all are counted): the server's cap,
# hashsvc.core.bulk.MAX_REPORTED_REJECTS, which is not imported because that
# module brings the server's index code into every client command.
MAX_REPORTED_REJECTS = 1_000


class RejectedRows:
    """The rows the client rejected: every one counted, the first
    MAX_REPORTED_REJECTS kept (a file of a million bad rows is no million
    objects in memory)."""

    def __init__(self) -> None:
        self.count = 0
        self.kept: list[Rejected] = []

    def append(self, row: Rejected) -> None:
        self.count += 1
        if len(self.kept) < MAX_REPORTED_REJECTS:
            self.kept.append(row)


class LoadProgress:
    """`rows, rows/s, percent, ETA` on one line of stderr, when someone watches."""

    def __init__(self, total_bytes: int | None, enabled: bool) -> None:
        self.total_bytes = total_bytes
        self.enabled = enabled
        self.bytes = 0
        self.rows = 0
        self.started = time.monotonic()
        self._last = 0.0

    def update(self, rows: int, read_bytes: int) -> None:
        self.rows, self.bytes = rows, read_bytes
        now = time.monotonic()
        if not self.enabled or now - self._last < 0.2:
            return
        self._last = now
        elapsed = max(now - self.started, 1e-6)
        line = f"\r{self.rows} rows  {self.rows / elapsed:,.0f} rows/s"
        if self.total_bytes:
            share = min(self.bytes / self.total_bytes, 1.0)
            eta = elapsed * (1 - share) / share if share else 0
            line += f"  {share:4.0%}  ETA {eta:.0f}s"
        sys.stderr.write(line + "   ")
        sys.stderr.flush()

    def finish(self) -> None:
        if self.enabled:
            self.update(self.rows, self.bytes)
            sys.stderr.write("\n")


class _CountingLines:
    """Lines of a text stream, counting characters read (for progress). Read
    and counted ~1 MB at a time: a generator step a line was a fifth of the
    client's CPU for a hash list."""

    def __init__(self, stream) -> None:
        self.stream = stream
        self.chars = 0

    def __iter__(self) -> Iterator[str]:
        return itertools.chain.from_iterable(self._chunks())

    def _chunks(self) -> Iterator[list[str]]:
        while lines := self.stream.readlines(_READ_CHARS):
            self.chars += sum(map(len, lines))
            yield lines


# Characters a file is read by (at least one whole line each time).
_READ_CHARS = 1 << 20


def _sources(paths: list[str]) -> Iterator[tuple[str, object]]:
    for path in paths:
        if path == "-":
            yield "stdin", sys.stdin
        else:
            with open(path, encoding="utf-8-sig", newline="") as stream:
                yield path, stream


def read_rows(
    paths: list[str], fmt: str, progress: LoadProgress, rejected: RejectedRows | list[Rejected]
) -> Iterator[pb.BulkRows]:
    """BulkRows batches of every file's good rows; bad rows are appended to
    `rejected`."""
    rows_seen = 0
    done_chars = 0
    for source, stream in _sources(paths):
        counted = _CountingLines(stream)
        batch: list[Record] = []
        batch_bytes = 0
        blocks = loaders.read_blocks(counted, fmt, source, BATCH_ROWS, HASH_NAMED_BATCH_ROWS)
        for item in blocks:
            if isinstance(item, Rejected):
                rejected.append(item)
                continue
            if isinstance(item, PlainRows):  # each row an entry of its own
                if batch:
                    yield _to_pb(batch, source)
                    batch = []
                rows_seen += len(item)
                yield _plain_to_pb(item, source)
                progress.update(rows_seen, done_chars + counted.chars)
                continue
            full = len(batch) >= BATCH_ROWS or batch_bytes >= BATCH_VALUE_BYTES
            if full and (
                item.entry_name != batch[-1].entry_name
                or len(batch) >= ENTRY_SPLIT_ROWS
                or batch_bytes >= 2 * BATCH_VALUE_BYTES
            ):
                yield _to_pb(batch, source)
                batch, batch_bytes = [], 0
                progress.update(rows_seen, done_chars + counted.chars)
            batch.append(item)
            batch_bytes += len(item.signal_value)
            rows_seen += 1
        if batch:
            yield _to_pb(batch, source)
        done_chars += counted.chars
        progress.update(rows_seen, done_chars)


def _row_count(rows: pb.BulkRows) -> int:
    if rows.packed_type:
        return len(rows.packed_values) // SIGNAL_TYPES[rows.packed_type].nbytes
    return len(rows.signal_type)


def _plain_to_pb(rows: PlainRows, source: str) -> pb.BulkRows:
    """Packed: every value in one bytes field; a feed's names and labels as
    columns beside them (the server checks them a column at a time), each
    distinct labels text sent once (label_sets) and a row's an index."""
    out = pb.BulkRows(
        packed_type=rows.signal_type,
        packed_values=rows.values,
        first_line=rows.first_line,
        entry=rows.entries or (),
        source=source,
    )
    if rows.label_codes is not None:
        out.label_set.extend(rows.label_codes)
        out.label_sets.extend(rows.label_sets)
    return out


def _to_pb(records: list[Record], source: str) -> pb.BulkRows:
    rows = pb.BulkRows(
        signal_type=[r.signal_type for r in records],
        value=[r.signal_value for r in records],
        line=[r.line for r in records],
        source=source,
    )
    # optional columns only when some row says something
    if any(r.entry for r in records):
        rows.entry.extend(r.entry for r in records)
    if any(r.labels is not None for r in records):
        # each label set once: a reader's rows share the dicts of a few sets
        wire: dict[int, str] = {}
        for r in records:
            if id(r.labels) not in wire:
                wire[id(r.labels)] = loaders.records.labels_json(r.labels)
        rows.labels.extend(wire[id(r.labels)] for r in records)
    if any(r.deleted for r in records):
        rows.deleted.extend(r.deleted for r in records)
    if any(r.quality is not None for r in records):
        rows.quality.extend(-1 if r.quality is None else r.quality for r in records)
    if any(r.variant != "original" for r in records):
        rows.variant.extend(r.variant for r in records)
    if any(r.position is not None for r in records):
        rows.position.extend(math.nan if r.position is None else r.position for r in records)
    return rows


def load(client, set_name: str, paths: list[str], fmt: str, strict: bool, progress) -> dict:
    """Sends the files; returns the summary (client- and server-side rejections
    together). Strict: the files are read whole first, and nothing is sent if
    a row is bad."""
    rejected = RejectedRows()
    batches: Iterable[pb.BulkRows] = read_rows(paths, fmt, progress, rejected)
    if strict:
        batches = list(batches)
        if rejected.count:
            progress.finish()
            return _summary(pb.BulkLoadResponse(written=False), rejected)

    def requests() -> Iterator[pb.BulkLoadRequest]:
        yield pb.BulkLoadRequest(header=pb.BulkLoadHeader(set=set_name, strict=strict))
        sent = 0
        for rows in batches:
            sent += _row_count(rows)
            yield pb.BulkLoadRequest(rows=rows)
        yield pb.BulkLoadRequest(end=pb.BulkLoadEnd(rows=sent))

    response = client.curation.BulkLoad(requests(), metadata=client.metadata)
    progress.finish()
    return _summary(response, rejected)


def _summary(response: pb.BulkLoadResponse, client_rejected: RejectedRows) -> dict:
    """`rejected` counts every rejected row; `rejected_rows` lists at most
    MAX_REPORTED_REJECTS of them, the client's first, as the server does."""
    listed = [*client_rejected.kept, *response.rejected][:MAX_REPORTED_REJECTS]
    return {
        "rows": response.rows + client_rejected.count,
        "added": response.added,
        "updated": response.updated,
        "removed": response.removed,
        "unchanged": response.unchanged,
        "rejected": client_rejected.count + response.rejected_count,
        "written": response.written,
        "rejected_rows": [{"source": r.source, "line": r.line, "reason": r.reason} for r in listed],
    }


def print_summary(summary: dict, as_json: bool, strict: bool) -> None:
    for row in summary["rejected_rows"][:MAX_PRINTED_REJECTS]:
        print(f"hashsvc: {row['source']}:{row['line']}: {row['reason']}", file=sys.stderr)
    hidden = summary["rejected"] - min(len(summary["rejected_rows"]), MAX_PRINTED_REJECTS)
    if hidden > 0:
        print(f"hashsvc: ... and {hidden} more rejected rows", file=sys.stderr)
    if as_json:
        print(json.dumps(summary, ensure_ascii=False), flush=True)
        return
    text = (
        f"{summary['rows']} rows: {summary['added']} added, {summary['updated']} updated,"
        f" {summary['removed']} removed, {summary['unchanged']} unchanged,"
        f" {summary['rejected']} rejected"
    )
    if strict and not summary["written"]:
        text += " (strict: nothing loaded)"
    print(text, file=sys.stderr)


def total_bytes(paths: list[str]) -> int | None:
    if "-" in paths:
        return None
    return sum(os.path.getsize(p) for p in paths) or None


# ------------------------------------------------------------------ export


def joined_entries(entries: Iterable[pb.Entry]) -> Iterator[pb.Entry]:
    """Entries put back together: the server sends an entry larger than a
    message (a long video's frames) as consecutive parts with the same id,
    each with the next run of its signals."""
    whole = None
    for entry in entries:
        if whole is not None and entry.id == whole.id:
            whole.signals.extend(entry.signals)
            continue
        if whole is not None:
            yield whole
        whole = entry
    if whole is not None:
        yield whole


def entry_records(entry: pb.Entry) -> list[Record]:
    """An entry's exchangeable signals as records (loaders/records.py)."""
    signals = (
        Signal(
            sig.signal_type,
            bytes.fromhex(sig.value),
            sig.quality,
            sig.variant,
            sig.position if sig.HasField("position") else None,
        )
        for sig in entry.signals
    )
    return loaders.records.entry_records(
        entry.name, entry.labels, entry.HasField("removed_at"), signals
    )


def export(client, set_name: str, fmt: str, since, output_dir: str | None) -> int:
    """Writes the set (or what changed since `since`); returns rows written."""
    req = pb.ExportEntriesRequest(set=set_name)
    if since is not None:
        req.since.FromDatetime(since.astimezone(UTC).replace(tzinfo=None))
    stream = client.curation.ExportEntries(req, metadata=client.metadata)
    entries = joined_entries(entry for batch in stream for entry in batch.entries)
    if fmt == "vpdq":
        return _export_vpdq(entries, output_dir)
    rows = loaders.records.carried_by(
        (rec for entry in entries for rec in entry_records(entry)), fmt
    )
    return loaders.write(sys.stdout, rows, fmt)


def _export_vpdq(entries: Iterable[pb.Entry], output_dir: str | None) -> int:
    if not output_dir:
        raise ValueError("--format vpdq writes one file per video: give --output DIR")
    os.makedirs(output_dir, exist_ok=True)
    written = 0
    for entry in entries:
        if entry.HasField("removed_at"):
            continue
        frames = [r for r in entry_records(entry) if is_frame(r.variant)]
        if not frames:
            continue
        path = os.path.join(output_dir, loaders.vpdq_file_name(entry.name))
        with open(path, "w") as f:
            written += loaders.write(f, frames, "vpdq")
    return written
