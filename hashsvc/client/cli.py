"""hashsvc command line: `serve` and `token create --db` work on the server
side; everything else is a client of the public gRPC API. The commands are in
client/commands/, a module per group; this module builds the parser from them
and runs one.

Exit codes: 0 success; 1 the operation failed (for several files: at least one
failed; the others were still done); 2 usage error; 3 cannot reach the server.
Results go to stdout, errors and progress to stderr.
"""

from __future__ import annotations

import argparse
import os
import sys

import grpc

from hashsvc import __version__
from hashsvc.base.errors import HashsvcError
from hashsvc.client.commands import (
    bulk,
    entries,
    events,
    exchange,
    history,
    match,
    retro,
    review,
    serve,
    sets,
    stats,
    tokens,
)
from hashsvc.client.commands.common import (
    EXIT_BROKEN_PIPE,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    UsageError,
    add_global_flags,
    apply_global_flags,
    rpc_details,
)

__all__ = [
    "EXIT_BROKEN_PIPE",
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_UNREACHABLE",
    "EXIT_USAGE",
    "UsageError",
    "build_parser",
    "main",
]

# The order of the commands in `hashsvc --help`.
_REGISTER = (
    serve.register,
    tokens.register,
    sets.register,
    entries.register,
    bulk.register,
    entries.register_entries,
    exchange.register,
    review.register,
    match.register,
    history.register,
    events.register,
    retro.register,
    stats.register,
)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    misplaced = apply_global_flags(args)
    if misplaced:
        print(f"hashsvc: {misplaced}", file=sys.stderr)
        return EXIT_USAGE
    try:
        return args.func(args)
    except UsageError as exc:
        print(f"hashsvc: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except HashsvcError as exc:
        print(f"hashsvc: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except grpc.RpcError as exc:
        return _report_rpc_error(exc)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # the reader went away (`hashsvc export ... | head`): quiet, as a
        # Unix tool killed by SIGPIPE; stdout is closed so the exit's own
        # flush does not fail again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


def _report_rpc_error(exc: grpc.RpcError) -> int:
    code = exc.code()
    print(f"hashsvc: {code.name}: {rpc_details(exc)}", file=sys.stderr)
    return EXIT_UNREACHABLE if code == grpc.StatusCode.UNAVAILABLE else EXIT_FAILED


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hashsvc",
        description="Match media against hash sets of known terrorist propaganda.",
        epilog="Server address: --server or HASHSVC_SERVER (default 127.0.0.1:50051). "
        "Token: HASHSVC_TOKEN. TLS: --tls-ca or HASHSVC_TLS_CA. --server, --tls-ca, "
        "--insecure and --json go before or after the command.",
    )
    parser.add_argument("--version", action="version", version=f"hashsvc {__version__}")
    add_global_flags(parser)
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    for register in _REGISTER:
        register(commands)
    return parser


if __name__ == "__main__":
    sys.exit(main())
