"""Reading the outbox: `hashsvc events list` (events, failed deliveries, the
endpoints' state) and Events/Subscribe (from a cursor, then following). Reads
are paged by id, so a backlog of millions costs one page of memory."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from hashdb import EndpointState, EventFailure, OutboxEvent, OutboxStore
from hashsvc.base import validation
from hashsvc.base.errors import InvalidArgument, quoted
from hashsvc.core.events import EVENT_TYPES
from hashsvc.core.webhook_config import EventSettings

log = logging.getLogger(__name__)

_FAILURE_TOKEN = re.compile(r"([0-9]{1,19}):(.{1,1000})", re.DOTALL)


@dataclass(frozen=True)
class EventPage:
    events: list[OutboxEvent]
    failures: list[EventFailure]
    next_page_token: str
    endpoints: list[EndpointState]
    failed_counts: dict[str, int]
    last_event_id: int


class EventFeed:
    def __init__(self, store: OutboxStore, settings: EventSettings) -> None:
        self.store = store
        self.settings = settings

    def list(
        self, failed: bool, from_id: int = 0, page_size: int = 0, page_token: str = ""
    ) -> EventPage:
        if from_id < 0:
            raise InvalidArgument("from_id must be 0 (from the first) or more")
        events: list[OutboxEvent] = []
        failures: list[EventFailure] = []
        if failed:
            after, limit = _failure_after(page_token, from_id), validation.page(page_size, "")[1]
            failures = self.store.event_failures(after, limit)
            last = failures[-1] if len(failures) == limit else None
            next_token = f"{last.event_id}:{last.endpoint}" if last else ""
        else:
            after_id, limit = validation.page(page_size, page_token)
            read = self.store.events_after(max(after_id, from_id - 1), limit)
            next_token = str(read[-1].id) if len(read) == limit else ""
            events = [e for e in read if authentic(e)]
        return EventPage(
            events,
            failures,
            next_token,
            self.store.endpoint_states(),
            self.store.count_event_failures(),
            self.store.last_event_id(),
        )

    def prune(self, endpoint_names: list[str]) -> int:
        """Deletes events older than keep_seconds that every endpoint named
        has done (all, without endpoints); how many."""
        if not self.settings.keep_seconds:
            return 0
        states = {s.name: s.delivered_through for s in self.store.endpoint_states()}
        through = min(
            (states.get(name, 0) for name in endpoint_names), default=self.store.last_event_id()
        )
        before = datetime.now(UTC) - timedelta(seconds=self.settings.keep_seconds)
        return self.store.prune_events(before, through)

    def subscribe(
        self,
        from_id: int,
        types: tuple[str, ...],
        stop_at_end: bool,
        active: Callable[[], bool],
    ) -> Iterator[OutboxEvent]:
        """Events from from_id (0: from now) on, then new ones while active()
        and within subscribe_max_seconds."""
        if from_id < 0:
            raise InvalidArgument("from_id must be 0 (new events only) or more")
        unknown = sorted(set(types) - set(EVENT_TYPES))
        if unknown:
            raise InvalidArgument(
                f"unknown event type {unknown[0]!r}: one of {', '.join(EVENT_TYPES)}"
            )
        cursor = from_id - 1 if from_id else self.store.last_event_id()
        ends = time.monotonic() + self.settings.subscribe_max_seconds
        page_size = self.settings.subscribe_page_size
        while active() and time.monotonic() < ends:
            page = self.store.events_after(cursor, page_size)
            for event in page:
                cursor = event.id
                if (not types or event.type in types) and authentic(event):
                    yield event
            if len(page) < page_size:
                if stop_at_end:
                    return
                time.sleep(self.settings.subscribe_poll_seconds)


def authentic(event: OutboxEvent) -> bool:
    """False (and logged) for a row whose MAC under the history key does
    not verify: written into the database by someone else, never passed on."""
    if event.authentic is False:
        log.error(
            "outbox event %d (%s) is not signed by this server: not sent", event.id, event.type
        )
        return False
    return True


def _failure_after(token: str, from_id: int) -> tuple[int, str]:
    if not token:
        return (max(0, from_id - 1), "\uffff") if from_id else (0, "")
    found = _FAILURE_TOKEN.fullmatch(token)
    if found is None:
        raise InvalidArgument(f"invalid page token {quoted(token)}")
    return int(found.group(1)), found.group(2)
