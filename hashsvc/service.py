"""gRPC servicers: thin. Each RPC unpacks the request, calls the core, packs the
answer; core errors become status codes through errors.STATUS_FOR_ERROR."""

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

from hashsvc import auth, bulk, bulk_pb, convert
from hashsvc.core import Core
from hashsvc.errors import HashsvcError, InvalidArgument, TooLarge, status_name
from hashsvc.streams import ANONYMOUS, Requests, StreamLimiter, StreamSlot, UnreadCalls
from hashsvc.uploads import Spool
from hashsvc.v1 import hashsvc_pb2 as pb
from hashsvc.v1 import hashsvc_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

_END, _TOO_MANY = object(), object()  # MatchBatch queue markers

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
        context.abort(grpc.StatusCode.CANCELLED, "the client cancelled the call")
    if code == "INTERNAL":
        log.exception("internal error", exc_info=exc)
        context.abort(grpc.StatusCode.INTERNAL, "internal error (logged on the server)")
    context.abort(grpc.StatusCode[code], str(exc))


def rpc(method):
    """Turns core errors raised by a unary or server-streaming RPC into statuses."""
    if inspect.isgeneratorfunction(method):

        @functools.wraps(method)
        def streaming(self, request, context):
            try:
                yield from method(self, request, context)
            except Exception as exc:  # noqa: BLE001 - every error gets a status
                _abort(context, exc)

        return streaming

    @functools.wraps(method)
    def unary(self, request, context):
        try:
            return method(self, request, context)
        except Exception as exc:  # noqa: BLE001 - every error gets a status
            _abort(context, exc)

    return unary


def caller_name() -> str:
    return CALLER.get().name


