"""The web console (/ui/) driven in headless Chromium (Debian's `chromium`,
installed by .ci/run; Playwright with executable_path): sign-in per role, the
reviewer's claim-and-resolve path, an operator creating a set and uploading
an image that then matches, an auditor finding that match, a forbidden page
per role, XSS and CSRF. Screenshots of the main pages go to the module's
tmp dir and /work/wt/console-shots when that exists.

Marked `browser`; they must run (not skip) in CI: without chromium they fail
with one line saying how to install it."""

from __future__ import annotations

import os
import random
import re
import shutil
from pathlib import Path
from urllib.parse import quote

import pytest

from hashdb import ReviewFilter
from hashsvc.core.config import Config
from hashsvc.core.core import Core, MatchQuery
from hashsvc_testing.console_server import ConsoleServer, page_csrf, sign_in
from hashsvc_testing.image_media import encode, photo, reencoded

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("HASHSVC_CHROMIUM", "/usr/bin/chromium")
PREVIEW_HOST = "preview.example"
SHOTS_COPY = Path("/work/wt/console-shots")
XSS_SCRIPT = "<script>window.__xss = 1</script>"
XSS_ATTR = '"onerror="window.__xss=2'
XSS_IMG = "<img src=x onerror=window.__xss=3>"


_FLIPS = random.Random(21)


def flipped(hex_hash: str, bits: int) -> str:
    """The PDQ hash with `bits` random bits flipped (that Hamming distance):
    two such copies are ~67 bits apart, so one confirmed copy (added to a
    set) does not block the next."""
    mask = sum(1 << b for b in _FLIPS.sample(range(256), bits))
    return f"{int(hex_hash, 16) ^ mask:064x}"


@pytest.fixture(scope="module")
def core(tmp_path_factory):
    path = tmp_path_factory.mktemp("console")
    core = Core.open(Config(db_url=f"sqlite:///{path}/hashsvc.db"), hash_in_process=True)
    try:
        core.start()
        yield core
    finally:
        core.close()


@pytest.fixture(scope="module")
def server(core):
    with ConsoleServer(
        core,
        preview_url_template=f"https://{PREVIEW_HOST}/media/{{client_ref}}",
        preview_allowed_hosts=[PREVIEW_HOST],
    ) as running:
        yield running


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.fail(
            f"chromium not found at {CHROMIUM}: `apt-get install chromium` (.ci/run does),"
            " or HASHSVC_CHROMIUM=PATH"
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory):
    directory = tmp_path_factory.mktemp("screenshots")
    yield directory
    if SHOTS_COPY.is_dir():
        for shot in directory.glob("*.png"):
            shutil.copy(shot, SHOTS_COPY / shot.name)


@pytest.fixture(scope="module")
def tokens(server):
    return {
        role: server.token(role, f"{role}-1")
        for role in ("reviewer", "operator", "auditor", "admin", "matcher")
    }


@pytest.fixture(scope="module")
def known(core):
    """A set with one known photo, and a review-target set."""
    core.curation.create_set(
        "known-set", labels={"group": "ISIS", "note": XSS_SCRIPT, "quote": XSS_ATTR}
    )
    core.curation.create_set("confirmed-set", review_target=True)
    entry = core.curation.add_entry(
        "known-set", XSS_IMG, {"source": XSS_ATTR}, "test", media=encode(photo(3))
    )
    return entry


def review_item(core, known_entry, client_ref: str) -> str:
    """A Match at review distance (40 bits from the known photo): a review item."""
    pdq = next(s for s in known_entry.signals if s.kind == "pdq" and s.variant == "original")
    outcome = core.match(
        MatchQuery(
            signal_type="pdq",
            signal_value=flipped(pdq.value.hex(), 40),
            signal_quality=100,
            client_ref=client_ref,
        ),
        "matcher-1",
    )
    assert outcome.decision == "review"
    return outcome.request_id


