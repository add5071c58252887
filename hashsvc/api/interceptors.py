"""The interceptors in front of every RPC, one per concern, composed in
hashsvc/api/server.py outermost first:

  CallMetrics  times each call and observes its final status (metrics.py);
  Access       refuses an address past its failed authentications, then
               authenticates the token and checks the role, then sets CALLER;
  Limits       the caller's rate limit, stream admission and the unread-call
               limits (hashsvc/api/streams.py).

grpc runs the first interceptor's wrapper first. Limits, innermost, serves a
unary call as a stream of one (`_rewrap`) and reads its message itself: grpc
would otherwise read it, holding a thread for as long as the client sends
nothing, before any wrapper runs. So a call without a valid token is refused
by Access before its message is read and before it holds a stream slot, and
CallMetrics sees the status every refusal leaves."""

from __future__ import annotations

import functools
import inspect
import logging
import time

import grpc

from hashsvc.api import status
from hashsvc.api.calls import CALLER, abort
from hashsvc.api.streams import ANONYMOUS, StreamLimiter, StreamSlot, UnreadCalls
from hashsvc.base.addresses import peer_host
from hashsvc.base.errors import HashsvcError, TooLarge, Unauthenticated
from hashsvc.core import audit, auth
from hashsvc.core.sign_in_limits import LIMIT_KEY as SIGN_IN_LIMIT
from hashsvc.core.sign_in_limits import SignInLimits
from hashsvc.v1 import hashsvc_pb2 as pb

log = logging.getLogger(__name__)


def _own_rpc(handler, method: str) -> bool:
    """An RPC of ours (not health or reflection, which take no token)."""
    return handler is not None and not method.startswith(auth.PUBLIC_SERVICES)


class CallMetrics(grpc.ServerInterceptor):
    """Each call's duration and final status, however it ends: a stream's
    when it ends (its slot given back first)."""

    def __init__(self, observe_rpc=None) -> None:
        # observe_rpc(rpc name, status code name, perf_counter start)
        self.observe_rpc = observe_rpc

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        if self.observe_rpc is None or not _own_rpc(handler, method):
            return handler
        rpc_name = method.rsplit("/", 1)[-1]
        return _rewrap(handler, lambda behavior: self.wrap(behavior, rpc_name))

    def wrap(self, behavior, rpc_name: str):
        observe = self.observe_rpc

        @functools.wraps(behavior)
        def observed(request_or_iterator, context):
            started = time.perf_counter()
            streaming = False
            try:
                result = behavior(request_or_iterator, context)
                if inspect.isgenerator(result):
                    streaming = True  # timed when the stream ends
                    return _observed_stream(result, context, rpc_name, started, observe)
                return result
            finally:
                if not streaming:
                    observe(rpc_name, code_name(context), started)

        return observed


class Access(grpc.ServerInterceptor):
    """The token authenticated and its role checked against the RPC, before
    anything else of the call runs; the caller then set for the handler.

    A peer address past its failed authentications in a minute (`sign_ins`,
    one budget with the HTTP API and the console's sign-ins when they serve in
    the same process) is refused RESOURCE_EXHAUSTED before its token is looked
    up, unless the token authenticated lately (SignInLimits.refused): guessing
    costs no store lookup and is throttled, and the pipelines that share the
    address (a NAT, a proxy) keep matching."""

    def __init__(self, store, sign_ins: SignInLimits | None = None) -> None:
        self.store = store
        self.sign_ins = sign_ins

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        if not _own_rpc(handler, method):
            return handler
        token = auth.token_from_metadata(handler_call_details.invocation_metadata)
        return _rewrap(handler, lambda behavior: self.wrap(behavior, token, method))

    def wrap(self, behavior, token: str | None, method: str):
        store, sign_ins = self.store, self.sign_ins

        @functools.wraps(behavior)
        def authenticated(request_or_iterator, context):
            address = peer_host(context.peer()) if sign_ins is not None else ""
            if sign_ins is not None and (retry_after := sign_ins.refused(address, token)):
                context.abort_with_status(
                    status.status(
                        "RESOURCE_EXHAUSTED",
                        "too many failed authentications from your address: "
                        f"try again in {retry_after} seconds",
                        status.reason(TooLarge()),
                        limit=SIGN_IN_LIMIT,
                        retry_seconds=retry_after,
                    )
                )
            try:
                try:
                    record = auth.authenticate(store, token)
                except Unauthenticated:
                    # a call without a token guesses nothing and costs no
                    # lookup: only a token that was tried counts
                    if sign_ins is not None and token:
                        sign_ins.failed(address)
                    raise
                if sign_ins is not None:
                    sign_ins.authenticated(token)
                auth.authorize(record, method)
            except HashsvcError as exc:
                abort(context, exc)
            CALLER.set(record)
            # action records by this caller carry its token id
            audit.ACTING_TOKEN.set((record.name, record.id))
            return behavior(request_or_iterator, context)

        return authenticated


