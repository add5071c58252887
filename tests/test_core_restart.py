"""The core without a network: index snapshot + change feed on restart, and a
second process over the same store following the first one's changes."""

from __future__ import annotations

import os
import time

import numpy as np
import psycopg

from hashsvc.core.config import Config
from hashsvc.core.core import Core, MatchQuery
from hashsvc_testing.image_media import encode, noise_image, photo, reencoded


def _decision(core: Core, data: bytes) -> str:
    return core.match(MatchQuery(media=data), caller="test").decision


def test_restart_loads_snapshot_and_applies_later_changes(tmp_path, make_core):
    db = f"sqlite:///{tmp_path}/h.db"
    core = make_core(db)
    core.curation.create_set("s")
    core.curation.add_entry("s", "a", {}, "op", media=encode(photo(0)))
    core.curation.add_entry("s", "b", {}, "op", media=encode(photo(1)))
    make_core.stop(core)  # writes the snapshot
    snapshot = tmp_path / "h.db.index"
    assert (snapshot / "index-snapshot.json").exists()

    # While the server is down, another replica changes the store.
    other = Core.open(Config(db_url=db), hash_in_process=True)
    other.live.load()
    other.curation.remove_entry("s", "a")
    other.curation.add_entry("s", "c", {}, "op", media=encode(photo(2)))
    other.hashing.close()
    other.store.close()

    core = make_core(db)
    assert core.live.seq == core.store.current_seq()
    assert _decision(core, reencoded(photo(0))) == "allow"
    assert _decision(core, reencoded(photo(1))) == "block"
    assert _decision(core, reencoded(photo(2))) == "block"


def test_unusable_snapshot_is_ignored_and_index_rebuilt(tmp_path, make_core):
    db = f"sqlite:///{tmp_path}/h.db"
    core = make_core(db)
    core.curation.create_set("s")
    core.curation.add_entry("s", "a", {}, "op", media=encode(photo(3)))
    make_core.stop(core)
    for name in os.listdir(tmp_path / "h.db.index"):
        if name.endswith(".faiss"):
            (tmp_path / "h.db.index" / name).write_bytes(b"garbage")
    core = make_core(db)
    assert _decision(core, reencoded(photo(3))) == "block"


def test_second_replica_follows_changes_within_two_seconds(store_url, make_core):
    first = make_core(store_url, change_poll_seconds=0.2)
    second = make_core(store_url, change_poll_seconds=0.2)
    data = encode(noise_image(11))
    first.curation.create_set("shared")
    first.curation.add_entry("shared", "n", {"group": "HTS"}, "op", media=data)
    assert _wait_for(lambda: _decision(second, data) == "block")
    first.curation.update_set("shared", enabled=False)
    assert _wait_for(lambda: _decision(second, data) == "allow")
    first.curation.update_set("shared", enabled=True)
    assert _wait_for(lambda: _decision(second, data) == "block")
    first.curation.remove_entry("shared", "n")
    assert _wait_for(lambda: _decision(second, data) == "allow")


def _wait_for(condition, seconds: float = 2.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def _wait_for_listeners(core: Core, count: int) -> None:
    """Until `count` sessions LISTEN on the store's change channel (each
    replica's listener connects on its own thread; a fixed sleep for it lost
    the NOTIFY on a loaded machine). A listener's session stays idle with the
    LISTEN as its last statement while it waits for notifications."""
    listen = f"LISTEN {core.store._channel}"
    with psycopg.connect(core.store.url, autocommit=True) as conn:
        deadline = time.monotonic() + 30
        while True:
            (n,) = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE query = %s", (listen,)
            ).fetchone()
            if n >= count:
                return
            assert time.monotonic() < deadline, f"{n} of {count} replicas listen"
            time.sleep(0.02)


