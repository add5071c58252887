"""What every route shares: its entry in the route table (Endpoint: method,
path, the RPC whose roles it takes from hashsvc/core/auth.py RPC_ROLES, and
what the OpenAPI description says of it), and the Call a handler gets: the
authenticated caller, the core, and readers of the request's parameters and
body that check them within the same limits as the gRPC API (strings:
Config.strings; JSON bodies: max_message_bytes; uploads: the spool)."""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field

import anyio
import anyio.from_thread
import anyio.to_thread
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from hashdb import TokenRecord
from hashsvc.base.errors import InvalidArgument, TooLarge, quoted
from hashsvc.core.auth import RateLimiter
from hashsvc.core.config import Config
from hashsvc.core.core import Core
from hashsvc.http.errors import Cancelled, RequestTimeout
from hashsvc.media.spool import Spool

# JSON types as a field must have them (a bool is no number here, though
# Python's bool is an int).
_IS = {
    "str": lambda v: isinstance(v, str),
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "float": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "bool": lambda v: isinstance(v, bool),
    "list": lambda v: isinstance(v, list),
    "dict": lambda v: isinstance(v, dict),
}
_WHAT = {
    "str": "a string",
    "int": "a whole number",
    "float": "a number",
    "bool": "true or false",
    "list": "a list",
    "dict": "an object",
}


@dataclass(frozen=True)
class Param:
    name: str
    kind: str = "string"  # OpenAPI type: string, integer, boolean, array (of strings)
    where: str = "query"  # or "path"
    description: str = ""
    required: bool = False


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str
    rpc: str  # "Curation/CreateSet": its roles are RPC_ROLES["/hashsvc.v1.Curation/CreateSet"]
    handler: Callable[[Call], Awaitable[Response]]
    summary: str
    params: tuple[Param, ...] = ()
    # "json" (an object: `body_schema`), "media" (a file: raw body or multipart
    # `file`), "match" (media, or JSON {"signal": ...}), "" (none)
    body: str = ""
    body_schema: dict | None = None
    # "json" or "jsonl" (a streamed download, one object per line)
    answers: str = "json"
    ok_status: int = 200


@dataclass
class Services:
    """What the routes share beside the core: the gRPC server's own rate
    limiter and upload spool when both APIs run in one process (one budget
    per token, one spool), the bulk-load jobs, the worker threads, and the
    partner feeds with their fetches started over HTTP, and the failed
    authentications per client address."""

    core: Core
    limiter: RateLimiter
    spool: Spool
    jobs: object = None  # hashsvc.http.jobs.BulkJobs
    threads: anyio.CapacityLimiter | None = None
    # partner feeds: the gRPC server's (one lease owner, one background
    # fetcher); None: the Exchange routes answer UNAVAILABLE
    feeds: object = None  # hashsvc.exchange.feeds.Feeds
    fetches: object = None  # hashsvc.http.routes_exchange.FeedFetches
    # failed authentications per client address, shared with the console's
    # sign-in form and the gRPC API (one budget per address for guessing tokens)
    sign_ins: object = None  # hashsvc.core.sign_in_limits.SignInLimits

    @property
    def config(self) -> Config:
        return self.core.config


