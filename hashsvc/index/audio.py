"""Known audio tracks in memory, searched for aligned stretches of a query.

The method is AcoustID's: every informative word of a known track is filed
under its top KEY_BITS bits; a query's words look up their keys, each hit
votes for (track, known position - query position), and the best-voted offsets
are verified by aligning the two fingerprints word by word and scoring the bit
error rate (BER). Re-encoding flips a few of a word's 32 bits, so many aligned
words keep their top bits: with 24 key bits, 28-70% of aligned words of an MP3
at 64 kbps, Vorbis q0, a 16 kHz resample or a noisy copy still agree, which is
plenty of votes, while an unrelated recording scores a BER of 0.3-0.5.

Verification keeps the longest stretch where a sliding ~2 s window stays under
max_ber, so a known track preceded or followed by other audio (or an excerpt)
is reported with its aligned ranges. Words of silence and constant stretches
(held tones, hum) are neither filed nor counted: they would align with any
other silence.

Storage is a few immutable segments (sorted key -> position postings over the
concatenated words of their tracks) and copy-on-write bookkeeping: searches
take no lock and never wait for a writer; writers are serialized, build a new
segment outside any reader's way and publish it by swapping one reference.
Removal forgets the track at once (its postings are skipped) and its words are
dropped when its segment is next merged. Segments merge like a binary counter,
so one-by-one adds cost O(log n) sorts per word amortized; `add_many` builds
one segment for a bulk load or a snapshot restore.

Shifted search (`search_shifted`): a query view resampled to the known pitch
(hashsvc/media/audio.py) may still run faster or slower than the known track,
so its hits vote on (track, rate, offset) over a grid of rates, known words per
query word, and the best are verified word by word along that line. The same
postings serve both searches; nothing is stored for it.

Memory: 4 bytes per word for the words, 4 for the posting and, in segments
with more than CSR_MIN_POSTINGS postings, 64 MiB of bucket offsets instead of
a 4-byte key per posting. 100k tracks of 3 minutes are 145M words: ~1.2 GB
(bench/audio.py measures it; a build peaks at about twice that).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from hashsvc.media.audio_words import (
    CONSTANT_RUN_WORDS,
    SECONDS_PER_WORD,
    SILENCE_WORD,
    informative_mask,
)

# 24 bits: 16M buckets, ~9 postings each at 145M words, so a query's lookups
# stay cheap at 100k tracks (20 bits: 3x slower there), while 28-55% of the
# aligned words of the harshest transforms still keep their top 24 bits.
KEY_BITS = 24
# Chosen from bench/audio.py: true matches of every transform family score a
# BER of 0.035 (median) to 0.09 (worst: noise at SNR 0 dB); the closest any
# unrelated upload came (other speech, same language and voice, the very same
# background bed) was 0.26 over 3 s. 0.15 sits between, nearer the matches
# because with 100k known tracks the unrelated tail reaches lower than with 12.
DEFAULT_MAX_BER = 0.15
DEFAULT_MIN_SECONDS = 5.0
# Offsets with fewer votes are not worth aligning.
MIN_VOTES = 3
# Best-voted offsets aligned per query.
MAX_CANDIDATES = 24
# A key with more postings than this (a near-constant word common to many
# tracks) costs much and tells little; the query's other words decide.
MAX_POSTINGS_PER_KEY = 5_000
# Sliding window for the BER of an alignment: ~2 s, the span one word describes.
WINDOW_WORDS = 16
# Rates (known words per query word) the shifted search votes on: +-16%, the
# tempo changes it is asked to find, 1% apart, so over a 20 s view (160 words)
# a rate between two grid points drifts under a word.
SHIFT_RATES = tuple(round(0.84 + 0.01 * k, 2) for k in range(33))
# Votes a shifted line needs to be aligned: a view's words keep their top 24
# bits less often than a plain copy's (BER 0.10-0.15: 2-8% of them), and two
# random hits of one track rarely fall on one line of a rate within +-16%.
SHIFT_MIN_VOTES = 2
# Best-voted (track, rate, offset) triples aligned per shifted view.
SHIFT_MAX_CANDIDATES = 8
# Views searched in one pass, and lines screened in one: the default views of
# an upload (126 for two parts) in one, while a configuration of many more
# (up to 20 stretches x 405 views) or a retro-hunt of a record holding many
# is worked through in passes whose arrays stay a few MB.
SHIFT_VIEWS_PER_PASS = 128
SCREEN_LINES_PER_PASS = 1024
# From this size bucket offsets (4 bytes per bucket) cost less than keys (4 per posting).
CSR_MIN_POSTINGS = 1 << KEY_BITS

_KEY_SHIFT = 32 - KEY_BITS
_SNAPSHOT_FORMAT = 1


@dataclass(frozen=True)
class AudioAlignment:
    """A stretch of the query that is a stretch of a known track (seconds)."""

    track_id: int
    query_start: float
    known_start: float
    duration: float
    ber: float  # bit error rate over the aligned informative words, 0..1
    votes: int  # key hits at this offset: how strongly the lookup pointed here
    # Shifted search: known seconds per query second along the alignment, and
    # the known track's seconds covered (duration is the query's).
    rate: float = 1.0
    known_duration: float | None = None
    # Set by a caller that searched a shifted view: the upload's pitch over
    # the known track's (the view was resampled by it), and that it was one.
    pitch_ratio: float = 1.0
    shifted: bool = False


class _Segment:
    """Immutable postings over the concatenated words of some tracks."""

    def __init__(self, slots: np.ndarray, track_words: list[np.ndarray]) -> None:
        self.slots = np.asarray(slots, dtype=np.int64)
        lengths = np.fromiter((len(w) for w in track_words), dtype=np.int64, count=len(slots))
        self.starts = np.zeros(len(slots) + 1, dtype=np.int64)
        np.cumsum(lengths, out=self.starts[1:])
        self.words = (
            np.concatenate(track_words).astype(np.uint32, copy=False)
            if track_words
            else np.zeros(0, np.uint32)
        )
        informative = np.concatenate([informative_mask(w) for w in track_words] or [[]])
        positions = np.flatnonzero(informative).astype(np.uint32)
        # Sort (key, position) pairs packed in one uint64: in place, no int64
        # argsort permutation beside them (half the peak memory of a build).
        packed = (self.words[positions] >> _KEY_SHIFT).astype(np.uint64) << np.uint64(32)
        packed |= positions
        del positions
        packed.sort()
        self.positions = (packed & np.uint64(0xFFFFFFFF)).astype(np.uint32)
        sorted_keys = (packed >> np.uint64(32)).astype(np.uint32)
        del packed
        if len(self.positions) >= CSR_MIN_POSTINGS:
            self.bucket_starts = np.searchsorted(
                sorted_keys, np.arange((1 << KEY_BITS) + 1, dtype=np.uint32)
            ).astype(np.uint32)
            self.keys = None
        else:
            self.bucket_starts = None
            self.keys = sorted_keys

    @property
    def nbytes(self) -> int:
        parts = [self.slots, self.starts, self.words, self.positions]
        parts.append(self.keys if self.keys is not None else self.bucket_starts)
        return sum(p.nbytes for p in parts)

    def lookup(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Posting ranges [lo, hi) of each key."""
        if self.keys is None:
            return (
                self.bucket_starts[keys].astype(np.int64),
                self.bucket_starts[keys + 1].astype(np.int64),
            )
        return (
            np.searchsorted(self.keys, keys, side="left"),
            np.searchsorted(self.keys, keys, side="right"),
        )

    def track_words(self, local: int) -> np.ndarray:
        return self.words[self.starts[local] : self.starts[local + 1]]


