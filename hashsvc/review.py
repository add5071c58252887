"""The review queue and the feedback it gives matching.

* Every Match ending in REVIEW (and BLOCK, for sets with review_blocks) becomes
  a review item; reviewers claim items (a claim expires) and resolve them as
  `confirmed` or `false_positive`.
* confirmed: the upload's hashes may be added to a chosen set as a new entry,
  with provenance labels (which review, who), so the next copy is caught.
* false_positive: the (upload hash, known entry) pair is remembered and never
  again raises a match; allow-list sets suppress every match of an upload that
  matches one of their entries.
* Flood protection: an entry matching far more often than usual is put in
  quarantine; its matches become REVIEW instead of BLOCK until an operator
  releases it. The reason is in each match, so the history shows why.

Every reviewer and operator action is written to the hash-chained history.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict, deque
from dataclasses import replace
from datetime import UTC, datetime

from hashdb import HistoryRecord, ReviewFilter, ReviewItem, Store, Suppression
from hashdb.review_sql import RESOLUTIONS
from hashsvc import validation
from hashsvc.errors import FailedPrecondition, InvalidArgument, NotFound
from hashsvc.matcher import Match, MatchResult
from hashsvc.policy import ALLOW, BLOCK, REVIEW, strictest
from hashsvc.signals import Signal, hamming, signal_type

# How close a later upload's hash must be to a hash judged a false positive to
# be covered by that judgement: a re-encode of the same picture, not a
# neighbour (PDQ copies are mostly < 10 bits apart; unrelated ones > 80).
SUPPRESS_DISTANCE = {"pdq": 16, "videohash": 4}
# The upload's hashes a false-positive judgement remembers.
_REMEMBERED_VARIANTS = ("original", "untrimmed")


def remembered_signals(query_signals: list[dict]) -> list[Signal]:
    """The upload's own hashes (not its derived views) from a review item."""
    out = []
    for sig in query_signals:
        kind = sig["signal_type"]
        sig_type = signal_type(kind)
        if sig_type.sequence:
            continue  # audio is judged through the file's exact hashes
        if sig_type.perceptual and sig.get("variant", "original") not in _REMEMBERED_VARIANTS:
            continue
        out.append(Signal(kind, bytes.fromhex(sig["value"]), sig.get("quality"), "original"))
    return out


class FloodGuard:
    """Matches per entry over a sliding window; an entry past max_matches in
    window_seconds is reported once, so it can be quarantined."""

    def __init__(self, max_matches: int, window_seconds: float) -> None:
        self.max_matches = max_matches
        self.window_seconds = window_seconds
        self._seen: dict[int, deque] = defaultdict(deque)
        self._lock = threading.Lock()

    def observe(self, entry_ids) -> list[tuple[int, int]]:
        """(entry id, matches in the window) for entries that just went over."""
        if self.max_matches <= 0:
            return []
        now = time.monotonic()
        over = []
        with self._lock:
            for entry_id in set(entry_ids):
                seen = self._seen[entry_id]
                seen.append(now)
                while seen and seen[0] < now - self.window_seconds:
                    seen.popleft()
                if len(seen) == self.max_matches + 1:
                    over.append((entry_id, len(seen)))
        return over


