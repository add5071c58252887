"""Audio fingerprints: equal to fpcalc -raw, and a typed answer for every bad input."""

from __future__ import annotations

import io
import json
import subprocess
import wave
from functools import cache
from pathlib import Path

import av
import numpy as np
import pytest

from hashsvc.base.errors import CorruptMedia, InvalidArgument, Timeout, TooLarge, UnsupportedMedia
from hashsvc.base.signals import Signal
from hashsvc.media.audio import (
    SECONDS_PER_WORD,
    SILENCE_WORD,
    AudioFingerprint,
    AudioFrameFingerprinter,
    AudioLimits,
    SilentAudio,
    TooShortToMatch,
    fingerprint_audio,
    fingerprint_container,
)
from hashsvc_testing import audio_media as am
from hashsvc_testing.vectors import VECTORS as VECTORS_DIR
from hashsvc_testing.vectors import require as require_vectors

# Paths only: the tests that read them call require_vectors() first.
VECTORS = VECTORS_DIR / "chromaprint"
DATA = VECTORS / "tests" / "data"
LIMITS = AudioLimits()
# The reference vectors are shorter than a match needs; agreement is about words.
ANY_LENGTH = AudioLimits(min_seconds=0)


def fpcalc_raw(path: Path, *args: str) -> list[int]:
    # fpcalc 1.5.1 exits with status 3 after printing a valid fingerprint (upstream bug).
    out = subprocess.run(["fpcalc", "-raw", "-length", "0", *args, str(path)], capture_output=True)
    assert out.returncode in (0, 3), out.stderr
    line = next(x for x in out.stdout.decode().splitlines() if x.startswith("FINGERPRINT="))
    return [int(v) for v in line.split("=", 1)[1].split(",")]


@cache
def arabic_speech() -> np.ndarray:
    return am.speech_track(1, 12, "ar")


def test_reference_mp3_equals_chromaprint_expected_output():
    require_vectors()
    expected = (DATA / "test.mp3.fpcalc.out").read_text().split("FINGERPRINT=")[1].strip()
    for source in (DATA / "test.mp3", (DATA / "test.mp3").read_bytes()):
        fp = fingerprint_audio(source, ANY_LENGTH)
        assert fp.words.tolist() == [int(v) for v in expected.split(",")]
        assert round(fp.duration) == 10 and not fp.truncated


