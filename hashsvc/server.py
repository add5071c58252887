"""Wiring: config -> core -> gRPC server with auth, stream limits, health and
(when configured) reflection."""

from __future__ import annotations

import gc
import logging
import signal
import threading
from concurrent import futures
from dataclasses import dataclass

import faiss
import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from hashsvc.auth import RateLimiter
from hashsvc.config import Config
from hashsvc.core import Core
from hashsvc.metrics import Metrics
from hashsvc.service import (
    AdminServicer,
    AuditServicer,
    AuthInterceptor,
    CurationServicer,
    MatcherServicer,
    ReviewServicer,
)
from hashsvc.streams import StreamLimiter, UnreadCalls
from hashsvc.uploads import Spool
from hashsvc.v1 import hashsvc_pb2 as pb
from hashsvc.v1 import hashsvc_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

SERVICE_NAMES = [
    pb.DESCRIPTOR.services_by_name[n].full_name for n in pb.DESCRIPTOR.services_by_name
]


@dataclass
class RunningServer:
    server: grpc.Server
    port: int
    core: Core
    health: health.HealthServicer
    metrics: Metrics
    metrics_port: int = 0
    loader: threading.Thread | None = None  # the index load, when started in the background
    streams: StreamLimiter | None = None  # streams open now, within max_streams
    spool: Spool | None = None  # uploads waiting for hashing, within spool_max_bytes
    unread: UnreadCalls | None = None  # calls whose request message has not arrived

    def stop(self, grace: float = 5.0) -> None:
        self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        self.server.stop(grace).wait()
        if self.unread is not None:
            self.unread.close()
        self.metrics.stop()
        if self.loader is not None:
            # Stopped while starting: let the start-up finish first, rather
            # than close the store and workers under it.
            self.loader.join(timeout=120)
        self.core.close()

    def _set_health(self, status) -> None:
        self.health.set("", status)
        for name in SERVICE_NAMES:
            self.health.set(name, status)


def start_server(
    config: Config, hash_in_process: bool = False, block_until_ready=True
) -> RunningServer:
    """Starts serving at once (health NOT_SERVING) and loads the index; the
    server reports SERVING only when the index is loaded and current."""
    # Each gRPC thread searches on its own: FAISS's OpenMP threads on top of
    # concurrent requests made flat searches many times slower under load
    # (bench/scale.py). One thread per search.
    faiss.omp_set_num_threads(1)
    core = Core.open(config, hash_in_process=hash_in_process)
    metrics = Metrics(core)
    core.on_match = metrics.observe_match
    options = [
        ("grpc.max_receive_message_length", config.max_message_bytes),
        ("grpc.max_send_message_length", config.max_message_bytes),
    ]
    limiter = RateLimiter(config.rate_limit_per_second, config.rate_limit_burst)
    streams = StreamLimiter.from_config(config)
    spool = Spool.from_config(config)  # one budget for MatchUpload and AddEntryUpload
    unread = UnreadCalls(config.stream_idle_seconds, config.max_unread_anonymous_calls)
    server = grpc.server(
        futures.ThreadPoolExecutor(config.grpc_threads, thread_name_prefix="grpc"),
        interceptors=[
            AuthInterceptor(
                core.store,
                limiter,
                observe_rpc=metrics.observe_rpc,
                streams=streams,
                unread=unread,
            )
        ],
        options=options,
    )
    matcher = MatcherServicer(
        core, batch_threads=max(2, config.worker_count() * 2), limiter=limiter, spool=spool
    )
    pb_grpc.add_MatcherServicer_to_server(matcher, server)
    pb_grpc.add_CurationServicer_to_server(CurationServicer(core, spool=spool), server)
    pb_grpc.add_AuditServicer_to_server(AuditServicer(core), server)
    pb_grpc.add_ReviewServicer_to_server(ReviewServicer(core), server)
    pb_grpc.add_AdminServicer_to_server(AdminServicer(core), server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if config.reflection:  # off by default: anyone may call it, no token needed
        reflection.enable_server_reflection(
            [*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME], server
        )
    port = _bind(server, config)
    running = RunningServer(
        server, port, core, health_servicer, metrics, streams=streams, spool=spool, unread=unread
    )
    if config.metrics_listen:
        running.metrics_port = metrics.serve(config.metrics_listen)
    running._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
    server.start()

    def load() -> None:
        try:
            core.start()
        except Exception:
            if core.stopping:  # SIGTERM during start-up: nothing went wrong
                log.info("stopped before the index was loaded")
                return
            log.exception("loading the index failed; the server stays NOT_SERVING")
            return
        # What start-up made (modules, the loaded index) lives as long as the
        # server: frozen, a full garbage collection no longer walks it (one
        # took 63 ms, a pause of every Match, during a bulk load).
        gc.collect()
        gc.freeze()
        running._set_health(health_pb2.HealthCheckResponse.SERVING)
        log.info("ready on port %d; index %s", port, core.live.sizes())

    if block_until_ready:
        load()
    else:
        running.loader = threading.Thread(target=load, daemon=True, name="index-load")
        running.loader.start()
    return running


def _bind(server: grpc.Server, config: Config) -> int:
    if config.tls_cert_file or config.tls_key_file:
        if not (config.tls_cert_file and config.tls_key_file):
            raise ValueError("TLS needs both tls_cert_file and tls_key_file")
        with open(config.tls_key_file, "rb") as f:
            key = f.read()
        with open(config.tls_cert_file, "rb") as f:
            cert = f.read()
        client_ca = None
        if config.tls_client_ca_file:
            with open(config.tls_client_ca_file, "rb") as f:
                client_ca = f.read()
        credentials = grpc.ssl_server_credentials(
            [(key, cert)],
            root_certificates=client_ca,
            require_client_auth=client_ca is not None,
        )
        port = server.add_secure_port(config.listen, credentials)
    else:
        port = server.add_insecure_port(config.listen)
    if port == 0:
        raise OSError(f"could not listen on {config.listen}")
    return port


def serve_forever(config: Config) -> None:
    # Handlers first: a SIGTERM that arrives while starting still stops cleanly.
    stop = threading.Event()

    def on_signal(signum, frame):
        log.info("signal %d: stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    running = start_server(config, block_until_ready=False)
    if not running.core.store.list_tokens():
        log.warning(
            "no API tokens yet: create one with `hashsvc token create --role admin --db %s`",
            _safe_url(config.db_url),
        )
    log.info(
        "hashsvc listening on %s (port %d), store %s",
        config.listen,
        running.port,
        _safe_url(config.db_url),
    )
    # Wake up now and then: a signal delivered to another thread only runs
    # its Python handler when the main thread next executes bytecode.
    while not stop.wait(0.5):
        pass
    running.stop()


def _safe_url(url: str) -> str:
    # Never log a password embedded in a database URL.
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url
