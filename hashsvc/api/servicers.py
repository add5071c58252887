"""gRPC servicers: thin. Each RPC unpacks the request, calls the core, packs the
answer; core errors become status codes through errors.STATUS_FOR_ERROR, with
google.rpc details (hashsvc/api/status.py)."""

from __future__ import annotations

import contextvars
import functools
import inspect
import logging
import queue
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor

import grpc
from google.protobuf.message import Message

from hashsvc.api import bulk_pb, convert, status
from hashsvc.api.streams import ANONYMOUS, Requests, StreamLimiter, StreamSlot, UnreadCalls
from hashsvc.base.errors import HashsvcError, InvalidArgument, TooLarge, status_name
from hashsvc.core import audit, auth, export
from hashsvc.core.config import StringLimits, new_spool
from hashsvc.core.core import Core
from hashsvc.media.spool import Spool
from hashsvc.v1 import hashsvc_pb2 as pb
from hashsvc.v1 import hashsvc_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

_END, _TOO_MANY = object(), object()  # MatchBatch queue markers
# The fewest bytes a signal takes in an Entry message (an MD5: 32 hex digits,
# its type and variant): a page of ListEntries reads no more signals than
# max_page_bytes / this.
_SIGNAL_BYTES = 48

# The authenticated caller of the RPC running in this thread (set by AuthInterceptor).
CALLER: contextvars.ContextVar = contextvars.ContextVar("caller")


def _status_of(context: grpc.ServicerContext, exc: BaseException | None) -> str:
    """The status code name a call ends with, having raised `exc` (or None)."""
    if context.code() is not None:
        return context.code().name  # the handler called context.abort()
    if (exc is None or isinstance(exc, grpc.RpcError)) and not context.is_active():
        # grpc's request iterator raises a bare RpcError once the client has
        # cancelled or gone away (e.g. `hashsvc load` interrupted), or ends
        # as if the client had sent everything: no answer reaches it
        return "CANCELLED"
    return "OK" if exc is None else status_name(exc)


def _abort(context: grpc.ServicerContext, exc: BaseException) -> None:
    if context.code() is not None:
        raise exc  # the handler called context.abort(): its status stands
    code = _status_of(context, exc)
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
    """Turns core errors raised by a unary or server-streaming RPC into statuses.
    A request message (not a client stream, whose messages are checked as
    they are read) has its strings checked first (convert.request_strings)."""
    if inspect.isgeneratorfunction(method):

        @functools.wraps(method)
        def streaming(self, request, context):
            try:
                _check_strings(request, self.limits)
                yield from method(self, request, context)
            except Exception as exc:  # noqa: BLE001 - every error gets a status
                _abort(context, exc)

        return streaming

    @functools.wraps(method)
    def unary(self, request, context):
        try:
            if not getattr(method, "checks_own_strings", False):
                _check_strings(request, self.limits)
            return method(self, request, context)
        except Exception as exc:  # noqa: BLE001 - every error gets a status
            _name_paging_field(request, exc)
            _abort(context, exc)

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


