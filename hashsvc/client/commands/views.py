"""The API's messages as the CLI prints them with --json. These names are a
public contract (README, CLI): scripts read them, so a field is added, never
renamed."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from hashsvc.base import record_json
from hashsvc.base.match_json import match_json as public_match_json
from hashsvc.v1 import hashsvc_pb2 as pb

DECISION_NAMES = {pb.ALLOW: "allow", pb.REVIEW: "review", pb.BLOCK: "block"}
DECISION_VALUES = {v: k for k, v in DECISION_NAMES.items()}


def media_type_name(media_type: int) -> str:
    """ "image", "video", ...; "unspecified" for records of actions (as the HTTP
    API says; the enum's own name, "media_type_unspecified", is protobuf's)."""
    if media_type == pb.MEDIA_TYPE_UNSPECIFIED:
        return "unspecified"
    return pb.MediaType.Name(media_type).lower()


def query_signal_json(s: pb.QuerySignal) -> dict:
    """A hash as the API returns it, of an upload or an entry."""
    return record_json.signal_json(
        signal_type=s.signal_type,
        value=s.value,
        quality=s.quality,
        variant=s.variant,
        size=s.value_bytes,
        sha256=s.value_sha256,
    )


def matched_json(m: pb.MatchedEntry) -> dict:
    return public_match_json(
        set_name=m.set,
        entry=m.entry,
        signal_type=m.signal_type,
        distance=m.distance,
        labels=m.labels,
        decision=DECISION_NAMES.get(m.decision),
        query_variant=m.query_variant,
        known_variant=m.known_variant,
        unit=m.unit,
        query_share=m.query_share,
        known_share=m.known_share,
        segments=m.segments,
        local_features=m.local_features if m.HasField("local_features") else None,
        audio_shift=m.audio_shift if m.HasField("audio_shift") else None,
    )


def match_json(label: str, resp: pb.MatchResponse) -> dict:
    """One line of `match --json`."""
    return {
        "file": label,
        "decision": DECISION_NAMES.get(resp.decision),
        "request_id": resp.request_id,
        "matches": [matched_json(m) for m in resp.matches],
        **({"notes": list(resp.notes)} if resp.notes else {}),
    }


def _when(ts) -> datetime | None:
    # an unset Timestamp is the epoch: the writer prints it, as before
    return ts.ToDatetime(tzinfo=UTC)


def set_json(s: pb.HashSet) -> dict:
    return record_json.set_json(
        name=s.name,
        description=s.description,
        labels=s.labels,
        enabled=s.enabled,
        entries=s.entry_count,
        thresholds={
            t.signal_type: record_json.threshold_json(t.signal_type, t) for t in s.thresholds
        },
        allow_list=s.allow_list,
        review_blocks=s.review_blocks,
        review_target=s.review_target,
        retro_window_seconds=(
            s.retro_window_seconds if s.HasField("retro_window_seconds") else None
        ),
        created_at=_when(s.created_at),
    )


def entry_json(e: pb.Entry) -> dict:
    return record_json.entry_json(
        set_name=e.set,
        name=e.name,
        entry_id=e.id,
        labels=e.labels,
        media_type=media_type_name(e.media_type),
        signals=[query_signal_json(s) for s in e.signals],
        created_at=_when(e.created_at),
        added_by=e.added_by,
        removed_at=_when(e.removed_at) if e.removed_at.seconds else None,
    )


def history_json(r: pb.HistoryRecord) -> dict:
    return record_json.history_json(
        record_id=r.id,
        request_id=r.request_id,
        time=_when(r.time),
        caller=r.caller,
        caller_token_id=r.caller_token_id,
        rpc=r.rpc,
        media_type=media_type_name(r.media_type),
        decision=DECISION_NAMES.get(r.decision),
        status=r.status,
        error_message=r.error_message,
        client_ref=r.client_ref,
        media_bytes=r.media_bytes,
        query_signals=[query_signal_json(s) for s in r.query_signals],
        matches=[matched_json(m) for m in r.matches],
        detail=json.loads(r.detail_json) if r.detail_json else None,
    )


def review_item_json(item: pb.ReviewItem) -> dict:
    return record_json.review_item_json(
        item_id=item.id,
        source=item.source,
        request_id=item.request_id,
        created_at=_when(item.created_at),
        caller=item.caller,
        media_type=media_type_name(item.media_type),
        client_ref=item.client_ref,
        status=item.status,
        claimed_by=item.claimed_by,
        claim_expires_at=_when(item.claim_expires_at),
        resolved_by=item.resolved_by,
        resolved_at=_when(item.resolved_at),
        note=item.note,
        added_entry_id=item.added_entry_id,
        query_signals=[query_signal_json(s) for s in item.query_signals],
        matches=[matched_json(m) for m in item.matches],
    )
