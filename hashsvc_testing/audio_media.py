"""Audio made on the fly for tests and bench/audio.py: espeak-ng speech over a
tonal background (the shape of a nasheed or a recorded speech), the transforms
uploads go through (re-encoding, downmix, resampling, level, noise, cuts,
splices), and encoding with ffmpeg.

PCM is held as float32 numpy arrays at RATE, shape (samples,) or (samples, 2).
Every generator takes a seed, so a test and the bench see the same audio.
"""

from __future__ import annotations

import io
import subprocess
import wave
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

RATE = 22050  # espeak-ng's output rate; encoders resample as their format needs

# Small vocabularies: random sentences from them give endless distinct utterances
# in the same voice and language (the hard negatives: other speech, same speaker).
WORDS = {
    "en": (
        "the people will rise and stand together against the night we remember every name"
        " brothers sisters land river mountain promise victory patience faith road city fire"
        " light voice history morning honour strength journey answer tomorrow children"
        " freedom silence thunder garden desert ocean window letter bridge winter summer"
    ).split(),
    "ar": (
        "الله اكبر يا اخوة الجهاد في سبيل النصر قريب الارض الشهداء القلب الطريق الصبر"
        " الايمان النور الليل الفجر المدينة الجبل النهر البحر الصحراء الحرية الكرامة"
        " التاريخ الغد الاطفال الصوت النداء الوعد الحق الباطل السماء الشمس القمر الرياح"
    ).split(),
    "fr": (
        "le peuple se lèvera ensemble contre la nuit nous nous souvenons de chaque nom"
        " frères soeurs terre rivière montagne promesse victoire patience foi route ville"
    ).split(),
    "de": (
        "das Volk wird sich erheben gemeinsam gegen die Nacht wir erinnern uns an jeden Namen"
        " Brüder Schwestern Land Fluss Berg Versprechen Sieg Geduld Glaube Weg Stadt Feuer"
    ).split(),
}
VOICES = {
    "en": ["en-us", "en-gb+m3", "en-us+f2"],
    "ar": ["ar", "ar+m3", "ar+f3"],
    "fr": ["fr-fr", "fr-fr+f2"],
    "de": ["de", "de+m4"],
}


def random_text(rng: np.random.Generator, lang: str, n_words: int) -> str:
    vocabulary = WORDS[lang]
    return " ".join(vocabulary[i] for i in rng.integers(0, len(vocabulary), n_words))


def speech(text: str, voice: str, speed: int = 150, pitch: int = 50) -> np.ndarray:
    wav = subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "--stdout", text],
        check=True,
        capture_output=True,
    ).stdout
    with wave.open(io.BytesIO(wav)) as w:
        assert w.getframerate() == RATE and w.getnchannels() == 1
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
    return pcm.astype(np.float32) / 32768


def background(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """A slow drone chord with a soft pulse and hiss: the kind of bed speeches and
    nasheeds are laid over. Its seed fixes it: two tracks can share one bed."""
    t = np.arange(int(seconds * RATE)) / RATE
    root = rng.uniform(90, 180)
    bed = sum(
        np.sin(2 * np.pi * root * ratio * t + rng.uniform(0, 6)) / (i + 1)
        for i, ratio in enumerate((1.0, 1.5, 2.0, 2.5))
    )
    pulse = 0.6 + 0.4 * np.sin(2 * np.pi * rng.uniform(0.3, 1.2) * t)
    hiss = rng.standard_normal(len(t)) * 0.05
    return (0.08 * bed * pulse + 0.02 * hiss).astype(np.float32)


def speech_track(
    seed: int,
    seconds: float,
    lang: str = "ar",
    voice: str | None = None,
    background_seed: int | None = None,
) -> np.ndarray:
    """Stereo speech in one voice, sentence after sentence, over a background bed
    (seeded by background_seed, by default the track's own seed)."""
    rng = np.random.default_rng(seed)
    voice = voice or VOICES[lang][seed % len(VOICES[lang])]
    parts, total = [], 0
    while total < seconds * RATE:
        text = random_text(rng, lang, int(rng.integers(6, 14)))
        parts.append(speech(text, voice, speed=int(rng.integers(130, 175))))
        parts.append(np.zeros(int(rng.uniform(0.15, 0.5) * RATE), np.float32))
        total += len(parts[-2]) + len(parts[-1])
    voice_pcm = np.concatenate(parts)[: int(seconds * RATE)]
    bed_rng = np.random.default_rng(seed if background_seed is None else background_seed)
    bed = background(bed_rng, seconds)
    left = 0.7 * voice_pcm + bed
    right = 0.7 * voice_pcm + 0.8 * bed
    return np.stack([left, right], axis=1)


def tones(seed: int, seconds: float) -> np.ndarray:
    """A random melody of held notes: music, not speech."""
    rng = np.random.default_rng(seed)
    out = []
    while sum(map(len, out)) < seconds * RATE:
        n = int(rng.uniform(0.2, 0.6) * RATE)
        t = np.arange(n) / RATE
        f = 220 * 2 ** (rng.integers(0, 24) / 12)
        envelope = np.minimum(1, np.minimum(t, t[::-1]) * 40)
        out.append((0.3 * np.sin(2 * np.pi * f * t) * envelope).astype(np.float32))
    return np.concatenate(out)[: int(seconds * RATE)]


def noise(seed: int, seconds: float, level: float = 0.1) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(int(seconds * RATE)) * level).astype(
        np.float32
    )


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * RATE), np.float32)


