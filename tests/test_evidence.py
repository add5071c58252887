"""The per-kind evidence rules without media or a server, on small synthetic
signal lists: video shares, runs and their minimum length, where a known image
appears in a video (hashsvc/matching/video_evidence.py), and PDF page pairs and
document evidence (hashsvc/matching/pdf_evidence.py)."""

from __future__ import annotations

import pytest

from hashsvc.base.signals import Signal
from hashsvc.matching import pdf_evidence as pdf_match
from hashsvc.matching import video_evidence as video_match
from hashsvc.matching.video_evidence import DEFAULT_SETTINGS, FramePair

# ------------------------------------------------------------------ video


def _frame(t: float, quality: int = 100, view: str = "") -> Signal:
    """A frame signal at t seconds, sampled at 1 fps (frame number = t)."""
    variant = f"frame:{int(t)}" + (f":{view}" if view else "")
    return Signal("pdq", b"f", quality, variant, float(t))


def _frames(times) -> list[Signal]:
    return [_frame(t) for t in times]


def _pairs(points, distance: int = 10) -> list[FramePair]:
    """(query seconds, known seconds) -> frame pairs at `distance` bits."""
    return [FramePair(_frame(q), _frame(k), distance) for q, k in points]


def _pair(q: float, k: float, distance: int = 10) -> FramePair:
    return FramePair(
        Signal("pdq", b"q", 100, f"frame:{int(q * 30)}", q),
        Signal("pdq", b"k", 100, f"frame:{int(k * 30)}", k),
        distance,
    )


def test_frame_of_reads_the_frame_number_of_any_view():
    assert video_match.frame_of(Signal("pdq", b"", 90, "frame:120:flip")) == 120
    assert video_match.frame_of(Signal("pdq", b"", 90, "frame:7")) == 7
    assert video_match.frame_of(Signal("pdq", b"", 90, "original")) == -1


def test_a_whole_copy_matches_by_its_shares():
    pairs = _pairs((t, t) for t in range(20))
    ev = video_match.video_evidence(_frames(range(20)), pairs, 20, 20.0)
    assert ev.is_match
    assert (ev.query_share, ev.known_share) == (1.0, 1.0)
    assert ev.reason == "100% of the query's frames and 100% of the known's"
    assert ev.best_distance == 10


def test_both_shares_must_reach_half():
    # frames 4 s apart: no run bridges them, only the shares can match
    query = _frames(range(0, 40, 4))  # 10 frames
    half = _pairs((t, t) for t in (0, 8, 16, 24, 32))
    ev = video_match.video_evidence(query, half, known_frames=10, known_duration=10.0)
    assert (ev.query_share, ev.known_share) == (0.5, 0.5) and ev.is_match

    fewer = half[:4]
    ev = video_match.video_evidence(query, fewer, known_frames=10, known_duration=10.0)
    assert ev.query_share == 0.4 and not ev.is_match
    assert ev.reason == "shares 40%/40% and longest run 0 s below thresholds"

    # all of the query, but a tenth of a long known video: not a whole copy
    ev = video_match.video_evidence(query, half, known_frames=50, known_duration=50.0)
    assert ev.known_share == 0.1 and not ev.is_match


def test_an_excerpt_matches_by_a_run_of_the_minimum_length():
    assert DEFAULT_SETTINGS.min_run_seconds == 5.0 and DEFAULT_SETTINGS.min_run_frames == 4
    query = _frames(range(60))  # a minute of upload, 5-6 s of it known
    six = _pairs((t, t + 100) for t in range(20, 26))  # 20..25: 5 s, 6 frames
    ev = video_match.video_evidence(query, six, known_frames=600, known_duration=600.0)
    assert ev.query_share == 0.1 and ev.is_match
    [run] = ev.runs
    assert (run.query_start, run.query_end, run.known_start, run.known_end) == (20, 25, 120, 125)
    assert run.frames == 6 and run.seconds == 5
    assert ev.reason == "5 s of the query (20-25 s) shows the known video's 120-125 s"

    five = six[:5]  # 20..24: 4 s
    ev = video_match.video_evidence(query, five, known_frames=600, known_duration=600.0)
    assert not ev.is_match and ev.runs[0].seconds == 4


def test_a_long_run_of_too_few_frames_is_no_match():
    # 0, 2.5, 5: gaps within max_gap_seconds, so one 5 s run, but of 3 frames
    pairs = [
        FramePair(
            Signal("pdq", b"q", 100, f"frame:{i}", t), Signal("pdq", b"k", 100, f"frame:{i}", t), 5
        )
        for i, t in enumerate((0.0, 2.5, 5.0))
    ]
    ev = video_match.video_evidence(_frames(range(60)), pairs, 600, 600.0)
    [run] = ev.runs
    assert run.seconds == 5 and run.frames == 3
    assert not ev.is_match


