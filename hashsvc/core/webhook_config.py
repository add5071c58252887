"""Notification settings: `[[webhook]]` tables (one per receiving endpoint)
and the `[events]` table (delivery and Events/Subscribe limits), checked
when the config is read, so a bad URL or secret stops the server at start
instead of losing events later."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from urllib.parse import urlsplit

from hashsvc.core.events import EVENT_TYPES

# A secret shorter than this is refused (HMAC-SHA256 keys: 16 bytes at least).
MIN_SECRET_BYTES = 16


@dataclass(frozen=True)
class WebhookConfig:
    # http:// or https:// with a host; where events are POSTed. No user:password
    # in it: the secret file signs, and a URL is logged and shown in status.
    url: str
    # A file holding the endpoint's HMAC secret (>= 16 bytes; surrounding
    # whitespace ignored). Read at start; never logged or stored.
    secret_file: str
    # Event types to send (default: all of EVENT_TYPES).
    events: tuple[str, ...] = EVENT_TYPES
    # Only events about these hash sets (default: all). An event names the
    # sets of its matches; one without sets (none yet) goes to every endpoint.
    sets: tuple[str, ...] = ()
    # The endpoint's name in the store (its delivery position, failures);
    # default: the URL's scheme, host, port and path.
    name: str = ""
    # An event not taken (2xx) for this long is marked failed and skipped.
    retry_for_seconds: float = 24 * 3600.0
    # The 4xx answers that mean "not now" and are retried like 5xx and
    # failures to connect (408 Request Timeout, 425 Too Early, 429 Too Many
    # Requests; 429 and 503 wait as their Retry-After asks, within
    # [events] backoff_initial_seconds..backoff_max_seconds). Any other 4xx
    # says the request itself is refused (gone, unauthorized, malformed): the
    # event is marked failed at once, not sent again for retry_for_seconds.
    retried_4xx: tuple[int, ...] = (408, 425, 429)
    # ...unless this many events in a row were refused so, none taken between:
    # then the endpoint itself refuses (a rotated secret, a moved URL, a WAF),
    # not the events, and failing them one by one would empty the backlog in
    # seconds. Its refusals are then retried with backoff as 5xx are, until
    # one event is taken or retry_for_seconds passes.
    refusals_in_a_row: int = 3
    # One POST, connect to last byte of the answer's headers.
    timeout_seconds: float = 10.0
    # https: the CA bundle that signs the receiver's certificate ("" = the
    # system's); checked at start. The receiver's name is always verified.
    ca_file: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "events", tuple(self.events))
        object.__setattr__(self, "sets", tuple(self.sets))
        object.__setattr__(self, "retried_4xx", tuple(self.retried_4xx))
        where = f"webhook {self.url!r}"
        try:
            parts = urlsplit(self.url)
            port = parts.port
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{where}: not a URL ({exc})") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{where}: url must be http:// or https:// with a host")
        if parts.username is not None or parts.password is not None:
            raise ValueError(
                f"{where}: no user or password in the url (it is logged and shown);"
                " the secret_file signs each event"
            )
        if not self.name:
            default_port = f":{port}" if port else ""
            name = f"{parts.scheme}://{parts.hostname}{default_port}{parts.path or '/'}"
            object.__setattr__(self, "name", name)
        unknown = set(self.events) - set(EVENT_TYPES)
        if unknown or not self.events:
            raise ValueError(
                f"{where}: events must be some of {', '.join(EVENT_TYPES)}"
                + (f" (unknown: {', '.join(sorted(unknown))})" if unknown else "")
            )
        if not all(isinstance(s, str) and s for s in self.sets):
            raise ValueError(f"{where}: sets must be set names")
        if not all(type(c) is int and 400 <= c <= 499 for c in self.retried_4xx):
            raise ValueError(f"{where}: retried_4xx must be status codes within 400..499")
        if type(self.refusals_in_a_row) is not int or not 1 <= self.refusals_in_a_row <= 10_000:
            raise ValueError(f"{where}: refusals_in_a_row must be a whole number within 1..10000")
        if not self.retry_for_seconds > 0 or not self.timeout_seconds > 0:
            raise ValueError(f"{where}: retry_for_seconds and timeout_seconds must be more than 0")
        if self.ca_file:
            if parts.scheme != "https":
                raise ValueError(f"{where}: ca_file is for an https:// url")
            try:
                ssl.create_default_context(cafile=self.ca_file)
            except (OSError, ssl.SSLError) as exc:
                raise ValueError(
                    f"{where}: ca_file {self.ca_file!r} is not a readable CA bundle: {exc}"
                ) from None
        self.secret()  # unreadable or empty: refused now

    def secret(self) -> bytes:
        """The HMAC key; ValueError (naming the file, never its content)."""
        try:
            with open(self.secret_file, "rb") as f:
                secret = f.read().strip()
        except OSError as exc:
            raise ValueError(
                f"webhook {self.name!r}: secret_file {self.secret_file!r} cannot be read:"
                f" {exc.strerror or exc}"
            ) from None
        if len(secret) < MIN_SECRET_BYTES:
            raise ValueError(
                f"webhook {self.name!r}: secret_file {self.secret_file!r} holds"
                f" {'no secret' if not secret else 'a secret shorter than 16 bytes'}"
            )
        return secret

    def wants(self, event_type: str, set_names: tuple[str, ...]) -> bool:
        if event_type not in self.events:
            return False
        return not self.sets or not set_names or any(s in self.sets for s in set_names)


@dataclass(frozen=True)
class EventSettings:
    """[events]: how webhooks are delivered and Events/Subscribe streams."""

    # Events read from the outbox at a time, per endpoint (memory stays
    # bounded whatever the backlog).
    batch_size: int = 200
    # How often each endpoint's deliverer looks for new events (another
    # replica's; this replica's own wake it at once).
    poll_seconds: float = 0.2
    # A replica delivering to an endpoint holds it this long, renewed as it
    # goes; a replica that dies lets another take over after it runs out.
    # Longer than any webhook's timeout_seconds (checked).
    lease_seconds: float = 30.0
    # Retries of a failing event wait this long, doubling up to the maximum.
    backoff_initial_seconds: float = 1.0
    backoff_max_seconds: float = 600.0
    # A receiver's answer headers larger than this close the connection
    # (the answer's body is not needed).
    max_response_bytes: int = 65536
    # Events/Subscribe: events per message read, how often it looks for new
    # ones, and how long one stream lasts (the client resumes from its cursor).
    subscribe_page_size: int = 100
    subscribe_poll_seconds: float = 0.5
    subscribe_max_seconds: float = 3600.0
    # Subscribe streams open at once, in all and per token: a pool of their
    # own, not max_streams' (a consumer idles for up to subscribe_max_seconds;
    # in the upload streams' pool a few of them would refuse every MatchUpload).
    max_subscribers: int = 4
    max_subscribers_per_token: int = 1
    # Events older than this are deleted once every configured endpoint has
    # them (a subscriber's cursor older than this misses them); 0 = kept for
    # ever. Checked every prune_every_seconds.
    keep_seconds: float = 30 * 24 * 3600.0
    prune_every_seconds: float = 60.0

    def __post_init__(self) -> None:
        for name in (
            "batch_size",
            "max_response_bytes",
            "subscribe_page_size",
            "max_subscribers",
            "max_subscribers_per_token",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"events.{name} must be at least 1")
        for name in (
            "poll_seconds",
            "lease_seconds",
            "backoff_initial_seconds",
            "backoff_max_seconds",
            "subscribe_poll_seconds",
            "subscribe_max_seconds",
            "prune_every_seconds",
        ):
            if not getattr(self, name) > 0:
                raise ValueError(f"events.{name} must be more than 0")
        if self.keep_seconds < 0:
            raise ValueError("events.keep_seconds must be 0 (keep for ever) or more")
        if self.backoff_max_seconds < self.backoff_initial_seconds:
            raise ValueError("events.backoff_max_seconds must be at least backoff_initial_seconds")


def check_webhooks(webhooks: tuple[WebhookConfig, ...], settings: EventSettings) -> None:
    names = [w.name for w in webhooks]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(
            f"two webhooks named {duplicates[0]!r}: give each a distinct name"
            " (its delivery position in the store)"
        )
    for webhook in webhooks:
        # a POST must end within the lease, or another replica could take
        # the endpoint over and send the same event at the same time
        if webhook.timeout_seconds * 2 > settings.lease_seconds:
            raise ValueError(
                f"webhook {webhook.name!r}: timeout_seconds ({webhook.timeout_seconds:g}) must"
                f" be at most half of events.lease_seconds ({settings.lease_seconds:g})"
            )
