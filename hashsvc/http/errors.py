"""Errors as JSON, `{"error": {"code": "INVALID_ARGUMENT", "message": "..."}}`,
with the HTTP status of the code: the codes are the gRPC status names the
core's errors map to (hashsvc/base/errors.py STATUS_FOR_ERROR), so a caller
reads the same code over both APIs."""

from __future__ import annotations

import logging

from starlette.responses import JSONResponse

from hashsvc.base.errors import HashsvcError, TooLarge, status_name

log = logging.getLogger(__name__)

HTTP_STATUS = {
    "INVALID_ARGUMENT": 400,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "FAILED_PRECONDITION": 409,
    "RESOURCE_EXHAUSTED": 429,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
    "INTERNAL": 500,
}
# RESOURCE_EXHAUSTED is 429 (retry later) when it is about load, 413 when the
# request itself is too large: a retry of the same upload would fail again.
_LOAD_LIMITS = frozenset(
    {
        "rate_limit_per_second",
        "spool_max_bytes",
        "max_uploads_per_token",
        "http_jobs_running",
        "console.sign_in_failures_per_minute",
    }
)
# Longer messages are cut, as the gRPC statuses are (hashsvc/api/status.py).
MAX_MESSAGE_CHARS = 1000


class RequestTimeout(HashsvcError):
    """The client stopped sending its body (stream_idle_seconds)."""


class Cancelled(HashsvcError):
    """The client went away while sending its request (no one reads the answer)."""


def http_status(exc: HashsvcError) -> int:
    if isinstance(exc, RequestTimeout):
        return 408
    if isinstance(exc, Cancelled):
        return 400
    if isinstance(exc, TooLarge) and exc.limit not in _LOAD_LIMITS:
        return 413
    return HTTP_STATUS.get(status_name(exc), 500)


def error_body(code: str, message: str, field: str = "", limit: str = "") -> dict:
    if len(message) > MAX_MESSAGE_CHARS:
        message = f"{message[: MAX_MESSAGE_CHARS - 30]}... ({len(message)} characters)"
    error = {"code": code, "message": message}
    if field:
        error["field"] = field
    if limit:
        error["limit"] = limit
    return {"error": error}


def error_response(exc: BaseException, status: int | None = None) -> JSONResponse:
    """The JSON answer to an error; an error that is no HashsvcError is a bug:
    logged, and answered INTERNAL without its text."""
    if not isinstance(exc, HashsvcError):
        log.error("internal error", exc_info=exc)
        return JSONResponse(error_body("INTERNAL", "internal error (logged on the server)"), 500)
    code = status_name(exc)
    if isinstance(exc, RequestTimeout):
        code = "DEADLINE_EXCEEDED"
    elif isinstance(exc, Cancelled):
        code = "CANCELLED"
    return JSONResponse(
        error_body(code, str(exc), exc.field, exc.limit), status or http_status(exc)
    )


def plain_error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse(error_body(code, message), status)
