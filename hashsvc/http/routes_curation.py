"""Sets, entries, bulk loads, export and stats: the Curation RPCs over HTTP.
Operators' writes are recorded in the history as the gRPC servicer records
them (Core.record_action, under the set's name)."""

from __future__ import annotations

import io
from datetime import UTC, datetime

from starlette.responses import JSONResponse, Response, StreamingResponse

import loaders
from hashdb import EntryRecord
from hashsvc.base import validation
from hashsvc.base.decisions import Thresholds
from hashsvc.base.errors import InvalidArgument, quoted
from hashsvc.core.retro import check_window
from hashsvc.http.calls import Call, Endpoint, Fields, Param, content_kind
from hashsvc.http.jobs import FORMATS
from hashsvc.http.routes_match import SIGNAL_SCHEMA, signal_query
from hashsvc.http.uploads import MultipartUpload
from hashsvc.http.views import entry_json, set_json
from loaders.records import Record

# The fewest bytes a signal takes in a page (as the gRPC ListEntries counts):
# a page reads no more signals than max_page_bytes / this.
_SIGNAL_BYTES = 48
ENTRY_FORM_FIELDS = ("name", "label")
EXPORT_FORMATS = ("jsonl", "csv", "tsv")

THRESHOLDS_SCHEMA = {
    "type": "object",
    "description": 'per signal type: {"pdq": {"block": 31, "review": 56}}; local_features:'
    " block_inliers, review_inliers, block_coverage, review_coverage",
    "additionalProperties": {"type": "object"},
}
SET_SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "description": {"type": "string"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "thresholds": THRESHOLDS_SCHEMA,
        "allow_list": {"type": "boolean"},
        "review_blocks": {"type": "boolean"},
        "review_target": {"type": "boolean"},
        "enabled": {"type": "boolean"},
        "replace_labels": {"type": "boolean"},
        "retro_window_seconds": {
            "type": "integer",
            "minimum": 0,
            "description": "update only: how far back a retro-hunt looks (0: no retro-hunt)",
        },
        "retro_window_default": {
            "type": "boolean",
            "description": "update only: use the server's retro_window",
        },
    },
}
ENTRY_SCHEMA = {
    "type": "object",
    "required": ["name", "signal"],
    "properties": {
        "name": {"type": "string"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "signal": SIGNAL_SCHEMA,
    },
}


def _done(call: Call, action: str, **detail) -> None:
    call.core.record_action(action, call.caller.name, detail, set_names=(detail["set"],))


def _thresholds(body: Fields) -> dict[str, Thresholds]:
    """{"pdq": {"block": 31, "review": 56}, "local_features": {"block_inliers": 40, ...}}."""
    table = body.object("thresholds")
    if table is None:
        return {}
    out = {}
    for kind in table.values:
        limits = table.object(kind)
        if limits is None:
            raise InvalidArgument(f"thresholds.{kind} must be an object", field="thresholds")
        table.call.string(kind, f"thresholds[{quoted(kind, 40)}]")
        out[kind] = Thresholds(
            limits.int("block"),
            limits.int("review"),
            block_inliers=limits.int("block_inliers"),
            review_inliers=limits.int("review_inliers"),
            block_coverage=limits.float("block_coverage"),
            review_coverage=limits.float("review_coverage"),
        )
    return out


async def list_sets(call: Call) -> Response:
    include_disabled = call.query_bool("include_disabled")
    sets = await call.blocking(call.core.curation.list_sets, include_disabled)
    return JSONResponse({"sets": [set_json(s) for s in sets]})


async def create_set(call: Call) -> Response:
    body = Fields(call, await call.json())

    def create():
        record = call.core.curation.create_set(
            body.str("name"),
            body.str("description"),
            body.labels(),
            _thresholds(body),
            allow_list=body.bool("allow_list"),
            review_blocks=body.bool("review_blocks"),
            review_target=body.bool("review_target"),
        )
        _done(
            call, "CreateSet", set=record.name, allow_list=record.allow_list,
            review_target=record.review_target,
        )  # fmt: skip
        return record

    return JSONResponse(set_json(await call.blocking(create)), 201)


async def get_set(call: Call) -> Response:
    record = await call.blocking(call.core.curation.get_set, call.path_str("set"))
    return JSONResponse(set_json(record))


async def update_set(call: Call) -> Response:
    body = Fields(call, await call.json())
    name = call.path_str("set")

    # The retro-hunt window: seconds (0: none for this set), or
    # "retro_window_default": true for the server's retro_window, as UpdateSet.
    window_given = body.has("retro_window_seconds")
    window_default = body.bool("retro_window_default")
    if window_given and window_default:
        raise InvalidArgument(
            "give retro_window_seconds or retro_window_default, not both",
            field="retro_window_seconds",
        )
    window = body.int("retro_window_seconds") if window_given else None
    if window_given:  # before anything changes
        check_window(window)

    def update():
        record = call.core.curation.update_set(
            name,
            enabled=body.optional_bool("enabled"),
            description=body.optional_str("description"),
            labels=body.labels(),
            replace_labels=body.bool("replace_labels"),
            thresholds=_thresholds(body),
            review_blocks=body.optional_bool("review_blocks"),
            review_target=body.optional_bool("review_target"),
        )
        if window_given or window_default:
            record = call.core.retro.set_window(record.name, window)
        _done(
            call, "UpdateSet", set=record.name, enabled=record.enabled,
            review_target=record.review_target, retro_window_seconds=record.retro_window_seconds,
        )  # fmt: skip
        return record

    return JSONResponse(set_json(await call.blocking(update)))


async def list_entries(call: Call) -> Response:
    set_name = call.path_str("set")
    page_size, token = call.query_int("page_size"), call.query_str("page_token")
    max_signals = call.config.page_bytes() // _SIGNAL_BYTES
    page = await call.blocking(
        call.core.curation.entry_page, set_name, page_size, token, max_signals
    )
    entries = [entry_json(e, set_name) for e in page.entries]
    next_token = str(page.entries[-1].id) if page.more and page.entries else ""
    return JSONResponse({"entries": entries, "next_page_token": next_token})


async def add_entry(call: Call) -> Response:
    set_name = call.path_str("set")
    curation, caller = call.core.curation, call.caller
    kind = content_kind(call.request)
    if kind == "json":
        body = Fields(call, await call.json())
        signal = signal_query(body)
        hash_signal = (signal["signal_type"], signal["signal_value"], signal["signal_quality"])
        name, labels = body.str("name"), body.labels()

        def add():
            return curation.add_entry(set_name, name, labels, caller.name, signal=hash_signal)

    else:
        name = call.query_str("name")
        labels = call.strings(list(call.request.query_params.getlist("label")), "label")
        multipart = None
        if kind == "multipart":
            multipart = MultipartUpload(
                call.request.headers["content-type"], call.config.strings, ENTRY_FORM_FIELDS
            )

        def add():
            chunks = call.sync_chunks(call.body_chunks())
            media = multipart.chunks(chunks) if multipart is not None else chunks
            with call.services.spool.upload(media, caller.id, caller.name) as upload:
                entry_name, pairs = name, labels
                if multipart is not None:
                    entry_name = multipart.first("name", name) or multipart.filename
                    pairs = call.strings(multipart.fields.get("label", []), "label") or labels
                return curation.add_entry(
                    set_name, entry_name, validation.label_pairs(pairs), caller.name, media=upload
                )

    def add_and_record() -> EntryRecord:
        record = add()
        _done(call, "AddEntry", set=set_name, entry=record.name, entry_id=record.id)
        return record

    return JSONResponse(entry_json(await call.blocking(add_and_record), set_name), 201)


async def get_entry(call: Call) -> Response:
    set_name = call.path_str("set")
    record = await call.blocking(call.core.curation.get_entry, set_name, call.path_str("name"))
    return JSONResponse(entry_json(record, set_name))


async def remove_entry(call: Call) -> Response:
    set_name, name = call.path_str("set"), call.path_str("name")

    def remove():
        record = call.core.curation.remove_entry(set_name, name)
        _done(call, "RemoveEntry", set=set_name, entry=record.name, entry_id=record.id)
        return record

    return JSONResponse(entry_json(await call.blocking(remove), set_name))


async def find_entries(call: Call) -> Response:
    set_name = call.path_str("set")
    signal = signal_query(Fields(call, await call.json()))
    entries = await call.blocking(
        call.core.curation.find_entries, set_name, signal["signal_type"], signal["signal_value"]
    )
    return JSONResponse({"entries": [entry_json(e, set_name) for e in entries]})


async def release_entry(call: Call) -> Response:
    set_name = call.path_str("set")
    name = Fields(call, await call.json()).str("name")
    record = await call.blocking(call.core.review.release_entry, call.caller.name, set_name, name)
    return JSONResponse(entry_json(record, set_name))


async def bulk_load(call: Call) -> Response:
    set_name = call.path_str("set")
    fmt = call.query_str("format", "auto")
    if fmt not in FORMATS:
        raise InvalidArgument(f"format must be one of {', '.join(FORMATS)}", field="format")
    strict = call.query_bool("strict")
    jobs, caller = call.services.jobs, call.caller
    await call.blocking(call.core.curation.get_set, set_name)  # NOT_FOUND before the upload
    multipart = None
    if content_kind(call.request) == "multipart":
        multipart = MultipartUpload(call.request.headers["content-type"], call.config.strings, ())
    jobs.admit()

    def spool_and_start():
        chunks = call.sync_chunks(call.body_chunks())
        media = multipart.chunks(chunks) if multipart is not None else chunks
        upload = call.services.spool.upload(media, caller.id, caller.name)
        spooled = upload.__enter__()  # the job exits it when the load ends
        try:
            return jobs.start(caller, set_name, fmt, strict, upload, spooled)
        except BaseException:
            upload.__exit__(None, None, None)
            raise

    try:
        job = await call.blocking(spool_and_start)
    except BaseException:
        jobs.release_slot()
        raise
    return JSONResponse(job.json(), 202, headers={"Location": f"/v1/jobs/{job.id}"})


async def get_job(call: Call) -> Response:
    return JSONResponse(call.services.jobs.get(call.path_str("job_id"), call.caller).json())


def entry_records(entry: EntryRecord) -> list[Record]:
    """An entry's exchangeable signals as load-file rows (loaders/records.py)."""
    return loaders.records.entry_records(
        entry.name, entry.labels, entry.removed_at is not None, entry.signals
    )


def parse_time(text: str, name: str) -> datetime | None:
    if not text:
        return None
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidArgument(
            f"{name} must be an ISO 8601 time (2026-01-31T12:00:00Z), not {quoted(text)}",
            field=name,
        ) from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


async def export(call: Call) -> Response:
    set_name = call.path_str("set")
    fmt = call.query_str("format", "jsonl")
    if fmt not in EXPORT_FORMATS:
        raise InvalidArgument(f"format must be one of {', '.join(EXPORT_FORMATS)}", field="format")
    since = parse_time(call.query_str("since"), "since")
    since_micros = int(since.timestamp() * 1_000_000) if since else None
    # the set is looked up now: NOT_FOUND is an answer, not a broken download
    batches = await call.blocking(call.core.export_entries, set_name, since_micros)
    batches = iter(batches)

    def next_text(first: bool) -> str | None:
        batch = next(batches, None)
        if batch is None:
            return None
        out = io.StringIO()
        loaders.write(out, [r for e in batch for r in entry_records(e)], fmt)
        text = out.getvalue()
        if not first and fmt != "jsonl":  # one header, on the first batch
            text = text.split("\n", 1)[1] if "\n" in text else ""
        return text

    async def body():
        first = True
        while (text := await call.blocking(next_text, first)) is not None:
            first = False
            yield text.encode()

    media = (
        "application/x-ndjson"
        if fmt == "jsonl"
        else f"text/{fmt.replace('tsv', 'tab-separated-values')}"
    )
    filename = f"{set_name}.{fmt}"
    return StreamingResponse(
        body(),
        media_type=media,
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


async def stats(call: Call) -> Response:
    figures = await call.blocking(call.core.stats)
    return JSONResponse(
        {**figures, "indexed_signals": dict(sorted(figures["indexed_signals"].items()))}
    )


SET = Param("set", where="path", required=True, description="the set's name")
ENTRY = Param("name", where="path", required=True, description="the entry's name")
PAGING = (
    Param("page_size", "integer", description="0: 100; at most 1000"),
    Param("page_token", description="next_page_token of the previous page"),
)

ENDPOINTS = [
    Endpoint("GET", "/v1/sets", "Curation/ListSets", list_sets, "List the hash sets",
             params=(Param("include_disabled", "boolean"),)),
    Endpoint("POST", "/v1/sets", "Curation/CreateSet", create_set, "Create a hash set",
             body="json", body_schema=SET_SCHEMA, ok_status=201),
    Endpoint("GET", "/v1/sets/{set}", "Curation/GetSet", get_set, "A hash set", params=(SET,)),
    Endpoint("PATCH", "/v1/sets/{set}", "Curation/UpdateSet", update_set,
             "Update a set (enabled, description, labels, thresholds, review_blocks,"
             " review_target, retro_window_seconds)",
             params=(SET,), body="json", body_schema=SET_SCHEMA),
    Endpoint("GET", "/v1/sets/{set}/entries", "Curation/ListEntries", list_entries,
             "A page of the set's entries", params=(SET, *PAGING)),
    Endpoint("POST", "/v1/sets/{set}/entries", "Curation/AddEntryUpload", add_entry,
             "Add an entry: media (raw body or multipart `file`, with `name` and `label=k=v`"
             " as query or form fields) or a hash (JSON)",
             params=(SET, Param("name"), Param("label", "array", description="key=value")),
             body="media", body_schema=ENTRY_SCHEMA, ok_status=201),
    Endpoint("GET", "/v1/sets/{set}/entries/{name:path}", "Curation/GetEntry", get_entry,
             "An entry with its signals", params=(SET, ENTRY)),
    Endpoint("DELETE", "/v1/sets/{set}/entries/{name:path}", "Curation/RemoveEntry",
             remove_entry, "Remove an entry", params=(SET, ENTRY)),
    Endpoint("POST", "/v1/sets/{set}/find", "Curation/FindEntries", find_entries,
             "The set's entries holding exactly this (exact-type) hash", params=(SET,),
             body="json", body_schema={"type": "object", "properties": {"signal": SIGNAL_SCHEMA}}),
    Endpoint("POST", "/v1/sets/{set}/release", "Curation/ReleaseEntry", release_entry,
             "Acknowledge an entry's flood alert", params=(SET,), body="json",
             body_schema={"type": "object", "properties": {"name": {"type": "string"}}}),
    Endpoint("POST", "/v1/sets/{set}/load", "Curation/BulkLoad", bulk_load,
             "Load a hash list (CSV, TSV, JSONL, HMA, TCAP; raw body or multipart `file`)"
             " as a job; poll GET /v1/jobs/{job_id}",
             params=(SET, Param("format", description=", ".join(FORMATS)),
                     Param("strict", "boolean", description="write nothing if a row is bad")),
             body="media", ok_status=202),
    Endpoint("GET", "/v1/jobs/{job_id}", "Curation/BulkLoad", get_job,
             "A bulk-load job's progress and result",
             params=(Param("job_id", where="path", required=True),)),
    Endpoint("GET", "/v1/sets/{set}/export", "Curation/ExportEntries", export,
             "Download the set's entries (streamed) as a load file",
             params=(SET, Param("format", description=", ".join(EXPORT_FORMATS)),
                     Param("since", description="ISO 8601: only entries changed since")),
             answers="file"),
    Endpoint("GET", "/v1/stats", "Curation/GetStats", stats, "Counts of sets, entries,"
             " indexed signals and history records"),
]  # fmt: skip