def test_postgresql_notify_wakes_the_other_replica_at_once(pg_url, make_core):
    # polling every 60 s: only a NOTIFY can make this take seconds (5 s is
    # room for a loaded machine, and well before any poll)
    first = make_core(pg_url, change_poll_seconds=60)
    second = make_core(pg_url, change_poll_seconds=60)
    data = encode(noise_image(12))
    first.curation.create_set("notified")
    _wait_for_listeners(second, 2)
    first.curation.add_entry("notified", "n", {}, "op", media=data)
    assert _wait_for(lambda: _decision(second, data) == "block", seconds=5.0)


def test_an_entry_after_a_quiet_while_is_matchable_on_another_replica_at_once(pg_url, make_core):
    """change_follow_seconds spaces catch-ups while changes keep coming (a
    bulk load), not the first change after a quiet while: waiting after any
    recent read of the change feed let a known hash ALLOW on the other
    replica for a quarter second (17 Matches in tests/test_events_process)."""
    from hashsvc.base.signals import Signal

    # change_follow_seconds 4: a catch-up held back by it comes 4 s after the
    # read below, well after the 2.5 s this waits, even when the write takes
    # a second of a loaded machine; polling every 60 s plays no part
    first = make_core(pg_url, change_poll_seconds=60)
    second = make_core(pg_url, change_poll_seconds=60, change_follow_seconds=4)
    _wait_for_listeners(second, 2)  # else the set's NOTIFY is lost, caught up only by a poll
    set_id = first.curation.create_set("quiet").id
    for n in range(2):
        time.sleep(4.2)  # quiet: longer than change_follow_seconds since the last change
        assert second.live.catch_up() == 0  # a read a moment ago that found nothing new
        value = os.urandom(32)
        first.store.add_entry(set_id, f"e{n}", {}, "image", [Signal("pdq", value)], "op")
        assert _wait_for(
            lambda value=value: all(second.live.indexes["pdq"].search([value], 0)), seconds=2.5
        ), n


def test_a_burst_of_notifies_is_caught_up_at_most_every_change_follow_seconds(pg_url, make_core):
    """A bulk write NOTIFYs at every commit: the other replica catches up at
    most every change_follow_seconds (each catch-up rebuilds the index's open
    segment), and the last commit of the burst still matches there soon."""
    from hashdb.bulk_sql import PlainSignals

    first = make_core(pg_url, change_poll_seconds=60)
    second = make_core(pg_url, change_poll_seconds=60, change_follow_seconds=0.5)
    set_id = first.curation.create_set("burst").id
    _wait_for_listeners(second, 2)
    calls = []
    catch_up = second.live.catch_up

    def counted():
        calls.append(time.monotonic())
        return catch_up()

    second.live.catch_up = counted
    values = [os.urandom(32) for _ in range(20)]
    started = time.monotonic()
    for value in values:  # 20 bulk commits, 20 NOTIFYs
        one = np.frombuffer(value, dtype=np.uint8).reshape(1, 32)
        first.store.bulk_add_plain(set_id, PlainSignals("pdq", "hash", one), "op")
    assert _wait_for(lambda: all(second.live.indexes["pdq"].search([values[-1]], 0)), 10.0)
    # counted up to now, over the whole time they could happen in (the wait
    # too: on a loaded machine the writes can end well before the catch-ups)
    caught_up, elapsed = len(calls), time.monotonic() - started
    # at most one a half second, and one more at each end
    assert caught_up <= elapsed / 0.5 + 3, (caught_up, elapsed)


def test_an_in_memory_sqlite_uri_writes_no_index_snapshot_beside_it(
    make_core, tmp_path, monkeypatch
):
    """sqlite:///file:NAME?mode=memory is a shared in-memory database (SQLite
    reads file: names as URIs): the server wrote its index snapshot into a
    directory named after the URI in its working directory, for a store that
    is gone at restart."""

    monkeypatch.chdir(tmp_path)
    core = make_core("sqlite:///file:snapcheck?mode=memory&cache=shared")
    core.curation.create_set("s")
    core.curation.add_entry("s", "e", {}, "op", signal=("pdq", bytes(range(32)).hex(), None))
    core.close()
    assert list(tmp_path.iterdir()) == []
