"""Sets, entries, history records and review items as the public JSON, written
once. `hashsvc ... --json` builds these objects from the API's messages and
the HTTP API from the core's records; both pass plain values here, so a
script reads the same object from `hashsvc history --json` and
`GET /v1/history`, and a field added is added to both (a public contract:
fields are added, never renamed). Matches are hashsvc/base/match_json.py's,
retro-hunt runs hashsvc/base/retro_json.py's. Partner feeds too: never their
credentials, only whether they have any."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from datetime import datetime

from hashsvc.base import signals as signal_types
from hashsvc.base.retro_json import iso_utc

# Judged by evidence (inliers and coverage), not by a distance.
EVIDENCE_SIGNAL_TYPES = frozenset({"local_features"})


def iso(moment: datetime | None) -> str | None:
    return None if moment is None else iso_utc(moment)


def signal_json(
    *, signal_type: str, value: str, quality: int, variant: str, size: int = 0, sha256: str = ""
) -> dict:
    """A hash as the API returns it (hex value), of an upload or an entry. An
    opaque value (a picture's local features, ~36 KB of hex) is its size and
    SHA-256, whether it came whole or already summarised: `hashsvc export`
    gives the values themselves."""
    if value and signal_types.signal_type(signal_type).opaque:
        raw = bytes.fromhex(value)
        value, size, sha256 = "", len(raw), hashlib.sha256(raw).hexdigest()
    out = {"signal_type": signal_type, "value": value, "quality": quality, "variant": variant}
    if sha256:
        out.update(bytes=size, sha256=sha256)
    return out


def threshold_json(signal_type: str, thresholds) -> dict:
    """A set's thresholds for one signal type; `thresholds` is anything with
    the Threshold fields (the message or the core's Thresholds)."""
    t = thresholds
    if signal_type in EVIDENCE_SIGNAL_TYPES:
        return {
            "block_inliers": t.block_inliers,
            "block_coverage": t.block_coverage,
            "review_inliers": t.review_inliers,
            "review_coverage": t.review_coverage,
        }
    return {"block": t.block_distance, "review": t.review_distance}


def set_json(
    *,
    name: str,
    description: str,
    labels: Mapping[str, str],
    enabled: bool,
    entries: int,
    thresholds: Mapping[str, dict],
    allow_list: bool,
    review_blocks: bool,
    review_target: bool,
    retro_window_seconds: int | None,
    created_at: datetime | None,
) -> dict:
    return {
        "name": name,
        "description": description,
        "labels": dict(labels),
        "enabled": enabled,
        "entries": entries,
        "thresholds": {k: thresholds[k] for k in sorted(thresholds)},
        "allow_list": allow_list,
        "review_blocks": review_blocks,
        "review_target": review_target,
        # null: the server's retro_window; 0: no retro-hunt for this set
        "retro_window_seconds": retro_window_seconds,
        "created_at": iso(created_at),
    }


def entry_json(
    *,
    set_name: str,
    name: str,
    entry_id: int,
    labels: Mapping[str, str],
    media_type: str,
    signals: Iterable[dict],
    created_at: datetime | None,
    added_by: str,
    removed_at: datetime | None = None,
) -> dict:
    out = {
        "set": set_name,
        "entry": name,
        "id": entry_id,
        "labels": dict(labels),
        "media_type": media_type,
        "signals": list(signals),
        "created_at": iso(created_at),
        "added_by": added_by,
    }
    if removed_at is not None:
        out["removed_at"] = iso(removed_at)
    return out


def history_json(
    *,
    record_id: int,
    request_id: str,
    time: datetime | None,
    caller: str,
    caller_token_id: int,
    rpc: str,
    media_type: str,
    decision: str | None,
    status: str,
    error_message: str,
    client_ref: str,
    media_bytes: int,
    query_signals: Iterable[dict],
    matches: Iterable[dict],
    detail: dict | None,
) -> dict:
    return {
        "id": record_id,
        "request_id": request_id,
        "time": iso(time),
        "caller": caller,
        "caller_token_id": caller_token_id or None,
        "rpc": rpc,
        "media_type": media_type,
        "decision": decision or None,
        "status": status,
        "error_message": error_message,
        "client_ref": client_ref,
        "media_bytes": media_bytes,
        "query_signals": list(query_signals),
        "matches": list(matches),
        # reviewers' and operators' actions: what was done
        "detail": detail or None,
    }


def review_item_json(
    *,
    item_id: int,
    source: str,
    request_id: str,
    created_at: datetime | None,
    caller: str,
    media_type: str,
    client_ref: str,
    status: str,
    claimed_by: str,
    claim_expires_at: datetime | None,
    resolved_by: str,
    resolved_at: datetime | None,
    note: str,
    added_entry_id: int,
    query_signals: Iterable[dict],
    matches: Iterable[dict],
) -> dict:
    return {
        "id": item_id,
        "source": source or "match",  # "retro": found by a retro-hunt
        "request_id": request_id,
        "created_at": iso(created_at),
        "caller": caller,
        "media_type": media_type,
        "client_ref": client_ref,
        "status": status,
        "claimed_by": claimed_by,
        "claim_expires_at": iso(claim_expires_at) if claimed_by else None,
        "resolved_by": resolved_by,
        "resolved_at": iso(resolved_at) if resolved_by else None,
        "note": note,
        "added_entry_id": added_entry_id or None,
        "query_signals": list(query_signals),
        "matches": list(matches),
    }


def feed_status_json(
    *,
    name: str,
    api: str,
    set_name: str,
    enabled: bool,
    last_fetch: datetime | None,
    result: str,
    error: str,
    added: int,
    updated: int,
    deleted: int,
    skipped: int,
    rejected: int,
    failures: int,
    checkpoint: str,
    next_run: datetime | None,
    fetching_replica: str,
) -> dict:
    """A feed's status (`hashsvc exchange status --json`, GET .../status)."""
    return {
        "name": name,
        "api": api,
        "set": set_name,
        "enabled": enabled,
        "last_fetch": iso(last_fetch),
        "result": result or None,
        "error": error or None,
        "added": added,
        "updated": updated,
        "deleted": deleted,
        "skipped": skipped,
        "rejected": rejected,
        "failures": failures,
        "checkpoint": checkpoint or None,
        "next_run": iso(next_run),
        "fetching_replica": fetching_replica or None,
    }


def feed_json(
    status: dict,
    *,
    labels: Mapping[str, str],
    options: Mapping[str, str],
    every_seconds: float,
    has_credentials: bool,
    items: int,
) -> dict:
    """A feed as `hashsvc exchange list --json` prints it: its status, labels,
    options and schedule; whether it has credentials, never what they are."""
    return {
        **status,
        "labels": dict(labels),
        "options": dict(options),
        "every_seconds": every_seconds,
        "has_credentials": has_credentials,
        "items": items,
    }


def feedback_json(
    *,
    item_id: int,
    entry: str,
    verdict: str,
    state: str,
    attempts: int,
    error: str,
    created_at: datetime | None,
    sent_at: datetime | None,
) -> dict:
    """A reviewer's verdict sent back to a feed's source (`exchange show
    --json`, GET /v1/exchange/feeds/{name})."""
    return {
        "id": item_id,
        "entry": entry,
        "verdict": verdict,
        "state": state,
        "attempts": attempts,
        "error": error or None,
        "created_at": iso(created_at),
        "sent_at": iso(sent_at),
    }
