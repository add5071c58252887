"""Partner feeds (the Exchange RPCs) over HTTP, for operators: add, list,
show, enable or disable, remove, fetch now, and a verdict sent back to the
source. The work is hashsvc/exchange/feeds.py's, as for gRPC and `hashsvc
exchange`; the JSON is that command's --json output. Credentials are
write-only: taken on add, sealed by the feeds, never in an answer (a feed
says `has_credentials` only), never logged or put in the history.

A fetch over HTTP: POST .../fetch starts it on a thread of its own and waits
up to http_fetch_wait_seconds for its end (200 with the result, or the
error); a longer one goes on and is answered 202 with its progress so far,
which GET .../fetch then shows until it ends. One fetch per feed at a time
from this server; the feed's lease keeps other replicas out."""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import anyio
from starlette.responses import JSONResponse, Response

from hashsvc.base.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
    quoted,
)
from hashsvc.exchange.feeds import DEFAULT_EVERY_SECONDS, FetchResult
from hashsvc.http.calls import Call, Endpoint, Fields, Param
from hashsvc.http.errors import error_response
from hashsvc.http.views import feed_json, feedback_json, fetch_json


@dataclass
class FeedFetch:
    """A fetch started over HTTP: its progress, then its result or error."""

    feed: str
    actor: str
    full: bool
    progress: FetchResult
    state: str = "running"  # "running", "done", "failed"
    error: dict | None = None  # {"error": {"code": ..., "message": ...}}
    error_status: int = 0
    started: float = field(default_factory=time.time)
    finished: threading.Event = field(default_factory=threading.Event)

    def json(self) -> dict:
        return {
            **fetch_json(self.progress),
            "state": self.state,
            "full": self.full,
            "started_by": self.actor,
            "error": self.error["error"] if self.error else None,
        }


class FeedFetches:
    """The last fetch of each feed started over HTTP by this server; past
    `kept` records (feeds added and removed again) the oldest finished one
    is forgotten."""

    def __init__(self, feeds, kept: int) -> None:
        self.feeds = feeds  # hashsvc.exchange.feeds.Feeds
        self.kept = kept
        self._lock = threading.Lock()
        self._last: OrderedDict[str, FeedFetch] = OrderedDict()

    def start(self, name: str, actor: str, full: bool) -> FeedFetch:
        self.feeds.get(name)  # NOT_FOUND now, not on the thread
        with self._lock:
            running = self._last.get(name)
            if running is not None and running.state == "running":
                raise FailedPrecondition(
                    f"feed {quoted(name)} is being fetched (started by {running.actor});"
                    " follow it with GET /v1/exchange/feeds/{name}/fetch"
                )
            self._last.pop(name, None)
            fetch = self._last[name] = FeedFetch(name, actor, full, FetchResult(name))
            finished = [k for k, f in self._last.items() if f.state != "running"]
            for key in finished[: max(0, len(self._last) - self.kept)]:
                del self._last[key]
        threading.Thread(
            target=self._run, args=(fetch,), daemon=True, name="exchange-fetch-http"
        ).start()
        return fetch

    def _run(self, fetch: FeedFetch) -> None:
        def progress(result: FetchResult) -> None:
            fetch.progress = FetchResult(**{**vars(result), "seconds": time.time() - fetch.started})

        try:
            fetch.progress = self.feeds.fetch(fetch.feed, fetch.actor, fetch.full, progress)
            fetch.state = "done"
        except BaseException as exc:  # the caller reads it (a bug is logged there)
            fetch.error_status, fetch.error = _error_json(exc)
            fetch.state = "failed"
        finally:
            fetch.finished.set()

    def last(self, name: str) -> FeedFetch:
        self.feeds.get(name)
        fetch = self._last.get(name)
        if fetch is None:
            raise NotFound(f"no fetch of feed {quoted(name)} was started over HTTP here")
        return fetch


def _error_json(exc: BaseException) -> tuple[int, dict]:
    """The error's HTTP status and JSON as the API answers it (a bug:
    INTERNAL, logged, its text kept back)."""
    response = error_response(exc)
    return response.status_code, json.loads(response.body)


def _feeds(call: Call):
    feeds = call.services.feeds
    if feeds is None:  # an HTTP API built without the gRPC server's feeds
        raise Unavailable("partner feeds are not served by this HTTP API")
    return feeds


async def _feed_answer(call: Call, record, status: int = 200, feedback=None) -> Response:
    feeds = _feeds(call)
    set_name = await call.blocking(feeds.set_name, record)
    body = feed_json(record, set_name)
    if feedback is not None:
        body["feedback"] = [feedback_json(f) for f in feedback]
    return JSONResponse(body, status)


async def add_feed(call: Call) -> Response:
    feeds = _feeds(call)
    body = Fields(call, await call.json())
    every = body.int("every_seconds", DEFAULT_EVERY_SECONDS) or DEFAULT_EVERY_SECONDS
    record = await call.blocking(
        feeds.add,
        call.caller.name,
        body.str("name"),
        body.str("api"),
        body.str("set"),
        body.labels(),
        body.labels("options"),
        every,
        body.str("credentials"),
    )
    return await _feed_answer(call, record, 201)


async def list_feeds(call: Call) -> Response:
    feeds = _feeds(call)

    def rows():
        return [feed_json(f, feeds.set_name(f)) for f in feeds.list()]

    return JSONResponse({"feeds": await call.blocking(rows)})


