"""Where the sound of an upload changes: the parts a shifted search places its
stretches in (hashsvc/media/audio.py).

A re-upload may put a minute of other audio (music, a jingle, silence, other
speech) before the known track, so a stretch placed by position alone can lie
wholly in that intro. Its sound differs from the track's: measured on the
bench's speech over music beds (bench/audio.py), the long-term spectrum of the
16 s before and after the join differs by 8-11 dB (mean over 16 bands) after
60 s of music, 5-7 after noise, 1.5-5 after other speech (2-5 with the same
bed: the shift moves the bed too), while within one recording no two such
neighbours differ by more than 1.7. So an upload is split where the two sides
differ most, if by more than a threshold, and each part gets its own stretch;
an upload that sounds alike throughout keeps one (and its cost).

Loudness is left out (the median difference over the bands is removed), so a
louder chorus or a fade does not count as a change of content.
"""

from __future__ import annotations

import numpy as np

BLOCK_SECONDS = 2.0  # the spectrum is averaged per block; joins are placed on blocks
_FRAME = 1024  # FFT length (93 ms at 11025 Hz)...
_FRAME_STEP = 2048  # ...taken every 186 ms: a long-term average needs only half the audio
_BAND_EDGES_HZ = np.geomspace(100.0, 5000.0, 17)  # 16 bands, log-spaced over speech and music


def block_spectra(pcm: np.ndarray, sample_rate: int) -> np.ndarray:
    """(blocks, 16) mean power per band of each BLOCK_SECONDS of mono PCM."""
    block = int(BLOCK_SECONDS * sample_rate)
    n_blocks = len(pcm) // block
    frames_per_block = (block - _FRAME) // _FRAME_STEP + 1
    if n_blocks == 0:
        return np.zeros((0, len(_BAND_EDGES_HZ) - 1))
    # (blocks, frames per block, _FRAME) as a strided view of the PCM: one copy, to float32
    blocks = pcm[: n_blocks * block].reshape(n_blocks, block)
    windows = np.lib.stride_tricks.sliding_window_view(blocks, _FRAME, axis=1)
    frames = windows[:, : frames_per_block * _FRAME_STEP : _FRAME_STEP].astype(np.float32)
    frames = frames.reshape(n_blocks * frames_per_block, _FRAME)
    frames *= np.hanning(_FRAME).astype(np.float32)
    # float32 throughout (complex64 out of rfft): a shifted Match pays for this
    # on every upload, and dB differences of 2.5 need no more precision
    spectrum = np.fft.rfft(frames, axis=1)
    power = spectrum.real**2
    power += spectrum.imag**2
    # Each band is a run of neighbouring bins, summed by reduceat, not by a
    # matrix product: OpenBLAS would run that on threads that then spin
    # (9 ms of CPU per 120 s on 2 cores, against 0.2 ms on one thread).
    frequencies = np.fft.rfftfreq(_FRAME, 1 / sample_rate)
    # a bin exactly on an edge belongs to the band below it
    first_bins = np.searchsorted(frequencies, _BAND_EDGES_HZ, side="right")
    # a band with no bin (coarse bins at a high rate, or above Nyquist) is 0
    filled = np.diff(first_bins) > 0
    bands = np.zeros((len(power), len(filled)), dtype=np.float32)
    if filled.any():
        bands[:, filled] = np.add.reduceat(
            power[:, : first_bins[-1]], first_bins[:-1][filled], axis=1
        )
    spectra = bands.reshape(n_blocks, frames_per_block, -1).mean(axis=1)
    return spectra.astype(np.float64)  # best_join's cumulative sums run over minutes


def best_join(spectra: np.ndarray, context_blocks: int) -> tuple[int, float]:
    """(block, dB) where the context_blocks before and after differ most in
    spectral shape; (0, 0.0) when the audio is too short for two contexts."""
    n = len(spectra)
    if n < 2 * context_blocks or context_blocks < 1:
        return 0, 0.0
    total = np.concatenate([np.zeros((1, spectra.shape[1])), np.cumsum(spectra, axis=0)])
    joins = np.arange(context_blocks, n - context_blocks + 1)
    before = (total[joins] - total[joins - context_blocks]) / context_blocks
    after = (total[joins + context_blocks] - total[joins]) / context_blocks
    # +1: digital silence has no power in a band; 1 is far below any sound (int16 units)
    delta = 10 * np.log10(before + 1) - 10 * np.log10(after + 1)
    delta -= np.median(delta, axis=1, keepdims=True)  # loudness aside
    change = np.abs(delta).mean(axis=1)
    best = int(np.argmax(change))
    return int(joins[best]), float(change[best])


def parts(
    pcm: np.ndarray, sample_rate: int, min_part_seconds: float, change_db: float, max_parts: int
) -> list[tuple[int, int]]:
    """[start, end) sample ranges of the parts of pcm that sound different:
    split where the sound changes most, while it changes by more than
    change_db and there are fewer than max_parts; no part shorter than
    min_part_seconds. One part (all of pcm) when nothing changes."""
    block = int(BLOCK_SECONDS * sample_rate)
    spectra = block_spectra(pcm, sample_rate)
    context = max(1, int(np.ceil(min_part_seconds / BLOCK_SECONDS)))
    found = [(0, len(spectra))]  # in blocks
    while len(found) < max_parts:
        splits = []
        for k, (lo, hi) in enumerate(found):
            join, change = best_join(spectra[lo:hi], context)
            if change > change_db:
                splits.append((change, k, lo + join))
        if not splits:
            break
        _, k, join = max(splits)
        lo, hi = found[k]
        found[k : k + 1] = [(lo, join), (join, hi)]
    # back to samples; the last part keeps the tail shorter than a block
    ranges = [(lo * block, hi * block) for lo, hi in found]
    ranges[-1] = (ranges[-1][0], len(pcm))
    return ranges
