"""The ASGI app: the route table (routes_*.py), each route behind the token,
role (RPC_ROLES, the gRPC table) and rate-limit checks; health and readiness;
the OpenAPI description and its page; and the web console at /ui."""

from __future__ import annotations

import functools
import logging

import anyio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Mount, Route

from hashsvc.base.errors import HashsvcError, TooLarge, Unauthenticated
from hashsvc.core import audit, auth
from hashsvc.core.auth import RateLimiter
from hashsvc.core.config import new_spool
from hashsvc.core.core import Core
from hashsvc.core.sign_in_limits import LIMIT_KEY as SIGN_IN_LIMIT
from hashsvc.core.sign_in_limits import SignInLimits
from hashsvc.exchange.feeds import Feeds
from hashsvc.http import routes_curation, routes_exchange, routes_match, routes_people
from hashsvc.http.calls import Call, Endpoint, Services
from hashsvc.http.console import build_console
from hashsvc.http.errors import error_body, error_response, plain_error
from hashsvc.http.jobs import BulkJobs
from hashsvc.http.openapi import docs_html, openapi
from hashsvc.media.spool import Spool

log = logging.getLogger(__name__)

ENDPOINTS: list[Endpoint] = [
    *routes_match.ENDPOINTS,
    *routes_curation.ENDPOINTS,
    *routes_people.ENDPOINTS,
    *routes_exchange.ENDPOINTS,
]
RPC_PREFIX = "/hashsvc.v1."
# RPCs without a route of their own: a route above serves what they do.
RPCS_SERVED_ELSEWHERE = {
    "Matcher/MatchUpload": "POST /v1/match (a large body is streamed to the spool)",
    "Matcher/MatchBatch": "POST /v1/match once per upload (HTTP/1.1 keep-alive, or HTTP/2)",
    "Curation/AddEntry": "POST /v1/sets/{set}/entries (JSON with a signal)",
    "Events/Subscribe": "GET /v1/events from the last id seen (a pulling consumer pages it)",
}
# A Match refused by the rate limit is still a Match call, in the history (as gRPC's).
_RECORDED_WHEN_RATE_LIMITED = frozenset({"Matcher/Match"})
# Every answer: no caching of tokens' answers, no sniffing a JSON body as HTML.
_HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}

# /docs: no script at all, its own inline style only.
_DOCS_POLICY = "default-src 'none'; style-src 'unsafe-inline'"


def bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if header is None:
        return None
    return auth.token_from_metadata([("authorization", header)])


def guarded(endpoint: Endpoint, services: Services):
    """The route's handler behind authentication, the role check and the
    caller's rate limit, its errors answered as JSON. An address past its
    failed authentications (shared with the console's sign-ins and, in one
    process, the gRPC API) is refused before its token is looked up, unless
    the token authenticated lately: a caller without a good token can neither
    guess on unthrottled nor take the worker threads Match needs, and the
    pipelines behind the same address keep matching. A request without a token is refused
    without a thread and is not counted (it guesses nothing)."""
    method = f"{RPC_PREFIX}{endpoint.rpc}"
    store = services.core.store
    sign_ins: SignInLimits = services.sign_ins

    async def run(request: Request) -> Response:
        record = None
        retry_after = 0
        try:
            address = request.client.host if request.client else ""
            token = bearer_token(request)
            # a token that authenticated lately passes (SignInLimits.refused)
            retry_after = sign_ins.refused(address, token)
            if retry_after:
                raise TooLarge(
                    "too many failed authentications from your address: "
                    f"try again in {retry_after} seconds",
                    limit=SIGN_IN_LIMIT,
                )
            if not token:
                # no lookup, no thread; not counted: it guesses nothing
                auth.authenticate(store, token)  # raises Unauthenticated
            try:
                record = await anyio.to_thread.run_sync(
                    auth.authenticate, store, token, limiter=services.threads
                )
            except Unauthenticated:
                sign_ins.failed(address)
                raise
            sign_ins.authenticated(token)
            auth.authorize(record, method)
            # action records by this caller carry its token id (worker threads
            # inherit the context)
            audit.ACTING_TOKEN.set((record.name, record.id))
            try:
                services.limiter.check(record)
            except TooLarge as exc:
                exc.limit = exc.limit or "rate_limit_per_second"
                if endpoint.rpc in _RECORDED_WHEN_RATE_LIMITED:
                    refused = functools.partial(
                        services.core.record_failed_match,
                        "Match",
                        record.name,
                        exc,
                        caller_token_id=record.id,
                    )
                    await anyio.to_thread.run_sync(refused)
                raise
            response = await endpoint.handler(Call(request, record, services))
        except HashsvcError as exc:
            response = error_response(exc)
            if response.status_code == 401:
                response.headers["WWW-Authenticate"] = "Bearer"
            if retry_after:
                response.headers["Retry-After"] = str(retry_after)
        except Exception as exc:  # a bug: logged, answered INTERNAL
            response = error_response(exc)
        response.headers.update(_HEADERS)
        return response

    run.__name__ = endpoint.handler.__name__
    return run