def test_reference_raw_pcm_vector():
    """Chromaprint's TestFp: test_stereo_44100.raw read as mono 44.1 kHz s16le."""
    require_vectors()
    vectors = json.loads((VECTORS / "chromaprint_vectors.json").read_text())
    case = next(c for c in vectors["fingerprint_from_audio"] if c["name"] == "TestFp")
    wav = io.BytesIO()
    with wave.open(wav, "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(44100)
        w.writeframes((DATA / "test_stereo_44100.raw").read_bytes())
    import chromaprint

    fp = fingerprint_audio(wav.getvalue(), ANY_LENGTH)
    expected, algorithm = chromaprint.decode_fingerprint(
        case["expected_compressed_base64"].encode()
    )
    assert algorithm == 1
    assert fp.words.tolist() == expected
    assert (
        chromaprint.hash_fingerprint(fp.words.tolist()) == case["expected_fingerprint_hash_uint32"]
    )


@pytest.mark.parametrize(
    "fmt,args",
    [
        ("mp3", ("-ar", "44100", "-b:a", "128k")),
        ("ogg", ("-q:a", "2")),
        ("opus", ()),
        ("m4a", ("-ar", "48000")),
        ("flac", ()),
        ("wav", ("-ar", "8000")),
    ],
)
def test_generated_audio_equals_fpcalc(tmp_path, fmt, args):
    pcm = arabic_speech() if fmt != "wav" else am.stereo(am.tones(3, 10))
    path = tmp_path / f"audio.{fmt}"
    path.write_bytes(am.encode(pcm, fmt, *args))
    assert fingerprint_audio(path, LIMITS).words.tolist() == fpcalc_raw(path)


def test_signal_round_trip():
    fp = fingerprint_audio(am.encode(arabic_speech(), "mp3"), LIMITS)
    signal = fp.to_signal()
    assert signal.kind == "chromaprint" and signal.position == 0.0
    assert signal.value[:4] == int(fp.words[0]).to_bytes(4, "big")
    back = AudioFingerprint.from_signal(signal)
    assert back.words.dtype == np.uint32 and np.array_equal(back.words, fp.words)
    assert back.duration == pytest.approx(len(fp.words) * SECONDS_PER_WORD)
    with pytest.raises(InvalidArgument):
        AudioFingerprint.from_signal(Signal("chromaprint", b"\x00" * 5))
    with pytest.raises(InvalidArgument):
        AudioFingerprint.from_signal(Signal("pdq", b"\x00" * 32))


def test_container_and_frame_hook_agree_with_file(tmp_path):
    """A video's sound track fingerprints like the same audio on its own."""
    audio = tmp_path / "speech.wav"
    audio.write_bytes(am.encode(arabic_speech(), "wav"))
    video = tmp_path / "clip.mkv"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "color=c=blue:s=64x64:d=12", "-i",
         str(audio), "-c:v", "libx264", "-c:a", "flac", "-shortest", str(video)],
        check=True,
    )  # fmt: skip
    expected = fingerprint_audio(audio, LIMITS).words
    with av.open(str(video)) as container:
        assert np.array_equal(fingerprint_container(container, LIMITS).words, expected)
    hook = AudioFrameFingerprinter(LIMITS)
    with av.open(str(video)) as container:
        for frame in container.decode(audio=0):
            hook(frame)
    assert np.array_equal(hook.finish().words, expected)
    silent_film = tmp_path / "silent.mp4"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "color=c=red:s=64x64:d=1", str(silent_film)],
        check=True,
    )
    with av.open(str(silent_film)) as container:
        assert fingerprint_container(container, LIMITS) is None


def test_long_audio_is_fingerprinted_up_to_max_seconds():
    data = am.encode(arabic_speech(), "mp3")
    fp = fingerprint_audio(data, AudioLimits(max_seconds=8))
    full = fingerprint_audio(data, LIMITS)
    assert fp.truncated and fp.duration == pytest.approx(8, abs=0.01)
    assert not full.truncated and full.duration > 11
    # The first words are the same audio's; only the last ones see the cut.
    n = len(fp.words) - 20
    assert np.array_equal(fp.words[:n], full.words[:n])


def _wav(rate: int, channels: int, seconds: float) -> bytes:
    buf = io.BytesIO()
    samples = np.random.default_rng(0).integers(-3000, 3000, int(rate * seconds) * channels)
    with wave.open(buf, "wb") as w:
        w.setnchannels(channels), w.setsampwidth(2), w.setframerate(rate)
        w.writeframes(samples.astype(np.int16).tobytes())
    return buf.getvalue()


def _flip_bits(data: bytes, flips: int, seed: int = 1) -> bytes:
    rng = np.random.default_rng(seed)
    out = bytearray(data)
    for i in rng.integers(1000, len(out), flips):
        out[i] ^= 1 << int(rng.integers(0, 8))
    return bytes(out)


def _garbled_after_header(data: bytes) -> bytes:
    rng = np.random.default_rng(2)
    return data[:2000] + rng.integers(0, 256, len(data) - 2000, dtype=np.uint8).tobytes()


def _video_without_audio() -> bytes:
    return subprocess.run(
        ["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc=d=2:s=64x64", "-f", "mp4",
         "-movflags", "frag_keyframe+empty_moov", "pipe:1"],
        check=True, capture_output=True,
    ).stdout  # fmt: skip


