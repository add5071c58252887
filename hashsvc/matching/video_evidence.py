"""Video-level decisions from frame-level PDQ hits (pure functions, no I/O).

The matcher finds, for each query frame signal, the known frame signals within
its search radius. For one known video entry those pairs become evidence:

* shares, as vPDQ reports them: the share of the query's (good-quality)
  frames that match some known frame, and of the known video's frames that
  some query frame matches. A re-encode, resize or mirror has both high.
* runs: stretches where consecutive query frames match known frames at one
  consistent time offset (small gaps allowed). A run is what an excerpt, or a
  known segment inside a longer compilation, leaves: the shares are low there,
  the run is not. Runs give the time ranges reported to the user.

A known video matches when both shares pass their thresholds OR a run lasts at
least MIN_RUN_SECONDS. Known images hit by frames of a video (a propaganda
still shown in a video) are reported as query time ranges (image_appearances).
Constants are tuned by bench/video.py (figures in its docstring).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, replace

from hashsvc.base.media_kinds import frame_number
from hashsvc.base.signals import Signal


def frame_of(signal: Signal) -> int:
    """Frame number from a frame signal's variant ("frame:120:flip" -> 120)."""
    number = frame_number(signal.variant)
    # Not a video frame (an image entry's view): one "frame" per position.
    return -1 if number is None else number


@dataclass(frozen=True)
class MatchSettings:
    # Frame pairs farther apart than this are not evidence. PDQ's usual 31:
    # bench/video.py saw no unrelated frame pair (quality >= 50) closer than
    # ~70 bits, and re-encoded/mirrored/letterboxed frames mostly under 20.
    frame_distance: int = 31
    # Flat frames (black, fades, title cards) match anything: vPDQ's own floor.
    min_quality: int = 50
    # vPDQ-style share thresholds (a whole copy of the video).
    min_query_share: float = 0.5
    min_known_share: float = 0.5
    # An excerpt or a segment of a compilation: this long a consistent run.
    min_run_seconds: float = 5.0
    min_run_frames: int = 4
    # Within a run: gaps of unmatched query time and drift of the offset
    # (sampling at 1 fps, frame-rate changes) that are tolerated.
    max_gap_seconds: float = 3.0
    offset_tolerance: float = 1.5
    # Local features: distinct query frames that must verify against one
    # known video (each alone would be a picture match: two agree on more).
    min_local_frames: int = 2


DEFAULT_SETTINGS = MatchSettings()


@dataclass(frozen=True)
class FramePair:
    query: Signal  # a query frame signal (position = seconds)
    known: Signal  # a known frame signal (position = seconds)
    distance: int


@dataclass(frozen=True)
class Run:
    query_start: float
    query_end: float
    known_start: float
    known_end: float
    frames: int  # distinct query frames in the run

    @property
    def seconds(self) -> float:
        return self.query_end - self.query_start

    def to_json(self) -> dict:
        return {
            "query_start": round(self.query_start, 3),
            "query_end": round(self.query_end, 3),
            "known_start": round(self.known_start, 3),
            "known_end": round(self.known_end, 3),
            "frames": self.frames,
        }


@dataclass(frozen=True)
class VideoEvidence:
    query_share: float
    known_share: float
    runs: list[Run]  # longest first
    is_match: bool
    reason: str  # which rule matched, or why not
    best_distance: int | None

    def to_json(self) -> dict:
        return {
            "query_share": round(self.query_share, 4),
            "known_share": round(self.known_share, 4),
            "runs": [r.to_json() for r in self.runs],
            "is_match": self.is_match,
            "reason": self.reason,
            "best_distance": self.best_distance,
        }