def signed_in(browser, server, token: str):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    # the preview host: a picture (no network needed), as a preview service would give
    context.route(
        f"https://{PREVIEW_HOST}/**",
        lambda route: route.fulfill(
            status=200, content_type="image/jpeg", body=encode(photo(3).resize((320, 240)))
        ),
    )
    page = context.new_page()
    page.on("dialog", lambda dialog: pytest.fail(f"a dialog opened: {dialog.message}"))
    page.goto(f"{server.url}/login")
    page.fill('input[name="token"]', token)
    page.click('button[type="submit"]')
    page.wait_for_load_state()
    return page


def no_script_ran(page) -> None:
    assert page.evaluate("window.__xss") is None


def test_sign_in_per_role(browser, server, tokens):
    landing = {
        "reviewer": ("/ui/review", "Review queue"),
        "operator": ("/ui/", "Dashboard"),
        "auditor": ("/ui/", "Dashboard"),
        "admin": ("/ui/", "Dashboard"),
    }
    for role, (path, heading) in landing.items():
        page = signed_in(browser, server, tokens[role])
        assert page.url.endswith(path), (role, page.url)
        assert page.locator("h1").first.inner_text() == heading
        assert f"{role}-1 ({role})" in page.locator("header").inner_text()
        page.context.close()
    # a matcher (an upload pipeline's token) has no pages
    page = signed_in(browser, server, tokens["matcher"])
    assert page.locator("h1").inner_text() == "Forbidden"
    page.context.close()
    # a wrong token: the sign-in page again, with a message
    page = signed_in(browser, server, "hsv_not-a-token")
    assert "unknown, revoked or expired token" in page.content()
    page.context.close()


def test_forbidden_page_per_role(browser, server, tokens):
    forbidden = {
        "reviewer": ["/sets", "/history", "/"],
        "operator": ["/review", "/history"],
        "auditor": ["/review", "/sets"],
        "matcher": ["/review", "/sets", "/history"],
    }
    for role, paths in forbidden.items():
        page = signed_in(browser, server, tokens[role])
        for path in paths:
            answer = page.goto(f"{server.url}{path}")
            if path == "/" and role == "reviewer":  # the reviewer's home is the queue
                assert page.url.endswith("/ui/review")
                continue
            assert answer.status == 403, (role, path, answer.status)
            assert page.locator("h1").inner_text() == "Forbidden"
        # the navigation offers only the role's pages
        nav = page.locator("header nav").inner_text()
        assert ("History" in nav) == (role in ("auditor", "admin"))
        assert ("Sets" in nav) == (role in ("operator", "admin"))
        page.context.close()


def test_reviewer_claims_and_resolves(browser, server, core, known, tokens, shots):
    review_item(core, known, "https://uploads.example/post/1")
    review_item(core, known, "https://uploads.example/post/2")
    page = signed_in(browser, server, tokens["reviewer"])
    assert page.locator(".count b").inner_text() in ("2", "3", "4")
    page.screenshot(path=shots / "queue.png", full_page=True)
    page.keyboard.press("n")  # claim the oldest
    page.wait_for_url(re.compile(r"/ui/review/\d+$"))
    item_id = int(page.url.rsplit("/", 1)[1])
    # the preview is blurred and grey until revealed
    image = page.locator("#preview-img")
    assert "veiled" in image.get_attribute("class")
    assert "blur" in image.evaluate("e => getComputedStyle(e).filter")
    assert image.get_attribute("src").startswith(f"https://{PREVIEW_HOST}/media/https%3A%2F%2F")
    page.screenshot(path=shots / "item.png", full_page=True)
    page.keyboard.press("r")
    assert image.evaluate("e => getComputedStyle(e).filter") == "none"
    # the client_ref is a link; the match shows set, entry, labels, distance and decision
    assert page.locator('a[href="https://uploads.example/post/1"]').count() == 1
    row = page.locator("table.matches tbody tr").first.inner_text()
    assert "known-set" in row and XSS_IMG in row and "40" in row and "REVIEW" in row.upper()
    page.keyboard.press("f")
    page.fill("#note", "a different picture")
    page.keyboard.press("Control+Enter")
    page.wait_for_url(re.compile(r"/ui/review$"))
    assert f"review item {item_id} resolved as false positive" in page.content()
    item = core.store.get_review_item(item_id)
    assert (item.status, item.note) == ("false_positive", "a different picture")
    assert item.resolved_by.startswith("reviewer-1#")
    # the next one: confirmed, and its hashes added to the review-target set
    page.keyboard.press("n")
    page.wait_for_url(re.compile(r"/ui/review/\d+$"))
    second = int(page.url.rsplit("/", 1)[1])
    page.keyboard.press("c")
    page.fill("#note", "the known picture")
    page.select_option('select[name="add_to_set"]', "confirmed-set")
    page.click("#resolve button[type=submit]")
    page.wait_for_url(re.compile(r"/ui/review$"))
    assert core.store.get_review_item(second).status == "confirmed"
    assert core.curation.get_entry("confirmed-set", f"review-{second}").labels["review_id"] == str(
        second
    )
    page.context.close()


