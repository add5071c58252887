"""vPDQ per-video hash files: one line per frame, `frame,quality,pdq_hex,seconds`
(no header), as Meta's vpdq tools write them. One file is one video entry,
named after the file (without .txt, %XX sequences decoded); each line is one
of its frame signals. The files carry no labels: loading one leaves an
existing entry's labels as they are."""

from __future__ import annotations

import hashlib
import os
import urllib.parse
from collections.abc import Iterable, Iterator
from typing import TextIO

from hashsvc.base import validation
from hashsvc.base.errors import InvalidArgument
from hashsvc.base.media_kinds import frame_variant
from loaders import records as r
from loaders.records import Record, Rejected, RowError

# Bytes of a file name we write (file systems take 255); a longer one is cut.
MAX_FILE_NAME = 240
_KEPT_PUNCTUATION = "._-"


def file_name(entry: str) -> str:
    """The file name of one video entry's vPDQ file: the entry name with every
    character other than a letter, a digit, '.', '_' or '-' written as %XX
    (UTF-8), and a leading '.' too, then ".txt" (`2015/clip.mp4` ->
    `2015%2Fclip.mp4.txt`). Two entries never get the same name, and
    entry_for gives the entry name back. A name too long for a file is cut
    and ended with `~` and a hash of the whole name (no other name has a
    bare `~`); that one does not come back."""
    if not entry:
        raise ValueError("an entry name is never empty")
    encoded = "".join(c if c.isalnum() or c in _KEPT_PUNCTUATION else _percent(c) for c in entry)
    if encoded.startswith("."):  # a hidden file, ".", ".."
        encoded = "%2E" + encoded[1:]
    if len(encoded.encode()) + 4 <= MAX_FILE_NAME:
        return encoded + ".txt"
    digest = hashlib.sha256(entry.encode()).hexdigest()[:32]
    room = MAX_FILE_NAME - len(digest) - 5
    cut = encoded.encode()[:room].decode(errors="ignore")
    # not inside a %XX
    cut = cut[: cut.rfind("%")] if "%" in cut[-2:] else cut
    return f"{cut}~{digest}.txt"


def _percent(char: str) -> str:
    # by hand: urllib.parse.quote leaves '~' as it is
    return "".join(f"%{byte:02X}" for byte in char.encode())


def entry_for(source: str) -> str:
    """The entry name of a vPDQ file: its base name without .txt, with %XX
    decoded when that gives a valid entry name (file_name's inverse)."""
    base = os.path.basename(source) or "stdin"
    base = base[:-4] if base.lower().endswith(".txt") else base
    if "%" not in base:
        return base
    try:
        return validation.entry_name(urllib.parse.unquote(base, errors="strict"))
    except (UnicodeDecodeError, InvalidArgument):
        return base


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
                frame_variant(int(frame)),
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
