"""A plain hash list as columns, built by numpy instead of a Python object a
row: the entry names of values, and PostgreSQL's binary COPY of new entries
and their signals. A bulk write's Python work holds the GIL, which every
Match of the same server needs too; these take a few milliseconds for 50k
rows instead of a hundred."""

from __future__ import annotations

import numpy as np

_HEX_DIGITS = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
# PGCOPY signature, flags (none) and header extension length (none)
_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + bytes(8)
_COPY_TRAILER = b"\xff\xff"


def unique_ids(ids) -> np.ndarray:
    """The distinct int64 ids, sorted. np.unique does the same, but numpy 2.4
    finds them by hashing first: 0.39 s of CPU for 500k ids, 16x a sort (a
    bulk load's index catch-ups and retro-hunt read such lists)."""
    out = np.sort(np.asarray(ids, dtype=np.int64).ravel())
    if len(out) > 1:
        out = out[np.r_[True, out[1:] != out[:-1]]]
    return out


def value_rows(values: list[bytes] | bytes, width: int) -> np.ndarray:
    """Fixed-length values as an (n, width) array of bytes."""
    blob = values if isinstance(values, bytes) else b"".join(values)
    return np.frombuffer(blob, dtype=np.uint8).reshape(-1, width)


def name_rows(prefix: str, rows: np.ndarray) -> np.ndarray:
    """(n, len(prefix) + 2 * width) ASCII: prefix + the value in lower-case hex,
    as bulk.py names an entry after its signal ("pdq:<hex>")."""
    head = np.frombuffer(prefix.encode("ascii"), dtype=np.uint8)
    out = np.empty((len(rows), len(head) + 2 * rows.shape[1]), dtype=np.uint8)
    out[:, : len(head)] = head
    digits = out[:, len(head) :]
    digits[:, 0::2] = _HEX_DIGITS[rows >> 4]
    digits[:, 1::2] = _HEX_DIGITS[rows & 15]
    return out


def names(prefix: str, rows: np.ndarray) -> list[str]:
    """The entry names of the values, as name_rows()."""
    table = name_rows(prefix, rows)
    text = table.tobytes().decode("ascii")
    size = table.shape[1]
    return [text[i : i + size] for i in range(0, len(text), size)]


def names_json(
    prefix: str, rows: np.ndarray, codes: np.ndarray | None = None, digits: int = 0
) -> str:
    """The entry names of the values as one JSON array of strings; with
    codes, each name follows its row's code in `digits` decimal digits
    (hashdb/sqlite.py's label set numbers)."""
    table = name_rows(prefix, rows)
    if codes is None:
        digits = 0
    quoted = np.empty((len(rows), digits + table.shape[1] + 3), dtype=np.uint8)
    quoted[:, 0] = ord('"')
    if digits:
        place = np.asarray(codes, dtype=np.int64)[:, None] // 10 ** np.arange(digits - 1, -1, -1)
        quoted[:, 1 : 1 + digits] = ord("0") + place % 10
    quoted[:, 1 + digits : -2] = table
    quoted[:, -2] = ord('"')
    quoted[:, -1] = ord(",")
    text = quoted.tobytes().decode("ascii")
    return f"[{text[:-1]}]"


def _binary_copy(fields: list[tuple[str, np.ndarray | bytes | int]], count: int) -> bytes:
    """COPY ... (FORMAT BINARY) data of `count` rows whose every field has the
    same length in every row: (numpy type, column array or constant); a
    None type is a NULL, an empty string type an empty value."""
    layout: list[tuple[str, str]] = [("field_count", ">i2")]
    for k, (dtype, _) in enumerate(fields):
        layout.append((f"length{k}", ">i4"))
        if dtype:
            layout.append((f"value{k}", dtype))
    table = np.empty(count, dtype=np.dtype(layout))
    table["field_count"] = len(fields)
    for k, (dtype, column) in enumerate(fields):
        table[f"length{k}"] = -1 if dtype is None else np.dtype(dtype).itemsize if dtype else 0
        if dtype:
            table[f"value{k}"] = column
    return _COPY_HEADER + table.tobytes() + _COPY_TRAILER


def entries_copy(
    first_id: int,
    set_id: int,
    name_table: np.ndarray,
    label_set_id: int,
    media_type: str,
    created_at: int,
    added_by: str,
) -> bytes:
    """Binary COPY data for entries (id, set_id, name, label_set_id,
    source_id, media_type, created_at, added_by): consecutive ids from
    first_id, all of one label set, no source ids."""
    count, name_size = name_table.shape
    media, by = media_type.encode(), added_by.encode()
    return _binary_copy(
        [
            (">i8", np.arange(first_id, first_id + count, dtype=np.int64)),
            (">i8", set_id),
            (f"V{name_size}", name_table.view(f"V{name_size}").ravel()),
            (">i8", label_set_id),
            (None, 0),
            (f"V{len(media)}", np.void(media)),
            (">i8", created_at),
            (f"V{len(by)}" if by else "", np.void(by) if by else 0),
        ],
        count,
    )


def signals_copy(first_id: int, kind: str, rows: np.ndarray, qualities) -> bytes:
    """Binary COPY data for entry_signals (entry_id, variant_no, kind,
    variant, value, quality): each entry's one signal, variant 0 "original";
    `qualities` None (all NULL) or an int for every row."""
    count, width = rows.shape
    kind_bytes = kind.encode()
    quality = (None, 0) if qualities is None else (">i2", np.asarray(qualities, dtype=np.int16))
    return _binary_copy(
        [
            (">i8", np.arange(first_id, first_id + count, dtype=np.int64)),
            (">i4", 0),
            (f"V{len(kind_bytes)}", np.void(kind_bytes)),
            ("S8", b"original"),
            (f"V{width}", rows.view(f"V{width}").ravel()),
            quality,
        ],
        count,
    )
