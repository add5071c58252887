"""The core of matching: query signals -> candidates -> evidence per known
entry -> decision.

Candidates come from the indexes (a FAISS binary index per fixed-length
perceptual signal type, the audio index for fingerprints) and exact lookups in
the store. Then each known entry that was hit is judged by what it is:

* an image (or a single hash): its closest signal decides;
* a video, against a video upload: shares of matching frames and contiguous
  runs (hashsvc/matching/video_evidence.py), reported as time ranges;
* a PDF: pages, embedded pictures and text (hashsvc/matching/pdf_evidence.py), reported
  as page ranges;
* sound (an audio entry, or a video's track): aligned stretches from the
  audio index, scored by bit error rate, reported as time ranges.

Local features (any kind of known entry, picture by picture): the feature
index names the best-voted known pictures, each verified by a geometric
transform (hashsvc/matching/local_geometry.py); a verified pair is judged by
its inliers, coverage and agreement (Policy.decide_local), never by a
distance.

An entry yields at most one match, its strongest (by decision; on a tie a
distance-based match before a local-feature one, then the closest).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, replace

import numpy as np

from hashdb import EntryLookup, EntryRecord, HashSetRecord
from hashsvc.base.decisions import rank, strictest
from hashsvc.base.errors import InvalidArgument
from hashsvc.base.match_json import local_features_json, match_json
from hashsvc.base.media_kinds import PAGE_VARIANT, PDF, VIDEO, is_frame
from hashsvc.base.signals import (
    CHROMAPRINT,
    LOCAL_FEATURES,
    PDQ,
    TEXT_SHA256,
    TEXT_SIMHASH,
    VIDEOHASH,
    Signal,
    signal_type,
)
from hashsvc.index.audio import AudioAlignment, AudioIndex
from hashsvc.index.binary import split_signal_id
from hashsvc.index.live import LiveIndex, words_of
from hashsvc.matching import local_geometry
from hashsvc.matching import pdf_evidence as pdf_match
from hashsvc.matching import video_evidence as video_match
from hashsvc.matching.policy import ALLOW, BLOCK, REVIEW, LocalFeatureMatching, Policy
from hashsvc.media import local_features
from hashsvc.media.audio_words import SECONDS_PER_WORD, parse_shift_variant

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Segment:
    """A stretch of the query matching a stretch of the known media: seconds
    (video, audio) or first..last page (PDF)."""

    query_start: float
    query_end: float
    known_start: float
    known_end: float

    def to_json(self) -> dict:
        return {
            "query_start": self.query_start,
            "query_end": self.query_end,
            "known_start": self.known_start,
            "known_end": self.known_end,
        }


@dataclass(frozen=True)
class LocalEvidence:
    """Why a local-feature match matched (hashsvc/matching/local_geometry.py
    Verification): inliers of the transform, the share of the known picture
    and of the upload they cover, and the transform's scale and angle."""

    inliers: int
    coverage: float
    query_coverage: float
    scale: float
    angle: float
    # share of the part both pictures show that agrees (local_geometry)
    agreement: float = 1.0

    def to_json(self) -> dict:
        return local_features_json(self)


@dataclass(frozen=True)
class AudioShift:
    """How a re-upload's sound differs from the known recording: tempo_ratio is
    known seconds per upload second (1.08: sped up 8%), pitch_ratio the upload's
    pitch over the known one (0.95: 5% lower)."""

    tempo_ratio: float
    pitch_ratio: float

    def to_json(self) -> dict:
        return {"tempo_ratio": self.tempo_ratio, "pitch_ratio": self.pitch_ratio}


@dataclass(frozen=True)
class Match:
    set_id: int
    set_name: str
    entry_id: int
    entry_name: str
    signal_type: str
    distance: int
    labels: dict[str, str]
    decision: str
    query_variant: str
    known_variant: str
    reason: str = ""
    # Video, audio, PDF: where it matches ("seconds" / "pages") and how much.
    segments: tuple[Segment, ...] = ()
    unit: str = ""
    query_share: float = 0.0
    known_share: float = 0.0
    # A local_features match: its geometric evidence (distance is 0).
    local_features: LocalEvidence | None = None
    # Audio found by the shifted search only: the pitch and tempo change.
    audio_shift: AudioShift | None = None

    def to_json(self) -> dict:
        """As the history and review items store it (ids and reason too)."""
        extent = {}
        if self.local_features is not None:
            extent["local_features"] = self.local_features.to_json()
        if self.unit:
            extent = {
                **extent,
                "segments": [seg.to_json() for seg in self.segments],
                "unit": self.unit,
                "query_share": self.query_share,
                "known_share": self.known_share,
            }
        if self.audio_shift is not None:
            extent["audio_shift"] = self.audio_shift.to_json()
        return {
            "set": self.set_name,
            "set_id": self.set_id,
            "entry": self.entry_name,
            "entry_id": self.entry_id,
            "signal_type": self.signal_type,
            "distance": self.distance,
            "labels": self.labels,
            "decision": self.decision,
            "query_variant": self.query_variant,
            "known_variant": self.known_variant,
            "reason": self.reason,
            **extent,
        }

    def public_json(self) -> dict:
        """The match as `hashsvc match --json` shows it (hashsvc/base/match_json.py)."""
        return match_json(
            set_name=self.set_name,
            entry=self.entry_name,
            signal_type=self.signal_type,
            distance=self.distance,
            labels=self.labels,
            decision=self.decision,
            query_variant=self.query_variant,
            known_variant=self.known_variant,
            unit=self.unit,
            query_share=self.query_share,
            known_share=self.known_share,
            segments=self.segments,
            local_features=self.local_features,
            audio_shift=self.audio_shift,
        )

    @classmethod
    def from_json(cls, d: dict) -> Match:
        """The inverse of to_json (as the match history stores it)."""
        return cls(
            set_id=d.get("set_id", 0),
            set_name=d["set"],
            entry_id=d["entry_id"],
            entry_name=d["entry"],
            signal_type=d["signal_type"],
            distance=d["distance"],
            labels=d.get("labels", {}),
            decision=d["decision"],
            query_variant=d.get("query_variant", ""),
            known_variant=d.get("known_variant", ""),
            reason=d.get("reason", ""),
            segments=tuple(Segment(**seg) for seg in d.get("segments", ())),
            unit=d.get("unit", ""),
            query_share=d.get("query_share", 0.0),
            known_share=d.get("known_share", 0.0),
            local_features=(
                LocalEvidence(**d["local_features"]) if d.get("local_features") else None
            ),
            audio_shift=AudioShift(**d["audio_shift"]) if d.get("audio_shift") else None,
        )


