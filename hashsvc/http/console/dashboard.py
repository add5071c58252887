"""The dashboard: decisions per hour over the last day and week, the review
queue's size and age, the entries that matched most, and the index's size
per signal type, from the store's own data (hashdb/console_sql.py)."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from hashsvc.http.console import charts
from hashsvc.http.console.web import NAV, Web

DAY_HOURS = 24
# the week chart: one bar per 6 hours (28 bars; 168 hourly ones are hairlines)
WEEK_BUCKET_HOURS = 6
WEEK_HOURS = 7 * 24
TOP_ENTRIES = 10


class HourlyDecisions:
    """Decisions per hour, remembered for the hours no record can still be
    written into: the history is append-only, and a record is stamped when
    its call began, so an hour is final once the longest call
    (stream_max_seconds) and a margin have passed since it ended."""

    def __init__(self, store, final_after_seconds: float, max_hours: int = 2 * WEEK_HOURS) -> None:
        self.store = store
        self.final_after_seconds = final_after_seconds
        self.max_hours = max_hours
        self._final: dict[int, dict[str, int]] = {}
        self._lock = threading.Lock()

    def counts(self, now: datetime, hours: int) -> dict[tuple[int, str], int]:
        last_hour = int(now.timestamp()) // 3600
        first_hour = last_hour - hours + 1
        last_final = int(now.timestamp() - self.final_after_seconds) // 3600 - 1
        with self._lock:
            known = {h: c for h, c in self._final.items() if h >= first_hour}
        missing = [h for h in range(first_hour, last_hour + 1) if h not in known]
        fresh = {}
        if missing:
            fresh = self.store.decisions_per_hour(missing[0], missing[-1])
        out = {(h, d): n for h, counts in known.items() for d, n in counts.items()}
        out.update(fresh)
        with self._lock:
            for hour in missing:
                if hour <= last_final:
                    self._final[hour] = {d: n for (h, d), n in fresh.items() if h == hour}
            for hour in [h for h in self._final if h < last_hour - self.max_hours]:
                del self._final[hour]
        return out


def routes(web: Web) -> list[Route]:
    hourly = HourlyDecisions(web.core.store, web.core.config.stream_max_seconds + 300)

    async def home(request: Request) -> Response:
        caller = await web.caller(request)
        if caller is None:
            return await web.redirect(request, "/login")
        if not caller.may("Curation/GetStats"):
            # the first page this role may see, else the forbidden page
            for path, _title, rpc in NAV:
                if caller.may(rpc):
                    return await web.redirect(request, path)
            return await web.error_page(
                request, 403, f"role {caller.record.role!r} has no console pages"
            )

        def read():
            now = datetime.now(UTC)
            store = web.core.store
            week = hourly.counts(now, WEEK_HOURS)
            queue_size, oldest = store.open_review_summary()
            stats = web.core.stats()
            return {
                "now": now,
                "day": charts.decisions_chart(week, now, DAY_HOURS),
                "week": charts.decisions_chart(
                    week, now, WEEK_HOURS, bucket_hours=WEEK_BUCKET_HOURS
                ),
                "queue_size": queue_size,
                "queue_age": _age(now - oldest) if oldest else "",
                "top": store.top_matched_entries(
                    now - timedelta(hours=WEEK_HOURS), web.limits.top_entries_records, TOP_ENTRIES
                ),
                "top_records": web.limits.top_entries_records,
                "index": sorted(stats["indexed_signals"].items()),
                "stats": stats,
            }

        data = await web.call(caller, read)
        return web.render(request, "dashboard.html", caller, **data)

    return [Route("/", home, methods=["GET"])]


def _age(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds < 3600:
        return f"{seconds // 60} min"
    if seconds < 86400:
        return f"{seconds // 3600} h {seconds % 3600 // 60} min"
    return f"{seconds // 86400} d {seconds % 86400 // 3600} h"
