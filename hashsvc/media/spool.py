"""Media too large for one gRPC message arrives as a stream of chunks. It is
spooled to a private temporary file (never kept: the file is deleted when the
request ends, whatever happens) while its exact hashes are computed, so a
2 GiB video never sits in the server's memory and is read once more only by
the hashing worker that decodes it. A replica's uploads together hold at most
spool_max_bytes, and one token has at most max_uploads_per_token in flight:
before these limits 6 idle streams held 901 MB of spool (issue 16)."""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from hashsvc.base.errors import InvalidArgument, TooLarge

HEAD_BYTES = 4096  # enough to recognise every format we read


@dataclass(frozen=True)
class SpooledMedia:
    path: str
    size: int
    md5: bytes
    sha256: bytes
    head: bytes  # the first HEAD_BYTES, for sniffing the format

    def read(self) -> bytes:
        with open(self.path, "rb") as f:
            return f.read()


class SpoolBudget:
    """Bytes held in the spool at once, by all uploads together."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._held = 0
        self._lock = threading.Lock()

    def held(self) -> int:
        with self._lock:
            return self._held

    def take(self, size: int) -> None:
        with self._lock:
            if self._held + size > self.max_bytes:
                raise TooLarge(
                    f"the upload spool is full: uploads in flight hold {self._held} of"
                    f" {self.max_bytes} bytes (spool_max_bytes); retry later",
                    limit="spool_max_bytes",
                )
            self._held += size

    def give_back(self, size: int) -> None:
        with self._lock:
            self._held -= size


class Spool:
    """Where this replica's uploads wait for hashing, within its limits."""

    def __init__(
        self, directory: str, max_upload_bytes: int, max_bytes: int, max_per_token: int
    ) -> None:
        self.directory = directory
        self.max_upload_bytes = max_upload_bytes
        self.budget = SpoolBudget(max_bytes)
        self.max_per_token = max_per_token
        self._uploads: Counter = Counter()  # token id -> uploads in flight
        self._lock = threading.Lock()

    @contextmanager
    def upload(self, chunks: Iterable[bytes], token_id: int, caller: str) -> Iterator[SpooledMedia]:
        """spooled(), as one of the token's uploads in flight."""
        with self._lock:
            if self._uploads[token_id] >= self.max_per_token:
                raise TooLarge(
                    f"token {caller!r} already has {self._uploads[token_id]} uploads in flight,"
                    " its limit (max_uploads_per_token); retry later",
                    limit="max_uploads_per_token",
                )
            self._uploads[token_id] += 1
        try:
            with spooled(chunks, self.max_upload_bytes, self.directory, self.budget) as media:
                yield media
        finally:
            with self._lock:
                self._uploads[token_id] -= 1
                if self._uploads[token_id] <= 0:
                    del self._uploads[token_id]


@contextmanager
def spooled(
    chunks: Iterable[bytes],
    max_bytes: int,
    directory: str = "",
    budget: SpoolBudget | None = None,
) -> Iterator[SpooledMedia]:
    """Write chunks to a temporary file (mode 0600); TooLarge past max_bytes
    or past what the budget has left."""
    fd, path = tempfile.mkstemp(prefix="hashsvc-upload-", dir=directory or None)
    taken = 0  # bytes of the budget this upload holds
    try:
        md5, sha256 = hashlib.md5(), hashlib.sha256()
        size, head = 0, b""
        with os.fdopen(fd, "wb") as f:
            for chunk in chunks:
                size += len(chunk)
                if size > max_bytes:
                    raise TooLarge(
                        f"upload exceeds the limit of {max_bytes} bytes (max_upload_bytes)",
                        limit="max_upload_bytes",
                    )
                if budget is not None:
                    budget.take(len(chunk))
                    taken += len(chunk)
                if len(head) < HEAD_BYTES:
                    head += chunk[: HEAD_BYTES - len(head)]
                md5.update(chunk)
                sha256.update(chunk)
                f.write(chunk)
        if size == 0:
            raise InvalidArgument("empty media")
        yield SpooledMedia(path, size, md5.digest(), sha256.digest(), head)
    finally:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        if budget is not None:
            budget.give_back(taken)
