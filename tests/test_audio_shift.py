"""Pitch- and tempo-shifted re-uploads of known audio, through the running
service on both stores and `match --json`: found with their ranges in both
recordings' seconds and the change they went through; other speech in the same
voice over the same bed is not."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hashsvc.client import cli
from hashsvc.index.audio import AudioIndex
from hashsvc.matching.matcher import search_sounds
from hashsvc.media import audio_parts
from hashsvc.media.audio import (
    AudioLimits,
    _resampled,
    _ShiftWindows,
    _Sources,
    fingerprint_audio,
)
from hashsvc.media.audio_words import SAMPLE_RATE
from hashsvc.v1 import hashsvc_pb2 as pb
from hashsvc_testing import audio_media as am

SECONDS = 40.0
VOICE = "ar+m3"
BED = 5


@pytest.fixture(scope="module")
def media():
    known = am.speech_track(5, SECONDS, "ar", voice=VOICE, background_seed=BED)
    excerpt = known[int(12 * am.RATE) : int(27 * am.RATE)]  # 15 s from 12 s
    return {
        "known_pcm": known,
        "known": am.master(known),
        "copy": am.encode(known, "mp3", "-b:a", "64k"),
        "pitch_up_6": am.shifted(known, pitch=1.06),
        "tempo_down_12": am.shifted(known, tempo=0.88),
        "pitch_down_5": am.shifted(excerpt, pitch=0.95),
        "video_sped_up_8": am.as_video_sound_track(
            am.shifted(known, pitch=1.08, tempo=1.08), SECONDS
        ),
        # other speech, same language, voice and bed: the hard negatives
        "same_voice_same_bed": [
            am.encode(am.speech_track(seed, 30.0, "ar", voice=VOICE, background_seed=BED), "mp3")
            for seed in (605, 606)
        ],
    }


@pytest.fixture(scope="module")
def service(make_module_harness, module_store_url, media):
    h = make_module_harness(module_store_url)
    stubs, md = h.stubs("operator")
    stubs.curation.CreateSet(pb.CreateSetRequest(name="nasheeds"), metadata=md)
    stubs.curation.AddEntry(
        pb.AddEntryRequest(set="nasheeds", name="speech", media=pb.Media(content=media["known"])),
        metadata=md,
    )
    return h


@pytest.fixture
def match_json(service, monkeypatch, capsys, tmp_path):
    """`hashsvc match --json FILE` as a pipeline runs it: the decoded line."""
    monkeypatch.setenv("HASHSVC_SERVER", service.address)
    monkeypatch.setenv("HASHSVC_TOKEN", service.tokens["matcher"])

    def run(data: bytes, name: str) -> dict:
        path = tmp_path / name
        path.write_bytes(data)
        code = cli.main(["match", "--json", str(path)])
        out, err = capsys.readouterr()
        assert code == 0, err
        return json.loads(out)

    return run


def _only_match(row: dict) -> dict:
    assert row["decision"] == "block", row
    (match,) = row["matches"]
    assert (match["entry"], match["signal_type"], match["unit"]) == (
        "speech",
        "chromaprint",
        "seconds",
    )
    return match


# (upload, file name, tempo ratio, pitch ratio, where the known audio starts)
SHIFTS = [
    ("pitch_up_6", "pitch-up-6.mp3", 1.0, 1.06, 0.0),
    ("tempo_down_12", "tempo-down-12.mp3", 0.88, 1.0, 0.0),
    ("pitch_down_5", "pitch-down-5-excerpt.mp3", 1.0, 0.95, 12.0),
    ("video_sped_up_8", "sped-up-8.mp4", 1.08, 1.08, 0.0),
]


@pytest.mark.parametrize(("key", "name", "tempo", "pitch", "known_at"), SHIFTS)
def test_shifted_reupload_blocks_with_ranges_and_ratio(
    media, match_json, key, name, tempo, pitch, known_at
):
    match = _only_match(match_json(media[key], name))
    shift = match["audio_shift"]
    assert abs(shift["tempo_ratio"] - tempo) <= 0.02, shift
    assert abs(shift["pitch_ratio"] - pitch) <= 0.011, shift
    assert match["segments"]
    for seg in match["segments"]:
        query_seconds = seg["query_end"] - seg["query_start"]
        known_seconds = seg["known_end"] - seg["known_start"]
        assert query_seconds >= 5
        # each range in its own recording's seconds: their lengths differ by the tempo
        assert abs(known_seconds / query_seconds - tempo) <= 0.03, seg
        # the known audio at query second s is at known second known_at + s * tempo
        assert abs(seg["known_start"] - (known_at + seg["query_start"] * tempo)) <= 0.6, seg


def test_plain_copy_has_no_shift(media, match_json):
    match = _only_match(match_json(media["copy"], "copy.mp3"))
    assert "audio_shift" not in match


def test_same_voice_same_bed_is_allowed(media, match_json):
    for n, data in enumerate(media["same_voice_same_bed"]):
        row = match_json(data, f"other-{n}.mp3")
        assert row["decision"] == "allow", row


def test_answer_and_history_hold_the_fingerprint_not_the_views(service, media):
    stubs, md = service.stubs("matcher")
    resp = stubs.matcher.Match(
        pb.MatchRequest(media=pb.Media(content=media["pitch_up_6"])), metadata=md
    )
    assert resp.decision == pb.BLOCK
    assert resp.matches[0].audio_shift.pitch_ratio == pytest.approx(1.06, abs=0.011)
    assert [s.variant for s in resp.query_signals if s.signal_type == "chromaprint"] == ["original"]


@pytest.mark.parametrize("intro", ["music", "silence"])
def test_shifted_track_after_a_long_intro_is_found_at_the_defaults(media, intro):
    """A re-upload whose first minute is other audio (music, or silence), then
    the known speech sped up 8%: a single stretch in the middle of the first
    120 s lies in the intro and sees nothing of the known speech; at the
    defaults the upload is split where its sound changes and the stretch in
    the second part finds it, in the upload's seconds after the intro."""
    intro_seconds = 60.0
    intro_pcm = am.tones(611, intro_seconds) if intro == "music" else am.silence(intro_seconds)
    upload = am.shifted_after_intro(intro_pcm, media["known_pcm"], pitch=1.08, tempo=1.08)
    index = AudioIndex()
    known_words = fingerprint_audio(media["known"], AudioLimits()).words
    index.add(1, known_words)
    max_ber = 0.20

    def found(limits: AudioLimits) -> list:
        signals = fingerprint_audio(upload, limits, shifted_views=True).query_signals()
        return search_sounds(index, signals, max_ber).get(1, [])

    assert found(AudioLimits(shift_windows=1)) == []  # the one stretch lies in the intro
    alignments = found(AudioLimits())
    assert alignments
    best = min(alignments, key=lambda a: a.ber)
    assert best.shifted and best.ber <= 0.15, best
    assert abs(best.rate - 1.08) <= 0.02 and abs(best.pitch_ratio - 1.08) <= 0.011, best
    assert best.query_start >= intro_seconds - 1, best
    # the known audio at upload second s is at known second (s - intro) * tempo
    assert abs(best.known_start - (best.query_start - intro_seconds) * 1.08) <= 0.6, best