class AuthInterceptor(grpc.ServerInterceptor):
    """Authenticates the token and checks the role before the handler runs;
    admits streams within the stream limits (hashsvc/api/streams.py)."""

    def __init__(
        self,
        store,
        limiter: auth.RateLimiter | None = None,
        observe_rpc=None,
        streams: StreamLimiter | None = None,
        unread: UnreadCalls | None = None,
        record_refused_match=None,
    ) -> None:
        self.store = store
        self.limiter = limiter or auth.RateLimiter(0)
        # record_refused_match(rpc name, token record, error): a Match call
        # refused by the rate limit is still a Match call, in the history
        self.record_refused_match = record_refused_match
        # observe_rpc(rpc name, status code name, perf_counter start) for metrics
        self.observe_rpc = observe_rpc
        self.streams = streams
        self.unread = unread

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None:
            return handler
        streams, unread = self.streams, self.unread
        # A unary call's request message is read here, after the token (sent
        # with the headers) is checked: grpc would hold a thread waiting for
        # it before any check, for as long as the client sends nothing.
        reads_first = unread is not None and not handler.request_streaming
        if method.startswith(auth.PUBLIC_SERVICES):
            if reads_first:  # health checks
                return _rewrap(handler, lambda b: _public_unary(b, method, unread), reads_first)
            # Reflection is a stream anyone may open: capped like the others,
            # its callers counted as one.
            if streams is None or not handler.request_streaming:
                return handler
            return _rewrap(handler, lambda behavior: _public_stream(behavior, streams))
        token = auth.token_from_metadata(handler_call_details.invocation_metadata)
        store, limiter, observe = self.store, self.limiter, self.observe_rpc
        rpc_name = method.rsplit("/", 1)[-1]
        is_stream = streams is not None and (
            handler.request_streaming or handler.response_streaming
        )
        counted_per_item = method in auth.RATE_LIMITED_PER_ITEM
        record_refused = (
            self.record_refused_match if method in _RECORDED_WHEN_RATE_LIMITED else None
        )

        def guard(behavior):
            @functools.wraps(behavior)
            def guarded(request_or_iterator, context):
                started = time.perf_counter()
                held = None  # [slot, Requests or None] of an admitted stream
                streaming = False
                try:
                    try:
                        record = auth.authenticate(store, token)
                        auth.authorize(record, method)
                        if not counted_per_item:
                            _within_rate(limiter, record, rpc_name, record_refused)
                        if is_stream:
                            held = [_admit(streams, context, record.id, f"token {record.name!r}")]
                    except HashsvcError as exc:
                        _abort(context, exc)
                    CALLER.set(record)
                    # action records by this caller carry its token id
                    audit.ACTING_TOKEN.set((record.name, record.id))
                    if reads_first:
                        request_or_iterator = _first_request(
                            request_or_iterator, context, method, unread, False, record.id
                        )
                    elif held is not None and handler.request_streaming:
                        request_or_iterator = streams.requests(request_or_iterator)
                        held.append(request_or_iterator)
                    result = behavior(request_or_iterator, context)
                    if inspect.isgenerator(result):
                        streaming = True  # released and timed when the stream ends
                        return _observed_stream(result, context, rpc_name, started, observe, held)
                    return result
                finally:
                    if not streaming:
                        _let_go(held)
                        if observe is not None:
                            observe(rpc_name, _code_name(context), started)

            return guarded

        return _rewrap(handler, guard, reads_first)


# Match calls refused by the rate limit before their handler runs: recorded
# as failed Match calls (MatchBatch records its refused items itself).
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
        _abort(context, exc)


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
            _abort(context, exc)
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
        _abort(context, exc)
    finally:
        _let_go(held)


def _code_name(context) -> str:
    code = context.code()
    return code.name if code is not None else "OK"


def _observed_stream(stream, context, rpc_name, started, observe, held=None):
    try:
        yield from stream
    finally:
        _let_go(held)
        if observe is not None:
            observe(rpc_name, _code_name(context), started)


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


def _counted(chunks, received: list[int]):
    """The chunks, counting their bytes into received[0] (for the record of an
    upload that failed)."""
    for chunk in chunks:
        received[0] += len(chunk)
        yield chunk


