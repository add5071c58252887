"""Auditors' pages: history search (time range, decision, set, caller,
request id), a record with its matches, the chain's verification, and a
search exported as CSV or JSON lines."""

from __future__ import annotations

from datetime import UTC, datetime

from starlette.concurrency import iterate_in_threadpool
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

from hashsvc.base.errors import InvalidArgument
from hashsvc.http.console.exports import history_lines
from hashsvc.http.console.links import external_link
from hashsvc.http.console.review_pages import matches_view
from hashsvc.http.console.web import Refused, Web

_FIELDS = ("since", "until", "decision", "set", "caller", "request_id")


def parse_time(text: str, field: str) -> datetime | None:
    """An ISO time (the form's datetime-local gives `2026-12-07T01:30`), UTC
    unless it says otherwise."""
    text = text.strip()
    if not text:
        return None
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidArgument(f"{field}: not a time (YYYY-MM-DDTHH:MM)", field=field) from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def routes(web: Web) -> list[Route]:
    audit = web.core.audit

    def search(params):
        shown = {k: str(params.get(k, "")).strip()[:200] for k in _FIELDS}
        filter = audit.make_filter(
            parse_time(shown["since"], "since"),
            parse_time(shown["until"], "until"),
            shown["decision"] or None,
            shown["set"] or None,
            shown["caller"] or None,
        )
        return filter, shown

    async def history(request: Request):
        caller = await web.require(request, "Audit/QueryHistory")
        filter, shown = search(request.query_params)
        after = request.query_params.get("after", "")

        def read():
            if shown["request_id"]:
                ids = web.core.store.history_ids_by_request(shown["request_id"])
                found = [web.core.store.history_record(i) for i in ids]
                return [r for r in found if r is not None], ""
            return audit.query(filter, web.limits.page_size, after)

        records, next_token = await web.call(caller, read)
        return web.render(
            request,
            "history.html",
            caller,
            records=records,
            next_token=next_token,
            filters=shown,
            may_export=caller.may("Audit/ExportHistory"),
            may_verify=caller.may("Audit/VerifyHistory"),
        )

    async def record_page(request: Request):
        caller = await web.require(request, "Audit/QueryHistory")
        raw = request.path_params["record_id"]
        if not raw.isdigit() or len(raw) > 18:
            raise Refused(404, "no such history record")
        record = await web.call(caller, web.core.store.history_record, int(raw))
        if record is None:
            raise Refused(404, f"no history record {raw}")
        return web.render(
            request,
            "record.html",
            caller,
            record=record,
            matches=matches_view(record.matches),
            client_link=external_link(record.client_ref),
        )

    async def verify(request: Request):
        caller = await web.require(request, "Audit/VerifyHistory")
        result = await web.call(caller, audit.verify)
        return web.render(request, "verify.html", caller, result=result)

    async def export(request: Request):
        await web.require(request, "Audit/ExportHistory")
        fmt = request.query_params.get("format", "csv")
        if fmt not in ("csv", "jsonl"):
            raise InvalidArgument("format must be csv or jsonl")
        filter, _ = search(request.query_params)
        records = audit.export(filter)
        return StreamingResponse(
            iterate_in_threadpool(history_lines(records, fmt, web.limits.export_max_records)),
            media_type="text/csv; charset=utf-8" if fmt == "csv" else "application/x-ndjson",
            headers={"content-disposition": f'attachment; filename="history.{fmt}"'},
        )

    return [
        Route("/history", history, methods=["GET"]),
        Route("/history/verify", verify, methods=["GET"]),
        Route("/history/export", export, methods=["GET"]),
        Route("/history/{record_id}", record_page, methods=["GET"]),
    ]
