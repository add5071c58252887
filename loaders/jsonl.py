"""JSON lines: one object per line with the CSV's fields (labels as an object
or as `key=value;...` text, deleted as a boolean)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import TextIO

from loaders import records as r
from loaders.records import Record, Rejected, RowError


def read(stream: TextIO, source: str = "") -> Iterator[Record | Rejected]:
    for line, text in enumerate(stream, start=1):
        if not text.strip():
            continue
        try:
            try:
                obj = json.loads(text)
            except ValueError as exc:
                raise RowError(f"not JSON: {exc.msg}") from None
            if not isinstance(obj, dict):
                raise RowError("a line must be a JSON object")
            yield _record(obj, line)
        except RowError as exc:
            yield Rejected(line, str(exc), source)


def _record(obj: dict, line: int) -> Record:
    kind, value = obj.get("signal_type"), obj.get("signal_value", obj.get("value", ""))
    if not isinstance(kind, str) or not isinstance(value, str):
        raise RowError("signal_type and signal_value must be strings")
    entry = obj.get("entry", "") or ""
    if not isinstance(entry, str):
        raise RowError("entry must be a string")
    labels = obj.get("labels")
    if isinstance(labels, str):
        labels = r.parse_labels(labels)
    elif isinstance(labels, dict):
        if not all(isinstance(v, str) for v in labels.values()):
            raise RowError("label values must be strings")
        labels = r.checked_labels(labels)
    elif labels is not None:
        raise RowError("labels must be an object or key=value;... text")
    return r.record(
        kind,
        value,
        r.entry_name(entry.strip()),
        labels,
        r.flag(obj.get("deleted", False)),
        line,
        r.quality(obj.get("quality")),
        r.variant(obj.get("variant") or ""),
        r.position(obj.get("position")),
    )


def write(stream: TextIO, records: Iterable[Record]) -> int:
    count = 0
    for rec in records:
        obj = {
            "signal_type": rec.signal_type,
            "signal_value": rec.signal_value.hex(),
            "entry": r.exported_entry(rec),
            "labels": rec.labels or {},
            "quality": rec.quality,
        }
        if rec.variant != "original":
            obj["variant"] = rec.variant
        if rec.position is not None:
            obj["position"] = rec.position
        if rec.deleted:
            obj["deleted"] = True
        stream.write(json.dumps(obj, ensure_ascii=False) + "\n")
        count += 1
    return count
