"""Known pictures' local-feature descriptors in memory, searched for candidates by votes.

A query picture's binary descriptors (ORB or the like: a few hundred, strongest first) become
visual words of a trained vocabulary (scripts/train_vocabulary.py); every known picture that holds
one of those words gets a vote weighted by how rare the word is (idf), at most one vote per word,
and the sum is normalised by the square root of the picture's number of distinct words, so a
picture with many keypoints does not win by size alone. The best-scored pictures are candidates
only: the matcher verifies each geometrically (hashsvc/matching/local_geometry.py).

Words: two levels of k-majority centroids (COARSE x FINE, e.g. 1024 x 64 = 65,536), so a
descriptor's word costs COARSE + FINE Hamming comparisons (compiled: index/word_assign.py).
Only the `words_per_picture` strongest descriptors of a known picture are filed:
the weak ones add memory and noise more than votes.

Storage: postings word -> picture slot (uint32) in a few immutable CSR segments (WordPostings,
hashsvc/index/word_postings.py; words from hashsvc/index/vocabulary.py) and a small
appendable tail; slots map to the int64 signal ids (hashsvc.index.binary.signal_id). Adds go to the
tail (searchable at once); a full tail becomes a segment, and segments merge like a binary counter
(a linear merge of two word-sorted segments, no sort), so a one-by-one add costs O(log n) amortized.
Removal clears the slot's alive flag (never returned again at once); its postings are dropped when
its segment is next merged or the index compacts. Readers take no lock: a writer (one at a time)
builds new arrays and publishes them by swapping one reference.

Snapshot: one file, a magic line then numpy arrays (np.lib.format), checked on load: a corrupt or
truncated file or one made with another vocabulary raises ValueError (the service then rebuilds
from the store).
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from hashsvc.index.binary import signal_id
from hashsvc.index.vocabulary import Vocabulary, default_vocabulary
from hashsvc.index.word_postings import WordPostings

SNAPSHOT_MAGIC = b"HSVC-LF-INDEX-v1\n"

# The strongest descriptors of a known picture that are filed (the rest are kept for geometric
# verification only): 4 bytes of postings each. 400 since 2026-12-08 (200 before): a 30% crop
# or a 20-degree tilt shown 1.2-1.4x larger keeps few of the known's 200 strongest, and true
# copies of drawings scored 0.05-0.06 at place 16-31 of their candidates (bench/robustness.py
# --explain); with 400, +1 copy in 4 of 12 row-draws (README: Pyramid levels and the index).
# A snapshot filed with another number is rebuilt from the store (LiveIndex._load_snapshot).
DEFAULT_WORDS_PER_PICTURE = 400
# A word held by more than this share of the known pictures (a blank corner, a straight edge)
# says little and costs a long posting list: a query skips it.
DEFAULT_MAX_WORD_SHARE = 0.05
# ...but a word in fewer postings than this is never skipped: in a small index every word
# of a picture known twice (one poster in two sets) passed the share, and neither was found.
MIN_SKIPPED_WORD_POSTINGS = 1000
# Postings a query reads at most: its words with the shortest lists (the rarest, most telling
# ones) are read first, and the commonest are left out once this many postings are gathered.
# Bounds a query's cost whatever the index's size: at 1M pictures a query's ~450 words hold
# ~2.5M postings, most of them in common words that weigh little.
DEFAULT_MAX_POSTINGS_PER_QUERY = 1_000_000
# Postings appended before the tail becomes a segment: small, because a search scans the tail
# whole.
TAIL_POSTINGS = 1 << 16


@dataclass(frozen=True)
class _View:
    """What a search reads; published whole by the writer."""

    segments: tuple[WordPostings, ...]
    tail_words: np.ndarray  # uint32, first tail_len valid
    tail_slots: np.ndarray
    tail_len: int
    n_slots: int
    signal_ids: np.ndarray  # int64 per slot (capacity >= n_slots)
    alive: np.ndarray  # bool per slot; cleared in place by remove
    norms: np.ndarray  # float32 per slot: 1 / sqrt(distinct words)


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    """Positions of the k best positive scores, best first. A threshold scan (halved until k
    pass) instead of an argpartition over every picture: at 1M pictures that was most of a
    query's time."""
    best_score = float(scores.max()) if len(scores) else 0.0
    if best_score <= 0:
        return np.zeros(0, np.int64)
    threshold = best_score / 2
    candidates = np.flatnonzero(scores >= threshold)
    while len(candidates) < k and threshold > best_score * 1e-4:
        threshold /= 4
        candidates = np.flatnonzero(scores >= threshold)
    if len(candidates) < k:
        candidates = np.flatnonzero(scores > 0)
    if len(candidates) > k:
        candidates = candidates[np.argpartition(-scores[candidates], k - 1)[:k]]
    return candidates[np.argsort(-scores[candidates], kind="stable")]


