"""AudioIndex: each transform family found at the right offsets, unrelated audio
(other speech in the same language over the same background) not found."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from hashsvc.index import audio as audio_index
from hashsvc.index.audio import (
    DEFAULT_MAX_BER,
    AudioAlignment,
    AudioIndex,
    _align_at_rate,
    _lines_with_a_good_window,
)
from hashsvc.media.audio import SECONDS_PER_WORD, SILENCE_WORD, AudioLimits, fingerprint_audio
from hashsvc.media.audio_words import informative_mask
from hashsvc_testing import audio_media as am

LIMITS = AudioLimits()
KNOWN_SECONDS = 30
TRACK_SEEDS = {101: 1, 102: 2, 103: 3}  # track id -> seed of its generated speech
SLACK = 1.0  # seconds of tolerance on reported offsets (one word is 0.124 s)


def fingerprint(data: bytes) -> np.ndarray:
    return fingerprint_audio(data, LIMITS).words


def filler(seed: int, n_words: int) -> np.ndarray:
    """Chromaprint-like words: each a few bits away from the previous one."""
    rng = np.random.default_rng(seed)
    flips = (1 << rng.integers(0, 32, (n_words, 3)).astype(np.uint64)).sum(axis=1)
    words = np.bitwise_xor.accumulate(flips.astype(np.uint32)) ^ np.uint32(rng.integers(0, 2**32))
    return words.astype(np.uint32)


@pytest.fixture(scope="module")
def known():
    pcm = {tid: am.speech_track(seed, KNOWN_SECONDS, "ar") for tid, seed in TRACK_SEEDS.items()}
    index = AudioIndex()
    for tid in pcm:
        index.add(tid, fingerprint(am.master(pcm[tid])))
    for n in range(200):
        index.add(10_000 + n, filler(n, 1500))
    return pcm, index


@pytest.mark.parametrize("transform", am.TRANSFORMS, ids=lambda t: t.name)
def test_transform_found_with_offsets(known, transform):
    pcm, index = known
    track = pcm[102]
    query = fingerprint(transform.make(track, 5))
    found = index.search(query)
    assert found, f"{transform.name}: no match"
    best = found[0]
    assert best.track_id == 102 and best.ber <= DEFAULT_MAX_BER
    assert best.known_start == pytest.approx(transform.known_start(track, 5), abs=SLACK)
    assert best.query_start == pytest.approx(transform.query_start(track, 5), abs=SLACK)
    query_seconds = len(query) * SECONDS_PER_WORD
    if transform.name == "excerpt":
        assert best.duration >= query_seconds - SLACK
    else:  # the whole known track was in the query; Chromaprint's words span ~2.6 s less
        assert best.duration >= KNOWN_SECONDS - 2.6 - SLACK
    assert all(a.track_id == 102 for a in found)


def test_track_between_other_audio_reports_both_ranges(known):
    pcm, index = known
    before, after = am.speech_track(500, 12, "en"), am.speech_track(501, 9, "fr")
    query = fingerprint(am.encode(np.concatenate([before, pcm[101], after]), "mp3"))
    [found] = index.search(query)
    assert found.track_id == 101
    assert found.query_start == pytest.approx(12, abs=SLACK)
    assert found.known_start == pytest.approx(0, abs=SLACK)
    assert found.query_start + found.duration <= 12 + KNOWN_SECONDS + SLACK


def test_two_known_tracks_in_one_upload(known):
    pcm, index = known
    query = fingerprint(am.encode(np.concatenate([pcm[101], pcm[103]]), "mp3"))
    found = {a.track_id: a for a in index.search(query)}
    assert set(found) == {101, 103}
    assert found[101].query_start == pytest.approx(0, abs=SLACK)
    assert found[103].query_start == pytest.approx(KNOWN_SECONDS, abs=SLACK)


@pytest.mark.parametrize("seed", [7, 8])
def test_unrelated_audio_not_found(known, seed):
    _, index = known
    for name, data in am.unrelated(seed, 20, background_seed=TRACK_SEEDS[102]):
        assert index.search(fingerprint(data)) == [], name


def test_other_speech_same_voice_same_bed_not_found(known):
    """The hardest negative: the very voice and background bed of a known track."""
    _, index = known
    for seed in (21, 22):
        other = am.speech_track(seed, 20, "ar", voice=am.VOICES["ar"][2], background_seed=2)
        assert index.search(fingerprint(am.encode(other, "mp3"))) == []


def test_silence_never_matches():
    index = AudioIndex()
    rng = np.random.default_rng(0)
    padded = np.concatenate(
        [np.full(200, SILENCE_WORD, np.uint32), filler(1, 300), np.full(200, 12345, np.uint32)]
    )
    index.add(1, padded)
    assert index.search(np.full(400, SILENCE_WORD, np.uint32), min_seconds=0) == []
    assert index.search(np.full(400, 12345, np.uint32), min_seconds=0) == []
    assert index.search(rng.integers(0, 2**32, 400, dtype=np.uint32)) == []
    assert index.search(padded)[0].track_id == 1


def test_add_is_idempotent_remove_forgets():
    index = AudioIndex()
    words = filler(3, 400)
    index.add(1, words)
    index.add(1, words.copy())
    assert len(index) == 1
    assert [a.track_id for a in index.search(words)] == [1]
    index.add(1, filler(4, 400))  # replaced: the old words no longer match
    assert index.search(words) == [] and len(index) == 1
    assert index.remove(1) and not index.remove(1)
    assert len(index) == 0 and index.search(filler(4, 400)) == []


def test_search_limits_are_the_callers():
    index = AudioIndex()
    words = filler(5, 400)
    index.add(1, words)
    excerpt = words[100:150]  # 6.2 s
    assert index.search(excerpt, min_seconds=5)[0] == AudioAlignment(
        1, 0.0, round(100 * SECONDS_PER_WORD, 3), round(50 * SECONDS_PER_WORD, 3), 0.0, 50
    )
    assert index.search(excerpt, min_seconds=8) == []
    noisy = excerpt ^ np.uint32(0x0000000F)  # 4 of 32 bits: BER 0.125
    assert index.search(noisy, max_ber=0.1) == []
    assert index.search(noisy, max_ber=0.15)[0].ber == pytest.approx(0.125)


def test_snapshot_round_trip(known, tmp_path):
    pcm, index = known
    path = str(tmp_path / "audio.npz")
    index.save(path)
    loaded = AudioIndex.load(path)
    assert len(loaded) == len(index)
    query = fingerprint(am.encode(pcm[103], "ogg"))
    assert loaded.search(query) == index.search(query)


def test_concurrent_searches_while_tracks_come_and_go():
    index = AudioIndex()
    stable = {tid: filler(tid, 300) for tid in range(1, 6)}
    for tid, words in stable.items():
        index.add(tid, words)
    errors: list[BaseException] = []
    stop = threading.Event()

    def searcher():
        try:
            while not stop.is_set():
                for tid, words in stable.items():
                    assert [a.track_id for a in index.search(words[50:150])] == [tid]
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=searcher) for _ in range(4)]
    for t in threads:
        t.start()
    for n in range(150):
        index.add(1000 + n, filler(1000 + n, 300))
        if n % 3 == 0:
            index.remove(1000 + n)
    stop.set()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    assert len(index) == 5 + 150 - 50


def test_shifted_search_finds_a_line_of_another_slope():
    """A query running 12% faster than a known track (every 1.12th word of it):
    the plain search votes on offsets alone and misses it; the shifted search
    finds it at its rate, with the known range longer by that rate."""
    index = AudioIndex()
    known_words = filler(7, 1500)
    index.add(1, known_words)
    for n in range(50):
        index.add(100 + n, filler(1000 + n, 1500))
    at = np.rint(300 + np.arange(160) * 1.12).astype(int)
    query = known_words[at]
    assert index.search(query) == []
    (found,) = index.search_shifted(query)
    assert found.track_id == 1 and found.rate == pytest.approx(1.12)
    assert found.ber == 0.0
    assert abs(found.known_start - 300 * SECONDS_PER_WORD) <= SLACK
    assert found.known_duration == pytest.approx(found.duration * 1.12, abs=0.01)


def test_screening_never_drops_a_line_the_alignment_finds():
    """The shifted search screens a view's candidate lines together before
    aligning them one by one: a line the alignment finds something on is
    never screened out (a real partial match, with a constant run and silence
    in the known track and lines running off either end), and lines through
    unrelated words are."""
    rng = np.random.default_rng(5)
    known = filler(11, 1500)
    known[400:410] = known[400]  # a held tone: not informative
    known[500:520] = SILENCE_WORD
    at = np.rint(380 + np.arange(200) * 1.07).astype(int)
    query = known[at].copy()
    query[:60] = filler(12, 60)  # the first 60 words are something else
    noisy = rng.random((len(query), 32)) < 0.08  # ~8% of bits flipped
    query ^= (noisy * (1 << np.arange(32, dtype=np.uint32))).sum(axis=1).astype(np.uint32)
    informative = informative_mask(query)
    lines = [
        (known, offset, rate)
        for offset in (380, 381, 379, -150, 1400, 0, 900)
        for rate in (1.07, 1.06, 0.95, 1.0)
    ] + [(filler(13 + n, 1500), 380, 1.07) for n in range(5)]
    for max_ber in (0.15, 0.25, 0.35):
        screened = _lines_with_a_good_window(query, informative, lines, max_ber)
        found = [
            _align_at_rate(query, informative, words, offset, rate, max_ber) is not None
            for words, offset, rate in lines
        ]
        assert not any(f and not s for f, s in zip(found, screened, strict=True)), max_ber
        assert found[0] and screened[0]
        assert not screened[-5:].any()


def test_align_line_scores_a_given_line_only():
    """align_line aligns a query along the line it is given (how the matcher
    tries a line one shifted view found on the other views of its stretch):
    the right line is found at its rate with the known range where it is, a
    line one word off that track's or another track is not."""
    index = AudioIndex()
    known_words = filler(8, 1500)
    index.add(1, known_words)
    index.add(2, filler(9, 1500))
    at = np.rint(200 + np.arange(160) * 0.9).astype(int)
    query = known_words[at]
    found = index.align_line(1, query, offset=200.0, rate=0.9)
    assert found is not None and found.ber == 0.0 and found.rate == pytest.approx(0.9)
    assert found.duration == pytest.approx(160 * SECONDS_PER_WORD, abs=0.01)
    assert abs(found.known_start - 200 * SECONDS_PER_WORD) <= 0.01
    assert index.align_line(1, query, offset=210.0, rate=0.9) is None
    assert index.align_line(2, query, offset=200.0, rate=0.9) is None
    assert index.align_line(3, query, offset=200.0, rate=0.9) is None  # no such track


