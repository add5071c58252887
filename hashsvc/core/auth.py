"""API tokens and roles.

A token is a random secret shown once at creation; the store keeps only its
SHA-256. Each RPC is allowed to the roles listed for it in RPC_ROLES and to no
one else (default deny: an RPC missing from the table is refused).
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from datetime import UTC, datetime, timedelta

from hashdb import TokenRecord, TokenStore
from hashsvc.base.errors import (
    AlreadyExists,
    InvalidArgument,
    PermissionDenied,
    TooLarge,
    Unauthenticated,
)

MATCHER = "matcher"
OPERATOR = "operator"
AUDITOR = "auditor"
ADMIN = "admin"
REVIEWER = "reviewer"
# A platform's consumer of notifications (Events/Subscribe): it reads what
# the webhooks push, and nothing else of the history.
SUBSCRIBER = "subscriber"
ROLES = (MATCHER, OPERATOR, AUDITOR, REVIEWER, SUBSCRIBER, ADMIN)

_PREFIX = "/hashsvc.v1."
RPC_ROLES: dict[str, frozenset[str]] = {
    f"{_PREFIX}Matcher/Match": frozenset({MATCHER, ADMIN}),
    f"{_PREFIX}Matcher/MatchBatch": frozenset({MATCHER, ADMIN}),
    f"{_PREFIX}Matcher/MatchUpload": frozenset({MATCHER, ADMIN}),
    f"{_PREFIX}Curation/CreateSet": frozenset({OPERATOR, ADMIN}),
    f"{_PREFIX}Curation/ListSets": frozenset({OPERATOR, ADMIN}),
    f"{_PREFIX}Curation/GetSet": frozenset({OPERATOR, ADMIN}),
    f"{_PREFIX}Curation/UpdateSet": frozenset({OPERATOR, ADMIN}),
    f"{_PREFIX}Curation/AddEntry": frozenset({OPERATOR, ADMIN}),
    f"{_PREFIX}Curation/AddEntryUpload": frozenset({OPERATOR, ADMIN}),
    f"{_PREFIX}Curation/ListEntries": frozenset({OPERATOR, ADMIN}),
    f"{_PREFIX}Curation/GetEntry": frozenset({OPERATOR, ADMIN}),
    f"{_PREFIX}Curation/RemoveEntry": frozenset({OPERATOR, ADMIN}),
    f"{_PREFIX}Curation/FindEntries": frozenset({OPERATOR, ADMIN}),
    f"{_PREFIX}Curation/GetStats": frozenset({OPERATOR, AUDITOR, ADMIN}),
    f"{_PREFIX}Curation/BulkLoad": frozenset({OPERATOR, ADMIN}),
    f"{_PREFIX}Curation/ExportEntries": frozenset({OPERATOR, ADMIN}),
    f"{_PREFIX}Curation/ReleaseEntry": frozenset({OPERATOR, ADMIN}),
    f"{_PREFIX}Review/ListReviewItems": frozenset({REVIEWER, ADMIN}),
    f"{_PREFIX}Review/ClaimReviewItem": frozenset({REVIEWER, ADMIN}),
    f"{_PREFIX}Review/ResolveReviewItem": frozenset({REVIEWER, ADMIN}),
    f"{_PREFIX}Audit/QueryHistory": frozenset({AUDITOR, ADMIN}),
    f"{_PREFIX}Audit/ExportHistory": frozenset({AUDITOR, ADMIN}),
    f"{_PREFIX}Audit/VerifyHistory": frozenset({AUDITOR, ADMIN}),
    f"{_PREFIX}Retro/StartRetroRun": frozenset({OPERATOR, ADMIN}),
    f"{_PREFIX}Retro/ListRetroRuns": frozenset({OPERATOR, AUDITOR, ADMIN}),
    f"{_PREFIX}Retro/PruneHistory": frozenset({ADMIN}),
    f"{_PREFIX}Admin/CreateToken": frozenset({ADMIN}),
    f"{_PREFIX}Admin/ListTokens": frozenset({ADMIN}),
    f"{_PREFIX}Admin/RevokeToken": frozenset({ADMIN}),
    f"{_PREFIX}Events/Subscribe": frozenset({AUDITOR, SUBSCRIBER, ADMIN}),
    f"{_PREFIX}Events/ListEvents": frozenset({AUDITOR, SUBSCRIBER, ADMIN}),
    f"{_PREFIX}Exchange/AddFeed": frozenset({OPERATOR, ADMIN}),
    f"{_PREFIX}Exchange/ListFeeds": frozenset({OPERATOR, ADMIN}),
    f"{_PREFIX}Exchange/GetFeed": frozenset({OPERATOR, ADMIN}),
    f"{_PREFIX}Exchange/SetFeedEnabled": frozenset({OPERATOR, ADMIN}),
    f"{_PREFIX}Exchange/RemoveFeed": frozenset({OPERATOR, ADMIN}),
    f"{_PREFIX}Exchange/FetchFeed": frozenset({OPERATOR, ADMIN}),
    f"{_PREFIX}Exchange/SendFeedback": frozenset({OPERATOR, REVIEWER, ADMIN}),
}

# Calls whose every item counts against the rate limit, not the call itself:
# a batch of 1,500 Matches counted as one request ran at 800/s past a limit of 5/s.
RATE_LIMITED_PER_ITEM = frozenset({f"{_PREFIX}Matcher/MatchBatch"})

# Probes and tooling that must work without a token: they reveal nothing.
PUBLIC_SERVICES = ("/grpc.health.v1.Health/", "/grpc.reflection.")

_TOKEN_PREFIX = "hsv_"
_DEFAULT_NAME_TRIES = 8
SYSTEM_ACTOR = "hashsvc"  # hashsvc.core.audit.SYSTEM_ACTOR (auth imports no use case)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return _TOKEN_PREFIX + secrets.token_urlsafe(32)


def create_token(
    store: TokenStore, role: str, name: str, expires_in_seconds: int = 0
) -> tuple[TokenRecord, str]:
    """A new token; expires_in_seconds > 0 makes it stop working after that."""
    if expires_in_seconds < 0:
        raise InvalidArgument("expiry must be in the future")
    if role not in ROLES:
        raise InvalidArgument(f"unknown role {role!r} (roles: {', '.join(ROLES)})")
    name = name.strip()
    if len(name) > 128:
        raise InvalidArgument("token name is longer than 128 characters")
    if name == SYSTEM_ACTOR:
        # the server's own history records (checkpoints, quarantine) carry it
        raise InvalidArgument(f"token name {name!r} is reserved for the server")
    token = new_token()
    expires_at = (
        datetime.now(UTC) + timedelta(seconds=expires_in_seconds) if expires_in_seconds else None
    )
    if name:  # unique among unrevoked tokens: the store says ALREADY_EXISTS
        return store.add_token(name, role, hash_token(token), expires_at), token
    # No name: ROLE-XXXXXX (24 random bits), not the role alone, which every
    # nameless token of a role shared, so the history could not tell two
    # reviewers apart. A taken name is drawn again.
    for _ in range(_DEFAULT_NAME_TRIES):
        try:
            default = f"{role}-{secrets.token_hex(3)}"
            return store.add_token(default, role, hash_token(token), expires_at), token
        except AlreadyExists:
            continue
    raise AlreadyExists("no free default token name: give one with --name")


def authenticate(store: TokenStore, token: str | None) -> TokenRecord:
    if not token:
        # One message for both APIs: gRPC callers send it as metadata, HTTP
        # callers as a header of the same name.
        raise Unauthenticated("missing token: send 'authorization: Bearer <token>'")
    record = store.find_token(hash_token(token))
    if record is None:
        raise Unauthenticated("unknown token")
    if record.revoked_at is not None:
        raise Unauthenticated("token revoked")
    if record.expires_at is not None and record.expires_at <= datetime.now(UTC):
        raise Unauthenticated("token expired")
    return record


def authorize(record: TokenRecord, method: str) -> None:
    allowed = RPC_ROLES.get(method)
    if allowed is None or record.role not in allowed:
        raise PermissionDenied(f"role {record.role!r} may not call {method.rsplit('/', 1)[-1]}")


def token_from_metadata(metadata) -> str | None:
    for key, value in metadata or ():
        if key == "authorization":
            scheme, _, token = value.partition(" ")
            return token.strip() if scheme.lower() == "bearer" else value.strip()
        if key == "x-hashsvc-token":
            return value.strip()
    return None


class RateLimiter:
    """A token bucket per API token, so one pipeline cannot starve the others.
    Per replica: N replicas behind a balancer allow up to N times the rate."""

    def __init__(self, per_second: float, burst: int = 0) -> None:
        self.per_second = per_second
        self.burst = float(burst or max(1, int(per_second)))
        self._buckets: dict[int, tuple[float, float]] = {}  # token id -> (tokens, time)
        self._lock = threading.Lock()

    def check(self, record: TokenRecord) -> None:
        if self.per_second <= 0:
            return
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(record.id, (self.burst, now))
            tokens = min(self.burst, tokens + (now - last) * self.per_second)
            if tokens < 1:
                self._buckets[record.id] = (tokens, now)
                raise TooLarge(
                    f"rate limit of {self.per_second:g} requests/s for token {record.name!r}"
                    " exceeded; retry later"
                )
            self._buckets[record.id] = (tokens - 1, now)