@dataclass(frozen=True)
class MatchResult:
    decision: str
    matches: list[Match]
    # What matching left out, for the caller to pass on (Match's notes):
    # LOCAL_NOT_SEARCHED when every set asked blocked already.
    notes: tuple[str, ...] = ()
    # Exact, PDQ or sound evidence blocks in every set asked (and no
    # allow-list set is asked): no local-feature evidence could change the
    # decision, so an upload's local features need not be computed.
    blocked_everywhere: bool = False


# The note of a Match whose local features were not searched (see Matcher.match).
LOCAL_NOT_SEARCHED = (
    "local features not searched: exact or PDQ evidence blocks in every set asked;"
    " matches found only by local features are not listed"
)
# ... or not even computed (hashsvc/media/limits.py: local_after_views_share).
# Its band and region views neither: the whole picture's views blocked it.
LOCAL_NOT_COMPUTED = (
    "local features not computed: exact or PDQ evidence blocks in every set asked;"
    " matches found only by local features or by PDQ band and region views are not listed"
)


@dataclass(frozen=True)
class _Hit:
    query: Signal
    variant_no: int  # which of the known entry's signals
    distance: int


@dataclass(frozen=True)
class _LocalHit:
    """A known picture the feature index voted for, to be verified."""

    query: Signal
    features: local_features.LocalFeatures  # the query's, decoded
    entry_id: int
    variant_no: int  # which of the known entry's signals
    votes: float


@dataclass(frozen=True)
class _Verified:
    """A query picture and a known one whose geometry checked out."""

    query: Signal
    known: Signal
    verification: local_geometry.Verification
    decision: str  # by the set's local_features thresholds
    reason: str

    def strength(self) -> tuple:
        v = self.verification
        return (rank(self.decision), v.inliers, v.coverage, v.agreement)


# Audio distances are bit error rates in percent, so per-set thresholds stay
# integers like every other signal type's.
def ber_percent(ber: float) -> int:
    return round(ber * 100)


def _is_frame(sig: Signal) -> bool:
    return is_frame(sig.variant)


def _frames_comparable(query: list[Signal], entry: EntryRecord) -> bool:
    """Both the uploaded video and the known one have frames that are evidence
    (PDQ quality >= the frame floor), so the frame signal could decide."""
    return (
        video_match.countable_frames(s for s in query if _is_frame(s)) > 0
        and video_match.countable_frames(s for s in entry.signals if _is_frame(s)) > 0
    )