def video_evidence(
    query_frames: Iterable[Signal],
    pairs: Iterable[FramePair],
    known_frames: int,
    known_duration: float,
    settings: MatchSettings = DEFAULT_SETTINGS,
) -> VideoEvidence:
    """Evidence that the query shows one known video.

    query_frames: all the query's frame signals (any views); the share's
    denominator is its distinct frames of quality >= min_quality.
    known_frames: countable_frames(the known entry's frame signals), i.e. its
    frames of quality >= min_quality (flat frames match anything and are left
    out of both shares, as in vPDQ); 0: estimated from known_duration at one
    frame per second.
    """
    if known_frames <= 0:
        known_frames = max(1, round(known_duration))
    query_total = countable_frames(query_frames, settings)
    good = [p for p in pairs if _usable(p, settings)]
    matched_query = {frame_of(p.query) for p in good}
    matched_known = {frame_of(p.known) for p in good}
    query_share = len(matched_query) / query_total if query_total else 0.0
    known_share = min(1.0, len(matched_known) / known_frames) if known_frames > 0 else 0.0
    runs = find_runs(good, settings)
    best = min((p.distance for p in good), default=None)
    long_runs = [
        r
        for r in runs
        if r.seconds >= settings.min_run_seconds and r.frames >= settings.min_run_frames
    ]
    if query_share >= settings.min_query_share and known_share >= settings.min_known_share:
        reason = f"{query_share:.0%} of the query's frames and {known_share:.0%} of the known's"
        is_match = True
    elif long_runs:
        run = long_runs[0]
        reason = (
            f"{run.seconds:.0f} s of the query ({run.query_start:.0f}-{run.query_end:.0f} s)"
            f" shows the known video's {run.known_start:.0f}-{run.known_end:.0f} s"
        )
        is_match = True
    else:
        longest = runs[0].seconds if runs else 0.0
        reason = (
            f"shares {query_share:.0%}/{known_share:.0%} and longest run {longest:.0f} s"
            f" below thresholds"
        )
        is_match = False
    return VideoEvidence(query_share, known_share, runs, is_match, reason, best)


def countable_frames(
    frame_signals: Iterable[Signal], settings: MatchSettings = DEFAULT_SETTINGS
) -> int:
    """Distinct frames whose picture has quality >= min_quality: pass a known
    entry's stored signals as known_frames. A frame's picture is its view
    without bars when it has one (bars add edges, hence quality, that no
    known frame shares), else the frame as decoded."""
    as_decoded: dict[int, int] = {}
    without_bars: dict[int, int] = {}
    for s in frame_signals:
        if s.kind != "pdq":
            continue  # a sampled frame's local features share its variant
        view = s.variant.split(":", 2)[2] if s.variant.count(":") >= 2 else ""
        if view == "":
            as_decoded[frame_of(s)] = s.quality or 0
        elif view == "trimmed":
            without_bars[frame_of(s)] = s.quality or 0
    quality = {**as_decoded, **without_bars}
    return sum(q >= settings.min_quality for q in quality.values())


def _usable(pair: FramePair, settings: MatchSettings) -> bool:
    return (
        pair.distance <= settings.frame_distance
        and (pair.query.quality or 0) >= settings.min_quality
        and (pair.known.quality or 0) >= settings.min_quality
        and pair.query.position is not None
        and pair.known.position is not None
    )


def find_runs(pairs: list[FramePair], settings: MatchSettings = DEFAULT_SETTINGS) -> list[Run]:
    """Stretches of query time matching known time at one offset, longest first.

    Each matched (query time, known time) point votes for its offset; points
    whose offsets lie within offset_tolerance of a run's running offset and
    follow within max_gap_seconds extend it. A still scene lets one query frame
    match many known frames: each offset is tried, and runs that cover the
    same query time as a longer one are dropped.
    """
    points = sorted({(p.query.position, p.known.position) for p in pairs})
    if not points:
        return []
    offsets = sorted({round(k - q) for q, k in points})
    candidates: list[Run] = []
    for offset in offsets:
        near = [(q, k) for q, k in points if abs((k - q) - offset) <= settings.offset_tolerance]
        candidates.extend(_sweep(near, settings))
    candidates.sort(key=lambda r: (-r.seconds, -r.frames, r.query_start))
    kept: list[Run] = []
    for run in candidates:
        if not any(_overlap(run, other) > 0.5 * max(run.seconds, 1.0) for other in kept):
            kept.append(run)
    return kept


def _sweep(points: list[tuple[float, float]], settings: MatchSettings) -> list[Run]:
    runs = []
    # per query time, the known time closest to the running offset
    by_query: dict[float, list[float]] = defaultdict(list)
    for q, k in points:
        by_query[q].append(k)
    current: list[tuple[float, float]] = []
    for q in sorted(by_query):
        if current and q - current[-1][0] > settings.max_gap_seconds:
            runs.append(_run(current))
            current = []
        offset = (current[-1][1] - current[-1][0]) if current else None
        k = (
            min(by_query[q], key=lambda k: abs((k - q) - offset))
            if offset is not None
            else min(by_query[q])
        )
        current.append((q, k))
    if current:
        runs.append(_run(current))
    return runs


def _run(points: list[tuple[float, float]]) -> Run:
    qs = [q for q, _ in points]
    ks = [k for _, k in points]
    return Run(min(qs), max(qs), min(ks), max(ks), len(set(qs)))