def test_an_upload_that_sounds_alike_throughout_pays_for_one_stretch(media):
    """Speech over one bed from start to end (the known track, its shifted
    copy, other speech in the same voice and bed): one stretch, in the middle,
    so the shifted search costs what it did with one stretch."""
    uploads = [media["known"], media["pitch_up_6"], *media["same_voice_same_bed"]]
    for upload in uploads:
        fp = fingerprint_audio(upload, AudioLimits(), shifted_views=True)
        starts = {view.position for view in fp.shifted_views}
        assert len(starts) == 1, starts
        (start,) = starts
        middle = (fp.duration - AudioLimits().shift_window_seconds) / 2
        assert abs(start - middle) <= 0.2, (start, fp.duration)


def test_parts_split_where_the_sound_changes():
    """audio_parts on 11025 Hz PCM: music then speech over a bed is two parts
    joined within a block of the true join; the speech alone is one."""
    speech = am.speech_track(7, 50.0, "ar", voice=VOICE, background_seed=BED).mean(axis=1)
    music = am.tones(7, 40.0)
    joined = _at_11025(np.concatenate([music, speech]))
    found = audio_parts.parts(joined, SAMPLE_RATE, 16.0, 2.5, 2)
    assert len(found) == 2, found
    assert abs(found[0][1] / SAMPLE_RATE - 40.0) <= audio_parts.BLOCK_SECONDS, found
    assert found[1][1] == len(joined)
    assert audio_parts.parts(_at_11025(speech), SAMPLE_RATE, 16.0, 2.5, 2) == [
        (0, len(_at_11025(speech)))
    ]