def _noisy(words: np.ndarray, rng: np.random.Generator, share: float) -> np.ndarray:
    flips = rng.random((len(words), 32)) < share
    return words ^ (flips * (1 << np.arange(32, dtype=np.uint32))).sum(axis=1).astype(np.uint32)


def test_views_searched_together_find_what_each_finds_alone(monkeypatch):
    """search_shifted_views (one pass over the views of an upload) gives
    every view the alignments it gets searched alone: a view's best
    candidate lines are its own even when another view in the pass has more
    votes, or more lines than a view may align (fragments of 20 tracks), and
    tracks in two segments are both found."""
    rng = np.random.default_rng(3)
    index = AudioIndex()
    tracks = {n: filler(300 + n, 1500) for n in range(1, 41)}
    index.add_many(list(tracks.items())[:30])
    index.add_many(list(tracks.items())[30:])
    assert len(index._segments) == 2
    views = []
    for track, offset, rate, length in (
        (1, 200, 1.12, 160),
        (35, 40, 0.88, 120),
        (2, 700, 1.0, 90),
    ):
        at = np.rint(offset + np.arange(length) * rate).astype(int)
        views.append(_noisy(tracks[track][at], rng, 0.06))
    # 6 s of each of 12 tracks at rate 1.05: more lines than a view may align
    views.append(
        np.concatenate(
            [tracks[n][np.rint(500 + np.arange(48) * 1.05).astype(int)] for n in range(5, 17)]
        )
    )
    views.append(filler(999, 150))  # unrelated
    views.append(np.zeros(0, np.uint32))  # empty: nothing
    together = index.search_shifted_views(views, max_ber=0.25)
    alone = [index.search_shifted(view, max_ber=0.25) for view in views]
    assert together == alone
    assert together[0][0].track_id == 1 and together[0][0].rate == pytest.approx(1.12)
    assert together[1][0].track_id == 35 and together[1][0].rate == pytest.approx(0.88)
    assert together[2][0].track_id == 2
    assert len(together[3]) >= 4  # (neighbouring rates of one track take some of the 8)
    assert together[4] == [] and together[5] == []
    # many views (a big configuration, a retro-hunt's record) go in bounded passes
    monkeypatch.setattr(audio_index, "SHIFT_VIEWS_PER_PASS", 4)
    monkeypatch.setattr(audio_index, "SCREEN_LINES_PER_PASS", 5)
    assert index.search_shifted_views(views, max_ber=0.25) == together


