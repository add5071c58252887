"""TCAP-style rows (Tech Against Terrorism's Terrorist Content Analytics
Platform): `hash_digest,algorithm,ideology,file_type`. ideology and file_type
become labels of those names; optional `entry`, `labels` and `deleted` columns
carry what the format itself has no place for."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TextIO

from loaders import records as r
from loaders.records import Record, Rejected

HEADER = ["hash_digest", "algorithm", "ideology", "file_type", "entry", "labels", "deleted"]
_COLUMN_LABELS = ("ideology", "file_type")
# TCAP writes algorithms in capitals; ours are the lower-case signal type names.
_ALGORITHM_OUT = {"pdq": "PDQ", "md5": "MD5", "sha256": "SHA256"}


def looks_like(header: list[str]) -> bool:
    return {"hash_digest", "algorithm"} <= {h.strip().lower() for h in header}


def read(stream: TextIO, source: str = "") -> Iterator[Record | Rejected]:
    return r.named_records(stream, ("hash_digest", "algorithm"), source, _record)


def _record(line: int, cell) -> Record:
    labels = dict(r.parse_labels(cell("labels")))
    for name in _COLUMN_LABELS:
        if cell(name):
            labels[name] = cell(name)
    return r.record(
        cell("algorithm"),
        cell("hash_digest"),
        r.entry_name(cell("entry") or cell("id")),
        r.checked_labels(labels),
        r.flag(cell("deleted")),
        line,
    )


def write(stream: TextIO, records: Iterable[Record]) -> int:
    return r.write_csv(stream, HEADER, (_row(rec) for rec in records))


def _row(rec: Record) -> list[str]:
    labels = rec.labels or {}
    # ideology and file_type go in their columns when a cell gives them back
    # (not empty, no spaces at either end), else in labels with the rest
    columns = {k: v for k, v in labels.items() if k in _COLUMN_LABELS and r.fits_cell(v)}
    rest = {k: v for k, v in labels.items() if k not in columns}
    return [
        rec.signal_value.hex(),
        _ALGORITHM_OUT.get(rec.signal_type, rec.signal_type.upper()),
        columns.get("ideology", ""),
        columns.get("file_type", ""),
        r.exported_entry(rec),
        r.format_labels(rest),
        "true" if rec.deleted else "",
    ]