class FeatureIndex:
    """Known pictures' descriptors -> candidate pictures by votes (see the module docstring)."""

    def __init__(
        self,
        vocabulary: Vocabulary | None = None,
        words_per_picture: int = DEFAULT_WORDS_PER_PICTURE,
        max_word_share: float = DEFAULT_MAX_WORD_SHARE,
        max_postings_per_query: int = DEFAULT_MAX_POSTINGS_PER_QUERY,
    ) -> None:
        if words_per_picture < 1:
            raise ValueError("words_per_picture must be at least 1")
        if not 0 < max_word_share <= 1:
            raise ValueError("max_word_share must be in (0, 1]")
        self.vocabulary = vocabulary or default_vocabulary()
        self.words_per_picture = words_per_picture
        self.max_word_share = max_word_share
        if max_postings_per_query < 1:
            raise ValueError("max_postings_per_query must be at least 1")
        self.max_postings_per_query = max_postings_per_query
        self._writer = threading.Lock()
        self._slot_of: dict[int, int] = {}
        self._view = _View(
            segments=(),
            tail_words=np.zeros(TAIL_POSTINGS, np.uint32),
            tail_slots=np.zeros(TAIL_POSTINGS, np.uint32),
            tail_len=0,
            n_slots=0,
            signal_ids=np.zeros(1024, np.int64),
            alive=np.zeros(1024, bool),
            norms=np.zeros(1024, np.float32),
        )

    @property
    def descriptor_bytes(self) -> int:
        return self.vocabulary.descriptor_bytes

    def __len__(self) -> int:
        return len(self._slot_of)

    def memory_bytes(self) -> int:
        """Bytes of the arrays held (the id map's Python objects are not counted: ~100 bytes a
        picture; bench/scale.py --local measures the process's growth as well)."""
        view = self._view
        arrays = [view.tail_words, view.tail_slots, view.signal_ids, view.alive, view.norms]
        return sum(s.nbytes for s in view.segments) + sum(a.nbytes for a in arrays)

    def _check(self, features: np.ndarray) -> np.ndarray:
        if not isinstance(features, np.ndarray) or features.dtype != np.uint8:
            raise ValueError("descriptors must be a uint8 numpy array")
        if features.ndim != 2 or features.shape[1] != self.descriptor_bytes:
            raise ValueError(
                f"descriptors must be (n, {self.descriptor_bytes}) bytes, not {features.shape}"
            )
        return features

    def words_of(self, features: Sequence[np.ndarray], limit: int | None) -> list[np.ndarray]:
        """Each picture's distinct words (of its `limit` strongest descriptors)."""
        checked = [self._check(f)[:limit] for f in features]
        if not checked:
            return []
        words = self.vocabulary.assign(np.concatenate(checked))
        bounds = np.cumsum([0] + [len(f) for f in checked])
        return [np.unique(words[bounds[i] : bounds[i + 1]]) for i in range(len(checked))]

    # -- writing ---------------------------------------------------------------------------

    def add(self, ids: Sequence[int], features: Sequence[np.ndarray]) -> None:
        """File pictures (their descriptors, strongest first) under their signal ids; an id
        already present is replaced. Searchable when this returns."""
        if len(ids) != len(features):
            raise ValueError(f"{len(ids)} ids for {len(features)} pictures")
        self.add_words(ids, self.words_of(features, self.words_per_picture))

    def add_words(self, ids: Sequence[int], words: Sequence[np.ndarray]) -> None:
        """add() for pictures already turned into their distinct words (words_of, e.g. in a
        hashing worker: assignment is the costly part of an add)."""
        ids = [int(i) for i in ids]
        if len(ids) != len(words):
            raise ValueError(f"{len(ids)} ids for {len(words)} pictures")
        if len(set(ids)) != len(ids):  # an id given twice: its last picture counts
            last = {sid: n for n, sid in enumerate(ids)}
            ids, words = list(last), [words[n] for n in last.values()]
        if not ids:
            return
        per_picture = [np.unique(np.asarray(w, dtype=np.int64)) for w in words]
        for picture_words in per_picture:
            if len(picture_words) and not (
                0 <= picture_words[0] and picture_words[-1] < self.vocabulary.n_words
            ):
                raise ValueError(f"words must be in [0, {self.vocabulary.n_words})")
        with self._writer:
            self._remove_locked(ids)
            view = self._grown(self._view, len(ids))
            first = view.n_slots
            slots = np.arange(first, first + len(ids), dtype=np.int64)
            counts = np.fromiter((len(w) for w in per_picture), np.int64, len(ids))
            view.signal_ids[slots] = ids
            view.norms[slots] = 1.0 / np.sqrt(np.maximum(counts, 1))
            all_words = np.concatenate(per_picture)
            posting_slots = np.repeat(slots, counts)
            view = self._appended(view, all_words, posting_slots, first + len(ids))
            view.alive[slots] = True
            for sid, slot in zip(ids, slots.tolist(), strict=True):
                self._slot_of[sid] = slot
            self._view = view

    def remove(self, ids: Sequence[int]) -> int:
        """Stop returning these pictures (at once); the number that were present."""
        with self._writer:
            return self._remove_locked([int(i) for i in ids])

    def remove_entry(self, entry_id: int) -> int:
        """Remove every picture (signal) of one entry, however many it has."""
        low, high = signal_id(entry_id, 0), signal_id(entry_id + 1, 0)
        with self._writer:
            view = self._view
            sids = view.signal_ids[: view.n_slots]
            found = np.flatnonzero((sids >= low) & (sids < high) & view.alive[: view.n_slots])
            return self._remove_locked(sids[found].tolist())

    def _remove_locked(self, ids: list[int]) -> int:
        view = self._view
        removed = [self._slot_of.pop(sid) for sid in ids if sid in self._slot_of]
        if not removed:
            return 0
        slots = np.asarray(removed, dtype=np.int64)
        view.alive[slots] = False
        view.norms[slots] = 0  # what a search reads: no score for it, at once
        self._maybe_compact()
        return len(removed)

    def _grown(self, view: _View, extra: int) -> _View:
        need = view.n_slots + extra
        if need <= len(view.alive):
            return view
        capacity = max(need, 2 * len(view.alive))

        def grow(array: np.ndarray) -> np.ndarray:
            bigger = np.zeros(capacity, array.dtype)
            bigger[: view.n_slots] = array[: view.n_slots]
            return bigger

        return _View(
            view.segments,
            view.tail_words,
            view.tail_slots,
            view.tail_len,
            view.n_slots,
            grow(view.signal_ids),
            grow(view.alive),
            grow(view.norms),
        )

    def _appended(self, view: _View, words: np.ndarray, slots: np.ndarray, n_slots: int) -> _View:
        segments, tail_words, tail_slots, tail_len = (
            view.segments,
            view.tail_words,
            view.tail_slots,
            view.tail_len,
        )
        if tail_len + len(words) <= len(tail_words):
            # Written past what any reader's view covers; published with the new tail_len.
            tail_words[tail_len : tail_len + len(words)] = words
            tail_slots[tail_len : tail_len + len(words)] = slots
            tail_len += len(words)
        else:
            n_words = self.vocabulary.n_words
            pending_words = np.concatenate([tail_words[:tail_len], words.astype(np.uint32)])
            pending_slots = np.concatenate([tail_slots[:tail_len], slots.astype(np.uint32)])
            segments = self._pushed(
                segments,
                WordPostings.from_pairs(pending_words.astype(np.int64), pending_slots, n_words),
                view.alive,
            )
            tail_words = np.zeros(TAIL_POSTINGS, np.uint32)
            tail_slots = np.zeros(TAIL_POSTINGS, np.uint32)
            tail_len = 0
        return _View(
            segments,
            tail_words,
            tail_slots,
            tail_len,
            n_slots,
            view.signal_ids,
            view.alive,
            view.norms,
        )

    @staticmethod
    def _pushed(
        segments: tuple[WordPostings, ...], segment: WordPostings, alive: np.ndarray
    ) -> tuple[WordPostings, ...]:
        # Binary-counter merging: a segment merges into the one before it while that one is not
        # more than twice its size, so there are O(log n) segments and each posting is copied
        # O(log n) times. New postings' slots are alive only after publication: keep them all.
        stack = list(segments)
        while stack and len(stack[-1]) <= 2 * len(segment):
            older = stack.pop()
            keep = alive.copy()
            keep[segment.slots] = True
            segment = older.merged(segment, keep)
        stack.append(segment)
        return tuple(stack)

    def _maybe_compact(self) -> None:
        """When dead slots outnumber live ones, rebuild: one segment of live postings, slots
        renumbered (their per-slot arrays and postings are then freed)."""
        view = self._view
        dead = view.n_slots - len(self._slot_of)
        if dead < max(1024, len(self._slot_of)):
            return
        self._view = self._compacted(view)

    def _compacted(self, view: _View) -> _View:
        n = view.n_slots
        keep = view.alive[:n]
        live_slots = np.flatnonzero(keep)
        segment = self._single_segment(view)
        if len(live_slots) < n:  # else every slot keeps its number
            renumber = (np.cumsum(keep, dtype=np.int64) - 1).astype(np.uint32)  # kept slots only
            segment = segment.filtered(keep, renumber)
        capacity = max(1024, len(live_slots))
        signal_ids = np.zeros(capacity, np.int64)
        signal_ids[: len(live_slots)] = view.signal_ids[live_slots]
        alive = np.zeros(capacity, bool)
        alive[: len(live_slots)] = True
        norms = np.zeros(capacity, np.float32)
        norms[: len(live_slots)] = view.norms[live_slots]
        self._slot_of = dict(
            zip(signal_ids[: len(live_slots)].tolist(), range(len(live_slots)), strict=True)
        )
        return _View(
            (segment,) if len(segment) else (),
            np.zeros(TAIL_POSTINGS, np.uint32),
            np.zeros(TAIL_POSTINGS, np.uint32),
            0,
            len(live_slots),
            signal_ids,
            alive,
            norms,
        )

    def _single_segment(self, view: _View) -> WordPostings:
        if len(view.segments) == 1 and not view.tail_len:
            return view.segments[0]
        n_words = self.vocabulary.n_words
        segment = WordPostings.from_pairs(
            view.tail_words[: view.tail_len].astype(np.int64),
            view.tail_slots[: view.tail_len],
            n_words,
        )
        for older in reversed(view.segments):
            segment = older.merged(segment)
        return segment

    # -- reading ---------------------------------------------------------------------------

    def search(self, features: Sequence[np.ndarray], top_k: int) -> list[list[tuple[int, float]]]:
        """Per query picture (its descriptors, strongest first): up to top_k (signal id, score)
        candidates, best first. Scores compare candidates of one query, nothing more."""
        if top_k < 1:
            raise ValueError("top_k must be at least 1")
        return self.search_words(self.words_of(features, None), top_k)

    def search_words(
        self, words: Sequence[np.ndarray], top_k: int
    ) -> list[list[tuple[int, float]]]:
        """search() for queries already turned into their distinct words (words_of)."""
        if top_k < 1:
            raise ValueError("top_k must be at least 1")
        view = self._view
        n_words = self.vocabulary.n_words
        per_query = [np.unique(np.asarray(w, dtype=np.int64)) for w in words]
        if any(len(w) and not (0 <= w[0] and w[-1] < n_words) for w in per_query):
            raise ValueError(f"words must be in [0, {n_words})")
        return [self._search_words(view, query_words, top_k) for query_words in per_query]

    def _search_words(self, view: _View, words: np.ndarray, top_k: int) -> list[tuple[int, float]]:
        n_alive = len(self._slot_of)
        if not n_alive or not len(words):
            return []
        # A word's postings, removed pictures' included until their segment merges: near
        # enough to its document frequency for weighting.
        tail_words = view.tail_words[: view.tail_len]
        freq = np.bincount(tail_words, minlength=self.vocabulary.n_words)[words]
        for segment in view.segments:
            freq += segment.starts[words + 1] - segment.starts[words]
        useful = (freq > 0) & (
            freq <= max(MIN_SKIPPED_WORD_POSTINGS, self.max_word_share * n_alive)
        )
        words, freq = words[useful], freq[useful]
        if not len(words):
            return []
        if int(freq.sum()) > self.max_postings_per_query:
            rarest_first = np.argsort(freq, kind="stable")
            within = np.cumsum(freq[rarest_first]) <= self.max_postings_per_query
            chosen = np.sort(rarest_first[within])
            words, freq = words[chosen], freq[chosen]
            if not len(words):
                return []
        # removed pictures' postings are still counted: a word cannot be in more pictures
        # than are alive (else a picture known twice, one removed, weighed nothing: idf 0)
        idf = np.log((n_alive + 1) / np.minimum(freq, n_alive)).astype(np.float32)
        n = view.n_slots
        scores = np.zeros(n, np.float32)  # float32 in place: cheaper than a float64 bincount
        for segment in view.segments:
            segment.vote(words, idf, scores)
        if view.tail_len:
            weight_of_word = np.zeros(self.vocabulary.n_words, np.float32)
            weight_of_word[words] = idf
            tail_weights = weight_of_word[tail_words]
            hit = tail_weights > 0
            np.add.at(scores, view.tail_slots[: view.tail_len][hit], tail_weights[hit])
        scores *= view.norms[:n]  # a removed picture's norm is 0
        best = _top(scores, top_k)
        scale = 1.0 / math.sqrt(float(idf.sum()))
        return [
            (sid, score * scale)
            for sid, score in zip(
                view.signal_ids[best].tolist(), scores[best].astype(float).tolist(), strict=True
            )
        ]

    # -- snapshots ---------------------------------------------------------------------------

    def save(self, path: str | os.PathLike) -> None:
        """Write a snapshot: live pictures only, one segment (atomically: a crash mid-write
        leaves the previous file)."""
        with self._writer:
            compact = self._compacted(self._view)
            self._view = compact  # same content, smaller: keep it
        n = compact.n_slots
        segment = (
            compact.segments[0]
            if compact.segments
            else WordPostings(
                np.zeros(self.vocabulary.n_words + 1, np.int64), np.zeros(0, np.uint32)
            )
        )
        settings = f"{self.vocabulary.fingerprint} {self.words_per_picture} {self.max_word_share!r}"
        header = np.frombuffer(settings.encode(), dtype=np.uint8)
        tmp = f"{os.fspath(path)}.tmp"
        with open(tmp, "wb") as out:
            out.write(SNAPSHOT_MAGIC)
            for array in (
                header,
                compact.signal_ids[:n],
                compact.norms[:n],
                segment.starts,
                segment.slots,
            ):
                np.lib.format.write_array(out, np.ascontiguousarray(array), allow_pickle=False)
        os.replace(tmp, path)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        vocabulary: Vocabulary | None = None,
        max_postings_per_query: int = DEFAULT_MAX_POSTINGS_PER_QUERY,
    ) -> FeatureIndex:
        """Read a snapshot written by save(); ValueError if it is not one, is damaged, or was
        made with another vocabulary. What was filed (words per picture, word share) comes from
        the snapshot; how queries read it is given here."""
        vocabulary = vocabulary or default_vocabulary()
        try:
            with open(path, "rb") as src:
                if src.read(len(SNAPSHOT_MAGIC)) != SNAPSHOT_MAGIC:
                    raise ValueError(f"{path} is not a local-feature index snapshot")
                arrays = [np.lib.format.read_array(src, allow_pickle=False) for _ in range(5)]
                if src.read(1):
                    raise ValueError(f"snapshot {path} has trailing bytes")
        except (EOFError, OSError, ValueError) as exc:  # numpy says ValueError when cut short
            raise ValueError(f"snapshot {path} is truncated or unreadable: {exc}") from exc
        header, signal_ids, norms, starts, slots = arrays
        try:
            fingerprint, words_per_picture, max_word_share = bytes(header).decode().split(" ")
            index = cls(
                vocabulary, int(words_per_picture), float(max_word_share), max_postings_per_query
            )
        except (UnicodeDecodeError, ValueError) as exc:
            raise ValueError(f"snapshot {path} has a damaged header") from exc
        if fingerprint != vocabulary.fingerprint:
            raise ValueError(f"snapshot {path} was made with another vocabulary")
        n = len(signal_ids)
        n_words = vocabulary.n_words
        if (
            signal_ids.dtype != np.int64
            or norms.dtype != np.float32
            or starts.dtype != np.int64
            or slots.dtype != np.uint32
            or norms.shape != (n,)
            or starts.shape != (n_words + 1,)
            or slots.ndim != 1
            or starts[0] != 0
            or starts[-1] != len(slots)
            or (np.diff(starts) < 0).any()
            or (len(slots) and int(slots.max()) >= n)
            or len(np.unique(signal_ids)) != n
        ):
            raise ValueError(f"snapshot {path} is damaged (arrays do not fit together)")
        segment = WordPostings(starts, slots)
        capacity = max(1024, n)
        grown = []
        for array in (signal_ids, norms):
            bigger = np.zeros(capacity, array.dtype)
            bigger[:n] = array
            grown.append(bigger)
        alive = np.zeros(capacity, bool)
        alive[:n] = True
        index._slot_of = dict(zip(signal_ids.tolist(), range(n), strict=True))
        index._view = _View(
            (segment,) if len(slots) else (),
            np.zeros(TAIL_POSTINGS, np.uint32),
            np.zeros(TAIL_POSTINGS, np.uint32),
            0,
            n,
            grown[0],
            alive,
            grown[1],
        )
        return index