class MatcherServicer(pb_grpc.MatcherServicer):
    def __init__(
        self,
        core: Core,
        batch_threads: int,
        limiter: auth.RateLimiter | None = None,
        spool: Spool | None = None,
    ) -> None:
        self.core = core
        self.limits = core.config.strings
        self._batch_pool = ThreadPoolExecutor(batch_threads, thread_name_prefix="batch")
        self._batch_in_flight = batch_threads
        # the interceptor's limiter: MatchBatch counts each item against it
        self.limiter = limiter or auth.RateLimiter(0)
        self.spool = spool or new_spool(core.config)

    @rpc
    @checks_own_strings
    def Match(self, request, context):  # noqa: N802 - gRPC method names
        query = self._query(request, "Match", caller_name(), CALLER.get().id)
        outcome = self.core.match(query, caller_name(), "Match")
        return convert.match_response(outcome)

    def _query(self, request, rpc: str, caller: str, caller_token_id: int):
        """The core's query; a request refused here (neither media nor a hash)
        is a failed Match call, recorded as one."""
        try:
            convert.request_strings(request, self.limits)
            return convert.match_query(request)
        except HashsvcError as exc:
            self.core.record_failed_match(
                rpc, caller, exc, request.client_ref, caller_token_id=caller_token_id
            )
            raise

    @rpc
    def MatchUpload(self, request_iterator, context):  # noqa: N802
        caller = CALLER.get()
        header, received = None, [0]
        matching = False
        try:
            header, chunks = upload_parts(request_iterator, "MatchUpload", self.limits)
            with self.spool.upload(_counted(chunks, received), caller.id, caller.name) as upload:
                query = convert.match_query(header, upload)
                matching = True  # from here on match() records the call
                outcome = self.core.match(query, caller.name, "MatchUpload")
        except BaseException as exc:
            # An upload refused before it was matched (too large, no header,
            # two headers, no media, the spool full, the client gone) is a
            # Match call too.
            if not matching:
                self.core.record_failed_match(
                    "MatchUpload",
                    caller.name,
                    exc,
                    header.client_ref if header is not None else "",
                    received[0],
                    _status_of(context, exc),
                )
            raise
        return convert.match_response(outcome)

    def MatchBatch(self, request_iterator, context):
        # Items are matched concurrently (hashing runs in worker processes) and
        # answered in request order, each as soon as it and those before it
        # are done: a client may wait for an answer before sending more. A bad
        # item, or one past the token's rate limit, gets an error response and
        # the stream goes on.
        record = CALLER.get()
        limit = self.core.config.max_batch_items
        # Reading requests runs beside answering them; the bounded queue is the
        # backpressure (at most _batch_in_flight items hashed ahead).
        in_order: queue.Queue = queue.Queue(maxsize=self._batch_in_flight)
        counts = {"read": 0, "answered": 0}
        if isinstance(request_iterator, Requests):
            # items in flight: the client may be waiting for their answers
            request_iterator.busy = lambda: counts["read"] > counts["answered"]

        def put(item) -> bool:
            # never block forever on a call that was cancelled meanwhile
            while context.is_active():
                try:
                    in_order.put(item, timeout=0.5)
                    return True
                except queue.Full:
                    continue
            return False

        def read_requests() -> None:
            try:
                for count, request in enumerate(request_iterator, start=1):
                    if count > limit:
                        put(_TOO_MANY)
                        return
                    counts["read"] = count
                    if not put(self._match_later(request, record)):
                        return
            except HashsvcError as exc:  # the stream's idle or total deadline
                put(exc)
                return
            except Exception:  # noqa: BLE001 - the client went away mid-stream
                log.debug("batch request stream ended early", exc_info=True)
            put(_END)

        threading.Thread(target=read_requests, daemon=True, name="batch-reader").start()
        while context.is_active():
            try:
                item = in_order.get(timeout=0.5)
            except queue.Empty:
                continue
            if item is _END:
                return
            if item is _TOO_MANY:
                _abort(
                    context,
                    TooLarge(
                        f"a batch may hold at most {limit} items (max_batch_items)",
                        limit="max_batch_items",
                    ),
                )
            if isinstance(item, HashsvcError):
                _abort(context, item)
            response = item.result()
            counts["answered"] += 1
            yield response

    def _match_later(self, request: pb.MatchRequest, record) -> Future:
        """The item's answer to come. An item with a string past its limit, or
        past the token's rate limit, is answered at once with its own error,
        recorded as a failed MatchBatch item. Strings are checked first: a bad
        item costs no rate, and its oversized client_ref is not sent back."""
        try:
            convert.request_strings(request, self.limits)
            self.limiter.check(record)
        except HashsvcError as exc:
            self.core.record_failed_match(
                "MatchBatch", record.name, exc, request.client_ref, caller_token_id=record.id
            )
            refused: Future = Future()
            refused.set_result(self._item_error(request, exc))
            return refused
        return self._batch_pool.submit(self._match_item, request, record.name, record.id)

    def _item_error(self, request: pb.MatchRequest, exc: HashsvcError) -> pb.MatchResponse:
        # an oversized client_ref is not sent back: one of 5 MiB made the
        # stream's answer larger than the client's max message
        ref = request.client_ref
        return pb.MatchResponse(
            client_ref=ref if len(ref) <= self.limits.client_ref_chars else "",
            error_code=status_name(exc),
            error_message=str(exc),
        )

    def _match_item(
        self, request: pb.MatchRequest, caller: str, caller_token_id: int
    ) -> pb.MatchResponse:
        try:
            query = self._query(request, "MatchBatch", caller, caller_token_id)
            outcome = self.core.match(query, caller, "MatchBatch", caller_token_id)
            return convert.match_response(outcome)
        except HashsvcError as exc:
            return self._item_error(request, exc)
        except Exception:
            log.exception("batch item failed")
            return pb.MatchResponse(
                client_ref=request.client_ref,
                error_code="INTERNAL",
                error_message="internal error (logged on the server)",
            )


