"""Notifications: the events hashsvc tells a platform about, built once here
and appended to the store's outbox in the transaction of their cause.

    events = [decision_event(outcome, caller)]       # a Match that blocked
    store.record_match(record, events=events)        # history record + outbox row

An event's JSON (what a webhook receives and Events/Subscribe streams) is
`{"id": N, "type": T, "time": ISO-8601, ...body}`; decision and retro-match
events carry the matches as `hashsvc match --json` prints them
(hashsvc/base/match_json.py). An event never holds media, nor the upload's
hashes.

For a cause that has no store write of its own to join (a retro-hunt that
writes its hits itself, a partner feed's update), `emit(store, type, body)`
appends in a transaction of its own.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from hashdb import EventWriter, NewEvent, OutboxEvent
from hashsvc.matching.matcher import Match
from hashsvc.matching.policy import BLOCK, REVIEW

MATCH_BLOCK = "match.block"
MATCH_REVIEW = "match.review"
RETRO_MATCH = "retro_match"
REVIEW_RESOLVED = "review.resolved"
ENTRY_QUARANTINED = "entry.quarantined"
FEED_UPDATED = "feed.updated"
EVENT_TYPES = (
    MATCH_BLOCK,
    MATCH_REVIEW,
    RETRO_MATCH,
    REVIEW_RESOLVED,
    ENTRY_QUARANTINED,
    FEED_UPDATED,
)
_DECISION_EVENTS = {BLOCK: MATCH_BLOCK, REVIEW: MATCH_REVIEW}


def new_event(event_type: str, body: dict, set_names: Iterable[str] = ()) -> NewEvent:
    """An event to hand to a store write; raises ValueError for an unknown
    type or a body that names id, type or time (the outbox gives those)."""
    if event_type not in EVENT_TYPES:
        raise ValueError(f"unknown event type {event_type!r}: one of {', '.join(EVENT_TYPES)}")
    reserved = {"id", "type", "time"} & set(body)
    if reserved:
        raise ValueError(f"an event body may not set {', '.join(sorted(reserved))}")
    json.dumps(body)  # a body that cannot be sent fails here, not at delivery
    return NewEvent(event_type, dict(body), tuple(sorted(set(set_names))))


def emit(store: EventWriter, event_type: str, body: dict, set_names: Iterable[str] = ()) -> None:
    """Appends one event in a transaction of its own."""
    store.append_events([new_event(event_type, body, set_names)])


def matches_json(matches: Iterable[Match]) -> list[dict]:
    return [m.public_json() for m in matches]


def decision_event(
    *,
    request_id: str,
    decision: str,
    media_type: str,
    client_ref: str,
    caller: str,
    matches: list[Match],
) -> NewEvent | None:
    """match.block / match.review for a Match's decision (None for allow)."""
    event_type = _DECISION_EVENTS.get(decision)
    if event_type is None:
        return None
    shown = [m for m in matches if m.decision != "allow"]
    return new_event(
        event_type,
        {
            "request_id": request_id,
            "decision": decision,
            "media_type": media_type,
            "client_ref": client_ref,
            "caller": caller,
            "matches": matches_json(shown),
        },
        (m.set_name for m in shown),
    )


def retro_match_event(
    *,
    request_id: str,
    upload_time: str,
    caller: str,
    client_ref: str,
    media_type: str,
    decision: str,
    matches: list[Match],
    review_id: int | None = None,
) -> NewEvent:
    """retro_match: an upload let through before, that a newly added entry
    matches (the retro-hunt calls this with each hit; `upload_time` ISO-8601)."""
    return new_event(
        RETRO_MATCH,
        {
            "request_id": request_id,
            "upload_time": upload_time,
            "caller": caller,
            "client_ref": client_ref,
            "media_type": media_type,
            "decision": decision,
            "matches": matches_json(matches),
            **({"review_id": review_id} if review_id is not None else {}),
        },
        (m.set_name for m in matches),
    )


def review_resolved_event(
    *,
    review_id: int,
    request_id: str,
    resolution: str,
    reviewer: str,
    client_ref: str,
    media_type: str,
    matches: list[dict],
    added_to_set: str = "",
    added_entry: str = "",
) -> NewEvent:
    """review.resolved; `matches` as the review item stores them (to_json)."""
    shown = [Match.from_json(m) for m in matches]
    return new_event(
        REVIEW_RESOLVED,
        {
            "review_id": review_id,
            "request_id": request_id,
            "resolution": resolution,
            "reviewer": reviewer,
            "client_ref": client_ref,
            "media_type": media_type,
            "matches": matches_json(shown),
            **({"added_to_set": added_to_set, "added_entry": added_entry} if added_entry else {}),
        },
        [m.set_name for m in shown] + ([added_to_set] if added_to_set else []),
    )


def quarantine_event(
    *, set_name: str, entry: str, matches: int, window_seconds: float, reason: str
) -> NewEvent:
    """entry.quarantined: a flood alert (the store adds its review_id)."""
    return new_event(
        ENTRY_QUARANTINED,
        {
            "set": set_name,
            "entry": entry,
            "matches": matches,
            "window_seconds": window_seconds,
            "reason": reason,
        },
        [set_name],
    )


def feed_updated_event(
    *, set_name: str, source: str, caller: str, counts: dict[str, int], status: str = "OK"
) -> NewEvent:
    """feed.updated: a partner's hash list changed a set (`source`: bulk_load
    for `hashsvc load`; counts: added, updated, removed, unchanged, rejected;
    status: the load's, which may have failed after changing part of it)."""
    return new_event(
        FEED_UPDATED,
        {"set": set_name, "source": source, "caller": caller, "counts": counts, "status": status},
        [set_name],
    )


def event_json(event: OutboxEvent) -> dict:
    """The event as receivers get it."""
    return {
        "id": event.id,
        "type": event.type,
        "time": event.time.isoformat().replace("+00:00", "Z"),
        **event.body,
    }


def event_bytes(event: OutboxEvent) -> bytes:
    """The exact bytes sent (and signed)."""
    return json.dumps(event_json(event), ensure_ascii=False, separators=(",", ":")).encode()