class AudioIndex:
    def __init__(self) -> None:
        # Published state, replaced (never mutated) by writers; readers copy the
        # references they need once per search.
        self._segments: tuple[_Segment, ...] = ()
        self._track_of_slot: dict[int, int] = {}  # live slots only
        self._slot_of_track: dict[int, int] = {}
        self._words_of_track: dict[int, np.ndarray] = {}  # views into segments
        self._next_slot = 0
        self._write_lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._slot_of_track)

    @property
    def nbytes(self) -> int:
        return sum(s.nbytes for s in self._segments)

    def add(self, track_id: int, words) -> None:
        """Add or replace one track; adding the same words again changes nothing."""
        self.add_many([(track_id, words)])

    def add_many(self, tracks: Iterable[tuple[int, np.ndarray]]) -> None:
        with self._write_lock:
            batch: dict[int, np.ndarray] = {}
            for track_id, words in tracks:
                words = np.asarray(words, dtype=np.uint32)
                known = self._words_of_track.get(track_id)
                if known is not None and np.array_equal(known, words):
                    continue
                batch[int(track_id)] = words
            if not batch:
                return
            slots = np.arange(self._next_slot, self._next_slot + len(batch), dtype=np.int64)
            self._next_slot += len(batch)
            segment = _Segment(slots, list(batch.values()))
            track_of_slot = dict(self._track_of_slot)
            slot_of_track = dict(self._slot_of_track)
            words_of_track = dict(self._words_of_track)
            for local, (slot, track_id) in enumerate(zip(slots.tolist(), batch, strict=True)):
                old = slot_of_track.get(track_id)
                if old is not None:
                    del track_of_slot[old]
                track_of_slot[slot] = track_id
                slot_of_track[track_id] = slot
                words_of_track[track_id] = segment.track_words(local)
            segments = self._merged((*self._segments, segment), track_of_slot, words_of_track)
            self._publish(segments, track_of_slot, slot_of_track, words_of_track)

    def remove(self, track_id: int) -> bool:
        with self._write_lock:
            slot = self._slot_of_track.get(track_id)
            if slot is None:
                return False
            track_of_slot = dict(self._track_of_slot)
            slot_of_track = dict(self._slot_of_track)
            words_of_track = dict(self._words_of_track)
            del track_of_slot[slot], slot_of_track[track_id], words_of_track[track_id]
            self._publish(self._segments, track_of_slot, slot_of_track, words_of_track)
            return True

    def _publish(self, segments, track_of_slot, slot_of_track, words_of_track) -> None:
        # A search reads _track_of_slot after _segments: publishing the dicts
        # first means a slot it finds in a segment is known, or was removed.
        self._track_of_slot = track_of_slot
        self._slot_of_track = slot_of_track
        self._words_of_track = words_of_track
        self._segments = segments

    def _merged(self, segments, track_of_slot, words_of_track) -> tuple[_Segment, ...]:
        """Merge the newest segments while the newest is at least as large as the
        one before it (a binary counter), dropping removed tracks' words."""
        segments = list(segments)
        while len(segments) >= 2 and len(segments[-1].words) >= len(segments[-2].words) // 2:
            newer, older = segments.pop(), segments.pop()
            live = [
                (slot, track_of_slot[slot])
                for seg in (older, newer)
                for slot in seg.slots.tolist()
                if slot in track_of_slot
            ]
            merged = _Segment(
                np.array([slot for slot, _ in live], dtype=np.int64),
                [words_of_track[track_id] for _, track_id in live],
            )
            for local, (_, track_id) in enumerate(live):
                words_of_track[track_id] = merged.track_words(local)
            segments.append(merged)
        return tuple(segments)

    def search(
        self,
        words,
        max_ber: float = DEFAULT_MAX_BER,
        min_seconds: float = DEFAULT_MIN_SECONDS,
    ) -> list[AudioAlignment]:
        """Aligned stretches of known tracks in the query, longest first; at
        most one per track and stretch of the query."""
        query = np.asarray(words, dtype=np.uint32)
        segments = self._segments
        track_of_slot = self._track_of_slot
        query_informative = informative_mask(query)
        query_positions = np.flatnonzero(query_informative)
        if len(query_positions) * SECONDS_PER_WORD < min_seconds:
            return []
        query_keys = query[query_positions] >> _KEY_SHIFT
        candidates: list[tuple[int, int, int, np.ndarray]] = []  # votes, offset, track, words
        for segment in segments:
            candidates += self._vote(segment, query_keys, query_positions, track_of_slot)
        candidates.sort(key=lambda c: -c[0])
        alignments: list[AudioAlignment] = []
        for votes, offset, track_id, known in candidates[:MAX_CANDIDATES]:
            found = _align(query, query_informative, known, offset, max_ber)
            if found is None:
                continue
            start, end, ber, informative_words = found
            if informative_words * SECONDS_PER_WORD < min_seconds:
                continue
            alignments.append(
                AudioAlignment(
                    track_id=track_id,
                    query_start=round(start * SECONDS_PER_WORD, 3),
                    known_start=round((start + offset) * SECONDS_PER_WORD, 3),
                    duration=round((end - start) * SECONDS_PER_WORD, 3),
                    ber=round(ber, 4),
                    votes=votes,
                )
            )
        return _distinct(alignments)

    @staticmethod
    def _gather_hits(segment, query_keys):
        """Every posting of every query word's key, as (position in the
        segment's words, index of the query word), or None when no key has a
        usable posting list."""
        lo, hi = segment.lookup(query_keys)
        counts = hi - lo
        useful = (counts > 0) & (counts <= MAX_POSTINGS_PER_KEY)
        lo, counts = lo[useful], counts[useful]
        total = int(counts.sum())
        if total == 0:
            return None
        # Ragged gather: for each query word, every posting of its key.
        first = np.repeat(lo - np.cumsum(counts) + counts, counts)
        hits = segment.positions[first + np.arange(total)].astype(np.int64)
        return hits, np.repeat(np.flatnonzero(useful), counts)

    @staticmethod
    def _gather(segment, query_keys, query_positions):
        """_gather_hits as (track within the segment, position in the known
        track, position in the query)."""
        gathered = AudioIndex._gather_hits(segment, query_keys)
        if gathered is None:
            return None
        hits, word = gathered
        local = np.searchsorted(segment.starts, hits, side="right") - 1
        return local, hits - segment.starts[local], query_positions[word]

    @staticmethod
    def _vote(segment, query_keys, query_positions, track_of_slot):
        gathered = AudioIndex._gather(segment, query_keys, query_positions)
        if gathered is None:
            return []
        local, known_pos, hit_qpos = gathered
        offsets = known_pos - hit_qpos
        # One integer per (track, offset) pair; offsets lie within +-2**31.
        pairs, votes = np.unique((local << 32) + (offsets + (1 << 31)), return_counts=True)
        strong = np.flatnonzero(votes >= MIN_VOTES)
        best = strong[np.argsort(-votes[strong], kind="stable")[:MAX_CANDIDATES]]
        found = []
        for pair, n in zip(pairs[best].tolist(), votes[best].tolist(), strict=True):
            track_local, offset = pair >> 32, (pair & 0xFFFFFFFF) - (1 << 31)
            track_id = track_of_slot.get(int(segment.slots[track_local]))
            if track_id is not None:  # else removed since
                found.append((n, offset, track_id, segment.track_words(track_local)))
        return found

    def search_shifted(
        self,
        words,
        max_ber: float = DEFAULT_MAX_BER,
        min_seconds: float = DEFAULT_MIN_SECONDS,
        rates: tuple[float, ...] = SHIFT_RATES,
    ) -> list[AudioAlignment]:
        """search() for a query that may run at another rate than the known
        track (a shifted view): offsets are voted on per rate of `rates`."""
        return self.search_shifted_views([words], max_ber, min_seconds, rates)[0]

    def search_shifted_views(
        self,
        views: Sequence,
        max_ber: float = DEFAULT_MAX_BER,
        min_seconds: float = DEFAULT_MIN_SECONDS,
        rates: tuple[float, ...] = SHIFT_RATES,
    ) -> list[list[AudioAlignment]]:
        """search_shifted() of each view, in one pass: the views of an upload
        (63-126 of them) share one lookup, one gather, one vote and one
        screening of their candidate lines, where a pass per view paid ~40
        array operations' fixed cost each (most of a view's search at 100k
        known tracks). Each view still gets its own SHIFT_MAX_CANDIDATES best
        lines, so the alignments are those of searching it alone."""
        if len(views) > SHIFT_VIEWS_PER_PASS:
            return [
                found
                for first in range(0, len(views), SHIFT_VIEWS_PER_PASS)
                for found in self.search_shifted_views(
                    views[first : first + SHIFT_VIEWS_PER_PASS], max_ber, min_seconds, rates
                )
            ]
        queries = [np.asarray(words, dtype=np.uint32) for words in views]
        results: list[list[AudioAlignment]] = [[] for _ in queries]
        segments = self._segments
        track_of_slot = self._track_of_slot
        informative = [informative_mask(query) for query in queries]
        positions = [np.flatnonzero(mask) for mask in informative]
        searched = [i for i, p in enumerate(positions) if len(p) * SECONDS_PER_WORD >= min_seconds]
        if not searched:
            return results
        query_positions = np.concatenate([positions[i] for i in searched])
        query_views = np.repeat(
            np.asarray(searched, dtype=np.int64), [len(positions[i]) for i in searched]
        )
        query_keys = np.concatenate([queries[i][positions[i]] >> _KEY_SHIFT for i in searched])
        rate_grid = np.asarray(rates, dtype=np.float64)
        candidates: dict[int, list] = {i: [] for i in searched}  # votes, rate, offset, track, words
        for segment in segments:
            for view, found in self._vote_rates(
                segment, query_keys, query_positions, query_views, rate_grid, track_of_slot
            ):
                candidates[view] += found
        lines = []  # (view, (votes, rate, offset, track, words))
        for view in searched:
            best = sorted(candidates[view], key=lambda c: -c[0])[:SHIFT_MAX_CANDIDATES]
            lines += [(view, c) for c in best]
        worth_aligning = _good_windows(
            queries, informative, [(view, c[4], c[2], c[1]) for view, c in lines], max_ber
        )
        for (view, (votes, rate, offset, track_id, known)), worth in zip(
            lines, worth_aligning, strict=True
        ):
            if not worth:
                continue
            found = _align_at_rate(queries[view], informative[view], known, offset, rate, max_ber)
            alignment = _line_alignment(track_id, found, offset, rate, votes, min_seconds)
            if alignment is not None:
                results[view].append(alignment)
        return [_distinct(alignments) for alignments in results]

    def align_line(
        self,
        track_id: int,
        words,
        offset: float,
        rate: float,
        max_ber: float = DEFAULT_MAX_BER,
        min_seconds: float = DEFAULT_MIN_SECONDS,
    ) -> AudioAlignment | None:
        """The longest well-aligned stretch of a query along a given line of a
        known track (query word i = known word offset + i * rate), or None: a
        line another view of the same audio found, tried on this view."""
        known = self._words_of_track.get(track_id)
        query = np.asarray(words, dtype=np.uint32)
        if known is None or not len(query):
            return None
        found = _align_at_rate(query, informative_mask(query), known, offset, rate, max_ber)
        return _line_alignment(track_id, found, offset, rate, 0, min_seconds)

    def align_lines(
        self,
        views: Sequence,
        lines: Sequence[tuple[int, int, float, float]],
        max_ber: float = DEFAULT_MAX_BER,
        min_seconds: float = DEFAULT_MIN_SECONDS,
    ) -> list[AudioAlignment | None]:
        """align_line() for each (view index, track id, offset, rate) of
        `lines` in views[view index]: the lines screened together first
        (_good_windows, exact), so the many that align nowhere cost no
        alignment each."""
        queries = [np.asarray(words, dtype=np.uint32) for words in views]
        informative = [informative_mask(query) for query in queries]
        words_of_track = self._words_of_track
        known = [words_of_track.get(track_id) for _, track_id, _, _ in lines]
        screened = [
            (view, words, offset, rate)
            for (view, _, offset, rate), words in zip(lines, known, strict=True)
            if words is not None
        ]
        worth = iter(_good_windows(queries, informative, screened, max_ber))
        found: list[AudioAlignment | None] = []
        for (view, track_id, offset, rate), words in zip(lines, known, strict=True):
            if words is None or not next(worth) or not len(queries[view]):
                found.append(None)
                continue
            aligned = _align_at_rate(queries[view], informative[view], words, offset, rate, max_ber)
            found.append(_line_alignment(track_id, aligned, offset, rate, 0, min_seconds))
        return found

    @staticmethod
    def _vote_rates(segment, query_keys, query_positions, query_views, rate_grid, track_of_slot):
        """(view, [(votes, rate, offset, track id, known words), ...]) per
        view with a line of SHIFT_MIN_VOTES in this segment: its
        SHIFT_MAX_CANDIDATES best, most votes first, ties in (track, rate,
        offset) order."""
        gathered = AudioIndex._gather_hits(segment, query_keys)
        if gathered is None:
            return []
        hits, word = gathered
        hit_qpos, hit_view = query_positions[word], query_views[word]
        # Two hits of one view on one line at a rate r of the grid have rate-1
        # offsets (known - query position) at most |1 - r| x the view's length
        # + 1 (rounding) apart: only hits with another of their view that
        # close can be part of a line worth aligning, and the rate grid (33
        # times the work) runs on those alone. Offsets over the segment's
        # concatenated words, so hits of two neighbouring tracks may pass too
        # (the vote below tells the tracks apart).
        spread = int(np.abs(rate_grid - 1).max(initial=0) * (int(query_positions.max()) + 1)) + 1
        rough = (hit_view << 40) + (hits - hit_qpos + (1 << 32))
        order = np.argsort(rough, kind="stable")
        gaps = np.diff(rough[order]) <= spread
        close = np.zeros(len(order), dtype=bool)
        close[1:] |= gaps
        close[:-1] |= gaps
        kept = order[close]
        if not len(kept):
            return []
        hits, hit_view = hits[kept], hit_view[kept]
        hit_qpos = hit_qpos[kept].astype(np.float64)
        local = np.searchsorted(segment.starts, hits, side="right") - 1
        known_pos = hits - segment.starts[local]
        # (view, track) pairs numbered, so one integer holds a whole line.
        pairs, pair_of_hit = np.unique((hit_view << 32) + local, return_inverse=True)
        # (hits x rates): the offset each hit implies at each rate.
        offsets = known_pos[:, None] - np.rint(hit_qpos[:, None] * rate_grid[None, :]).astype(
            np.int64
        )
        rate_index = np.broadcast_to(np.arange(len(rate_grid), dtype=np.int64), offsets.shape)
        # One integer per (view and track, rate, offset): offsets lie within
        # +-2**23 words (290 hours), rates index under 2**8.
        packed = (pair_of_hit.reshape(-1, 1) << 32) + (rate_index << 24) + (offsets + (1 << 23))
        lines, votes = np.unique(packed.ravel(), return_counts=True)
        strong = np.flatnonzero(votes >= SHIFT_MIN_VOTES)
        if not len(strong):
            return []
        # Per view, the best SHIFT_MAX_CANDIDATES: lines sort by view first.
        line_view = pairs[lines[strong] >> 32] >> 32
        by_view = np.lexsort((strong, -votes[strong], line_view))
        views_sorted = line_view[by_view]
        rank = np.arange(len(by_view)) - np.searchsorted(views_sorted, views_sorted, side="left")
        best = strong[by_view[rank < SHIFT_MAX_CANDIDATES]]
        found: dict[int, list] = {}
        for line, n in zip(lines[best].tolist(), votes[best].tolist(), strict=True):
            pair = int(pairs[line >> 32])
            view, track_local = pair >> 32, pair & 0xFFFFFFFF
            rate = float(rate_grid[(line >> 24) & 0xFF])
            offset = (line & 0xFFFFFF) - (1 << 23)
            track_id = track_of_slot.get(int(segment.slots[track_local]))
            if track_id is not None:
                found.setdefault(view, []).append(
                    (n, rate, offset, track_id, segment.track_words(track_local))
                )
        return list(found.items())

    def save(self, path: str) -> None:
        """Snapshot the known tracks (words only; postings are rebuilt on load)."""
        words_of_track = self._words_of_track
        track_ids = np.fromiter(words_of_track, dtype=np.int64, count=len(words_of_track))
        lengths = np.fromiter((len(w) for w in words_of_track.values()), dtype=np.int64)
        words = np.concatenate(list(words_of_track.values()) or [np.zeros(0, np.uint32)])
        tmp = f"{path}.tmp"
        with open(tmp, "wb") as f:
            np.savez(f, format=_SNAPSHOT_FORMAT, track_ids=track_ids, lengths=lengths, words=words)
        os.replace(tmp, path)  # a crash mid-write never leaves a torn snapshot

    @classmethod
    def load(cls, path: str) -> AudioIndex:
        with np.load(path) as snapshot:
            if int(snapshot["format"]) != _SNAPSHOT_FORMAT:
                raise ValueError(f"{path} is not an audio index snapshot of this version")
            track_ids, lengths, words = (snapshot[k] for k in ("track_ids", "lengths", "words"))
        ends = np.cumsum(lengths)
        index = cls()
        index.add_many(
            (int(t), words[end - n : end])
            for t, n, end in zip(track_ids.tolist(), lengths.tolist(), ends.tolist(), strict=True)
        )
        return index