class Matcher:
    def __init__(
        self,
        live: LiveIndex,
        entries: EntryLookup,
        policy: Policy,
        max_matches: int = 100,
        local: LocalFeatureMatching | None = None,
    ) -> None:
        self.live = live
        self.entries = entries
        self.policy = policy
        self.max_matches = max_matches
        self.local = local or LocalFeatureMatching()

    def warm_up(self) -> None:
        """Compile the geometric check (numba) before the first upload needs
        it: compiling took ~1.4 s, which the first local-feature candidate
        would otherwise wait for."""
        rng = np.random.default_rng(0)
        points = rng.uniform(0, 100, (16, 2)).astype(np.float32)
        descriptors = rng.integers(0, 256, (16, 32), dtype=np.uint8)
        features = local_features.LocalFeatures(100, 100, points, descriptors)
        local_geometry.verify(features, features)
        # and the word assignment (hashsvc/index/word_assign.py)
        self.live.features.search([descriptors], 1)

    def match(
        self, query: list[Signal], only_sets: set[int] | None = None, every_match: bool = False
    ) -> MatchResult:
        """The query's matches and decision. `every_match`: the local
        features are searched even when exact, PDQ or sound evidence already
        blocks in every set asked (a retro-hunt asks without its allow lists,
        which it applies to each hit afterwards: skipping there lost a hit
        found only by local features when the PDQ hit was allow-listed)."""
        sets = {
            s.id: s
            for s in self.live.sets_by_id.values()
            if s.enabled and (only_sets is None or s.id in only_sets)
        }
        if not sets:
            return MatchResult(ALLOW, [])
        hits = self._search(query, list(sets.values()))
        sounds = self._search_audio(query, list(sets.values()))
        query_is_video = any(_is_frame(sig) for sig in query)
        # Exact, PDQ and sound evidence first: judged before the local
        # features are searched, since their search and verification (~2.5 ms
        # of an upload) cannot change a decision that blocks in every set.
        judged: dict[int, tuple[EntryRecord, list[Match]]] = {}
        if hits or sounds:
            for entry in self.entries.get_entries(
                set(hits) | set(sounds), with_signals=True
            ).values():
                # A candidate can be stale for a moment (removed, or its set
                # disabled, by another replica): the store has the last word.
                if entry.removed_at is not None or entry.set_id not in sets:
                    continue
                found = self._judge(
                    entry,
                    sets[entry.set_id],
                    hits.get(entry.id, []),
                    sounds.get(entry.id, []),
                    query,
                    query_is_video,
                )
                judged[entry.id] = (entry, found)
        notes: tuple[str, ...] = ()
        local_hits: dict[int, list[_LocalHit]] = {}
        everywhere = _blocks_everywhere(sets, (found for _, found in judged.values()))
        if any(s.kind == LOCAL_FEATURES.name for s in query):
            if everywhere and not every_match:
                notes = (LOCAL_NOT_SEARCHED,)
            else:
                local_hits = self._search_local(query)
        if local_hits:
            for entry in self.entries.get_entries(
                set(local_hits) - set(judged), with_signals=True
            ).values():
                if entry.removed_at is not None or entry.set_id not in sets:
                    continue
                judged[entry.id] = (entry, [])
        if not judged:
            return MatchResult(ALLOW, [], notes)
        matches = []
        for entry, found in judged.values():
            if not any(m.decision == BLOCK for m in found):
                # a verification (RANSAC) could not beat a block found already
                found = found + self._local_matches(
                    entry, sets[entry.set_id], local_hits.get(entry.id), query, query_is_video
                )
            if found:
                # ties go to anything before a videohash hint (its unrelated
                # videos come within 10 bits), then a distance (a near-identical
                # hash is the stronger evidence), then the closest, then the
                # match that says where (pages, time ranges)
                matches.append(
                    max(
                        found,
                        key=lambda m: (
                            rank(m.decision),
                            m.signal_type != VIDEOHASH.name,
                            m.local_features is None,
                            -m.distance,
                            bool(m.unit),
                        ),
                    )
                )
        matches.sort(key=lambda m: (-rank(m.decision), m.distance, m.entry_id))
        decision = strictest(m.decision for m in matches)
        return MatchResult(decision, matches[: self.max_matches], notes, everywhere)

    # -- candidates

    def _search(self, query: list[Signal], sets: list[HashSetRecord]) -> dict[int, list[_Hit]]:
        found: dict[int, list[_Hit]] = defaultdict(list)
        by_type: dict[str, list[Signal]] = defaultdict(list)
        for sig in query:
            by_type[sig.kind].append(sig)
        for kind, sigs in by_type.items():
            sig_type = signal_type(kind)
            if sig_type.sequence:
                continue  # audio: see _search_audio
            if sig_type.perceptual:
                index = self.live.indexes.get(kind)
                if index is None:
                    continue
                radius = self.policy.search_radius(sets, kind)
                for sig, hits in zip(
                    sigs, index.search([s.value for s in sigs], radius), strict=True
                ):
                    for sid, distance in hits:
                        entry_id, variant_no = split_signal_id(sid)
                        found[entry_id].append(_Hit(sig, variant_no, distance))
            else:
                for sig in sigs:
                    for entry_id, variant_no in self.entries.find_exact(kind, sig.value):
                        found[entry_id].append(_Hit(sig, variant_no, 0))
        return found

    def _search_audio(
        self, query: list[Signal], sets: list[HashSetRecord]
    ) -> dict[int, list[AudioAlignment]]:
        max_ber = self.policy.search_radius(sets, CHROMAPRINT.name) / 100
        return search_sounds(self.live.audio, query, max_ber)

    def _search_local(self, query: list[Signal]) -> dict[int, list[_LocalHit]]:
        """Known pictures the feature index votes for, to be verified: of a
        picture (or a document's pictures, or an upload's tiles) max_verified,
        of a video's sampled frames max_verified_video, taken round by round
        (each query picture's best candidate first, then each one's second,
        ...), so each tile or moment of the upload gets its chance whatever
        the others' votes. A video frame is verified against at most
        frames_per_entry frames of one known entry (the best-voted): the
        neighbours of a known frame show the same scene, and runs need a pair
        or two per moment, not every pair."""
        sigs = [s for s in query if s.kind == LOCAL_FEATURES.name]
        index = self.live.features
        if not sigs or not len(index):
            return {}
        # the upload's own blobs, or a hash checked where it came in
        # (hashsvc/core/signal_values.py)
        decoded = [local_features.decode(s.value) for s in sigs]
        # another detector's blob (a hash sent by a newer or older tool) has
        # nothing to vote with here
        kept = [
            (s, f)
            for s, f in zip(sigs, decoded, strict=True)
            if f.descriptor_bytes == index.descriptor_bytes
        ]
        if not kept:
            return {}
        sigs, decoded = [s for s, _ in kept], [f for _, f in kept]
        results = index.search([f.descriptors for f in decoded], self.local.top_k)
        # Each query picture's best candidate first, then each one's second...
        # (votes order within a round): an upload cut into tiles
        # (hashsvc/media/local_regions.py) has one picture of interest among
        # a dozen, and its scores are not comparable with the others'.
        is_video = any(_is_frame(s) for s in sigs)
        ranked = []
        for sig, features, hits in zip(sigs, decoded, results, strict=True):
            per_entry: dict[int, int] = defaultdict(int)
            place = 0
            for sid, votes in hits:
                hit = _LocalHit(sig, features, *split_signal_id(sid), votes)
                if is_video and per_entry[hit.entry_id] >= self.local.frames_per_entry:
                    continue
                per_entry[hit.entry_id] += 1
                place += 1
                ranked.append((place, -votes, hit))
        ranked.sort(key=lambda r: (r[0], r[1]))
        budget = self.local.max_verified_video if is_video else self.local.max_verified
        found: dict[int, list[_LocalHit]] = defaultdict(list)
        # a candidate voted for below min_votes is not worth a store read and a verification
        # (bench: no true copy that verifies scores that low; see LocalFeatureMatching)...
        chosen = [r for r in ranked if r[2].votes >= self.local.min_votes][:budget]
        # ...unless the upload has budget left: then a few of the next best, as in a small
        # index (or a turned copy) a true copy's votes sit among its wrong candidates'
        spare = min(self.local.max_verified_spare, budget - len(chosen))
        if spare > 0:
            chosen += [
                r for r in ranked if self.local.min_votes_spare <= r[2].votes < self.local.min_votes
            ][:spare]
        for _, _, hit in chosen:
            found[hit.entry_id].append(hit)
        return found

    def _local_matches(
        self,
        entry: EntryRecord,
        hash_set: HashSetRecord,
        hits: list[_LocalHit] | None,
        query: list[Signal],
        query_is_video: bool,
    ) -> list[Match]:
        """The entry's local-feature match, if any decides: its pictures
        (or sampled frames) verified against the upload's."""
        verified = self._verified(entry, hash_set, hits or ())
        if not verified:
            return []
        if query_is_video and entry.media_type == VIDEO:
            found = self._local_video_match(entry, hash_set, verified, query)
        elif query_is_video:
            found = self._local_picture_in_video(entry, hash_set, verified)
        else:
            found = self._local_best(entry, hash_set, verified)
        if found is not None and entry.media_type == PDF and found.decision == BLOCK:
            # A document's pictures include logos, emblems and template photos
            # that unrelated documents share whole (coverage 1): one of them
            # found is a reason to look, not to block.
            found = replace(
                found,
                decision=REVIEW,
                reason="a picture of a known document, found by local features, never blocks"
                " alone (shared logos and templates)",
            )
        return [found] if found is not None and found.decision != ALLOW else []

    def _verified(
        self, entry: EntryRecord, hash_set: HashSetRecord, hits: Iterable[_LocalHit]
    ) -> list[_Verified]:
        """The hits whose geometry checks out, with their decision."""
        found = []
        min_matches = self.policy.thresholds(hash_set, LOCAL_FEATURES.name).review_inliers
        for hit in hits:
            if hit.variant_no >= len(entry.signals):
                continue
            known = entry.signals[hit.variant_no]
            if known.kind != LOCAL_FEATURES.name:
                continue  # the index is a moment behind an update
            try:
                known_features = local_features.decode(known.value)
            except InvalidArgument as exc:  # checked when stored; never silently
                log.error("entry %d holds an unreadable local_features value: %s", entry.id, exc)
                continue
            # fewer mutual descriptor matches than the set's review inliers cannot decide
            # (inliers are a subset of them): verify() stops before RANSAC
            verification = local_geometry.verify(hit.features, known_features, min_matches)
            if verification is None:
                continue
            decision, reason = self.policy.decide_local(
                hash_set,
                verification.inliers,
                verification.coverage,
                verification.agreement,
            )
            found.append(_Verified(hit.query, known, verification, decision, reason))
        return found

    def _local_match(self, entry, hash_set, pair: _Verified, **kw) -> Match:
        v = pair.verification
        match = self._match(
            entry,
            hash_set,
            LOCAL_FEATURES.name,
            0,
            pair.query.variant,
            pair.known.variant,
            None,
            None,
            decided=(pair.decision, pair.reason),
            local_features=LocalEvidence(
                inliers=v.inliers,
                coverage=v.coverage,
                query_coverage=v.query_coverage,
                scale=v.scale,
                angle=v.angle,
                agreement=v.agreement,
            ),
            **kw,
        )
        return match

    def _local_best(self, entry, hash_set, verified: list[_Verified]) -> Match:
        """An uploaded picture or document: the strongest verified pair
        decides, and says when (a known video's frame) or on which pages (a
        picture embedded in a document, either side)."""
        strongest = max(verified, key=_Verified.strength)
        best = self._local_match(entry, hash_set, strongest)
        query, known = strongest.query, strongest.known
        if is_frame(known.variant):
            at = known.position or 0.0
            best = replace(best, unit="seconds", segments=(Segment(0.0, 0.0, at, at),))
        elif _embedded(query) or _embedded(known):
            query_page = query.position if _embedded(query) else 0
            known_page = known.position if _embedded(known) else 0
            best = replace(
                best,
                unit="pages",
                segments=(
                    Segment(query_page or 0, query_page or 0, known_page or 0, known_page or 0),
                ),
            )
        return best

    def _local_picture_in_video(self, entry, hash_set, verified: list[_Verified]) -> Match:
        """A known picture shown in the uploaded video: the strongest frame
        decides, and the frames that verified at review or better say when."""
        best = self._local_match(entry, hash_set, max(verified, key=_Verified.strength))
        shown = [(p.query, 0) for p in verified if p.decision != ALLOW]
        ranges = video_match.image_appearances(shown)
        return replace(
            best,
            unit="seconds",
            segments=tuple(Segment(r.start, r.end, 0.0, 0.0) for r in ranges),
        )

    def _local_video_match(self, entry, hash_set, verified, query) -> Match | None:
        """A known video against an uploaded one: verified frame pairs become
        runs and shares (video_evidence.local_frame_evidence)."""
        evidence = video_match.local_frame_evidence(
            [s for s in query if s.kind == LOCAL_FEATURES.name and _is_frame(s)],
            [
                video_match.LocalFramePair(p.query, p.known, p.decision == BLOCK)
                for p in verified
                if p.decision != ALLOW
            ],
            [
                s.position
                for s in entry.signals
                if s.kind == LOCAL_FEATURES.name and _is_frame(s) and s.position is not None
            ],
        )
        if evidence.decision is None:
            return None
        best = max(verified, key=_Verified.strength)
        match = self._local_match(
            entry,
            hash_set,
            best,
            unit="seconds",
            segments=tuple(
                Segment(r.query_start, r.query_end, r.known_start, r.known_end)
                for r in evidence.runs
            ),
            query_share=evidence.query_share,
            known_share=evidence.known_share,
        )
        decision = BLOCK if evidence.decision == "block" else REVIEW
        reason = "" if decision == BLOCK else evidence.reason
        whole = evidence.query_share >= 0.5 and evidence.known_share >= 0.5
        longest = evidence.runs[0].seconds if evidence.runs else 0.0
        if decision == BLOCK and not whole and longest < MIN_BLOCKING_RUN_SECONDS:
            # as for PDQ frames: a short shared stretch may be a common intro
            decision, reason = REVIEW, f"{evidence.reason}; longest run {longest:.0f} s"
        return replace(match, decision=decision, reason=reason)

    # -- judging one known entry

    def _judge(
        self,
        entry: EntryRecord,
        hash_set: HashSetRecord,
        hits: list[_Hit],
        sounds: list[AudioAlignment],
        query: list[Signal],
        query_is_video: bool,
    ) -> list[Match]:
        pairs = [
            (hit.query, entry.signals[hit.variant_no], hit.distance)
            for hit in hits
            if hit.variant_no < len(entry.signals)
        ]
        found: list[Match] = []
        if sounds:
            found.append(self._sound_match(entry, hash_set, sounds))
        exact = [p for p in pairs if not signal_type(p[1].kind).perceptual]
        if exact:
            found.append(self._closest(entry, hash_set, [min(exact, key=lambda p: p[2])]))
        rule = EVIDENCE_RULES.get(entry.media_type, Matcher._pictures_evidence)
        found.extend(rule(self, entry, hash_set, pairs, query, query_is_video))
        return [m for m in found if m.decision != ALLOW]

    # -- evidence rules per kind of known entry (EVIDENCE_RULES); each gets
    # the (query signal, known signal, distance) pairs of its perceptual and
    # exact hits; sounds and exact hashes are judged alike for every kind

    def _pictures_evidence(self, entry, hash_set, pairs, query, query_is_video) -> list[Match]:
        """An image, a bare hash, an audio file's picture: its closest PDQ
        signal, or where it appears in an uploaded video."""
        visual = [p for p in pairs if p[1].kind == PDQ.name]
        found = []
        if query_is_video:
            # a known picture shown in the upload: flat frames are no evidence
            good = [p for p in visual if min(p[0].quality or 0, p[1].quality or 0) >= 50]
            if good:
                found.append(self._picture_in_video(entry, hash_set, good))
        elif visual:
            found.append(self._closest(entry, hash_set, visual))
        return found + self._whole_video_hint(entry, hash_set, pairs)

    def _video_evidence(self, entry, hash_set, pairs, query, query_is_video) -> list[Match]:
        """A known video: frame shares and runs against an uploaded video;
        against a picture, its closest frame."""
        if not query_is_video:
            return self._pictures_evidence(entry, hash_set, pairs, query, query_is_video)
        visual = [p for p in pairs if p[1].kind == PDQ.name]
        found = self._video_match(entry, hash_set, visual, query)
        if not found and _frames_comparable(query, entry):
            # The frames were compared and disagree: the whole-video hash put
            # unrelated videos at 0-4 bits (bench/video.py) where frames were
            # right every time, so it is no hint here.
            return found
        return found + self._whole_video_hint(entry, hash_set, pairs)

    def _pdf_evidence(self, entry, hash_set, pairs, query, query_is_video) -> list[Match]:
        """A known PDF: pages, embedded pictures and text (pdf_evidence.py)."""
        return self._pdf_match(entry, hash_set, pairs, query)

    def _whole_video_hint(self, entry, hash_set, pairs) -> list[Match]:
        whole_video = [p for p in pairs if p[1].kind == VIDEOHASH.name]
        if not whole_video:
            return []
        # bench/video.py: unrelated videos come within 10 bits; alone it
        # is a hint for a person, never grounds to block
        hint = self._closest(entry, hash_set, whole_video)
        if hint.decision == BLOCK:
            hint = replace(hint, decision=REVIEW, reason="videohash alone never blocks")
        return [hint]

    def _match(
        self,
        entry,
        hash_set,
        kind,
        distance,
        query_variant,
        known_variant,
        qq,
        kq,
        decided: tuple[str, str] | None = None,
        **kw,
    ):
        """`decided`: (decision, reason) when not by distance (local features)."""
        decision, reason = decided or self.policy.decide(hash_set, kind, distance, qq, kq)
        return Match(
            set_id=hash_set.id,
            set_name=hash_set.name,
            entry_id=entry.id,
            entry_name=entry.name,
            signal_type=kind,
            distance=distance,
            labels={**hash_set.labels, **entry.labels},
            decision=decision,
            query_variant=query_variant,
            known_variant=known_variant,
            reason=reason,
            **kw,
        )

    def _closest(self, entry, hash_set, pairs) -> Match:
        """The entry's closest signal decides (pictures, single hashes)."""
        best, best_known = None, None
        for query, known, distance in pairs:
            candidate = self._match(
                entry,
                hash_set,
                known.kind,
                distance,
                query.variant,
                known.variant,
                query.quality,
                known.quality,
            )
            if best is None or (rank(candidate.decision), -candidate.distance) > (
                rank(best.decision),
                -best.distance,
            ):
                best, best_known = candidate, known
        if _is_frame(best_known):
            # the upload's picture is a frame of a known video: say when
            at = best_known.position or 0.0
            best = replace(best, unit="seconds", segments=(Segment(0.0, 0.0, at, at),))
        return best

    def _picture_in_video(self, entry, hash_set, pairs) -> Match:
        """A known picture appears in frames of the uploaded video."""
        best = self._closest(entry, hash_set, pairs)
        hits_by_frame = [
            (query, distance)
            for query, _, distance in pairs
            if distance <= (self.policy.thresholds(hash_set, PDQ.name).review_distance)
        ]
        ranges = video_match.image_appearances(hits_by_frame)
        return replace(
            best,
            unit="seconds",
            segments=tuple(Segment(r.start, r.end, 0.0, 0.0) for r in ranges),
        )

    def _video_match(self, entry, hash_set, pairs, query) -> list[Match]:
        # PDQ frames only: a sampled frame's local_features shares its variant
        known_frames = [s for s in entry.signals if _is_frame(s) and s.kind == PDQ.name]
        duration = max((s.position or 0.0 for s in known_frames), default=0.0)
        evidence = video_match.video_evidence(
            [s for s in query if _is_frame(s) and s.kind == PDQ.name],
            [video_match.FramePair(q, k, d) for q, k, d in pairs],
            video_match.countable_frames(known_frames),
            duration,
        )
        if not evidence.is_match or evidence.best_distance is None:
            return []
        best = min(pairs, key=lambda p: p[2])
        match = self._match(
            entry,
            hash_set,
            PDQ.name,
            evidence.best_distance,
            best[0].variant,
            best[1].variant,
            None,
            None,
            unit="seconds",
            segments=tuple(
                Segment(r.query_start, r.query_end, r.known_start, r.known_end)
                for r in evidence.runs
            ),
            query_share=evidence.query_share,
            known_share=evidence.known_share,
        )
        whole = evidence.query_share >= 0.5 and evidence.known_share >= 0.5
        longest = evidence.runs[0].seconds if evidence.runs else 0.0
        if match.decision == BLOCK and not whole and longest < MIN_BLOCKING_RUN_SECONDS:
            # a short shared stretch may be a common intro or a stock shot
            match = replace(match, decision=REVIEW)
        if match.decision != ALLOW and not match.reason:
            match = replace(match, reason=evidence.reason)
        return [match]

    def _pdf_match(self, entry, hash_set, pairs, query) -> list[Match]:
        evidence = pdf_match.match_pdf(pairs, query, entry.signals)
        best = evidence.best
        if best is None:
            return []
        kind = _PDF_EVIDENCE_TYPE[best.signal]
        query_pages = {m.query_page for m in evidence.pages}
        # Pages of the known document: those with a rendering ("page:<view>")
        # or a text ("page"); counting PDQ of variant "page" alone found none,
        # so every PDF match said known_share 0.
        known_pages = len(
            {
                s.position
                for s in entry.signals
                if s.position is not None
                and (s.variant == PAGE_VARIANT or s.variant.startswith(PAGE_VARIANT + ":"))
            }
        )
        match = self._match(
            entry,
            hash_set,
            kind,
            best.distance,
            best.signal,
            best.signal,
            None,
            None,
            unit="pages",
            segments=_page_segments(evidence.pages),
            known_share=min(1.0, len(query_pages) / known_pages) if known_pages else 0.0,
        )
        return [
            replace(match, reason=match.reason or "matched by " + ", ".join(evidence.matched_by))
        ]

    def _sound_match(self, entry, hash_set, sounds: list[AudioAlignment]) -> Match:
        best = min(sounds, key=lambda a: a.ber)
        known = next((s for s in entry.signals if s.kind == CHROMAPRINT.name), None)
        known_seconds = len(known.value) / 4 * SECONDS_PER_WORD if known else 0.0
        covered = sum(_known_seconds(a) for a in sounds)
        audio_shift = None
        if best.shifted:
            audio_shift = AudioShift(round(best.rate, 3), round(best.pitch_ratio, 3))
        return self._match(
            entry,
            hash_set,
            CHROMAPRINT.name,
            ber_percent(best.ber),
            "audio",
            "audio",
            None,
            None,
            unit="seconds",
            segments=tuple(
                Segment(
                    round(a.query_start, 3),
                    round(a.query_start + a.duration, 3),
                    round(a.known_start, 3),
                    round(a.known_start + _known_seconds(a), 3),
                )
                for a in sorted(sounds, key=lambda a: a.query_start)
            ),
            known_share=min(1.0, covered / known_seconds) if known_seconds else 0.0,
            audio_shift=audio_shift,
        )


