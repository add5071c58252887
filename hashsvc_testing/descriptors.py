"""Synthetic binary descriptors for the local-feature index's tests and bench: each near a word of
the vocabulary (a centroid with a few bits flipped), words drawn as often as they occur in real
pictures (the vocabulary's training counts), so posting lists have a realistic spread of lengths."""

from __future__ import annotations

from functools import cache

import numpy as np

from hashsvc.index.vocabulary import Vocabulary


def word_centroids(vocabulary: Vocabulary) -> np.ndarray:
    """(n_words, bytes) uint8: the fine centroids in word order."""
    return vocabulary.fine.reshape(vocabulary.n_words, vocabulary.descriptor_bytes)


def flipped(descriptors: np.ndarray, rate: float, rng: np.random.Generator) -> np.ndarray:
    """A copy with each bit flipped with probability `rate` (to 1/256)."""
    threshold = round(rate * 256)
    bits = rng.integers(0, 256, (*descriptors.shape, 8), dtype=np.uint8) < threshold
    return descriptors ^ np.packbits(bits, axis=-1)[..., 0]


@cache
def _popularity(vocabulary: Vocabulary) -> np.ndarray:
    # Each word as common as in the real pictures the vocabulary was trained on (plus one, so
    # that no word is impossible).
    cumulative = np.cumsum(vocabulary.word_counts + 1.0)
    return cumulative / cumulative[-1]


def word_draws(vocabulary: Vocabulary, rng: np.random.Generator, count: int) -> np.ndarray:
    """`count` words drawn as often as they occur in real pictures."""
    ranks = np.searchsorted(_popularity(vocabulary), rng.random(count), side="right")
    return np.minimum(ranks, vocabulary.n_words - 1)


def pictures(
    vocabulary: Vocabulary,
    rng: np.random.Generator,
    count: int,
    per_picture: int = 300,
    noise: float = 0.05,
) -> np.ndarray:
    """(count, per_picture, bytes) uint8: `count` pictures' descriptors."""
    centroids = word_centroids(vocabulary)
    words = word_draws(vocabulary, rng, count * per_picture)
    descriptors = flipped(centroids[words], noise, rng)
    return descriptors.reshape(count, per_picture, vocabulary.descriptor_bytes)


def altered_copy(
    descriptors: np.ndarray,
    vocabulary: Vocabulary,
    rng: np.random.Generator,
    bit_noise: float = 0.15,
    replaced: float = 0.5,
) -> np.ndarray:
    """A re-upload as the index sees it: every bit flipped with probability `bit_noise`, and a
    share `replaced` of the descriptors swapped for unrelated ones (new content, lost points)."""
    copy = flipped(descriptors, bit_noise, rng)
    n_new = int(len(copy) * replaced)
    where = rng.choice(len(copy), n_new, replace=False)
    copy[where] = pictures(vocabulary, rng, 1, n_new)[0]
    return copy