def stereo(pcm: np.ndarray) -> np.ndarray:
    return pcm if pcm.ndim == 2 else np.stack([pcm, pcm], axis=1)


def encode(pcm: np.ndarray, fmt: str = "mp3", *args: str, rate: int = RATE) -> bytes:
    """PCM -> a file's bytes through ffmpeg. fmt: mp3, ogg, wav, flac, m4a, opus."""
    pcm = np.clip(pcm, -1, 1).astype("<f4")
    channels = 1 if pcm.ndim == 1 else pcm.shape[1]
    codec = {
        "mp3": ["-c:a", "libmp3lame", "-f", "mp3"],
        "ogg": ["-c:a", "libvorbis", "-f", "ogg"],
        "wav": ["-c:a", "pcm_s16le", "-f", "wav"],
        "flac": ["-c:a", "flac", "-f", "flac"],
        "m4a": ["-c:a", "aac", "-f", "ipod"],
        "opus": ["-c:a", "libopus", "-f", "ogg"],
    }[fmt]
    # ipod (m4a) needs a seekable output: write to a temporary file for it.
    cmd = ["ffmpeg", "-v", "error", "-f", "f32le", "-ar", str(rate), "-ac", str(channels)]
    cmd += ["-i", "pipe:0", *codec, *args]
    if fmt == "m4a":
        import tempfile

        with tempfile.NamedTemporaryFile(suffix=".m4a") as out:
            subprocess.run([*cmd, "-y", out.name], input=pcm.tobytes(), check=True)
            return open(out.name, "rb").read()
    return subprocess.run(
        [*cmd, "pipe:1"], input=pcm.tobytes(), capture_output=True, check=True
    ).stdout


def master(pcm: np.ndarray) -> bytes:
    """How a known track is stored: stereo MP3, 44.1 kHz, 192 kbps."""
    return encode(stereo(pcm), "mp3", "-ar", "44100", "-b:a", "192k")


@dataclass(frozen=True)
class Transform:
    """One family of changes an upload goes through, applied to a known track's
    PCM. `known_start` is where in the known track the query begins (seconds);
    `query_start` where in the query the known audio begins."""

    name: str
    make: Callable[[np.ndarray, int], bytes]  # (known pcm, seed) -> upload bytes
    known_start: Callable[[np.ndarray, int], float] = lambda pcm, seed: 0.0
    query_start: Callable[[np.ndarray, int], float] = lambda pcm, seed: 0.0


def _excerpt_bounds(pcm: np.ndarray, seed: int) -> tuple[float, float]:
    rng = np.random.default_rng(seed + 7)
    total = len(pcm) / RATE
    length = float(rng.uniform(10, 15))
    start = float(rng.uniform(0, total - length))
    return start, length


def _excerpt(pcm: np.ndarray, seed: int) -> bytes:
    start, length = _excerpt_bounds(pcm, seed)
    return encode(
        stereo(pcm)[int(start * RATE) : int((start + length) * RATE)], "mp3", "-b:a", "128k"
    )


def _other_audio_seconds(seed: int) -> float:
    return float(np.random.default_rng(seed + 11).uniform(5, 20))


def _other_audio(seed: int) -> np.ndarray:
    """Unrelated speech (another language, another bed) to splice around a track."""
    return speech_track(10_000 + seed, _other_audio_seconds(seed), lang="en")


def _preceded(pcm: np.ndarray, seed: int) -> bytes:
    return encode(np.concatenate([_other_audio(seed), stereo(pcm)]), "mp3", "-b:a", "128k")


def _followed(pcm: np.ndarray, seed: int) -> bytes:
    return encode(np.concatenate([stereo(pcm), _other_audio(seed)]), "mp3", "-b:a", "128k")


