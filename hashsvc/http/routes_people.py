"""The review queue, the history and the tokens: the Review, Audit and Admin
RPCs over HTTP."""

from __future__ import annotations

import json

from starlette.responses import JSONResponse, Response, StreamingResponse

from hashdb import ReviewFilter
from hashsvc.base import media_kinds, validation
from hashsvc.base.errors import InvalidArgument, NotFound
from hashsvc.core.events import event_json
from hashsvc.core.retro import public_run_json
from hashsvc.http.calls import Call, Endpoint, Fields, Param, parse_int
from hashsvc.http.routes_curation import PAGING, parse_time
from hashsvc.http.views import history_json, review_item_json, token_json

# History records exported per worker-thread round trip.
_EXPORT_CHUNK = 200


def _review_filter(call: Call, get) -> ReviewFilter:
    """get(name) -> the filter field's text ("" when not given)."""
    set_id = None
    if set_name := get("set"):
        set_id = call.core.set_ids_by_name().get(set_name)
        if set_id is None:
            raise NotFound(f"no such set: {set_name}")
    label = None
    if text := get("label"):
        key, sep, value = text.partition("=")
        if not sep:
            raise InvalidArgument("label filter must be key=value", field="label")
        label = (key.strip(), value.strip())
    media = get("media_type")
    if media and media not in media_kinds.MEDIA_KINDS:
        raise InvalidArgument(
            f"media_type must be one of {', '.join(media_kinds.MEDIA_KINDS)}", field="media_type"
        )
    return ReviewFilter(
        status=get("status") or "open",
        set_id=set_id,
        label=label,
        media_type=media or None,
        caller=get("caller") or None,
    )


REVIEW_FILTER = (
    Param("status", description="open (default), confirmed, false_positive"),
    Param("set"),
    Param("label", description="key=value"),
    Param("media_type", description=", ".join(media_kinds.MEDIA_KINDS)),
    Param("caller"),
)


async def list_review_items(call: Call) -> Response:
    page_size, token = call.query_int("page_size"), call.query_str("page_token")

    def page():
        return call.core.review.list(_review_filter(call, call.query_str), page_size, token)

    items, next_token = await call.blocking(page)
    return JSONResponse(
        {"items": [review_item_json(i) for i in items], "next_page_token": next_token}
    )


def _reviewer(call: Call) -> str:
    # a claim belongs to the token that made it (hashsvc/api/calls.py reviewer_identity)
    return f"{call.caller.name}#{call.caller.id}"


async def claim_review_item(call: Call) -> Response:
    body = Fields(call, await call.json())
    item_id = body.int("id")
    if item_id < 0:
        raise InvalidArgument("id must be positive", field="id")

    def claim():
        item_filter = _review_filter(call, lambda name: body.str(name))
        return call.core.review.claim(_reviewer(call), item_id or None, item_filter)

    return JSONResponse(review_item_json(await call.blocking(claim)))


async def resolve_review_item(call: Call) -> Response:
    item_id = parse_int(call.path_str("id"), "id")
    body = Fields(call, await call.json())
    item = await call.blocking(
        call.core.review.resolve,
        _reviewer(call),
        item_id,
        body.str("resolution"),
        body.str("note"),
        body.str("add_to_set"),
        body.str("entry_name"),
    )
    return JSONResponse(review_item_json(item))


def _history_filter(call: Call):
    return call.core.audit.make_filter(
        since=parse_time(call.query_str("since"), "since"),
        until=parse_time(call.query_str("until"), "until"),
        decision=call.query_str("decision") or None,
        set_name=call.query_str("set") or None,
        caller=call.query_str("caller") or None,
    )


HISTORY_FILTER = (
    Param("since", description="ISO 8601"),
    Param("until", description="ISO 8601"),
    Param("decision", description="allow, review, block"),
    Param("set"),
    Param("caller", description="the token name"),
)


async def query_history(call: Call) -> Response:
    page_size, token = call.query_int("page_size"), call.query_str("page_token")

    def page():
        return call.core.audit.query(_history_filter(call), page_size, token)

    records, next_token = await call.blocking(page)
    return JSONResponse(
        {"records": [history_json(r) for r in records], "next_page_token": next_token}
    )


