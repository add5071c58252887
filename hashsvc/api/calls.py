"""What every RPC handler shares: the caller of the call running in this
thread, how a call's errors become statuses (with google.rpc details,
hashsvc/api/status.py), the `rpc` wrapper that checks a request's strings
first, and the parts of a streamed upload."""

from __future__ import annotations

import contextvars
import functools
import inspect
import logging

import grpc
from google.protobuf.message import Message

from hashsvc.api import convert, status
from hashsvc.base.errors import InvalidArgument, status_name
from hashsvc.core.config import StringLimits

log = logging.getLogger(__name__)

# The authenticated caller of the RPC running in this thread (set by interceptors.Access).
CALLER: contextvars.ContextVar = contextvars.ContextVar("caller")


def status_of(context: grpc.ServicerContext, exc: BaseException | None) -> str:
    """The status code name a call ends with, having raised `exc` (or None)."""
    if context.code() is not None:
        return context.code().name  # the handler called context.abort()
    if (exc is None or isinstance(exc, grpc.RpcError)) and not context.is_active():
        # grpc's request iterator raises a bare RpcError once the client has
        # cancelled or gone away (e.g. `hashsvc load` interrupted), or ends
        # as if the client had sent everything: no answer reaches it
        return "CANCELLED"
    return "OK" if exc is None else status_name(exc)


def abort(context: grpc.ServicerContext, exc: BaseException) -> None:
    if context.code() is not None:
        raise exc  # the handler called context.abort(): its status stands
    code = status_of(context, exc)
    if code == "CANCELLED":
        # no internal error, and what was committed stays (a rerun completes it)
        log.info("the client cancelled the call")
        context.abort_with_status(
            status.status(code, "the client cancelled the call", status.CANCELLED)
        )
    if code == "INTERNAL":
        log.exception("internal error", exc_info=exc)
        context.abort_with_status(
            status.status(code, "internal error (logged on the server)", status.INTERNAL)
        )
    context.abort_with_status(status.of_error(exc))


def rpc(method):
    """Turns errors raised by an RPC into statuses: a streaming RPC's
    (MatchBatch) as its answers are produced, the same way as a unary one's.
    A request message (not a client stream, whose messages are checked as
    they are read) has its strings checked first (convert.request_strings)."""
    if inspect.isgeneratorfunction(method):

        @functools.wraps(method)
        def streaming(self, request, context):
            try:
                _check_strings(request, self.limits)
                yield from method(self, request, context)
            except Exception as exc:  # noqa: BLE001 - every error gets a status
                abort(context, exc)

        return streaming

    @functools.wraps(method)
    def unary(self, request, context):
        try:
            if not getattr(method, "checks_own_strings", False):
                _check_strings(request, self.limits)
            return method(self, request, context)
        except Exception as exc:  # noqa: BLE001 - every error gets a status
            _name_paging_field(request, exc)
            abort(context, exc)

    return unary


def checks_own_strings(method):
    """Marks an RPC that checks its request's strings itself: a Match refused
    for them is still a Match call, recorded in the history."""
    method.checks_own_strings = True
    return method


def _check_strings(request, limits) -> None:
    if isinstance(request, Message):
        convert.request_strings(request, limits)


def _name_paging_field(request, exc: BaseException) -> None:
    """A unary list call's paging error, raised by the core where it reads
    page_size and page_token (after looking up the set: NOT_FOUND comes
    first), names its field for the status details: the error is the paging
    check's own when the same check on the request fails the same way. (Only
    unary calls: ExportHistory takes a QueryHistoryRequest and leaves its
    paging fields unread.)"""
    if not isinstance(exc, InvalidArgument) or exc.field or not isinstance(request, Message):
        return
    try:
        convert.request_paging(request)
    except InvalidArgument as own:
        if str(own) == str(exc):
            exc.field = own.field


def caller_name() -> str:
    return CALLER.get().name


def reviewer_identity() -> str:
    """NAME#ID: a review claim belongs to the token that made it, not to a
    later token given the same name once the first was revoked."""
    record = CALLER.get()
    return f"{record.name}#{record.id}"


def upload_parts(request_iterator, rpc_name: str, limits: StringLimits):
    """(header, iterator of chunk bytes) of a client-streaming upload."""
    first = next(request_iterator, None)
    if first is None or first.WhichOneof("part") != "header":
        raise InvalidArgument(f"{rpc_name}: the first message must be the header")
    convert.request_strings(first.header, limits, "header.")

    def chunks():
        for message in request_iterator:
            if message.WhichOneof("part") != "chunk":
                raise InvalidArgument(f"{rpc_name}: only the first message may be a header")
            yield message.chunk

    return first.header, chunks()


def counted_chunks(chunks, received: list[int]):
    """The chunks, counting their bytes into received[0] (for the record of an
    upload that failed)."""
    for chunk in chunks:
        received[0] += len(chunk)
        yield chunk
