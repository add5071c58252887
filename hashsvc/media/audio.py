"""Audio: raw Chromaprint fingerprints, equal to `fpcalc -raw` for the same audio.

Decoding is in process with PyAV and streamed frame by frame: a packet is
decoded, resampled to signed 16-bit mono 11025 Hz and fed to libchromaprint at
once, so an hour-long upload never exists as decoded PCM in memory.

fpcalc resamples with libswresample set to the "compatible mode" of
Chromaprint's own resampler (16-tap filter, phase shift 8, linear
interpolation, cutoff 0.8); the default aresample settings give fingerprints
that differ by a few bits, so the same options are passed here. With them the
words are bit-exact against fpcalc 1.5.1 on MP3, Vorbis, Opus, AAC, FLAC and WAV.

A fingerprint is one 32-bit word per 1365 samples at 11025 Hz (~0.124 s); each
word describes ~2 s of audio around it. Chromaprint turns digital silence into
one constant word, and any constant stretch says nothing about what was heard,
so fingerprints that are silent or too short to match are refused with typed
errors (`SilentAudio`, `TooShortToMatch`) instead of becoming signals that
would match every other silent or quiet recording.

Shifted views (queries only): a re-upload pitched or sped up by a few percent
has other chroma, so its words match nothing. Resampling PCM by a ratio r and
fingerprinting it at the same rate lowers pitch and speed together by r: it
undoes `asetrate` exactly, and turns a pitch-only or tempo-only change into a
tempo change alone, which the index's rate-aware search aligns. Measured on
speech over a music bed (README, bench/audio.py):
* a pitch error of 0.25% leaves a BER of ~0.08, 0.5% ~0.12, 0.75% ~0.17 and
  1% ~0.21 (block is 0.15): pitch ratios must be 1% apart (error <= 0.5%);
* a remaining tempo change aligned at its rate leaves ~0.07 at 3%, ~0.10 at
  8%, 0.14-0.16 at 12-15%, and past ~8% so few words keep their top 24 bits
  that the lookup finds no votes for the harder recordings; so each stretch is
  also time-stretched at the same pitch (atempo) by 0.9 and 1.1 first, which
  leaves at most ~5% for the alignment to absorb;
* fingerprinting 20 s costs ~2 ms, resampling it ~0.4 ms, atempo ~5 ms: the
  63 views (21 pitch ratios x 3 tempo factors) of one 16 s stretch, searched,
  add ~0.27 s to a 3-minute upload's ~0.3 s Match (20 s stretches: 2.04x,
  over the 2x budget), so one stretch of the first two minutes is
  re-fingerprinted, not the whole upload: in the middle when they sound alike
  throughout, else one in the middle of each part that sounds different
  (audio_parts: an intro, then the track; up to shift_windows), so a track
  after a minute of other audio is not missed. The parts share
  shift_budget_seconds (24): two parts get 12 s each, so such an upload pays
  for 1.5 stretches, not 2 (12 s still finds tempo -15% and pitch -10%
  after an intro; 10 s and 8 s did not, README Benchmarks).
"""

from __future__ import annotations

import io
import os
import time
from dataclasses import dataclass
from fractions import Fraction
from typing import ClassVar

import av
import numba
import numpy as np

from hashsvc.base.errors import CorruptMedia, InvalidArgument, Timeout, TooLarge, UnsupportedMedia
from hashsvc.base.signals import CHROMAPRINT, Signal
from hashsvc.media import audio_parts
from hashsvc.media.audio_words import (
    SAMPLE_RATE,
    SECONDS_PER_WORD,
    informative_mask,
    shift_variant,
)
from hashsvc.media.audio_words import SILENCE_WORD as SILENCE_WORD  # read from here by callers
from hashsvc.media.limits import AudioLimits

try:
    import chromaprint
except ImportError as exc:  # pragma: no cover - an install problem, said plainly
    raise ImportError("audio needs pyacoustid's chromaprint module and libchromaprint1") from exc
