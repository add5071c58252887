"""What the web console reads from the store (hashdb/console_sql.py), and the
history's time-range paging it relies on, on both stores."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hashdb import HistoryFilter, HistoryRecord, ReviewFilter
from hashsvc.base.signals import Signal


def _record(i: int, when: datetime, decision: str, matches=()) -> HistoryRecord:
    return HistoryRecord(
        request_id=f"req-{i}",
        time=when,
        caller="pipeline",
        rpc="Match",
        media_type="image",
        decision=decision,
        status="OK",
        matches=list(matches),
    )


def test_history_time_ranges_page_by_id_even_when_times_are_out_of_order(store):
    """A record is stamped when its call began: a long upload written after
    shorter ones carries an earlier time than the records before it. The
    range bounds must still find every record in the range."""
    t0 = datetime(2026, 3, 1, tzinfo=UTC)
    hours = [0, 5, 1, 6, 2, 7, 3]  # written in this order
    for i, h in enumerate(hours):
        store.record_match(_record(i, t0 + timedelta(hours=h), "block"))

    def ids(**kw):
        return [r.request_id for r in store.query_history(HistoryFilter(**kw), 0, 100)]

    assert ids(since=t0 + timedelta(hours=2)) == ["req-1", "req-3", "req-4", "req-5", "req-6"]
    assert ids(until=t0 + timedelta(hours=2)) == ["req-0", "req-2"]
    assert ids(since=t0 + timedelta(hours=1), until=t0 + timedelta(hours=6)) == [
        "req-1", "req-2", "req-4", "req-6",
    ]  # fmt: skip
    assert ids(since=t0 + timedelta(hours=8)) == []
    assert ids(since=t0 + timedelta(hours=4), until=t0 + timedelta(hours=5)) == []
    # pages of 2 within a range give the same records
    got, after = [], 0
    for _ in range(10):
        page = store.query_history(HistoryFilter(since=t0 + timedelta(hours=1)), after, 2)
        got += [r.request_id for r in page]
        if len(page) < 2:
            break
        after = page[-1].id
    assert got == ids(since=t0 + timedelta(hours=1))


def test_dashboard_aggregates_and_lookups(store):
    now = datetime.now(UTC)
    hour = int(now.timestamp()) // 3600
    hash_set = store.create_set("s", "", {}, {})
    match = {"set": "s", "set_id": hash_set.id, "entry": "e1", "entry_id": 1, "labels": {}}
    store.record_match(_record(1, now, "block", [match]))
    store.record_match(_record(2, now, "review", [match, {**match, "entry": "e2"}]))
    store.record_match(_record(3, now, "allow"))
    store.record_match(_record(4, now - timedelta(days=3), "block", [{**match, "entry": "old"}]))
    store.record_match(_record(5, now, ""))  # a failed call decides nothing
    counts = store.decisions_per_hour(hour - 1, hour)
    assert counts == {(hour, "block"): 1, (hour, "review"): 1, (hour, "allow"): 1}
    top = store.top_matched_entries(now - timedelta(days=1), 100, 10)
    assert top == [("s", "e1", 2), ("s", "e2", 1)]
    [found] = store.history_ids_by_request("req-2")
    assert store.history_record(found).request_id == "req-2"
    assert store.history_record(found + 1000) is None

    assert store.open_review_summary() == (0, None)
    first = store.create_review_item("a", now - timedelta(hours=2), "c", "image", "", [], [match])
    store.create_review_item("b", now, "c", "video", "", [], [match])
    count, oldest = store.open_review_summary()
    assert count == 2 and abs((oldest - (now - timedelta(hours=2))).total_seconds()) < 1
    assert store.count_review_items(ReviewFilter(media_type="video")) == 1
    assert store.count_review_items(ReviewFilter(set_id=hash_set.id)) == 2
    assert first


def test_entry_search_by_name_and_label_takes_wildcards_literally(store):
    hash_set = store.create_set("s", "", {}, {})
    sig = Signal("md5", bytes(16))
    store.add_entry(hash_set.id, "poster_100%.jpg", {"group": "ISIS"}, "image", [sig], "t")
    store.add_entry(hash_set.id, "poster_1000.jpg", {"group": "AQ"}, "image", [sig], "t")
    store.add_entry(hash_set.id, "speech.mp4", {"group": "ISIS", "x": "y"}, "video", [sig], "t")

    def names(text):
        return [e.name for e in store.search_entries(hash_set.id, text, 0, 10)]

    assert names("100%") == ["poster_100%.jpg"]  # % is no wildcard
    assert names("_1") == ["poster_100%.jpg", "poster_1000.jpg"]
    assert names("r_1") == ["poster_100%.jpg", "poster_1000.jpg"]
    assert names("er_10") == ["poster_100%.jpg", "poster_1000.jpg"]
    assert names("group=ISIS") == ["poster_100%.jpg", "speech.mp4"]
    assert names("group=IS") == []  # a label is matched whole
    assert names("nothing") == []
    # a feed's source id, kept beside the shared label set
    store.add_entry(
        hash_set.id, "feed:1", {"group": "ISIS", "source_id": "4_2"}, "image", [sig], "t"
    )
    store.add_entry(hash_set.id, "feed:2", {"group": "AQ", "source_id": "402"}, "image", [sig], "t")
    assert names("source_id=4_2") == ["feed:1"]
    assert names("source_id=4") == []
    assert names("4_") == ["feed:1"]
    assert names("group=AQ") == ["poster_1000.jpg", "feed:2"]


def test_hourly_decisions_remember_only_final_hours(store):
    from hashsvc.http.console.dashboard import HourlyDecisions

    now = datetime.now(UTC)
    hour = int(now.timestamp()) // 3600
    store.record_match(_record(1, now - timedelta(hours=3), "block"))
    store.record_match(_record(2, now, "review"))
    hourly = HourlyDecisions(store, final_after_seconds=3600)
    first = hourly.counts(now, 24)
    assert first == {(hour - 3, "block"): 1, (hour, "review"): 1}
    # the current hour is read again; a final hour is not (the history is append-only)
    store.record_match(_record(3, now, "review"))
    assert hourly.counts(now, 24)[(hour, "review")] == 2
    assert hourly.counts(now, 24)[(hour - 3, "block")] == 1


def test_console_sessions_on_both_stores(store):
    """The console's session rows (hashdb/console_sql.py): read with their
    token's record as it is now, a flash taken once, idle, expired and
    surplus sessions gone, the least recently used first."""
    import time

    from hashsvc.core import auth

    record, _ = auth.create_token(store, "reviewer", "reviewer-s")
    later = datetime.now(UTC) + timedelta(hours=1)
    store.open_console_session("a" * 64, record.id, "csrf-a", later, 60, 3)
    found = store.console_session("a" * 64, 60, 60)
    assert (found.token.id, found.token.role, found.csrf, found.flash) == (
        record.id, "reviewer", "csrf-a", None,
    )  # fmt: skip
    store.set_console_flash("a" * 64, '["ok", "done"]')
    assert store.console_session("a" * 64, 60, 60).flash == '["ok", "done"]'
    assert store.console_session("a" * 64, 60, 60).flash is None  # taken
    assert store.console_session("b" * 64, 60, 60) is None
    # revoked since: the row still reads, with the record saying so (the console ends it)
    store.revoke_token(record.id)
    assert store.console_session("a" * 64, 60, 60).token.revoked_at is not None
    # past its end (sign-in + max) or idle: None, and the row is gone
    store.open_console_session("c" * 64, record.id, "csrf-c", datetime.now(UTC), 60, 3)
    assert store.console_session("c" * 64, 60, 60) is None
    time.sleep(0.3)
    assert store.console_session("a" * 64, 0.2, 60) is None
    # past max_sessions (3), the least recently used end
    for key in "defg":
        store.open_console_session(key * 64, record.id, "x", later, 60, 3)
        time.sleep(0.01)
    assert store.console_session("d" * 64, 60, 60) is None
    assert all(store.console_session(k * 64, 60, 60) for k in "efg")
    store.close_console_session("e" * 64)
    assert store.console_session("e" * 64, 60, 60) is None