def test_operator_adds_an_image_that_then_matches_and_auditor_finds_it(
    browser, server, core, tokens, shots, tmp_path
):
    page = signed_in(browser, server, tokens["operator"])
    page.goto(f"{server.url}/sets")
    form = page.locator("#create-set")
    form.locator('input[name="name"]').fill("amaq-photos")
    form.locator('textarea[name="labels"]').fill("group=ISIS\noutlet=Amaq")
    form.locator('input[name="pdq_block_distance"]').fill("31")
    form.locator('input[name="pdq_review_distance"]').fill("56")
    form.locator('input[name="review_target"]').check()
    form.locator("button[type=submit]").click()
    page.wait_for_url(re.compile(r"/ui/sets/amaq-photos$"))
    assert "set amaq-photos created" in page.content()
    picture = tmp_path / "amaq-0007.jpg"
    picture.write_bytes(encode(photo(7)))
    page.set_input_files("#files", str(picture))
    page.click("#upload button[type=submit]")
    page.wait_for_selector("#upload-progress li.done", timeout=30_000)
    assert "added as amaq-0007.jpg (image)" in page.locator("#upload-progress").inner_text()
    page.goto(f"{server.url}/sets")
    page.screenshot(path=shots / "sets.png", full_page=True)
    page.goto(f"{server.url}/sets/amaq-photos")
    page.screenshot(path=shots / "set.png", full_page=True)
    page.context.close()

    # an edited copy now matches the uploaded entry
    outcome = core.match(MatchQuery(media=reencoded(photo(7)), client_ref="ref-7"), "matcher-1")
    assert outcome.decision == "block"
    assert {(m.set_name, m.entry_name) for m in outcome.matches} >= {
        ("amaq-photos", "amaq-0007.jpg")
    }

    page = signed_in(browser, server, tokens["auditor"])
    page.goto(f"{server.url}/history")
    page.fill('input[name="request_id"]', outcome.request_id)
    page.click("#history-search button[type=submit]")
    rows = page.locator("table.history tbody tr")
    assert rows.count() == 1
    assert "amaq-photos/amaq-0007.jpg" in rows.first.inner_text()
    # the set and decision filters find it too
    page.goto(f"{server.url}/history?set=amaq-photos&decision=block")
    assert "ref-7" in page.locator("table.history").inner_text()
    page.screenshot(path=shots / "history.png", full_page=True)
    rows.first.locator("a").first.click()
    page.wait_for_url(re.compile(r"/ui/history/\d+$"))
    assert outcome.request_id in page.content()
    assert "amaq-0007.jpg" in page.locator("table.matches").inner_text()
    # the search as CSV
    with page.expect_download() as download:
        page.goto(f"{server.url}/history")
        page.click("text=CSV")
    csv_text = Path(download.value.path()).read_text()
    assert csv_text.startswith("id,time,request_id")
    assert outcome.request_id in csv_text
    page.goto(f"{server.url}/history/verify")
    assert "intact" in page.locator("h1").inner_text()
    page.context.close()


def test_dashboard(browser, server, core, known, tokens, shots):
    review_item(core, known, "dash")
    page = signed_in(browser, server, tokens["admin"])
    assert page.locator("figure.chart svg rect.review").count() >= 1
    assert "known-set" in page.locator("text=Top matching entries").locator("..").inner_text()
    tiles = page.locator(".tiles").inner_text()
    assert "open review items" in tiles and "oldest" in tiles
    assert "pdq" in page.content()
    page.screenshot(path=shots / "dashboard.png", full_page=True)
    page.context.close()


