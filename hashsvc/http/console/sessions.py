"""Console sessions: a server-side table of random session ids (the cookie
holds only the id), each bound to the token it was opened with and to its
own CSRF token. The token's record is looked up again on every request, so a
revoked or expired token ends its sessions at once."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field


@dataclass
class Session:
    token_hash: str  # SHA-256 of the API token (as the store keeps it)
    csrf: str
    created: float
    seen: float
    # review filters and the like the pages carry from one request to the next
    data: dict = field(default_factory=dict)


class SessionTable:
    """At most max_sessions sessions (the least recently used goes first);
    a session ends after idle_seconds without a request or max_seconds after
    sign-in, whichever comes first."""

    def __init__(self, idle_seconds: float, max_seconds: float, max_sessions: int) -> None:
        self.idle_seconds = idle_seconds
        self.max_seconds = max_seconds
        self.max_sessions = max_sessions
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self._lock = threading.Lock()

    def open(self, token_hash: str) -> tuple[str, Session]:
        session_id = secrets.token_urlsafe(32)
        now = time.monotonic()
        session = Session(token_hash, secrets.token_urlsafe(32), now, now)
        with self._lock:
            self._sessions[_key(session_id)] = session
            while len(self._sessions) > self.max_sessions:
                self._sessions.popitem(last=False)
        return session_id, session

    def get(self, session_id: str | None) -> Session | None:
        if not session_id or len(session_id) > 100:
            return None
        now = time.monotonic()
        key = _key(session_id)
        with self._lock:
            session = self._sessions.get(key)
            if session is None:
                return None
            if now - session.seen > self.idle_seconds or now - session.created > self.max_seconds:
                del self._sessions[key]
                return None
            session.seen = now
            self._sessions.move_to_end(key)
            return session

    def close(self, session_id: str | None) -> None:
        if session_id:
            with self._lock:
                self._sessions.pop(_key(session_id), None)


def _key(session_id: str) -> str:
    # the table holds hashes: a memory dump does not hand out live sessions
    return hashlib.sha256(session_id.encode()).hexdigest()


def csrf_ok(session: Session, sent: str | None) -> bool:
    return bool(sent) and hmac.compare_digest(session.csrf.encode(), str(sent).encode())
