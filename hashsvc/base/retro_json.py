"""A retro-hunt run as JSON, the public shape (`hashsvc retro list --json`
prints it, GET /v1/retro/runs answers it), written once: the CLI builds it
from a RetroRunInfo message, the HTTP API from the store's RetroRun, and both
give the same object for the same run."""

from __future__ import annotations

import math
from datetime import UTC, datetime

# A run in these states has not finished: its finished_at is null.
OPEN_STATES = ("queued", "running")


def _utc(moment: datetime) -> datetime:
    # a naive instant is UTC (timestamp() would read it as local time)
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def iso_utc(moment: datetime) -> str:
    """An instant as ISO 8601 in UTC with a Z."""
    return _utc(moment).isoformat().replace("+00:00", "Z")


def retro_run_json(
    *,
    run_id: int,
    trigger: str,
    requested_by: str,
    set_name: str,
    entries: int,
    since: datetime,
    uploads_scanned: int,
    hits: int,
    duration_seconds: float,
    state: str,
    error: str,
    created_at: datetime,
    finished_at: datetime | None,
) -> dict:
    """`duration_seconds`: 0.0 for a run not started (the message has no
    null); `window_seconds`: whole seconds from the window's start to the
    run's creation, as the message's timestamps count them."""
    window = max(0, math.floor(_utc(created_at).timestamp()) - math.floor(_utc(since).timestamp()))
    return {
        "id": run_id,
        "trigger": trigger,
        "requested_by": requested_by,
        "set": set_name,
        "entries": entries,
        "since": iso_utc(since),
        "window_seconds": window,
        "uploads_scanned": uploads_scanned,
        "hits": hits,
        "duration_seconds": duration_seconds,
        "state": state,
        "error": error,
        "created_at": iso_utc(created_at),
        "finished_at": (
            iso_utc(finished_at) if state not in OPEN_STATES and finished_at is not None else None
        ),
    }
