"""Uploads streamed to the spool as they arrive, never held whole: a raw body
(the media itself), or the `file` part of a multipart/form-data body, whose
other parts are small form fields (client_ref, sets, name, labels...). The
spool (hashsvc/media/spool.py) is the gRPC uploads' own, with its limits
(max_upload_bytes, spool_max_bytes, max_uploads_per_token); it reads a plain
iterator on a worker thread, which pulls each chunk from the event loop."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from hashsvc.base.errors import InvalidArgument, quoted
from hashsvc.core.config import StringLimits

FILE_FIELD = "file"


class MultipartUpload:
    """A multipart body read as it streams: chunks() yields the `file` part's
    bytes and collects the other parts in `fields` (name -> values), each
    within its string limit; after chunks() is exhausted the body has been
    read to its end, so fields after the file are known too."""

    def __init__(self, content_type: str, limits: StringLimits, allowed: Iterable[str]) -> None:
        _, options = parse_options_header(content_type)
        boundary = options.get(b"boundary")
        if not boundary:
            raise InvalidArgument("a multipart/form-data body needs a boundary in Content-Type")
        self.limits = limits
        self.allowed = set(allowed)
        self.fields: dict[str, list[str]] = {}
        self.filename = ""
        self.has_file = False
        self._header_name = b""
        self._header_value = b""
        self._headers: dict[bytes, bytes] = {}
        self._part: str | None = None  # the field name of the part being read
        self._value = bytearray()
        self._file_data: list[bytes] = []
        try:
            self._parser = MultipartParser(
                boundary,
                {
                    "on_part_begin": self._begin,
                    "on_header_field": self._header_field,
                    "on_header_value": self._header_val,
                    "on_header_end": self._header_end,
                    "on_headers_finished": self._headers_done,
                    "on_part_data": self._data,
                    "on_part_end": self._end,
                },
            )
        except Exception as exc:  # a boundary longer than the format allows
            raise InvalidArgument(f"bad multipart boundary: {exc}") from None

    def chunks(self, body: Iterable[bytes]) -> Iterator[bytes]:
        try:
            for chunk in body:
                self._parser.write(chunk)
                yield from self._take_file_data()
            self._parser.finalize()
        except MultipartParseError as exc:
            raise InvalidArgument(f"the multipart body is malformed: {exc}") from None
        yield from self._take_file_data()
        if self._part is not None or not self._ended:
            raise InvalidArgument("the multipart body ended before its closing boundary")
        if not self.has_file:
            raise InvalidArgument(f"the multipart body has no `{FILE_FIELD}` part")

    _ended = False

    def _take_file_data(self) -> Iterator[bytes]:
        data, self._file_data = self._file_data, []
        yield from data

    def _begin(self) -> None:
        self._headers, self._part, self._value = {}, None, bytearray()
        self._ended = False

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _header_val(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]
        if len(self._header_value) > self.limits.other_chars * 4:
            raise InvalidArgument("a multipart part's header is too long")

    def _header_end(self) -> None:
        self._headers[self._header_name.strip().lower()] = self._header_value.strip()
        self._header_name, self._header_value = b"", b""

    def _headers_done(self) -> None:
        disposition, options = parse_options_header(self._headers.get(b"content-disposition"))
        if disposition != b"form-data" or b"name" not in options:
            raise InvalidArgument("each multipart part needs Content-Disposition: form-data; name=")
        name = options[b"name"].decode("utf-8", "replace")
        if name == FILE_FIELD:
            if self.has_file:
                raise InvalidArgument(f"the multipart body has more than one `{FILE_FIELD}` part")
            self.has_file = True
            self.filename = options.get(b"filename", b"").decode("utf-8", "replace")
            self.limits.check(self.filename, "filename", "other_chars", "filename")
        elif name not in self.allowed:
            raise InvalidArgument(
                f"unknown form field {quoted(name)} (fields: {', '.join(sorted(self.allowed))},"
                f" {FILE_FIELD})"
            )
        self._part = name

    def _data(self, data: bytes, start: int, end: int) -> None:
        if self._part == FILE_FIELD:
            self._file_data.append(bytes(data[start:end]))
            return
        self._value += data[start:end]
        # bounded as it arrives: at most 4 bytes a character
        most = getattr(self.limits, StringLimits.limit_for(self._part or ""))
        if len(self._value) > 4 * most:
            raise InvalidArgument(
                f"{self._part} is longer than {most} characters",
                field=self._part or "",
                limit=f"strings.{StringLimits.limit_for(self._part or '')}",
            )

    def _end(self) -> None:
        if self._part is not None and self._part != FILE_FIELD:
            try:
                text = self._value.decode()
            except UnicodeDecodeError:
                raise InvalidArgument(f"{self._part} is not UTF-8", field=self._part) from None
            self.limits.check(text, self._part, StringLimits.limit_for(self._part), self._part)
            values = self.fields.setdefault(self._part, [])
            if len(values) >= self.limits.repeated_items:
                raise InvalidArgument(
                    f"{self._part} is given more than {self.limits.repeated_items} times",
                    field=self._part,
                    limit="strings.repeated_items",
                )
            values.append(text)
        self._part = None
        self._ended = True

    def first(self, name: str, default: str = "") -> str:
        values = self.fields.get(name)
        return values[0] if values else default

    def all(self, name: str) -> list[str]:
        """A repeated field; a comma also separates (as in the query)."""
        return [v for raw in self.fields.get(name, []) for v in raw.split(",") if v]
