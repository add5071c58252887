"""Local HTTP servers (127.0.0.1, a thread each) that speak the exchange APIs
the way python-threatexchange's clients call them, for tests and
bench/exchange.py:

- TcapServer: Tech Against Terrorism's hash list (TATHashListAPI): POST
  token-auth/tcap/ (form username, password) -> {"token"}; GET
  api/hash-list/v2/all?<next>&order=asc&after=<checkpoint> with a Bearer token
  -> {count, next, previous, checkpoint, results}, `checkpoint` being
  "updated_on,id" of the page's last row and `next` the query of the next page.
- ThreatExchangeServer: the Graph API's /<privacy group>/threat_updates/
  (access_token, start_time, limit, fields) -> {data, paging.next}, and POST
  /<descriptor id>/?access_token=..&reactions=.. -> {"success": true}.

Both can answer 500, hang, or wait between pages (`delay`), and count requests.
"""

from __future__ import annotations

import bisect
import json
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class TcapRecord:
    hash_digest: str
    algorithm: str = "PDQ"
    ideology: str = "islamist"
    file_type: str = "jpg"
    deleted: bool = False
    updated_on: float = 0.0
    id: int = 0
    created_on: str = "2024-01-01T00:00:00Z"


@dataclass
class TeUpdate:
    indicator: str
    type: str = "HASH_PDQ"
    tags: list[str] = field(default_factory=list)
    descriptor_id: int = 0
    owner_id: int = 1000000001
    should_delete: bool = False
    last_updated: int = 0
    id: int = 0