def _blocks_everywhere(sets: dict[int, HashSetRecord], judged: Iterable[list[Match]]) -> bool:
    """Whether the evidence judged already blocks in every set asked, so no
    local-feature match could change the decision: a local-feature match adds
    a match and never lifts one, and policy and feedback only lower it (a PDF's
    to REVIEW; a verdict never lifts a block). An allow-list set asked is the
    exception: its entry found by local features may suppress a block
    (hashsvc/matching/feedback.py), so with one asked everything is searched."""
    if any(s.allow_list for s in sets.values()):
        return False
    blocked = {m.set_id for found in judged for m in found if m.decision == BLOCK}
    return blocked >= set(sets)


def search_sounds(
    audio_index: AudioIndex, query: list[Signal], max_ber: float
) -> dict[int, list[AudioAlignment]]:
    """Aligned stretches per known track for a query's chromaprint signals:
    the fingerprint through the plain search, shifted views through the
    rate-aware one (in the upload's seconds); a track's shifted evidence
    replaces its plain one only when it aligns better."""
    found: dict[int, list[AudioAlignment]] = defaultdict(list)
    # Shifted views, by the stretch of the upload they were made from.
    views: dict[float, list[tuple[np.ndarray, float, float]]] = defaultdict(list)
    for sig in query:
        if sig.kind != CHROMAPRINT.name:
            continue
        shift = parse_shift_variant(sig.variant)
        if shift is None:
            for alignment in audio_index.search(words_of(sig.value), max_ber=max_ber):
                found[alignment.track_id].append(alignment)
        else:
            views[sig.position or 0.0].append((words_of(sig.value), *shift))
    # The best alignment per known track and upload stretch.
    shifted: dict[int, dict[float, AudioAlignment]] = defaultdict(dict)
    for stretch_start, alignment in _shifted_lines(audio_index, views, max_ber):
        best = shifted[alignment.track_id].get(stretch_start)
        if best is None or alignment.ber < best.ber:
            shifted[alignment.track_id][stretch_start] = alignment
    for track_id, by_stretch in shifted.items():
        plain = found.get(track_id)
        best = min(by_stretch.values(), key=lambda a: a.ber)
        # The plain search's evidence (the whole upload, no shift) stands
        # unless a shifted view aligns clearly better; an unshifted view (a
        # plain copy's) never replaces it.
        if not plain or (
            not _unshifted(best) and best.ber < min(a.ber for a in plain) - SHIFT_PREFERENCE_BER
        ):
            found[track_id] = list(by_stretch.values())
    return found


