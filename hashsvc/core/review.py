"""The review queue: what needs a person, and what reviewers decide.

* Every Match ending in REVIEW (and BLOCK, for sets with review_blocks) becomes
  a review item; reviewers claim items (a claim expires) and resolve them as
  `confirmed` or `false_positive`.
* confirmed: the upload's hashes may be added to a chosen set as a new entry,
  with provenance labels (which review, who), so the next copy is caught.
* confirmed uploads are added only to sets an operator marked as review
  targets, never to an allow list (a reviewer must not un-block known content).
* false_positive: the (upload hash, known entry) pair is remembered
  (hashsvc/matching/feedback.py applies it to later matches).
* Flood alerts: an entry matching far more often than usual (one bad hash
  matching everything, or a mass re-upload) raises one alert: a metric, a
  history record and a review item, until an operator acknowledges it. Its
  matches keep their decision: a mass re-upload of known content stays
  blocked. The count is kept in the store, shared by all replicas.

Every reviewer and operator action is written to the hash-chained history.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime

from hashdb import (
    EntryLookup,
    FloodStore,
    NewEntry,
    ReviewFilter,
    ReviewItem,
    ReviewStore,
    SetLookup,
    Suppression,
)
from hashdb.review_sql import RESOLUTIONS
from hashdb.times import to_micros
from hashsvc.base import validation
from hashsvc.base.errors import (
    FailedPrecondition,
    HashsvcError,
    InvalidArgument,
    NotFound,
    quoted,
    status_name,
)
from hashsvc.base.media_kinds import HASH, REMEMBERED_VARIANTS, worth_keeping
from hashsvc.base.signals import Signal, signal_json, signal_type
from hashsvc.core import events
from hashsvc.core.audit import Audit
from hashsvc.matching.matcher import Match
from hashsvc.matching.policy import ALLOW, BLOCK, REVIEW

# Who raises flood alerts, in the history and the review queue.
FLOOD_CALLER = "hashsvc"


def remembered_signals(query_signals: list[dict]) -> list[Signal]:
    """The upload's own hashes (not its derived views) from a review item."""
    out = []
    for sig in query_signals:
        kind = sig["signal_type"]
        sig_type = signal_type(kind)
        if sig_type.sequence:
            continue  # audio is judged through the file's exact hashes
        if sig_type.perceptual and sig.get("variant", "original") not in REMEMBERED_VARIANTS:
            continue
        out.append(Signal(kind, bytes.fromhex(sig["value"]), sig.get("quality"), "original"))
    return out


