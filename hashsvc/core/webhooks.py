"""Webhook delivery: at least once, from the store's outbox, in outbox order
per endpoint.

One thread per endpoint (never a Match's thread: a slow or hanging receiver
holds only its own deliverer, for at most timeout_seconds a POST). The
deliverer leases the endpoint's row in the store (OutboxStore), reads a
bounded page of events after the endpoint's position, POSTs them one by one
(signed) and moves the position on. A failing event holds back the ones after
it for that endpoint (causal order: a review verdict never arrives before the
block it resolves), is retried with exponential backoff, and after
retry_for_seconds is recorded as failed and skipped (`hashsvc events list
--failed`, the hashsvc_webhook_failed_events metric). Which answers are
worth retrying is decided per status: 5xx, no answer, and the 4xx that mean
"not now" (retried_4xx: 408, 425, 429) are; a 429 or 503 with Retry-After
waits as asked, within the backoff's bounds. Any other 4xx refuses the
request itself (a retry would be refused again and hold back every later
event for retry_for_seconds): the event is marked failed at once; but after
refusals_in_a_row such events with none taken between, it is the endpoint
that refuses (a rotated secret, a moved URL), and it is held and retried as
on a 5xx, so a misconfigured receiver cannot empty the backlog into failures.

A crash between a POST and the position's update sends those events again
after the restart: receivers deduplicate by X-Hashsvc-Event-Id.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import random
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

from hashdb import EndpointState, OutboxEvent, OutboxStore
from hashsvc.core.event_feed import authentic
from hashsvc.core.events import event_bytes
from hashsvc.core.http_post import Answer, HttpPoster, PostFailed
from hashsvc.core.webhook_config import EventSettings, WebhookConfig

log = logging.getLogger(__name__)

FORGED = "not written by this server (its MAC under the history key does not verify)"
# A POST starts only with this much lease left beyond its timeout.
_LEASE_MARGIN_SECONDS = 1.0


def signature(secret: bytes, body: bytes) -> str:
    """The X-Hashsvc-Signature header's value."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


# Answers whose Retry-After says when to come back (RFC 9110 15.5.20, 15.6.4).
_HONOURS_RETRY_AFTER = frozenset({429, 503})


@dataclass(frozen=True)
class NotTaken:
    """Why the receiver did not take an event, and what to do about it."""

    error: str  # recorded as the endpoint's last_error
    permanent: bool = False  # a refusal a retry would get again: failed at once
    retry_after: float | None = None  # seconds the receiver asked us to wait


_NOT_RETRIED = " (refused: not retried)"
_HELD = " (refused in a row: the endpoint is held and retried)"


def not_taken(answer: Answer, retried_4xx: tuple[int, ...]) -> NotTaken | None:
    """None for a 2xx; else whether the status is worth retrying."""
    status = answer.status
    if 200 <= status < 300:
        return None
    if 400 <= status < 500 and status not in retried_4xx:
        return NotTaken(f"HTTP {status}{_NOT_RETRIED}", permanent=True)
    wait = None
    if status in _HONOURS_RETRY_AFTER:
        wait = retry_after_seconds(answer.headers.get("retry-after", ""))
    return NotTaken(f"HTTP {status}", retry_after=wait)


def retry_after_seconds(value: str, now: datetime | None = None) -> float | None:
    """A Retry-After header's wait in seconds (delay-seconds or an HTTP date);
    None when absent or unreadable."""
    value = value.strip()
    if not value:
        return None
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # an HTTP date is GMT
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


@dataclass
class EndpointCounters:
    """This replica's figures for one endpoint (the metrics read them)."""

    delivered: int = 0
    attempts_failed: int = 0  # POSTs without a 2xx (retried, or given up)


class Webhooks:
    """The deliverers of this replica, one per configured endpoint."""

    def __init__(
        self, store: OutboxStore, webhooks: tuple[WebhookConfig, ...], settings: EventSettings
    ) -> None:
        self.store = store
        self.settings = settings
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._stop = threading.Event()
        self.deliverers = [
            _Deliverer(store, webhook, settings, self.owner, self._stop) for webhook in webhooks
        ]

    def start(self) -> None:
        for deliverer in self.deliverers:
            self.store.start_endpoint(deliverer.webhook.name)
        for deliverer in self.deliverers:
            deliverer.thread.start()

    def counters(self) -> dict[str, EndpointCounters]:
        return {d.webhook.name: d.counters for d in self.deliverers}

    def stop(self) -> None:
        self._stop.set()
        for deliverer in self.deliverers:
            if deliverer.thread.is_alive():
                deliverer.thread.join(timeout=deliverer.webhook.timeout_seconds + 5)