def test_block_spectra_sum_each_band_of_bins():
    """block_spectra's bands (summed by reduceat over runs of bins) hold the
    mean power of exactly the FFT bins above each edge up to the next: a sine
    in the middle of a band lights that band alone, and the sums equal the
    band-by-bin matrix product they replaced, to float32 rounding."""
    rate, seconds = SAMPLE_RATE, 6.0
    t = np.arange(int(seconds * rate)) / rate
    edges = audio_parts._BAND_EDGES_HZ
    for band in (0, 7, 15):
        middle = float(np.sqrt(edges[band] * edges[band + 1]))
        pcm = (np.sin(2 * np.pi * middle * t) * 8000).astype(np.int16)
        spectra = audio_parts.block_spectra(pcm, rate)
        assert spectra.shape == (3, 16)
        assert (spectra.argmax(axis=1) == band).all(), (band, spectra)
    # the sums equal the band-by-bin sums, also at rates where a band has no
    # bin (44.1 kHz: 43 Hz bins) or lies above Nyquist (6 kHz)
    for rate in (6000, SAMPLE_RATE, 44100):
        noise = (np.random.default_rng(31).standard_normal(1024) * 4000).astype(np.int16)
        frames = noise.astype(np.float32) * np.hanning(1024).astype(np.float32)
        power = np.abs(np.fft.rfft(frames)) ** 2
        band_of_bin = np.searchsorted(edges, np.fft.rfftfreq(1024, 1 / rate)) - 1
        by_bins = np.array([power[band_of_bin == k].sum() for k in range(16)])
        # a block of one repeated frame has that frame's power in every frame
        block = int(audio_parts.BLOCK_SECONDS * rate)
        one_frame = audio_parts.block_spectra(np.resize(noise, block), rate)
        assert np.allclose(one_frame[0], by_bins, rtol=1e-4), (rate, one_frame[0], by_bins)
        assert (by_bins == 0).any() == (rate != SAMPLE_RATE), rate


