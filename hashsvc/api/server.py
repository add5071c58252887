"""Wiring: config -> core -> gRPC server with auth, stream limits, health and
(when configured) reflection."""

from __future__ import annotations

import errno
import functools
import gc
import logging
import os
import signal
import socket
import sys
import threading
from concurrent import futures
from dataclasses import dataclass, field

import faiss
import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from hashdb import safe_url
from hashsvc.api import reflection
from hashsvc.api.exchange_servicer import ExchangeServicer
from hashsvc.api.interceptors import Access, CallMetrics, Limits
from hashsvc.api.metrics import Metrics
from hashsvc.api.retro_servicer import RetroServicer
from hashsvc.api.servicers import (
    AdminServicer,
    AuditServicer,
    CurationServicer,
    EventsServicer,
    MatcherServicer,
    ReviewServicer,
)
from hashsvc.api.streams import StreamLimiter, UnreadCalls
from hashsvc.base.addresses import is_loopback
from hashsvc.core.auth import RateLimiter
from hashsvc.core.config import Config, new_spool
from hashsvc.core.core import Core
from hashsvc.core.sign_in_limits import SignInLimits
from hashsvc.exchange.feeds import Feeds
from hashsvc.media.spool import Spool
from hashsvc.v1 import hashsvc_pb2 as pb
from hashsvc.v1 import hashsvc_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

# How often health is brought in line with the index's readiness.
_HEALTH_FOLLOW_SECONDS = 0.2
# A failed index load is retried after 1 s, doubling up to this.
_LOAD_RETRY_MAX_SECONDS = 30.0

SERVICE_NAMES = [
    pb.DESCRIPTOR.services_by_name[n].full_name for n in pb.DESCRIPTOR.services_by_name
]


class StartupError(OSError):
    """The server cannot start as configured (its message says why, in one line)."""


@dataclass
class RunningServer:
    server: grpc.Server
    port: int
    core: Core
    health: health.HealthServicer
    metrics: Metrics
    metrics_port: int = 0
    loader: threading.Thread | None = None  # the index load, when started in the background
    stopping: threading.Event = field(default_factory=threading.Event)
    streams: StreamLimiter | None = None  # streams open now, within max_streams
    subscribers: StreamLimiter | None = None  # Events/Subscribe's own pool
    spool: Spool | None = None  # uploads waiting for hashing, within spool_max_bytes
    unread: UnreadCalls | None = None  # calls whose request message has not arrived
    limiter: RateLimiter | None = None  # requests per token; the HTTP API shares it
    feeds: Feeds | None = None  # partner feeds and their background fetcher
    # failed authentications per client address; the HTTP API shares it
    sign_ins: SignInLimits | None = None
    # the GIL switch interval this server holds for the process (0: none)
    gil_switch_seconds: float = 0.0

    def stop(self, grace: float = 5.0) -> None:
        try:
            self.stopping.set()  # the health follower first: it must not say SERVING again
            self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
            self.server.stop(grace).wait()
            if self.feeds is not None:
                self.feeds.stop()
            if self.unread is not None:
                self.unread.close()
            self.metrics.stop()
            if self.loader is not None:
                # Stopped while starting: let the start-up finish first, rather
                # than close the store and workers under it.
                self.loader.join(timeout=120)
            self.core.close()
        finally:
            held, self.gil_switch_seconds = self.gil_switch_seconds, 0.0  # once, if stopped twice
            _release_switch_interval(held)

    def _set_health(self, status) -> None:
        self.health.set("", status)
        for name in SERVICE_NAMES:
            self.health.set(name, status)

    def follow_readiness(self) -> None:
        """Health follows Core.ready() (an index that lost its store or fell
        behind stops serving, and serves again once caught up); matching
        itself checks readiness on every call, this is for load balancers."""
        serving = True
        while not self.stopping.wait(_HEALTH_FOLLOW_SECONDS):
            ready = self.core.ready()
            if ready != serving and not self.stopping.is_set():
                serving = ready
                if ready:
                    self._set_health(health_pb2.HealthCheckResponse.SERVING)
                    log.warning("serving again: the index has caught up")
                else:
                    self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
                    log.error("NOT_SERVING: %s", self.core.not_ready_reason())


def start_server(
    config: Config, hash_in_process: bool = False, block_until_ready=True
) -> RunningServer:
    """Starts serving at once (health NOT_SERVING) and loads the index; the
    server reports SERVING only when the index is loaded and current."""
    # Each gRPC thread searches on its own: FAISS's OpenMP threads on top of
    # concurrent requests made flat searches many times slower under load
    # (bench/scale.py). One thread per search: here for this thread, and in
    # each gRPC thread as it starts (the setting is per thread).
    faiss.omp_set_num_threads(1)
    # Match waits for the GIL at each round trip (Config.gil_switch_seconds)
    _hold_switch_interval(config.gil_switch_seconds)
    try:
        # Before anything starts: a port in use is the commonest first-day mistake.
        _check_can_listen(config.listen)
        try:
            core = Core.open(config, hash_in_process=hash_in_process)
        except (ValueError, OSError) as exc:  # a store URL or key file that cannot be used
            raise StartupError(str(exc)) from None
        try:
            running = _start(config, core, block_until_ready)
        except BaseException:
            core.close()  # its hashing workers and store, whatever failed
            raise
    except BaseException:
        _release_switch_interval(config.gil_switch_seconds)
        raise
    running.gil_switch_seconds = config.gil_switch_seconds  # given back by stop()
    return running