class CurationServicer(pb_grpc.CurationServicer):
    def __init__(self, core: Core, spool: Spool | None = None) -> None:
        self.core = core
        self.limits = core.config.strings
        self.curation = core.curation
        self.spool = spool or new_spool(core.config)

    def _done(self, action: str, **detail) -> None:
        # Operators' writes go to the same hash-chained history as matches,
        # indexed under their set (`history --set S` shows what was done to S).
        self.core.record_action(action, caller_name(), detail, set_names=(detail["set"],))

    @rpc
    def CreateSet(self, request, context):
        record = self.curation.create_set(
            request.name,
            request.description,
            dict(request.labels),
            convert.thresholds_from_pb(request.thresholds),
            allow_list=request.allow_list,
            review_blocks=request.review_blocks,
            review_target=request.review_target,
        )
        self._done(
            "CreateSet",
            set=record.name,
            allow_list=record.allow_list,
            review_target=record.review_target,
        )
        return convert.hash_set(record)

    @rpc
    def ListSets(self, request, context):
        sets = self.curation.list_sets(include_disabled=request.include_disabled)
        return pb.ListSetsResponse(sets=[convert.hash_set(s) for s in sets])

    @rpc
    def GetSet(self, request, context):
        return convert.hash_set(self.curation.get_set(request.name))

    @rpc
    def UpdateSet(self, request, context):
        record = self.curation.update_set(
            request.name,
            enabled=request.enabled if request.HasField("enabled") else None,
            description=request.description if request.HasField("description") else None,
            labels=dict(request.labels),
            replace_labels=request.replace_labels,
            thresholds=convert.thresholds_from_pb(request.thresholds),
            review_blocks=request.review_blocks if request.HasField("review_blocks") else None,
            review_target=request.review_target if request.HasField("review_target") else None,
        )
        self._done(
            "UpdateSet",
            set=record.name,
            enabled=record.enabled,
            review_target=record.review_target,
        )
        return convert.hash_set(record)

    @rpc
    def AddEntry(self, request, context):
        which = request.WhichOneof("content")
        if which is None:
            raise InvalidArgument("AddEntry needs media or a hash")
        signal = None
        if which == "signal":
            sig = request.signal
            signal = (sig.signal_type, sig.value, sig.quality or None)
        name = request.name or (request.media.filename if which == "media" else "")
        record = self.curation.add_entry(
            request.set,
            name,
            dict(request.labels),
            caller_name(),
            media=request.media.content if which == "media" else None,
            signal=signal,
        )
        self._done("AddEntry", set=request.set, entry=record.name, entry_id=record.id)
        return convert.entry(record, request.set)

    @rpc
    def AddEntryUpload(self, request_iterator, context):  # noqa: N802
        header, chunks = upload_parts(request_iterator, "AddEntryUpload", self.limits)
        if header.WhichOneof("content") is not None:
            raise InvalidArgument("an upload's header must not hold media or a hash")
        caller = CALLER.get()
        with self.spool.upload(chunks, caller.id, caller.name) as upload:
            record = self.curation.add_entry(
                header.set, header.name, dict(header.labels), caller.name, media=upload
            )
        self._done("AddEntry", set=header.set, entry=record.name, entry_id=record.id)
        return convert.entry(record, header.set)

    @rpc
    def ListEntries(self, request, context):
        # A page is cut by size too; an entry larger than a page ends it, and
        # the token `ID:N` resumes after its first N signals.
        max_bytes = self.core.config.page_bytes()
        page = self.curation.entry_page(
            request.set, request.page_size, request.page_token, max_bytes // _SIGNAL_BYTES
        )
        messages = convert.entry_messages(page.entries, request.set, max_bytes, page.first_signal)
        entries, (last_id, sent) = next(messages, ([], (0, None)))
        if sent is not None:
            token = f"{last_id}:{sent}"
        elif next(messages, None) is not None or page.more:
            token = str(last_id)
        else:
            token = ""
        return pb.ListEntriesResponse(entries=entries, next_page_token=token)

    @rpc
    def GetEntry(self, request, context):
        return convert.entry(self.curation.get_entry(request.set, request.name), request.set)

    @rpc
    def FindEntries(self, request, context):
        entries = self.curation.find_entries(
            request.set, request.signal.signal_type, request.signal.value
        )
        return pb.ListEntriesResponse(entries=[convert.entry(e, request.set) for e in entries])

    @rpc
    def RemoveEntry(self, request, context):
        record = self.curation.remove_entry(request.set, request.name)
        self._done("RemoveEntry", set=request.set, entry=record.name, entry_id=record.id)
        return convert.entry(record, request.set)

    @rpc
    def ReleaseEntry(self, request, context):
        record = self.core.review.release_entry(caller_name(), request.set, request.name)
        return convert.entry(record, request.set)

    @rpc
    def BulkLoad(self, request_iterator, context):  # noqa: N802
        header, batches = bulk_pb.header_and_batches(request_iterator, self.limits)
        result = self.core.bulk_load(
            header.set,
            caller_name(),
            batches,
            header.strict,
            status_of=functools.partial(_status_of, context),
        )
        return bulk_pb.response(result, header.strict)

    @rpc
    def ExportEntries(self, request, context):  # noqa: N802
        hash_set = self.curation.get_set(request.set)
        since = convert.from_timestamp(request, "since")
        since_micros = int(since.timestamp() * 1_000_000) if since else None
        yield from bulk_pb.export_batches(
            export.export_entries(self.core.store, hash_set.id, since_micros),
            request.set,
            self.core.config.page_bytes(),
        )

    @rpc
    def GetStats(self, request, context):
        stats = self.core.stats()
        return pb.Stats(
            sets=stats["sets"],
            enabled_sets=stats["enabled_sets"],
            entries=stats["entries"],
            indexed_signals=[
                pb.SignalCount(signal_type=k, count=v)
                for k, v in sorted(stats["indexed_signals"].items())
            ],
            history_records=stats["history_records"],
            index_version=stats["index_version"],
        )