def test_parts_share_the_stretch_budget():
    """Two parts (music, then speech) get a stretch each of half
    shift_budget_seconds, one inside each part, so the upload pays for about
    1.5 stretches, not two; speech alone keeps one of shift_window_seconds."""
    limits = AudioLimits()
    speech = _at_11025(
        am.speech_track(7, 50.0, "ar", voice=VOICE, background_seed=BED).mean(axis=1)
    )
    joined = np.concatenate([_at_11025(am.tones(7, 40.0)), speech])
    starts, window = _ShiftWindows(limits).stretches(joined)
    assert (
        window
        == int(limits.shift_budget_seconds * SAMPLE_RATE) // 2
        < limits.shift_window_seconds * SAMPLE_RATE
    )
    join, slack = 40 * SAMPLE_RATE, int(audio_parts.BLOCK_SECONDS * SAMPLE_RATE)
    assert len(starts) == 2, starts
    assert starts[0] + window <= join + slack and starts[1] >= join - slack, starts
    assert _ShiftWindows(limits).stretches(speech) == (
        [(len(speech) - int(16 * SAMPLE_RATE)) // 2],
        int(limits.shift_window_seconds * SAMPLE_RATE),
    )


@pytest.mark.parametrize("budget", [4.0, 241.0])
def test_a_bad_stretch_budget_is_refused(budget):
    with pytest.raises(ValueError, match="shift_budget_seconds"):
        AudioLimits(shift_budget_seconds=budget)


def _at_11025(pcm: np.ndarray) -> np.ndarray:
    """am's float PCM at 22050 Hz as the int16 at 11025 Hz the fingerprinter keeps
    (every other sample: the spectrum up to 5 kHz is what audio_parts reads)."""
    return (np.clip(pcm[::2], -1, 1) * 32767).astype(np.int16)


@pytest.mark.parametrize("ratio", [0.9, 0.97, 1.0, 1.03, 1.1])
def test_resampled_is_linear_interpolation(ratio):
    """The views' resampler (written for speed) gives the samples of plain
    linear interpolation at positions i / ratio, to the rounding of float32."""
    pcm = (np.random.default_rng(19).standard_normal(16 * 11025) * 8000).astype(np.int16)
    out = _resampled(pcm, ratio)
    n = len(pcm) if ratio == 1.0 else int((len(pcm) - 1) * ratio)
    expected = np.interp(np.arange(n) / ratio, np.arange(len(pcm)), pcm.astype(np.float64))
    assert out.dtype == np.int16 and len(out) == n
    assert np.abs(out.astype(np.float64) - np.trunc(expected)).max() <= 1


def _interpolated_in_numpy(pcm: np.ndarray, ratio: float) -> np.ndarray:
    """The views' resampling as numpy computes it, step by step: float64
    positions i * (1 / ratio), float32 weights, the product and the sum each
    rounded to float32, truncated to int16 (the arithmetic every shifted view
    was fingerprinted with when bench/audio.py's recall table was measured)."""
    if ratio == 1.0:
        return pcm
    at = np.arange(max(int((len(pcm) - 1) * ratio), 0), dtype=np.float64) * (1.0 / ratio)
    left = at.astype(np.intp)
    weight = (at - left).astype(np.float32)
    samples = pcm.astype(np.float32)
    step = samples[left + 1] - samples[left]
    return (step * weight + samples[left]).astype(np.int16)


@pytest.mark.parametrize("ratio", [0.9, 0.93, 0.99, 1.0, 1.01, 1.07, 1.1])
def test_resampled_bit_for_bit_as_numpy_computes_it(ratio):
    """The compiled resampler gives exactly the samples of the numpy
    arithmetic, full-scale and odd-length PCM included: the shifted views
    (and so every recall figure measured on them) stay bit for bit."""
    rng = np.random.default_rng(29)
    for pcm in (
        (rng.standard_normal(16 * 11025 + 7) * 8000).astype(np.int16),
        rng.integers(-32768, 32768, 40_001).astype(np.int16),
        np.resize(np.array([32767, -32768, 32767, 0], dtype=np.int16), 9_999),
    ):
        assert np.array_equal(_resampled(pcm, ratio), _interpolated_in_numpy(pcm, ratio))


def test_stretches_resampled_together_equal_each_resampled_alone():
    """A ratio resamples all stretches of an upload (of several lengths: the
    tempo factors, two parts) in one pass; each comes out as it would alone."""
    rng = np.random.default_rng(23)
    stretches = [
        (rng.standard_normal(n) * 8000).astype(np.int16)
        for n in (18 * 11025, 16 * 11025, 14 * 11025 + 7, 3)
    ]
    sources = _Sources(stretches)
    for ratio in (0.9, 1.0, 1.04, 1.1):
        together = sources.resampled(ratio)
        for pcm, out in zip(stretches, together, strict=True):
            assert np.array_equal(out, _resampled(pcm, ratio))
            assert np.array_equal(out, _interpolated_in_numpy(pcm, ratio))


def test_a_line_found_by_one_view_is_aligned_in_all_of_its_stretch(media):
    """The views' own searches find a shifted excerpt in some of them; the
    matcher aligns what they found in every view of the stretch, so the
    answer is at least as good as any single view's and comes from the view
    that undoes the shift (pitch 0.95), not from a neighbour 1% off."""
    index = AudioIndex()
    index.add(1, fingerprint_audio(media["known"], AudioLimits()).words)
    signals = fingerprint_audio(
        media["pitch_down_5"], AudioLimits(), shifted_views=True
    ).query_signals()
    max_ber = 0.20
    own = [
        a.ber
        for view in signals[1:]
        for a in index.search_shifted(np.frombuffer(view.value, ">u4").astype(np.uint32), max_ber)
    ]
    best = min(search_sounds(index, signals, max_ber)[1], key=lambda a: a.ber)
    assert own and best.ber <= min(own), (best, min(own))
    assert best.pitch_ratio == pytest.approx(0.95, abs=0.001), best
    assert abs(best.known_start - (12.0 + best.query_start)) <= 0.6, best


@pytest.mark.parametrize("change_db", [0.0, -1.0, 61.0])
def test_a_bad_change_threshold_is_refused(change_db):
    """0 would cut every upload somewhere (always two stretches); refused
    when the config is read, like the other shift settings."""
    with pytest.raises(ValueError, match="shift_change_db"):
        AudioLimits(shift_change_db=change_db)