def test_values_are_escaped_everywhere(browser, server, core, known, tokens):
    """`<script>` and `"onerror=` in a label, an entry name, a note and a
    client_ref are shown as text and never run; a javascript: client_ref is no link."""
    request_id = review_item(core, known, 'javascript:alert(1)//"><script>window.__xss=4</script>')
    item = next(i for i in core.review.list(ReviewFilter(), 1000)[0] if i.request_id == request_id)
    reviewer_id = next(t.id for t in core.store.list_tokens() if t.name == "reviewer-1")
    core.review.claim(f"reviewer-1#{reviewer_id}", item.id, ReviewFilter())
    page = signed_in(browser, server, tokens["reviewer"])
    page.goto(f"{server.url}/review/{item.id}")
    no_script_ran(page)
    assert "<script>window.__xss=4</script>" in page.locator("dd.ref").inner_text()
    assert page.locator('a[href^="javascript"]').count() == 0
    page.keyboard.press("f")
    page.fill("#note", XSS_SCRIPT + XSS_ATTR)
    page.keyboard.press("Control+Enter")
    page.wait_for_url(re.compile(r"/ui/review$"))
    page.goto(f"{server.url}/review/{item.id}")
    assert XSS_SCRIPT + XSS_ATTR in page.locator("dl.facts").inner_text()
    no_script_ran(page)
    page.context.close()

    page = signed_in(browser, server, tokens["admin"])
    for path in ("/sets", "/sets/known-set", "/history", "/"):
        page.goto(f"{server.url}{path}")
        no_script_ran(page)
    page.goto(f"{server.url}/sets/known-set")
    text = page.locator("main").inner_text()
    assert XSS_SCRIPT in text and XSS_ATTR in text and XSS_IMG in text
    page.locator(f'a:text-is("{XSS_IMG}")').click()
    no_script_ran(page)
    assert page.locator("h1").inner_text() == XSS_IMG
    # a set name cannot hold markup: refused, and the refusal shows it as text
    page.goto(f"{server.url}/sets")
    page.fill('#create-set input[name="name"]', XSS_SCRIPT)
    page.click("#create-set button[type=submit]")
    assert "invalid set name" in page.content()
    no_script_ran(page)
    # history record pages of these matches
    page.goto(f"{server.url}/history?request_id={request_id}")
    page.locator("table.history tbody tr a").first.click()
    no_script_ran(page)
    assert page.locator('a[href^="javascript"]').count() == 0
    page.context.close()


def test_csrf(browser, server, tokens, core):
    page = signed_in(browser, server, tokens["operator"])
    page.goto(f"{server.url}/sets")
    csrf = page.locator('#create-set input[name="csrf_token"]').input_value()
    api = page.context.request
    for sent in ({}, {"csrf_token": "wrong"}):
        answer = api.post(
            f"{server.url}/sets", form={"name": "csrf-victim", **sent}, max_redirects=0
        )
        assert answer.status == 403, sent
    assert core.store.get_set("csrf-victim") is None
    # a GET cannot act
    assert api.get(f"{server.url}/sets/known-set/entries/x/remove").status in (403, 404, 405)
    answer = api.post(
        f"{server.url}/sets", form={"name": "csrf-ok", "csrf_token": csrf}, max_redirects=0
    )
    assert answer.status == 303
    assert core.store.get_set("csrf-ok") is not None
    # the session cookie: HttpOnly, SameSite=Strict
    cookie = next(c for c in page.context.cookies() if c["name"] == "hashsvc_console")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    # every page says: no inline scripts
    csp = page.goto(f"{server.url}/sets").headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    page.context.close()