if not hasattr(chromaprint, "Fingerprinter"):  # pragma: no cover
    # The PyPI package named "chromaprint" is an unrelated terminal-colour library.
    raise ImportError(f"{chromaprint.__file__} is not pyacoustid's chromaprint module")

# Peak below -60 dBFS over the whole upload: inaudible, treated as silent.
SILENT_PEAK = 32
# Undecodable packets tolerated (skipped) before an upload is refused as corrupt:
# more than this many and more than this share of all packets read so far.
MAX_BAD_PACKETS = 8
MAX_BAD_SHARE = 0.05
FEED_SAMPLES = SAMPLE_RATE  # PCM handed to libchromaprint per call

_ALGORITHM = chromaprint.Fingerprinter.ALGORITHM_TEST2  # fpcalc's default (-algorithm 2)
# libswresample settings of fpcalc's FFmpegAudioProcessor::SetCompatibleMode.
_FPCALC_RESAMPLE_OPTIONS = {
    "filter_size": "16",
    "phase_shift": "8",
    "linear_interp": "1",
    "cutoff": "0.8",
}


class AudioNotMatchable(InvalidArgument):
    """The audio decoded fine but holds nothing a match could rest on. Callers
    fingerprinting a video's sound track may treat it as "no audio signal"."""


class SilentAudio(AudioNotMatchable):
    pass


class TooShortToMatch(AudioNotMatchable):
    pass


@dataclass(frozen=True, eq=False)
class AudioFingerprint:
    words: np.ndarray  # uint32, one per SECONDS_PER_WORD
    duration: float  # seconds of audio fingerprinted
    truncated: bool = False  # the audio ran past AudioLimits.max_seconds
    # Query views of stretches of the audio resampled by pitch ratios (see the
    # module docstring): chromaprint signals named by shift_variant, their
    # position the stretch's start in seconds. Empty unless asked for.
    shifted_views: tuple[Signal, ...] = ()
    seconds_per_word: ClassVar[float] = SECONDS_PER_WORD

    def to_signal(self) -> Signal:
        return Signal(kind=CHROMAPRINT.name, value=self.words.astype(">u4").tobytes(), position=0.0)

    def query_signals(self) -> list[Signal]:
        """The fingerprint and its shifted views: what a Match searches with."""
        return [self.to_signal(), *self.shifted_views]

    @classmethod
    def from_signal(cls, signal: Signal) -> AudioFingerprint:
        if signal.kind != CHROMAPRINT.name:
            raise InvalidArgument(f"expected a {CHROMAPRINT.name} signal, got {signal.kind}")
        if not signal.value or len(signal.value) % 4:
            raise InvalidArgument("a chromaprint value is a non-empty multiple of 4 bytes")
        words = np.frombuffer(signal.value, dtype=">u4").astype(np.uint32)
        return cls(words, duration=len(words) * SECONDS_PER_WORD)

    def informative_seconds(self) -> float:
        return float(informative_mask(self.words).sum()) * SECONDS_PER_WORD