BAD_INPUTS = {
    "empty": (lambda mp3: b"", InvalidArgument, "empty"),
    "one_byte": (lambda mp3: b"\x00", UnsupportedMedia, "not audio"),
    "header_only": (lambda mp3: mp3[:200], UnsupportedMedia, "not audio"),
    "truncated_short": (lambda mp3: mp3[: len(mp3) // 4], TooShortToMatch, "too short to match"),
    "garbled": (_garbled_after_header, CorruptMedia, "corrupt audio"),
    "text": (lambda mp3: b"hello world " * 100, UnsupportedMedia, "not audio"),
    "image": (lambda mp3: _png(), UnsupportedMedia, "no audio stream"),
    "video_without_audio": (lambda mp3: _video_without_audio(), UnsupportedMedia, "no audio"),
    "rate_1hz": (lambda mp3: _wav(1, 1, 60), UnsupportedMedia, "sample rate 1 Hz"),
    "rate_2mhz": (lambda mp3: _wav(2_000_000, 1, 0.2), UnsupportedMedia, "2000000 Hz"),
    "100_channels": (lambda mp3: _wav(8000, 100, 0.2), UnsupportedMedia, "100 channels"),
    "silent": (lambda mp3: am.encode(am.silence(15), "mp3"), SilentAudio, "silent"),
    "near_silent": (lambda mp3: am.encode(am.noise(1, 15, 1e-4), "mp3"), SilentAudio, "silent"),
    "held_tone": (
        lambda mp3: am.encode(0.3 * np.sin(np.arange(15 * am.RATE) * 0.1), "mp3"),
        TooShortToMatch,
        "too short to match",
    ),
    "three_seconds": (
        lambda mp3: am.encode(am.speech_track(2, 3), "mp3"),
        TooShortToMatch,
        "too short to match",
    ),
}


def _png() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 10, 10)).save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.parametrize("name", BAD_INPUTS)
def test_bad_input_gives_a_typed_error(name):
    make, error, message = BAD_INPUTS[name]
    data = make(am.encode(arabic_speech(), "mp3"))
    with pytest.raises(error, match=message):
        fingerprint_audio(data, LIMITS)


def test_silence_is_chromaprints_constant_word():
    """Why silence is refused: every silent stretch has the same fingerprint
    (Chromaprint's Test2SilenceFp vector: 133,120 zero samples at 44.1 kHz)."""
    require_vectors()
    import chromaprint

    vectors = json.loads((VECTORS / "chromaprint_vectors.json").read_text())
    case = next(c for c in vectors["fingerprint_from_audio"] if c["name"] == "Test2SilenceFp")
    fingerprinter = chromaprint.Fingerprinter()
    fingerprinter.start(44100, 1)
    fingerprinter.feed(bytes(133_120 * 2))
    words, _ = chromaprint.decode_fingerprint(fingerprinter.finish())
    assert words == case["expected_raw_uint32"] == [SILENCE_WORD] * 3
    with pytest.raises(SilentAudio):
        fingerprint_audio(am.encode(am.silence(15), "wav"), AudioLimits(min_seconds=0))


def test_bit_flipped_upload_still_fingerprints_like_the_original():
    mp3 = am.encode(arabic_speech(), "mp3")
    original = fingerprint_audio(mp3, LIMITS).words
    damaged = fingerprint_audio(_flip_bits(mp3, 20), LIMITS).words
    n = min(len(original), len(damaged))
    assert np.bitwise_count(original[:n] ^ damaged[:n]).mean() / 32 < 0.15


def test_decode_time_limit():
    mp3 = am.encode(arabic_speech(), "mp3")
    with pytest.raises(Timeout, match="took over"):
        fingerprint_audio(mp3, AudioLimits(max_wall_seconds=1e-9))


def test_size_limit_and_missing_file(tmp_path):
    mp3 = am.encode(arabic_speech(), "mp3")
    with pytest.raises(TooLarge, match="limit"):
        fingerprint_audio(mp3, AudioLimits(max_bytes=len(mp3) - 1))
    with pytest.raises(InvalidArgument, match="cannot read"):
        fingerprint_audio(tmp_path / "missing.mp3", LIMITS)
