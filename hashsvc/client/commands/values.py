"""Values given on the command line (times, durations, labels, hashes) read
into what the API takes, and API times written back as text."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from google.protobuf.timestamp_pb2 import Timestamp

from hashsvc.client.commands.common import UsageError
from hashsvc.v1 import hashsvc_pb2 as pb

_AGE = re.compile(r"(\d+)([smhdw])")
_AGE_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_time(text: str) -> datetime:
    """ISO 8601 (naive means UTC) or an age like 30m / 12h / 7d before now."""
    age = _AGE.fullmatch(text.strip())
    if age:
        return datetime.now(UTC) - timedelta(**{_AGE_UNITS[age[2]]: int(age[1])})
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise UsageError(f"cannot read time {text!r}: use ISO 8601 or an age like 12h") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def parse_seconds(text: str | None) -> int:
    """A duration like 90d, 12h, 30m or 3600s in seconds; none is 0."""
    if not text:
        return 0
    age = _AGE.fullmatch(text.strip())
    if not age:
        raise UsageError(f"cannot read duration {text!r}: use e.g. 90d, 12h, 30m, 3600s")
    return int(timedelta(**{_AGE_UNITS[age[2]]: int(age[1])}).total_seconds())


def timestamp(value: datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(value.astimezone(UTC).replace(tzinfo=None))
    return ts


def iso(ts: Timestamp) -> str:
    return ts.ToDatetime(tzinfo=UTC).isoformat().replace("+00:00", "Z")


def parse_labels(pairs: list[str]) -> dict[str, str]:
    """--label K=V flags as a dict."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"label {pair!r} must be key=value")
        out[key.strip()] = value.strip()
    return out


def parse_hash_arg(text: str) -> pb.SignalValue:
    """--hash TYPE:HEX as a signal (the server checks the type and value)."""
    kind, sep, value = text.partition(":")
    if not sep:
        raise UsageError(f"--hash {text!r} must be TYPE:HEX, e.g. pdq:<64 hex digits>")
    return pb.SignalValue(signal_type=kind.strip().lower(), value=value.strip())