class ReviewQueue:
    def __init__(
        self,
        *,
        reviews: ReviewStore,
        flood: FloodStore,
        entries: EntryLookup,
        sets: SetLookup,
        audit: Audit,
        curation,
        claim_seconds: float,
    ) -> None:
        self.reviews = reviews
        self.flood = flood
        self.entries = entries
        self.sets = sets
        # the one writer of history records (hashsvc/core/audit.py)
        self.audit = audit
        self.curation = curation
        self.claim_seconds = claim_seconds
        # Called with each resolved item (its matched entries' feeds send the
        # verdict back to their source, hashsvc/exchange); must not raise.
        self.on_resolved: Callable[[ReviewItem], None] | None = None

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
        return self.reviews.create_review_item(
            outcome.request_id,
            datetime.now(UTC),
            caller,
            outcome.media_type,
            outcome.client_ref,
            [signal_json(s) for s in outcome.query_signals if worth_keeping(s)],
            [m.to_json() for m in outcome.matches if m.decision != ALLOW],
        )

    # -- reviewers

    def list(
        self, filter: ReviewFilter, page_size: int = 100, page_token: str = ""
    ) -> tuple[list[ReviewItem], str]:
        after_id, limit = validation.page(page_size, page_token)
        items = self.reviews.list_review_items(filter, after_id, limit)
        return items, (str(items[-1].id) if len(items) == limit else "")

    def claim(self, reviewer: str, item_id: int | None, filter: ReviewFilter) -> ReviewItem:
        item = self.reviews.claim_review_item(reviewer, self.claim_seconds, item_id, filter)
        if item is None:
            if item_id is None:
                raise NotFound("no open review item is free")
            current = self.reviews.get_review_item(item_id)
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
        shown_claim: int | None = None,
    ) -> ReviewItem:
        """shown_claim: the claim's end (microseconds) as the reviewer's page
        showed it (the web console): resolved only under that very claim."""
        if resolution not in RESOLUTIONS:
            raise InvalidArgument(f"resolution must be one of {', '.join(RESOLUTIONS)}")
        if add_to_set and resolution != "confirmed":
            raise InvalidArgument("only a confirmed item's hashes can be added to a set")
        note = validation.text(note, "note")
        item = self.reviews.get_review_item(item_id)
        if item is None:
            raise NotFound(f"no review item {item_id}")
        if item.status != "open" or item.claimed_by != reviewer:
            raise FailedPrecondition(f"claim review item {item_id} before resolving it")
        if shown_claim is not None and to_micros(item.claim_expires_at) != shown_claim:
            raise FailedPrecondition(
                f"review item {item_id} was claimed again since its page was shown: open it again"
            )
        new_entry = (
            self._confirmed_entry(item, reviewer, add_to_set, entry_name) if add_to_set else None
        )
        suppressions = []
        if resolution == "false_positive":
            remembered = remembered_signals(item.query_signals)
            suppressions = [
                Suppression(m["entry_id"], s.kind, s.value, item.id)
                for m in item.matches
                for s in remembered
            ]
        detail = {"review_id": item.id, "resolution": resolution, "note": note}
        if new_entry is not None:
            detail["added_entry"] = f"{add_to_set}/{new_entry.name}"
        # One transaction: the entry is added, the item resolved and the false
        # positive remembered together, or (an expired claim, a taken name)
        # none of it, so the same call can simply be made again.
        try:
            resolved = self.reviews.resolve_review_item(
                item_id,
                reviewer,
                resolution,
                note,
                new_entry,
                suppressions,
                retro=self.curation.retro_owed("ResolveReview") if new_entry is not None else None,
                claim_expires_at=shown_claim,
                events=[
                    events.review_resolved_event(
                        review_id=item.id,
                        request_id=item.request_id,
                        resolution=resolution,
                        reviewer=reviewer,
                        client_ref=item.client_ref,
                        media_type=item.media_type,
                        matches=item.matches,
                        added_to_set=add_to_set if new_entry is not None else "",
                        added_entry=new_entry.name if new_entry is not None else "",
                    )
                ],
            )
            if resolved is None:
                raise FailedPrecondition(f"the claim on review item {item_id} has expired")
        except HashsvcError as exc:
            self.audit.record_action(
                "ResolveReview",
                reviewer,
                detail,
                client_ref=item.client_ref,
                status=status_name(exc),
                error_message=str(exc),
            )
            raise
        if new_entry is not None:
            self.curation.live.catch_up()
            self.curation.entries_added([resolved.added_entry_id], "ResolveReview", reviewer)
        # an entry added to a set is that set's curation: `history --set` shows it
        self.audit.record_action(
            "ResolveReview",
            reviewer,
            detail,
            client_ref=resolved.client_ref,
            set_ids=(new_entry.set_id,) if new_entry is not None else (),
        )
        if self.on_resolved is not None:
            self.on_resolved(resolved)
        return resolved

    def _confirmed_entry(
        self, item: ReviewItem, reviewer: str, set_name: str, entry_name: str
    ) -> NewEntry:
        hash_set = self.curation.get_set(set_name)
        if hash_set.allow_list:
            raise FailedPrecondition(
                f"set {quoted(set_name)} is an allow list: reviewers never add to one"
            )
        if not hash_set.review_target:
            raise FailedPrecondition(
                f"set {quoted(set_name)} is not a review target: an operator marks it with"
                f" `hashsvc sets update {set_name} --review-target`"
            )
        signals = remembered_signals(item.query_signals)
        if not signals:
            raise FailedPrecondition("the review item holds no hashes to add")
        name = validation.entry_name(entry_name or f"review-{item.id}")
        labels = {"review_id": str(item.id), "confirmed_by": reviewer}
        return NewEntry(
            hash_set.id, name, labels, item.media_type or HASH, tuple(signals), reviewer
        )

    # -- operators

    def release_entry(self, operator: str, set_name: str, entry_name: str):
        """Acknowledges the entry's flood alert; its count starts again, so a
        later flood alerts again."""
        entry = self.curation.get_entry(set_name, entry_name)
        if not self.flood.release_entry(entry.id):
            raise FailedPrecondition(f"entry {quoted(entry_name)} has no open flood alert")
        self.audit.record_action(
            "ReleaseEntry",
            operator,
            {"set": set_name, "entry": entry_name, "entry_id": entry.id},
            set_ids=(entry.set_id,),  # `history --set` shows it
        )
        return entry

    def raise_flood_alert(self, entry_id: int, count: int, window_seconds: float) -> str | None:
        """Opens the entry's flood alert with a review item (a person looks:
        a hash that matches everything?) and its history record; the set's
        name, or None if an alert was open already or the entry is gone."""
        entry = self.entries.get_entries([entry_id], with_signals=True).get(entry_id)
        hash_set = self.sets.get_set_by_id(entry.set_id) if entry is not None else None
        if entry is None or hash_set is None:
            return None
        reason = (
            f"flood: {count} matches within {window_seconds:g} s; its matches keep their"
            " decision. A hash that matches everything is removed by an operator;"
            " `hashsvc entries release` acknowledges the alert"
        )
        match = Match(
            set_id=hash_set.id,
            set_name=hash_set.name,
            entry_id=entry.id,
            entry_name=entry.name,
            signal_type=entry.signals[0].kind if entry.signals else "",
            distance=0,
            labels=entry.labels,
            decision=BLOCK,
            query_variant="",
            known_variant="",
            reason=reason,
        )
        request_id = f"floodalert-{entry_id}-{time.time_ns()}"
        # No query signals: a false-positive verdict on the alert must not
        # remember the entry's own hashes (that would allow its exact copies).
        item = {
            "request_id": request_id,
            "created_at": datetime.now(UTC),
            "caller": FLOOD_CALLER,
            "media_type": entry.media_type,
            "client_ref": "",
            "query_signals": [],
            "matches": [match.to_json()],
        }
        quarantined = events.quarantine_event(
            set_name=hash_set.name,
            entry=entry.name,
            matches=count,
            window_seconds=window_seconds,
            reason=reason,
        )
        review_id = self.flood.raise_flood_alert(entry_id, reason, item, events=[quarantined])
        if review_id is None:
            return None
        self.audit.record_action(
            "FloodAlert",
            FLOOD_CALLER,
            {
                "set": hash_set.name,
                "entry": entry.name,
                "entry_id": entry.id,
                "matches": count,
                "window_seconds": window_seconds,
                "review_id": review_id,
            },
            set_ids=(hash_set.id,),  # `history --set` shows it
        )
        return hash_set.name

    # -- audit

    def _audit(self, action: str, actor: str, item: ReviewItem, detail: dict) -> None:
        self.audit.record_action(action, actor, detail, client_ref=item.client_ref)
