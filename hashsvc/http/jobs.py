"""Bulk loads over HTTP as jobs: the upload (a CSV/TSV/JSONL/HMA/TCAP hash list
in loaders/' formats) is spooled, answered at once with a job id, and loaded
on a thread of its own while the caller polls its progress. The load itself
is the gRPC BulkLoad's (Core.bulk_load: the same checks, batches and history
record); the spooled file is the job's until it ends, counted in the spool's
limits meanwhile. A job is seen only by the token that started it (and
admins); finished jobs are forgotten past http_jobs_kept."""

from __future__ import annotations

import contextvars
import io
import logging
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field

import loaders
from hashdb import TokenRecord
from hashsvc.base.errors import HashsvcError, InvalidArgument, NotFound, TooLarge, status_name
from hashsvc.core.auth import ADMIN
from hashsvc.core.bulk import BulkResult, PackedRows, RowBatch
from hashsvc.core.bulk_rows import RejectedRow
from hashsvc.core.core import Core
from hashsvc.http.views import bulk_result_json
from hashsvc.media.spool import SpooledMedia

log = logging.getLogger(__name__)

# Rows per batch (one store transaction), as `hashsvc load` sends them
# (hashsvc/client/cli_bulk.py BATCH_ROWS); a batch ends between entries.
BATCH_ROWS = 20_000
# Rejected rows a job lists (all are counted), as the gRPC answer's cap.
MAX_LISTED_REJECTS = 1_000
FORMATS = ("auto", "csv", "tsv", "jsonl", "hma", "tcap")


@dataclass
class BulkJob:
    id: str
    set: str
    owner_id: int
    strict: bool
    total_bytes: int
    state: str = "running"  # "running", "done", "failed"
    rows_read: int = 0
    bytes_read: int = 0
    started: float = field(default_factory=time.time)
    finished: float | None = None
    result: dict | None = None
    error: dict | None = None

    def json(self) -> dict:
        return {
            "job_id": self.id,
            "set": self.set,
            "state": self.state,
            "strict": self.strict,
            "rows_read": self.rows_read,
            "bytes_read": self.bytes_read,
            "total_bytes": self.total_bytes,
            "progress": round(self.bytes_read / self.total_bytes, 4) if self.total_bytes else 1.0,
            "result": self.result,
            "error": self.error,
        }


class BulkJobs:
    def __init__(self, core: Core, kept: int, running: int) -> None:
        self.core = core
        self.kept = kept
        self.running = threading.BoundedSemaphore(running)
        self.most_running = running
        self._jobs: OrderedDict[str, BulkJob] = OrderedDict()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def admit(self) -> None:
        """A slot for one more job, or RESOURCE_EXHAUSTED (before its upload is read)."""
        if not self.running.acquire(blocking=False):
            raise TooLarge(
                f"{self.most_running} bulk loads are running, the limit (http_jobs_running);"
                " retry later",
                limit="http_jobs_running",
            )

    def release_slot(self) -> None:
        self.running.release()

    def start(
        self, caller: TokenRecord, set_name: str, fmt: str, strict: bool, upload, media
    ) -> BulkJob:
        """Runs the load of `media` (a SpooledMedia held by the open spool
        context `upload`, closed when the job ends) on a thread; admit() first."""
        job = BulkJob(secrets.token_hex(12), set_name, caller.id, strict, media.size)
        with self._lock:
            self._jobs[job.id] = job
            self._forget_old()
        context = contextvars.copy_context()  # the caller's identity for the history
        thread = threading.Thread(
            target=context.run,
            args=(self._run, job, caller.name, fmt, upload, media),
            daemon=True,
            name=f"bulk-{job.id[:6]}",
        )
        self._threads = [t for t in self._threads if t.is_alive()] + [thread]
        thread.start()
        return job

    def get(self, job_id: str, caller: TokenRecord) -> BulkJob:
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None or (job.owner_id != caller.id and caller.role != ADMIN):
            raise NotFound(f"no bulk-load job {job_id[:40]!r}")
        return job

    def wait(self, seconds: float) -> None:
        for thread in list(self._threads):
            thread.join(timeout=seconds)

    def _forget_old(self) -> None:
        finished = [j.id for j in self._jobs.values() if j.state != "running"]
        for job_id in finished[: max(0, len(finished) - self.kept)]:
            del self._jobs[job_id]

    def _run(self, job: BulkJob, caller: str, fmt: str, upload, media: SpooledMedia) -> None:
        rejected: list[RejectedRow] = []
        counted = [0]
        try:
            with open(media.path, "rb") as raw:
                text = io.TextIOWrapper(raw, encoding="utf-8-sig", newline="")
                batches = self._batches(job, text, raw, fmt, rejected, counted)
                if job.strict:  # nothing is written when a row is bad
                    batches = list(batches)
                if job.strict and counted[0]:
                    result = BulkResult(written=False)
                else:
                    result = self.core.bulk_load(job.set, caller, batches, job.strict)
            job.result = _with_rejects(result, rejected, counted[0])
            job.state = "done"
        except HashsvcError as exc:
            job.error = {"code": status_name(exc), "message": str(exc)[:1000]}
            job.state = "failed"
        except Exception:
            log.exception("bulk-load job %s failed", job.id)
            job.error = {"code": "INTERNAL", "message": "internal error (logged on the server)"}
            job.state = "failed"
        finally:
            job.finished = time.time()
            job.bytes_read = job.total_bytes if job.state == "done" else job.bytes_read
            upload.__exit__(None, None, None)  # the spooled file is deleted
            self.running.release()

    def _batches(
        self, job: BulkJob, text, raw, fmt: str, rejected: list, counted: list[int]
    ) -> Iterator[RowBatch | PackedRows]:
        source = f"upload:{job.id[:6]}"
        batch: list = []
        try:
            for item in loaders.read_blocks(text, fmt, source, BATCH_ROWS):
                job.bytes_read = min(raw.tell(), job.total_bytes)
                if isinstance(item, loaders.Rejected):
                    counted[0] += 1
                    if len(rejected) < MAX_LISTED_REJECTS:
                        rejected.append(RejectedRow(source, item.line, item.reason))
                    continue
                if isinstance(item, loaders.PlainRows):
                    if batch:
                        yield RowBatch.from_records(batch, source)
                        batch = []
                    job.rows_read += len(item)
                    yield PackedRows.of_plain(item, source)
                    continue
                if len(batch) >= BATCH_ROWS and item.entry_name != batch[-1].entry_name:
                    yield RowBatch.from_records(batch, source)
                    batch = []
                batch.append(item)
                job.rows_read += 1
        except UnicodeDecodeError:
            raise InvalidArgument("the hash list is not UTF-8 text") from None
        if batch:
            yield RowBatch.from_records(batch, source)


def _with_rejects(result: BulkResult, rejected: list[RejectedRow], count: int) -> dict:
    """The load's answer with the rows the file's reader rejected first."""
    out = bulk_result_json(result)
    listed = [{"source": r.source, "line": r.line, "reason": r.reason} for r in rejected]
    out["rejected"] = (listed + out["rejected"])[:MAX_LISTED_REJECTS]
    out["rejected_count"] += count
    out["rows"] += count
    return out
