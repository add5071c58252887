"""Postings of visual words -> picture slots, sorted by word (CSR), immutable: the segments of
the local-feature index (hashsvc/index/local_features.py). Merges and filters go block by block
so that their temporaries stay small beside the postings at millions of pictures."""

from __future__ import annotations

import numba
import numpy as np

# Postings a merge handles at once (bounds its temporaries to ~32 bytes each).
MERGE_BLOCK = 1 << 22


class WordPostings:
    """Immutable postings sorted by word: slots[starts[w]:starts[w + 1]] hold word w."""

    __slots__ = ("starts", "slots")

    def __init__(self, starts: np.ndarray, slots: np.ndarray) -> None:
        self.starts = starts  # int64 (n_words + 1,)
        self.slots = slots  # uint32

    @classmethod
    def from_pairs(cls, words: np.ndarray, slots: np.ndarray, n_words: int) -> WordPostings:
        order = np.argsort(words, kind="stable")
        counts = np.bincount(words, minlength=n_words)
        starts = np.zeros(n_words + 1, dtype=np.int64)
        np.cumsum(counts, out=starts[1:])
        return cls(starts, slots[order].astype(np.uint32, copy=False))

    def __len__(self) -> int:
        return len(self.slots)

    @property
    def nbytes(self) -> int:
        return self.starts.nbytes + self.slots.nbytes

    def word_blocks(self) -> list[tuple[int, int, np.ndarray]]:
        """(first word, end word, each posting's word) over runs of whole words of about
        MERGE_BLOCK postings: merges and filters work block by block, so their temporaries
        stay small beside the postings themselves."""
        n_words = len(self.starts) - 1
        cuts = np.searchsorted(self.starts, np.arange(0, len(self) + 1, MERGE_BLOCK), "right") - 1
        bounds = np.unique(np.concatenate([[0], np.clip(cuts, 0, n_words), [n_words]]))
        blocks = []
        for first, end in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
            lengths = np.diff(self.starts[first : end + 1])
            blocks.append((first, end, np.repeat(np.arange(first, end, dtype=np.int64), lengths)))
        return blocks

    def vote(self, words: np.ndarray, weights: np.ndarray, scores: np.ndarray) -> None:
        """scores[slot] += the word's weight for every slot filed under `words` (unique), in
        place (compiled): what gathering the slots and np.add.at did, in the same order (the
        same float32 sums), without the gathered arrays: a query's votes at 100k pictures
        took ~1.8 ms, now ~0.4 (tests/test_local_cost.py)."""
        _vote(self.starts, self.slots, words, weights, scores)

    def merged(self, other: WordPostings, keep: np.ndarray | None = None) -> WordPostings:
        """Both segments' postings in one (a linear merge: both are sorted by word), without the
        slots for which `keep` (indexed by slot) is False."""
        starts = self.starts + other.starts
        slots = np.empty(len(self) + len(other), dtype=np.uint32)
        # Within a word, this segment's postings come first, then the other's.
        for source, offsets in ((self, other.starts[:-1]), (other, self.starts[1:])):
            for first, _, words in source.word_blocks():
                begin = int(source.starts[first])
                where = np.arange(begin, begin + len(words), dtype=np.int64) + offsets[words]
                slots[where] = source.slots[begin : begin + len(words)]
        merged = WordPostings(starts, slots)
        return merged if keep is None else merged.filtered(keep)

    def filtered(self, keep: np.ndarray, renumber: np.ndarray | None = None) -> WordPostings:
        """Without the slots for which `keep` is False; slots renamed through `renumber`."""
        mask = keep[self.slots]
        if renumber is None and mask.all():
            return self
        counts = np.zeros(len(self.starts) - 1, dtype=np.int64)
        for first, end, words in self.word_blocks():
            begin = int(self.starts[first])
            kept = words[mask[begin : begin + len(words)]]
            counts[first:end] = np.bincount(kept - first, minlength=end - first)
        starts = np.zeros(len(self.starts), dtype=np.int64)
        np.cumsum(counts, out=starts[1:])
        slots = self.slots[mask]
        if renumber is not None:
            slots = renumber[slots]
        return WordPostings(starts, slots)


@numba.njit(nogil=True, cache=True)
def _vote(
    starts: np.ndarray,
    slots: np.ndarray,
    words: np.ndarray,
    weights: np.ndarray,
    scores: np.ndarray,
) -> None:
    for i in range(len(words)):
        weight = weights[i]
        for p in range(starts[words[i]], starts[words[i] + 1]):
            scores[slots[p]] += weight