def test_load_a_hash_list_with_progress_and_rejected_rows(
    browser, server, tokens, core, tmp_path, shots
):
    rows = ["signal_type,signal_value,entry"]
    rows += [
        f"pdq,{'%064x' % (n * 0x9E3779B97F4A7C15 % (1 << 256))},partner-{n}" for n in range(1, 200)
    ]
    rows.insert(5, "pdq,not-a-hash,bad-row")
    listing = tmp_path / "partner.csv"
    listing.write_text("\n".join(rows) + "\n")
    page = signed_in(browser, server, tokens["operator"])
    page.goto(f"{server.url}/sets/amaq-photos")
    page.set_input_files('#load input[name="file"]', str(listing))
    page.click("#load button[type=submit]")
    page.wait_for_url(re.compile(r"/loads/"))
    page.wait_for_selector('#load-job[data-done="true"]', timeout=30_000)
    state = page.locator("#load-state").inner_text()
    assert "Done: 199 added" in state and "1 rejected" in state
    assert page.locator("#rejected-rows tr td").first.inner_text() == "6"
    page.screenshot(path=shots / "load.png", full_page=True)
    page.context.close()


def test_secure_cookies_and_revoked_tokens(core):
    import httpx

    from hashsvc.core import auth

    with ConsoleServer(core, secure_cookies=True) as running:
        token = running.token("auditor", "auditor-secure")
        with httpx.Client(base_url=f"http://127.0.0.1:{running.port}") as client:
            login = client.get("/ui/login")
            csrf = re.search(r'name="csrf_token" value="([^"]+)"', login.text).group(1)
            # Secure cookies are not sent back over plain HTTP: pass it by hand
            client.cookies.set("hashsvc_console_login", login.cookies["hashsvc_console_login"])
            answer = client.post("/ui/login", data={"csrf_token": csrf, "token": token})
            set_cookie = answer.headers["set-cookie"]
            assert "Secure" in set_cookie and "HttpOnly" in set_cookie
            assert "SameSite=strict" in set_cookie or "SameSite=Strict" in set_cookie
            session = re.search(r"hashsvc_console=([^;]+)", set_cookie).group(1)
            client.cookies.set("hashsvc_console", session)
            assert client.get("/ui/history").status_code == 200
            record = auth.authenticate(core.store, token)
            core.revoke_token("admin-1", record.id)
            assert client.get("/ui/history").status_code == 303  # back to sign-in


def test_item_evidence_timelines_pages_and_local_features(browser, server, core, tokens, shots):
    """A video match's matched seconds on both sides, a PDF's page pairs and a
    local-features match's inliers, coverage, scale and angle."""
    base = {"set_id": 1, "entry_id": 1, "labels": {}, "decision": "review", "reason": ""}
    matches = [
        {
            **base,
            "set": "known-set",
            "entry": "speech.mp4",
            "signal_type": "pdq_frame",
            "distance": 20,
            "query_variant": "frame",
            "known_variant": "frame",
            "unit": "seconds",
            "query_share": 0.4,
            "known_share": 0.2,
            "segments": [
                {"query_start": 0.0, "query_end": 12.0, "known_start": 30.0, "known_end": 42.0},
                {"query_start": 20.0, "query_end": 24.0, "known_start": 80.0, "known_end": 84.0},
            ],
        },
        {
            **base,
            "set": "known-set",
            "entry": "magazine.pdf",
            "signal_type": "pdq",
            "distance": 10,
            "query_variant": "page",
            "known_variant": "page",
            "unit": "pages",
            "query_share": 0.5,
            "known_share": 0.1,
            "segments": [
                {"query_start": 1, "query_end": 1, "known_start": 7, "known_end": 7},
                {"query_start": 2, "query_end": 2, "known_start": 8, "known_end": 8},
            ],
        },
        {
            **base,
            "set": "known-set",
            "entry": "poster.jpg",
            "signal_type": "local_features",
            "distance": 0,
            "query_variant": "original",
            "known_variant": "original",
            "local_features": {
                "inliers": 64,
                "coverage": 0.35,
                "query_coverage": 0.2,
                "scale": 0.5,
                "angle": 12.0,
                "agreement": 0.9,
            },
        },
    ]
    from datetime import UTC, datetime

    item_id = core.store.create_review_item(
        "evidence-1", datetime.now(UTC), "matcher-1", "video", "evidence", [], matches
    )
    page = signed_in(browser, server, tokens["reviewer"])
    page.goto(f"{server.url}/review/{item_id}")
    rows = page.locator("table.matches tbody tr")
    video = rows.nth(0)
    assert video.locator("svg.timeline rect.upload").count() == 2
    assert video.locator("svg.timeline rect.known").count() == 2
    assert "40% of the upload, 20% of the known seconds" in video.inner_text()
    assert "pages (upload → known): 1→7, 2→8" in rows.nth(1).inner_text()
    local = rows.nth(2).inner_text()
    assert "64" in local and "35%" in local and "0.50" in local and "12°" in local
    page.screenshot(path=shots / "item-evidence.png", full_page=True)
    page.context.close()


