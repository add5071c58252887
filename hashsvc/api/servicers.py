"""gRPC servicers: thin. Each RPC unpacks the request, calls the core, packs the
answer; core errors become status codes (hashsvc/api/calls.py, with google.rpc
details from hashsvc/api/status.py)."""

from __future__ import annotations

import functools
import logging
import queue
import threading
from concurrent.futures import Future, ThreadPoolExecutor

from hashsvc.api import bulk_pb, convert
from hashsvc.api.calls import (
    CALLER,
    caller_name,
    checks_own_strings,
    counted_chunks,
    reviewer_identity,
    rpc,
    status_of,
    upload_parts,
)
from hashsvc.api.streams import Requests
from hashsvc.base.errors import HashsvcError, InvalidArgument, TooLarge, status_name
from hashsvc.core import auth
from hashsvc.core.config import new_spool
from hashsvc.core.core import Core
from hashsvc.core.retro import check_window
from hashsvc.media.spool import Spool
from hashsvc.v1 import hashsvc_pb2 as pb
from hashsvc.v1 import hashsvc_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

_END, _TOO_MANY = object(), object()  # MatchBatch queue markers
# The fewest bytes a signal takes in an Entry message (an MD5: 32 hex digits,
# its type and variant): a page of ListEntries reads no more signals than
# max_page_bytes / this.
_SIGNAL_BYTES = 48


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
        return convert.match_response(outcome, request.full_signals)

    def _query(
        self, request, rpc: str, caller: str, caller_token_id: int, strings_checked: bool = False
    ):
        """The core's query; a request refused here (a string past its limit,
        neither media nor a hash) is a failed Match call, recorded as one."""
        try:
            if not strings_checked:
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
            with self.spool.upload(
                counted_chunks(chunks, received), caller.id, caller.name
            ) as upload:
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
                    status_of(context, exc),
                )
            raise
        return convert.match_response(outcome, header.full_signals)

    @rpc
    def MatchBatch(self, request_iterator, context):  # noqa: N802
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
            # The stream's own errors end it with a status (through @rpc, as
            # any RPC's); an item's error is that item's answer.
            if item is _TOO_MANY:
                raise TooLarge(
                    f"a batch may hold at most {limit} items (max_batch_items)",
                    limit="max_batch_items",
                )
            if isinstance(item, HashsvcError):
                raise item  # the request stream's idle or total deadline
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
            # strings checked in _match_later, before the rate limit
            query = self._query(request, "MatchBatch", caller, caller_token_id, True)
            outcome = self.core.match(query, caller, "MatchBatch", caller_token_id)
            return convert.match_response(outcome, request.full_signals)
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
        if request.HasField("retro_window_seconds"):  # before anything changes
            check_window(request.retro_window_seconds)
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
        if request.retro_window_default or request.HasField("retro_window_seconds"):
            if request.retro_window_default and request.HasField("retro_window_seconds"):
                raise InvalidArgument(
                    "give retro_window_seconds or retro_window_default, not both",
                    field="retro_window_seconds",
                )
            record = self.core.retro.set_window(
                record.name,
                None if request.retro_window_default else request.retro_window_seconds,
            )
        self._done(
            "UpdateSet",
            set=record.name,
            enabled=record.enabled,
            review_target=record.review_target,
            retro_window_seconds=record.retro_window_seconds,
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
            status_of=functools.partial(status_of, context),
        )
        return bulk_pb.response(result, header.strict)

    @rpc
    def ExportEntries(self, request, context):  # noqa: N802
        since = convert.from_timestamp(request, "since")
        since_micros = int(since.timestamp() * 1_000_000) if since else None
        yield from bulk_pb.export_batches(
            self.core.export_entries(request.set, since_micros),
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
        return convert.review_filter(msg, self.core.set_ids_by_name())

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
        self.limits = core.config.strings

    @rpc
    def CreateToken(self, request, context):
        record, token = self.core.create_token(
            caller_name(), request.role, request.name, request.expires_in_seconds
        )
        return pb.CreateTokenResponse(info=convert.token_info(record), token=token)

    @rpc
    def ListTokens(self, request, context):
        return pb.ListTokensResponse(
            tokens=[convert.token_info(t) for t in self.core.list_tokens()]
        )

    @rpc
    def RevokeToken(self, request, context):
        return convert.token_info(self.core.revoke_token(caller_name(), request.id))


class EventsServicer(pb_grpc.EventsServicer):
    def __init__(self, core: Core) -> None:
        self.core = core
        self.feed = core.event_feed
        self.limits = core.config.strings
        self.page_bytes = core.config.page_bytes()

    @rpc
    def Subscribe(self, request, context):  # noqa: N802
        def active() -> bool:
            return context.is_active() and not self.core.stopping

        for event in self.feed.subscribe(
            request.from_id, tuple(request.types), request.stop_at_end, active
        ):
            yield convert.event(event)

    @rpc
    def ListEvents(self, request, context):  # noqa: N802
        page = self.feed.list(
            request.failed, request.from_id, request.page_size, request.page_token
        )
        events = convert.within_bytes([convert.event(e) for e in page.events], self.page_bytes)
        next_token = page.next_page_token
        if len(events) < len(page.events):
            next_token = str(events[-1].id)
        return pb.ListEventsResponse(
            events=events,
            failures=[convert.event_failure(f) for f in page.failures],
            next_page_token=next_token,
            endpoints=[
                convert.webhook_endpoint(s, page.failed_counts.get(s.name, 0))
                for s in page.endpoints
            ],
            last_event_id=page.last_event_id,
        )
