"""Commands over several items (files, hashes, entry names): each item is
done or reported, and the others go on."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any

import grpc

from hashsvc.client.commands.common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_UNREACHABLE,
    print_json,
    rpc_details,
)


class ItemError(Exception):
    """A file the CLI itself refuses, reported like a server's answer."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def unreachable(exc: BaseException) -> bool:
    return isinstance(exc, grpc.RpcError) and exc.code() == grpc.StatusCode.UNAVAILABLE


def report_item_error(label: str, exc: OSError | grpc.RpcError | ItemError, as_json: bool) -> None:
    if isinstance(exc, grpc.RpcError):
        code, message = exc.code().name, rpc_details(exc)
    elif isinstance(exc, ItemError):
        code, message = exc.code, exc.message
    else:
        code, message = "LOCAL", f"{exc.strerror or exc}: {getattr(exc, 'filename', '')}"
    print(f"hashsvc: {label}: {code}: {message}", file=sys.stderr)
    if as_json:
        print_json({"file": label, "decision": None, "error": {"code": code, "message": message}})


def each_item(
    items: Sequence[Any],
    label_of: Callable[[Any], str],
    call: Callable[[Any], Any],
    show: Callable[[str, Any], None],
    as_json: bool,
) -> int:
    """Runs call(item) for every item; a failed item is reported (stderr, and a
    JSON error line with --json) and the rest go on. Stops early only when the
    server is unreachable."""
    failures = 0
    for item in items:
        label = label_of(item)
        try:
            result = call(item)
        except (OSError, grpc.RpcError) as exc:
            failures += 1
            report_item_error(label, exc, as_json)
            if unreachable(exc):
                return EXIT_UNREACHABLE
            continue
        show(label, result)
    return EXIT_FAILED if failures else EXIT_OK


def read_input(path: str) -> bytes:
    """A file's bytes, or stdin's for `-`."""
    if path == "-":
        return sys.stdin.buffer.read()
    with open(path, "rb") as f:
        return f.read()