def test_without_a_session_nothing_is_shown_or_done(server, core):
    import httpx

    with httpx.Client(base_url=f"http://127.0.0.1:{server.port}") as client:
        for path in ("/ui/", "/ui/sets", "/ui/review", "/ui/history", "/ui/review/1"):
            answer = client.get(path)
            assert answer.status_code == 303 and answer.headers["location"] == "/ui/login"
        answer = client.post("/ui/sets", data={"name": "anonymous", "csrf_token": "x"})
        assert answer.status_code == 303
        assert core.store.get_set("anonymous") is None
        # a forged session cookie is no session
        client.cookies.set("hashsvc_console", "forged")
        assert client.get("/ui/sets").status_code == 303
        # the sign-in form itself needs its CSRF cookie (login CSRF)
        assert client.post("/ui/login", data={"token": "x", "csrf_token": "y"}).status_code == 403
        # a file where a token goes, or a form too large: refused before any work
        answer = client.post("/ui/login", files={"token": ("t.txt", b"x")})
        assert answer.status_code == 400
        answer = client.post("/ui/login", data={"token": "x" * 20_000})
        assert answer.status_code == 413


def _http_session(server, token: str):
    client = server.client()
    assert sign_in(client, token).status_code == 303
    return client, page_csrf(client)


def test_bad_input_gets_a_clear_error_page_never_a_500(server, tokens, known):
    client, csrf = _http_session(server, tokens["admin"])
    try:
        gets = {
            "/ui/history?since=yesterday": 400,
            "/ui/history?since=2026-12-07T10:00&until=2026-12-01T10:00": 400,
            "/ui/history?decision=maybe": 400,
            "/ui/history?set=no-such-set": 404,
            "/ui/history?after=-5": 400,
            "/ui/history/abc": 404,
            "/ui/history/99999999": 404,
            "/ui/history/export?format=xlsx": 400,
            "/ui/review?label=no-equals-sign": 400,
            "/ui/review/abc": 404,
            "/ui/review/99999999": 404,
            "/ui/review?after=x": 400,
            "/ui/sets/no-such-set": 404,
            "/ui/sets/known-set/entries/no-such-entry": 404,
            "/ui/sets/known-set/export?format=exe": 400,
            "/ui/sets/known-set/loads/nope": 404,
            "/ui/nowhere": 404,
        }
        for path, status in gets.items():
            answer = client.get(path)
            assert answer.status_code == status, (path, answer.status_code, answer.text[:300])
            assert "<h1>" in answer.text
        posts = {
            "/ui/sets": ({"name": "bad name!"}, 400),
            "/ui/sets/known-set": ({"change": "explode"}, 400),
            "/ui/sets/known-set?x": ({"change": "settings", "labels": "novalue"}, 400),
            "/ui/sets/no-such-set": ({"change": "enable"}, 404),
            "/ui/review/99999999/resolve": ({"resolution": "confirmed"}, 404),
            "/ui/review/claim": ({"set": "no-such-set"}, 303),  # nothing to claim
            "/ui/sets/known-set/upload": ({"labels": ""}, 400),
            "/ui/sets/known-set/load": ({"format": "auto"}, 400),
        }
        for path, (form, status) in posts.items():
            answer = client.post(path, data={"csrf_token": csrf, **form})
            assert answer.status_code == status, (path, answer.status_code, answer.text[:300])
        # a form without its size said, or too large, is refused before it is read
        answer = client.post(
            "/ui/sets/known-set/upload",
            content=b"x" * 100,
            headers={"content-type": "multipart/form-data; boundary=x", "x-csrf-token": csrf},
        )
        assert answer.status_code == 400
        answer = client.post(
            "/ui/sets",
            content=b"a=" + b"x" * (70 * 1024),
            headers={"content-type": "application/x-www-form-urlencoded"},
        )
        assert answer.status_code == 413
    finally:
        client.close()


