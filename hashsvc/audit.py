"""Auditors' view of the match history: filtered, paginated, exportable."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime

from hashdb import HistoryFilter, HistoryRecord, Store
from hashsvc import validation
from hashsvc.errors import InvalidArgument, NotFound
from hashsvc.policy import DECISIONS


class Audit:
    def __init__(self, store: Store) -> None:
        self.store = store

    def make_filter(
        self,
        since: datetime | None = None,
        until: datetime | None = None,
        decision: str | None = None,
        set_name: str | None = None,
        caller: str | None = None,
    ) -> HistoryFilter:
        if decision and decision not in DECISIONS:
            raise InvalidArgument(f"decision must be one of {', '.join(DECISIONS)}")
        if since and until and since >= until:
            raise InvalidArgument("since must be before until")
        set_id = None
        if set_name:
            hash_set = self.store.get_set(set_name)
            if hash_set is None:
                raise NotFound(f"no such set: {set_name}")
            set_id = hash_set.id
        return HistoryFilter(since, until, decision or None, set_id, caller or None)

    def query(
        self, filter: HistoryFilter, page_size: int = 100, page_token: str = ""
    ) -> tuple[list[HistoryRecord], str]:
        after_id, limit = validation.page(page_size, page_token)
        records = self.store.query_history(filter, after_id, limit)
        next_token = str(records[-1].id) if len(records) == limit else ""
        return records, next_token

    def export(self, filter: HistoryFilter) -> Iterator[HistoryRecord]:
        after_id = 0
        while True:
            records = self.store.query_history(filter, after_id, validation.MAX_PAGE_SIZE)
            yield from records
            if len(records) < validation.MAX_PAGE_SIZE:
                return
            after_id = records[-1].id
