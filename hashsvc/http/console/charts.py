"""Charts as plain SVG shapes computed on the server (the template draws
them; no script, no chart library): decisions per hour as stacked bars, and
a video's, audio's or PDF's matched stretches as bars on two tracks."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

DECISION_ORDER = ("block", "review", "allow")
_HOUR = 3600


@dataclass(frozen=True)
class Bar:
    x: float  # percent of the chart's width
    width: float
    y: float  # percent of the chart's height, from the top
    height: float
    kind: str  # the CSS class: a decision, or "upload" / "known"
    title: str


@dataclass(frozen=True)
class Chart:
    bars: list[Bar]
    peak: int
    first_label: str
    last_label: str
    totals: dict[str, int]
    per: str = "h"  # what one bar counts: "h", or "6 h" for the week chart


def decisions_chart(
    counts: dict[tuple[int, str], int], now: datetime, hours: int, bucket_hours: int = 1
) -> Chart:
    """One stacked bar per `bucket_hours` over the last `hours` hours, oldest
    left (a week of hourly bars is 168 hairlines: the week chart has one bar
    per 6 hours)."""
    last_hour = int(now.timestamp()) // _HOUR
    buckets = max(1, hours // bucket_hours)
    first_hour = last_hour - buckets * bucket_hours + 1
    per_bucket = [
        [
            sum(counts.get((first_hour + b * bucket_hours + h, d), 0) for h in range(bucket_hours))
            for d in DECISION_ORDER
        ]
        for b in range(buckets)
    ]
    peak = max((sum(c) for c in per_bucket), default=0)
    width = 100.0 / buckets
    span = f"{bucket_hours} h" if bucket_hours > 1 else ""
    bars = []
    for k, bucket_counts in enumerate(per_bucket):
        top = 100.0
        start = datetime.fromtimestamp((first_hour + k * bucket_hours) * _HOUR, UTC)
        when = f"{start:%Y-%m-%d %H}:00 UTC" + (f" (+{span})" if span else "")
        for decision, n in zip(DECISION_ORDER, bucket_counts, strict=True):
            if not n:
                continue
            height = 100.0 * n / peak
            top -= height
            bars.append(
                Bar(k * width, width * 0.9, top, height, decision, f"{when}: {n} {decision}")
            )
    totals = {d: sum(c[i] for c in per_bucket) for i, d in enumerate(DECISION_ORDER)}
    first = datetime.fromtimestamp(first_hour * _HOUR, UTC)
    per = f"{bucket_hours} h" if bucket_hours > 1 else "h"
    return Chart(bars, peak, f"{first:%m-%d %H}:00", f"{now:%m-%d %H:%M}", totals, per)


def timeline(match: dict) -> Chart | None:
    """The matched stretches of a video, audio or PDF match: the upload's on
    the top track, the known media's below, on one scale (seconds or pages)."""
    segments = match.get("segments") or []
    if not segments:
        return None
    end = max(max(s["query_end"], s["known_end"]) for s in segments) or 1.0
    unit = match.get("unit", "")
    bars = []
    for s in segments:
        for kind, start, stop, y in (
            ("upload", s["query_start"], s["query_end"], 5.0),
            ("known", s["known_start"], s["known_end"], 55.0),
        ):
            # a PDF page pair is one page wide; a point in time gets a sliver
            span = max(stop - start, end / 200)
            bars.append(
                Bar(
                    100.0 * start / end,
                    100.0 * span / end,
                    y,
                    40.0,
                    kind,
                    f"{kind} {_at(start, unit)} to {_at(stop, unit)}",
                )
            )
    return Chart(bars, 0, _at(0, unit), _at(end, unit), {})


def page_pairs(match: dict) -> list[tuple[int, int]]:
    """A PDF match's (upload page, known page) pairs (pages count from 1)."""
    if match.get("unit") != "pages":
        return []
    return [(int(s["query_start"]), int(s["known_start"])) for s in match.get("segments", [])]


def _at(value: float, unit: str) -> str:
    if unit == "pages":
        return f"page {int(value)}"
    return f"{int(value) // 60}:{value % 60:04.1f}"
