"""Adding many files: walk directories, add in parallel, show progress.

Entries found by walking a directory are named by their path relative to it
(so `a/x.jpg` and `b/x.jpg` stay apart). A file whose bytes the set already
holds (same SHA-256, under any name) is skipped, which makes an interrupted
ingest resumable by running it again. A file whose name is taken by other
content (the file was changed since it was added) is added under its name
with its SHA-256 appended: the old entry stays, as the old content may still
circulate, and the operator is told. Files that no reader knows (notes,
Thumbs.db) are skipped and counted, not failed: an archive holds such files,
and an ingest that fails on every rerun is no longer resumable.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import grpc

from hashsvc.base.validation import MAX_ENTRY_NAME
from hashsvc.client.client import Client, file_sha256
from hashsvc.media import sniff
from hashsvc.v1 import hashsvc_pb2 as pb

# Why a file was not added (the `reason` of a skipped file in `add --json`).
ALREADY_IN_SET = "already_in_set"
DUPLICATE = "duplicate"  # the same bytes as another file of this run
NOT_MEDIA = "not_media"
# Hex digits of the SHA-256 appended to a name taken by other content.
RENAME_DIGITS = 12


@dataclass(frozen=True)
class MediaFile:
    path: str
    entry_name: str
    from_directory: bool


@dataclass(frozen=True)
class Added:
    entry: pb.Entry
    # Set when the file's own name was held by an entry with other content.
    name_in_use: str = ""


@dataclass(frozen=True)
class Skipped:
    reason: str
    same_as: str = ""  # DUPLICATE: the file of this run with the same bytes


def default_parallel() -> int:
    """Uploads in flight by default: one per core of this machine."""
    return os.cpu_count() or 1


def media_files(paths: Iterable[str]) -> list[MediaFile]:
    """Files as given, and every file below each directory (hidden ones left
    out), in a stable order."""
    found: list[MediaFile] = []
    for path in paths:
        if os.path.isdir(path):
            for root, dirs, files in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for name in sorted(files):
                    if name.startswith("."):
                        continue
                    full = os.path.join(root, name)
                    rel = os.path.relpath(full, path).replace(os.sep, "/")
                    found.append(MediaFile(full, rel, True))
        else:
            found.append(MediaFile(path, os.path.basename(path), False))
    return found


def is_media(path: str) -> bool:
    """Whether a reader of the server knows the file's format (the server's
    own sniffer, on the first bytes; empty files are not media)."""
    with open(path, "rb") as f:
        head = f.read(4096)
    return bool(head) and bool(sniff.sniff(head))


def renamed(name: str, sha256_hex: str) -> str:
    """The name for a file whose own name is held by other content."""
    suffix = f"@{sha256_hex[:RENAME_DIGITS]}"
    return name[: MAX_ENTRY_NAME - len(suffix)] + suffix


class DirectoryIngest:
    """Adds the files of a directory walk to one set, deciding per file:
    add, skip (known bytes, duplicate, not media) or add under a new name."""

    def __init__(
        self,
        client: Client,
        set_name: str,
        send: Callable[[pb.AddEntryRequest, str], pb.Entry],
    ) -> None:
        self.client = client
        self.set_name = set_name
        self.send = send  # (request without content, path) -> the added entry
        self._claimed: dict[str, str] = {}  # SHA-256 -> first file of this run
        self._lock = threading.Lock()

    def add(self, item: MediaFile, req: pb.AddEntryRequest) -> Added | Skipped:
        if not is_media(item.path):
            return Skipped(NOT_MEDIA)
        sha256_hex = file_sha256(item.path)
        with self._lock:
            first = self._claimed.setdefault(sha256_hex, item.path)
        if first != item.path:
            return Skipped(DUPLICATE, same_as=first)
        if self.known(sha256_hex):
            return Skipped(ALREADY_IN_SET)
        try:
            return Added(self.send(req, item.path))
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.ALREADY_EXISTS:
                raise
        # The name is taken. By these bytes, added meanwhile by another
        # ingest? Otherwise by other content: keep both.
        if self.known(sha256_hex):
            return Skipped(ALREADY_IN_SET)
        own_name = req.name
        req.name = renamed(own_name, sha256_hex)
        return Added(self.send(req, item.path), name_in_use=own_name)

    def known(self, sha256_hex: str) -> bool:
        """Whether the set already holds a file with these exact bytes (under any name)."""
        found = self.client.curation.FindEntries(
            pb.FindEntriesRequest(
                set=self.set_name,
                signal=pb.SignalValue(signal_type="sha256", value=sha256_hex),
            ),
            metadata=self.client.metadata,
        )
        return bool(found.entries)


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m"


class Progress:
    """`done/total, rate, ETA` on one line of stderr, when someone watches."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total = total
        self.enabled = enabled
        self.done = 0
        self.started = time.monotonic()
        self._lock = threading.Lock()
        self._last_draw = 0.0

    def step(self) -> None:
        with self._lock:
            self.done += 1
            now = time.monotonic()
            if self.enabled and (now - self._last_draw > 0.2 or self.done == self.total):
                self._last_draw = now
                rate = self.done / max(now - self.started, 1e-6)
                eta = (self.total - self.done) / rate if rate else 0
                sys.stderr.write(
                    f"\r{self.done}/{self.total} files  {rate:.1f}/s  ETA {_duration(eta)}   "
                )
                sys.stderr.flush()

    def clear(self) -> None:
        """Clears the progress line so that a message can be written on stderr
        (the next step draws it again)."""
        with self._lock:
            if self.enabled and self._last_draw:
                sys.stderr.write("\r\x1b[K")
                self._last_draw = 0.0

    def finish(self) -> None:
        if self.enabled and self.total:
            sys.stderr.write("\n")


def run_parallel(
    items: list, work: Callable, report: Callable, workers: int, progress: Progress
) -> None:
    """work(item) in `workers` threads; report(item, result_or_exception) in
    order of completion, one at a time."""
    lock = threading.Lock()

    def one(item) -> None:
        try:
            result = work(item)
        except Exception as exc:  # noqa: BLE001 - handed to report()
            result = exc
        with lock:
            report(item, result)
        progress.step()

    with ThreadPoolExecutor(max(1, workers)) as pool:
        list(pool.map(one, items))
    progress.finish()
