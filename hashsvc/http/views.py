"""The core's records as the API's JSON. Sets, entries, history and review
items are written by hashsvc/base/record_json.py, as the CLI's --json output
is (a public contract): a script reads the same object from `hashsvc history
--json` and `GET /v1/history`. Matches come from hashsvc/base/match_json.py,
as `hashsvc match --json`'s do."""

from __future__ import annotations

from hashdb import EntryRecord, HashSetRecord, HistoryRecord, ReviewItem, TokenRecord
from hashdb.exchange_sql import FeedbackRecord, FeedRecord
from hashdb.times import from_micros
from hashsvc.base import record_json
from hashsvc.base.record_json import iso
from hashsvc.core.audit import history_signal_json
from hashsvc.core.bulk_rows import BulkResult
from hashsvc.core.core import MatchOutcome
from hashsvc.exchange.feeds import FetchResult
from hashsvc.matching.matcher import Match


def match_outcome_json(label: str, outcome: MatchOutcome) -> dict:
    """The object `hashsvc match --json` prints for one file: `file` is the
    upload's name (a hash's TYPE:HEX)."""
    return {
        "file": label,
        "decision": outcome.decision,
        "request_id": outcome.request_id,
        "matches": [m.public_json() for m in outcome.matches],
        **({"notes": list(outcome.notes)} if outcome.notes else {}),
    }


def stored_matches_json(matches: list[dict]) -> list[dict]:
    """Matches as the history and review items keep them, in the public shape."""
    return [Match.from_json(m).public_json() for m in matches]


def stored_signal_json(s: dict) -> dict:
    return record_json.signal_json(
        signal_type=s["signal_type"],
        value=s["value"],
        quality=s.get("quality") or 0,
        variant=s.get("variant", ""),
        size=s.get("bytes", 0),
        sha256=s.get("sha256", ""),
    )


def set_json(s: HashSetRecord) -> dict:
    return record_json.set_json(
        name=s.name,
        description=s.description,
        labels=s.labels,
        enabled=s.enabled,
        entries=s.entry_count,
        thresholds={k: record_json.threshold_json(k, t) for k, t in s.thresholds.items()},
        allow_list=s.allow_list,
        review_blocks=s.review_blocks,
        review_target=s.review_target,
        retro_window_seconds=s.retro_window_seconds,
        created_at=s.created_at,
    )


def entry_json(e: EntryRecord, set_name: str) -> dict:
    return record_json.entry_json(
        set_name=set_name,
        name=e.name,
        entry_id=e.id,
        labels=e.labels,
        media_type=e.media_type,
        # an opaque blob (local features) as its size and SHA-256, as in the history
        signals=[stored_signal_json(history_signal_json(s)) for s in e.signals],
        created_at=e.created_at,
        added_by=e.added_by,
        removed_at=e.removed_at,
    )


def history_json(r: HistoryRecord) -> dict:
    return record_json.history_json(
        record_id=r.id,
        request_id=r.request_id,
        time=r.time,
        caller=r.caller,
        caller_token_id=r.caller_token_id,
        rpc=r.rpc,
        media_type=r.media_type or "unspecified",
        decision=r.decision,
        status=r.status,
        error_message=r.error_message,
        client_ref=r.client_ref,
        media_bytes=r.media_bytes,
        query_signals=[stored_signal_json(s) for s in r.query_signals],
        matches=stored_matches_json(r.matches),
        detail=r.detail,
    )


def review_item_json(item: ReviewItem) -> dict:
    return record_json.review_item_json(
        item_id=item.id,
        source=item.source,
        request_id=item.request_id,
        created_at=item.created_at,
        caller=item.caller,
        media_type=item.media_type,
        client_ref=item.client_ref,
        status=item.status,
        claimed_by=item.claimed_by,
        claim_expires_at=item.claim_expires_at,
        resolved_by=item.resolved_by,
        resolved_at=item.resolved_at,
        note=item.note,
        added_entry_id=item.added_entry_id,
        query_signals=[stored_signal_json(s) for s in item.query_signals],
        matches=stored_matches_json(item.matches),
    )


def token_json(t: TokenRecord) -> dict:
    return {
        "id": t.id,
        "name": t.name,
        "role": t.role,
        "created_at": iso(t.created_at),
        "revoked_at": iso(t.revoked_at),
        "expires_at": iso(t.expires_at),
    }


def bulk_result_json(result: BulkResult) -> dict:
    return {
        "rows": result.rows,
        "added": result.added,
        "updated": result.updated,
        "removed": result.removed,
        "unchanged": result.unchanged,
        "rejected_count": result.rejected_count,
        "rejected": [
            {"source": r.source, "line": r.line, "reason": r.reason} for r in result.rejected
        ],
        "written": result.written,
    }


def feed_status_json(feed: FeedRecord, set_name: str) -> dict:
    return record_json.feed_status_json(
        name=feed.name,
        api=feed.api,
        set_name=set_name,
        enabled=feed.enabled,
        last_fetch=from_micros(feed.last_fetch_at),
        result=feed.last_result,
        error=feed.last_error,
        added=feed.added,
        updated=feed.updated,
        deleted=feed.deleted,
        skipped=feed.skipped,
        rejected=feed.rejected,
        failures=feed.failures,
        checkpoint=feed.checkpoint,
        next_run=from_micros(feed.next_run_at),
        fetching_replica=feed.lease_owner,
    )


def feed_json(feed: FeedRecord, set_name: str) -> dict:
    return record_json.feed_json(
        feed_status_json(feed, set_name),
        labels=feed.labels,
        options=feed.options,
        every_seconds=feed.every_seconds,
        has_credentials=feed.has_credentials,
        items=feed.items,
    )


def feedback_json(item: FeedbackRecord) -> dict:
    return record_json.feedback_json(
        item_id=item.id,
        entry=item.entry_name,
        verdict=item.verdict,
        state=item.state,
        attempts=item.attempts,
        error=item.last_error,
        created_at=from_micros(item.created_at),
        sent_at=from_micros(item.sent_at),
    )


def fetch_json(result: FetchResult) -> dict:
    """A fetch's progress or result, as `hashsvc exchange fetch --json` prints it."""
    return {
        "feed": result.feed,
        "pages": result.pages,
        "items": result.items,
        "added": result.added,
        "updated": result.updated,
        "deleted": result.deleted,
        "skipped": result.skipped,
        "rejected": result.rejected,
        "seconds": round(result.seconds, 3),
    }
