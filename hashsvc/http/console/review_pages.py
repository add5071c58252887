"""Reviewers' pages: the queue (oldest first, filtered, counted), claiming
the next item, an item's page with its matches, and resolving it."""

from __future__ import annotations

from starlette.requests import Request
from starlette.routing import Route

from hashdb import ReviewFilter
from hashdb.times import to_micros
from hashsvc.base.errors import InvalidArgument, NotFound
from hashsvc.http.console import charts
from hashsvc.http.console.links import external_link
from hashsvc.http.console.web import Refused, Web


def review_filter(web: Web, params) -> tuple[ReviewFilter, dict]:
    """The queue's filter from query or form fields, and the fields to carry
    on (the claim-next button claims within the same filter)."""
    shown = {k: str(params.get(k, "")).strip() for k in ("set", "label", "media", "caller")}
    set_id = None
    if shown["set"]:
        hash_set = web.core.store.get_set(shown["set"])
        set_id = hash_set.id if hash_set is not None else -1  # no such set: nothing
    label = None
    if shown["label"]:
        key, eq, value = shown["label"].partition("=")
        if not eq:
            raise InvalidArgument("a label filter is key=value")
        label = (key.strip(), value.strip())
    return (
        ReviewFilter(
            set_id=set_id,
            label=label,
            media_type=shown["media"] or None,
            caller=shown["caller"] or None,
        ),
        shown,
    )


def matches_view(matches: list[dict]) -> list[dict]:
    """Each match with what its page draws: a timeline, PDF page pairs."""
    return [
        {**m, "timeline": charts.timeline(m), "page_pairs": charts.page_pairs(m)} for m in matches
    ]


def routes(web: Web) -> list[Route]:
    async def queue(request: Request):
        caller = await web.require(request, "Review/ListReviewItems")
        filter, shown = await web.call(caller, review_filter, web, request.query_params)
        after = request.query_params.get("after", "")

        def read():
            items, next_token = web.core.review.list(filter, web.limits.page_size, after)
            return items, next_token, web.core.store.count_review_items(filter)

        items, next_token, count = await web.call(caller, read)
        return web.render(
            request,
            "queue.html",
            caller,
            items=items,
            next_token=next_token,
            count=count,
            filters=shown,
            may_claim=caller.may("Review/ClaimReviewItem"),
        )

    async def claim_next(request: Request):
        caller = await web.require(request, "Review/ClaimReviewItem")
        form = await web.small_form(request, caller)
        filter, shown = await web.call(caller, review_filter, web, form)
        try:
            item = await web.call(caller, web.core.review.claim, caller.identity, None, filter)
        except NotFound:  # an empty queue is no error: back to it, saying so
            return await web.redirect(
                request, "/review", caller, ("ok", "nothing to claim: the queue is empty"), shown
            )
        return await web.redirect(request, f"/review/{item.id}")

    async def claim(request: Request):
        caller = await web.require(request, "Review/ClaimReviewItem")
        await web.small_form(request, caller)
        item_id = _item_id(request)
        await web.call(caller, web.core.review.claim, caller.identity, item_id, ReviewFilter())
        return await web.redirect(request, f"/review/{item_id}")

    async def item_page(request: Request):
        caller = await web.require(request, "Review/ListReviewItems")
        item_id = _item_id(request)
        item = await web.call(caller, web.core.store.get_review_item, item_id)
        if item is None:
            raise Refused(404, f"no review item {item_id}")
        targets = [
            s.name
            for s in web.core.live.sets_by_id.values()
            if s.review_target and not s.allow_list
        ]
        mine = item.status == "open" and item.claimed_by == caller.identity
        return web.render(
            request,
            "item.html",
            caller,
            item=item,
            matches=matches_view(item.matches),
            client_link=external_link(item.client_ref),
            preview=web.preview(item.client_ref, item.request_id),
            mine=mine,
            may_claim=caller.may("Review/ClaimReviewItem") and item.status == "open",
            may_resolve=caller.may("Review/ResolveReviewItem") and mine,
            shown_claim=_claim_stamp(item) if mine else "",
            targets=sorted(targets),
        )

    async def resolve(request: Request):
        caller = await web.require(request, "Review/ResolveReviewItem")
        form = await web.small_form(request, caller)
        item_id = _item_id(request)
        item = await web.call(caller, web.core.store.get_review_item, item_id)
        if item is None:
            raise Refused(404, f"no review item {item_id}")
        # The verdict is for the item as its page showed it, under the claim
        # it showed: a second post (a double click, the back button) finds it
        # resolved; a form from a page shown under another claim (a stale
        # tab, the claim expired and taken again meanwhile) is refused rather
        # than resolving what the reviewer is not looking at.
        if item.status != "open":
            raise Refused(
                409, f"review item {item_id} is already resolved ({item.status.replace('_', ' ')})"
            )
        shown = str(form.get("shown_claim", ""))
        if item.claimed_by != caller.identity or shown != _claim_stamp(item):
            raise Refused(
                409,
                f"review item {item_id} is not claimed by you as its page showed it"
                " (the claim expired or was taken again): open the item again",
            )
        resolution = str(form.get("resolution", ""))
        add_to_set = str(form.get("add_to_set", "")) if resolution == "confirmed" else ""
        await web.call(
            caller,
            web.core.review.resolve,
            caller.identity,
            item_id,
            resolution,
            str(form.get("note", "")),
            add_to_set,
            str(form.get("entry_name", "")),
            int(shown),  # and in the resolve's own transaction: a claim made since fails it
        )
        return await web.redirect(
            request,
            "/review",
            caller,
            ("ok", f"review item {item_id} resolved as {resolution.replace('_', ' ')}"),
        )

    return [
        Route("/review", queue, methods=["GET"]),
        Route("/review/claim", claim_next, methods=["POST"]),
        Route("/review/{item_id}", item_page, methods=["GET"]),
        Route("/review/{item_id}/claim", claim, methods=["POST"]),
        Route("/review/{item_id}/resolve", resolve, methods=["POST"]),
    ]


def _claim_stamp(item) -> str:
    """What names a claim: its end, set anew at every claim (microseconds)."""
    expires = item.claim_expires_at
    return "" if expires is None else str(to_micros(expires))


def _item_id(request: Request) -> int:
    raw = request.path_params["item_id"]
    if not raw.isdigit() or len(raw) > 18:
        raise Refused(404, f"no review item {raw[:40]!r}")
    return int(raw)
