"""Entries' labels interned: each distinct label set is stored once, in
label_sets, and an entry holds its set's id. A feed's source id (the label
SOURCE_ID_LABEL) differs on every entry, so it is kept beside the set, in
entries.source_id, and the set itself is shared: a feed of 1M hashes has a
few hundred sets instead of 1M label texts (on SQLite their text was a third
of a feed's write).

An entry's labels are its set's, and SOURCE_ID_LABEL = source_id when that
is not NULL. Entries written before the sets were interned keep their whole
text as their set (the source id inside it, source_id NULL): they read back
the same.
"""

from __future__ import annotations

import json
from functools import lru_cache

# The label kept in its own column (a feed sets it on every entry).
SOURCE_ID_LABEL = "source_id"
# The set of an entry without labels
NO_LABELS = "{}"


@lru_cache(maxsize=4096)
def parsed_labels(text: str) -> dict[str, str]:
    """Stored labels text -> dict; cached (a feed repeats a few hundred label
    sets), so callers must not change what they get."""
    return json.loads(text)


def split_labels(labels: dict[str, str] | None) -> tuple[str, str | None]:
    """An entry's labels as stored: its label set's text (canonical JSON)
    and its source id (None: it has none)."""
    if not labels:
        return NO_LABELS, None
    source_id = labels.get(SOURCE_ID_LABEL)
    if not source_id:  # none, or "": kept in the set (the column's NULL is none)
        return json.dumps(labels, sort_keys=True), None
    shared = {key: value for key, value in labels.items() if key != SOURCE_ID_LABEL}
    return json.dumps(shared, sort_keys=True), source_id


def split_text(text: str) -> tuple[str, str | None]:
    """split_labels of stored labels text; a text without the source id
    label is its own set, unparsed."""
    if f'"{SOURCE_ID_LABEL}"' not in text:
        return text, None
    return split_labels(parsed_labels(text))


def joined_labels(set_text: str, source_id: str | None) -> dict[str, str]:
    """An entry's labels (a new dict) from its set's text and source id."""
    labels = dict(parsed_labels(set_text))
    if source_id is not None:
        labels[SOURCE_ID_LABEL] = source_id
    return labels


def joined_text(set_text: str, source_id: str | None) -> str:
    """An entry's labels as one canonical text (json.dumps(labels,
    sort_keys=True)), as loads compare them."""
    if source_id is None:
        return set_text
    return json.dumps(joined_labels(set_text, source_id), sort_keys=True)
