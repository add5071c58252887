"""The words of a raw Chromaprint fingerprint (hashsvc/media/audio.py makes
them): how much audio one word covers and which words can identify a
recording. The audio index and the matcher read fingerprints in the server
process, which never decodes audio, so this holds no decoder.
"""

from __future__ import annotations

import numpy as np

SAMPLE_RATE = 11025
HOP_SAMPLES = 1365  # Chromaprint's frame step (4096 - 2731) at SAMPLE_RATE
SECONDS_PER_WORD = HOP_SAMPLES / SAMPLE_RATE
# libchromaprint's word for digital silence (its own test vector Test2SilenceFp).
SILENCE_WORD = 627964279
# A run of this many identical words is a held tone, a hum or silence: not
# something that identifies a recording.
CONSTANT_RUN_WORDS = 3


def informative_mask(words: np.ndarray) -> np.ndarray:
    """True for words that can identify audio: not silence, not inside a run of
    CONSTANT_RUN_WORDS or more identical words."""
    words = np.asarray(words, dtype=np.uint32)
    mask = words != SILENCE_WORD
    if len(words) >= CONSTANT_RUN_WORDS:
        same_as_next = words[1:] == words[:-1]
        # A word is in a constant run when it and its neighbours (k-1 equalities
        # in a row) are equal; mark every word the run covers.
        k = CONSTANT_RUN_WORDS - 1
        run_starts = np.ones(len(same_as_next) - k + 1, dtype=bool)
        for i in range(k):
            run_starts &= same_as_next[i : len(same_as_next) - k + 1 + i]
        in_run = np.zeros(len(words), dtype=bool)
        for i in range(CONSTANT_RUN_WORDS):
            in_run[i : i + len(run_starts)] |= run_starts
        mask &= ~in_run
    return mask


# Query views for pitch- and tempo-shifted uploads (hashsvc/media/audio.py makes
# them, the matcher reads them): a stretch of the upload's PCM resampled by a
# ratio, fingerprinted like the original, and named by that ratio and where the
# stretch starts, so the matcher can map a match back into the upload's seconds.
SHIFT_VARIANT_PREFIX = "shift:"


def shift_variant(pitch_ratio: float, tempo_stretch: float = 1.0) -> str:
    """The variant name of a query view resampled by pitch_ratio (its pitch and
    speed divided by the ratio, so an upload pitched up by that ratio is heard
    at the known recording's pitch again), then time-stretched by tempo_stretch
    at the same pitch (ffmpeg's atempo: > 1 plays faster)."""
    name = f"{SHIFT_VARIANT_PREFIX}{pitch_ratio:.4f}"
    return name if tempo_stretch == 1.0 else f"{name}x{tempo_stretch:.4f}"


def parse_shift_variant(variant: str) -> tuple[float, float] | None:
    """(pitch ratio, tempo stretch) of a shifted query view, None for any other
    variant."""
    if not variant.startswith(SHIFT_VARIANT_PREFIX):
        return None
    pitch, _, stretch = variant[len(SHIFT_VARIANT_PREFIX) :].partition("x")
    try:
        ratios = float(pitch), float(stretch or 1.0)
    except ValueError:
        return None
    return ratios if all(0.5 <= r <= 2.0 for r in ratios) else None