async def get_feed(call: Call) -> Response:
    feeds = _feeds(call)
    name = call.path_str("name")
    record = await call.blocking(feeds.get, name)
    feedback = await call.blocking(feeds.feedback, name)
    return await _feed_answer(call, record, feedback=feedback)


async def set_feed_enabled(call: Call) -> Response:
    feeds = _feeds(call)
    name = call.path_str("name")
    body = Fields(call, await call.json())
    enabled = body.optional_bool("enabled")
    if enabled is None:
        raise InvalidArgument("enabled (true or false) is required", field="enabled")
    record = await call.blocking(feeds.set_enabled, call.caller.name, name, enabled)
    return await _feed_answer(call, record)


async def remove_feed(call: Call) -> Response:
    feeds = _feeds(call)
    record = await call.blocking(feeds.remove, call.caller.name, call.path_str("name"))
    return JSONResponse(feed_json(record, ""))


def _fetches(call: Call) -> FeedFetches:
    _feeds(call)
    return call.services.fetches


async def fetch_feed(call: Call) -> Response:
    fetches = _fetches(call)
    name = call.path_str("name")
    full = Fields(call, await call.json()).bool("full")
    fetch = await call.blocking(fetches.start, name, call.caller.name, full)
    # the wait holds no worker thread: the fetch runs on its own
    # never past a request's own deadline (stream_max_seconds): then 202
    wait = min(call.config.http_fetch_wait_seconds, call.config.stream_max_seconds)
    with anyio.move_on_after(wait):
        while not fetch.finished.is_set():
            await anyio.sleep(0.05)
    if fetch.state == "failed":
        return JSONResponse(fetch.error, fetch.error_status)
    return JSONResponse(fetch.json(), 200 if fetch.state == "done" else 202)


async def get_fetch(call: Call) -> Response:
    fetch = await call.blocking(_fetches(call).last, call.path_str("name"))
    return JSONResponse(fetch.json())


async def send_feedback(call: Call) -> Response:
    feeds = _feeds(call)
    name = call.path_str("name")
    body = Fields(call, await call.json())
    entry = body.str("entry")

    def queue():
        feedback_id = feeds.queue_feedback(call.caller.name, name, entry, body.str("verdict"))
        return [f for f in feeds.feedback(name, entry) if f.id == feedback_id][0]

    return JSONResponse(feedback_json(await call.blocking(queue)), 201)


FEED = Param("name", where="path", required=True, description="the feed's name")
FEED_SCHEMA = {
    "type": "object",
    "required": ["name", "api", "set"],
    "properties": {
        "name": {"type": "string", "description": "1-64 letters, digits, '.', '_' or '-'"},
        "api": {"type": "string", "enum": ["threatexchange", "tcap", "ncmec", "stopncii", "file"]},
        "set": {"type": "string", "description": "the (block) set the feed loads"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "options": {
            "type": "object",
            "additionalProperties": {"type": "string"},
            "description": "the API's options: privacy_group, base_url, environment, path",
        },
        "every_seconds": {"type": "integer", "description": f"0: {DEFAULT_EVERY_SECONDS}"},
        "credentials": {
            "type": "string",
            "writeOnly": True,
            "description": "the API's credentials; never answered, logged or recorded",
        },
    },
}

ENDPOINTS = [
    Endpoint("POST", "/v1/exchange/feeds", "Exchange/AddFeed", add_feed,
             "Add a partner feed (credentials are write-only)", body="json",
             body_schema=FEED_SCHEMA, ok_status=201),
    Endpoint("GET", "/v1/exchange/feeds", "Exchange/ListFeeds", list_feeds,
             "Every feed with its status (as `hashsvc exchange list --json`)"),
    Endpoint("GET", "/v1/exchange/feeds/{name}", "Exchange/GetFeed", get_feed,
             "A feed, its status and the feedback sent to its source", params=(FEED,)),
    Endpoint("PATCH", "/v1/exchange/feeds/{name}", "Exchange/SetFeedEnabled", set_feed_enabled,
             "Enable or disable a feed's fetches", params=(FEED,), body="json",
             body_schema={"type": "object", "required": ["enabled"],
                          "properties": {"enabled": {"type": "boolean"}}}),
    Endpoint("DELETE", "/v1/exchange/feeds/{name}", "Exchange/RemoveFeed", remove_feed,
             "Remove a feed (its entries stay in the set)", params=(FEED,)),
    Endpoint("POST", "/v1/exchange/feeds/{name}/fetch", "Exchange/FetchFeed", fetch_feed,
             "Fetch a feed now: 200 with its result when it ends within"
             " http_fetch_wait_seconds, else 202 with its progress (poll GET .../fetch)",
             params=(FEED,), body="json",
             body_schema={"type": "object", "properties": {"full": {
                 "type": "boolean", "description": "from the start, not the checkpoint"}}}),
    Endpoint("GET", "/v1/exchange/feeds/{name}/fetch", "Exchange/FetchFeed", get_fetch,
             "The progress or result of the feed's last fetch started over HTTP",
             params=(FEED,)),
    Endpoint("POST", "/v1/exchange/feeds/{name}/feedback", "Exchange/SendFeedback",
             send_feedback, "Send a verdict on a feed's entry back to its source (queued)",
             params=(FEED,), body="json", ok_status=201,
             body_schema={"type": "object", "required": ["entry", "verdict"], "properties": {
                 "entry": {"type": "string"},
                 "verdict": {"type": "string", "enum": ["confirmed", "false_positive"]}}}),
]  # fmt: skip