def test_every_page_follows_rpc_roles(server, tokens, known, core):
    """Each page against each role: shown exactly to the roles RPC_ROLES
    gives the RPC the page stands for, 403 to the others."""
    from hashsvc.core.auth import RPC_ROLES

    record_id = core.store.history_ids_by_request(review_item(core, known, "matrix"))[0]
    item_id = core.review.list(ReviewFilter(), 1000)[0][0].id
    pages = {
        "/ui/review": "Review/ListReviewItems",
        f"/ui/review/{item_id}": "Review/ListReviewItems",
        "/ui/sets": "Curation/ListSets",
        "/ui/sets/known-set": "Curation/GetSet",
        f"/ui/sets/known-set/entries/{quote(XSS_IMG, safe='')}": "Curation/GetEntry",
        "/ui/sets/known-set/export?format=csv": "Curation/ExportEntries",
        "/ui/history": "Audit/QueryHistory",
        f"/ui/history/{record_id}": "Audit/QueryHistory",
        "/ui/history/verify": "Audit/VerifyHistory",
        "/ui/history/export?format=jsonl": "Audit/ExportHistory",
    }
    for role, token in tokens.items():
        client, _ = _http_session(server, token)
        try:
            for path, rpc in pages.items():
                allowed = role in RPC_ROLES[f"/hashsvc.v1.{rpc}"]
                status = client.get(path).status_code
                assert status == (200 if allowed else 403), (role, path, status)
        finally:
            client.close()


def test_failed_sign_ins_past_the_limit_get_a_clear_page(browser, core, shots):
    from hashsvc.core.config import ConsoleSettings

    with ConsoleServer(core, limits=ConsoleSettings(sign_in_failures_per_minute=2)) as limited:
        token = limited.token("auditor", "auditor-limited")
        context = browser.new_context(viewport={"width": 1280, "height": 700})
        page = context.new_page()
        try:
            for guess in ("hs_guess-1", "hs_guess-2"):
                page.goto(f"{limited.url}/login")
                page.fill('input[name="token"]', guess)
                page.click('button[type="submit"]')
                page.wait_for_load_state()
                assert "unknown, revoked or expired token" in page.content()
            page.goto(f"{limited.url}/login")
            page.fill('input[name="token"]', token)  # the right one: refused all the same
            with page.expect_response(lambda r: r.request.method == "POST") as answer:
                page.click('button[type="submit"]')
            assert answer.value.status == 429
            assert page.locator("h1").inner_text() == "Too many attempts"
            assert "too many failed sign-ins from your address" in page.inner_text(".flash")
            page.screenshot(path=shots / "sign-in-429.png", full_page=True)
        finally:
            context.close()


