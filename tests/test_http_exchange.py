"""Partner feeds over the HTTP/JSON API against a real `hashsvc serve
--http-listen` process (issues 21 and 22): add a file feed, fetch it, its
status with counts; credentials never in an answer, the history or the log;
roles; bad input as JSON errors; a long fetch answered 202 and polled. And
what a fetch that changed its set sets off: one feed.updated event (none for
a fetch that changed nothing) and a retro-hunt (trigger "feed") that puts an
upload allowed before the feed brought its hash into review."""

from __future__ import annotations

import hashlib
import secrets
import time
from pathlib import Path

import pytest

from hashsvc.client.commands.exchange import _feed_row, feed_status
from hashsvc.v1 import hashsvc_pb2 as pb
from hashsvc_testing.exchange_servers import TcapServer
from hashsvc_testing.http_server import HttpServerProcess
from hashsvc_testing.image_media import encode, photo

EXCHANGE = """
[exchange]
background = false
min_every_seconds = 1
http_timeout_seconds = 5.0
http_retries = 0
"""
# the CLI's `exchange status --json` and `exchange list --json` objects: the
# HTTP answers carry the same fields
STATUS_FIELDS = set(feed_status(pb.Feed()))
FEED_FIELDS = set(_feed_row(pb.Feed()))


