"""POST /v1/match: an upload (raw body, or multipart `file`) or a hash (JSON
`{"signal": {...}}`), answered with the object `hashsvc match --json` prints.
Every call, refused or not, leaves its history record, as a gRPC Match does:
core.match() records the ones it gets, record_failed_match the ones refused
before (too large, malformed, the client gone)."""

from __future__ import annotations

import functools

import anyio
from starlette.responses import JSONResponse, Response

from hashsvc.base.errors import HashsvcError, InvalidArgument
from hashsvc.core.core import MatchQuery
from hashsvc.http.calls import Call, Endpoint, Fields, Param, content_kind
from hashsvc.http.errors import Cancelled
from hashsvc.http.uploads import MultipartUpload
from hashsvc.http.views import match_outcome_json

# A raw body of known length up to this is read into memory and matched as a
# gRPC Match's media is; a larger one, or one of unknown length, is streamed
# to the spool as MatchUpload's chunks are (the CLI's own threshold,
# hashsvc/client/client.py STREAM_ABOVE_BYTES).
INLINE_BODY_BYTES = 4 * 1024 * 1024
MATCH_FORM_FIELDS = ("client_ref", "sets", "filename")

SIGNAL_SCHEMA = {
    "type": "object",
    "required": ["signal_type", "value"],
    "properties": {
        "signal_type": {"type": "string", "example": "pdq"},
        "value": {"type": "string", "description": "the hash in its text form (hex)"},
        "quality": {"type": "integer", "minimum": 0, "maximum": 100},
    },
}


async def match(call: Call) -> Response:
    core, caller = call.core, call.caller
    client_ref = ""
    received = [0]
    state = {"matching": False, "rpc": "Match"}
    try:
        client_ref = call.query_str("client_ref")
        sets = call.query_list("sets")
        label = call.query_str("filename")
        kind = content_kind(call.request)
        length = call.declared_length()
        if kind == "json":
            body = Fields(call, await call.json())
            client_ref = body.str("client_ref", client_ref)
            sets = body.str_list("sets") or sets
            query = MatchQuery(**signal_query(body), client_ref=client_ref, sets=sets)
            label = f"{query.signal_type}:{query.signal_value}"
        elif kind == "raw" and length is not None and length <= INLINE_BODY_BYTES:
            data = await call.body_bytes(INLINE_BODY_BYTES, "max_message_bytes")
            received[0] = len(data)
            query = MatchQuery(media=data, client_ref=client_ref, sets=sets)
        else:
            state["rpc"] = "MatchUpload"
            multipart = None
            if kind == "multipart":
                multipart = MultipartUpload(
                    call.request.headers["content-type"], call.config.strings, MATCH_FORM_FIELDS
                )
            outcome, label = await call.blocking(
                _upload_and_match, call, multipart, client_ref, sets, label, received, state
            )
            return JSONResponse(match_outcome_json(label, outcome))
        state["matching"] = True  # from here on match() records the call
        outcome = await call.blocking(core.match, query, caller.name, "Match", caller.id)
    except BaseException as exc:
        if not state["matching"]:
            record = functools.partial(
                core.record_failed_match, state["rpc"], caller.name, exc, client_ref,
                received[0], _status_of(exc), caller.id,
            )  # fmt: skip
            with anyio.CancelScope(shield=True):  # a client gone away is recorded too
                await call.blocking(record)
        raise
    return JSONResponse(match_outcome_json(label, outcome))


def signal_query(body: Fields) -> dict:
    """MatchQuery's hash fields from a body's `signal` object."""
    signal = body.object("signal")
    if signal is None:
        raise InvalidArgument(
            'a JSON body needs "signal": {"signal_type": ..., "value": ...}', field="signal"
        )
    return {
        "signal_type": signal.str("signal_type"),
        "signal_value": signal.str("value"),
        "signal_quality": signal.int("quality") if signal.has("quality") else None,
    }


def _upload_and_match(call: Call, multipart, client_ref, sets, label, received, state):
    """On a worker thread: the body into the spool, then the match."""
    core, caller = call.core, call.caller
    body = _counted(call.sync_chunks(call.body_chunks()), received)
    media = multipart.chunks(body) if multipart is not None else body
    with call.services.spool.upload(media, caller.id, caller.name) as upload:
        if multipart is not None:
            client_ref = multipart.first("client_ref", client_ref)
            sets = call.strings(multipart.all("sets"), "sets") or sets
            label = multipart.first("filename", multipart.filename or label)
        query = MatchQuery(media=upload, client_ref=client_ref, sets=sets)
        state["matching"] = True
        return core.match(query, caller.name, "MatchUpload", caller.id), label


def _status_of(exc: BaseException) -> str:
    """The status a refused call is recorded with ("" : its error's own)."""
    if isinstance(exc, Cancelled) or not isinstance(exc, HashsvcError | Exception):
        return "CANCELLED"  # the client went away, or the server stopped the call
    return ""


def _counted(chunks, received: list[int]):
    for chunk in chunks:
        received[0] += len(chunk)
        yield chunk


ENDPOINTS = [
    Endpoint(
        "POST",
        "/v1/match",
        "Matcher/Match",
        match,
        "Match an upload (raw body or multipart `file`) or a hash (JSON"
        ' `{"signal": {"signal_type": "pdq", "value": "..."}}`); answers the object'
        " `hashsvc match --json` prints",
        params=(
            Param("client_ref", description="your reference to the upload (or a form field)"),
            Param("sets", "array", description="only these sets (or form fields)"),
            Param("filename", description="the upload's name, answered as `file`"),
        ),
        body="match",
        body_schema={
            "type": "object",
            "required": ["signal"],
            "properties": {
                "signal": SIGNAL_SCHEMA,
                "client_ref": {"type": "string"},
                "sets": {"type": "array", "items": {"type": "string"}},
            },
        },
    )
]
