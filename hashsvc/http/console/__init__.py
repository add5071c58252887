"""The web console at /ui/: server-rendered pages for reviewers, operators and
auditors over the same core, tokens and roles as the gRPC API (README: Web
console). `build_console(core, ...)` is the ASGI app the HTTP server mounts."""

from hashsvc.http.console.app import build_console

__all__ = ["build_console"]