# A view's search proposes lines (track, offset, rate) up to this BER; each is
# then aligned in every view of the same stretch at the caller's max_ber. The
# view whose votes find a line is not always the one that aligns it best: a
# 15 s excerpt pitched down 10% (bench/audio.py) is found only by the view
# 1% off its pitch (BER 0.186, over block), while the view that undoes the
# shift exactly aligns it at 0.116 along the same line but keeps too few
# words' top 24 bits to be voted for.
SHIFT_PROPOSAL_BER = 0.25
# Proposed lines re-aligned per stretch (the lowest BERs first): each costs an
# alignment per view (~63 of ~50 us).
SHIFT_PROPOSALS_PER_STRETCH = 4


def _shifted_lines(
    audio_index: AudioIndex,
    views: dict[float, list[tuple[np.ndarray, float, float]]],
    max_ber: float,
) -> list[tuple[float, AudioAlignment]]:
    """(stretch start, alignment in the upload's seconds) of the views of
    each stretch: the lines their searches propose, each aligned in all views
    of its stretch. All views are searched in one pass, and all the
    re-alignments screened in one (the index's batch calls)."""
    flat = [
        (stretch_start, words, pitch_ratio, tempo_stretch)
        for stretch_start, stretch_views in views.items()
        for words, pitch_ratio, tempo_stretch in stretch_views
    ]
    probe_ber = max(max_ber, SHIFT_PROPOSAL_BER)
    searched = audio_index.search_shifted_views([view[1] for view in flat], max_ber=probe_ber)
    proposals: dict[float, list[AudioAlignment]] = defaultdict(list)
    for (stretch_start, _, pitch_ratio, tempo_stretch), alignments in zip(
        flat, searched, strict=True
    ):
        proposals[stretch_start] += [
            _in_upload_seconds(alignment, stretch_start, pitch_ratio, tempo_stretch)
            for alignment in alignments
        ]
    requests = []  # (view index, track id, offset, rate)
    for stretch_start, stretch_proposals in proposals.items():
        stretch_proposals.sort(key=lambda a: a.ber)
        lines: list[AudioAlignment] = []
        for line in stretch_proposals:
            if len(lines) == SHIFT_PROPOSALS_PER_STRETCH:
                break
            if not any(_same_line(line, kept) for kept in lines):
                lines.append(line)
        for line in lines:
            for i, (view_start, _, pitch_ratio, tempo_stretch) in enumerate(flat):
                if view_start != stretch_start:
                    continue
                # The line in this view's words: view second x is upload second
                # stretch_start + x * upload_per_view.
                upload_per_view = tempo_stretch / pitch_ratio
                known_at_view_start = line.known_start + line.rate * (
                    stretch_start - line.query_start
                )
                requests.append(
                    (
                        i,
                        line.track_id,
                        known_at_view_start / SECONDS_PER_WORD,
                        line.rate * upload_per_view,
                    )
                )
    aligned = audio_index.align_lines([view[1] for view in flat], requests, max_ber=max_ber)
    return [
        (flat[i][0], _in_upload_seconds(alignment, flat[i][0], flat[i][2], flat[i][3]))
        for (i, _, _, _), alignment in zip(requests, aligned, strict=True)
        if alignment is not None
    ]


