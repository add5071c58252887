"""BulkLoad and ExportEntries between protobuf and the core (hashsvc/core/bulk.py)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from hashsvc.api import convert
from hashsvc.base.errors import InvalidArgument
from hashsvc.core.bulk import BulkResult, PackedRows, RowBatch
from hashsvc.core.config import StringLimits
from hashsvc.v1 import hashsvc_pb2 as pb


def header_and_batches(
    request_iterator, limits: StringLimits
) -> tuple[pb.BulkLoadHeader, Iterator[RowBatch | PackedRows]]:
    first = next(request_iterator, None)
    if first is None or first.WhichOneof("part") != "header":
        raise InvalidArgument("BulkLoad: the first message must be the header")

    header = first.header
    convert.request_strings(header, limits, "header.")

    def batches() -> Iterator[RowBatch | PackedRows]:
        received, end = 0, None
        for message in request_iterator:
            part = message.WhichOneof("part")
            if end is not None:
                raise InvalidArgument("BulkLoad: nothing may follow the end message")
            if part == "end":
                end = message.end
                continue
            if part != "rows":
                raise InvalidArgument("BulkLoad: only the first message may be a header")
            # The rows' own strings are checked row by row (a bad row is a
            # rejected row); the source names every rejection of the batch.
            convert.request_strings(pb.BulkRows(source=message.rows.source), limits, "rows.")
            batch = rows_from_pb(message.rows)
            received += len(batch)
            yield batch
        # Raised before a strict load writes anything (it writes at the end).
        if end is None and header.strict:
            raise InvalidArgument(
                "BulkLoad: a strict load must end with an end message; nothing was written"
            )
        if end is not None and end.rows != received:
            raise InvalidArgument(
                f"BulkLoad: the end message counts {end.rows} rows, {received} arrived"
            )

    return header, batches()


def rows_from_pb(rows: pb.BulkRows) -> RowBatch | PackedRows:
    interned = _interned_sets(rows)
    if rows.packed_type:
        if len(rows.signal_type) or len(rows.value):
            raise InvalidArgument("BulkRows: packed rows have no signal_type or value column")
        for name in ("deleted", "quality", "variant", "position"):
            if len(getattr(rows, name)):
                raise InvalidArgument(f"BulkRows: packed rows have no {name} column")
        packed = PackedRows(rows.packed_type, rows.packed_values, rows.first_line, rows.source)
        packed.entry = list(rows.entry)
        labels = list(rows.labels) if interned is None else interned[1]
        for name, column in (("entry", packed.entry), ("labels", labels)):
            if len(column) not in (0, len(packed)):
                raise InvalidArgument(
                    f"BulkRows: column {name} has {len(column)} rows, not {len(packed)}"
                )
        if interned is None:
            packed.labels = labels
        else:  # kept numbered: each set checked once, no text a row
            packed.label_sets, packed.label_codes = interned
        if len(rows.line):
            if len(rows.line) != len(packed):
                raise InvalidArgument(
                    f"BulkRows: column line has {len(rows.line)} rows, not {len(packed)}"
                )
            # lines that do not follow each other: as a plain batch of rows
            batch = packed.as_row_batch()
            batch.line = list(rows.line)
            return batch
        return packed
    labels = None
    if interned is not None:
        sets = interned[0]
        labels = [sets[code] for code in interned[1].tolist()]
    n = len(rows.signal_type)
    columns = {}
    for name in ("line", "entry", "labels", "deleted", "quality", "variant", "position"):
        column = labels if name == "labels" and labels else getattr(rows, name)
        if len(column) not in (0, n):
            raise InvalidArgument(f"BulkRows: column {name} has {len(column)} rows, not {n}")
        columns[name] = list(column)
    return RowBatch(
        signal_type=list(rows.signal_type), value=list(rows.value), source=rows.source, **columns
    )


def _interned_sets(rows: pb.BulkRows) -> tuple[list[str], np.ndarray] | None:
    """The labels column sent interned: the distinct texts (label_sets) and
    each row's index into them (label_set); None if not sent so."""
    if not len(rows.label_set) and not len(rows.label_sets):
        return None
    if len(rows.labels):
        raise InvalidArgument("BulkRows: labels come as a column or interned, not both")
    sets = list(rows.label_sets)
    codes = np.array(rows.label_set, dtype=np.int64)
    if not len(codes) or len(sets) > len(codes) or codes.max() >= len(sets):
        raise InvalidArgument(
            "BulkRows: each label_set must index label_sets, which lists no more sets than rows"
        )
    return sets, codes


def response(result: BulkResult, strict: bool) -> pb.BulkLoadResponse:
    return pb.BulkLoadResponse(
        rows=result.rows,
        added=result.added,
        updated=result.updated,
        removed=result.removed,
        unchanged=result.unchanged,
        rejected_count=result.rejected_count,
        rejected=[
            pb.RejectedRow(source=r.source, line=r.line, reason=r.reason) for r in result.rejected
        ],
        written=result.written,
    )


def export_batches(batches, set_name: str, max_bytes: int) -> Iterator[pb.ListEntriesResponse]:
    """Messages of at most ~max_bytes; an entry larger than that comes in
    parts (convert.entry_messages)."""
    records = (record for batch in batches for record in batch)
    for entries, _ in convert.entry_messages(records, set_name, max_bytes):
        yield pb.ListEntriesResponse(entries=entries)
