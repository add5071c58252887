"""The console's Starlette app: sign-in, security headers, error pages, and
the role's pages (review_pages, curation_pages, audit_pages, dashboard)."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterable
from pathlib import Path

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from hashdb import TokenRecord
from hashsvc.base.errors import HashsvcError
from hashsvc.core import auth
from hashsvc.core.config import ConsoleSettings
from hashsvc.core.core import Core
from hashsvc.core.sign_in_limits import SignInLimits
from hashsvc.http.console import audit_pages, curation_pages, dashboard, review_pages
from hashsvc.http.console.links import preview_sources, preview_url
from hashsvc.http.console.web import COOKIE, LOGIN_CSRF_COOKIE, Refused, Web

log = logging.getLogger(__name__)

_STATIC = Path(__file__).parent / "static"


def build_console(
    core: Core,
    *,
    secure_cookies: bool,
    preview_url_template: str | None,
    preview_allowed_hosts: Iterable[str] = (),
    limits: ConsoleSettings | None = None,
    sign_ins: SignInLimits | None = None,
) -> Starlette:
    """The web console as an ASGI app, to be mounted at /ui (it works under
    any prefix: links follow the mount's root_path).

    secure_cookies: the session cookie is Secure (serve the console over TLS).
    preview_url_template: an https URL with `{client_ref}` and/or `{request_id}`
    where reviewers' previews come from; shown only on preview_allowed_hosts
    (the config's `[console]` table has both). limits: the console's limits,
    by default the config's `[console]` table. sign_ins: the failed sign-ins
    per client address, shared with the HTTP API's failed authentications
    (by default the console's own)."""
    allowed = frozenset(h.strip().lower() for h in preview_allowed_hosts if h.strip())
    web = Web(
        core,
        secure_cookies=secure_cookies,
        limits=limits or core.config.console,
        preview=lambda ref, request_id: preview_url(preview_url_template, allowed, ref, request_id),
    )
    csp = "; ".join(
        (
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            f"img-src 'self' {preview_sources(allowed)}".strip(),
            "connect-src 'self'",
            "form-action 'self'",
            "frame-ancestors 'none'",
            "base-uri 'none'",
        )
    )

    async def login_page(request: Request) -> Response:
        login_csrf = secrets.token_urlsafe(32)
        response = web.render(request, "login.html", None, login_csrf=login_csrf, error="")
        _set_cookie(web, request, response, LOGIN_CSRF_COOKIE, login_csrf)
        return response

    sign_ins = sign_ins or SignInLimits(
        web.limits.sign_in_failures_per_minute, web.limits.sign_in_tracked_addresses
    )

    async def login(request: Request) -> Response:
        address = request.client.host if request.client else ""
        wait = sign_ins.retry_after(address)
        if wait:
            response = await web.error_page(
                request,
                429,
                f"too many failed sign-ins from your address: try again in {wait} seconds",
            )
            response.headers["retry-after"] = str(wait)
            return response
        length = request.headers.get("content-length", "")
        if not length.isdigit() or int(length) > 16 * 1024:
            raise Refused(413, "the sign-in form is too large")
        try:
            form = await request.form(max_files=0, max_fields=10)
        except MultiPartException as exc:
            raise Refused(400, f"bad sign-in form: {exc}") from None
        sent, expected = str(form.get("csrf_token", "")), request.cookies.get(LOGIN_CSRF_COOKIE)
        if not expected or not secrets.compare_digest(sent.encode(), expected.encode()):
            raise Refused(403, "the sign-in form's CSRF token is missing or wrong: reload it")
        token = str(form.get("token", "")).strip()

        def sign_in() -> tuple[TokenRecord, str] | None:
            try:
                record = auth.authenticate(core.store, token[:200])
            except HashsvcError:
                return None
            web.sessions.close(request.cookies.get(COOKIE))  # a fresh id at every sign-in
            session_id, _ = web.sessions.open(record.id)
            return record, session_id

        signed_in = await run_in_threadpool(sign_in)
        if signed_in is None:
            sign_ins.failed(address)
            log.warning("console sign-in failed from %s", address)
            login_csrf = secrets.token_urlsafe(32)
            response = web.render(
                request,
                "login.html",
                None,
                status=401,
                login_csrf=login_csrf,
                error="unknown, revoked or expired token",
            )
            _set_cookie(web, request, response, LOGIN_CSRF_COOKIE, login_csrf)
            return response
        record, session_id = signed_in
        response = await web.redirect(request, "/")
        _set_cookie(web, request, response, COOKIE, session_id)
        response.delete_cookie(LOGIN_CSRF_COOKIE, path=_cookie_path(request))
        log.info("console sign-in: %s (%s)", record.name, record.role)
        return response

    async def logout(request: Request) -> Response:
        caller = await web.caller(request)
        if caller is not None:
            await web.small_form(request, caller)
            await run_in_threadpool(web.sessions.close, caller.session_id)
        response = await web.redirect(request, "/login")
        response.delete_cookie(COOKIE, path=_cookie_path(request))
        return response

    async def refused(request: Request, exc: Refused) -> Response:
        return await web.error_page(request, exc.status, str(exc))

    async def core_error(request: Request, exc: HashsvcError) -> Response:
        return await web.core_error(request, exc)

    async def http_error(request: Request, exc: HTTPException) -> Response:
        return await web.error_page(request, exc.status_code, str(exc.detail))

    async def internal(request: Request, exc: Exception) -> Response:
        log.exception("console page %s failed", request.url.path)
        return await web.error_page(request, 500, "internal error (logged on the server)")

    class SecurityHeaders(BaseHTTPMiddleware):
        async def dispatch(self, request: Request, call_next):
            response = await call_next(request)
            response.headers["content-security-policy"] = csp
            response.headers["x-content-type-options"] = "nosniff"
            response.headers["x-frame-options"] = "DENY"
            # a client_ref link must not tell the linked site the console's URLs
            response.headers["referrer-policy"] = "no-referrer"
            if not request.url.path.startswith(request.scope.get("root_path", "") + "/static/"):
                response.headers["cache-control"] = "no-store"
            return response

    app = Starlette(
        routes=[
            Route("/login", login_page, methods=["GET"]),
            Route("/login", login, methods=["POST"]),
            Route("/logout", logout, methods=["POST"]),
            *dashboard.routes(web),
            *review_pages.routes(web),
            *curation_pages.routes(web),
            *audit_pages.routes(web),
            Mount("/static", StaticFiles(directory=_STATIC), name="static"),
        ],
        exception_handlers={
            Refused: refused,
            HashsvcError: core_error,
            HTTPException: http_error,
            Exception: internal,
        },
        middleware=[Middleware(SecurityHeaders)],
    )

    app.state.console = web
    return app


def _cookie_path(request: Request) -> str:
    return request.scope.get("root_path", "") or "/"


def _set_cookie(web: Web, request: Request, response: Response, name: str, value: str) -> None:
    response.set_cookie(
        name,
        value,
        path=_cookie_path(request),
        httponly=True,
        samesite="strict",
        secure=web.secure_cookies,
    )