def fingerprint_audio(
    source: bytes | str | os.PathLike, limits: AudioLimits, shifted_views: bool = False
) -> AudioFingerprint:
    """The raw Chromaprint fingerprint of an audio file's first audio stream;
    with shifted_views, its shifted query views too."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        size = len(source)
        opened = io.BytesIO(source)
    else:
        try:
            size = os.path.getsize(source)
        except OSError as exc:
            raise InvalidArgument(f"cannot read {source}: {exc.strerror}") from None
        opened = os.fspath(source)
    if size == 0:
        raise InvalidArgument("empty media")
    if size > limits.max_bytes:
        raise TooLarge(f"audio is {size} bytes; the limit is {limits.max_bytes}")
    try:
        container = av.open(opened, metadata_errors="ignore")  # tags in bad UTF-8
    except av.error.InvalidDataError:
        raise UnsupportedMedia(
            "not audio the decoder can read (unknown format, or truncated)"
        ) from None
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        raise CorruptMedia(f"cannot open the audio: {exc}") from None
    with container:
        result = fingerprint_container(container, limits, shifted_views)
    if result is None:
        raise UnsupportedMedia("the file has no audio stream")
    return result


def fingerprint_container(
    container, limits: AudioLimits, shifted_views: bool = False
) -> AudioFingerprint | None:
    """The fingerprint of an open PyAV container's first audio stream, or None
    when it has none (a silent-film video). Raises SilentAudio/TooShortToMatch
    like fingerprint_audio: a video caller may treat both as "no audio"."""
    if not container.streams.audio:
        return None
    stream = container.streams.audio[0]
    if stream.codec_context is None:  # FFmpeg has no decoder for it (e.g. a 0-bit WAV)
        raise UnsupportedMedia("the audio stream is in a format no decoder reads")
    _check_format(stream.codec_context.sample_rate, stream.codec_context.channels, limits)
    fingerprinter = AudioFrameFingerprinter(limits, shifted_views)
    packets = bad_packets = 0
    started = time.monotonic()
    try:
        for packet in container.demux(stream):
            packets += 1
            if limits.max_wall_seconds and not packets % 256:
                if time.monotonic() - started > limits.max_wall_seconds:
                    raise Timeout(f"audio decoding took over {limits.max_wall_seconds:g} s")
            try:
                frames = packet.decode()
            except av.error.InvalidDataError:
                # A damaged frame loses ~26 ms; refusing the whole upload for it
                # would let a flipped bit evade matching. Mostly damage is refused.
                bad_packets += 1
                if bad_packets > MAX_BAD_PACKETS and bad_packets > packets * MAX_BAD_SHARE:
                    raise CorruptMedia(
                        f"corrupt audio: {bad_packets} of {packets} packets undecodable"
                    ) from None
                continue
            for frame in frames:
                if not fingerprinter(frame):
                    return fingerprinter.finish()
        if packets and bad_packets == packets:
            raise CorruptMedia("corrupt audio: no packet could be decoded")
        return fingerprinter.finish()
    except av.error.FFmpegError as exc:
        raise CorruptMedia(f"corrupt audio: {exc}") from None
    except (ValueError, chromaprint.FingerprintError) as exc:
        # ValueError: PyAV refusing a frame layout or format it cannot convert.
        raise CorruptMedia(f"audio the fingerprinter cannot convert: {exc}") from None


def _check_format(sample_rate: int, channels: int, limits: AudioLimits) -> None:
    if sample_rate and not limits.min_sample_rate <= sample_rate <= limits.max_sample_rate:
        raise UnsupportedMedia(
            f"audio sample rate {sample_rate} Hz is outside"
            f" {limits.min_sample_rate}..{limits.max_sample_rate} Hz"
        )
    if channels > limits.max_channels:
        raise UnsupportedMedia(f"audio has {channels} channels; the limit is {limits.max_channels}")


class AudioFrameFingerprinter:
    """Decoded PyAV audio frames in (any rate, layout, format), the fingerprint
    out. Usable as hash_video's on_audio_frame hook, so a video's sound is
    fingerprinted in the same decoding pass; frames past max_seconds are ignored
    and the result is marked truncated."""

    def __init__(self, limits: AudioLimits, shifted_views: bool = False) -> None:
        self._limits = limits
        self._windows = _ShiftWindows(limits) if shifted_views else None
        self._max_samples = int(limits.max_seconds * SAMPLE_RATE)
        self._samples = 0
        self._peak = 0
        self._pending: list[np.ndarray] = []
        self._pending_samples = 0
        self._truncated = False
        self._resampler: av.AudioResampler | None = None
        self._input_format: tuple | None = None
        self._fingerprinter = chromaprint.Fingerprinter(_ALGORITHM)
        self._fingerprinter.start(SAMPLE_RATE, 1)

    def __call__(self, frame: av.AudioFrame) -> bool:
        """Feed one frame; False once max_seconds of audio have been fed."""
        if self._truncated:
            return False
        _check_format(frame.sample_rate, frame.layout.nb_channels, self._limits)
        # A stream may change rate or layout midway (concatenated broadcasts);
        # a resampler is bound to one input format, so flush it and start anew.
        input_format = (frame.format.name, frame.layout.name, frame.sample_rate)
        if input_format != self._input_format:
            if self._resampler is not None and not self._feed_pcm(self._resampler.resample(None)):
                return False
            self._resampler = av.AudioResampler(
                format="s16", layout="mono", rate=SAMPLE_RATE, options=_FPCALC_RESAMPLE_OPTIONS
            )
            self._input_format = input_format
        frame.pts = None  # timestamps play no part; gaps in them must not insert silence
        try:
            return self._feed_pcm(self._resampler.resample(frame))
        except (ValueError, chromaprint.FingerprintError) as exc:
            # ValueError: PyAV refusing a layout or format it cannot convert.
            raise CorruptMedia(f"audio the fingerprinter cannot convert: {exc}") from None

    def _feed_pcm(self, frames: list[av.AudioFrame]) -> bool:
        for out in frames:
            room = self._max_samples - self._samples
            samples = min(out.samples, room)
            # Copied out of the frame: PyAV may reuse its buffer for the next one.
            self._pending.append(np.frombuffer(out.planes[0], dtype=np.int16, count=samples).copy())
            self._pending_samples += samples
            self._samples += samples
            if self._samples >= self._max_samples:
                self._truncated = True
                self._flush()
                return False
        if self._pending_samples >= FEED_SAMPLES:
            self._flush()
        return True

    def _flush(self) -> None:
        """Feed libchromaprint a second of PCM at a time, not a ~26 ms frame:
        a call per frame costs more than the fingerprinting it does."""
        if not self._pending:
            return
        pcm = np.concatenate(self._pending)
        self._pending, self._pending_samples = [], 0
        if len(pcm):
            self._peak = max(self._peak, int(pcm.max()), -int(pcm.min()))
            self._fingerprinter.feed(pcm.tobytes())
            if self._windows is not None:
                self._windows.feed(pcm)

    def finish(self) -> AudioFingerprint:
        """The fingerprint; SilentAudio or TooShortToMatch when it has nothing to match."""
        if not self._truncated and self._resampler is not None:
            self._feed_pcm(self._resampler.resample(None))
        self._flush()
        duration = self._samples / SAMPLE_RATE
        compressed = self._fingerprinter.finish()
        words = np.array(chromaprint.decode_fingerprint(compressed)[0], dtype=np.uint32)
        if self._samples and self._peak < SILENT_PEAK:
            raise SilentAudio(f"the audio is silent ({duration:.1f} s): nothing to match")
        informative = informative_mask(words)
        seconds = float(informative.sum()) * SECONDS_PER_WORD
        if seconds < self._limits.min_seconds:
            raise TooShortToMatch(
                f"too short to match: {seconds:.1f} s of distinctive audio (not silence or"
                f" held tones) in {duration:.1f} s; {self._limits.min_seconds:g} s are needed"
            )
        views = self._windows.views() if self._windows is not None else ()
        return AudioFingerprint(words, duration, self._truncated, views)


class _ShiftWindows:
    """Keeps the first AudioLimits.shift_scan_seconds of PCM and makes the
    shifted views of a stretch in the middle of each part of it that sounds
    different (audio_parts: an intro, then the track), up to shift_windows,
    the parts sharing shift_budget_seconds; one in the middle when it sounds
    alike throughout, so a known track preceded or followed by a little other
    audio is still inside it."""

    def __init__(self, limits: AudioLimits) -> None:
        self._limits = limits
        self._window = int(limits.shift_window_seconds * SAMPLE_RATE)
        self._room = int(limits.shift_scan_seconds * SAMPLE_RATE) if limits.shift_windows else 0
        self._parts: list[np.ndarray] = []
        self._kept = 0
        steps = int(round(limits.shift_pitch_range / limits.shift_pitch_step))
        self._ratios = [round(1 + k * limits.shift_pitch_step, 4) for k in range(-steps, steps + 1)]

    def feed(self, pcm: np.ndarray) -> None:
        take = min(len(pcm), self._room - self._kept)
        if take > 0:
            self._parts.append(pcm[:take])
            self._kept += take

    def stretches(self, kept: np.ndarray) -> tuple[list[int], int]:
        """Where the stretches start and how long they are (samples): one
        centred on each part of what was kept, clamped inside it, the parts
        sharing shift_budget_seconds."""
        limits = self._limits
        ranges = [(0, len(kept))]
        if limits.shift_windows > 1:
            ranges = audio_parts.parts(
                kept,
                SAMPLE_RATE,
                limits.shift_window_seconds,
                limits.shift_change_db,
                limits.shift_windows,
            )
        budget = int(limits.shift_budget_seconds * SAMPLE_RATE) // len(ranges)
        window = min(self._window, budget, len(kept))
        centers = [(lo + hi) / 2 for lo, hi in ranges]
        starts = {int(min(max(c - window / 2, 0), len(kept) - window)) for c in centers}
        return sorted(starts), window

    def views(self) -> tuple[Signal, ...]:
        if self._kept < self._limits.min_seconds * SAMPLE_RATE:
            return ()
        kept = np.concatenate(self._parts)
        starts, window = self.stretches(kept)
        # Every (stretch, tempo factor) is resampled by every pitch ratio.
        stretched = [
            (start, stretch, source if stretch == 1.0 else _atempo(source, stretch))
            for start in starts
            for source in [kept[start : start + window]]
            for stretch in self._limits.shift_tempo_stretches
        ]
        # float32 once for all of them; each pitch ratio resamples them all in
        # one compiled pass
        sources = _Sources([pcm for _, _, pcm in stretched])
        fingerprinter = chromaprint.Fingerprinter(_ALGORITHM)  # one context for all views
        views = []
        for ratio in self._ratios:
            resampled = sources.resampled(ratio)
            for (start, stretch, _), pcm in zip(stretched, resampled, strict=True):
                words = _fingerprint_pcm(pcm, fingerprinter)
                if informative_mask(words).sum() * SECONDS_PER_WORD < self._limits.min_seconds:
                    continue
                views.append(
                    Signal(
                        kind=CHROMAPRINT.name,
                        value=words.astype(">u4").tobytes(),
                        variant=shift_variant(ratio, stretch),
                        position=round(start / SAMPLE_RATE, 3),
                    )
                )
        return tuple(views)


class _Sources:
    """The stretches' int16 PCM as rows of one float32 matrix (one column of
    padding, so no read of a sample's right neighbour leaves the matrix),
    resampled by one ratio at a time: ratio times as many samples (int16),
    to be played at the same rate, so pitch and speed are divided by ratio.

    Linear interpolation, measured as good as a polyphase filter for the
    fingerprint: output sample i is left + w * (right - left) at position
    i / ratio (float64; float32 would round positions by up to 1/64 sample
    at 200k samples), left and right the samples around it, w its fraction
    as float32, the product and the sum each rounded to float32, then
    truncated to int16. Each upload pays for ~21 ratios x 3-6 stretches of
    this: one compiled pass per ratio works out each position once for all
    stretches (with numpy, positions and weights cost as much as the
    interpolation and needed ~36 MB of plans kept across uploads to save)."""

    def __init__(self, stretches: list[np.ndarray]) -> None:
        self.stretches = stretches
        self.lengths = np.array([len(pcm) for pcm in stretches], dtype=np.int64)
        width = int(self.lengths.max(initial=0)) + 1
        self._samples = np.zeros((len(stretches), width), dtype=np.float32)
        for row, pcm in zip(self._samples, stretches, strict=True):
            row[: len(pcm)] = pcm

    def resampled(self, ratio: float) -> list[np.ndarray]:
        """Each stretch resampled by ratio (itself at 1.0)."""
        if ratio == 1.0:
            return self.stretches
        counts = np.array(
            [max(int((n - 1) * ratio), 0) for n in self.lengths.tolist()], dtype=np.int64
        )
        out = np.empty((len(self.stretches), int(counts.max(initial=0))), dtype=np.int16)
        _interpolate(self._samples, counts, 1.0 / ratio, out)
        return [row[:n] for row, n in zip(out, counts.tolist(), strict=True)]


# Output samples per block of _interpolate: its positions and weights (12 bytes
# each) stay in L1 while every stretch reads them.
_INTERPOLATE_BLOCK = 512


@numba.njit(nogil=True, cache=True)
def _interpolate(samples, counts, step, out):  # pragma: no cover - compiled
    """out[s, i] for i < counts[s]: samples[s] linearly interpolated at i * step
    (see _Sources). Positions stay under each stretch's last sample, so right
    is a sample of the stretch. Positions are worked out once per block of
    outputs, then each stretch runs over the block in a loop of its own (one
    row read and written in order, no per-sample test of its length): a third
    less CPU than the stretches inside each output position's loop."""
    width = out.shape[1]
    lefts = np.empty(_INTERPOLATE_BLOCK, dtype=np.int64)
    weights = np.empty(_INTERPOLATE_BLOCK, dtype=np.float32)
    for first in range(0, width, _INTERPOLATE_BLOCK):
        end = min(first + _INTERPOLATE_BLOCK, width)
        for i in range(first, end):
            at = i * step
            left = np.uint64(at)
            lefts[i - first] = np.int64(left)
            weights[i - first] = np.float32(at - np.float64(left))
        for s in range(samples.shape[0]):
            row = samples[s]
            written = out[s]
            for i in range(first, min(end, counts[s])):
                left = lefts[i - first]
                a = row[left]
                written[i] = np.int16((row[left + 1] - a) * weights[i - first] + a)