class _Deliverer:
    def __init__(
        self,
        store: OutboxStore,
        webhook: WebhookConfig,
        settings: EventSettings,
        owner: str,
        stop: threading.Event,
    ) -> None:
        self.store = store
        self.webhook = webhook
        self.settings = settings
        self.owner = owner
        self.stop = stop
        self.secret = webhook.secret()
        self.poster = HttpPoster(webhook.url, settings.max_response_bytes, webhook.ca_file)
        self.counters = EndpointCounters()
        self.thread = threading.Thread(
            target=self._run, name=f"webhook {webhook.name}", daemon=True
        )
        self._lease_ends = 0.0  # monotonic
        self._state: EndpointState | None = None
        # events refused with a 4xx since one was last taken (in this process)
        self._refused_in_a_row = 0

    def _run(self) -> None:
        try:
            while not self.stop.is_set():
                try:
                    pause = self._round()
                except Exception:  # the store is down, a bug: logged, tried again
                    log.exception("webhook %s: delivery failed", self.webhook.name)
                    pause = self.settings.poll_seconds * 5
                if pause > 0:
                    self.stop.wait(pause)
        finally:
            self.poster.close()
            try:
                self.store.release_endpoint(self.webhook.name, self.owner)
            except Exception:  # the lease runs out by itself
                log.warning("webhook %s: could not release its lease", self.webhook.name)

    def _held(self, state: EndpointState | None) -> EndpointState | None:
        """Every answer of a lease-fenced write passes here: the endpoint's
        state as this replica last wrote it (None: the lease is lost)."""
        self._state = state
        self._lease_ends = time.monotonic() + state.lease_seconds_left if state else 0.0
        return state

    def _round(self) -> float:
        """One page of events; how long to wait before the next round."""
        name, lease = self.webhook.name, self.settings.lease_seconds
        state = self._state
        if state is None or self._lease_ends - time.monotonic() < lease / 2:
            # a write only when the lease needs renewing: while it holds, only
            # this replica moves the endpoint, so the state it wrote is current
            state = self._held(self.store.claim_endpoint(name, self.owner, lease))
        if state is None:  # another replica delivers to it
            return self.settings.poll_seconds
        if state.next_attempt_at is not None:
            wait = (state.next_attempt_at - datetime.now(UTC)).total_seconds()
            if wait > 0:
                return min(wait, lease / 2)
        events = self.store.events_after(state.delivered_through, self.settings.batch_size)
        if not events:
            return self.settings.poll_seconds
        done = state.delivered_through
        for event in events:
            if self.stop.is_set():
                break
            if not self.webhook.wants(event.type, event.set_names):
                done = event.id
                continue
            if not authentic(event):  # a row forged in the database: never signed and sent
                state = self._held(self.store.advance_endpoint(name, self.owner, done, lease))
                if state is None:
                    return self.settings.poll_seconds
                self._held(self.store.endpoint_attempt_failed(name, self.owner, FORGED, 0, lease))
                self._held(self.store.endpoint_give_up(name, self.owner, event.id, lease))
                return 0.0
            if (
                self._lease_ends - time.monotonic()
                < self.webhook.timeout_seconds + _LEASE_MARGIN_SECONDS
            ):
                state = self._held(self.store.advance_endpoint(name, self.owner, done, lease))
                if state is None:
                    log.warning("webhook %s: lease lost; another replica goes on", name)
                    return self.settings.poll_seconds
            refusal = self._send(event)
            if refusal is None:
                done = event.id
                continue
            return self._failed(state, done, event, refusal)
        if done > state.delivered_through:
            self._held(self.store.advance_endpoint(name, self.owner, done, lease))
        return 0.0 if len(events) == self.settings.batch_size else self.settings.poll_seconds

    def _send(self, event: OutboxEvent) -> NotTaken | None:
        """None when the receiver took it (2xx), else why not."""
        body = event_bytes(event)
        headers = {
            "X-Hashsvc-Event-Id": str(event.id),
            "X-Hashsvc-Event-Type": event.type,
            "X-Hashsvc-Signature": signature(self.secret, body),
        }
        try:
            answer = self.poster.post(body, headers, self.webhook.timeout_seconds)
        except PostFailed as exc:
            return NotTaken(str(exc))
        refusal = not_taken(answer, self.webhook.retried_4xx)
        if refusal is None:
            self.counters.delivered += 1
            self._refused_in_a_row = 0
        elif refusal.permanent:
            if self._refused_in_a_row >= self.webhook.refusals_in_a_row:
                # the endpoint refuses every event: held and retried, not the
                # backlog failed event by event (WebhookConfig.refusals_in_a_row)
                return NotTaken(f"{refusal.error[: -len(_NOT_RETRIED)]}{_HELD}")
            self._refused_in_a_row += 1
        return refusal

    def _failed(
        self, state: EndpointState, done: int, event: OutboxEvent, refusal: NotTaken
    ) -> float:
        name, lease = self.webhook.name, self.settings.lease_seconds
        self.counters.attempts_failed += 1
        if done > state.delivered_through:  # the ones before it went through
            state = self._held(self.store.advance_endpoint(name, self.owner, done, lease))
            if state is None:
                return self.settings.poll_seconds
        error = refusal.error
        first_failed = state.first_failed_at
        expired = (
            first_failed is not None
            and (datetime.now(UTC) - first_failed).total_seconds() >= self.webhook.retry_for_seconds
        )
        if refusal.permanent or expired:
            # this attempt recorded first: the failure row takes its count and error
            self._held(self.store.endpoint_attempt_failed(name, self.owner, error, 0, lease))
            if self._held(self.store.endpoint_give_up(name, self.owner, event.id, lease)):
                why = "refused" if refusal.permanent else (
                    f"not taken within {self.webhook.retry_for_seconds:g} s"
                )  # fmt: skip
                log.error(
                    "webhook %s: event %d (%s) %s, marked failed: %s",
                    name, event.id, event.type, why, error,
                )  # fmt: skip
            return 0.0
        settings = self.settings
        if refusal.retry_after is not None:  # as the receiver asked, within bounds
            backoff = min(
                settings.backoff_max_seconds,
                max(settings.backoff_initial_seconds, refusal.retry_after),
            )
        else:
            backoff = min(
                settings.backoff_max_seconds,
                settings.backoff_initial_seconds * 2 ** min(state.attempts, 30),
            ) * random.uniform(0.9, 1.0)
        log.warning(
            "webhook %s: event %d not delivered (attempt %d, again in %.1f s): %s",
            name, event.id, state.attempts + 1, backoff, error,
        )  # fmt: skip
        self._held(self.store.endpoint_attempt_failed(name, self.owner, error, backoff, lease))
        return min(backoff, lease / 2)
