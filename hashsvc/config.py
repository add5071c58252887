"""All settings in one object, with defaults; every limit is named here.

Read from a TOML file (`hashsvc serve --config FILE`), then overridden by
command-line flags. Unknown keys in the file are an error, so a typo in a limit
never silently leaves the default in force.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field

from hashsvc.media.audio import AudioLimits
from hashsvc.media.image import ImageLimits
from hashsvc.media.pdf import PdfLimits
from hashsvc.media.video import VideoLimits


@dataclass(frozen=True)
class PdqPolicy:
    # Meta's tools use 31 as the PDQ match threshold.
    block_distance: int = 31
    # bench/robustness.py: no unrelated photo came closer than 84 bits (21k
    # pairs, every transform); 56 keeps a margin of ~30 bits and raises recall
    # at review from 0.86 (at 50) to 0.88.
    review_distance: int = 56
    # Below this PDQ quality a hash is too flat to decide BLOCK on its own.
    quality_floor: int = 50


# hashsvc/multi_index.py REVIEW_SEARCHES (named here without importing it).
PDQ_REVIEW_SEARCHES = ("fast", "balanced", "thorough")


@dataclass(frozen=True)
class Config:
    listen: str = "127.0.0.1:50051"
    db_url: str = "sqlite:///hashsvc.db"
    # Hashing runs in worker processes; 0 means one per core.
    workers: int = 0
    # Hash each upload's two halves on two workers at once: p50 12.3 instead of
    # 13.5 ms for one client, but 113 instead of 136 req/s under load (each half
    # decodes the upload). Off by default: throughput matters more on 2 cores.
    split_query_hashing: bool = False
    # A hashing job past this is stopped (its worker killed and replaced).
    hash_timeout_seconds: float = 20.0
    # Address-space limit of each hashing worker: a decoder that balloons fails
    # that one request instead of taking the machine's memory. 0 = no limit.
    worker_memory_bytes: int = 2 * 1024 * 1024 * 1024
    # A hashing worker is replaced after this many jobs, returning the memory
    # a large decode left behind (bench/fuzz.py: 2 workers held 1.3 GB after
    # hostile videos). 0 = never. A replacement starts in ~1 s while the other
    # workers serve.
    worker_max_jobs: int = 2000
    # gRPC message limit; media larger than this is refused with RESOURCE_EXHAUSTED.
    max_message_bytes: int = 64 * 1024 * 1024
    max_batch_items: int = 1000
    # Requests per second per API token (each replica counts its own); 0 = off.
    rate_limit_per_second: float = 0.0
    rate_limit_burst: int = 0  # 0: one second's worth
    grpc_threads: int = 16
    # Streams (uploads, BulkLoad, MatchBatch, exports, reflection) hold a gRPC
    # thread each for as long as they are open: 16 idle ones stalled every RPC
    # and the health check (issue 16). At most max_streams at once, fewer than
    # grpc_threads, so unary calls and health always find a thread; past a cap a
    # new stream gets RESOURCE_EXHAUSTED at once.
    max_streams: int = 8
    max_streams_per_token: int = 4  # callers without a token (reflection) share one
    # A stream that sends no message for this long ends with DEADLINE_EXCEEDED
    # (the server's own work between messages, e.g. a batch's items in flight,
    # does not count); one still receiving after stream_max_seconds ends too
    # (a 2 GiB upload at 1 MB/s takes ~36 min). A unary call's message must
    # arrive within stream_idle_seconds too (else the call is cancelled).
    stream_idle_seconds: float = 30.0
    stream_max_seconds: float = 3600.0
    # Calls without a token (health checks) whose request message has not
    # arrived yet: at most this many hold a thread, a newer one cancels the
    # oldest (grpc waits for a message forever; headers only are enough).
    max_unread_anonymous_calls: int = 4
    # Server reflection (grpcurl and the like) needs no token: off unless asked for.
    reflection: bool = False
    # Review queue: a reviewer's claim on an item lasts this long.
    review_claim_seconds: float = 900.0
    # Flood protection: an entry matching more than this many uploads within
    # the window goes into quarantine (its BLOCKs become REVIEW until an
    # operator releases it). 0 turns it off.
    quarantine_matches: int = 200
    quarantine_window_seconds: float = 60.0
    image: ImageLimits = field(default_factory=ImageLimits)
    # Media larger than a gRPC message comes as a stream of chunks (MatchUpload,
    # AddEntryUpload), spooled to a temporary file that is deleted after hashing.
    max_upload_bytes: int = 2 * 1024 * 1024 * 1024
    # Where uploads are spooled; "" = the system's temporary directory.
    spool_dir: str = ""
    # Bytes all uploads of this replica may hold in the spool at once (6 idle
    # streams held 901 MB before this limit; 16 x 2 GiB were possible), and
    # uploads one token may have in flight. Past either: RESOURCE_EXHAUSTED.
    spool_max_bytes: int = 4 * 1024 * 1024 * 1024
    max_uploads_per_token: int = 4
    # Hashing a video, audio or PDF may take this long (images: hash_timeout_seconds).
    media_timeout_seconds: float = 600.0
    video: VideoLimits = field(default_factory=VideoLimits)
    audio: AudioLimits = field(default_factory=AudioLimits)
    pdf: PdfLimits = field(default_factory=PdfLimits)
    pdq: PdqPolicy = field(default_factory=PdqPolicy)
    # TLS: both set -> the server listens with TLS.
    tls_cert_file: str = ""
    tls_key_file: str = ""
    # Mutual TLS: set -> clients must present a certificate signed by this CA.
    tls_client_ca_file: str = ""
    # A secret file: the match history's hash chain becomes an HMAC under it,
    # so database access alone cannot forge a consistent history.
    history_key_file: str = ""
    # Prometheus metrics over HTTP at HOST:PORT/metrics; empty = off.
    metrics_listen: str = ""
    # Where the index snapshot lives; empty -> next to a SQLite file, or none.
    index_snapshot: str = ""
    # How often to look for changes made by other replicas (seconds).
    change_poll_seconds: float = 1.0
    # How often to refresh the index snapshot when something changed (seconds).
    snapshot_seconds: float = 300.0
    # How PDQ searches cover the review band (past 32 bits, where the index
    # cannot be exact): "fast", "balanced" or "thorough" (more of the band found
    # for more search time; hashsvc/multi_index.py, bench/scale.py).
    pdq_review_search: str = "balanced"

    def __post_init__(self) -> None:
        if self.pdq_review_search not in PDQ_REVIEW_SEARCHES:
            raise ValueError(f"pdq_review_search must be one of {', '.join(PDQ_REVIEW_SEARCHES)}")
        self._check_stream_limits()

    def _check_stream_limits(self) -> None:
        held = self.max_streams + self.max_unread_anonymous_calls
        if self.max_streams < 1 or held >= self.grpc_threads:
            raise ValueError(
                "max_streams must be at least 1 and max_streams + max_unread_anonymous_calls"
                f" less than grpc_threads ({held} >= {self.grpc_threads}): unary calls and"
                " the health check need threads that no stream can hold"
            )
        for name in (
            "max_streams_per_token",
            "max_uploads_per_token",
            "max_unread_anonymous_calls",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        for name in ("stream_idle_seconds", "stream_max_seconds"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be more than 0")
        if self.spool_max_bytes < self.max_upload_bytes:
            raise ValueError(
                f"spool_max_bytes ({self.spool_max_bytes}) must be at least max_upload_bytes"
                f" ({self.max_upload_bytes}): a largest upload must fit in the spool"
            )

    def history_key(self) -> bytes | None:
        if not self.history_key_file:
            return None
        with open(self.history_key_file, "rb") as f:
            key = f.read().strip()
        if len(key) < 16:
            raise ValueError(f"{self.history_key_file}: a history key needs at least 16 bytes")
        return key

    def worker_count(self) -> int:
        return self.workers if self.workers > 0 else (os.cpu_count() or 1)


def load_config(path: str | None = None, **overrides) -> Config:
    values: dict = {}
    if path:
        with open(path, "rb") as f:
            values = tomllib.load(f)
    values.update({k: v for k, v in overrides.items() if v is not None})
    return _build(Config, values, "config")


def _build(cls, values: dict, where: str):
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(values) - set(fields)
    if unknown:
        raise ValueError(f"unknown setting(s) in {where}: {', '.join(sorted(unknown))}")
    kwargs = {}
    for name, value in values.items():
        default = (
            fields[name].default_factory()
            if callable(fields[name].default_factory)
            else fields[name].default
        )
        if dataclasses.is_dataclass(default):
            if not isinstance(value, dict):
                raise ValueError(f"{where}.{name} must be a table")
            kwargs[name] = _build(type(default), value, f"{where}.{name}")
        else:
            kwargs[name] = value
    return cls(**kwargs)