class ReviewServicer(pb_grpc.ReviewServicer):
    def __init__(self, core: Core) -> None:
        self.core = core
        self.limits = core.config.strings
        self.queue = core.review

    def _filter(self, msg):
        sets = {s.name: s.id for s in self.core.live.sets_by_id.values()}
        return convert.review_filter(msg, sets)

    @rpc
    def ListReviewItems(self, request, context):
        items, token = self.queue.list(
            self._filter(request.filter), request.page_size, request.page_token
        )
        page = convert.within_bytes(
            [convert.review_item(i) for i in items], self.core.config.page_bytes()
        )
        if len(page) < len(items):
            token = str(page[-1].id)
        return pb.ListReviewItemsResponse(items=page, next_page_token=token)

    @rpc
    def ClaimReviewItem(self, request, context):
        item = self.queue.claim(
            reviewer_identity(), request.id or None, self._filter(request.filter)
        )
        return convert.review_item(item)

    @rpc
    def ResolveReviewItem(self, request, context):
        item = self.queue.resolve(
            reviewer_identity(),
            request.id,
            request.resolution,
            request.note,
            request.add_to_set,
            request.entry_name,
        )
        return convert.review_item(item)


class AuditServicer(pb_grpc.AuditServicer):
    def __init__(self, core: Core) -> None:
        self.audit = core.audit
        self.limits = core.config.strings
        self.page_bytes = core.config.page_bytes()

    def _filter(self, request):
        return self.audit.make_filter(
            since=convert.from_timestamp(request, "since"),
            until=convert.from_timestamp(request, "until"),
            decision=convert.DECISION_FROM_PB.get(request.decision) or None,
            set_name=request.set or None,
            caller=request.caller or None,
        )

    @rpc
    def QueryHistory(self, request, context):
        records, next_token = self.audit.query(
            self._filter(request), request.page_size, request.page_token
        )
        page = convert.within_bytes([convert.history_record(r) for r in records], self.page_bytes)
        if len(page) < len(records):
            next_token = str(page[-1].id)
        return pb.QueryHistoryResponse(records=page, next_page_token=next_token)

    @rpc
    def ExportHistory(self, request, context):
        for record in self.audit.export(self._filter(request)):
            yield convert.history_record(record)

    @rpc
    def VerifyHistory(self, request, context):
        result = self.audit.verify()
        return pb.VerifyHistoryResponse(
            intact=result.intact,
            records_checked=result.records_checked,
            unchained_records=result.unchained_records,
            head_hash=result.head_hash,
            problems=[
                pb.HistoryProblem(record_id=record_id, problem=problem)
                for record_id, problem in result.problems
            ],
            checkpoints_checked=result.checkpoints_checked,
            notes=result.notes,
            truncation_checked=result.truncation_checked,
        )