def _align(query, query_informative, known, offset, max_ber):
    """(start, end, ber, informative words) of the longest well-aligned stretch
    of the query at this offset (query word i = known word i + offset), or None."""
    start = max(0, -offset)
    end = min(len(query), len(known) - offset)
    if end - start < WINDOW_WORDS:
        return None
    q = query[start:end]
    k = known[start + offset : end + offset]
    valid = query_informative[start:end] & informative_mask(k)
    found = _longest_good_run(q, k, valid, max_ber)
    if found is None:
        return None
    a, b, ber, informative_words = found
    return start + a, start + b, ber, informative_words


def _align_at_rate(query, query_informative, known, offset, rate, max_ber):
    """_align along a line of another slope: query word i = known word
    round(offset + i * rate)."""
    known_at = np.rint(offset + np.arange(len(query)) * rate).astype(np.int64)
    inside = np.flatnonzero((known_at >= 0) & (known_at < len(known)))
    if len(inside) < WINDOW_WORDS:
        return None
    start, end = int(inside[0]), int(inside[-1]) + 1  # the line is monotonic
    at = known_at[start:end]
    # Informative as a word of the known track (a slower query repeats words);
    # a word's mask depends on its neighbours up to CONSTANT_RUN_WORDS - 1
    # away, so the mask of the words the line crosses, with that margin, is
    # exact, and costs the line's length, not the known track's (hours, maybe).
    margin = CONSTANT_RUN_WORDS - 1
    lo, hi = max(int(at[0]) - margin, 0), int(at[-1]) + margin + 1
    valid = query_informative[start:end] & informative_mask(known[lo:hi])[at - lo]
    found = _longest_good_run(query[start:end], known[at], valid, max_ber)
    if found is None:
        return None
    a, b, ber, informative_words = found
    return start + a, start + b, ber, informative_words


