"""Console sessions, kept in the store (hashdb/console_sql.py) so that any
replica serves any session: no sticky sessions. The cookie holds a random
session id; the store holds its SHA-256 (database access alone does not hand
out live sessions), the token it was opened with, its own CSRF token, and a
message for the next page. The token's record is read with the session on
every request, so a revoked or expired token ends its sessions at once."""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from hashdb import TokenRecord

# A session's last use is written at most this often (not at every page);
# idle_seconds is exact to within this.
TOUCH_SECONDS = 60.0


@dataclass
class Session:
    id_hash: str
    csrf: str
    # the message a redirect left for this page (taken from the store as it was read)
    flash: tuple[str, str] | None = None


class SessionTable:
    """At most max_sessions sessions (past it the least recently used end);
    a session ends after idle_seconds without a request or max_seconds after
    sign-in, whichever comes first. Calls read or write the store: call them
    from a worker thread."""

    def __init__(self, store, idle_seconds: float, max_seconds: float, max_sessions: int) -> None:
        self.store = store
        self.idle_seconds = idle_seconds
        self.max_seconds = max_seconds
        self.max_sessions = max_sessions
        self.touch_seconds = min(TOUCH_SECONDS, idle_seconds / 10)

    def open(self, token_id: int) -> tuple[str, Session]:
        session_id = secrets.token_urlsafe(32)
        session = Session(_key(session_id), secrets.token_urlsafe(32))
        self.store.open_console_session(
            session.id_hash,
            token_id,
            session.csrf,
            datetime.now(UTC) + timedelta(seconds=self.max_seconds),
            self.idle_seconds,
            self.max_sessions,
        )
        return session_id, session

    def get(self, session_id: str | None) -> tuple[Session, TokenRecord] | None:
        """The live session and its token's record as it is now, or None."""
        if not session_id or len(session_id) > 100:
            return None
        id_hash = _key(session_id)
        found = self.store.console_session(id_hash, self.idle_seconds, self.touch_seconds)
        if found is None:
            return None
        flash = _flash(found.flash)
        return Session(id_hash, found.csrf, flash), found.token

    def flash(self, session: Session, kind: str, message: str) -> None:
        self.store.set_console_flash(session.id_hash, json.dumps([kind, message]))

    def close(self, session_id: str | None) -> None:
        if session_id and len(session_id) <= 100:
            self.store.close_console_session(_key(session_id))


def _key(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


def _flash(stored: str | None) -> tuple[str, str] | None:
    if not stored:
        return None
    try:
        kind, message = json.loads(stored)
        return str(kind), str(message)
    except (ValueError, TypeError):  # not ours: shown as nothing
        return None


def csrf_ok(session: Session, sent: str | None) -> bool:
    return bool(sent) and hmac.compare_digest(session.csrf.encode(), str(sent).encode())
