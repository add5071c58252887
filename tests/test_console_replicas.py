"""Console sessions live in the store: two console apps (two replicas, each
its own Core) over one PostgreSQL store serve the same sessions without
sticky sessions. A session signed in on one is used on the other, its CSRF
token and next-page message cross with it, signing out or revoking the token
ends it everywhere at once, expired sessions are deleted, and the store holds
only the session id's hash."""

from __future__ import annotations

import hashlib
import time
from contextlib import ExitStack

import pytest

from hashsvc.core import auth
from hashsvc.core.config import Config, ConsoleSettings
from hashsvc.core.core import Core
from hashsvc_testing.console_server import ConsoleServer, page_csrf, sign_in

COOKIE = "hashsvc_console"


@pytest.fixture
def replicas(pg_url):
    """Two console servers, each on its own Core over the same PostgreSQL schema."""
    limits = ConsoleSettings(session_idle_seconds=2.0, max_sessions=4)
    with ExitStack() as stack:
        servers = []
        for _ in range(2):
            core = Core.open(Config(db_url=pg_url), hash_in_process=True)
            stack.callback(core.close)
            core.start()
            servers.append(stack.enter_context(ConsoleServer(core, limits=limits)))
        yield servers


def _session_rows(core) -> list[tuple[str, int]]:
    with core.store._read() as cur:
        cur.execute("SELECT id_hash, token_id FROM console_sessions ORDER BY created_at")
        return [(row[0], int(row[1])) for row in cur.fetchall()]


def test_a_session_signed_in_on_one_replica_works_on_the_other(replicas):
    one, two = replicas
    token = one.token("operator", "operator-a")
    with one.client() as on_one, two.client() as on_two:
        assert sign_in(on_one, token).status_code == 303
        session_id = on_one.cookies[COOKIE]
        on_two.cookies.set(COOKIE, session_id)
        assert on_two.get("/ui/sets").status_code == 200
        # a form sent to the other replica with the CSRF token from the first
        csrf = page_csrf(on_one, "/ui/sets")
        answer = on_two.post("/ui/sets", data={"csrf_token": csrf, "name": "made-on-two"})
        assert answer.status_code == 303
        assert one.core.curation.get_set("made-on-two").name == "made-on-two"
        # its message is shown by the page that follows, on either replica, once
        assert "set made-on-two created" in on_one.get("/ui/sets/made-on-two").text
        assert "set made-on-two created" not in on_two.get("/ui/sets/made-on-two").text
        # a wrong CSRF token is refused on both
        for client in (on_one, on_two):
            answer = client.post("/ui/sets", data={"csrf_token": "x" * 43, "name": "forged"})
            assert answer.status_code == 403
        # the store holds the id's hash and the token, never the id itself
        record = auth.authenticate(one.core.store, token)
        rows = _session_rows(one.core)
        assert rows == [(hashlib.sha256(session_id.encode()).hexdigest(), record.id)]
        assert all(session_id not in id_hash for id_hash, _ in rows)
        # signing out on one replica ends the session on the other
        answer = on_two.post("/ui/logout", data={"csrf_token": csrf})
        assert answer.status_code == 303
        on_one.cookies.set(COOKIE, session_id)
        assert on_one.get("/ui/sets").status_code == 303
        assert _session_rows(one.core) == []


def test_revoking_the_token_ends_its_sessions_on_every_replica_at_once(replicas):
    one, two = replicas
    token = one.token("auditor", "auditor-a")
    with one.client() as on_one, two.client() as on_two:
        assert sign_in(on_one, token).status_code == 303
        on_two.cookies.set(COOKIE, on_one.cookies[COOKIE])
        assert on_two.get("/ui/history").status_code == 200
        record = auth.authenticate(one.core.store, token)
        one.core.revoke_token("admin-1", record.id)
        for client in (on_two, on_one):
            answer = client.get("/ui/history")
            assert answer.status_code == 303 and answer.headers["location"] == "/ui/login"
        assert _session_rows(one.core) == []  # ended sessions are deleted


def test_idle_and_surplus_sessions_end_and_their_rows_go(replicas):
    one, two = replicas
    token = one.token("reviewer", "reviewer-a")
    with one.client() as idle, two.client() as busy:
        assert sign_in(idle, token).status_code == 303
        assert sign_in(busy, token).status_code == 303
        # idle_seconds is 2: the one used every half second lives on, the other ends
        for _ in range(6):
            time.sleep(0.5)
            assert busy.get("/ui/review").status_code == 200
        assert idle.get("/ui/review").status_code == 303
        assert len(_session_rows(one.core)) == 1
        # a sign-in deletes what has expired; past max_sessions (4) the least
        # recently used sessions end
        time.sleep(2.2)
        clients = [two.client() for _ in range(5)]
        try:
            for client in clients:
                assert sign_in(client, token).status_code == 303
            assert len(_session_rows(one.core)) == 4
            assert busy.get("/ui/review").status_code == 303  # expired, deleted
            assert clients[0].get("/ui/review").status_code == 303  # least recently used
            assert [c.get("/ui/review").status_code for c in clients[1:]] == [200] * 4
        finally:
            for client in clients:
                client.close()
