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


def decisions_chart(counts: dict[tuple[int, str], int], now: datetime, hours: int) -> Chart:
    """One stacked bar per hour over the last `hours` hours, oldest left."""
    last_hour = int(now.timestamp()) // _HOUR
    first_hour = last_hour - hours + 1
    per_hour = [
        [counts.get((hour, d), 0) for d in DECISION_ORDER]
        for hour in range(first_hour, last_hour + 1)
    ]
    peak = max((sum(h) for h in per_hour), default=0)
    width = 100.0 / hours
    bars = []
    for k, hour_counts in enumerate(per_hour):
        top = 100.0
        hour_start = datetime.fromtimestamp((first_hour + k) * _HOUR, UTC)
        for decision, n in zip(DECISION_ORDER, hour_counts, strict=True):
            if not n:
                continue
            height = 100.0 * n / peak
            top -= height
            bars.append(
                Bar(
                    k * width,
                    width * 0.9,
                    top,
                    height,
                    decision,
                    f"{hour_start:%Y-%m-%d %H}:00 UTC: {n} {decision}",
                )
            )
    totals = {d: sum(h[i] for h in per_hour) for i, d in enumerate(DECISION_ORDER)}
    first = datetime.fromtimestamp(first_hour * _HOUR, UTC)
    return Chart(bars, peak, f"{first:%m-%d %H}:00", f"{now:%m-%d %H:%M}", totals)


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