class AuthInterceptor(grpc.ServerInterceptor):
    """Authenticates the token and checks the role before the handler runs;
    admits streams within the stream limits (hashsvc/streams.py)."""

    def __init__(
        self,
        store,
        limiter: auth.RateLimiter | None = None,
        observe_rpc=None,
        streams: StreamLimiter | None = None,
        unread: UnreadCalls | None = None,
    ) -> None:
        self.store = store
        self.limiter = limiter or auth.RateLimiter(0)
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
                            limiter.check(record)
                        if is_stream:
                            held = [_admit(streams, context, record.id, f"token {record.name!r}")]
                    except HashsvcError as exc:
                        _abort(context, exc)
                    CALLER.set(record)
                    if reads_first:
                        request_or_iterator = _first_request(
                            request_or_iterator, context, method, unread, anonymous=False
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


def _first_request(request_iterator, context, method: str, unread: UnreadCalls, anonymous: bool):
    try:
        return unread.read_first(request_iterator, context, anonymous)
    except StopIteration:
        # what grpc answers a unary call that ends without a message
        context.abort(
            grpc.StatusCode.UNIMPLEMENTED, f'"{method}" requires exactly one request message.'
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


def upload_parts(request_iterator, rpc_name: str):
    """(header, iterator of chunk bytes) of a client-streaming upload."""
    first = next(request_iterator, None)
    if first is None or first.WhichOneof("part") != "header":
        raise InvalidArgument(f"{rpc_name}: the first message must be the header")

    def chunks():
        for message in request_iterator:
            if message.WhichOneof("part") != "chunk":
                raise InvalidArgument(f"{rpc_name}: only the first message may be a header")
            yield message.chunk

    return first.header, chunks()


class MatcherServicer(pb_grpc.MatcherServicer):
    def __init__(
        self,
        core: Core,
        batch_threads: int,
        limiter: auth.RateLimiter | None = None,
        spool: Spool | None = None,
    ) -> None:
        self.core = core
        self._batch_pool = ThreadPoolExecutor(batch_threads, thread_name_prefix="batch")
        self._batch_in_flight = batch_threads
        # the interceptor's limiter: MatchBatch counts each item against it
        self.limiter = limiter or auth.RateLimiter(0)
        self.spool = spool or Spool.from_config(core.config)

    @rpc
    def Match(self, request, context):  # noqa: N802 - gRPC method names
        outcome = self.core.match(convert.match_query(request), caller_name(), "Match")
        return convert.match_response(outcome)

    @rpc
    def MatchUpload(self, request_iterator, context):  # noqa: N802
        header, chunks = upload_parts(request_iterator, "MatchUpload")
        caller = CALLER.get()
        with self.spool.upload(chunks, caller.id, caller.name) as upload:
            query = convert.match_query(header, upload)
            outcome = self.core.match(query, caller.name, "MatchUpload")
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
                context.abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"a batch may hold at most {limit} items (max_batch_items)",
                )
            if isinstance(item, HashsvcError):
                _abort(context, item)
            response = item.result()
            counts["answered"] += 1
            yield response

    def _match_later(self, request: pb.MatchRequest, record) -> Future:
        """The item's answer to come; an item past the token's rate limit is
        answered at once with its own RESOURCE_EXHAUSTED, like a bad item."""
        try:
            self.limiter.check(record)
        except TooLarge as exc:
            refused: Future = Future()
            refused.set_result(
                pb.MatchResponse(
                    client_ref=request.client_ref,
                    error_code=status_name(exc),
                    error_message=str(exc),
                )
            )
            return refused
        return self._batch_pool.submit(self._match_item, request, record.name)

    def _match_item(self, request: pb.MatchRequest, caller: str) -> pb.MatchResponse:
        try:
            query = convert.match_query(request)
            return convert.match_response(self.core.match(query, caller, "MatchBatch"))
        except HashsvcError as exc:
            return pb.MatchResponse(
                client_ref=request.client_ref, error_code=status_name(exc), error_message=str(exc)
            )
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
        self.curation = core.curation
        self.spool = spool or Spool.from_config(core.config)

    def _done(self, action: str, **detail) -> None:
        # Operators' writes go to the same hash-chained history as matches.
        self.core.record_action(action, caller_name(), detail)

    @rpc
    def CreateSet(self, request, context):
        record = self.curation.create_set(
            request.name,
            request.description,
            dict(request.labels),
            convert.thresholds_from_pb(request.thresholds),
            allow_list=request.allow_list,
            review_blocks=request.review_blocks,
        )
        self._done("CreateSet", set=record.name, allow_list=record.allow_list)
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
        )
        self._done("UpdateSet", set=record.name, enabled=record.enabled)
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
        header, chunks = upload_parts(request_iterator, "AddEntryUpload")
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
        entries, next_token = self.curation.list_entries(
            request.set, request.page_size, request.page_token
        )
        return pb.ListEntriesResponse(
            entries=[convert.entry(e, request.set) for e in entries], next_page_token=next_token
        )

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
        header, batches = bulk_pb.header_and_batches(request_iterator)
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
            bulk.export_entries(self.core.store, hash_set.id, since_micros), request.set
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
        self.queue = core.review

    def _filter(self, msg):
        sets = {s.name: s.id for s in self.core.live.sets_by_id.values()}
        return convert.review_filter(msg, sets)

    @rpc
    def ListReviewItems(self, request, context):
        items, token = self.queue.list(
            self._filter(request.filter), request.page_size, request.page_token
        )
        return pb.ListReviewItemsResponse(
            items=[convert.review_item(i) for i in items], next_page_token=token
        )

    @rpc
    def ClaimReviewItem(self, request, context):
        item = self.queue.claim(caller_name(), request.id or None, self._filter(request.filter))
        return convert.review_item(item)

    @rpc
    def ResolveReviewItem(self, request, context):
        item = self.queue.resolve(
            caller_name(),
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
        return pb.QueryHistoryResponse(
            records=[convert.history_record(r) for r in records], next_page_token=next_token
        )

    @rpc
    def ExportHistory(self, request, context):
        for record in self.audit.export(self._filter(request)):
            yield convert.history_record(record)

    @rpc
    def VerifyHistory(self, request, context):
        result = self.audit.store.verify_history()
        return pb.VerifyHistoryResponse(
            intact=result.intact,
            records_checked=result.records_checked,
            unchained_records=result.unchained_records,
            head_hash=result.head_hash,
            problems=[
                pb.HistoryProblem(record_id=record_id, problem=problem)
                for record_id, problem in result.problems
            ],
        )


class AdminServicer(pb_grpc.AdminServicer):
    def __init__(self, core: Core) -> None:
        self.store = core.store

    @rpc
    def CreateToken(self, request, context):
        record, token = auth.create_token(
            self.store, request.role, request.name, request.expires_in_seconds
        )
        return pb.CreateTokenResponse(info=convert.token_info(record), token=token)

    @rpc
    def ListTokens(self, request, context):
        return pb.ListTokensResponse(
            tokens=[convert.token_info(t) for t in self.store.list_tokens()]
        )

    @rpc
    def RevokeToken(self, request, context):
        return convert.token_info(self.store.revoke_token(request.id))