class Feedback:
    """What reviews and operators decided, applied to a fresh match result."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def apply(self, result: MatchResult, query: list[Signal], sets_by_id: dict) -> MatchResult:
        if not result.matches:
            return result
        matches = self._allow_listed(result.matches, sets_by_id)
        matches = self._suppressed(matches, query)
        matches = self._quarantined(matches)
        decision = strictest(m.decision for m in matches)
        return MatchResult(decision, matches)

    def _allow_listed(self, matches: list[Match], sets_by_id: dict) -> list[Match]:
        allowing = [
            m
            for m in matches
            if m.decision != ALLOW and getattr(sets_by_id.get(m.set_id), "allow_list", False)
        ]
        if not allowing:
            return matches
        by = allowing[0]
        return [
            replace(m, decision=ALLOW, reason=f"allow-listed by {by.set_name}/{by.entry_name}")
            for m in matches
        ]

    def _suppressed(self, matches: list[Match], query: list[Signal]) -> list[Match]:
        live = [m for m in matches if m.decision != ALLOW]
        suppressions = self.store.suppressions_for(m.entry_id for m in live)
        if not suppressions:
            return matches
        by_entry: dict[int, list[Suppression]] = defaultdict(list)
        for s in suppressions:
            by_entry[s.entry_id].append(s)
        out = []
        for m in matches:
            review_id = _covering_review(by_entry.get(m.entry_id, ()), query)
            if m.decision != ALLOW and review_id is not None:
                m = replace(
                    m, decision=ALLOW, reason=f"judged a false positive in review {review_id}"
                )
            out.append(m)
        return out

    def _quarantined(self, matches: list[Match]) -> list[Match]:
        blocking = [m for m in matches if m.decision == BLOCK]
        held = self.store.quarantined(m.entry_id for m in blocking)
        return [
            replace(m, decision=REVIEW, reason=f"entry in quarantine: {held[m.entry_id]}")
            if m.decision == BLOCK and m.entry_id in held
            else m
            for m in matches
        ]


def _covering_review(suppressions, query: list[Signal]) -> int | None:
    for s in suppressions:
        limit = SUPPRESS_DISTANCE.get(s.kind, 0)
        for sig in query:
            if sig.kind != s.kind or len(sig.value) != len(s.value):
                continue
            if (hamming(sig.value, s.value) if limit else int(sig.value != s.value)) <= limit:
                return s.review_id
    return None


class ReviewQueue:
    def __init__(self, store: Store, curation, claim_seconds: float) -> None:
        self.store = store
        self.curation = curation
        self.claim_seconds = claim_seconds

    # -- filling

    def enqueue(self, outcome, caller: str, sets_by_id: dict) -> int | None:
        """A review item for a Match outcome that needs a person, else None."""
        needs_person = outcome.decision == REVIEW or (
            outcome.decision == BLOCK
            and any(
                m.decision == BLOCK and getattr(sets_by_id.get(m.set_id), "review_blocks", False)
                for m in outcome.matches
            )
        )
        if not needs_person:
            return None
        from hashsvc.core import signal_json  # the history's own encoding

        return self.store.create_review_item(
            outcome.request_id,
            datetime.now(UTC),
            caller,
            outcome.media_type,
            outcome.client_ref,
            [signal_json(s) for s in outcome.query_signals if _worth_keeping(s)],
            [m.to_json() for m in outcome.matches if m.decision != ALLOW],
        )

    # -- reviewers

    def list(
        self, filter: ReviewFilter, page_size: int = 100, page_token: str = ""
    ) -> tuple[list[ReviewItem], str]:
        after_id, limit = validation.page(page_size, page_token)
        items = self.store.list_review_items(filter, after_id, limit)
        return items, (str(items[-1].id) if len(items) == limit else "")

    def claim(self, reviewer: str, item_id: int | None, filter: ReviewFilter) -> ReviewItem:
        item = self.store.claim_review_item(reviewer, self.claim_seconds, item_id, filter)
        if item is None:
            if item_id is None:
                raise NotFound("no open review item is free")
            current = self.store.get_review_item(item_id)
            if current is None:
                raise NotFound(f"no review item {item_id}")
            raise FailedPrecondition(
                f"review item {item_id} is {current.status}"
                + (f", claimed by {current.claimed_by}" if current.status == "open" else "")
            )
        self._audit("ClaimReview", reviewer, item, {"review_id": item.id})
        return item

    def resolve(
        self,
        reviewer: str,
        item_id: int,
        resolution: str,
        note: str = "",
        add_to_set: str = "",
        entry_name: str = "",
    ) -> ReviewItem:
        if resolution not in RESOLUTIONS:
            raise InvalidArgument(f"resolution must be one of {', '.join(RESOLUTIONS)}")
        if add_to_set and resolution != "confirmed":
            raise InvalidArgument("only a confirmed item's hashes can be added to a set")
        note = validation.text(note, "note")
        item = self.store.get_review_item(item_id)
        if item is None:
            raise NotFound(f"no review item {item_id}")
        if item.status != "open" or item.claimed_by != reviewer:
            raise FailedPrecondition(f"claim review item {item_id} before resolving it")
        added = None
        if add_to_set:
            added = self._add_confirmed(item, reviewer, add_to_set, entry_name)
        resolved = self.store.resolve_review_item(
            item_id, reviewer, resolution, note, added.id if added else None
        )
        if resolved is None:
            raise FailedPrecondition(f"the claim on review item {item_id} has expired")
        if resolution == "false_positive":
            remembered = remembered_signals(item.query_signals)
            self.store.add_suppressions(
                [
                    Suppression(m["entry_id"], s.kind, s.value, item.id)
                    for m in item.matches
                    for s in remembered
                ]
            )
        detail = {"review_id": item.id, "resolution": resolution, "note": note}
        if added is not None:
            detail["added_entry"] = f"{add_to_set}/{added.name}"
        self._audit("ResolveReview", reviewer, resolved, detail)
        return resolved

    def _add_confirmed(self, item: ReviewItem, reviewer: str, set_name: str, entry_name: str):
        signals = remembered_signals(item.query_signals)
        if not signals:
            raise FailedPrecondition("the review item holds no hashes to add")
        hash_set = self.curation.get_set(set_name)
        name = validation.entry_name(entry_name or f"review-{item.id}")
        labels = {"review_id": str(item.id), "confirmed_by": reviewer}
        entry = self.store.add_entry(
            hash_set.id, name, labels, item.media_type or "hash", signals, reviewer
        )
        self.curation.live.catch_up()
        return entry

    # -- operators

    def release_entry(self, operator: str, set_name: str, entry_name: str):
        entry = self.curation.get_entry(set_name, entry_name)
        if not self.store.release_entry(entry.id):
            raise FailedPrecondition(f"entry {entry_name!r} is not in quarantine")
        self.record_action(
            "ReleaseEntry", operator, {"set": set_name, "entry": entry_name, "entry_id": entry.id}
        )
        return entry

    def quarantine(self, entry_id: int, count: int, window_seconds: float) -> None:
        reason = f"{count} matches within {window_seconds:g} s"
        if self.store.quarantine_entry(entry_id, reason):
            self.record_action(
                "QuarantineEntry", "hashsvc", {"entry_id": entry_id, "reason": reason}
            )

    # -- audit

    def _audit(self, action: str, actor: str, item: ReviewItem, detail: dict) -> None:
        self.record_action(action, actor, detail, client_ref=item.client_ref)

    def record_action(
        self,
        action: str,
        actor: str,
        detail: dict,
        client_ref: str = "",
        status: str = "OK",
        error_message: str = "",
    ) -> None:
        """One reviewer's or operator's action, in the hash-chained history;
        a failed one names its status, as a failed Match does."""
        self.store.record_match(
            HistoryRecord(
                request_id=f"{action.lower()}-{time.time_ns()}",
                time=datetime.now(UTC),
                caller=actor,
                rpc=action,
                media_type="",
                decision="",
                status=status,
                error_message=error_message[:1000],
                client_ref=client_ref,
                detail=detail,
            )
        )


def _worth_keeping(sig: Signal) -> bool:
    # A reviewer needs the upload's own hashes, not every derived view.
    return (
        sig.variant in _REMEMBERED_VARIANTS
        or not signal_type(sig.kind).perceptual
        or (sig.variant.startswith("frame:") and sig.variant.count(":") == 1)
        or sig.kind in ("chromaprint", "videohash")
    )