def test_a_gap_longer_than_allowed_splits_a_run():
    pairs = _pairs((t, t) for t in (*range(0, 4), *range(8, 12)))  # 4 s missing
    runs = video_match.find_runs(pairs)
    assert [(r.query_start, r.query_end) for r in runs] == [(0, 3), (8, 11)]


def test_a_compilation_yields_a_run_per_known_segment_longest_first():
    # query 0..9 shows known 100..109, query 30..36 shows known 0..6
    pairs = _pairs([*((t, t + 100) for t in range(10)), *((t, t - 30) for t in range(30, 37))])
    runs = video_match.find_runs(pairs)
    assert [(r.query_start, r.query_end, r.known_start, r.known_end) for r in runs] == [
        (0, 9, 100, 109),
        (30, 36, 0, 6),
    ]


def test_a_still_scene_matching_many_known_frames_keeps_one_run():
    # query 10..19 shows known 50..59; its first seconds are a still scene
    # that also matches each of the known's three still seconds 50..52
    still = ((q, k) for q in range(10, 13) for k in (50, 51, 52))
    pairs = _pairs([*((q, q + 40) for q in range(10, 20)), *still])
    [run] = video_match.find_runs(pairs)
    assert (run.query_start, run.query_end, run.known_start, run.known_end) == (10, 19, 50, 59)
    assert run.frames == 10


def test_far_and_flat_pairs_are_no_evidence():
    far = [FramePair(_frame(t), _frame(t), DEFAULT_SETTINGS.frame_distance + 1) for t in range(20)]
    ev = video_match.video_evidence(_frames(range(20)), far, 20, 20.0)
    assert not ev.is_match and ev.runs == [] and ev.best_distance is None
    flat_known = [FramePair(_frame(t), _frame(t, quality=49), 0) for t in range(20)]
    assert not video_match.video_evidence(_frames(range(20)), flat_known, 20, 20.0).is_match


def test_known_frames_unknown_are_estimated_from_the_duration():
    pairs = _pairs((t, t) for t in range(0, 40, 4))  # 10 matched frames, no run
    ev = video_match.video_evidence(_frames(range(0, 40, 4)), pairs, 0, 20.0)
    assert ev.known_share == 0.5 and ev.is_match
    ev = video_match.video_evidence(_frames(range(0, 40, 4)), pairs, 0, 40.0)
    assert ev.known_share == 0.25 and not ev.is_match


def test_a_known_image_appears_at_time_ranges_in_a_video():
    hits = [(_frame(t), d) for t, d in ((1, 12), (2, 3), (4, 8), (20, 30), (21, 2))]
    hits.append((Signal("pdq", b"", 90, "original"), 0))  # no position: not a time
    ranges = video_match.image_appearances(hits)
    assert [r.to_json() for r in ranges] == [
        {"start": 1.0, "end": 4.0, "frames": 3, "best_distance": 3},
        {"start": 20.0, "end": 21.0, "frames": 2, "best_distance": 2},
    ]


# Moved from tests/test_video.py (runs from synthetic pairs)


def test_run_bridges_small_gaps_and_keeps_one_offset():
    pairs = [_pair(t, t + 40) for t in (10, 11, 12, 14, 15, 16, 17)]  # 13 s missing
    pairs += [_pair(30, 2), _pair(31, 90)]  # stray hits elsewhere
    runs = video_match.find_runs(pairs)
    assert (runs[0].query_start, runs[0].query_end) == (10, 17)
    assert (runs[0].known_start, runs[0].known_end) == (50, 57)
    ev = video_match.video_evidence([p.query for p in pairs] * 10, pairs, 120, 120.0)
    assert ev.is_match and "shows the known video's 50-57 s" in ev.reason


def test_scattered_hits_and_far_pairs_are_no_match():
    pairs = [_pair(t, (t * 7) % 50) for t in range(0, 60, 5)]  # no consistent offset
    pairs += [_pair(t, t, distance=40) for t in range(60, 80)]  # too far apart
    ev = video_match.video_evidence([p.query for p in pairs], pairs, 100, 100.0)
    assert not ev.is_match


def test_flat_frames_are_no_evidence():
    flat = [
        FramePair(
            Signal("pdq", b"q", 10, f"frame:{t}", float(t)),
            Signal("pdq", b"k", 100, f"frame:{t}", float(t)),
            0,
        )
        for t in range(30)
    ]
    ev = video_match.video_evidence([p.query for p in flat], flat, 30, 30.0)
    assert not ev.is_match


def test_a_frame_counts_by_its_picture_not_its_bars():
    frames = [
        Signal("pdq", b"a", 90, "frame:0", 0.0),  # bars make edges: high quality
        Signal("pdq", b"b", 20, "frame:0:trimmed", 0.0),  # the flat picture inside
        Signal("pdq", b"c", 80, "frame:25", 1.0),
        Signal("pdq", b"d", 10, "frame:25:center", 1.0),
    ]
    assert video_match.countable_frames(frames) == 1


# ------------------------------------------------------------------ PDF