def test_lines_aligned_together_are_aligned_as_one_by_one(monkeypatch):
    """align_lines (the matcher's re-alignment of proposed lines in every
    view, screened in one pass) answers what align_line answers per line:
    the right line, a line a word off, another track, an unknown track."""
    rng = np.random.default_rng(4)
    index = AudioIndex()
    known = {1: filler(8, 1500), 2: filler(9, 1500)}
    index.add_many(known.items())
    views = [
        _noisy(known[1][np.rint(200 + np.arange(n) * rate).astype(int)], rng, 0.05)
        for n, rate in ((160, 0.9), (100, 1.1), (40, 1.0))
    ]
    lines = [
        (view, track, offset, rate)
        for view in range(3)
        for track in (1, 2, 3)
        for offset in (200.0, 201.0, 210.0)
        for rate in (0.9, 1.1, 1.0)
    ]
    together = index.align_lines(views, lines, max_ber=0.2)
    monkeypatch.setattr(audio_index, "SCREEN_LINES_PER_PASS", 7)
    assert index.align_lines(views, lines, max_ber=0.2) == together
    alone = [
        index.align_line(track, views[view], offset, rate, max_ber=0.2)
        for view, track, offset, rate in lines
    ]
    assert together == alone
    assert sum(a is not None for a in together) >= 3
