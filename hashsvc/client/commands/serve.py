"""`hashsvc serve`: run the gRPC service (the server side; no client flags)."""

from __future__ import annotations

import argparse
import sys

from hashsvc.client.commands.common import EXIT_FAILED, EXIT_OK, Subcommands, UsageError


def register(commands: Subcommands) -> None:
    p = commands.add_parser(
        "serve", help="run the gRPC service", description="Run the gRPC service."
    )
    p.add_argument("--listen", help="HOST:PORT to listen on (default 127.0.0.1:50051)")
    p.add_argument(
        "--http-listen",
        help="HOST:PORT of the HTTP/JSON API beside gRPC (config http_listen; off when unset)",
    )
    p.add_argument("--db", help="store URL: sqlite:///PATH (default) or postgresql://...")
    p.add_argument("--config", help="TOML config file (see README)")
    p.add_argument("--workers", type=int, help="hashing processes (default: one per core)")
    p.add_argument("--log-level", default="INFO")
    p.add_argument("--log-json", action="store_true", help="log JSON lines (for log pipelines)")
    p.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    # imported here: the server's modules (indexes, decoders) are no part of
    # the client commands
    from hashsvc.api.server import StartupError, serve_forever
    from hashsvc.base import logs
    from hashsvc.core.config import load_config

    logs.configure(args.log_level, json_lines=args.log_json)
    try:
        config = load_config(
            args.config,
            listen=args.listen,
            http_listen=args.http_listen,
            db_url=args.db,
            workers=args.workers,
        )
    except (OSError, ValueError) as exc:
        raise UsageError(f"config: {exc}") from None

    def http_api(running):  # same process, core, rate limiter, spool, feeds and
        # failed authentications per address; its stack is loaded only when asked for
        from hashsvc.http.server import HttpStartupError, start_http

        try:
            return start_http(
                running.core, running.limiter, running.spool, running.feeds, running.sign_ins
            )
        except HttpStartupError as exc:
            raise StartupError(str(exc)) from None

    try:
        serve_forever(config, [http_api] if config.http_listen else [])
    except StartupError as exc:  # one line, no traceback: what to fix
        print(f"hashsvc: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK
