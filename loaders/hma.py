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

A `vpdq` row (python-threatexchange's VideoVPDQSignal) is one video: its
signal_str is a JSON list of `pdq_hex,quality,seconds` strings, one a frame,
read as the entry's frame signals (`frame:0`, `frame:1`, ... in list order;
the format keeps no frame numbers). Without an `entry` the video is named
`vpdq:` and a digest of its frame hashes, the same on every load. The writer
puts a video's frames back in one such row.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from collections.abc import Iterable, Iterator
from typing import TextIO

from hashsvc.base.media_kinds import frame_variant
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


VPDQ = "vpdq"
_FRAME = re.compile(r"frame:\d+")


def read(stream: TextIO, source: str = "") -> Iterator[Record | Rejected]:
    for item in r.named_rows(stream, ("signal_type", "signal_str"), source):
        if isinstance(item, Rejected):
            yield item
            continue
        line, cell = item
        try:
            if cell("signal_type").lower() == VPDQ:
                yield from _video_records(line, cell)  # a list: a bad frame rejects the row
            else:
                yield _record(line, cell)
        except r.RowError as exc:
            yield Rejected(line, str(exc), source)


def _labels(cell) -> dict[str, str]:
    labels = tags_to_labels(cell("tags"))
    labels.update(r.parse_labels(cell("labels")))
    for name in _COLUMN_LABELS:
        if cell(name):
            labels[name] = cell(name)
    return r.checked_labels(labels)


def _record(line: int, cell) -> Record:
    return r.record(
        cell("signal_type"),
        cell("signal_str"),
        r.entry_name(cell("entry")),
        _labels(cell),
        r.flag(cell("deleted")),
        line,
    )


def _video_records(line: int, cell) -> list[Record]:
    """A vpdq row's frames as records of one video entry."""
    labels, entry, deleted = _labels(cell), r.entry_name(cell("entry")), r.flag(cell("deleted"))
    text = cell("signal_str")
    if deleted and not text:
        if not entry:
            raise r.RowError("a deleted row needs an entry or a signal value")
        return [Record("pdq", b"", entry, labels, True, line)]
    frames = _frames(text)
    name = entry or f"{VPDQ}:{hashlib.sha256(b''.join(v for v, _, _ in frames)).hexdigest()[:32]}"
    if deleted:
        return [Record("pdq", b"", name, labels, True, line)]
    return [
        Record("pdq", value, name, labels, False, line, quality, frame_variant(n), seconds)
        for n, (value, quality, seconds) in enumerate(frames)
    ]


def _frames(text: str) -> list[tuple[bytes, int, float]]:
    """(pdq, quality, seconds) of each feature of a vpdq signal_str."""
    try:
        features = json.loads(text)
    except ValueError:
        raise r.RowError("vpdq signal_str is not a JSON list") from None
    if not isinstance(features, list) or not features:
        raise r.RowError("vpdq signal_str must be a non-empty JSON list of frames")
    frames = []
    for n, feature in enumerate(features):
        parts = feature.split(",") if isinstance(feature, str) else []
        if len(parts) != 3:
            raise r.RowError(f"vpdq frame {n} is not 'pdq_hex,quality,seconds'")
        value = r.signal_value("pdq", parts[0])
        try:
            quality, seconds = int(parts[1]), float(parts[2])
        except ValueError:
            raise r.RowError(f"vpdq frame {n}: quality or seconds is not a number") from None
        if not 0 <= quality <= 100:
            raise r.RowError(f"vpdq frame {n}: quality must be within 0..100")
        if not (seconds >= 0 and seconds != float("inf")):
            raise r.RowError(f"vpdq frame {n}: seconds must be a finite number >= 0")
        frames.append((value, quality, seconds))
    return frames


def write(stream: TextIO, records: Iterable[Record]) -> int:
    return r.write_csv(stream, HEADER, _rows(records))


def _rows(records: Iterable[Record]) -> Iterator[list[str]]:
    """A row a record, but a video's frames (consecutive PDQ `frame:N`
    records of one entry) together in one vpdq row."""
    for (_, is_frame), group in itertools.groupby(records, _frame_of):
        if not is_frame:
            yield from map(_row, group)
            continue
        frames = list(group)
        row = _row(frames[0])
        row[0] = VPDQ
        row[1] = json.dumps(
            [f"{f.signal_value.hex()},{f.quality or 0},{f.position or 0.0:.3f}" for f in frames]
        )
        yield row


def _frame_of(rec: Record) -> tuple[str, bool]:
    frame = rec.signal_type == "pdq" and not rec.deleted and _FRAME.fullmatch(rec.variant)
    return rec.entry_name, bool(frame)


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
