"""Media too large for one gRPC message arrives as a stream of chunks. It is
spooled to a private temporary file (never kept: the file is deleted when the
request ends, whatever happens) while its exact hashes are computed, so a
2 GiB video never sits in the server's memory and is read once more only by
the hashing worker that decodes it."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from hashsvc.errors import InvalidArgument, TooLarge

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


@contextmanager
def spooled(chunks: Iterable[bytes], max_bytes: int, directory: str = "") -> Iterator[SpooledMedia]:
    """Write chunks to a temporary file (mode 0600); TooLarge past max_bytes."""
    fd, path = tempfile.mkstemp(prefix="hashsvc-upload-", dir=directory or None)
    try:
        md5, sha256 = hashlib.md5(), hashlib.sha256()
        size, head = 0, b""
        with os.fdopen(fd, "wb") as f:
            for chunk in chunks:
                size += len(chunk)
                if size > max_bytes:
                    raise TooLarge(f"upload exceeds the limit of {max_bytes} bytes")
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
