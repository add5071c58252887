"""The web console served for tests and benches: build_console mounted at /ui
(as the HTTP server mounts it) on a real Core, by uvicorn in a thread on
127.0.0.1 and a free port; stopped by stop() (use it as a context manager)."""

from __future__ import annotations

import re
import threading
import time

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.routing import Mount

from hashsvc.core import auth
from hashsvc.core.config import ConsoleSettings
from hashsvc.http.console import build_console

START_SECONDS = 20.0
CSRF_FIELD = re.compile(r'name="csrf_token" value="([^"]+)"')


def sign_in(client: httpx.Client, token: str) -> httpx.Response:
    """Sends the sign-in form (with its CSRF token) from `client`, whose
    base_url is a console server; the answer: 303 signed in, 401, 429..."""
    login = client.get("/ui/login")
    csrf = CSRF_FIELD.search(login.text).group(1)
    return client.post("/ui/login", data={"csrf_token": csrf, "token": token})


def page_csrf(client: httpx.Client, path: str = "/ui/") -> str:
    """The session's CSRF token, as a page's forms carry it."""
    page = client.get(path, follow_redirects=True)
    return CSRF_FIELD.search(page.text).group(1)


class ConsoleServer:
    def __init__(
        self,
        core,
        *,
        secure_cookies: bool = False,
        preview_url_template: str | None = None,
        preview_allowed_hosts=(),
        limits: ConsoleSettings | None = None,
    ) -> None:
        self.core = core
        console = build_console(
            core,
            secure_cookies=secure_cookies,
            preview_url_template=preview_url_template,
            preview_allowed_hosts=preview_allowed_hosts,
            limits=limits,
        )
        self.app = Starlette(routes=[Mount("/ui", app=console)])
        self._server = uvicorn.Server(
            uvicorn.Config(self.app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
        )
        self._thread: threading.Thread | None = None
        self.port = 0

    def client(self, **kwargs) -> httpx.Client:
        """An HTTP client of this server (close it)."""
        return httpx.Client(base_url=f"http://127.0.0.1:{self.port}", **kwargs)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/ui"

    def start(self) -> ConsoleServer:
        self._thread = threading.Thread(target=self._server.run, daemon=True, name="console")
        self._thread.start()
        deadline = time.monotonic() + START_SECONDS
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                self.stop()
                raise RuntimeError("the console server did not start")
            time.sleep(0.02)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)

    def token(self, role: str, name: str = "") -> str:
        """A new API token of the role (written straight into the store)."""
        _, token = auth.create_token(self.core.store, role, name or f"{role}-console")
        return token

    def __enter__(self) -> ConsoleServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