def _with_noise(pcm: np.ndarray, seed: int) -> bytes:
    # White noise 5 dB under the track's level (SNR 5 dB): loud hiss. The
    # fingerprint holds up to about 0 dB (BER ~0.08 there).
    rms = float(np.sqrt(np.mean(pcm**2)))
    hiss = np.random.default_rng(seed).standard_normal(pcm.shape).astype(np.float32)
    return encode(pcm + hiss * rms * 10 ** (-5 / 20), "mp3", "-b:a", "128k")


TRANSFORMS = [
    Transform("mp3_64k", lambda pcm, seed: encode(pcm, "mp3", "-b:a", "64k")),
    Transform("ogg_low", lambda pcm, seed: encode(pcm, "ogg", "-q:a", "0")),
    Transform("mono", lambda pcm, seed: encode(pcm.mean(axis=1), "mp3", "-b:a", "96k")),
    Transform("resampled_16k", lambda pcm, seed: encode(pcm, "mp3", "-ar", "16000")),
    Transform("quieter", lambda pcm, seed: encode(pcm * 10 ** (-20 / 20), "mp3", "-b:a", "128k")),
    Transform("noise", _with_noise),
    Transform("excerpt", _excerpt, known_start=lambda pcm, seed: _excerpt_bounds(pcm, seed)[0]),
    Transform(
        "preceded",
        _preceded,
        query_start=lambda pcm, seed: _other_audio_seconds(seed),
    ),
    Transform("followed", _followed),
]


def unrelated(seed: int, seconds: float, background_seed: int) -> list[tuple[str, bytes]]:
    """Audio that must match nothing: other speech in the same language and voices
    over the same background bed as the known tracks, plus music, noise, other
    languages."""
    return [
        (
            "same_language_same_bed",
            encode(speech_track(seed, seconds, "ar", background_seed=background_seed), "mp3"),
        ),
        ("other_language", encode(speech_track(seed + 1, seconds, "fr"), "mp3")),
        ("tones", encode(tones(seed, seconds), "mp3")),
        ("noise", encode(noise(seed, seconds), "mp3")),
    ]


def shifted(pcm: np.ndarray, pitch: float = 1.0, tempo: float = 1.0, *encode_args: str) -> bytes:
    """PCM re-uploaded pitched by `pitch` and played `tempo` times as fast (MP3):
    asetrate changes both, atempo puts the speed where asked. pitch == tempo is
    a plain speed-up (pitch and speed together); tempo 1 keeps the speed."""
    return encode(pcm, "mp3", "-af", _shift_filters(pitch, tempo), *encode_args)


def _shift_filters(pitch: float, tempo: float) -> str:
    filters = []
    if pitch != 1.0:
        filters += [f"asetrate={RATE}*{pitch}", f"aresample={RATE}"]
    if tempo / pitch != 1.0:
        filters.append(f"atempo={tempo / pitch}")
    return ",".join(filters)


def shifted_after_intro(
    intro: np.ndarray, pcm: np.ndarray, pitch: float = 1.0, tempo: float = 1.0
) -> bytes:
    """`shifted` audio that starts after an unshifted intro (other audio: a
    re-upload whose first minute is something else), as one MP3."""
    seconds = len(intro) / RATE
    whole = np.concatenate([stereo(intro), stereo(pcm)])
    graph = (
        f"[0:a]atrim=end={seconds},asetpts=PTS-STARTPTS[intro];"
        f"[0:a]atrim=start={seconds},asetpts=PTS-STARTPTS,{_shift_filters(pitch, tempo)}[known];"
        "[intro][known]concat=n=2:v=0:a=1"
    )
    return encode(whole, "mp3", "-filter_complex", graph)


def as_video_sound_track(audio: bytes, seconds: float, aac_coder: str = "twoloop") -> bytes:
    """A video (generated frames, H.264 + AAC in MP4) whose sound is `audio`.
    aac_coder "fast" encodes the sound ~5x faster than FFmpeg's default
    (twoloop), which is most of the cost of making the video."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        source, out = f"{tmp}/sound", f"{tmp}/video.mp4"
        with open(source, "wb") as f:
            f.write(audio)
        subprocess.run(
            ["ffmpeg", "-nostdin", "-v", "error", "-y",
             "-f", "lavfi", "-i", f"testsrc2=size=320x240:rate=10:duration={seconds}",
             "-i", source, "-map", "0:v", "-map", "1:a", "-c:v", "libx264", "-preset",
             "ultrafast", "-c:a", "aac", "-aac_coder", aac_coder, "-b:a", "128k", "-shortest", out],
            check=True,
        )  # fmt: skip
        with open(out, "rb") as f:
            return f.read()