def _same_line(a: AudioAlignment, b: AudioAlignment) -> bool:
    """Two alignments of one track along nearly one line (within a word)."""
    if a.track_id != b.track_id or abs(a.rate - b.rate) > 0.01:
        return False
    b_known_at_a = b.known_start + b.rate * (a.query_start - b.query_start)
    return abs(b_known_at_a - a.known_start) <= SECONDS_PER_WORD


# How much lower a shifted view's BER must be to replace the plain evidence.
SHIFT_PREFERENCE_BER = 0.02


def _unshifted(alignment: AudioAlignment) -> bool:
    return abs(alignment.rate - 1) < 0.015 and abs(alignment.pitch_ratio - 1) < 0.005


def _known_seconds(alignment: AudioAlignment) -> float:
    if alignment.known_duration is None:
        return alignment.duration
    return alignment.known_duration


def _in_upload_seconds(
    alignment: AudioAlignment, view_start: float, pitch_ratio: float, tempo_stretch: float
) -> AudioAlignment:
    """An alignment of a shifted view, in the upload's own seconds: the view
    starts at view_start and was resampled by pitch_ratio (pitch_ratio times
    as long), then time-stretched by tempo_stretch (1/tempo_stretch as long)."""
    upload_per_view = tempo_stretch / pitch_ratio
    return replace(
        alignment,
        query_start=round(view_start + alignment.query_start * upload_per_view, 3),
        duration=round(alignment.duration * upload_per_view, 3),
        rate=alignment.rate / upload_per_view,
        pitch_ratio=pitch_ratio,
        shifted=True,
    )