@dataclass
class Call:
    request: Request
    caller: TokenRecord
    services: Services
    path: dict = field(default_factory=dict)

    @property
    def core(self) -> Core:
        return self.services.core

    @property
    def config(self) -> Config:
        return self.services.core.config

    async def blocking(self, fn: Callable, *args):
        """fn(*args) on one of the API's worker threads (the core blocks)."""
        return await anyio.to_thread.run_sync(fn, *args, limiter=self.services.threads)

    # -- parameters

    def path_str(self, name: str) -> str:
        return self.string(self.request.path_params[name], name)

    def string(self, value: str, name: str) -> str:
        limits = self.config.strings
        limits.check(value, name, limits.limit_for(name), name)
        return value

    def query_str(self, name: str, default: str = "") -> str:
        value = self.request.query_params.get(name)
        return default if value is None else self.string(value, name)

    def query_list(self, name: str) -> tuple[str, ...]:
        """A repeated parameter (`sets=a&sets=b`); a comma also separates."""
        values = [v for raw in self.request.query_params.getlist(name) for v in raw.split(",")]
        return self.strings([v for v in values if v], name)

    def strings(self, values: list[str], name: str) -> tuple[str, ...]:
        most = self.config.strings.repeated_items
        if len(values) > most:
            raise InvalidArgument(
                f"{name} holds {len(values)} items, at most {most}",
                field=name,
                limit="strings.repeated_items",
            )
        return tuple(self.string(v, f"{name}[{k}]") for k, v in enumerate(values))

    def query_int(self, name: str, default: int = 0) -> int:
        text = self.request.query_params.get(name)
        if text is None or text == "":
            return default
        return parse_int(text, name)

    def query_bool(self, name: str) -> bool:
        text = self.request.query_params.get(name, "").lower()
        if text in ("", "0", "false", "no"):
            return False
        if text in ("1", "true", "yes"):
            return True
        raise InvalidArgument(f"{name} must be true or false, not {quoted(text)}", field=name)

    # -- bodies

    async def body_chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives, within stream_idle_seconds between chunks
        and stream_max_seconds in all (as a gRPC stream's messages)."""
        idle, most = self.config.stream_idle_seconds, self.config.stream_max_seconds
        deadline = time.monotonic() + most
        chunks = self.request.stream().__aiter__()
        while True:
            wait = min(idle, deadline - time.monotonic())
            try:
                with anyio.fail_after(max(wait, 0.001)):
                    chunk = await chunks.__anext__()
            except StopAsyncIteration:
                return
            except TimeoutError:
                if time.monotonic() >= deadline:
                    raise RequestTimeout(
                        f"the request body took longer than {most:g} s (stream_max_seconds)",
                        limit="stream_max_seconds",
                    ) from None
                raise RequestTimeout(
                    f"no part of the request body arrived for {idle:g} s (stream_idle_seconds)",
                    limit="stream_idle_seconds",
                ) from None
            except ClientDisconnect:
                raise Cancelled("the client went away while sending the request") from None
            if chunk:
                yield chunk

    def declared_length(self) -> int | None:
        text = self.request.headers.get("content-length")
        if text is None:
            return None
        try:
            return int(text)
        except ValueError:
            raise InvalidArgument("Content-Length is not a number") from None

    async def body_bytes(self, most: int, limit: str) -> bytes:
        """The whole body, refused (413) past `most` bytes before more is read."""
        declared = self.declared_length()
        if declared is not None and declared > most:
            raise TooLarge(f"the body is larger than {most} bytes ({limit})", limit=limit)
        parts, size = [], 0
        async for chunk in self.body_chunks():
            size += len(chunk)
            if size > most:
                raise TooLarge(f"the body is larger than {most} bytes ({limit})", limit=limit)
            parts.append(chunk)
        return b"".join(parts)

    async def json(self) -> dict:
        """A JSON object body, within http_max_json_bytes and max_message_bytes
        (a gRPC message's limit): it is parsed on the event loop (json.loads
        holds the GIL wherever it runs), so its size bounds how long every
        other request waits."""
        most, limit = self.config.http_max_json_bytes, "http_max_json_bytes"
        if self.config.max_message_bytes < most:
            most, limit = self.config.max_message_bytes, "max_message_bytes"
        body = await self.body_bytes(most, limit)
        return parse_json_object(body)

    def sync_chunks(self, chunks: AsyncIterator[bytes]) -> Iterator[bytes]:
        """An async body as a plain iterator, for the spool on a worker thread
        (called from that thread)."""
        while True:
            try:
                yield anyio.from_thread.run(chunks.__anext__)
            except StopAsyncIteration:
                return


def content_kind(request: Request) -> str:
    """ "json", "multipart" or "raw" (any other type: the media itself)."""
    kind = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if kind == "application/json":
        return "json"
    if kind == "multipart/form-data":
        return "multipart"
    return "raw"


def parse_int(text: str, name: str) -> int:
    text = text.strip()
    # one optional sign, then ASCII digits ("--5" passed a strip of "-" and
    # then failed in int(): a 500)
    if not _WHOLE_NUMBER.fullmatch(text):
        raise InvalidArgument(f"{name} must be a whole number, not {quoted(text)}", field=name)
    return int(text)


_WHOLE_NUMBER = re.compile(r"-?[0-9]{1,19}")


def parse_json_object(body: bytes) -> dict:
    if not body.strip():
        return {}
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"the body is not valid JSON: {exc}") from None
    except RecursionError:
        raise InvalidArgument("the body's JSON is nested too deeply") from None
    if not isinstance(value, dict):
        raise InvalidArgument(f"the body must be a JSON object, not {type(value).__name__}")
    return value


