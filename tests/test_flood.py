"""Flood alerts (issue 16 item 3): a mass re-upload of known content is
still blocked, copy after copy; an entry matching more than
quarantine_matches uploads within quarantine_window_seconds raises one alert
(a metric, a history record and a review item) until an operator
acknowledges it with ReleaseEntry. The count is kept in the store, so
replicas share it, and old counts are forgotten. Both stores."""

from __future__ import annotations

import random
import threading
import time

import pytest

from hashdb import HistoryFilter, ReviewFilter
from hashsvc.api.metrics import Metrics
from hashsvc.base.errors import FailedPrecondition
from hashsvc.core.config import Config
from hashsvc.core.core import Core, MatchQuery


@pytest.fixture
def make_core(make_core):
    """Cores whose flood counts the tests flush themselves (unless they say)."""

    def make(db_url: str, **config) -> Core:
        config.setdefault("flood_flush_seconds", 60.0)
        return make_core(db_url, **config)

    return make


def _known(core: Core, seed: int = 1, set_name: str = "isis") -> bytes:
    value = random.Random(seed).randbytes(32)
    if core.store.get_set(set_name) is None:
        core.curation.create_set(set_name)
    core.curation.add_entry(set_name, f"k{seed}", {}, "op", signal=("pdq", value.hex(), None))
    return value


def _match(core: Core, value: bytes) -> str:
    query = MatchQuery(signal_type="pdq", signal_value=value.hex())
    return core.match(query, "pipeline").decision


def _alerts(core: Core) -> list:
    records = core.store.query_history(HistoryFilter(caller="hashsvc"), limit=1000)
    return [r for r in records if r.rpc == "FloodAlert"]


def _alert_items(core: Core) -> list:
    return core.review.list(ReviewFilter(caller="hashsvc"))[0]


def test_mass_reupload_stays_blocked_and_alerts_once(store_url, make_core):
    core = make_core(store_url)  # defaults: 200 matches in 60 s
    metrics = Metrics(core)
    core.on_flood_alert = metrics.observe_flood_alert
    known = _known(core)
    decisions = {_match(core, known) for _ in range(205)}
    assert decisions == {"block"}  # exact copies are never downgraded
    core.flood.flush()
    assert {_match(core, known) for _ in range(5)} == {"block"}
    core.flood.flush()  # still flooding: no second alert
    alerts = _alerts(core)
    assert len(alerts) == 1 and alerts[0].caller == "hashsvc"
    assert alerts[0].detail["entry"] == "k1" and alerts[0].detail["matches"] > 200
    items = _alert_items(core)
    assert len(items) == 1 and items[0].matches[0]["entry"] == "k1"
    assert "flood" in items[0].matches[0]["reason"]
    assert items[0].query_signals == []  # nothing a false-positive verdict could remember
    assert metrics.registry.get_sample_value("hashsvc_flood_alerts_total", {"set": "isis"}) == 1
    # acknowledged: the count starts again, and a later flood alerts again
    core.review.release_entry("op", "isis", "k1")
    with pytest.raises(FailedPrecondition):
        core.review.release_entry("op", "isis", "k1")
    for _ in range(201):
        _match(core, known)
    core.flood.flush()
    assert len(_alerts(core)) == 2 and len(_alert_items(core)) == 2
    released = core.store.query_history(HistoryFilter(caller="op"))
    assert [r.rpc for r in released] == ["ReleaseEntry"]
    assert core.store.verify_history().intact


def test_replicas_share_the_flood_count(store_url, make_core):
    first = make_core(store_url, quarantine_matches=20)
    second = make_core(store_url, quarantine_matches=20)
    known = _known(first)
    second.live.catch_up()
    for _ in range(12):  # 24 in all: over 20, though neither replica saw 20
        assert _match(first, known) == "block"
        assert _match(second, known) == "block"
    # both flush at once: each sees the entry past the limit, one alerts
    flushes = [threading.Thread(target=c.flood.flush) for c in (first, second)]
    for t in flushes:
        t.start()
    for t in flushes:
        t.join(timeout=30)
    assert len(_alerts(first)) == 1 and len(_alert_items(second)) == 1
    assert second.flood.tracked_entries() == 0  # flushed: nothing held in memory


def test_old_counts_are_forgotten(store_url, make_core):
    core = make_core(store_url, quarantine_matches=5, quarantine_window_seconds=1.0)
    known = _known(core)
    for seed in range(2, 40):  # many entries matched once each
        _match(core, _known(core, seed))
    assert core.flood.tracked_entries() > 0
    core.flood.flush()
    assert core.flood.tracked_entries() == 0
    assert core.store.flood_counted_entries() >= 38
    for _ in range(4):
        _match(core, known)
    core.flood.flush()
    time.sleep(1.3)  # past the window: those 4 no longer count
    for _ in range(4):
        _match(core, known)
    core.flood.flush()
    assert _alerts(core) == []
    assert core.store.flood_counted_entries() == 1  # only the entry matched just now


def test_flood_is_counted_between_flushes_by_the_background_thread(store_url, make_core):
    core = make_core(store_url, quarantine_matches=3, flood_flush_seconds=0.1)
    known = _known(core)
    for _ in range(4):
        _match(core, known)
    deadline = time.monotonic() + 5
    while not _alerts(core) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(_alerts(core)) == 1


@pytest.mark.parametrize(
    "setting",
    [
        {"quarantine_matches": -1},
        {"quarantine_window_seconds": 0},
        {"quarantine_window_seconds": float("nan")},
        {"flood_flush_seconds": 0},
        {"flood_max_pending_entries": 0},
    ],
)
def test_flood_settings_that_cannot_work_are_refused(setting):
    with pytest.raises(ValueError):
        Config(**setting)


def test_a_false_positive_verdict_on_an_alert_does_not_allow_the_entry(store_url, make_core):
    """The alert's review item holds no upload hashes: judging it a false
    positive remembers nothing, and exact copies stay blocked."""
    core = make_core(store_url, quarantine_matches=3)
    known = _known(core)
    for _ in range(4):
        _match(core, known)
    core.flood.flush()
    item = core.review.claim("rev", _alert_items(core)[0].id, ReviewFilter(caller="hashsvc"))
    core.review.resolve("rev", item.id, "false_positive", "this hash matches everything")
    assert _match(core, known) == "block"
