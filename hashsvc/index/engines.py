"""Which index engine holds a signal type, and which one wrote a snapshot:
the one place that knows both engines (hashsvc/index/binary.py and
hashsvc/index/multi_index.py), so neither imports the other."""

from __future__ import annotations

from hashsvc.index.binary import SNAPSHOT_MAGIC_PREFIX, BinaryIndex, HashIndex
from hashsvc.index.multi_index import MultiIndexHash


def new_index(signal_type: str, bits: int, pdq_review_search: str | None = None) -> HashIndex:
    """The engine for one signal type: multi-index hashing for PDQ (millions of
    hashes), the flat index for the others (fewer hashes, other lengths)."""
    if signal_type == "pdq":
        if pdq_review_search is None:
            return MultiIndexHash(bits)
        return MultiIndexHash(bits, pdq_review_search)
    return BinaryIndex(bits)


def load_index(path: str, bits: int, pdq_review_search: str | None = None) -> HashIndex:
    """Whichever engine wrote the snapshot at path."""
    with open(path, "rb") as f:
        if f.read(len(SNAPSHOT_MAGIC_PREFIX)) == SNAPSHOT_MAGIC_PREFIX:
            if pdq_review_search is None:
                return MultiIndexHash.load(path, bits)
            return MultiIndexHash.load(path, bits, pdq_review_search)
    return BinaryIndex.load(path, bits)
