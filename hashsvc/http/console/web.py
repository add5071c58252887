"""The console's plumbing: who is signed in (session cookie -> token record),
what their role may do (a page needs the RPC it stands for, RPC_ROLES in
hashsvc/core/auth.py), CSRF checks, rendering and error pages."""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlencode

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.concurrency import run_in_threadpool
from starlette.formparsers import MultiPartException
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from hashdb import TokenRecord
from hashsvc.base.errors import HashsvcError, PermissionDenied, status_name
from hashsvc.core import auth
from hashsvc.core.audit import ACTING_TOKEN
from hashsvc.core.config import ConsoleSettings
from hashsvc.core.core import Core
from hashsvc.http.console.sessions import Session, SessionTable, csrf_ok
from hashsvc.http.errors import http_status

log = logging.getLogger(__name__)

COOKIE = "hashsvc_console"
LOGIN_CSRF_COOKIE = "hashsvc_console_login"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"

# The pages of the navigation bar: (path, title, the RPC the page needs).
NAV = (
    ("/", "Dashboard", "Curation/GetStats"),
    ("/review", "Review queue", "Review/ListReviewItems"),
    ("/sets", "Sets", "Curation/ListSets"),
    ("/history", "History", "Audit/QueryHistory"),
)


class Refused(Exception):
    """A request refused before any work: status and message for its page."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Caller:
    record: TokenRecord
    session: Session
    session_id: str

    @property
    def name(self) -> str:
        return self.record.name

    @property
    def identity(self) -> str:
        """NAME#ID, as review claims name their token (hashsvc/api/calls.py)."""
        return f"{self.record.name}#{self.record.id}"

    def may(self, rpc: str) -> bool:
        return may(self.record, rpc)


def may(record: TokenRecord, rpc: str) -> bool:
    try:
        auth.authorize(record, f"/hashsvc.v1.{rpc}")
    except PermissionDenied:
        return False
    return True


class Web:
    def __init__(
        self,
        core: Core,
        *,
        secure_cookies: bool,
        limits: ConsoleSettings,
        preview: Callable[[str, str], str | None],
    ) -> None:
        self.core = core
        self.secure_cookies = secure_cookies
        self.limits = limits
        self.preview = preview
        self.sessions = SessionTable(
            core.store, limits.session_idle_seconds, limits.session_max_seconds, limits.max_sessions
        )
        self.templates = Environment(
            loader=FileSystemLoader(Path(__file__).parent / "templates"),
            autoescape=select_autoescape(default=True, default_for_string=True),
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.templates.globals["now_utc"] = lambda: datetime.now(UTC)

    # -- who calls

    async def caller(self, request: Request) -> Caller | None:
        """The signed-in caller, or None (the token is read in a worker thread:
        the event loop waits on no database)."""
        return await run_in_threadpool(self._caller, request)

    def _caller(self, request: Request) -> Caller | None:
        session_id = request.cookies.get(COOKIE)
        found = self.sessions.get(session_id)
        if found is None:
            return None
        session, record = found
        if not _usable(record):  # revoked or expired since sign-in
            self.sessions.close(session_id)
            return None
        return Caller(record, session, session_id or "")

    async def require(self, request: Request, rpc: str) -> Caller:
        caller = await self.caller(request)
        if caller is None:
            raise Refused(401, "sign in")
        if not caller.may(rpc):
            raise Refused(
                403, f"role {caller.record.role!r} may not use this page ({rpc.split('/')[-1]})"
            )
        return caller

    async def small_form(self, request: Request, caller: Caller):
        """A form without files (an action's), CSRF checked."""
        return await self.form(request, caller, 64 * 1024)

    async def check_csrf(self, request: Request, caller: Caller, form=None) -> None:
        sent = request.headers.get(CSRF_HEADER)
        if sent is None and form is not None:
            sent = form.get(CSRF_FIELD)
        if not csrf_ok(caller.session, sent):
            raise Refused(403, "the form's CSRF token is missing or wrong: reload the page")

    async def form(self, request: Request, caller: Caller, max_bytes: int, max_files: int = 0):
        """The request's form, its size checked before it is read (Content-Length
        is required), and its CSRF token checked (header or field)."""
        length = request.headers.get("content-length", "")
        if not length.isdigit():
            raise Refused(411, "a form must say its Content-Length")
        if int(length) > max_bytes:
            raise Refused(413, f"the form holds {int(length)} bytes; at most {max_bytes}")
        if request.headers.get(CSRF_HEADER) is not None:  # checked before the body is read
            await self.check_csrf(request, caller)
        try:
            form = await request.form(max_files=max_files, max_fields=100)
        except MultiPartException as exc:
            raise Refused(400, f"bad form: {exc}") from None
        await self.check_csrf(request, caller, form)
        return form

    async def call(self, caller: Caller, fn, *args, **kwargs):
        """fn(*args) in a worker thread, as the caller (history records carry
        the caller's token id, as they do for gRPC calls)."""

        def as_caller():
            ACTING_TOKEN.set((caller.record.name, caller.record.id))
            return fn(*args, **kwargs)

        return await run_in_threadpool(contextvars.copy_context().run, as_caller)

    # -- answers

    def url(self, request: Request, path: str, **query) -> str:
        base = request.scope.get("root_path", "")
        shown = {k: v for k, v in query.items() if v not in (None, "")}
        return base + path + (f"?{urlencode(shown)}" if shown else "")

    def render(
        self,
        request: Request,
        template: str,
        caller: Caller | None,
        status: int = 200,
        **context,
    ) -> HTMLResponse:
        flash = caller.session.flash if caller else None
        nav = [
            (self.url(request, path), title)
            for path, title, rpc in NAV
            if caller is not None and caller.may(rpc)
        ]
        html = self.templates.get_template(template).render(
            base=request.scope.get("root_path", ""),
            caller=caller,
            csrf=caller.session.csrf if caller else "",
            nav=nav,
            flash=flash,
            url=lambda path, **q: self.url(request, path, **q),
            **context,
        )
        return HTMLResponse(html, status_code=status)

    async def redirect(
        self,
        request: Request,
        path: str,
        caller: Caller | None = None,
        flash: tuple[str, str] | None = None,
        query: dict | None = None,
    ) -> RedirectResponse:
        """A 303 to path; flash: a message (kind, text) for the next page, kept
        with the session (the next request may reach another replica)."""
        if caller is not None and flash is not None:
            await run_in_threadpool(self.sessions.flash, caller.session, *flash)
        return RedirectResponse(self.url(request, path, **(query or {})), status_code=303)

    async def error_page(self, request: Request, status: int, message: str) -> Response:
        if status == 401:
            return await self.redirect(request, "/login")
        caller = await self.caller(request)
        return self.render(
            request, "error.html", caller, status=status, status_code=status, message=message
        )

    async def core_error(self, request: Request, exc: HashsvcError) -> Response:
        # the same status as the JSON API gives for the error (hashsvc/http/errors.py)
        return await self.error_page(request, http_status(exc), f"{status_name(exc)}: {exc}")


def _usable(record: TokenRecord) -> bool:
    if record.revoked_at is not None:
        return False
    return record.expires_at is None or record.expires_at > datetime.now(UTC)