def _resampled(pcm: np.ndarray, ratio: float) -> np.ndarray:
    """pcm resampled by ratio (see _Sources)."""
    return _Sources([pcm]).resampled(ratio)[0]


def _atempo(pcm: np.ndarray, factor: float) -> np.ndarray:
    """Mono s16 PCM at SAMPLE_RATE played `factor` times as fast, same pitch."""
    graph = av.filter.Graph()
    source = graph.add_abuffer(
        format="s16", sample_rate=SAMPLE_RATE, layout="mono", time_base=f"1/{SAMPLE_RATE}"
    )
    tempo = graph.add("atempo", f"{factor}")
    sink = graph.add("abuffersink")
    source.link_to(tempo)
    tempo.link_to(sink)
    graph.configure()
    frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
    frame.sample_rate = SAMPLE_RATE
    frame.pts = 0
    frame.time_base = Fraction(1, SAMPLE_RATE)
    graph.push(frame)
    graph.push(None)
    out = []
    while True:
        try:
            out.append(graph.pull().to_ndarray().reshape(-1))
        except (av.error.EOFError, BlockingIOError):
            break
    return np.concatenate(out) if out else np.zeros(0, np.int16)


def _fingerprint_pcm(pcm: np.ndarray, fingerprinter=None) -> np.ndarray:
    """Raw words of mono s16 PCM at SAMPLE_RATE; a fingerprinter passed in is
    started anew (a context serves one fingerprint at a time)."""
    if fingerprinter is None:
        fingerprinter = chromaprint.Fingerprinter(_ALGORITHM)
    fingerprinter.start(SAMPLE_RATE, 1)
    fingerprinter.feed(pcm.tobytes())
    return np.array(chromaprint.decode_fingerprint(fingerprinter.finish())[0], dtype=np.uint32)