async def export_history(call: Call) -> Response:
    records = iter(await call.blocking(lambda: call.core.audit.export(_history_filter(call))))

    def next_lines() -> bytes:
        lines = []
        for record in records:
            lines.append(json.dumps(history_json(record), ensure_ascii=False) + "\n")
            if len(lines) >= _EXPORT_CHUNK:
                break
        return "".join(lines).encode()

    async def body():
        while text := await call.blocking(next_lines):
            yield text

    return StreamingResponse(body(), media_type="application/x-ndjson")


async def verify_history(call: Call) -> Response:
    result = await call.blocking(call.core.audit.verify)
    return JSONResponse(
        {
            "intact": result.intact,
            "records_checked": result.records_checked,
            "unchained_records": result.unchained_records,
            "head_hash": result.head_hash,
            "problems": [{"record_id": i, "problem": p} for i, p in result.problems],
            "checkpoints_checked": result.checkpoints_checked,
            "notes": list(result.notes),
            "truncation_checked": result.truncation_checked,
        }
    )


async def create_token(call: Call) -> Response:
    body = Fields(call, await call.json())
    record, token = await call.blocking(
        call.core.create_token,
        call.caller.name,
        body.str("role"),
        body.str("name"),
        body.int("expires_in_seconds"),
    )
    # the secret is shown once, here
    return JSONResponse({"token": token, "info": token_json(record)}, 201)


async def list_tokens(call: Call) -> Response:
    tokens = await call.blocking(call.core.list_tokens)
    return JSONResponse({"tokens": [token_json(t) for t in tokens]})


async def revoke_token(call: Call) -> Response:
    token_id = parse_int(call.path_str("id"), "id")
    record = await call.blocking(call.core.revoke_token, call.caller.name, token_id)
    return JSONResponse(token_json(record))


async def list_events(call: Call) -> Response:
    """A page of the outbox (or of the events an endpoint never took), with
    each endpoint's position: what a pulling consumer pages from a cursor."""
    failed = call.query_bool("failed")
    from_id, page_size = call.query_int("from"), call.query_int("page_size")
    token = call.query_str("page_token")
    page = await call.blocking(call.core.event_feed.list, failed, from_id, page_size, token)
    return JSONResponse(
        {
            "events": [event_json(e) for e in page.events],
            "failures": [
                {
                    "endpoint": f.endpoint,
                    "event_id": f.event_id,
                    "event_type": f.event_type,
                    "failed_at": f.failed_at.isoformat().replace("+00:00", "Z"),
                    "attempts": f.attempts,
                    "last_error": f.last_error,
                }
                for f in page.failures
            ],
            "endpoints": [
                {
                    "name": e.name,
                    "delivered_through": e.delivered_through,
                    "attempts": e.attempts,
                    "last_error": e.last_error,
                    "failed_events": page.failed_counts.get(e.name, 0),
                }
                for e in page.endpoints
            ],
            "next_page_token": page.next_page_token,
            "last_event_id": page.last_event_id,
        }
    )


def _run_json(call: Call, run) -> dict:
    # the same object as `hashsvc retro list --json` (one writer of it)
    hash_set = call.core.live.sets_by_id.get(run.set_id) if run.set_id else None
    return public_run_json(run, hash_set.name if hash_set else "")


async def start_retro_run(call: Call) -> Response:
    body = Fields(call, await call.json())
    run = await call.blocking(
        call.core.start_retro_run,
        call.caller.name,
        body.str("set"),
        body.int("since_seconds"),
        body.int("resume_run_id"),
    )
    return JSONResponse(_run_json(call, run), 202)


async def list_retro_runs(call: Call) -> Response:
    page_size, token = call.query_int("page_size"), call.query_str("page_token")

    def page():
        after_id, limit = validation.page(page_size, token)
        runs = call.core.retro.list_runs(after_id, limit)
        return runs, (str(runs[-1].id) if len(runs) == limit else "")

    runs, next_token = await call.blocking(page)
    return JSONResponse({"runs": [_run_json(call, r) for r in runs], "next_page_token": next_token})


async def get_retro_run(call: Call) -> Response:
    run_id = parse_int(call.path_str("id"), "id")
    run = await call.blocking(call.core.retro.get_run, run_id)
    return JSONResponse(_run_json(call, run))


async def prune_history(call: Call) -> Response:
    body = Fields(call, await call.json())
    before = parse_time(body.str("before"), "before")
    if before is None:
        raise InvalidArgument("prune needs `before` (an ISO 8601 time)", field="before")
    pruned = await call.blocking(call.core.prune_history, call.caller.name, before)
    return JSONResponse({"records_pruned": pruned})