def test_set_form_sets_every_signal_types_thresholds(browser, server, core, tokens, shots):
    from hashdb import Thresholds

    core.curation.create_set("tuned-set")
    page = signed_in(browser, server, tokens["operator"])
    page.goto(f"{server.url}/sets/tuned-set")
    page.click("details.card summary")
    form = page.locator("#set-settings")
    values = {
        "pdq_block_distance": "30",
        "pdq_review_distance": "60",
        "videohash_block_distance": "2",
        "videohash_review_distance": "6",
        "chromaprint_block_distance": "10",
        "chromaprint_review_distance": "18",
        "text_simhash_block_distance": "12",
        "text_simhash_review_distance": "40",
        "local_features_block_inliers": "40",
        "local_features_review_inliers": "20",
        "local_features_block_coverage": "0.3",
        "local_features_review_coverage": "0.15",
    }
    for name, value in values.items():
        form.locator(f'input[name="{name}"]').fill(value)
    page.screenshot(path=shots / "set-thresholds.png", full_page=True)
    form.locator("button[type=submit]").click()
    page.wait_for_url(re.compile(r"/ui/sets/tuned-set$"))
    assert "set tuned-set updated" in page.content()
    assert core.curation.get_set("tuned-set").thresholds == {
        "pdq": Thresholds(30, 60),
        "videohash": Thresholds(2, 6),
        "chromaprint": Thresholds(10, 18),
        "text_simhash": Thresholds(12, 40),
        "local_features": Thresholds(0, 0, 40, 20, 0.3, 0.15),
    }
    # the form shows what the set has
    page.click("details.card summary")
    for name, value in values.items():
        assert float(form.locator(f'input[name="{name}"]').input_value()) == float(value)
    assert "inliers ≥ 40 / 20, coverage ≥ 0.3 / 0.15" in page.inner_text("dl.facts")
    # what the core refuses is a 400 page saying why, and nothing changes
    client, csrf = _http_session(server, tokens["operator"])
    try:

        def local(inliers: str, coverage: str = "") -> str:
            fields = [*zip(("block_inliers", "review_inliers"), inliers.split("/"), strict=True)]
            if coverage:
                pairs = zip(("block_coverage", "review_coverage"), coverage.split("/"), strict=True)
                fields += pairs
            return "&".join(f"local_features_{name}={value}" for name, value in fields)

        refused = {
            local("5/5", "0.3/0.1"): "inliers must be within 8..",
            local("40/20"): "give inliers and coverage",
            local("20/40", "0.3/0.1"): "at least as strict",
            local("40/20", "nan/0.1"): "coverage must be within 0..1",
            "chromaprint_block_distance=30&chromaprint_review_distance=101": "within 0..100",
            "videohash_block_distance=1": "give both block_distance and review_distance",
            "text_simhash_block_distance=ten&text_simhash_review_distance=20": "as numbers",
            "pdq_block_distance=60&pdq_review_distance=30": "is above its review",
        }
        for fields, message in refused.items():
            answer = client.post(
                "/ui/sets/tuned-set",
                content=f"csrf_token={csrf}&change=settings&{fields}",
                headers={"content-type": "application/x-www-form-urlencoded"},
            )
            assert answer.status_code == 400, fields
            assert message in answer.text, (fields, answer.text[-600:])
    finally:
        client.close()
    assert core.curation.get_set("tuned-set").thresholds["local_features"].block_inliers == 40
    page.context.close()


def test_shortcuts_do_not_fire_while_typing(browser, server, core, known, tokens, shots):
    review_item(core, known, "https://uploads.example/post/typing")
    page = signed_in(browser, server, tokens["reviewer"])
    page.goto(f"{server.url}/review")
    # the queue's filter fields: "n" is a letter there, not "claim next"
    page.click('input[name="caller"]')
    page.keyboard.type("nn")
    assert page.url.endswith("/ui/review")
    assert page.input_value('input[name="caller"]') == "nn"
    page.fill('input[name="caller"]', "")
    page.locator("h1").click()  # out of the field: the shortcut works
    page.keyboard.press("n")
    page.wait_for_url(re.compile(r"/ui/review/\d+$"))
    item_url = page.url
    radios = ("#res-confirmed", "#res-fp")
    for field in ("#note", 'input[name="entry_name"]'):
        page.click(field)
        page.keyboard.type("c f n r")
        assert page.input_value(field) == "c f n r"
        assert page.url == item_url  # "n" did not go back to the queue
        assert not any(page.is_checked(radio) for radio in radios)  # "c", "f" chose nothing
        assert "veiled" in page.locator("#preview-img").get_attribute(
            "class"
        )  # "r" revealed nothing
    page.screenshot(path=shots / "item-typing.png", full_page=True)
    page.locator("h1").click()
    page.keyboard.press("f")  # outside the fields the shortcuts work
    assert page.is_checked("#res-fp")
    assert page.evaluate("document.activeElement.id") == "note"
    page.click("#resolve button[type=submit]")
    page.wait_for_url(re.compile(r"/ui/review$"))
    item_id = int(item_url.rsplit("/", 1)[1])
    item = core.store.get_review_item(item_id)
    assert (item.status, item.note) == ("false_positive", "c f n r")
    page.context.close()
