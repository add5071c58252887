"""Error statuses with google.rpc details, so that a client in any language can
act on an error without parsing its message: every error status carries a
google.rpc.ErrorInfo (reason: the error class, domain hashsvc.v1, metadata:
the config key of a limit, the field at fault), an INVALID_ARGUMENT whose
field is known a google.rpc.BadRequest naming it, and a refusal that names
when to come back a google.rpc.RetryInfo. The details travel in the
`grpc-status-details-bin` trailer (grpc_status.rpc_status.from_call reads it)."""

from __future__ import annotations

import re

import grpc
from google.protobuf.any_pb2 import Any
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from hashsvc.base.errors import HashsvcError, status_name

DOMAIN = "hashsvc.v1"
# ErrorInfo.reason of the statuses that are no error class of ours
CANCELLED = "CANCELLED"
INTERNAL = "INTERNAL"
NO_REQUEST_MESSAGE = "NO_REQUEST_MESSAGE"

_WORD_START = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
# A status message travels in the grpc-message header and again in the
# details trailer (twice with a BadRequest): grpc clients refuse metadata past
# 8 KiB by default and past 16 KiB always, so a message that echoes a caller's
# input at length (NOT_FOUND naming 100 set names of 1000 characters: 100 KB)
# reached the client as RESOURCE_EXHAUSTED "received metadata size exceeds
# hard limit" instead. Longer messages are cut, as the history's record of a
# failed call cuts them (hashsvc/core/core.py).
MAX_MESSAGE_CHARS = 1000


def reason(exc: HashsvcError) -> str:
    """The error class in ErrorInfo's UPPER_SNAKE_CASE: TooLarge -> TOO_LARGE."""
    return _WORD_START.sub("_", type(exc).__name__).upper()


def of_error(exc: HashsvcError) -> grpc.Status:
    """The status a core error ends a call with (its code from STATUS_FOR_ERROR)."""
    return status(status_name(exc), str(exc), reason(exc), exc.field, exc.limit)


def status(
    code_name: str,
    message: str,
    why: str,
    field: str = "",
    limit: str = "",
    retry_seconds: int = 0,
) -> grpc.Status:
    if len(message) > MAX_MESSAGE_CHARS:
        message = f"{message[: MAX_MESSAGE_CHARS - 30]}... ({len(message)} characters)"
    metadata = {key: value for key, value in (("field", field), ("limit", limit)) if value}
    details = [error_details_pb2.ErrorInfo(reason=why, domain=DOMAIN, metadata=metadata)]
    if field and code_name == "INVALID_ARGUMENT":
        violation = error_details_pb2.BadRequest.FieldViolation(
            field=field, description=message, reason=why
        )
        details.append(error_details_pb2.BadRequest(field_violations=[violation]))
    if retry_seconds > 0:
        delay = error_details_pb2.RetryInfo()
        delay.retry_delay.seconds = retry_seconds
        details.append(delay)
    packed = []
    for detail in details:
        any_detail = Any()
        any_detail.Pack(detail)
        packed.append(any_detail)
    code = grpc.StatusCode[code_name]
    return rpc_status.to_status(
        status_pb2.Status(code=code.value[0], message=message, details=packed)
    )