ID = Param("id", "integer", where="path", required=True)
FILTER_SCHEMA = {
    "type": "object",
    "properties": {
        "id": {"type": "integer", "description": "this item (0 or none: the oldest free one)"},
        **{p.name: {"type": "string"} for p in REVIEW_FILTER},
    },
}
RESOLVE_SCHEMA = {
    "type": "object",
    "required": ["resolution"],
    "properties": {
        "resolution": {"type": "string", "enum": ["confirmed", "false_positive"]},
        "note": {"type": "string"},
        "add_to_set": {"type": "string"},
        "entry_name": {"type": "string"},
    },
}
TOKEN_SCHEMA = {
    "type": "object",
    "required": ["role"],
    "properties": {
        "role": {"type": "string"},
        "name": {"type": "string"},
        "expires_in_seconds": {"type": "integer", "minimum": 0},
    },
}

ENDPOINTS = [
    Endpoint("GET", "/v1/review/items", "Review/ListReviewItems", list_review_items,
             "A page of the review queue, oldest first", params=(*REVIEW_FILTER, *PAGING)),
    Endpoint("POST", "/v1/review/claim", "Review/ClaimReviewItem", claim_review_item,
             "Claim an item (by id, or the oldest free one matching the filter)",
             body="json", body_schema=FILTER_SCHEMA),
    Endpoint("POST", "/v1/review/items/{id}/resolve", "Review/ResolveReviewItem",
             resolve_review_item, "Resolve a claimed item as confirmed or false_positive",
             params=(ID,), body="json", body_schema=RESOLVE_SCHEMA),
    Endpoint("GET", "/v1/history", "Audit/QueryHistory", query_history,
             "A page of the history (matches and actions)",
             params=(*HISTORY_FILTER, *PAGING)),
    Endpoint("GET", "/v1/history/export", "Audit/ExportHistory", export_history,
             "The history matching the filters, streamed as JSON lines",
             params=HISTORY_FILTER, answers="jsonl"),
    Endpoint("GET", "/v1/history/verify", "Audit/VerifyHistory", verify_history,
             "Verify the history's hash chain and checkpoints"),
    Endpoint("POST", "/v1/tokens", "Admin/CreateToken", create_token,
             "Create an API token (its secret is answered once)", body="json",
             body_schema=TOKEN_SCHEMA, ok_status=201),
    Endpoint("GET", "/v1/tokens", "Admin/ListTokens", list_tokens, "List the API tokens"),
    Endpoint("DELETE", "/v1/tokens/{id}", "Admin/RevokeToken", revoke_token,
             "Revoke an API token", params=(ID,)),
    Endpoint("POST", "/v1/retro/runs", "Retro/StartRetroRun", start_retro_run,
             "Start a retro-hunt now: the entries added within the window against the "
             "uploads let through within it (follow it with GET /v1/retro/runs/{id})",
             body="json", ok_status=202,
             body_schema={"type": "object", "properties": {
                 "set": {"type": "string", "description": "empty: every enabled set"},
                 "since_seconds": {"type": "integer", "minimum": 0,
                                   "description": "the window; 0: the set's (or the server's)"},
                 "resume_run_id": {"type": "integer", "minimum": 0,
                                   "description": "a failed run to queue again (from its "
                                   "checkpoint; no set or since)"}}}),
    Endpoint("GET", "/v1/retro/runs", "Retro/ListRetroRuns", list_retro_runs,
             "Retro-hunt runs, newest first", params=PAGING),
    Endpoint("GET", "/v1/retro/runs/{id}", "Retro/ListRetroRuns", get_retro_run,
             "One retro-hunt run", params=(ID,)),
    Endpoint("POST", "/v1/history/prune", "Retro/PruneHistory", prune_history,
             "Drop the query signals of history records before a time (the records and "
             "the chain stay)", body="json",
             body_schema={"type": "object", "required": ["before"],
                          "properties": {"before": {"type": "string", "format": "date-time"}}}),
    Endpoint("GET", "/v1/events", "Events/ListEvents", list_events,
             "A page of the event outbox from an event id (or, failed=true, the events an "
             "endpoint never took), with each webhook endpoint's position",
             params=(Param("from", "integer", description="first event id (0: the oldest kept)"),
                     Param("failed", "boolean", description="the failed deliveries instead"),
                     *PAGING)),
]  # fmt: skip