def _lines_with_a_good_window(query, query_informative, lines, max_ber) -> np.ndarray:
    """_good_windows of (known words, offset, rate) lines of one query."""
    return _good_windows(
        [query],
        [query_informative],
        [(0, known, offset, rate) for known, offset, rate in lines],
        max_ber,
    )


def _good_windows(queries, query_informative, lines, max_ber) -> np.ndarray:
    """For each (query index, known words, offset, rate) line, whether any
    window along it passes _longest_good_run's test: the lines _align_at_rate
    can find something on, judged together. A shifted view's candidates are
    mostly chance pairs of votes that align nowhere (an unrelated upload's
    all are), and one pass over all of them (a few array operations on lines
    x words, not a few per line) costs less than aligning two. Exact: words
    off the known track count as invalid, which is what cutting them off does
    to the windows that remain, and a known word's mask is informative_mask's
    (not silence, in no run of CONSTANT_RUN_WORDS equal words) from its
    neighbours on its own track. Queries of several lengths are padded with
    invalid words, which add nothing to a window."""
    if len(lines) > SCREEN_LINES_PER_PASS:
        return np.concatenate(
            [
                _good_windows(
                    queries,
                    query_informative,
                    lines[first : first + SCREEN_LINES_PER_PASS],
                    max_ber,
                )
                for first in range(0, len(lines), SCREEN_LINES_PER_PASS)
            ]
        )
    if not lines:
        return np.zeros(0, dtype=bool)
    # only the queries these lines run along, padded to one width
    used, which = np.unique(
        np.array([line[0] for line in lines], dtype=np.int64), return_inverse=True
    )
    lengths_of_query = np.array([len(queries[i]) for i in used.tolist()], dtype=np.int64)
    width = int(lengths_of_query.max())
    padded = np.zeros((len(used), width), dtype=np.uint32)
    padded_informative = np.zeros((len(used), width), dtype=bool)
    for row, i in enumerate(used.tolist()):
        padded[row, : len(queries[i])] = queries[i]
        padded_informative[row, : len(queries[i])] = query_informative[i]
    lengths = np.array([len(known) for _, known, _, _ in lines], dtype=np.int64)[:, None]
    bases = np.cumsum(lengths) - lengths.ravel()
    # (a word past the last: an index on no track still reads something)
    words = np.concatenate([*(known for _, known, _, _ in lines), np.zeros(1, np.uint32)])
    offsets = np.array([offset for _, _, offset, _ in lines], dtype=np.float64)[:, None]
    rates = np.array([rate for _, _, _, rate in lines], dtype=np.float64)[:, None]
    steps = np.arange(width)
    in_query = steps[None, :] < lengths_of_query[which][:, None]
    known_at = np.rint(offsets + steps[None, :] * rates).astype(np.int64)

    def known_words(shift: int) -> tuple[np.ndarray, np.ndarray]:
        """(on the track, word) of the known word `shift` after each line's."""
        at = known_at + shift
        on_track = (at >= 0) & (at < lengths)
        return on_track, words[bases[:, None] + np.where(on_track, at, 0)]

    inside, known = known_words(0)
    inside &= in_query
    same = {}  # shift -> the word that far along is on the track and equal
    for shift in range(1 - CONSTANT_RUN_WORDS, CONSTANT_RUN_WORDS):
        if shift:
            on_track, neighbour = known_words(shift)
            same[shift] = on_track & (neighbour == known)
    in_run = np.zeros(known.shape, dtype=bool)
    for first in range(1 - CONSTANT_RUN_WORDS, 1):  # runs starting up to R - 1 before
        run = np.ones(known.shape, dtype=bool)
        for shift in range(first, first + CONSTANT_RUN_WORDS):
            if shift:
                run &= same[shift]
        in_run |= run
    valid = inside & padded_informative[which] & (known != SILENCE_WORD) & ~in_run
    errors = np.where(valid, np.bitwise_count(padded[which] ^ known), 0).astype(np.int64)
    half = WINDOW_WORDS // 2
    zeros = np.zeros((len(lines), 1), dtype=np.int64)
    err_cum = np.concatenate([zeros, np.cumsum(errors, axis=1)], axis=1)
    valid_cum = np.concatenate([zeros, np.cumsum(valid, axis=1)], axis=1)
    # Windows clipped to the padded width: past a query's end every word is
    # invalid, so its windows' sums are those clipped at its own length.
    lo = np.clip(steps - half, 0, width)
    hi = np.clip(steps + half, 0, width)
    window_valid = valid_cum[:, hi] - valid_cum[:, lo]
    window_ber = (err_cum[:, hi] - err_cum[:, lo]) / np.maximum(32 * window_valid, 1)
    good = ((window_ber <= max_ber) & (window_valid >= half) & in_query).any(axis=1)
    # _align_at_rate aligns nothing on a line that crosses fewer known words
    return good & (inside.sum(axis=1) >= WINDOW_WORDS)


