"""The web console's review form against careless posts, through the real
console on a real core: a verdict posted twice (a double click, the back
button) resolves the item once; a form from a page shown under another
claim (a stale tab: the item claimed again since), without the claim it
was shown under, or from another reviewer resolves nothing; the form's size
and CSRF token are checked before anything is done."""

from __future__ import annotations

import random
import re
import time

import pytest

from hashdb import ReviewFilter
from hashdb.times import to_micros
from hashsvc.base.errors import FailedPrecondition
from hashsvc.core.config import Config
from hashsvc.core.core import Core, MatchQuery
from hashsvc_testing.console_server import ConsoleServer, page_csrf, sign_in

KNOWN = bytes(range(32))


@pytest.fixture(scope="module")
def core(tmp_path_factory):
    path = tmp_path_factory.mktemp("console-forms")
    core = Core.open(Config(db_url=f"sqlite:///{path}/hashsvc.db"), hash_in_process=True)
    try:
        core.start()
        core.curation.create_set("known-set")
        core.curation.add_entry("known-set", "e", {}, "op", signal=("pdq", KNOWN.hex(), None))
        yield core
    finally:
        core.close()


@pytest.fixture(scope="module")
def server(core):
    with ConsoleServer(core) as running:
        yield running


def _review_item(core, n: int) -> int:
    """A Match 40 bits from the known hash (a review decision): its item's id."""
    value = bytearray(KNOWN)
    for bit in random.Random(n).sample(range(256), 40):  # each item its own copy
        value[bit // 8] ^= 1 << (bit % 8)
    outcome = core.match(
        MatchQuery(
            signal_type="pdq",
            signal_value=bytes(value).hex(),
            signal_quality=100,
            client_ref=f"https://uploads.example/{n}",
        ),
        "matcher-1",
    )
    assert outcome.decision == "review"
    return next(
        item.id
        for item in core.store.list_review_items(ReviewFilter(), 0, 1000)
        if item.request_id == outcome.request_id
    )


def _reviewer(server, name: str):
    client = server.client()
    assert sign_in(client, server.token("reviewer", name)).status_code == 303
    return client, page_csrf(client)


def _shown_form(client, item_id: int) -> dict:
    """The resolve form's hidden fields as the item's page shows them."""
    page = client.get(f"/ui/review/{item_id}")
    assert page.status_code == 200, page.text[:300]
    fields = dict(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)"', page.text))
    assert fields.get("shown_claim"), "no resolve form on the page"
    return fields


def _claim(client, csrf: str, item_id: int) -> None:
    answer = client.post(f"/ui/review/{item_id}/claim", data={"csrf_token": csrf})
    assert answer.status_code == 303, answer.text[:300]


def _resolve(client, item_id: int, fields: dict, note: str = ""):
    return client.post(
        f"/ui/review/{item_id}/resolve",
        data={**fields, "resolution": "false_positive", "note": note},
    )


def test_a_verdict_posted_twice_resolves_once(server, core):
    client, csrf = _reviewer(server, "rev-twice")
    try:
        item_id = _review_item(core, 1)
        _claim(client, csrf, item_id)
        fields = _shown_form(client, item_id)
        assert _resolve(client, item_id, fields, "first").status_code == 303
        first = core.store.get_review_item(item_id)
        again = _resolve(client, item_id, fields, "second")
        assert again.status_code == 409, again.text[:300]
        assert "already resolved (false positive)" in again.text
        assert core.store.get_review_item(item_id) == first  # note, time: the first verdict's
    finally:
        client.close()


def test_a_form_shown_under_another_claim_resolves_nothing(server, core):
    """The page shown, then the item claimed again (another tab's claim
    button; as when a claim expired and was taken again): the first page's
    form is refused and the item stays open; a form without the claim it
    was shown under too; the page shown again resolves it."""
    client, csrf = _reviewer(server, "rev-stale")
    try:
        item_id = _review_item(core, 2)
        _claim(client, csrf, item_id)
        stale = _shown_form(client, item_id)
        _claim(client, csrf, item_id)  # claimed anew: its claim ends later
        answer = _resolve(client, item_id, stale)
        assert answer.status_code == 409, answer.text[:300]
        assert "not claimed by you as its page showed it" in answer.text
        bare = _resolve(client, item_id, {"csrf_token": csrf})
        assert bare.status_code == 409, bare.text[:300]
        assert core.store.get_review_item(item_id).status == "open"
        assert _resolve(client, item_id, _shown_form(client, item_id)).status_code == 303
        assert core.store.get_review_item(item_id).status == "false_positive"
    finally:
        client.close()


def test_another_reviewers_form_resolves_nothing(server, core):
    """Reviewer A's item, posted by reviewer B with B's own CSRF token and
    A's page's claim stamp: refused, the item still A's and open."""
    a, a_csrf = _reviewer(server, "rev-a")
    b, b_csrf = _reviewer(server, "rev-b")
    try:
        item_id = _review_item(core, 3)
        _claim(a, a_csrf, item_id)
        fields = {**_shown_form(a, item_id), "csrf_token": b_csrf}
        answer = _resolve(b, item_id, fields)
        assert answer.status_code == 409, answer.text[:300]
        item = core.store.get_review_item(item_id)
        assert item.status == "open" and item.claimed_by.startswith("rev-a")
    finally:
        a.close()
        b.close()


def test_the_resolve_form_is_checked_before_it_is_read(server, core):
    """Without CSRF token: 403; larger than a small form (64 KiB): 413;
    without Content-Length (chunked): 411; the item stays open each time."""
    client, csrf = _reviewer(server, "rev-limits")
    try:
        item_id = _review_item(core, 4)
        _claim(client, csrf, item_id)
        fields = _shown_form(client, item_id)
        no_token = {k: v for k, v in fields.items() if k != "csrf_token"}
        assert _resolve(client, item_id, no_token).status_code == 403
        answer = _resolve(client, item_id, fields, note="x" * (70 * 1024))
        assert answer.status_code == 413, answer.text[:300]
        chunked = client.post(
            f"/ui/review/{item_id}/resolve",
            content=iter([b"resolution=false_positive&csrf_token=" + csrf.encode()]),
            headers={"content-type": "application/x-www-form-urlencoded"},
        )
        assert chunked.status_code == 411, chunked.text[:300]
        assert core.store.get_review_item(item_id).status == "open"
    finally:
        client.close()


def test_the_core_resolves_only_under_the_claim_shown(store_url, make_core):
    """The console's check is made again where the item is resolved (in the
    store's UPDATE): a claim made since the page was shown fails the
    resolve and the item stays open; the claim shown resolves it. Both stores."""
    core = make_core(store_url)
    core.curation.create_set("known-set")
    core.curation.add_entry("known-set", "e", {}, "op", signal=("pdq", KNOWN.hex(), None))
    item_id = _review_item(core, 5)
    shown = to_micros(core.review.claim("rev", item_id, ReviewFilter()).claim_expires_at)
    time.sleep(0.01)
    now = to_micros(core.review.claim("rev", item_id, ReviewFilter()).claim_expires_at)
    assert now != shown
    with pytest.raises(FailedPrecondition, match="claimed again since its page was shown"):
        core.review.resolve("rev", item_id, "false_positive", shown_claim=shown)
    # the store itself, as when the claim is made between the core's read and its write
    assert (
        core.store.resolve_review_item(item_id, "rev", "false_positive", "", claim_expires_at=shown)
        is None
    )
    assert core.store.get_review_item(item_id).status == "open"
    core.review.resolve("rev", item_id, "false_positive", "seen", shown_claim=now)
    assert core.store.get_review_item(item_id).status == "false_positive"
