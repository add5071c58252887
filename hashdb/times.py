"""Times as the stores keep them: microseconds since the epoch, UTC (both
databases compare and index integers the same way)."""

from __future__ import annotations

from datetime import UTC, datetime


def to_micros(value: datetime) -> int:
    return int(value.timestamp() * 1_000_000)


def from_micros(value: int | None) -> datetime | None:
    if value is None:
        return None
    return datetime.fromtimestamp(value / 1_000_000, UTC)


def now_micros() -> int:
    return to_micros(datetime.now(UTC))