class Limits(grpc.ServerInterceptor):
    """The authenticated caller's (CALLER, set by Access outside it) rate
    limit, stream admission and unread-call reading; for the public
    services, the same stream and unread-call limits on callers without a
    token."""

    def __init__(
        self,
        limiter: auth.RateLimiter | None = None,
        streams: StreamLimiter | None = None,
        unread: UnreadCalls | None = None,
        record_refused_match=None,
        subscribers: StreamLimiter | None = None,
    ) -> None:
        self.limiter = limiter or auth.RateLimiter(0)
        self.streams = streams
        # Events/Subscribe's own pool (long, idle streams); None: `streams`
        self.subscribers = subscribers
        self.unread = unread
        # record_refused_match(rpc name, token record, error): a Match call
        # refused by the rate limit is still a Match call, in the history
        self.record_refused_match = record_refused_match

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None:
            return handler
        if not _own_rpc(handler, method):
            return self.public(handler, method)
        return _rewrap(
            handler,
            lambda behavior: self.wrap(behavior, handler, method),
            self.reads_first(handler),
        )

    def reads_first(self, handler) -> bool:
        # A unary call's request message is read here, after the token is
        # checked: grpc would hold a thread waiting for it before any check,
        # for as long as the client sends nothing.
        return self.unread is not None and not handler.request_streaming

    def wrap(self, behavior, handler, method: str):
        limiter, streams, unread = self.limiter, self.streams, self.unread
        if method == SUBSCRIBE_METHOD and self.subscribers is not None:
            streams = self.subscribers
        rpc_name = method.rsplit("/", 1)[-1]
        reads_first = self.reads_first(handler)
        is_stream = streams is not None and (
            handler.request_streaming or handler.response_streaming
        )
        counted_per_item = method in auth.RATE_LIMITED_PER_ITEM
        record_refused = (
            self.record_refused_match if method in _RECORDED_WHEN_RATE_LIMITED else None
        )

        @functools.wraps(behavior)
        def limited(request_or_iterator, context):
            record = CALLER.get()
            held = None  # [slot, Requests or None] of an admitted stream
            streaming = False
            try:
                try:
                    if not counted_per_item:
                        _within_rate(limiter, record, rpc_name, record_refused)
                    if is_stream:
                        held = [_admit(streams, context, record.id, f"token {record.name!r}")]
                except HashsvcError as exc:
                    abort(context, exc)
                if reads_first:
                    request_or_iterator = _first_request(
                        request_or_iterator, context, method, unread, False, record.id
                    )
                elif held is not None and handler.request_streaming:
                    request_or_iterator = streams.requests(request_or_iterator)
                    held.append(request_or_iterator)
                result = behavior(request_or_iterator, context)
                if inspect.isgenerator(result):
                    streaming = True  # released when the stream ends
                    return _released_stream(result, held)
                return result
            finally:
                if not streaming:
                    _let_go(held)

        return limited

    def public(self, handler, method: str):
        """A public service's handler: health checks have their request read
        within the limits on calls without a token; reflection is a stream
        anyone may open, capped like the others, its callers counted as one."""
        if self.reads_first(handler):
            unread = self.unread
            return _rewrap(handler, lambda b: _public_unary(b, method, unread), True)
        if self.streams is None or not handler.request_streaming:
            return handler
        streams = self.streams
        return _rewrap(handler, lambda behavior: _public_stream(behavior, streams))