# sys.setswitchinterval is the whole process's, not this server's: a process
# that runs servers among other work (tests, an embedding program) gets its
# own interval back when the last of them stops, and servers running side by
# side keep the shortest any of them asked for.
_switch_lock = threading.Lock()
_switch_held: list[float] = []  # the settings of the servers running now
_switch_before = 0.0  # the process's interval before the first of them


def _hold_switch_interval(seconds: float) -> None:
    global _switch_before
    if not seconds:  # 0: the process's interval left as it is
        return
    with _switch_lock:
        if not _switch_held:
            _switch_before = sys.getswitchinterval()
        _switch_held.append(seconds)
        sys.setswitchinterval(min(_switch_held))


def _release_switch_interval(seconds: float) -> None:
    if not seconds:
        return
    with _switch_lock:
        _switch_held.remove(seconds)
        # (an interval under 1 us reads back as 0, which cannot be set again)
        sys.setswitchinterval(min(_switch_held) if _switch_held else max(_switch_before, 1e-6))


def _start(config: Config, core: Core, block_until_ready: bool) -> RunningServer:
    metrics = Metrics(core)
    core.on_match = metrics.observe_match
    core.on_flood_alert = metrics.observe_flood_alert
    options = [
        ("grpc.max_receive_message_length", config.max_message_bytes),
        ("grpc.max_send_message_length", config.max_message_bytes),
        # grpc sets SO_REUSEPORT by default: a second server on the same port
        # then starts without error and the kernel splits the connections
        # between the two (issue 16: 3 of 8 calls reached the wrong store).
        ("grpc.so_reuseport", 0),
    ]
    limiter = RateLimiter(config.rate_limit_per_second, config.rate_limit_burst)
    sign_ins = SignInLimits(
        config.console.sign_in_failures_per_minute, config.console.sign_in_tracked_addresses
    )
    streams = StreamLimiter.from_config(config)
    # Events/Subscribe: long, mostly idle streams, in a pool of their own
    subscribers = StreamLimiter(
        config.events.max_subscribers,
        config.events.max_subscribers_per_token,
        config.stream_idle_seconds,
        config.stream_max_seconds,
        limit_keys=("events.max_subscribers", "events.max_subscribers_per_token"),
    )
    spool = new_spool(config)  # one budget for MatchUpload and AddEntryUpload
    unread = UnreadCalls(
        config.stream_idle_seconds,
        config.max_unread_anonymous_calls,
        config.max_unread_calls_per_token,
        config.max_unread_token_calls,
        config.unread_grace_seconds,
    )
    server = grpc.server(
        # OpenMP's thread count is per thread: the call above set only this one's
        futures.ThreadPoolExecutor(
            config.grpc_threads,
            thread_name_prefix="grpc",
            initializer=faiss.omp_set_num_threads,
            initargs=(1,),
        ),
        interceptors=[
            # in this order (interceptors.py says why): metrics see every
            # call's final status; a call without a valid token is refused
            # before its message is read or it holds a stream slot
            CallMetrics(metrics.observe_rpc),
            Access(core.store, sign_ins),
            Limits(
                limiter,
                streams=streams,
                subscribers=subscribers,
                unread=unread,
                record_refused_match=lambda rpc, record, exc: core.record_failed_match(
                    rpc, record.name, exc, caller_token_id=record.id
                ),
            ),
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
    pb_grpc.add_EventsServicer_to_server(EventsServicer(core), server)
    pb_grpc.add_RetroServicer_to_server(RetroServicer(core), server)
    # this replica's name in feed leases: unique per process
    feeds = Feeds(core, config.exchange, f"{socket.gethostname()}:{os.getpid()}:{id(core):x}")
    feeds.on_fetch = metrics.observe_feed_fetch
    core.review.on_resolved = feeds.review_resolved
    pb_grpc.add_ExchangeServicer_to_server(ExchangeServicer(feeds), server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if config.reflection:  # off by default: anyone may call it, no token needed
        # grpc.reflection.v1 and v1alpha
        reflection.enable([*SERVICE_NAMES, health.SERVICE_NAME], server)
    port = _bind(server, config)
    if warning := plaintext_warning(config):
        log.warning(warning)
    running = RunningServer(
        server, port, core, health_servicer, metrics, streams=streams, spool=spool, unread=unread,
        limiter=limiter, feeds=feeds, sign_ins=sign_ins, subscribers=subscribers,
    )  # fmt: skip
    if config.metrics_listen:
        try:
            running.metrics_port = metrics.serve(config.metrics_listen)
        except OSError as exc:
            server.stop(0)
            raise StartupError(f"cannot serve metrics on {config.metrics_listen}: {exc}") from None
    running._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
    server.start()

    def load(retry: bool) -> None:
        # In the background a store that is down while the index loads is
        # retried (matching answers UNAVAILABLE meanwhile), not left
        # NOT_SERVING for good; a blocking start raises.
        retry_seconds = 1.0
        while True:
            try:
                core.start()
                break
            except Exception:
                if core.stopping or running.stopping.is_set():  # SIGTERM during start-up
                    log.info("stopped before the index was loaded")
                    return
                if not retry:
                    raise
                log.exception(
                    "loading the index failed; NOT_SERVING, retrying in %g s", retry_seconds
                )
            if running.stopping.wait(retry_seconds):
                return
            retry_seconds = min(retry_seconds * 2, _LOAD_RETRY_MAX_SECONDS)
        # What start-up made (modules, the loaded index) lives as long as the
        # server: frozen, a full garbage collection no longer walks it (one
        # took 63 ms, a pause of every Match, during a bulk load).
        gc.collect()
        gc.freeze()
        if running.stopping.is_set():
            return
        running._set_health(health_pb2.HealthCheckResponse.SERVING)
        log.info("ready on port %d; index %s", port, core.live.sizes())
        feeds.start()  # fetched rows go through the index: it is loaded now
        threading.Thread(target=running.follow_readiness, daemon=True, name="health").start()

    if block_until_ready:
        try:
            load(retry=False)
        except BaseException:
            running.stopping.set()
            server.stop(0).wait()
            metrics.stop()
            raise  # start_server closes the core
    else:
        running.loader = threading.Thread(target=load, args=(True,), daemon=True, name="index-load")
        running.loader.start()
    return running


def _bind(server: grpc.Server, config: Config) -> int:
    if config.tls_cert_file:  # with tls_key_file: Config checked both are set
        key, cert = _read_tls(config.tls_key_file), _read_tls(config.tls_cert_file)
        client_ca = _read_tls(config.tls_client_ca_file) if config.tls_client_ca_file else None
        credentials = grpc.ssl_server_credentials(
            [(key, cert)],
            root_certificates=client_ca,
            require_client_auth=client_ca is not None,
        )
        add_port = functools.partial(server.add_secure_port, config.listen, credentials)
    else:
        add_port = functools.partial(server.add_insecure_port, config.listen)
    try:
        port = add_port()
    except RuntimeError:  # grpc's "Failed to bind" (older versions return 0)
        port = 0
    if port == 0:
        _check_can_listen(config.listen)  # names the reason when it can
        raise StartupError(f"cannot listen on {config.listen}")
    return port


def _read_tls(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise StartupError(f"cannot read TLS file {path}: {exc.strerror}") from None


def plaintext_warning(config: Config) -> str:
    """The warning to log when allow_insecure lets the server listen in
    plaintext beyond loopback; "" when there is nothing to warn about."""
    if config.tls_cert_file or is_loopback(config.listen):
        return ""
    return (
        f"PLAINTEXT on {config.listen} (allow_insecure = true): API tokens, uploads and "
        "match results cross the network unencrypted; use TLS unless a TLS-terminating "
        "proxy or a private network protects every hop"
    )


def _check_can_listen(listen: str) -> None:
    """Raises StartupError naming why `listen` (HOST:PORT) cannot be bound, if
    it cannot: tried with a plain socket, as grpc binds it (SO_REUSEADDR, no
    SO_REUSEPORT), and closed at once."""
    if listen.startswith("unix"):
        return  # a socket file: grpc reports its own errors
    host, _, port_text = listen.rpartition(":")
    host = host.strip("[]")
    try:
        port = int(port_text)
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except (ValueError, OSError) as exc:
        raise StartupError(f"cannot listen on {listen}: not a HOST:PORT address ({exc})") from None
    if port == 0:
        return  # any free port
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise StartupError(
                        f"cannot listen on {listen}: the address is already in use "
                        "(another hashsvc serve, or another program, listens there)"
                    ) from None
                raise StartupError(f"cannot listen on {listen}: {exc.strerror}") from None


def serve_forever(config: Config, companions=()) -> None:
    """Serves until SIGTERM or SIGINT. `companions`: callables given the
    running server, each starting a server beside it over the same core (the
    HTTP API) and returning what has a .stop(), stopped first."""
    # Handlers first: a SIGTERM that arrives while starting still stops cleanly.
    stop = threading.Event()

    def on_signal(signum, frame):
        log.info("signal %d: stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    running = start_server(config, block_until_ready=False)
    beside = []
    try:
        beside = [start(running) for start in companions]
    except BaseException:
        for server in beside:
            server.stop()
        running.stop()
        raise
    if not running.core.store.list_tokens():
        log.warning(
            "no API tokens yet: create one with `hashsvc token create --role admin --db %s`",
            safe_url(config.db_url),
        )
    log.info(
        "hashsvc listening on %s (port %d), store %s",
        config.listen,
        running.port,
        safe_url(config.db_url),
    )
    # Wake up now and then: a signal delivered to another thread only runs
    # its Python handler when the main thread next executes bytecode.
    while not stop.wait(0.5):
        pass
    for server in beside:
        server.stop()
    running.stop()
