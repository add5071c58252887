"""Checks on what callers name and label things. The store trusts the core, so
everything a caller can write passes through here first."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence

from hashsvc.base.decisions import Thresholds
from hashsvc.base.errors import InvalidArgument, quoted
from hashsvc.base.signals import SIGNAL_TYPES, signal_type

_SET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_LABEL_KEY = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,63}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
MAX_LABELS = 32
MAX_LABEL_VALUE = 256
MAX_ENTRY_NAME = 512
MAX_TEXT = 2000
# Labels as JSON text (bulk rows, load files): 32 labels of 64 + 256
# characters are ~10k, ~62k if every character were escaped as \uXXXX.
MAX_LABELS_JSON = 64 * 1024
# Pages of ListEntries, QueryHistory and ListReviewItems: page_size 0 takes
# the default, a larger one the maximum.
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
# A page token is the last id of the previous page: a decimal id that fits the
# stores' 64-bit ids (a larger one was INTERNAL on PostgreSQL).
_PAGE_TOKEN = re.compile(r"[0-9]{1,19}")
MAX_ID = 2**63 - 1


def set_name(name: str) -> str:
    if not _SET_NAME.fullmatch(name or ""):
        raise InvalidArgument(
            f"invalid set name {quoted(name)}: 1-128 characters of letters, digits, '.', '_', '-',"
            " starting with a letter or digit"
        )
    return name


def entry_name(name: str) -> str:
    if not name or len(name) > MAX_ENTRY_NAME or _CONTROL.search(name):
        raise InvalidArgument(
            f"invalid entry name {quoted(name)}: 1-{MAX_ENTRY_NAME} characters,"
            " no control characters"
        )
    return name


def entry_names_valid(names: Sequence[str]) -> bool:
    """Whether every name passes entry_name(), checked a column at a time
    (a feed's million names); entry_name() says what is wrong with one."""
    return (
        bool(names)
        and min(map(len, names)) > 0
        and max(map(len, names)) <= MAX_ENTRY_NAME
        and _CONTROL.search("".join(names)) is None
    )


def label_values_valid(values: Sequence[str]) -> bool:
    """Whether every value passes labels()' check of a value, a column at a
    time (a feed's source id a row)."""
    return (not values or max(map(len, values)) <= MAX_LABEL_VALUE) and _CONTROL.search(
        "".join(values)
    ) is None


def label_key_valid(key: str) -> bool:
    return _LABEL_KEY.fullmatch(key) is not None


def text(value: str, what: str) -> str:
    if len(value) > MAX_TEXT:
        raise InvalidArgument(f"{what} is longer than {MAX_TEXT} characters")
    return value


def labels(values: dict[str, str]) -> dict[str, str]:
    if len(values) > MAX_LABELS:
        raise InvalidArgument(f"at most {MAX_LABELS} labels")
    for key, value in values.items():
        if not _LABEL_KEY.fullmatch(key):
            raise InvalidArgument(
                f"invalid label key {quoted(key)}: a letter, then letters, digits, '_', '.', '-'"
            )
        if len(value) > MAX_LABEL_VALUE or _CONTROL.search(value):
            raise InvalidArgument(
                f"invalid value for label {quoted(key)}: at most {MAX_LABEL_VALUE} characters,"
                " no control characters"
            )
    return dict(values)


def label_pairs(pairs: Iterable[str]) -> dict[str, str]:
    """['group=ISIS', 'outlet=Amaq'] -> checked labels: the one reader of
    `key=value` (the CLI's --label, a load file's labels cell). Key and value
    are stripped; an `=` after the first belongs to the value."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise InvalidArgument(f"label {quoted(pair.strip())} is not key=value")
        out[key.strip()] = value.strip()
    return labels(out)


# A set's local-feature thresholds may not ask for fewer geometric inliers
# than this: with a handful of points, RANSAC finds a "consistent" transform
# between unrelated pictures (flat and dark ones agreed on dozens).
MIN_LOCAL_INLIERS = 8
# ... nor more than any picture can have (a blob holds a few hundred points).
MAX_LOCAL_INLIERS = 10_000


def thresholds(values: dict[str, Thresholds]) -> dict[str, Thresholds]:
    for kind, limits in values.items():
        sig = signal_type(kind)
        if sig.opaque:
            _evidence_thresholds(kind, limits)
            continue
        if (
            limits.block_inliers
            or limits.review_inliers
            or limits.block_coverage
            or limits.review_coverage
        ):
            raise InvalidArgument(
                f"{kind} is compared by distance: inliers and coverage thresholds are only"
                " for local_features"
            )
        if not sig.perceptual and (limits.block_distance or limits.review_distance):
            raise InvalidArgument(f"{kind} is an exact hash: its thresholds must be 0")
        for what, value in (("block", limits.block_distance), ("review", limits.review_distance)):
            if not 0 <= value <= sig.max_distance:
                raise InvalidArgument(
                    f"{kind} {what} threshold must be within 0..{sig.max_distance}"
                )
        if limits.block_distance > limits.review_distance:
            raise InvalidArgument(
                f"{kind} block threshold ({limits.block_distance}) is above its review"
                f" threshold ({limits.review_distance})"
            )
    return dict(values)


def _evidence_thresholds(kind: str, limits: Thresholds) -> None:
    """Local features: judged by inliers and coverage, never by distance."""
    if limits.block_distance or limits.review_distance:
        raise InvalidArgument(
            f"{kind} is judged by inliers and coverage: its distance thresholds must be 0"
        )
    for what, value in (("block", limits.block_inliers), ("review", limits.review_inliers)):
        if not MIN_LOCAL_INLIERS <= value <= MAX_LOCAL_INLIERS:
            raise InvalidArgument(
                f"{kind} {what} inliers must be within {MIN_LOCAL_INLIERS}..{MAX_LOCAL_INLIERS}"
                f" (fewer is no evidence), got {value}"
            )
    for what, value in (("block", limits.block_coverage), ("review", limits.review_coverage)):
        if not 0.0 <= value <= 1.0:  # also refuses NaN
            raise InvalidArgument(f"{kind} {what} coverage must be within 0..1, got {value}")
    if (
        limits.block_inliers < limits.review_inliers
        or limits.block_coverage < limits.review_coverage
    ):
        raise InvalidArgument(
            f"{kind} block thresholds ({limits.block_inliers} inliers, coverage"
            f" {limits.block_coverage}) must be at least as strict as its review thresholds"
            f" ({limits.review_inliers} inliers, coverage {limits.review_coverage})"
        )


def known_signal_types() -> list[str]:
    return sorted(SIGNAL_TYPES)


def page_token(token: str) -> int:
    """Page tokens are the last id of the previous page (keyset pagination).
    ASCII digits only: str.isdigit() also takes '²' (int() then fails) and
    '١' (an Arabic-Indic 1)."""
    if not token:
        return 0
    if not _PAGE_TOKEN.fullmatch(token) or int(token) > MAX_ID:
        raise InvalidArgument(f"invalid page token {quoted(token)}")
    return int(token)


def page(page_size: int, token: str, maximum: int = MAX_PAGE_SIZE) -> tuple[int, int]:
    """(id after which the page starts, rows at most) of a list request: the
    one check of every paging field. A negative size took every row on SQLite
    (LIMIT -1) and was INTERNAL on PostgreSQL."""
    if page_size < 0:
        raise InvalidArgument(f"page_size must be 0 (the default, {DEFAULT_PAGE_SIZE}) or more")
    return page_token(token), min(page_size or DEFAULT_PAGE_SIZE, maximum)


_ENTRY_PAGE_TOKEN = re.compile(r"([0-9]{1,19}):([0-9]{1,9})")


def entry_page(page_size: int, token: str) -> tuple[int, int, int]:
    """(id after which the page starts, rows at most, signals of the first
    entry already sent) of ListEntries: its token is an id, or `ID:N` when
    the last page ended inside entry ID (larger than a message) after its
    first N signals."""
    found = _ENTRY_PAGE_TOKEN.fullmatch(token or "")
    if found is None:
        after_id, limit = page(page_size, token)
        return after_id, limit, 0
    entry_id, sent = int(found.group(1)), int(found.group(2))
    if not 1 <= entry_id <= MAX_ID or not sent:
        raise InvalidArgument(f"invalid page token {quoted(token)}")
    _, limit = page(page_size, "")
    return entry_id - 1, limit, sent


def labels_json(text: str) -> dict[str, str]:
    """Labels given as a JSON object of strings (bulk rows, load files),
    checked. The text is bounded before it is parsed, and a deeply nested
    one (json.loads raises RecursionError, not ValueError) is invalid."""
    if len(text) > MAX_LABELS_JSON:
        raise InvalidArgument(f"labels are longer than {MAX_LABELS_JSON} characters")
    try:
        values = json.loads(text)
    except ValueError as exc:
        raise InvalidArgument(f"labels {quoted(text)} are not a JSON object: {exc}") from None
    except RecursionError:
        raise InvalidArgument(f"labels {quoted(text)} are nested too deeply") from None
    if not isinstance(values, dict) or not all(isinstance(v, str) for v in values.values()):
        raise InvalidArgument(f"labels {quoted(text)} are not a JSON object of strings")
    return labels(values)