def build_app(
    core: Core,
    limiter: RateLimiter | None = None,
    spool: Spool | None = None,
    jobs: BulkJobs | None = None,
    feeds: Feeds | None = None,
    sign_ins: SignInLimits | None = None,
) -> Starlette:
    """The HTTP API over `core`; `limiter`, `spool`, `feeds` and `sign_ins`
    the gRPC server's own when both serve in one process (one rate budget per
    token, one spool, one lease owner for feeds, one budget of failed
    authentications per address; without feeds the Exchange routes answer
    UNAVAILABLE)."""
    config = core.config
    sign_ins = sign_ins or SignInLimits(
        config.console.sign_in_failures_per_minute, config.console.sign_in_tracked_addresses
    )
    services = Services(
        core,
        limiter or RateLimiter(config.rate_limit_per_second, config.rate_limit_burst),
        spool or new_spool(config),
        jobs or BulkJobs(core, config.http_jobs_kept, config.http_jobs_running),
        anyio.CapacityLimiter(config.http_threads),
        feeds,
        routes_exchange.FeedFetches(feeds, config.http_jobs_kept) if feeds is not None else None,
        sign_ins,
    )
    spec = openapi(ENDPOINTS, RPC_PREFIX)
    docs = docs_html(spec)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"}, headers=_HEADERS)

    async def readyz(request: Request) -> Response:
        reason = core.not_ready_reason()
        if reason:
            return JSONResponse(error_body("UNAVAILABLE", reason), 503, headers=_HEADERS)
        return JSONResponse({"status": "ready"}, headers=_HEADERS)

    async def openapi_json(request: Request) -> Response:
        return JSONResponse(spec)

    async def docs_page(request: Request) -> Response:
        return HTMLResponse(
            docs,
            headers={"Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'"},
        )

    routes = [Route(ep.path, guarded(ep, services), methods=[ep.method]) for ep in ENDPOINTS] + [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/openapi.json", openapi_json, methods=["GET"]),
        Route("/docs", docs_page, methods=["GET"]),
    ]
    # The web console for people (hashsvc/http/console) at /ui, over the same
    # core; its session cookie is Secure whenever the server speaks TLS.
    routes.append(Mount("/ui", app=console_app(core, sign_ins)))

    async def http_error(request: Request, exc: HTTPException) -> Response:
        code = {404: "NOT_FOUND", 405: "UNIMPLEMENTED"}.get(exc.status_code, "INVALID_ARGUMENT")
        what = {404: f"no such route: {request.url.path[:200]}",
                405: f"{request.method} is not allowed on {request.url.path[:200]}"}  # fmt: skip
        response = plain_error(exc.status_code, code, what.get(exc.status_code, str(exc.detail)))
        response.headers.update(_HEADERS)
        return response

    app = Starlette(routes=routes, exception_handlers={HTTPException: http_error})
    app.state.services = services
    return app


def console_app(core: Core, sign_ins: SignInLimits | None = None):
    """The web console, configured from the config's [console] table;
    `sign_ins` the failed sign-ins per address it shares with the API."""
    settings = core.config.console
    return build_console(
        core,
        secure_cookies=bool(core.config.tls_cert_file),
        preview_url_template=settings.preview_url_template or None,
        preview_allowed_hosts=settings.preview_allowed_hosts,
        sign_ins=sign_ins,
    )