class _Server:
    """The HTTP plumbing shared by both fakes."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.fail_status = 0  # answer every call with this status (500, 401, ...)
        self.fail_posts = 0  # this many POSTs fail with 500 (feedback retried)
        self.hang_seconds = 0.0  # sleep this long before answering
        self.delay = 0.0  # seconds before each page (kill -9 mid-fetch)
        # answers sent without Content-Length, the connection closed at their
        # end (the client cannot know a body's size before reading it)
        self.omit_length = False
        self.page_requests = 0
        self.requests = 0  # every call, answered or not
        self.stop_event = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                outer._handle(self, "GET")

            def do_POST(self) -> None:
                outer._handle(self, "POST")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/"

    def close(self) -> None:
        self.stop_event.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _handle(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        with self.lock:
            self.requests += 1
        if self.hang_seconds:
            self.stop_event.wait(self.hang_seconds)
        if self.fail_status:
            return _send(handler, self.fail_status, {"error": "failing on purpose"})
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length).decode() if length else ""
        parsed = urllib.parse.urlsplit(handler.path)
        query = dict(urllib.parse.parse_qsl(parsed.query, keep_blank_values=True))
        form = dict(urllib.parse.parse_qsl(body, keep_blank_values=True))
        status, answer = self.route(method, parsed.path, query, form, handler.headers)
        send_body(
            handler, status, "application/json", json.dumps(answer).encode(), not self.omit_length
        )

    def route(self, method, path, query, form, headers):
        raise NotImplementedError


def _send(handler: BaseHTTPRequestHandler, status: int, answer) -> None:
    send_body(handler, status, "application/json", json.dumps(answer).encode())


def send_body(
    handler: BaseHTTPRequestHandler,
    status: int,
    content_type: str,
    data: bytes,
    declare_length: bool = True,
) -> None:
    try:
        handler.send_response(status)
        handler.send_header("Content-Type", content_type)
        if declare_length:
            handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)
    except OSError:  # the client gave up (a timeout test)
        pass


class TcapServer(_Server):
    def __init__(self, username="user", password="secret-pass", page_size=100) -> None:
        self.username, self.password = username, password
        self.page_size = page_size
        self.records: list[TcapRecord] = []
        self.tokens: set[str] = set()
        # pages a token is good for before the server answers 401 (its
        # token expired mid-fetch); 0: tokens never expire
        self.token_pages = 0
        self.expired: set[str] = set()
        self._token_served: dict[str, int] = {}
        self._clock = 1_700_000_000.0
        self._next_id = 0
        self.by_digest: dict[str, TcapRecord] = {}
        super().__init__()

    def add(self, digest: str, **kw) -> TcapRecord:
        """A new or changed row: its updated_on moves past every other, so
        the rows stay in (updated_on, id) order."""
        with self.lock:
            self._clock += 1
            old = self.by_digest.get(digest)
            if old is not None:
                self.records.remove(old)
                kw.setdefault("id", old.id)
            if "id" not in kw:
                self._next_id += 1
                kw["id"] = self._next_id
            record = TcapRecord(digest, updated_on=self._clock, **kw)
            self.records.append(record)
            self.by_digest[digest] = record
            return record

    def delete(self, digest: str) -> None:
        old = self.by_digest[digest]
        self.add(
            digest,
            algorithm=old.algorithm,
            ideology=old.ideology,
            file_type=old.file_type,
            deleted=True,
        )

    def route(self, method, path, query, form, headers):
        if method == "POST" and path == "/token-auth/tcap/":
            if form.get("username") != self.username or form.get("password") != self.password:
                return 400, {"non_field_errors": ["Unable to log in with provided credentials."]}
            token = f"tok-{len(self.tokens)}"
            self.tokens.add(token)
            return 200, {"token": token}
        if method == "GET" and path == "/api/hash-list/v2/all":
            bearer = headers.get("Authorization", "").removeprefix("Bearer ")
            if bearer not in self.tokens:
                return 401, {"detail": "Authentication credentials were not provided."}
            with self.lock:
                if bearer in self.expired:
                    return 401, {"detail": "Given token not valid for any token type"}
            if self.delay:
                self.stop_event.wait(self.delay)
            with self.lock:
                self.page_requests += 1
                served = self._token_served[bearer] = self._token_served.get(bearer, 0) + 1
                if self.token_pages and served >= self.token_pages:
                    self.expired.add(bearer)
                return 200, self._page(query)
        return 404, {"detail": "not found"}

    def _page(self, query) -> dict:
        after = query.get("after", "")
        after_key = (float(after.split(",")[0]), int(after.split(",")[1])) if after else None
        rows = self.records  # in (updated_on, id) order: see add()
        first = 0
        if after_key is not None:
            first = bisect.bisect_right(rows, after_key, key=lambda r: (r.updated_on, r.id))
        offset = int(query.get("offset") or 0)
        limit = int(query.get("limit") or self.page_size)
        page = rows[first + offset : first + offset + limit]
        more = first + offset + limit < len(rows)
        return {
            "count": len(rows) - first,
            "next": f"offset={offset + limit}&limit={limit}" if more else None,
            "previous": None,
            "checkpoint": f"{page[-1].updated_on},{page[-1].id}" if page else after,
            "results": [
                {
                    "hash_digest": r.hash_digest,
                    "algorithm": r.algorithm,
                    "ideology": r.ideology,
                    "file_type": r.file_type,
                    "deleted": r.deleted,
                    "updated_on": r.updated_on,
                    "created_on": r.created_on,
                    "id": r.id,
                }
                for r in page
            ],
        }


# A token the ThreatExchange client accepts (APPID|SECRET, 8+ digits, 20+ characters)
TE_TOKEN = "1234567890|abcdefghijklmnopqrstuvwxyz"


class ThreatExchangeServer(_Server):
    def __init__(self, token: str = TE_TOKEN, privacy_group: int = 303, page_size=100) -> None:
        self.token = token
        self.privacy_group = privacy_group
        self.page_size = page_size
        self.updates: list[TeUpdate] = []
        self.reactions: list[tuple[int, str]] = []
        self._clock = 1_700_000_000
        super().__init__()

    def add(self, indicator: str, **kw) -> TeUpdate:
        with self.lock:
            self._clock += 1
            self.updates = [u for u in self.updates if u.indicator != indicator]
            kw.setdefault("descriptor_id", 5_000_000 + len(self.updates) + self._clock % 100_000)
            update = TeUpdate(indicator, last_updated=self._clock, id=self._clock, **kw)
            self.updates.append(update)
            return update

    def route(self, method, path, query, form, headers):
        if query.get("access_token") != self.token:
            return 400, {
                "error": {
                    "message": "Invalid OAuth access token.",
                    "type": "OAuthException",
                    "code": 190,
                }
            }
        if method == "GET" and path == f"/{self.privacy_group}/threat_updates/":
            if self.delay:
                self.stop_event.wait(self.delay)
            with self.lock:
                self.page_requests += 1
                return 200, self._page(query)
        if method == "POST" and path.strip("/").isdigit():
            with self.lock:
                if self.fail_posts:
                    self.fail_posts -= 1
                    return 500, {"error": {"message": "try again"}}
                self.reactions.append((int(path.strip("/")), query.get("reactions", "")))
            return 200, {"success": True}
        return 404, {"error": {"message": "unknown path"}}

    def _page(self, query) -> dict:
        start = int(query.get("start_time") or 0)
        rows = sorted(
            (u for u in self.updates if u.last_updated >= start), key=lambda u: u.last_updated
        )
        offset = int(query.get("after") or 0)
        limit = int(query.get("limit") or self.page_size)
        limit = min(limit, self.page_size)
        page = rows[offset : offset + limit]
        answer: dict = {"data": [self._json(u) for u in page]}
        if offset + limit < len(rows):
            next_query = urllib.parse.urlencode(
                {
                    "access_token": self.token,
                    "start_time": start,
                    "limit": limit,
                    "after": offset + limit,
                }
            )
            answer["paging"] = {
                "next": f"{self.url}{self.privacy_group}/threat_updates/?{next_query}"
            }
        return answer

    @staticmethod
    def _json(u: TeUpdate) -> dict:
        out = {
            "id": str(u.id),
            "indicator": u.indicator,
            "type": u.type,
            "last_updated": u.last_updated,
            "should_delete": u.should_delete,
        }
        if not u.should_delete:
            out["descriptors"] = {
                "data": [
                    {
                        "id": str(u.descriptor_id),
                        "owner": {"id": str(u.owner_id)},
                        "status": "MALICIOUS",
                        "tags": u.tags,
                        "reactions": [],
                    }
                ]
            }
        return out


def wait_until(check, timeout: float = 10.0, step: float = 0.05) -> bool:
    """Bounded polling for tests."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(step)
    return bool(check())
