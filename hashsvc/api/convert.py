"""The one place that converts between protobuf messages and core types."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.timestamp_pb2 import Timestamp

from hashdb import (
    EntryRecord,
    HashSetRecord,
    HistoryRecord,
    RetroRun,
    ReviewFilter,
    ReviewItem,
    Thresholds,
    TokenRecord,
)
from hashdb.times import from_micros
from hashsvc.base import media_kinds, validation
from hashsvc.base.errors import InvalidArgument, NotFound, quoted
from hashsvc.base.signals import Signal, signal_type
from hashsvc.core.config import StringLimits
from hashsvc.core.core import MatchOutcome, MatchQuery
from hashsvc.core.events import event_bytes
from hashsvc.core.retro import run_duration
from hashsvc.matching.matcher import Match
from hashsvc.media.spool import SpooledMedia
from hashsvc.v1 import hashsvc_pb2 as pb

DECISION_TO_PB = {
    "allow": pb.ALLOW,
    "review": pb.REVIEW,
    "block": pb.BLOCK,
    "": pb.DECISION_UNSPECIFIED,
}
DECISION_FROM_PB = {v: k for k, v in DECISION_TO_PB.items()}
# Each registered media kind is the MediaType value of its name in capitals
# ("image" -> IMAGE); a kind registered without one fails here, at import.
MEDIA_TO_PB = {name: pb.MediaType.Value(name.upper()) for name in media_kinds.MEDIA_KINDS}


def timestamp(value: datetime | None) -> Timestamp | None:
    if value is None:
        return None
    ts = Timestamp()
    ts.FromDatetime(value.astimezone(UTC).replace(tzinfo=None))
    return ts


def from_timestamp(msg, field: str) -> datetime | None:
    if not msg.HasField(field):
        return None
    return getattr(msg, field).ToDatetime(tzinfo=UTC)


def match_query(req: pb.MatchRequest, upload: SpooledMedia | None = None) -> MatchQuery:
    """The core's query from a Match request, or from MatchUpload's header and
    its spooled chunks."""
    which = req.WhichOneof("query")
    common = {"client_ref": req.client_ref, "sets": tuple(req.sets)}
    if upload is not None:
        if which is not None:
            raise InvalidArgument("an upload's header must not hold media or a hash")
        return MatchQuery(media=upload, **common)
    if which == "media":
        return MatchQuery(media=req.media.content, **common)
    if which == "signal":
        return MatchQuery(
            signal_type=req.signal.signal_type,
            signal_value=req.signal.value,
            signal_quality=req.signal.quality or None,
            **common,
        )
    raise InvalidArgument("the request holds neither media nor a hash")


def query_signal(sig: Signal, full: bool = True) -> pb.QuerySignal:
    """`full` False: an opaque value (a picture's local features, ~36 KB of hex) is answered as
    its size and SHA-256 only; most callers read the decision, and the blob was most of a Match
    answer's bytes."""
    if not full and signal_type(sig.kind).opaque:
        return pb.QuerySignal(
            signal_type=sig.kind,
            quality=sig.quality or 0,
            variant=sig.variant,
            position=sig.position,
            value_bytes=len(sig.value),
            value_sha256=hashlib.sha256(sig.value).hexdigest(),
        )
    return pb.QuerySignal(
        signal_type=sig.kind,
        value=sig.hex(),
        quality=sig.quality or 0,
        variant=sig.variant,
        position=sig.position,
    )


def matched_entry(m: Match) -> pb.MatchedEntry:
    return pb.MatchedEntry(
        set=m.set_name,
        entry=m.entry_name,
        entry_id=m.entry_id,
        signal_type=m.signal_type,
        distance=m.distance,
        labels=m.labels,
        decision=DECISION_TO_PB[m.decision],
        query_variant=m.query_variant,
        known_variant=m.known_variant,
        reason=m.reason,
        segments=[
            pb.Segment(
                query_start=seg.query_start,
                query_end=seg.query_end,
                known_start=seg.known_start,
                known_end=seg.known_end,
            )
            for seg in m.segments
        ],
        unit=m.unit,
        query_share=m.query_share,
        known_share=m.known_share,
        local_features=(
            None
            if m.local_features is None
            else pb.LocalFeatureEvidence(
                inliers=m.local_features.inliers,
                coverage=m.local_features.coverage,
                query_coverage=m.local_features.query_coverage,
                scale=m.local_features.scale,
                angle=m.local_features.angle,
                agreement=m.local_features.agreement,
            )
        ),
        audio_shift=(
            pb.AudioShift(
                tempo_ratio=m.audio_shift.tempo_ratio, pitch_ratio=m.audio_shift.pitch_ratio
            )
            if m.audio_shift is not None
            else None
        ),
    )


def match_response(outcome: MatchOutcome, full_signals: bool = False) -> pb.MatchResponse:
    """`full_signals`: MatchRequest.full_signals (opaque values whole, not summarised)."""
    return pb.MatchResponse(
        request_id=outcome.request_id,
        decision=DECISION_TO_PB[outcome.decision],
        matches=[matched_entry(m) for m in outcome.matches],
        media_type=MEDIA_TO_PB.get(outcome.media_type, pb.MEDIA_TYPE_UNSPECIFIED),
        query_signals=[query_signal(s, full_signals) for s in outcome.query_signals],
        client_ref=outcome.client_ref,
        notes=list(outcome.notes),
    )


def thresholds_from_pb(items) -> dict[str, Thresholds]:
    return {
        t.signal_type: Thresholds(
            t.block_distance,
            t.review_distance,
            block_inliers=t.block_inliers,
            review_inliers=t.review_inliers,
            block_coverage=t.block_coverage,
            review_coverage=t.review_coverage,
        )
        for t in items
    }


def threshold(signal_type: str, t: Thresholds) -> pb.Threshold:
    return pb.Threshold(
        signal_type=signal_type,
        block_distance=t.block_distance,
        review_distance=t.review_distance,
        block_inliers=t.block_inliers,
        review_inliers=t.review_inliers,
        block_coverage=t.block_coverage,
        review_coverage=t.review_coverage,
    )


def hash_set(record: HashSetRecord) -> pb.HashSet:
    return pb.HashSet(
        id=record.id,
        name=record.name,
        description=record.description,
        labels=record.labels,
        thresholds=[threshold(k, t) for k, t in sorted(record.thresholds.items())],
        enabled=record.enabled,
        entry_count=record.entry_count,
        created_at=timestamp(record.created_at),
        updated_at=timestamp(record.updated_at),
        allow_list=record.allow_list,
        review_blocks=record.review_blocks,
        review_target=record.review_target,
        retro_window_seconds=record.retro_window_seconds,
    )


def retro_run(run: RetroRun, set_name: str) -> pb.RetroRunInfo:
    return pb.RetroRunInfo(
        id=run.id,
        trigger=run.trigger,
        requested_by=run.requested_by,
        set=set_name,
        entries=len(run.entry_ids),
        since=timestamp(run.since),
        uploads_scanned=run.scanned,
        hits=run.hits,
        duration_seconds=run_duration(run) or 0.0,
        state=run.state,
        error=run.error,
        created_at=timestamp(run.created_at),
        finished_at=timestamp(run.finished_at),
    )


def entry(record: EntryRecord, set_name: str) -> pb.Entry:
    return pb.Entry(
        id=record.id,
        set=set_name,
        name=record.name,
        labels=record.labels,
        media_type=MEDIA_TO_PB.get(record.media_type, pb.MEDIA_TYPE_UNSPECIFIED),
        signals=[query_signal(s) for s in record.signals],
        created_at=timestamp(record.created_at),
        added_by=record.added_by,
        removed_at=timestamp(record.removed_at),
    )


# Bytes a repeated message field's tag and length add to each element.
_FRAMING = 6


def entry_parts(
    record: EntryRecord, set_name: str, max_bytes: int, first_signal: int = 0
) -> Iterator[tuple[pb.Entry, int]]:
    """The entry as one message, or, larger than max_bytes (a long video's
    frames), as parts: each a copy of the entry with the next run of its
    signals, in order. Yields (part, signals sent up to its end), starting
    after the first `first_signal` signals."""
    whole = entry(record, set_name)
    if first_signal == 0 and whole.ByteSize() <= max_bytes:
        yield whole, len(record.signals)
        return
    signals = list(whole.signals)[first_signal:]
    del whole.signals[:]
    bare = whole.ByteSize()
    part, size, sent = pb.Entry(), bare, first_signal
    part.CopyFrom(whole)
    for sig in signals:
        more = sig.ByteSize() + _FRAMING
        if len(part.signals) and size + more > max_bytes:
            yield part, sent
            part, size = pb.Entry(), bare
            part.CopyFrom(whole)
        part.signals.append(sig)
        size += more
        sent += 1
    yield part, sent


def entry_messages(
    records: Iterable[EntryRecord], set_name: str, max_bytes: int, first_signal: int = 0
) -> Iterator[tuple[list[pb.Entry], tuple[int, int | None]]]:
    """The entries in messages of at most ~max_bytes (ListEntries pages,
    ExportEntries batches), an entry larger than that split over several
    (entry_parts): a client puts an entry back together by joining the
    signals of consecutive entries with the same id. Yields (entries, where
    the message ends: (last entry's id, signals of it sent, or None when it
    was sent whole))."""
    batch: list[pb.Entry] = []
    size, end = 0, (0, None)
    for k, record in enumerate(records):
        skip = first_signal if k == 0 else 0
        for part, sent in entry_parts(record, set_name, max_bytes, skip):
            more = part.ByteSize() + _FRAMING
            if batch and size + more > max_bytes:
                yield batch, end
                batch, size = [], 0
            batch.append(part)
            size += more
            end = (record.id, None if sent >= len(record.signals) else sent)
    if batch:
        yield batch, end


def within_bytes(messages: list, max_bytes: int) -> list:
    """The first messages that fit in max_bytes together (at least one): a
    page of history records or review items cut by size (each is bounded by
    the request limits, but 1,000 of a video's matches are not)."""
    size = 0
    for k, message in enumerate(messages):
        size += message.ByteSize() + _FRAMING
        if size > max_bytes and k:
            return messages[:k]
    return messages


def history_record(record: HistoryRecord) -> pb.HistoryRecord:
    return pb.HistoryRecord(
        id=record.id or 0,
        request_id=record.request_id,
        time=timestamp(record.time),
        caller=record.caller,
        rpc=record.rpc,
        media_type=MEDIA_TO_PB.get(record.media_type, pb.MEDIA_TYPE_UNSPECIFIED),
        query_signals=[
            pb.QuerySignal(
                signal_type=s["signal_type"],
                value=s["value"],
                quality=s.get("quality") or 0,
                variant=s.get("variant", ""),
                # an opaque blob is kept as its size and SHA-256 (history_signal_json)
                value_bytes=s.get("bytes", 0),
                value_sha256=s.get("sha256", ""),
            )
            for s in record.query_signals
        ],
        matches=[matched_entry(Match.from_json(m)) for m in record.matches],
        decision=DECISION_TO_PB[record.decision],
        status=record.status,
        error_message=record.error_message,
        client_ref=record.client_ref,
        media_bytes=record.media_bytes,
        detail_json=json.dumps(record.detail, ensure_ascii=False) if record.detail else "",
        caller_token_id=record.caller_token_id or 0,
    )


def stored_query_signals(signals: list[dict]) -> list[pb.QuerySignal]:
    return [
        pb.QuerySignal(
            signal_type=s["signal_type"],
            value=s["value"],
            quality=s.get("quality") or 0,
            variant=s.get("variant", ""),
            position=s.get("position"),
        )
        for s in signals
    ]


def review_item(item: ReviewItem) -> pb.ReviewItem:
    return pb.ReviewItem(
        id=item.id,
        request_id=item.request_id,
        created_at=timestamp(item.created_at),
        caller=item.caller,
        media_type=MEDIA_TO_PB.get(item.media_type, pb.MEDIA_TYPE_UNSPECIFIED),
        client_ref=item.client_ref,
        query_signals=stored_query_signals(item.query_signals),
        matches=[matched_entry(Match.from_json(m)) for m in item.matches],
        status=item.status,
        claimed_by=item.claimed_by,
        claim_expires_at=timestamp(item.claim_expires_at),
        resolved_by=item.resolved_by,
        resolved_at=timestamp(item.resolved_at),
        note=item.note,
        added_entry_id=item.added_entry_id or 0,
        source=item.source,
    )


def review_filter(msg: pb.ReviewFilter, set_ids_by_name: dict[str, int]) -> ReviewFilter:
    set_id = None
    if msg.set:
        if msg.set not in set_ids_by_name:
            raise NotFound(f"no such set: {msg.set}")
        set_id = set_ids_by_name[msg.set]
    label = None
    if msg.label:
        key, sep, value = msg.label.partition("=")
        if not sep:
            raise InvalidArgument("label filter must be key=value")
        label = (key.strip(), value.strip())
    media = next((k for k, v in MEDIA_TO_PB.items() if v == msg.media_type), None)
    return ReviewFilter(
        status=msg.status or "open",
        set_id=set_id,
        label=label,
        media_type=media if msg.media_type else None,
        caller=msg.caller or None,
    )


def token_info(record: TokenRecord) -> pb.TokenInfo:
    return pb.TokenInfo(
        id=record.id,
        name=record.name,
        role=record.role,
        created_at=timestamp(record.created_at),
        revoked_at=timestamp(record.revoked_at),
        expires_at=timestamp(record.expires_at),
    )


def request_strings(message, limits: StringLimits, path: str = "") -> None:
    """Every string a request holds, at any depth (map keys and values,
    repeated fields, nested messages): within its length limit and free of
    NUL, which PostgreSQL's text refuses (INTERNAL before). Called where a
    request arrives, before anything is looked up or stored, so no RPC and
    no field added later is left out.
    Bytes fields (media, chunks, bulk rows' values) are bounded elsewhere.
    An error names the field by its path (`field`: "header.client_ref",
    "sets[2]"; a map's name for its keys and values) and the limit by its
    config key (`limit`: "strings.client_ref_chars")."""
    for fd, value in message.ListFields():
        where = f"{path}{fd.name}"
        if fd.is_repeated and len(value) > limits.repeated_items:
            raise InvalidArgument(
                f"{where} holds {len(value)} items, at most {limits.repeated_items}",
                field=where,
                limit="strings.repeated_items",
            )
        if fd.type == FieldDescriptor.TYPE_MESSAGE:
            if fd.message_type.GetOptions().map_entry:
                for key, item in value.items():
                    limits.check(key, f"{where} key", "other_chars", where)
                    if isinstance(item, str):
                        shown = f"{where}[{quoted(key, 40)}]"
                        limits.check(item, shown, "other_chars", where)
            elif fd.is_repeated:
                for k, item in enumerate(value):
                    request_strings(item, limits, f"{where}[{k}].")
            else:
                request_strings(value, limits, f"{where}.")
        elif fd.type == FieldDescriptor.TYPE_STRING:
            limit = StringLimits.limit_for(fd.name)
            if fd.is_repeated:
                for k, item in enumerate(value):
                    limits.check(item, where, limit, f"{where}[{k}]")
            else:
                limits.check(value, where, limit, where)


def request_paging(message) -> None:
    """The checks the core makes on a list request's page_size and page_token,
    an error naming its field. ListEntries' token may be `ID:N`
    (validation.entry_page)."""
    fields = message.DESCRIPTOR.fields_by_name
    if "page_size" not in fields or "page_token" not in fields:
        return
    check = validation.entry_page if isinstance(message, pb.ListEntriesRequest) else validation.page
    for field, (size, token) in (
        ("page_size", (message.page_size, "")),
        ("page_token", (0, message.page_token)),
    ):
        try:
            check(size, token)
        except InvalidArgument as exc:
            exc.field = field
            raise


# -- events (hashsvc/core/events.py)


def event(e) -> pb.Event:
    """An outbox event (hashdb OutboxEvent), its JSON exactly as webhooks get it."""
    return pb.Event(
        id=e.id,
        type=e.type,
        time=timestamp(e.time),
        json=event_bytes(e).decode(),
        sets=list(e.set_names),
    )


def event_failure(f) -> pb.EventFailure:
    return pb.EventFailure(
        endpoint=f.endpoint,
        event_id=f.event_id,
        event_type=f.event_type,
        failed_at=timestamp(f.failed_at),
        attempts=f.attempts,
        last_error=f.last_error,
    )


def webhook_endpoint(state, failed_events: int) -> pb.WebhookEndpoint:
    return pb.WebhookEndpoint(
        name=state.name,
        delivered_through=state.delivered_through,
        attempts=state.attempts,
        last_error=state.last_error,
        first_failed_at=timestamp(state.first_failed_at),
        next_attempt_at=timestamp(state.next_attempt_at),
        failed_events=failed_events,
    )


def feed(record, set_name: str, feedback=()) -> pb.Feed:
    """A feed as the Exchange service shows it: never its credentials."""
    return pb.Feed(
        name=record.name,
        api=record.api,
        set=set_name,
        labels=record.labels,
        options=record.options,
        every_seconds=record.every_seconds,
        enabled=record.enabled,
        checkpoint=record.checkpoint or "",
        has_credentials=record.has_credentials,
        last_fetch_at=timestamp(from_micros(record.last_fetch_at)),
        last_result=record.last_result,
        last_error=record.last_error,
        added=record.added,
        updated=record.updated,
        deleted=record.deleted,
        skipped=record.skipped,
        rejected=record.rejected,
        failures=record.failures,
        next_run_at=timestamp(from_micros(record.next_run_at)),
        items=record.items,
        fetching_replica=record.lease_owner or "",
        feedback=[feedback_item(f) for f in feedback],
    )


def feedback_item(record) -> pb.FeedbackItem:
    return pb.FeedbackItem(
        id=record.id,
        entry=record.entry_name,
        verdict=record.verdict,
        state=record.state,
        attempts=record.attempts,
        last_error=record.last_error,
        created_at=timestamp(from_micros(record.created_at)),
        sent_at=timestamp(from_micros(record.sent_at)),
    )


def fetch_progress(result, done: bool) -> pb.FetchProgress:
    return pb.FetchProgress(
        pages=result.pages,
        items=result.items,
        added=result.added,
        updated=result.updated,
        deleted=result.deleted,
        skipped=result.skipped,
        rejected=result.rejected,
        seconds=result.seconds,
        done=done,
    )