def _page(kind: str, page: int, quality: int | None = 90, view: str = "original") -> Signal:
    prefix = "page" if kind != "text_simhash" else ""
    variant = f"{prefix}:{view}" if prefix else "page"
    return Signal(kind, b"p", quality, variant, float(page))


def _image(page: int, kind: str = "pdq", value: bytes = b"i", quality: int | None = 90) -> Signal:
    return Signal(kind, value, quality, "image:original" if kind == "pdq" else "image:exact", page)


def _document(kind: str, value: bytes = b"d") -> Signal:
    return Signal(kind, value, None, "document")


@pytest.mark.parametrize(
    ("query", "known", "distance", "want"),
    [
        (_page("pdq", 1), _page("pdq", 1), pdf_match.PAGE_PDQ_MAX, pdf_match.PAGE_IMAGE),
        (_page("pdq", 1), _page("pdq", 1), pdf_match.PAGE_PDQ_MAX + 1, None),
        (_page("pdq", 1, quality=49), _page("pdq", 1), 0, None),  # a near-blank page
        (_page("pdq", 1), _page("pdq", 1, quality=None), 0, None),
        (_page("pdq", 1), _image(1), pdf_match.IMAGE_PDQ_MAX, pdf_match.EMBEDDED_IMAGE),
        (_image(1), _image(1), pdf_match.IMAGE_PDQ_MAX + 1, None),
        (_image(1, "sha256"), _image(1, "sha256"), 0, pdf_match.EMBEDDED_IMAGE),
        (_image(1, "sha256", b"x"), _image(1, "sha256", b"y"), 0, None),
        (_page("text_simhash", 1), _page("text_simhash", 2), 64, pdf_match.PAGE_TEXT),
        (_page("text_simhash", 1), _page("text_simhash", 2), 65, None),
        (_page("text_simhash", 1), _document("text_simhash"), 0, None),  # page vs document
        (_document("text_simhash"), _document("text_simhash"), 64, pdf_match.DOCUMENT_TEXT_NEAR),
        (_document("text_simhash"), _document("text_simhash"), 65, None),
        (_document("text_sha256"), _document("text_sha256"), 0, pdf_match.DOCUMENT_TEXT_EXACT),
        (_document("text_sha256", b"x"), _document("text_sha256", b"y"), 0, None),
        (_page("pdq", 1), _page("text_simhash", 1), 0, None),  # different kinds
    ],
)
def test_each_pair_is_one_kind_of_evidence_or_none(query, known, distance, want):
    assert pdf_match.classify(query, known, distance) == want


def test_nothing_close_is_no_match():
    assert pdf_match.match_pdf([]) is pdf_match.NO_MATCH
    far = [(_page("pdq", 1), _page("pdq", 1), 90)]
    evidence = pdf_match.match_pdf(far)
    assert not evidence.matched and evidence.best is None and evidence.best_distance is None


def test_page_pairs_keep_the_strongest_evidence_per_query_page():
    pairs = [
        # query page 2 shows known page 5: its picture (20 bits) and its text (3 bits)
        (_page("text_simhash", 2), _page("text_simhash", 5), 3),
        (_page("pdq", 2), _page("pdq", 5), 20),
        (_page("pdq", 2), _page("pdq", 6), 30),  # a weaker page image for the same page
        # query page 1 only shares an embedded picture of known page 1
        (_image(1), _image(1), 7),
    ]
    evidence = pdf_match.match_pdf(pairs)
    assert evidence.pages == (
        pdf_match.PageMatch(1, 1, pdf_match.EMBEDDED_IMAGE, 7),
        pdf_match.PageMatch(2, 5, pdf_match.PAGE_IMAGE, 20),
    )
    assert evidence.document == ()
    # a page image beats a nearer page text: strength before distance
    assert evidence.best == pdf_match.PageMatch(2, 5, pdf_match.PAGE_IMAGE, 20)
    assert evidence.matched_by == (pdf_match.PAGE_IMAGE, pdf_match.EMBEDDED_IMAGE)


def test_document_evidence_ranks_above_pages():
    pairs = [
        (_page("pdq", 1), _page("pdq", 1), 2),
        (_document("text_simhash"), _document("text_simhash"), 30),
        (_document("text_simhash"), _document("text_simhash"), 12),  # the nearest one kept
        (_document("text_sha256"), _document("text_sha256"), 0),
    ]
    evidence = pdf_match.match_pdf(pairs)
    assert evidence.document == (
        pdf_match.PageMatch(None, None, pdf_match.DOCUMENT_TEXT_EXACT, 0),
        pdf_match.PageMatch(None, None, pdf_match.DOCUMENT_TEXT_NEAR, 12),
    )
    assert evidence.best.signal == pdf_match.DOCUMENT_TEXT_EXACT
    assert evidence.matched_by == (
        pdf_match.DOCUMENT_TEXT_EXACT,
        pdf_match.PAGE_IMAGE,
        pdf_match.DOCUMENT_TEXT_NEAR,
    )
