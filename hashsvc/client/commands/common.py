"""What every command shares: exit codes, the usage error, the client flags
(declared once, taken before the command as well as after it), the
connection, JSON lines on stdout."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable
from dataclasses import dataclass

import grpc

from hashsvc.client.client import Client, InsecureTransport

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3
EXIT_BROKEN_PIPE = 128 + 13  # as a process killed by SIGPIPE

# argparse's type for `parser.add_subparsers()`, which each command module
# adds its commands to.
Subcommands = argparse._SubParsersAction
Command = Callable[[argparse.Namespace], int]


class UsageError(Exception):
    """The command line asks for something that cannot be done (exit 2)."""


@dataclass(frozen=True)
class ClientFlag:
    """A flag of every command that calls a server."""

    option: str
    help: str
    metavar: str | None = None  # None: a switch
    # the commands that take it, for the error when one that does not is given it
    taken_by: str = "commands that call a server"

    @property
    def dest(self) -> str:
        return self.option.removeprefix("--").replace("-", "_")

    @property
    def global_dest(self) -> str:
        # Given before the command the flag lands here, in a name of its own:
        # the command's default would otherwise overwrite it.
        return f"global_{self.dest}"


INSECURE_HELP = "send the token without TLS to a server that is not on this machine"
SERVER = ClientFlag("--server", "HOST:PORT of the hashsvc server", "HOST:PORT")
TLS_CA = ClientFlag("--tls-ca", "CA certificate file: connect with TLS", "FILE")
INSECURE = ClientFlag("--insecure", INSECURE_HELP)
JSON = ClientFlag("--json", "print JSON (one object per line)", taken_by="commands that print JSON")
CLIENT_FLAGS = (SERVER, TLS_CA, INSECURE, JSON)


def _add_flag(parser: argparse.ArgumentParser, flag: ClientFlag, **kw) -> None:
    if flag.metavar is None:
        parser.add_argument(flag.option, action="store_true", help=flag.help, **kw)
    else:
        parser.add_argument(flag.option, metavar=flag.metavar, help=flag.help, **kw)


def add_global_flags(parser: argparse.ArgumentParser) -> None:
    """The client flags before the command (`hashsvc --server H:P match ...`)."""
    for flag in CLIENT_FLAGS:
        _add_flag(parser, flag, dest=flag.global_dest, default=None)


def client_command(
    commands: Subcommands,
    name: str,
    func: Command,
    help: str,
    description: str | None = None,
    json_help: str | None = JSON.help,
) -> argparse.ArgumentParser:
    """A command that calls a server: it takes the client flags, --json unless
    json_help is None (the command prints no JSON)."""
    parser = commands.add_parser(name, help=help, description=description or help)
    for flag in (SERVER, TLS_CA, INSECURE):
        _add_flag(parser, flag)
    if json_help is not None:
        parser.add_argument(JSON.option, action="store_true", help=json_help)
    parser.set_defaults(func=func)
    return parser


def apply_global_flags(args: argparse.Namespace) -> str | None:
    """Moves the client flags given before the command to the command; the one
    given after the command wins. Returns the error for a flag that the command
    does not take, which is not ignored: it was meant to change something."""
    for flag in CLIENT_FLAGS:
        given = getattr(args, flag.global_dest)
        if given is None:
            continue
        if not hasattr(args, flag.dest):
            return f"{flag.option} is for {flag.taken_by}"
        if getattr(args, flag.dest) in (None, False):
            setattr(args, flag.dest, given)
    return None


def connect(args: argparse.Namespace) -> Client:
    """A client for the server the flags (or the environment) name."""
    try:
        return Client(server=args.server, tls_ca_file=args.tls_ca, insecure=args.insecure)
    except InsecureTransport as exc:
        raise UsageError(str(exc)) from None
    except OSError as exc:  # a TLS file (--tls-ca, HASHSVC_TLS_*) that cannot be read
        raise UsageError(f"cannot read {exc.filename}: {exc.strerror}") from None


def print_json(obj: object) -> None:
    print(json.dumps(obj, ensure_ascii=False, sort_keys=False), flush=True)


def rpc_details(exc: grpc.RpcError) -> str:
    """The server's message, told in the CLI's terms where it names the token
    (the server speaks of gRPC metadata, which a CLI user never sets)."""
    if exc.code() != grpc.StatusCode.UNAUTHENTICATED:
        return exc.details()
    if not os.environ.get("HASHSVC_TOKEN"):
        return (
            "no token: set HASHSVC_TOKEN to your API token (an admin makes one with"
            " `hashsvc token create`)"
        )
    return f"{exc.details()} (the token in HASHSVC_TOKEN)"