@pytest.fixture(scope="module")
def server(module_store_url, tmp_path_factory):
    """One server per store, the retro-hunt polling often; stopped at the module's end."""
    d = tmp_path_factory.mktemp("http-exchange")
    # file feeds read the tests' own directories (all under pytest's base)
    files = f'file_dir = "{tmp_path_factory.getbasetemp()}"\n'
    proc = HttpServerProcess(
        module_store_url, d / "server.log", "retro_poll_seconds = 0.2\n" + EXCHANGE + files
    )
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The only directory file feeds may read on the SQLite-only server."""
    return tmp_path_factory.mktemp("feed-files")


@pytest.fixture(scope="module")
def sqlite_server(tmp_path_factory, files):
    """Fetches answered 202 at once (http_fetch_wait_seconds = 0), file feeds
    only under `files`: the bad-input, role and polling tests."""
    d = tmp_path_factory.mktemp("http-exchange-sqlite")
    config = f'http_fetch_wait_seconds = 0\n{EXCHANGE}file_dir = "{files}"\n'
    proc = HttpServerProcess(f"sqlite:///{d}/db.sqlite", d / "server.log", config)
    yield proc
    proc.stop()


def _error(resp, status: int, code: str) -> dict:
    assert resp.status_code == status, (resp.status_code, resp.text[:500])
    error = resp.json()["error"]
    assert error["code"] == code and error["message"], error
    return error


def _events(server, feed: str) -> list[dict]:
    with server.client("auditor") as auditor:
        resp = auditor.get("/v1/events", params={"page_size": 1000})
        assert resp.status_code == 200, resp.text
        return [
            e for e in resp.json()["events"]
            if e["type"] == "feed.updated" and e["source"] == f"exchange:{feed}"
        ]  # fmt: skip


def _runs_after(client, run_id: int) -> list[dict]:
    return [r for r in client.get("/v1/retro/runs").json()["runs"] if r["id"] > run_id]


def _wait_fetch(client, name: str, seconds: float = 60) -> dict:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        resp = client.get(f"/v1/exchange/feeds/{name}/fetch")
        assert resp.status_code == 200, resp.text
        if resp.json()["state"] != "running":
            return resp.json()
        time.sleep(0.1)
    raise AssertionError(f"the fetch of {name} did not end within {seconds} s")


# -- the main path, on both stores


def test_file_feed_added_fetched_and_shown(server, tmp_path):
    kept, dropped = secrets.token_hex(32), secrets.token_hex(32)
    path = tmp_path / "list.txt"
    path.write_text(f"pdq {kept}\npdq {dropped}\nurl https://example.org/x\n")
    with server.client("operator") as op:
        assert op.post("/v1/sets", json={"name": "partners"}).status_code == 201
        added = op.post(
            "/v1/exchange/feeds",
            json={"name": "local-list", "api": "file", "set": "partners",
                  "labels": {"partner": "gifct"}, "options": {"path": str(path)},
                  "every_seconds": 60},
        )  # fmt: skip
        assert added.status_code == 201, added.text
        feed = added.json()
        assert STATUS_FIELDS <= FEED_FIELDS == set(feed)
        assert (feed["name"], feed["api"], feed["set"], feed["enabled"]) == (
            "local-list", "file", "partners", True,
        )  # fmt: skip
        assert feed["labels"] == {"partner": "gifct"} and feed["every_seconds"] == 60
        assert feed["has_credentials"] is False and feed["last_fetch"] is None

        fetched = op.post("/v1/exchange/feeds/local-list/fetch", json={})
        assert fetched.status_code == 200, fetched.text  # a small file: within the wait
        result = fetched.json()
        assert result["state"] == "done" and result["error"] is None
        assert (result["added"], result["skipped"], result["deleted"]) == (2, 1, 0)
        assert op.get("/v1/exchange/feeds/local-list/fetch").json() == result

        [status] = op.get("/v1/exchange/feeds").json()["feeds"]
        assert set(status) == FEED_FIELDS
        assert status["result"] == "ok" and status["error"] is None
        assert (status["added"], status["skipped"], status["items"]) == (2, 1, 2)
        assert status["last_fetch"] and status["next_run"]
        shown = op.get("/v1/exchange/feeds/local-list").json()
        assert set(shown) == FEED_FIELDS | {"feedback"}
        assert shown["feedback"] == [] and shown["added"] == 2
    with server.client("matcher") as matcher:
        answer = matcher.post("/v1/match", json={"signal": {"signal_type": "pdq", "value": kept}})
        assert answer.json()["decision"] == "block"
        assert answer.json()["matches"][0]["entry"] == f"local-list:pdq:{kept}"

    with server.client("reviewer") as reviewer:  # a verdict back to the source, queued
        sent = reviewer.post(
            "/v1/exchange/feeds/local-list/feedback",
            json={"entry": f"local-list:pdq:{kept}", "verdict": "confirmed"},
        )
        assert sent.status_code == 201, sent.text
        assert (sent.json()["verdict"], sent.json()["state"]) == ("confirmed", "queued")
    with server.client("operator") as op:
        [item] = op.get("/v1/exchange/feeds/local-list").json()["feedback"]
        assert item["entry"] == f"local-list:pdq:{kept}" and item["id"] == sent.json()["id"]
        path.write_text(f"pdq {kept}\n")  # the partner dropped one
        result = op.post("/v1/exchange/feeds/local-list/fetch", json={}).json()
        assert (result["added"], result["deleted"]) == (0, 1)
        disabled = op.patch("/v1/exchange/feeds/local-list", json={"enabled": False})
        assert disabled.status_code == 200 and disabled.json()["enabled"] is False
        removed = op.delete("/v1/exchange/feeds/local-list")
        assert removed.status_code == 200 and removed.json()["name"] == "local-list"
        _error(op.get("/v1/exchange/feeds/local-list"), 404, "NOT_FOUND")
        # its entries stay in the set
        entries = op.get("/v1/sets/partners/entries").json()["entries"]
        assert [e["entry"] for e in entries] == [f"local-list:pdq:{kept}"]
    with server.client("auditor") as auditor:
        actions = [r["rpc"] for r in auditor.get("/v1/history").json()["records"]]
        for action in ("ExchangeAdd", "ExchangeFetch", "ExchangeDisable", "ExchangeRemove"):
            assert action in actions


def test_fetch_that_changes_the_set_tells_the_platform_and_hunts_back(server, tmp_path):
    """An upload let through before the feed knew its hash: the fetch that
    brings the hash emits one feed.updated event and queues a retro-hunt
    (trigger "feed") that puts the upload in review (source "retro"); a
    fetch that changes nothing emits nothing."""
    upload = encode(photo(11))
    with server.client("matcher") as matcher:
        allowed = matcher.post("/v1/match", content=upload, params={"client_ref": "post-11"})
        assert allowed.status_code == 200 and allowed.json()["decision"] == "allow"
    path = tmp_path / "list.txt"
    path.write_text(f"video_md5 {hashlib.md5(upload).hexdigest()}\n")
    with server.client("operator") as op:
        assert op.post("/v1/sets", json={"name": "gifct"}).status_code == 201
        op.post(
            "/v1/exchange/feeds",
            json={"name": "gifct-md5", "api": "file", "set": "gifct",
                  "options": {"path": str(path)}, "every_seconds": 60},
        ).raise_for_status()  # fmt: skip
        before = max([r["id"] for r in op.get("/v1/retro/runs").json()["runs"]], default=0)
        assert op.post("/v1/exchange/feeds/gifct-md5/fetch", json={}).json()["added"] == 1
        [event] = _events(server, "gifct-md5")
        assert event["set"] == "gifct" and event["status"] == "OK"
        assert event["counts"]["added"] == 1 and event["counts"]["deleted"] == 0

        # the retro-hunt the fetch queued
        deadline = time.monotonic() + 60
        runs = []
        while time.monotonic() < deadline:
            runs = _runs_after(op, before)
            if runs and all(r["state"] not in ("queued", "running") for r in runs):
                break
            time.sleep(0.2)
        assert len(runs) == 1 and runs[0]["state"] == "done", runs
        assert runs[0]["trigger"] == "feed" and runs[0]["entries"] == 1
        assert runs[0]["hits"] == 1, runs

        # a fetch with nothing new: no event, no run
        assert op.post("/v1/exchange/feeds/gifct-md5/fetch", json={}).json()["added"] == 0
        assert len(_events(server, "gifct-md5")) == 1
        assert len(_runs_after(op, before)) == 1
    with server.client("reviewer") as reviewer:
        items = reviewer.get("/v1/review/items").json()["items"]
        found = [i for i in items if i["source"] == "retro" and i["client_ref"] == "post-11"]
        assert len(found) == 1, items
        assert found[0]["request_id"] == allowed.json()["request_id"]
        assert found[0]["matches"][0]["entry"].startswith("gifct-md5:")


def test_credentials_are_write_only_over_http(server):
    secret = "do-not-show-" + secrets.token_hex(8)
    with TcapServer(password=secret) as tcap, server.client("operator") as op:
        tcap.add(secrets.token_hex(32))
        op.post("/v1/sets", json={"name": "tcap-set"})
        added = op.post(
            "/v1/exchange/feeds",
            json={"name": "tcap", "api": "tcap", "set": "tcap-set", "credentials": f"user:{secret}",
                  "options": {"base_url": tcap.url}},
        )  # fmt: skip
        assert added.status_code == 201, added.text
        assert added.json()["has_credentials"] is True
        answers = [added, op.post("/v1/exchange/feeds/tcap/fetch", json={})]
        assert answers[-1].json()["added"] == 1, answers[-1].text
        tcap.password = "rotated"  # ours is now refused: the error must not quote it
        tcap.add(secrets.token_hex(32))
        refused = op.post("/v1/exchange/feeds/tcap/fetch", json={})
        assert "credentials refused" in _error(refused, 409, "FAILED_PRECONDITION")["message"]
        answers += [
            refused,
            op.get("/v1/exchange/feeds/tcap/fetch"),
            op.get("/v1/exchange/feeds"),
            op.get("/v1/exchange/feeds/tcap"),
            # malformed credentials are refused without being echoed
            op.post(
                "/v1/exchange/feeds",
                json={
                    "name": "bad",
                    "api": "tcap",
                    "set": "tcap-set",
                    "credentials": f"no-colon-{secret}",
                },
            ),  # fmt: skip
        ]
        _error(answers[-1], 400, "INVALID_ARGUMENT")
    with server.client("auditor") as auditor:
        answers += [
            auditor.get("/v1/history", params={"page_size": 1000}),
            auditor.get("/v1/history/export"),
            auditor.get("/v1/events", params={"page_size": 1000}),
        ]
    for resp in answers:
        assert resp.status_code != 500 and secret not in resp.text, resp.text[:300]
    assert "ExchangeAdd" in answers[-3].text
    assert secret not in Path(server.log.name).read_text(errors="replace")


# -- roles, bad input and polling (one store)


def test_roles(sqlite_server, files):
    path = files / "roles.txt"
    path.write_text(f"pdq {secrets.token_hex(32)}\n")
    with sqlite_server.client("operator") as op:
        op.post("/v1/sets", json={"name": "s"})
        body = {"name": "f", "api": "file", "set": "s", "options": {"path": str(path)}}
        assert op.post("/v1/exchange/feeds", json=body).status_code == 201
    for role in ("matcher", "reviewer", "auditor", "subscriber"):
        with sqlite_server.client(role) as client:
            for method, url in (
                ("POST", "/v1/exchange/feeds"),
                ("GET", "/v1/exchange/feeds"),
                ("GET", "/v1/exchange/feeds/f"),
                ("PATCH", "/v1/exchange/feeds/f"),
                ("DELETE", "/v1/exchange/feeds/f"),
                ("POST", "/v1/exchange/feeds/f/fetch"),
            ):
                _error(client.request(method, url, json={}), 403, "PERMISSION_DENIED")
    with sqlite_server.client() as nobody:
        _error(nobody.get("/v1/exchange/feeds"), 401, "UNAUTHENTICATED")
    # reviewers send verdicts back (as over gRPC): a feed entry that is not there is 404
    with sqlite_server.client("reviewer") as reviewer:
        sent = reviewer.post(
            "/v1/exchange/feeds/f/feedback", json={"entry": "f:nope", "verdict": "confirmed"}
        )
        _error(sent, 404, "NOT_FOUND")


def test_bad_input_is_a_json_error(sqlite_server, files, tmp_path):
    inside = files / "bad.txt"
    inside.write_text(f"pdq {secrets.token_hex(32)}\n")
    outside = tmp_path / "outside.txt"
    outside.write_text(f"pdq {secrets.token_hex(32)}\n")
    good = {"name": "ok", "api": "file", "set": "bad-input", "options": {"path": str(inside)}}
    with sqlite_server.client("operator") as op:
        op.post("/v1/sets", json={"name": "bad-input"})
        op.post("/v1/sets", json={"name": "benign", "allow_list": True})
        cases = [
            ({**good, "name": "../x"}, 400, "INVALID_ARGUMENT"),
            ({**good, "name": 7}, 400, "INVALID_ARGUMENT"),
            ({**good, "api": "gopher"}, 400, "INVALID_ARGUMENT"),
            ({**good, "labels": {"k": 1}}, 400, "INVALID_ARGUMENT"),
            ({**good, "options": {"path": str(inside), "privacy_group": "1"}}, 400,
             "INVALID_ARGUMENT"),
            ({**good, "options": {"path": str(outside)}}, 400, "INVALID_ARGUMENT"),
            ({**good, "options": []}, 400, "INVALID_ARGUMENT"),
            ({**good, "every_seconds": "60"}, 400, "INVALID_ARGUMENT"),
            ({**good, "every_seconds": -5}, 400, "INVALID_ARGUMENT"),
            ({**good, "credentials": "x" * 5000}, 400, "INVALID_ARGUMENT"),
            ({**good, "set": "no-such-set"}, 404, "NOT_FOUND"),
            # a partner must not decide what is let through
            ({**good, "set": "benign"}, 409, "FAILED_PRECONDITION"),
        ]  # fmt: skip
        for body, status, code in cases:
            _error(op.post("/v1/exchange/feeds", json=body), status, code)
        assert op.post("/v1/exchange/feeds", json=good).status_code == 201
        _error(op.post("/v1/exchange/feeds", json=good), 409, "ALREADY_EXISTS")
        _error(op.post("/v1/exchange/feeds", content=b"{not json"), 400, "INVALID_ARGUMENT")
        _error(op.post("/v1/exchange/feeds", json=[1]), 400, "INVALID_ARGUMENT")
        _error(op.patch("/v1/exchange/feeds/ok", json={}), 400, "INVALID_ARGUMENT")
        _error(op.patch("/v1/exchange/feeds/ok", json={"enabled": "yes"}), 400, "INVALID_ARGUMENT")
        _error(op.post("/v1/exchange/feeds/ok/fetch", json={"full": 1}), 400, "INVALID_ARGUMENT")
        _error(op.post("/v1/exchange/feeds/nope/fetch", json={}), 404, "NOT_FOUND")
        _error(op.get("/v1/exchange/feeds/ok/fetch"), 404, "NOT_FOUND")  # none started yet
        _error(op.get("/v1/exchange/feeds/nope"), 404, "NOT_FOUND")
        _error(op.delete("/v1/exchange/feeds/nope"), 404, "NOT_FOUND")
        _error(
            op.post("/v1/exchange/feeds/ok/feedback", json={"entry": "x", "verdict": "maybe"}),
            400, "INVALID_ARGUMENT",
        )  # fmt: skip
        _error(op.put("/v1/exchange/feeds/ok", json={}), 405, "UNIMPLEMENTED")


def test_long_fetch_answers_202_and_is_polled(sqlite_server):
    """http_fetch_wait_seconds = 0: the fetch goes on after its 202; a second
    start while it runs is refused; GET .../fetch follows it to its end."""
    with TcapServer(page_size=1) as tcap, sqlite_server.client("operator") as op:
        for _ in range(3):
            tcap.add(secrets.token_hex(32))
        tcap.delay = 0.5  # each page: the fetch takes 1.5 s or more
        op.post("/v1/sets", json={"name": "slow"})
        op.post(
            "/v1/exchange/feeds",
            json={"name": "slow", "api": "tcap", "set": "slow", "credentials": "user:secret-pass",
                  "options": {"base_url": tcap.url}},
        ).raise_for_status()  # fmt: skip
        started = op.post("/v1/exchange/feeds/slow/fetch", json={})
        assert started.status_code == 202, started.text
        assert started.json()["state"] == "running"
        again = op.post("/v1/exchange/feeds/slow/fetch", json={})
        assert "being fetched" in _error(again, 409, "FAILED_PRECONDITION")["message"]
        done = _wait_fetch(op, "slow")
        assert done["state"] == "done" and done["added"] == 3 and done["pages"] >= 3, done
        status = op.get("/v1/exchange/feeds/slow").json()
        assert status["added"] == 3 and status["result"] == "ok"