class AdminServicer(pb_grpc.AdminServicer):
    def __init__(self, core: Core) -> None:
        self.core = core
        self.store = core.store
        self.limits = core.config.strings

    def _recorded(self, action: str, detail: dict, do):
        """do(), recorded in the history whether it succeeds or fails (never
        the token itself: only its id, name, role and expiry)."""
        try:
            record = do()
        except Exception as exc:
            self.core.record_action(action, caller_name(), detail, status_name(exc), str(exc))
            raise
        expires = record.expires_at.isoformat() if record.expires_at else None
        done = {"token_id": record.id, "name": record.name, "role": record.role}
        self.core.record_action(action, caller_name(), {**detail, **done, "expires_at": expires})
        return record

    @rpc
    def CreateToken(self, request, context):
        made = []

        def create():
            record, token = auth.create_token(
                self.store, request.role, request.name, request.expires_in_seconds
            )
            made.append(token)
            return record

        detail = {"name": request.name[:200], "role": request.role[:50]}
        record = self._recorded("CreateToken", detail, create)
        return pb.CreateTokenResponse(info=convert.token_info(record), token=made[0])

    @rpc
    def ListTokens(self, request, context):
        return pb.ListTokensResponse(
            tokens=[convert.token_info(t) for t in self.store.list_tokens()]
        )

    @rpc
    def RevokeToken(self, request, context):
        record = self._recorded(
            "RevokeToken", {"token_id": request.id}, lambda: self.store.revoke_token(request.id)
        )
        return convert.token_info(record)
