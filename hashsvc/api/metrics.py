"""Prometheus metrics: request latency per RPC, decisions per media type,
matches per set, flood alerts, index size and version, webhooks. One registry
per server, so several servers in one process (tests) do not mix their figures."""

from __future__ import annotations

import logging
import time

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from hashsvc.core.core import Core, MatchOutcome

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30)


class Metrics:
    def __init__(self, core: Core) -> None:
        self.registry = CollectorRegistry()
        self.rpc_seconds = Histogram(
            "hashsvc_rpc_duration_seconds",
            "Time to answer an RPC, by method and status code.",
            ["rpc", "code"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.decisions = Counter(
            "hashsvc_match_decisions",
            "Match decisions, by media type and decision.",
            ["media_type", "decision"],
            registry=self.registry,
        )
        self.matches = Counter(
            "hashsvc_matches",
            "Matched known entries, by hash set and decision.",
            ["set", "decision"],
            registry=self.registry,
        )
        self.flood_alerts = Counter(
            "hashsvc_flood_alerts",
            "Flood alerts this replica raised (an entry matching more uploads than"
            " quarantine_matches within quarantine_window_seconds), by hash set.",
            ["set"],
            registry=self.registry,
        )
        self.feed_fetches = Counter(
            "hashsvc_feed_fetches",
            "Partner feed fetches this replica ran, by feed and result (ok, failed).",
            ["feed", "result"],
            registry=self.registry,
        )
        self.feed_hashes = Counter(
            "hashsvc_feed_hashes",
            "Entries partner feeds changed, by feed and change (added, updated, deleted,"
            " skipped, rejected).",
            ["feed", "change"],
            registry=self.registry,
        )
        self.feed_deletions_refused = Counter(
            "hashsvc_feed_deletions_refused",
            "Deletions partner feeds sent that were refused, none applied: past"
            " exchange.max_delete_fraction or snapshot_max_delete_fraction of the feed"
            " within exchange.delete_window_seconds.",
            ["feed"],
            registry=self.registry,
        )
        self.registry.register(_IndexCollector(core))
        self.registry.register(_WebhookCollector(core))
        self._http = None

    def observe_rpc(self, rpc: str, code: str, started: float) -> None:
        self.rpc_seconds.labels(rpc, code).observe(time.perf_counter() - started)

    def observe_match(self, outcome: MatchOutcome) -> None:
        self.decisions.labels(outcome.media_type, outcome.decision).inc()
        for match in outcome.matches:
            self.matches.labels(match.set_name, match.decision).inc()

    def observe_flood_alert(self, set_name: str) -> None:
        self.flood_alerts.labels(set_name).inc()

    def observe_feed_fetch(self, result) -> None:
        self.feed_fetches.labels(result.feed, "failed" if result.error else "ok").inc()
        for change in ("added", "updated", "deleted", "skipped", "rejected"):
            self.feed_hashes.labels(result.feed, change).inc(getattr(result, change))
        if result.deletions_refused:
            self.feed_deletions_refused.labels(result.feed).inc(result.deletions_refused)

    def serve(self, listen: str) -> int:
        """Serves /metrics over HTTP on HOST:PORT (port 0: any free port)."""
        host, _, port = listen.rpartition(":")
        self._http, _ = start_http_server(int(port), host or "0.0.0.0", registry=self.registry)
        return self._http.server_port

    def stop(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()


class _IndexCollector:
    """Index size and version, read at scrape time."""

    def __init__(self, core: Core) -> None:
        self.core = core

    def collect(self):
        sizes = GaugeMetricFamily(
            "hashsvc_index_hashes", "Hashes in the in-memory index.", labels=["signal_type"]
        )
        for kind, size in self.core.live.sizes().items():
            sizes.add_metric([kind], size)
        yield sizes
        yield GaugeMetricFamily(
            "hashsvc_local_feature_index_bytes",
            "Bytes held by the local-feature index's arrays (known pictures' visual words).",
            value=self.core.live.features.memory_bytes(),
        )
        unindexed = CounterMetricFamily(
            "hashsvc_unindexed_signals",
            "Stored signals the index could not read (e.g. a local_features blob written"
            " around the entry checks): their entries cannot match by them.",
            labels=["signal_type"],
        )
        for kind, count in sorted(self.core.live.unindexed.items()):
            unindexed.add_metric([kind], count)
        yield unindexed
        yield GaugeMetricFamily(
            "hashsvc_index_version",
            "Change-feed sequence number the index has applied.",
            value=self.core.live.seq,
        )
        yield GaugeMetricFamily(
            "hashsvc_ready", "1 when the index is loaded and current.", value=int(self.core.ready())
        )


class _WebhookCollector:
    """Each webhook endpoint's failed events and backlog (from the store,
    all replicas), and what this replica delivered, read at scrape time."""

    def __init__(self, core: Core) -> None:
        self.core = core

    def collect(self):
        if self.core.webhooks is None:
            return
        store = self.core.store
        failed = GaugeMetricFamily(
            "hashsvc_webhook_failed_events",
            "Events an endpoint never took within its retry_for_seconds (all replicas).",
            labels=["endpoint"],
        )
        backlog = GaugeMetricFamily(
            "hashsvc_webhook_backlog_events",
            "Events in the outbox past an endpoint's position (not yet delivered).",
            labels=["endpoint"],
        )
        delivered = CounterMetricFamily(
            "hashsvc_webhook_delivered_events",
            "Events this replica delivered (2xx), by endpoint.",
            labels=["endpoint"],
        )
        retries = CounterMetricFamily(
            "hashsvc_webhook_failed_attempts",
            "POSTs this replica made that got no 2xx (retried later), by endpoint.",
            labels=["endpoint"],
        )
        try:
            counts = store.count_event_failures()
            head = store.last_event_id()
            states = {s.name: s for s in store.endpoint_states()}
        except Exception:  # the store is down: the other figures still come
            log.warning("webhook metrics: the store cannot be read", exc_info=True)
            return
        for name, counters in self.core.webhooks.counters().items():
            failed.add_metric([name], counts.get(name, 0))
            state = states.get(name)
            backlog.add_metric([name], max(0, head - state.delivered_through) if state else 0)
            delivered.add_metric([name], counters.delivered)
            retries.add_metric([name], counters.attempts_failed)
        yield from (failed, backlog, delivered, retries)