def _line_alignment(track_id, found, offset, rate, votes, min_seconds) -> AudioAlignment | None:
    """The AudioAlignment of _align_at_rate's result, None if none or too short."""
    if found is None:
        return None
    start, end, ber, informative_words = found
    if informative_words * SECONDS_PER_WORD < min_seconds:
        return None
    return AudioAlignment(
        track_id=track_id,
        query_start=round(start * SECONDS_PER_WORD, 3),
        known_start=round((offset + start * rate) * SECONDS_PER_WORD, 3),
        duration=round((end - start) * SECONDS_PER_WORD, 3),
        ber=round(ber, 4),
        votes=votes,
        rate=rate,
        known_duration=round((end - start) * rate * SECONDS_PER_WORD, 3),
    )


def _longest_good_run(q, k, valid, max_ber):
    """(a, b, ber, informative words) of the longest run of aligned words
    q[a:b] ~ k[a:b] whose sliding windows stay under max_ber, or None."""
    errors = np.where(valid, np.bitwise_count(q ^ k), 0).astype(np.int64)
    # Windowed sums via cumulative sums, window centred on each word.
    half = WINDOW_WORDS // 2
    err_cum = np.concatenate([[0], np.cumsum(errors)])
    valid_cum = np.concatenate([[0], np.cumsum(valid)])
    lo = np.clip(np.arange(len(q)) - half, 0, len(q))
    hi = np.clip(np.arange(len(q)) + half, 0, len(q))
    window_valid = valid_cum[hi] - valid_cum[lo]
    window_ber = (err_cum[hi] - err_cum[lo]) / np.maximum(32 * window_valid, 1)
    good = (window_ber <= max_ber) & (window_valid >= half)
    if not good.any():
        return None
    # Longest run of good positions.
    edges = np.diff(np.concatenate([[0], good.astype(np.int8), [0]]))
    run_starts, run_ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    longest = int(np.argmax(run_ends - run_starts))
    a, b = int(run_starts[longest]), int(run_ends[longest])
    # The window reaches half a window past the true edge of the match.
    per_word_limit = 32 * max_ber * 2
    while a < b and valid[a] and errors[a] > per_word_limit:
        a += 1
    while b > a and valid[b - 1] and errors[b - 1] > per_word_limit:
        b -= 1
    informative_words = int(valid_cum[b] - valid_cum[a])
    if informative_words == 0:
        return None
    ber = float(err_cum[b] - err_cum[a]) / (32 * informative_words)
    if ber > max_ber:
        return None
    return a, b, ber, informative_words


def _distinct(alignments: list[AudioAlignment]) -> list[AudioAlignment]:
    """Longest first; drop an alignment whose query range mostly overlaps a kept
    one of the same track (neighbouring offsets of one match)."""
    kept: list[AudioAlignment] = []
    for a in sorted(alignments, key=lambda a: (-a.duration, a.ber)):
        overlapping = any(
            k.track_id == a.track_id
            and min(k.query_start + k.duration, a.query_start + a.duration)
            - max(k.query_start, a.query_start)
            > 0.5 * a.duration
            for k in kept
        )
        if not overlapping:
            kept.append(a)
    return kept