class Fields:
    """A JSON object's fields read with their types checked, each error naming
    the field (`signal.value`, `labels`)."""

    def __init__(self, call: Call, values: dict, path: str = "") -> None:
        self.call = call
        self.values = values
        self.path = path

    def where(self, name: str) -> str:
        return f"{self.path}{name}"

    def _get(self, name: str, kind: str):
        value = self.values.get(name)
        if value is not None and not _IS[kind](value):
            raise InvalidArgument(
                f"{self.where(name)} must be {_WHAT[kind]}, not {type(value).__name__}",
                field=self.where(name),
            )
        return value

    def has(self, name: str) -> bool:
        return self.values.get(name) is not None

    def str(self, name: str, default: str = "") -> str:
        value = self._get(name, "str")
        return default if value is None else self.call.string(value, self.where(name))

    def int(self, name: str, default: int = 0) -> int:
        value = self._get(name, "int")
        if value is not None and not -(2**63) <= value < 2**63:
            raise InvalidArgument(f"{self.where(name)} is out of range", field=self.where(name))
        return default if value is None else value

    def float(self, name: str, default: float = 0.0) -> float:
        value = self._get(name, "float")
        return default if value is None else float(value)

    def bool(self, name: str, default: bool = False) -> bool:
        value = self._get(name, "bool")
        return default if value is None else value

    def optional_bool(self, name: str) -> bool | None:
        return self._get(name, "bool")

    def optional_str(self, name: str) -> str | None:
        return self.str(name) if self.has(name) else None

    def str_list(self, name: str) -> tuple[str, ...]:
        value = self._get(name, "list") or []
        if not all(isinstance(v, str) for v in value):
            raise InvalidArgument(f"{self.where(name)} must hold strings", field=self.where(name))
        return self.call.strings(value, self.where(name))

    def labels(self, name: str = "labels") -> dict[str, str]:
        value = self._get(name, "dict") or {}
        if not all(isinstance(v, str) for v in value.values()):
            raise InvalidArgument(
                f"{self.where(name)} must map names to strings", field=self.where(name)
            )
        self.call.strings(list(value), self.where(name))
        self.call.strings(list(value.values()), self.where(name))
        return dict(value)

    def object(self, name: str) -> Fields | None:
        value = self._get(name, "dict")
        return None if value is None else Fields(self.call, value, f"{self.where(name)}.")

    def objects(self, name: str) -> list[Fields]:
        value = self._get(name, "list") or []
        if len(value) > self.call.config.strings.repeated_items:
            self.call.strings([""] * len(value), self.where(name))  # its error
        out = []
        for k, item in enumerate(value):
            if not isinstance(item, dict):
                raise InvalidArgument(
                    f"{self.where(name)}[{k}] must be an object", field=f"{self.where(name)}[{k}]"
                )
            out.append(Fields(self.call, item, f"{self.where(name)}[{k}]."))
        return out
