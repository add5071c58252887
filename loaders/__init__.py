"""Hash-set interchange formats: one module per format, each reading rows into
checked `Record`s (bad rows become `Rejected` with line number and reason) and
writing records back out.

    csv / tsv   signal_type,signal_value[,entry][,labels][,quality][,variant][,position][,deleted]
    jsonl       the same fields, one JSON object per line
    hma         python-threatexchange / HMA: signal_type,signal_str,collab,category,tags
    tcap        TCAP-style: hash_digest,algorithm,ideology,file_type
    vpdq        one video per file: frame,quality,pdq_hex,seconds
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterable, Iterator
from typing import TextIO

from loaders import delimited, hma, jsonl, tcap, vpdq
from loaders.records import PlainRows, Record, Rejected, RowError

FORMATS = ("csv", "tsv", "jsonl", "hma", "tcap", "vpdq")
__all__ = [
    "FORMATS",
    "PlainRows",
    "Record",
    "Rejected",
    "RowError",
    "detect",
    "read",
    "read_blocks",
    "write",
]


def detect(source: str, first_line: str) -> str:
    """The format of a file from its name and first line."""
    name = source.lower()
    text = first_line.strip()
    if name.endswith((".jsonl", ".ndjson")) or text.startswith("{"):
        return "jsonl"
    if name.endswith(".tsv") or ("\t" in text and "," not in text):
        return "tsv"
    header = [h.strip() for h in text.split(",")]
    if hma.looks_like(header):
        return "hma"
    if tcap.looks_like(header):
        return "tcap"
    if len(header) == 4 and header[0].isdigit() and len(header[2]) == 64:
        return "vpdq"  # no header: a frame line
    return "csv"


def read(stream: Iterable[str], fmt: str = "auto", source: str = "") -> Iterator[Record | Rejected]:
    """Records and rejected rows of one file, in file order."""
    fmt, stream = _detected(stream, fmt, source)
    return _format(fmt).read(stream, source)


def read_blocks(
    stream: Iterable[str],
    fmt: str = "auto",
    source: str = "",
    block_rows: int = 20_000,
    hash_named_block_rows: int | None = None,
) -> Iterator[PlainRows | Record | Rejected]:
    """As read(), but a CSV/TSV hash list (type and value columns, perhaps
    entry and labels) comes in PlainRows blocks of up to block_rows rows
    (hash_named_block_rows: of labelled rows without entries)."""
    fmt, stream = _detected(stream, fmt, source)
    if fmt in ("csv", "tsv"):
        delimiter = "," if fmt == "csv" else "\t"
        return delimited.read_blocks(stream, source, delimiter, block_rows, hash_named_block_rows)
    return read(stream, fmt, source)


def _detected(stream: Iterable[str], fmt: str, source: str) -> tuple[str, Iterable[str]]:
    if fmt != "auto":
        return fmt, stream
    lines = iter(stream)
    first = next(lines, "")
    # the readers iterate lines: put the one read back in front
    return detect(source, first), itertools.chain([first], lines)


def read_path(path: str, fmt: str = "auto") -> Iterator[Record | Rejected]:
    with open(path, encoding="utf-8-sig", newline="") as stream:
        yield from read(stream, fmt, path)


def write(stream: TextIO, records: Iterable[Record], fmt: str) -> int:
    """Writes records in a format; returns how many rows were written."""
    return _format(fmt).write(stream, records)


class _Tabbed:
    """delimited's reader and writer with tabs: the module of the "tsv" format."""

    read = staticmethod(functools.partial(delimited.read, delimiter="\t"))
    write = staticmethod(functools.partial(delimited.write, delimiter="\t"))


# Each format's module: read(stream, source) and write(stream, records).
_MODULES = {
    "csv": delimited,
    "tsv": _Tabbed,
    "jsonl": jsonl,
    "hma": hma,
    "tcap": tcap,
    "vpdq": vpdq,
}


def _format(fmt: str):
    if fmt not in _MODULES:
        raise ValueError(f"unknown format {fmt!r} (formats: {', '.join(FORMATS)})")
    return _MODULES[fmt]


def vpdq_file_name(entry: str) -> str:
    """The file name of one video entry's vPDQ file: distinct for distinct
    entries, and read back as the entry's name (see vpdq.file_name)."""
    return vpdq.file_name(entry)
