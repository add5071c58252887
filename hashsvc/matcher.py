"""The core of matching: query signals -> candidates -> verified matches -> decision."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from hashdb import HashSetRecord
from hashsvc.index import split_signal_id
from hashsvc.live_index import LiveIndex
from hashsvc.policy import ALLOW, Policy, strictest
from hashsvc.signals import Signal, signal_type

_RANK = {"allow": 0, "review": 1, "block": 2}


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

    def to_json(self) -> dict:
        extent = {}
        if self.unit:
            extent = {
                "segments": [seg.to_json() for seg in self.segments],
                "unit": self.unit,
                "query_share": self.query_share,
                "known_share": self.known_share,
            }
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
        )


@dataclass(frozen=True)
class MatchResult:
    decision: str
    matches: list[Match]


@dataclass(frozen=True)
class _Candidate:
    entry_id: int
    variant_no: int
    distance: int
    query: Signal


class Matcher:
    def __init__(self, live: LiveIndex, policy: Policy, max_matches: int = 100) -> None:
        self.live = live
        self.policy = policy
        self.max_matches = max_matches

    def match(self, query: list[Signal], only_sets: set[int] | None = None) -> MatchResult:
        sets = [
            s
            for s in self.live.sets_by_id.values()
            if s.enabled and (only_sets is None or s.id in only_sets)
        ]
        if not sets:
            return MatchResult(ALLOW, [])
        candidates = self._candidates(query, sets)
        if not candidates:
            return MatchResult(ALLOW, [])
        matches = self._verify(candidates, {s.id: s for s in sets})
        matches.sort(key=lambda m: (-_RANK[m.decision], m.distance, m.entry_id))
        decision = strictest(m.decision for m in matches)
        return MatchResult(decision, matches[: self.max_matches])

    def _candidates(self, query: list[Signal], sets: list[HashSetRecord]) -> list[_Candidate]:
        found: list[_Candidate] = []
        by_type: dict[str, list[Signal]] = defaultdict(list)
        for sig in query:
            by_type[sig.kind].append(sig)
        for kind, sigs in by_type.items():
            if signal_type(kind).perceptual:
                index = self.live.indexes.get(kind)
                if index is None:
                    continue
                radius = self.policy.search_radius(sets, kind)
                for sig, hits in zip(
                    sigs, index.search([s.value for s in sigs], radius), strict=True
                ):
                    for sid, distance in hits:
                        entry_id, variant_no = split_signal_id(sid)
                        found.append(_Candidate(entry_id, variant_no, distance, sig))
            else:
                for sig in sigs:
                    for entry_id, variant_no in self.live.store.find_exact(kind, sig.value):
                        found.append(_Candidate(entry_id, variant_no, 0, sig))
        return found

    def _verify(self, candidates: list[_Candidate], sets: dict[int, HashSetRecord]) -> list[Match]:
        entries = self.live.store.get_entries({c.entry_id for c in candidates}, with_signals=True)
        best: dict[int, Match] = {}
        for cand in candidates:
            entry = entries.get(cand.entry_id)
            # A candidate can be stale for a moment (removed, or its set
            # disabled, by another replica): the store has the last word.
            if entry is None or entry.removed_at is not None or entry.set_id not in sets:
                continue
            if cand.variant_no >= len(entry.signals):
                continue
            known = entry.signals[cand.variant_no]
            hash_set = sets[entry.set_id]
            decision, reason = self.policy.decide(
                hash_set, known.kind, cand.distance, cand.query.quality, known.quality
            )
            if decision == ALLOW:
                continue
            match = Match(
                set_id=hash_set.id,
                set_name=hash_set.name,
                entry_id=entry.id,
                entry_name=entry.name,
                signal_type=known.kind,
                distance=cand.distance,
                labels={**hash_set.labels, **entry.labels},
                decision=decision,
                query_variant=cand.query.variant,
                known_variant=known.variant,
                reason=reason,
            )
            current = best.get(entry.id)
            if current is None or (_RANK[match.decision], -match.distance) > (
                _RANK[current.decision],
                -current.distance,
            ):
                best[entry.id] = match
        return list(best.values())
