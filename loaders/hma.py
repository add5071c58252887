"""python-threatexchange / HMA exports: `signal_type,signal_str,collab,category,tags`
(`threatexchange dataset --csv`), with GIFCT-style tags.

Tags become labels: `group:ISIS` -> group=ISIS (the GIFCT hash-sharing
database's `key:value` tags); bare tags are kept together in the label `tags`
(space-separated); collab and category become labels of those names. Optional
`entry`, `labels` and `deleted` columns carry external ids, labels and
tombstones, which the threatexchange format itself cannot say: the writer puts
a label in `labels` (the CSV's label text) only when no tag or column gives it
back exactly (an empty value, a space other than ' ', a `tags` label that is
not sorted distinct words, a collab with spaces at an end).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import TextIO

from loaders import records as r
from loaders.records import Record, Rejected

HEADER = [
    "signal_type",
    "signal_str",
    "collab",
    "category",
    "tags",
    "entry",
    "labels",
    "deleted",
]
_TAG_SPLIT = re.compile(r"[\s,;]+")
# Labels with their own column (everything else travels as a tag).
_COLUMN_LABELS = ("collab", "category")


def looks_like(header: list[str]) -> bool:
    return "signal_str" in {h.strip().lower() for h in header}


def tags_to_labels(text: str) -> dict[str, str]:
    labels: dict[str, str] = {}
    bare: list[str] = []
    for tag in _TAG_SPLIT.split(text.strip()):
        if not tag:
            continue
        key, sep, value = tag.partition(":")
        if sep and key and value:
            labels[key] = _unescape(value)
        else:
            bare.append(tag)
    if bare:
        labels["tags"] = " ".join(sorted(set(bare)))
    return labels


def labels_to_tags(labels: dict[str, str]) -> str:
    tags = []
    for key, value in sorted(labels.items()):
        if key in _COLUMN_LABELS:
            continue
        if key == "tags":
            tags.extend(value.split())
        else:
            tags.append(f"{key}:{_escape(value)}")
    return " ".join(tags)


def _escape(value: str) -> str:
    # tags are split on spaces, commas and semicolons
    return value.replace("%", "%25").replace(" ", "%20").replace(",", "%2C").replace(";", "%3B")


def _unescape(value: str) -> str:
    return value.replace("%20", " ").replace("%2C", ",").replace("%3B", ";").replace("%25", "%")


def read(stream: TextIO, source: str = "") -> Iterator[Record | Rejected]:
    return r.named_records(stream, ("signal_type", "signal_str"), source, _record)


def _record(line: int, cell) -> Record:
    labels = tags_to_labels(cell("tags"))
    labels.update(r.parse_labels(cell("labels")))
    for name in _COLUMN_LABELS:
        if cell(name):
            labels[name] = cell(name)
    return r.record(
        cell("signal_type"),
        cell("signal_str"),
        r.entry_name(cell("entry")),
        r.checked_labels(labels),
        r.flag(cell("deleted")),
        line,
    )


def write(stream: TextIO, records: Iterable[Record]) -> int:
    return r.write_csv(stream, HEADER, (_row(rec) for rec in records))


def _row(rec: Record) -> list[str]:
    labels = rec.labels or {}
    columns = {k: v for k, v in labels.items() if k in _COLUMN_LABELS and r.fits_cell(v)}
    tagged = {
        k: v
        for k, v in labels.items()
        if k not in _COLUMN_LABELS and tags_to_labels(labels_to_tags({k: v})) == {k: v}
    }
    rest = {k: v for k, v in labels.items() if k not in columns and k not in tagged}
    return [
        rec.signal_type,
        rec.signal_value.hex(),
        columns.get("collab", ""),
        columns.get("category", ""),
        labels_to_tags(tagged),
        r.exported_entry(rec),
        r.format_labels(rest),
        "true" if rec.deleted else "",
    ]