def _overlap(a: Run, b: Run) -> float:
    return max(0.0, min(a.query_end, b.query_end) - max(a.query_start, b.query_start))


@dataclass(frozen=True)
class TimeRange:
    start: float
    end: float
    frames: int
    best_distance: int

    def to_json(self) -> dict:
        return {
            "start": round(self.start, 3),
            "end": round(self.end, 3),
            "frames": self.frames,
            "best_distance": self.best_distance,
        }


def image_appearances(
    hits: Iterable[tuple[Signal, int]],
    settings: MatchSettings = DEFAULT_SETTINGS,
) -> list[TimeRange]:
    """Where in the query a known image is shown: (query frame signal,
    distance) hits for one image entry -> time ranges, gaps up to
    max_gap_seconds bridged. The per-hit decision (distance, quality) stays
    the image policy's; this only says when."""
    best_at: dict[float, int] = {}
    for signal, distance in hits:
        if signal.position is None:
            continue
        best_at[signal.position] = min(distance, best_at.get(signal.position, distance))
    ranges: list[TimeRange] = []
    times = sorted(best_at)
    start = 0
    for i in range(1, len(times) + 1):
        if i == len(times) or times[i] - times[i - 1] > settings.max_gap_seconds:
            chunk = times[start:i]
            ranges.append(
                TimeRange(chunk[0], chunk[-1], len(chunk), min(best_at[t] for t in chunk))
            )
            start = i
    return ranges


# -- local features of sampled frames (issue 18): a cropped or tilted copy
# has no PDQ-close frame, but its frames verify geometrically against the
# known video's sampled frames (hashsvc/matching/local_geometry.py).


@dataclass(frozen=True)
class LocalFramePair:
    """A query frame and a known frame whose local features verified at
    review level or better (the set's local_features thresholds)."""

    query: Signal  # position = seconds
    known: Signal
    blocks: bool  # verified at block level


@dataclass(frozen=True)
class LocalFrameEvidence:
    decision: str | None  # "block", "review" or None (no match)
    query_share: float  # of the query's sampled frames with features
    known_share: float
    runs: list[Run]
    reason: str


def local_frame_evidence(
    query_frames: Iterable[Signal],
    pairs: Iterable[LocalFramePair],
    known_times: Iterable[float],
    settings: MatchSettings = DEFAULT_SETTINGS,
) -> LocalFrameEvidence:
    """Evidence that the query shows one known video, from verified frame
    pairs. query_frames: the query's sampled frames' local_features signals;
    known_times: the seconds of the known video's sampled frames that have
    them; the known share is of those that some query frame verified against
    (each query frame is verified against up to two known frames, its best
    voted: a whole copy reaches ~1, a 7 s excerpt of 20 s ~0.4).

    One verified frame is a picture match; a video match needs
    min_local_frames distinct query frames verified (all of them when the
    upload has fewer sampled frames), and blocks only when that many verified
    at block level. Runs say when (query and known seconds)."""
    pairs = [p for p in pairs if p.query.position is not None and p.known.position is not None]
    query_frames = list(query_frames)
    query_total = len({frame_of(s) for s in query_frames})
    matched = {frame_of(p.query) for p in pairs}
    blocking = {frame_of(p.query) for p in pairs if p.blocks}
    matched_known = {p.known.position for p in pairs}
    query_share = len(matched) / query_total if query_total else 0.0
    known_times = set(known_times)
    known_share = len(matched_known & known_times) / len(known_times) if known_times else 0.0
    # a run may skip one sampled frame (a moment without enough keypoints,
    # or one that did not verify): samples are seconds apart
    times = sorted({s.position for s in query_frames if s.position is not None})
    step = sorted(b - a for a, b in zip(times, times[1:], strict=False))
    gap = max(settings.max_gap_seconds, 2 * step[len(step) // 2] + 0.5) if step else 0.0
    runs = find_runs(
        [FramePair(p.query, p.known, 0) for p in pairs],
        replace(settings, max_gap_seconds=max(gap, settings.max_gap_seconds)),
    )
    need = max(1, min(settings.min_local_frames, query_total))
    if len(matched) < need:
        decision = None
    elif len(blocking) >= need:
        decision = "block"
    else:
        decision = "review"
    reason = (
        f"local features: {len(matched)} of {query_total} sampled frames verified"
        f" ({len(blocking)} at block level; {need} needed)"
    )
    return LocalFrameEvidence(decision, query_share, known_share, runs, reason)
