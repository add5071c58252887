"""Hash lists loaded from the console: the uploaded file is copied to the
spool directory and loaded by a thread (core.bulk_load, as BulkLoad does);
its page polls the job's progress (bytes read) and shows the rejected rows by
line. A job is visible only to the token that started it. A token may have
max_jobs_per_token loads running at once, so one caller cannot take every
slot; at most max_jobs are kept in all (the oldest finished one goes first;
all running: refused)."""

from __future__ import annotations

import contextvars
import io
import secrets
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field

import loaders
from hashsvc.base.errors import HashsvcError, InvalidArgument, TooLarge, status_name
from hashsvc.core.bulk import PackedRows, RowBatch
from hashsvc.core.core import Core

BATCH_ROWS = 5_000


@dataclass
class LoadJob:
    id: str
    set_name: str
    source: str
    owner_token_id: int
    total_bytes: int
    read_bytes: int = 0
    rows: int = 0
    done: bool = False
    error: str = ""
    result: dict = field(default_factory=dict)
    rejected: list[tuple[int, str]] = field(default_factory=list)  # (line, reason)
    rejected_count: int = 0

    def progress(self) -> dict:
        return {
            "done": self.done,
            "read_bytes": self.read_bytes,
            "total_bytes": self.total_bytes,
            "rows": self.rows,
            "error": self.error,
            "result": self.result,
            "rejected_count": self.rejected_count,
            "rejected": [{"line": line, "reason": reason} for line, reason in self.rejected],
        }


class LoadJobs:
    def __init__(
        self, core: Core, max_jobs: int, max_jobs_per_token: int, shown_rejected: int
    ) -> None:
        self.core = core
        self.max_jobs = max_jobs
        self.max_jobs_per_token = max_jobs_per_token
        self.shown_rejected = shown_rejected
        self._jobs: OrderedDict[str, LoadJob] = OrderedDict()
        self._lock = threading.Lock()

    def start(
        self, set_name: str, upload, source: str, fmt: str, strict: bool, caller: str, token_id: int
    ) -> LoadJob:
        """Copies `upload` (a file object) to the spool directory and loads it."""
        with self._lock:
            self._make_room(token_id)
            # the slot is taken before the copy: concurrent starts count it
            job = LoadJob(secrets.token_urlsafe(12), set_name, source, token_id, 0)
            self._jobs[job.id] = job
        spool = None
        try:
            spool = tempfile.TemporaryFile(dir=self.core.config.spool_dir or None)
            job.total_bytes = _copy(upload, spool)
        except BaseException:
            if spool is not None:
                spool.close()
            with self._lock:
                self._jobs.pop(job.id, None)
            raise
        spool.seek(0)
        context = contextvars.copy_context()  # the caller's token id for the history
        threading.Thread(
            target=context.run,
            args=(self._run, job, spool, fmt, strict, caller),
            daemon=True,
            name="console-load",
        ).start()
        return job

    def _make_room(self, token_id: int) -> None:
        """Under the lock: refuses a token at its running limit, or everyone
        when max_jobs are running; else forgets the oldest finished job if
        max_jobs are kept."""
        running = sum(1 for j in self._jobs.values() if j.owner_token_id == token_id and not j.done)
        if running >= self.max_jobs_per_token:
            raise TooLarge(
                f"you have {running} loads running (at most {self.max_jobs_per_token} a token);"
                " retry when one has finished",
                limit="console max_load_jobs_per_token",
            )
        if len(self._jobs) >= self.max_jobs:
            finished = next((k for k, j in self._jobs.items() if j.done), None)
            if finished is None:
                raise TooLarge(
                    f"{self.max_jobs} loads are running; retry when one has finished",
                    limit="console max_load_jobs",
                )
            del self._jobs[finished]

    def get(self, job_id: str, token_id: int) -> LoadJob | None:
        with self._lock:
            job = self._jobs.get(job_id)
        return job if job is not None and job.owner_token_id == token_id else None

    def _run(self, job: LoadJob, spool, fmt: str, strict: bool, caller: str) -> None:
        try:
            text = io.TextIOWrapper(spool, encoding="utf-8-sig", newline="", errors="strict")
            result = self.core.bulk_load(
                job.set_name, caller, self._batches(job, text, fmt, strict), strict
            )
            # the readers' rejections (counted as read) and the core's
            for row in result.rejected:
                if len(job.rejected) < self.shown_rejected:
                    job.rejected.append((row.line, row.reason))
            job.rejected.sort()
            job.rejected_count += result.rejected_count
            job.result = {
                "rows": result.rows,
                "added": result.added,
                "updated": result.updated,
                "removed": result.removed,
                "unchanged": result.unchanged,
                "rejected": job.rejected_count,
                "written": result.written,
            }
        except HashsvcError as exc:
            job.error = f"{status_name(exc)}: {exc}"
        except UnicodeDecodeError:
            job.error = "INVALID_ARGUMENT: the file is not UTF-8 text"
        except Exception:  # noqa: BLE001 - shown on the job's page, logged by the core
            job.error = "INTERNAL: the load failed (logged on the server)"
        finally:
            job.read_bytes = job.total_bytes if not job.error else job.read_bytes
            job.done = True
            spool.close()

    def _batches(
        self, job: LoadJob, text, fmt: str, strict: bool
    ) -> Iterator[RowBatch | PackedRows]:
        raw = text.buffer

        def lines():
            for line in text:
                job.read_bytes = raw.tell()
                yield line

        records: list = []
        for item in loaders.read_blocks(lines(), fmt, job.source, BATCH_ROWS):
            if isinstance(item, loaders.Rejected):
                self._reject(job, item.line, item.reason)
                continue
            if isinstance(item, loaders.PlainRows):
                if records:
                    yield RowBatch.from_records(records, job.source)
                    records = []
                job.rows += len(item)
                yield PackedRows.of_plain(item, job.source)
                continue
            # an entry's rows stay in one batch (a video's frames)
            if len(records) >= BATCH_ROWS and item.entry_name != records[-1].entry_name:
                yield RowBatch.from_records(records, job.source)
                records = []
            records.append(item)
            job.rows += 1
        if records:
            yield RowBatch.from_records(records, job.source)
        if strict and job.rejected_count:
            # raised before a strict load writes anything (it writes at the end)
            raise InvalidArgument(
                f"{job.rejected_count} rows are bad; a strict load writes nothing then"
            )

    def _reject(self, job: LoadJob, line: int, reason: str) -> None:
        job.rejected_count += 1
        if len(job.rejected) < self.shown_rejected:
            job.rejected.append((line, reason))


def _copy(upload, spool, chunk: int = 1024 * 1024) -> int:
    size = 0
    while True:
        data = upload.read(chunk)
        if not data:
            return size
        spool.write(data)
        size += len(data)
