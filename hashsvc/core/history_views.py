"""The PDQ views of many history records, read out of their stored JSON text
(the match_history query_signals column) without parsing it.

Why. A retro-hunt reads every record of its window, ~18 PDQ views each, and
nearly none matches: parsing each record's JSON and decoding its hex views in
Python cost ~65 us a record (bench/retro.py, 18 views), more than comparing
the views with 10,000 new hashes; a regex over the text still ~25 us. This
compiled loop finds the views as the history writes them (signal_json,
json.dumps: `"signal_type": "pdq", "value": "<64 lowercase hex>"`) and decodes
them in a few us a record, without the GIL.

Safe by construction: a record is read this way only if every `"pdq"` string
in its text begins such a view; any other record (written another way, or
with "pdq" elsewhere, or a value that is not 64 hex digits) is reported odd
and parsed by the caller, so no view is left out unseen.
"""

from __future__ import annotations

import numba
import numpy as np

from hashsvc.base.signals import PDQ

PDQ_BYTES = PDQ.bits // 8
# What precedes a PDQ view's hex value in the stored text.
_PREFIX = np.frombuffer(b'"signal_type": "pdq", "value": "', dtype=np.uint8)
_PDQ_NAME = np.frombuffer(b'"pdq"', dtype=np.uint8)
# Where "pdq" sits in the prefix (its count must equal the views found).
_NAME_AT = 15
# A byte's value as a lowercase hex digit; 16 (not one) for any other byte.
_NIBBLES = np.full(256, 16, dtype=np.uint8)
_NIBBLES[np.frombuffer(b"0123456789abcdef", dtype=np.uint8)] = np.arange(16, dtype=np.uint8)
assert bytes(_PREFIX[_NAME_AT : _NAME_AT + len(_PDQ_NAME)]) == b'"pdq"'


def read_pdq_views(texts: list[str] | list[bytes]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(views as (n, 32) uint8 rows, each view's record index, whether each
    record is odd: not read here, to be parsed). Texts as str or as their
    UTF-8 bytes (as the store reads them for a hunt)."""
    parts = [t.encode() if isinstance(t, str) else t for t in texts]
    bounds = np.zeros(len(parts) + 1, dtype=np.int64)
    np.cumsum([len(p) for p in parts], out=bounds[1:])
    buffer = np.frombuffer(b"".join(parts), dtype=np.uint8)
    views, owners, odd = _scan(buffer, bounds, _PREFIX, _PDQ_NAME, _NIBBLES)
    return views, owners, odd


@numba.njit(nogil=True, cache=True, inline="always")
def _at(buffer, p, end, pattern):  # pragma: no cover - compiled
    if p + pattern.shape[0] > end:
        return False
    for k in range(pattern.shape[0]):
        if buffer[p + k] != pattern[k]:
            return False
    return True


@numba.njit(nogil=True, cache=True, inline="always")
def _decode(buffer, v, end, view, nibbles):  # pragma: no cover - compiled
    """The 64 lowercase hex digits at v, closed by a quote, into view;
    False if they are not."""
    if v + 2 * PDQ_BYTES >= end or buffer[v + 2 * PDQ_BYTES] != 34:
        return False
    bad = 0
    for k in range(PDQ_BYTES):
        hi = nibbles[buffer[v + 2 * k]]
        lo = nibbles[buffer[v + 2 * k + 1]]
        bad |= hi | lo
        view[k] = (hi << 4) | (lo & 15)
    return bad < 16


@numba.njit(nogil=True, cache=True)
def _scan(buffer, bounds, prefix, name, nibbles):  # pragma: no cover - compiled
    records = bounds.shape[0] - 1
    value_at = prefix.shape[0]
    most = buffer.shape[0] // (value_at + 2 * PDQ_BYTES + 1) + 1
    views = np.empty((most, PDQ_BYTES), dtype=np.uint8)
    owners = np.empty(most, dtype=np.int64)
    odd = np.zeros(records, dtype=np.bool_)
    n = 0
    for r in range(records):
        end = bounds[r + 1]
        first = n
        names = 0
        p = bounds[r]
        while p < end:
            if buffer[p] != 34:  # '"'
                p += 1
                continue
            if _at(buffer, p, end, prefix) and _decode(
                buffer, p + value_at, end, views[n], nibbles
            ):
                owners[n] = r
                n += 1
                names += 1  # the prefix's "pdq"
                p += value_at + 2 * PDQ_BYTES + 1
                continue
            if _at(buffer, p, end, name):
                names += 1
            p += 1
        if n - first != names:
            odd[r] = True
            n = first  # none of this record's views: the caller parses it
    return views[:n], owners[:n], odd
