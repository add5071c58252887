"""The console's links and charts without a browser: what an uploader's
client_ref can and cannot become, and the charts' shapes."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from hashsvc.http.console.charts import decisions_chart, page_pairs, timeline
from hashsvc.http.console.exports import spreadsheet_safe
from hashsvc.http.console.links import external_link, preview_url

HOSTS = frozenset({"preview.example"})
TEMPLATE = "https://preview.example/media/{client_ref}?r={request_id}"


@pytest.mark.parametrize(
    "ref",
    [
        "javascript:alert(1)",
        "JAVASCRIPT:alert(1)",
        " javascript:alert(1)",
        "data:text/html,<script>alert(1)</script>",
        "vbscript:x",
        "//evil.example/x",
        "https://",
        'https://a.example/"onmouseover="x',
        "https://a.example/<script>",
        "post-123",
    ],
)
def test_a_client_ref_is_a_link_only_as_an_http_url(ref):
    assert external_link(ref) is None


def test_http_client_refs_are_links():
    assert external_link("https://uploads.example/p/1?x=2") == "https://uploads.example/p/1?x=2"
    assert external_link("http://uploads.example/") == "http://uploads.example/"


@pytest.mark.parametrize(
    "ref",
    ["@evil.example/x", "../../evil", "x/../../y", "x#frag", "a?b=c", "%2F%2Fevil.example"],
)
def test_a_client_ref_cannot_move_the_preview_to_another_host(ref):
    url = preview_url(TEMPLATE, HOSTS, ref, "req-1")
    assert url.startswith("https://preview.example/media/")
    tail = url[len("https://preview.example/media/") :]
    assert "/" not in tail and "#" not in tail and tail.count("?") == 1


def test_previews_only_from_allowed_https_hosts():
    assert preview_url(TEMPLATE, HOSTS, "", "r") is None  # no ref: no preview
    assert preview_url(None, HOSTS, "x", "r") is None
    assert preview_url("https://other.example/{client_ref}", HOSTS, "x", "r") is None
    assert preview_url("http://preview.example/{client_ref}", HOSTS, "x", "r") is None
    assert preview_url("{client_ref}", HOSTS, "https://preview.example/x", "r") is None


def test_spreadsheet_cells_never_start_a_formula():
    for value in ('=HYPERLINK("http://x")', "+1", "-1", "@SUM(A1)"):
        assert spreadsheet_safe(value).startswith("'")
    assert spreadsheet_safe("https://x") == "https://x"


def test_decisions_chart_stacks_an_hour_per_bar():
    now = datetime(2026, 12, 7, 12, 30, tzinfo=UTC)
    hour = int(now.timestamp()) // 3600
    chart = decisions_chart(
        {(hour, "block"): 2, (hour, "review"): 2, (hour - 23, "allow"): 1}, now, 24
    )
    assert chart.peak == 4 and chart.totals == {"block": 2, "review": 2, "allow": 1}
    block, review = (b for b in chart.bars if b.x > 90)
    assert (block.height, review.height) == (50.0, 50.0) and review.y == 0.0
    assert [b.kind for b in chart.bars if b.x < 5] == ["allow"]
    # a week in 6-hour bars: the same decisions, summed into 28 bars
    week = decisions_chart(
        {(hour, "block"): 2, (hour - 5, "block"): 1, (hour - 6, "allow"): 3}, now, 168, 6
    )
    assert week.totals == {"block": 3, "review": 0, "allow": 3} and week.peak == 3
    assert (chart.per, week.per) == ("h", "6 h")
    assert len({b.x for b in week.bars}) == 2 and all(b.width < 100 / 28 for b in week.bars)
    newest = [b for b in week.bars if b.x == max(b.x for b in week.bars)]
    assert [(b.kind, b.height) for b in newest] == [("block", 100.0)]  # hours -5..0


def test_timeline_and_page_pairs():
    match = {
        "unit": "seconds",
        "segments": [{"query_start": 0, "query_end": 10, "known_start": 90, "known_end": 100}],
    }
    chart = timeline(match)
    upload, known = chart.bars
    assert (upload.kind, upload.x, round(upload.width)) == ("upload", 0.0, 10)
    assert (known.kind, known.x, round(known.width)) == ("known", 90.0, 10)
    assert timeline({"segments": []}) is None
    pdf = {
        "unit": "pages",
        "segments": [{"query_start": 2, "query_end": 2, "known_start": 9, "known_end": 9}],
    }
    assert page_pairs(pdf) == [(2, 9)]


def test_console_settings_come_from_the_config_file(tmp_path):
    from hashsvc.core.config import load_config

    path = tmp_path / "hashsvc.toml"
    path.write_text(
        "[console]\n"
        'preview_url_template = "https://media.internal/p/{client_ref}"\n'
        'preview_allowed_hosts = ["media.internal"]\n'
        "page_size = 20\n"
    )
    console = load_config(str(path)).console
    assert console.preview_allowed_hosts == ("media.internal",)
    assert (console.page_size, console.upload_max_files) == (20, 100)
    path.write_text("[console]\npage_size = 0\n")
    with pytest.raises(ValueError, match="page_size"):
        load_config(str(path))
    path.write_text("[console]\nno_such = 1\n")
    with pytest.raises(ValueError, match="unknown setting"):
        load_config(str(path))