# Match calls refused by the rate limit before their handler runs: recorded
# as failed Match calls (MatchBatch records its refused items itself).
# Admitted to Limits.subscribers' pool, not the upload streams'.
SUBSCRIBE_METHOD = f"/{pb.DESCRIPTOR.package}.Events/Subscribe"
_RECORDED_WHEN_RATE_LIMITED = frozenset(
    f"/{pb.DESCRIPTOR.package}.Matcher/{name}" for name in ("Match", "MatchUpload")
)


def _within_rate(
    limiter: auth.RateLimiter, record, rpc_name: str = "", record_refused=None
) -> None:
    """limiter.check, its refusal naming the limit's config key (ErrorInfo);
    record_refused(rpc name, token record, error), if given, records it."""
    try:
        limiter.check(record)
    except TooLarge as exc:
        exc.limit = exc.limit or "rate_limit_per_second"
        if record_refused is not None:
            # The request is not read (that would hold a thread for a caller
            # already past its limit): the record has no client_ref.
            record_refused(rpc_name, record, exc)
        raise


def _rewrap(handler, guard, reads_first: bool = False):
    """The handler with its behavior wrapped by guard; reads_first: a unary
    request becomes a stream of one, which grpc hands over unread."""
    kind = next(
        k
        for k in ("unary_unary", "unary_stream", "stream_unary", "stream_stream")
        if getattr(handler, k)
    )
    served_as = kind
    if reads_first:
        served_as = {"unary_unary": "stream_unary", "unary_stream": "stream_stream"}[kind]
    factory = getattr(grpc, f"{served_as}_rpc_method_handler")
    return factory(
        guard(getattr(handler, kind)),
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


def _admit(streams: StreamLimiter, context, key, caller: str) -> StreamSlot:
    slot = streams.admit(key, caller)
    # grpc calls back when the call ends, however it ends: the place is given
    # back even if the handler's stream is never run to its end
    if not context.add_callback(slot.release):
        slot.release()  # the call has ended already
    return slot


def _let_go(held) -> None:
    """An admitted stream is over: its place back, its request reader stopped."""
    if held is None:
        return
    held[0].release()
    for requests in held[1:]:
        requests.close()


def _first_request(
    request_iterator,
    context,
    method: str,
    unread: UnreadCalls,
    anonymous: bool,
    token_id: int | None = None,
):
    try:
        return unread.read_first(request_iterator, context, anonymous, token_id)
    except StopIteration:
        # what grpc answers a unary call that ends without a message
        context.abort_with_status(
            status.status(
                "UNIMPLEMENTED",
                f'"{method}" requires exactly one request message.',
                status.NO_REQUEST_MESSAGE,
            )
        )
    except grpc.RpcError as exc:  # cancelled: by the client, or for sending nothing
        abort(context, exc)


def _public_unary(behavior, method: str, unread: UnreadCalls):
    """A health check: its request read within the limits on calls without a token."""

    def reading(request_iterator, context, *args, **kwargs):
        request = _first_request(request_iterator, context, method, unread, anonymous=True)
        return behavior(request, context, *args, **kwargs)

    # Health's Watch answers through a callback and holds no thread: keep that
    for name in ("experimental_non_blocking", "experimental_thread_pool"):
        if hasattr(behavior, name):
            setattr(reading, name, getattr(behavior, name))
    return reading


def _public_stream(behavior, streams: StreamLimiter):
    """Reflection (no token): within the same caps and deadlines as any stream."""

    @functools.wraps(behavior)
    def guarded(request_iterator, context):
        try:
            held = [_admit(streams, context, ANONYMOUS, "callers without a token")]
        except HashsvcError as exc:
            abort(context, exc)
        requests = streams.requests(request_iterator)
        held.append(requests)
        try:
            result = behavior(requests, context)
        except BaseException:
            _let_go(held)
            raise
        if not inspect.isgenerator(result):
            _let_go(held)
            return result
        return _with_status(result, context, held)

    return guarded


def _with_status(stream, context, held):
    # a handler that is not ours does not turn our errors (the deadlines) into statuses
    try:
        yield from stream
    except HashsvcError as exc:
        abort(context, exc)
    finally:
        _let_go(held)


def code_name(context) -> str:
    code = context.code()
    return code.name if code is not None else "OK"


def _observed_stream(stream, context, rpc_name, started, observe):
    try:
        yield from stream
    finally:
        observe(rpc_name, code_name(context), started)


def _released_stream(stream, held):
    try:
        yield from stream
    finally:
        _let_go(held)
