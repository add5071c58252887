"""A feed page's item mapping (ExchangeSQL.commit_feed_page) on both stores:
written a few items a transaction, optimistically when the items are
expected new, and counted once whatever fails in between."""

from __future__ import annotations

import pytest

from hashdb.exchange_sql import FeedItem, PageCounts
from hashsvc.base.errors import FailedPrecondition


def _items(keys):
    return [FeedItem(key, f"f:{key}", f"id-{key}") for key in keys]


@pytest.fixture
def feed(store, monkeypatch):
    s = store.create_set("s", "", {}, {})
    record = store.create_feed("f", "tcap", s.id, {}, {}, 3600, None, "op")
    assert store.acquire_feed_lease(record.id, "me", 300)
    monkeypatch.setattr(store, "feed_map_rows", 2)  # a 5-item page: three, then the checkpoint
    return record


def test_new_items_expected_but_some_mapped_are_counted_once(store, feed):
    first = store.commit_feed_page(
        feed.id, "me", "cp1", _items("abc"), [], PageCounts(), 300, expect_new=True
    )
    assert (first.added, sorted(first.new_keys)) == (3, ["a", "b", "c"])
    # b and c are mapped: the optimistic insert fails and is done with a lookup
    again = store.commit_feed_page(
        feed.id, "me", "cp2", _items("bcdef"), [], PageCounts(updated=1), 300, expect_new=True
    )
    assert (again.added, sorted(again.new_keys), again.updated) == (3, ["d", "e", "f"], 1)
    got = store.get_feed("f")
    assert (got.items, got.added, got.updated, got.checkpoint) == (6, 6, 1, "cp2")
    assert store.all_feed_items(feed.id) == {i.key: i for i in _items("abcdef")}


def test_a_page_that_fails_after_its_first_transactions_counts_once_when_written_again(
    store, feed, monkeypatch
):
    """A server killed between a page's mapping transactions: what they
    committed is counted with them, the checkpoint is not moved, and the page
    written again (a resumed fetch) counts only the rest."""
    hold = store._hold_feed_lease
    calls = []

    def killed_at_the_third(cur, feed_id, owner, lease_seconds, checkpoint=()):
        calls.append(checkpoint)
        if len(calls) == 3:
            raise FailedPrecondition("killed")
        hold(cur, feed_id, owner, lease_seconds, checkpoint)

    monkeypatch.setattr(store, "_hold_feed_lease", killed_at_the_third)
    with pytest.raises(FailedPrecondition):
        store.commit_feed_page(feed.id, "me", "cp1", _items("edcba"), [], PageCounts(), 300)
    half = store.get_feed("f")
    # two transactions (a b, then c d: in key order) committed; the third (e)
    # and the checkpoint's not
    assert (half.items, half.added, half.checkpoint) == (4, 4, None)
    monkeypatch.setattr(store, "_hold_feed_lease", hold)
    rest = store.commit_feed_page(
        feed.id, "me", "cp1", _items("abcde"), [], PageCounts(), 300, expect_new=True
    )
    assert (rest.added, rest.new_keys) == (1, ["e"])
    done = store.get_feed("f")
    assert (done.items, done.added, done.checkpoint) == (5, 5, "cp1")


def test_a_lost_lease_writes_nothing(store, feed):
    assert store.acquire_feed_lease(feed.id, "me", 300)
    store.finish_feed_fetch(feed.id, "me", "ok", "", 0, False)  # the lease given back
    assert store.acquire_feed_lease(feed.id, "other", 300)
    with pytest.raises(FailedPrecondition, match="lost the feed's lease"):
        store.commit_feed_page(
            feed.id, "me", "cp1", _items("abcde"), [], PageCounts(), 300, expect_new=True
        )
    got = store.get_feed("f")
    assert (got.items, got.added, got.checkpoint) == (0, 0, None)
    assert store.all_feed_items(feed.id) == {}


def test_deletions_in_parts_count_once_when_the_page_is_written_again(store, feed, monkeypatch):
    """A page's deletions go a few keys a transaction, each with its count
    and its deletion-window record: a server killed before the checkpoint
    resumes with them done and counted, and the page again deletes nothing
    more."""
    store.commit_feed_page(feed.id, "me", "cp1", _items("abcde"), [], PageCounts(), 300)
    hold = store._hold_feed_lease

    def killed_at_the_checkpoint(cur, feed_id, owner, lease_seconds, checkpoint=()):
        if checkpoint:
            raise FailedPrecondition("killed")
        hold(cur, feed_id, owner, lease_seconds, checkpoint)

    monkeypatch.setattr(store, "_hold_feed_lease", killed_at_the_checkpoint)
    with pytest.raises(FailedPrecondition):
        store.commit_feed_page(
            feed.id, "me", "cp2", [], list("abcx"), PageCounts(), 300, window_base=5
        )
    half = store.get_feed("f")
    assert (half.items, half.deleted, half.checkpoint) == (2, 3, "cp1")
    assert store.delete_window(feed.id, 0).deleted == 3
    monkeypatch.setattr(store, "_hold_feed_lease", hold)
    again = store.commit_feed_page(
        feed.id, "me", "cp2", [], list("abcx"), PageCounts(), 300, window_base=5
    )
    assert again.deleted == 0
    done = store.get_feed("f")
    assert (done.items, done.deleted, done.checkpoint) == (2, 3, "cp2")
    assert set(store.all_feed_items(feed.id)) == {"d", "e"}