# How a known entry is judged, by its media kind; a kind not listed (image,
# audio, hash) by its pictures.
EVIDENCE_RULES = {
    VIDEO: Matcher._video_evidence,
    PDF: Matcher._pdf_evidence,
}

# A known video found only through a shared stretch (no whole copy) blocks
# when the stretch lasts this long; shorter runs (>= 5 s) ask for review.
MIN_BLOCKING_RUN_SECONDS = 10.0

_PDF_EVIDENCE_TYPE = {
    pdf_match.DOCUMENT_TEXT_EXACT: TEXT_SHA256.name,
    pdf_match.PAGE_IMAGE: PDQ.name,
    pdf_match.EMBEDDED_IMAGE: PDQ.name,
    pdf_match.PAGE_TEXT: TEXT_SIMHASH.name,
    pdf_match.DOCUMENT_TEXT_NEAR: TEXT_SIMHASH.name,
}


def _embedded(sig: Signal) -> bool:
    """A picture embedded in a PDF (hashsvc/media/pdf.py: "image:<view>", position = page)."""
    return sig.variant.startswith("image:") and sig.position is not None


def _page_segments(pages) -> tuple[Segment, ...]:
    """Consecutive query pages matching consecutive known pages -> one range."""
    segments: list[Segment] = []
    for page in pages:
        if page.query_page is None or page.known_page is None:
            continue
        last = segments[-1] if segments else None
        if (
            last is not None
            and page.query_page == last.query_end + 1
            and page.known_page == last.known_end + 1
        ):
            segments[-1] = replace(last, query_end=page.query_page, known_end=page.known_page)
        else:
            segments.append(
                Segment(page.query_page, page.query_page, page.known_page, page.known_page)
            )
    return tuple(segments)
