"""vPDQ per-video hash files: one line per frame, `frame,quality,pdq_hex,seconds`
(no header), as Meta's vpdq tools write them. One file is one video entry,
named after the file (without .txt); each line is one of its frame signals."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import TextIO

from loaders import records as r
from loaders.records import Record, Rejected, RowError


def entry_for(source: str) -> str:
    base = os.path.basename(source) or "stdin"
    return base[:-4] if base.lower().endswith(".txt") else base


def read(
    stream: TextIO, source: str = "", labels: dict[str, str] | None = None
) -> Iterator[Record | Rejected]:
    entry = entry_for(source)
    for line, text in enumerate(stream, start=1):
        if not text.strip():
            continue
        try:
            parts = text.strip().split(",")
            if len(parts) != 4:
                raise RowError("expected frame,quality,pdq_hex,seconds")
            frame = parts[0].strip()
            if not frame.isdigit():
                raise RowError(f"frame number {frame!r} is not a whole number")
            yield Record(
                "pdq",
                r.signal_value("pdq", parts[2]),
                entry,
                labels,
                False,
                line,
                r.quality(parts[1].strip()),
                f"frame:{int(frame)}",
                r.position(parts[3].strip()),
            )
        except RowError as exc:
            yield Rejected(line, str(exc), source)


def frame_number(variant: str) -> int | None:
    head, _, number = variant.partition(":")
    return int(number) if head == "frame" and number.isdigit() else None


def write(stream: TextIO, records: Iterable[Record]) -> int:
    """The frame signals among records (one video's), in frame order."""
    frames = sorted(
        (
            (frame_number(rec.variant), rec)
            for rec in records
            if rec.signal_type == "pdq" and frame_number(rec.variant) is not None
        ),
        key=lambda pair: pair[0],
    )
    for number, rec in frames:
        seconds = rec.position or 0.0
        stream.write(f"{number},{rec.quality or 0},{rec.signal_value.hex()},{seconds:.3f}\n")
    return len(frames)
