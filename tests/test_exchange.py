"""Partner feeds (issue 22) against real local HTTP servers that speak the
TCAP and ThreatExchange APIs as python-threatexchange's clients call them
(hashsvc_testing/exchange_servers.py), and the local-file exchange."""

from __future__ import annotations

import dataclasses
import json
import secrets

import grpc
import pytest

from hashsvc.core.config import ExchangeSettings
from hashsvc.v1 import hashsvc_pb2 as pb
from hashsvc_testing.exchange_servers import TE_TOKEN, TcapServer, ThreatExchangeServer

SETTINGS = ExchangeSettings(
    background=False,
    http_timeout_seconds=1.0,
    http_retries=0,
    min_every_seconds=1,
    retry_base_seconds=5,
    feedback_retry_seconds=0.01,
)


@pytest.fixture
def harness_config(tmp_path) -> dict:
    """File feeds may read the test's own directory (exchange.file_dir)."""
    return {"exchange": dataclasses.replace(SETTINGS, file_dir=str(tmp_path))}


def _hex(nbytes: int = 32) -> str:
    return secrets.token_hex(nbytes)


def _set(stubs, md, name="partners"):
    stubs.curation.CreateSet(pb.CreateSetRequest(name=name), metadata=md)


def _add(stubs, md, name, api, credentials="", **options):
    return stubs.exchange.AddFeed(
        pb.AddFeedRequest(
            name=name,
            api=api,
            set="partners",
            options={k: str(v) for k, v in options.items()},
            every_seconds=60,
            credentials=credentials,
            labels={"partner": "gifct"},
        ),
        metadata=md,
    )


def _fetch(stubs, md, name, full=False):
    messages = list(
        stubs.exchange.FetchFeed(pb.FetchFeedRequest(name=name, full=full), metadata=md)
    )
    assert messages[-1].done
    return messages


def _entries(stubs, md) -> dict[str, pb.Entry]:
    out = {}
    token = ""
    while True:
        page = stubs.curation.ListEntries(
            pb.ListEntriesRequest(set="partners", page_size=1000, page_token=token), metadata=md
        )
        out.update({e.name: e for e in page.entries})
        token = page.next_page_token
        if not token:
            return out


def _match_hash(harness, kind: str, value: str) -> pb.MatchResponse:
    stubs, md = harness.stubs("matcher")
    return stubs.matcher.Match(
        pb.MatchRequest(signal=pb.SignalValue(signal_type=kind, value=value)), metadata=md
    )


# -- the local file exchange: a whole snapshot each time


def test_file_feed_snapshot_adds_skips_and_deletes(harness, tmp_path):
    stubs, md = harness.stubs("operator")
    _set(stubs, md)
    kept, dropped = _hex(), _hex()
    path = tmp_path / "list.txt"
    path.write_text(f"pdq {kept}\npdq {dropped}\nurl https://example.org/x\n")
    _add(stubs, md, "local-list", "file", path=path)
    # an analyst added the dropped hash locally too: it must survive the feed's deletion
    stubs.curation.AddEntry(
        pb.AddEntryRequest(
            set="partners",
            name="analyst-1",
            signal=pb.SignalValue(signal_type="pdq", value=dropped),
        ),
        metadata=md,
    )
    last = _fetch(stubs, md, "local-list")[-1]
    assert (last.added, last.skipped, last.deleted) == (2, 1, 0)
    entries = _entries(stubs, md)
    feed_entry = entries[f"local-list:pdq:{kept}"]
    assert dict(feed_entry.labels) == {"partner": "gifct", "feed": "local-list"}
    assert _match_hash(harness, "pdq", kept).decision == pb.BLOCK

    path.write_text(f"pdq {kept}\n")  # the partner dropped one hash
    last = _fetch(stubs, md, "local-list")[-1]
    assert (last.added, last.deleted) == (0, 1)
    entries = _entries(stubs, md)
    assert f"local-list:pdq:{dropped}" not in entries
    assert "analyst-1" in entries  # the local entry keeps matching
    matched = _match_hash(harness, "pdq", dropped)
    assert [m.entry for m in matched.matches] == ["analyst-1"]
    feed = stubs.exchange.GetFeed(pb.GetFeedRequest(name="local-list"), metadata=md)
    assert (feed.added, feed.deleted, feed.items, feed.last_result) == (2, 1, 1, "ok")


def test_file_feed_missing_file_fails_clearly_and_keeps_entries(harness, tmp_path):
    stubs, md = harness.stubs("operator")
    _set(stubs, md)
    path = tmp_path / "list.txt"
    value = _hex()
    path.write_text(f"pdq {value}\n")
    _add(stubs, md, "f", "file", path=path)
    _fetch(stubs, md, "f")
    path.unlink()
    with pytest.raises(grpc.RpcError) as err:
        _fetch(stubs, md, "f")
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "cannot read" in err.value.details()
    feed = stubs.exchange.GetFeed(pb.GetFeedRequest(name="f"), metadata=md)
    assert feed.last_result == "failed" and feed.failures == 1
    assert f"f:pdq:{value}" in _entries(stubs, md)  # nothing lost


# -- TCAP


def test_tcap_fetch_logs_in_once_for_all_its_pages(harness):
    """The library logs in before every page; a fetch of many pages (1M
    hashes: 100) logs in once and keeps its connection."""
    stubs, md = harness.stubs("operator")
    _set(stubs, md)
    with TcapServer(page_size=2) as tcap:
        for _ in range(7):
            tcap.add(_hex())
        _add(stubs, md, "tcap", "tcap", "user:secret-pass", base_url=tcap.url)
        assert _fetch(stubs, md, "tcap")[-1].added == 7
        assert (tcap.page_requests, len(tcap.tokens)) == (4, 1)
        tcap.add(_hex())
        assert _fetch(stubs, md, "tcap")[-1].added == 1
        assert len(tcap.tokens) == 2  # a fetch's login is its own


def test_tcap_token_expired_mid_fetch_logs_in_again_once(harness):
    """One login a fetch: a long fetch outlives the token. A 401 mid-fetch
    logs in again and asks for that page once more; a partner that refuses
    the new token too fails the fetch, the pages before it kept."""
    stubs, md = harness.stubs("operator")
    _set(stubs, md)
    with TcapServer(page_size=2) as tcap:
        for _ in range(7):
            tcap.add(_hex())
        tcap.token_pages = 2  # each token expires after two pages
        _add(stubs, md, "tcap", "tcap", "user:secret-pass", base_url=tcap.url)
        assert _fetch(stubs, md, "tcap")[-1].added == 7
        # pages 1-2 on the first token, 3-4 on the second: no page asked twice
        assert (tcap.page_requests, len(tcap.tokens), len(tcap.expired)) == (4, 2, 2)
        assert len(_entries(stubs, md)) == 7

        # every new token refused at once (revoked): one retry, then a clear failure
        for _ in range(5):
            tcap.add(_hex())
        before = tcap.page_requests
        original_route = tcap.route

        def refuse_after_first_page(method, path, query, form, headers):
            if method == "GET" and tcap.page_requests > before:
                return 401, {"detail": "Given token not valid for any token type"}
            return original_route(method, path, query, form, headers)

        tcap.route = refuse_after_first_page
        with pytest.raises(grpc.RpcError) as err:
            _fetch(stubs, md, "tcap")
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "401" in err.value.details()
        logins = len(tcap.tokens)
        assert logins == 4  # the fetch's login, and one more for the refused page
        assert len(_entries(stubs, md)) == 9  # the first page kept
        feed = stubs.exchange.GetFeed(pb.GetFeedRequest(name="tcap"), metadata=md)
        assert (feed.last_result, feed.failures) == ("failed", 1)


def test_fetches_leave_no_thread_or_store_connection_behind(harness):
    """Every fetch commits on the server's one committer thread, and the
    connection of a thread that ended (a fetch started over gRPC runs on its
    own) is closed: each fetch left two SQLite connections open, 4 file
    descriptors, which a feed fetched every 15 minutes ran out of."""
    import os
    import threading

    stubs, md = harness.stubs("operator")
    _set(stubs, md)
    with TcapServer(page_size=2) as tcap:
        _add(stubs, md, "tcap", "tcap", "user:secret-pass", base_url=tcap.url)
        tcap.add(_hex())
        _fetch(stubs, md, "tcap")
        fds = len(os.listdir("/proc/self/fd"))
        for _ in range(8):
            tcap.add(_hex())
            assert _fetch(stubs, md, "tcap")[-1].added == 1
        assert len(os.listdir("/proc/self/fd")) <= fds + 4
    committers = [t for t in threading.enumerate() if t.name.startswith("exchange-commit")]
    assert len(committers) <= 1


def test_tcap_first_incremental_deletion_relabel_paging(harness):
    stubs, md = harness.stubs("operator")
    _set(stubs, md)
    with TcapServer(page_size=2) as tcap:
        pdqs = [_hex() for _ in range(4)]
        for value in pdqs:
            tcap.add(value, ideology="far-right", file_type="png")
        sha512 = _hex(64)
        tcap.add(sha512, algorithm="SHA512", file_type="mp4")
        tcap.add(_hex(16), algorithm="TLSH")  # a type hashsvc does not keep
        _add(stubs, md, "tcap", "tcap", "user:secret-pass", base_url=tcap.url)
        messages = _fetch(stubs, md, "tcap")
        last = messages[-1]
        assert (last.pages, last.added, last.skipped) == (3, 5, 1)
        assert len(messages) == 4  # a progress message per page, then done
        entry = _entries(stubs, md)[f"tcap:pdq:{pdqs[0]}"]
        assert entry.labels["tcap_ideology"] == "far-right"
        assert entry.labels["tcap_file_type"] == "png"
        assert entry.labels["feed"] == "tcap" and entry.labels["source_id"]
        # SHA-512 is kept for exact match
        assert _match_hash(harness, "sha512", sha512).decision == pb.BLOCK
        checkpoint = stubs.exchange.GetFeed(pb.GetFeedRequest(name="tcap"), metadata=md).checkpoint
        assert json.loads(checkpoint)["checkpoint"]

        requests_before = tcap.page_requests
        tcap.delete(pdqs[1])
        tcap.add(pdqs[2], ideology="islamist", file_type="png")  # relabelled at the source
        new = _hex()
        tcap.add(new)
        last = _fetch(stubs, md, "tcap")[-1]
        assert (last.added, last.updated, last.deleted) == (1, 1, 1)
        assert tcap.page_requests - requests_before == 2  # only what changed: 3 rows
        entries = _entries(stubs, md)
        assert f"tcap:pdq:{pdqs[1]}" not in entries
        assert entries[f"tcap:pdq:{pdqs[2]}"].labels["tcap_ideology"] == "islamist"
        assert _match_hash(harness, "pdq", new).decision == pb.BLOCK
        assert _match_hash(harness, "pdq", pdqs[1]).decision == pb.ALLOW

        # a fetch with nothing new changes nothing, and --full loads nothing twice
        assert _fetch(stubs, md, "tcap")[-1].added == 0
        last = _fetch(stubs, md, "tcap", full=True)[-1]
        assert (last.added, last.updated) == (0, 0)
        assert len(_entries(stubs, md)) == 5


def test_tcap_wrong_credentials_fail_clearly_and_lose_nothing(harness):
    stubs, md = harness.stubs("operator")
    _set(stubs, md)
    with TcapServer() as tcap:
        value = _hex()
        tcap.add(value)
        _add(stubs, md, "tcap", "tcap", "user:secret-pass", base_url=tcap.url)
        _fetch(stubs, md, "tcap")
        before = stubs.exchange.GetFeed(pb.GetFeedRequest(name="tcap"), metadata=md)
        tcap.password = "rotated"  # the partner rotated it: ours is now wrong
        tcap.add(_hex())
        with pytest.raises(grpc.RpcError) as err:
            _fetch(stubs, md, "tcap")
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "HTTP 400" in err.value.details() and "credentials refused" in err.value.details()
        assert "secret-pass" not in err.value.details()
        after = stubs.exchange.GetFeed(pb.GetFeedRequest(name="tcap"), metadata=md)
        assert after.checkpoint == before.checkpoint
        assert after.last_result == "failed" and "credentials refused" in after.last_error
        assert list(_entries(stubs, md)) == [f"tcap:pdq:{value}"]


def test_credentials_are_write_only(harness):
    stubs, md = harness.stubs("operator")
    _set(stubs, md)
    secret = "user:do-not-show-" + secrets.token_hex(8)
    with TcapServer(password=secret.split(":")[1]) as tcap:
        tcap.add(_hex())
        added = _add(stubs, md, "tcap", "tcap", secret, base_url=tcap.url)
        _fetch(stubs, md, "tcap")
        shown = [
            added,
            stubs.exchange.GetFeed(pb.GetFeedRequest(name="tcap"), metadata=md),
            stubs.exchange.ListFeeds(pb.ListFeedsRequest(), metadata=md),
        ]
        assert added.has_credentials
        for message in shown:
            assert secret.split(":")[1] not in str(message)
        a_stubs, a_md = harness.stubs("auditor")
        history = a_stubs.audit.QueryHistory(pb.QueryHistoryRequest(page_size=1000), metadata=a_md)
        assert "ExchangeAdd" in str(history) and "ExchangeFetch" in str(history)
        assert secret.split(":")[1] not in str(history)
    # malformed credentials are refused without being echoed
    with pytest.raises(grpc.RpcError) as err:
        _add(stubs, md, "bad", "tcap", "no-colon-here-secret", base_url="http://127.0.0.1:9/")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "no-colon-here-secret" not in err.value.details()


def test_server_error_and_hanging_server_time_out_and_back_off(harness):
    stubs, md = harness.stubs("operator")
    _set(stubs, md)
    with TcapServer() as tcap:
        tcap.add(_hex())
        _add(stubs, md, "tcap", "tcap", "user:secret-pass", base_url=tcap.url)
        tcap.fail_status = 500
        with pytest.raises(grpc.RpcError) as err:
            _fetch(stubs, md, "tcap")
        assert "HTTP 500" in err.value.details()
        tcap.fail_status = 0
        tcap.hang_seconds = 30  # longer than the 1 s timeout
        with pytest.raises(grpc.RpcError) as err:
            _fetch(stubs, md, "tcap")
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "timed out" in err.value.details().lower()
        feed = stubs.exchange.GetFeed(pb.GetFeedRequest(name="tcap"), metadata=md)
        assert feed.failures == 2 and feed.last_result == "failed"
        # backoff: the next run is sooner than --every (60 s) after a failure
        assert feed.next_run_at.seconds - feed.last_fetch_at.seconds <= 20
        tcap.hang_seconds = 0
        assert _fetch(stubs, md, "tcap")[-1].added == 1
        feed = stubs.exchange.GetFeed(pb.GetFeedRequest(name="tcap"), metadata=md)
        assert feed.failures == 0 and feed.last_error == ""


# -- ThreatExchange (GIFCT)


def test_threatexchange_tags_paging_deletion_and_feedback(harness):
    stubs, md = harness.stubs("operator")
    _set(stubs, md)
    with ThreatExchangeServer(page_size=2) as te:
        values = [_hex() for _ in range(3)]
        for value in values:
            te.add(value, tags=["entity:ISIS", "content_type:video", "gifct"])
        te.add(_hex(16), type="HASH_MD5", tags=["behaviour:recruitment"])
        te.add("https://example.org", type="URI")  # not a hash hashsvc keeps
        _add(stubs, md, "gifct", "threatexchange", TE_TOKEN, privacy_group=303, base_url=te.url)
        last = _fetch(stubs, md, "gifct")[-1]
        assert (last.pages, last.added, last.skipped) == (3, 4, 1)
        entry = _entries(stubs, md)[f"gifct:hash_pdq:{values[0]}"]
        assert entry.labels["entity"] == "ISIS"
        assert entry.labels["content_type"] == "video"
        assert entry.labels["tags"] == "gifct"
        assert entry.labels["source_id"].isdigit()

        te.add(values[1], should_delete=True)
        te.add(values[2], tags=["entity:AQ"])  # relabelled
        last = _fetch(stubs, md, "gifct")[-1]
        assert (last.deleted, last.updated) == (1, 1)
        entries = _entries(stubs, md)
        assert f"gifct:hash_pdq:{values[1]}" not in entries
        assert entries[f"gifct:hash_pdq:{values[2]}"].labels["entity"] == "AQ"

        # a reviewer's verdict goes back as a reaction, retried when the API fails
        r_stubs, r_md = harness.stubs("reviewer")
        te.fail_posts = 1
        item = r_stubs.exchange.SendFeedback(
            pb.SendFeedbackRequest(
                feed="gifct", entry=f"gifct:hash_pdq:{values[0]}", verdict="false_positive"
            ),
            metadata=r_md,
        )
        assert item.state == "queued"
        feeds = harness.running.feeds
        assert feeds.send_due_feedback() == 0  # 500: kept queued
        shown = stubs.exchange.GetFeed(pb.GetFeedRequest(name="gifct"), metadata=md).feedback
        assert shown[0].state == "queued" and shown[0].attempts == 1 and shown[0].last_error
        _wait_for_retry()
        assert feeds.send_due_feedback() == 1
        descriptor = int(entries[f"gifct:hash_pdq:{values[0]}"].labels["source_id"])
        assert te.reactions == [(descriptor, "DISAGREE_WITH_TAGS")]
        shown = stubs.exchange.GetFeed(pb.GetFeedRequest(name="gifct"), metadata=md).feedback
        assert shown[0].state == "sent"
        with pytest.raises(grpc.RpcError) as err:  # not an entry of the feed
            r_stubs.exchange.SendFeedback(
                pb.SendFeedbackRequest(feed="gifct", entry="nope", verdict="confirmed"),
                metadata=r_md,
            )
        assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_an_entrys_feedback_shows_on_the_entry(harness, tmp_path, monkeypatch):
    """Issue 22: a verdict's state is visible on the entry: GetFeed with an
    entry (`exchange show NAME --entry E`) lists that entry's feedback only,
    queued, then as the fetcher left it."""
    import io
    from contextlib import redirect_stdout

    from hashsvc.client.cli import main

    stubs, md = harness.stubs("operator")
    _set(stubs, md)
    values = [_hex(), _hex()]
    path = tmp_path / "list.txt"
    path.write_text("".join(f"pdq {v}\n" for v in values))
    _add(stubs, md, "f", "file", path=path)
    _fetch(stubs, md, "f")
    first, second = sorted(_entries(stubs, md))
    r_stubs, r_md = harness.stubs("reviewer")
    for entry, verdict in ((first, "confirmed"), (second, "false_positive")):
        r_stubs.exchange.SendFeedback(
            pb.SendFeedbackRequest(feed="f", entry=entry, verdict=verdict), metadata=r_md
        )
    shown = stubs.exchange.GetFeed(pb.GetFeedRequest(name="f", entry=first), metadata=md)
    assert [(f.entry, f.verdict, f.state) for f in shown.feedback] == [
        (first, "confirmed", "queued")
    ]
    harness.running.feeds.send_due_feedback()  # a file takes no feedback
    monkeypatch.setenv("HASHSVC_TOKEN", harness.tokens["operator"])
    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["--server", harness.address, "exchange", "show", "f", "--entry", second,
                     "--json"]) == 0  # fmt: skip
    feedback = json.loads(out.getvalue())["feedback"]
    assert [(f["entry"], f["verdict"], f["state"]) for f in feedback] == [
        (second, "false_positive", "unsupported")
    ]
    nothing = stubs.exchange.GetFeed(pb.GetFeedRequest(name="f", entry="f:none"), metadata=md)
    assert list(nothing.feedback) == []


def _wait_for_retry() -> None:
    import time

    time.sleep(0.1)  # feedback_retry_seconds is 0.01 (doubling once)


def test_a_partner_cannot_pose_as_another_feed(harness):
    stubs, md = harness.stubs("operator")
    _set(stubs, md)
    with ThreatExchangeServer() as te:
        value = _hex()
        te.add(value, tags=["feed:other", "source_id:1", "partner:evil", "entity:ISIS"])
        _add(stubs, md, "gifct", "threatexchange", TE_TOKEN, privacy_group=303, base_url=te.url)
        _fetch(stubs, md, "gifct")
        labels = _entries(stubs, md)[f"gifct:hash_pdq:{value}"].labels
        assert labels["feed"] == "gifct" and labels["partner"] == "gifct"
        assert labels["source_id"] != "1" and labels["entity"] == "ISIS"


def test_feed_commands_and_their_errors(harness, tmp_path):
    stubs, md = harness.stubs("operator")
    _set(stubs, md)
    path = tmp_path / "l.txt"
    path.write_text("")
    _add(stubs, md, "f", "file", path=path)
    bad = [
        pb.AddFeedRequest(name="f", api="file", set="partners", options={"path": str(path)}),
        pb.AddFeedRequest(name="g", api="nope", set="partners"),
        pb.AddFeedRequest(name="g", api="file", set="missing", options={"path": str(path)}),
        pb.AddFeedRequest(name="bad name", api="file", set="partners"),
        pb.AddFeedRequest(name="g", api="threatexchange", set="partners", credentials=TE_TOKEN),
        pb.AddFeedRequest(name="g", api="file", set="partners", options={"privacy_group": "1"}),
        pb.AddFeedRequest(
            name="g", api="file", set="partners", options={"path": "x"}, every_seconds=-5
        ),
    ]
    stubs.curation.CreateSet(pb.CreateSetRequest(name="benign", allow_list=True), metadata=md)
    bad.append(pb.AddFeedRequest(name="g", api="file", set="benign", options={"path": str(path)}))
    codes = []
    for request in bad:
        with pytest.raises(grpc.RpcError) as err:
            stubs.exchange.AddFeed(request, metadata=md)
        codes.append(err.value.code())
    assert codes == [
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION,  # a partner never fills an allow list
    ]
    disabled = stubs.exchange.SetFeedEnabled(
        pb.SetFeedEnabledRequest(name="f", enabled=False), metadata=md
    )
    assert not disabled.enabled
    assert harness.running.feeds.run_due() == []  # a disabled feed is not fetched
    stubs.exchange.RemoveFeed(pb.RemoveFeedRequest(name="f"), metadata=md)
    with pytest.raises(grpc.RpcError) as err:
        stubs.exchange.GetFeed(pb.GetFeedRequest(name="f"), metadata=md)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_a_reviewers_verdict_on_a_feed_entry_goes_back_to_the_source(harness):
    """Review resolves a match on a ThreatExchange entry: the verdict is
    queued on the feed and sent as a reaction to the entry's descriptor."""
    stubs, md = harness.stubs("operator")
    stubs.curation.CreateSet(
        pb.CreateSetRequest(
            name="partners",
            thresholds=[pb.Threshold(signal_type="pdq", block_distance=10, review_distance=60)],
        ),
        metadata=md,
    )
    with ThreatExchangeServer() as te:
        value = bytes.fromhex(_hex())
        te.add(value.hex(), tags=["entity:ISIS"], descriptor_id=777)
        _add(stubs, md, "gifct", "threatexchange", TE_TOKEN, privacy_group=303, base_url=te.url)
        _fetch(stubs, md, "gifct")
        near = bytes([value[0] ^ 0xFF, value[1] ^ 0xFF, value[2] ^ 0xFF]) + value[3:]  # 24 bits
        assert _match_hash(harness, "pdq", near.hex()).decision == pb.REVIEW
        r_stubs, r_md = harness.stubs("reviewer")
        claimed = r_stubs.review.ClaimReviewItem(pb.ClaimReviewItemRequest(), metadata=r_md)
        r_stubs.review.ResolveReviewItem(
            pb.ResolveReviewItemRequest(id=claimed.id, resolution="false_positive"),
            metadata=r_md,
        )
        feedback = stubs.exchange.GetFeed(pb.GetFeedRequest(name="gifct"), metadata=md).feedback
        assert [(f.entry, f.verdict, f.state) for f in feedback] == [
            (f"gifct:hash_pdq:{value.hex()}", "false_positive", "queued")
        ]
        assert harness.running.feeds.send_due_feedback() == 1
        assert te.reactions == [(777, "DISAGREE_WITH_TAGS")]


def test_file_feeds_are_off_without_file_dir(make_harness, store_url, tmp_path):
    """Without exchange.file_dir an operator token would make the server read
    (and load as hashes) any file it can: file feeds are refused, saying
    what to set; a feed added before file_dir was unset fetches nothing."""
    listing = tmp_path / "ok.txt"
    listing.write_text(f"pdq {_hex()}\n")
    h = make_harness(store_url, exchange=SETTINGS)
    stubs, md = h.stubs("operator")
    _set(stubs, md)
    for path in ("/etc/passwd", str(listing)):
        with pytest.raises(grpc.RpcError) as err:
            _add(stubs, md, "f", "file", path=path)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "set exchange.file_dir" in err.value.details()
    assert list(stubs.exchange.ListFeeds(pb.ListFeedsRequest(), metadata=md).feeds) == []
    make_harness.stop(h)

    allowed = dataclasses.replace(SETTINGS, file_dir=str(tmp_path))
    h = make_harness(store_url, exchange=allowed)
    stubs, md = h.stubs("operator")
    _add(stubs, md, "f", "file", path=listing)
    make_harness.stop(h)
    h = make_harness(store_url, exchange=SETTINGS)  # file_dir unset since
    stubs, md = h.stubs("operator")
    with pytest.raises(grpc.RpcError) as err:
        _fetch(stubs, md, "f")
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "set exchange.file_dir" in err.value.details()
    assert _entries(stubs, md) == {}


def test_file_feeds_stay_within_file_dir(make_harness, store_url, tmp_path):
    allowed = tmp_path / "lists"
    allowed.mkdir()
    (allowed / "ok.txt").write_text(f"pdq {_hex()}\n")
    secret = tmp_path / "secret.txt"
    secret.write_text(f"pdq {_hex()}\n")
    settings = dataclasses.replace(SETTINGS, file_dir=str(allowed))
    h = make_harness(store_url, exchange=settings)
    stubs, md = h.stubs("operator")
    _set(stubs, md)
    (allowed / "link.txt").symlink_to(secret)
    for path in ("/etc/passwd", str(allowed / ".." / "secret.txt"), str(allowed / "link.txt")):
        with pytest.raises(grpc.RpcError) as err:
            _add(stubs, md, "f", "file", path=path)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "exchange.file_dir" in err.value.details()
    _add(stubs, md, "f", "file", path=allowed / "ok.txt")
    assert _fetch(stubs, md, "f")[-1].added == 1
    # the listing swapped for a link out of file_dir after the feed was
    # added: the fetch resolves it again and reads nothing
    (allowed / "ok.txt").unlink()
    (allowed / "ok.txt").symlink_to(secret)
    with pytest.raises(grpc.RpcError) as err:
        _fetch(stubs, md, "f")
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "must be within" in err.value.details()
    assert len(_entries(stubs, md)) == 1  # nothing of the secret file loaded, nothing deleted


def test_a_file_feed_past_max_file_bytes_or_not_a_file_is_not_read(
    make_harness, store_url, tmp_path
):
    """A listing larger than exchange.max_file_bytes (the library reads it
    whole), or a FIFO put in its place (a read that never ends), fails the
    fetch at once: nothing read, nothing of the feed deleted."""
    import os

    kept = _hex()
    path = tmp_path / "list.txt"
    path.write_text(f"pdq {kept}\n")
    settings = dataclasses.replace(SETTINGS, file_dir=str(tmp_path), max_file_bytes=1000)
    h = make_harness(store_url, exchange=settings)
    stubs, md = h.stubs("operator")
    _set(stubs, md)
    _add(stubs, md, "f", "file", path=path)
    assert _fetch(stubs, md, "f")[-1].added == 1
    # 15 new hashes (> 1000 bytes), the old one left out: read, it would delete it
    path.write_text("".join(f"pdq {_hex()}\n" for _ in range(15)))
    with pytest.raises(grpc.RpcError) as err:
        _fetch(stubs, md, "f")
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "exchange.max_file_bytes" in err.value.details()
    path.unlink()
    os.mkfifo(path)  # nobody writes to it: reading it would wait for ever
    with pytest.raises(grpc.RpcError) as err:
        _fetch(stubs, md, "f")
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "not a regular file" in err.value.details()
    assert list(_entries(stubs, md)) == [f"f:pdq:{kept}"]
    feed = stubs.exchange.GetFeed(pb.GetFeedRequest(name="f"), metadata=md)
    assert (feed.items, feed.failures, feed.last_result) == (1, 2, "failed")


def _swap_after_the_path_check(monkeypatch, swap):
    """`swap(path)` runs right after the fetch resolved the feed's path
    within exchange.file_dir: what a race with the file's owner would do."""
    from hashsvc.exchange.feeds import Feeds

    resolve = getattr(Feeds._file_path, "unswapped", Feeds._file_path)

    def resolve_then_swap(self, path):
        real = resolve(self, path)
        swap(real)
        return real

    resolve_then_swap.unswapped = resolve
    monkeypatch.setattr(Feeds, "_file_path", resolve_then_swap)


def _refused_with_nothing_loaded(stubs, md, kept, why, failures):
    # a deadline: a read waiting on a FIFO's writer would hang the fetch
    with pytest.raises(grpc.RpcError) as err:
        list(stubs.exchange.FetchFeed(pb.FetchFeedRequest(name="f"), metadata=md, timeout=30))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION, err.value.details()
    assert why in err.value.details()
    assert list(_entries(stubs, md)) == [f"f:pdq:{kept}"]  # nothing loaded, nothing deleted
    feed = stubs.exchange.GetFeed(pb.GetFeedRequest(name="f"), metadata=md)
    assert (feed.items, feed.failures, feed.last_result) == (1, failures, "failed")
    assert why in feed.last_error


def test_a_file_feed_swapped_after_its_check_is_refused(
    make_harness, store_url, tmp_path, monkeypatch
):
    """The file is opened once, checked on that descriptor and read within
    exchange.max_file_bytes: a listing that grows past the limit between
    the check and the read, a FIFO or a link put in its place after its path
    was checked, are all refused, with nothing loaded and nothing deleted."""
    import os

    kept = _hex()
    path = tmp_path / "list.txt"
    path.write_text(f"pdq {kept}\n")
    secret = tmp_path.parent / f"{tmp_path.name}-secret.txt"  # outside file_dir
    secret.write_text("".join(f"pdq {_hex()}\n" for _ in range(3)))
    limit = 1000
    # the listing is read in this process (os.fstat is swapped below), not
    # in a fetching child (exchange.fetch_process)
    settings = dataclasses.replace(
        SETTINGS, file_dir=str(tmp_path), max_file_bytes=limit, fetch_process=False
    )
    stubs, md = make_harness(store_url, exchange=settings).stubs("operator")
    _set(stubs, md)
    _add(stubs, md, "f", "file", path=path)
    assert _fetch(stubs, md, "f")[-1].added == 1
    small = "".join(f"pdq {_hex()}\n" for _ in range(5))  # under the limit
    assert len(small) < limit

    # grows past the limit right after the open descriptor's size was
    # checked: the read stops at the limit and refuses it (a listing cut
    # there would delete what it no longer lists)
    path.write_text(small)
    fstat = os.fstat
    inode = path.stat().st_ino

    def fstat_then_grow(fd):
        info = fstat(fd)
        if info.st_ino == inode:
            with open(path, "a") as grown:
                grown.write("".join(f"pdq {_hex()}\n" for _ in range(40)))
        return info

    monkeypatch.setattr(os, "fstat", fstat_then_grow)
    _refused_with_nothing_loaded(stubs, md, kept, "exchange.max_file_bytes", 1)
    monkeypatch.setattr(os, "fstat", fstat)

    # rewritten in place, shorter, right after the check (a producer's
    # `curl -o` or shell `>` during the fetch): read short, it would delete
    # everything past the cut; refused (the review's case: 600 of 1,000 read)
    path.write_text(small)
    inode = path.stat().st_ino
    calls = []

    def fstat_then_rewrite(fd):
        info = fstat(fd)
        if info.st_ino == inode and not calls:
            calls.append(fd)
            with open(path, "r+") as rewritten:
                rewritten.truncate(0)
                rewritten.write("pdq " + _hex() + "\n")
        return info

    monkeypatch.setattr(os, "fstat", fstat_then_rewrite)
    _refused_with_nothing_loaded(stubs, md, kept, "changed while it was read", 2)
    monkeypatch.setattr(os, "fstat", fstat)

    # a FIFO renamed over the path after the check: nobody writes to it
    def fifo(real):
        fifo_path = tmp_path / "fifo"
        if not fifo_path.exists():
            os.mkfifo(fifo_path)
        os.replace(fifo_path, real)

    path.write_text(small)
    _swap_after_the_path_check(monkeypatch, fifo)
    _refused_with_nothing_loaded(stubs, md, kept, "not a regular file", 3)

    # a link to a file outside file_dir renamed over the path after the check
    def link(real):
        link_path = tmp_path / "link"
        link_path.unlink(missing_ok=True)
        link_path.symlink_to(secret)
        os.replace(link_path, real)

    _swap_after_the_path_check(monkeypatch, link)
    _refused_with_nothing_loaded(stubs, md, kept, "symbolic link", 4)

    # a directory on the way swapped for a link after the check: what is
    # opened is not the file the path was resolved to
    monkeypatch.undo()
    inner = tmp_path / "inner"
    inner.mkdir()
    (inner / "list.txt").write_text(f"pdq {kept}\n")
    _add(stubs, md, "g", "file", path=inner / "list.txt")
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    outside.mkdir()
    (outside / "list.txt").write_text(secret.read_text())

    def moved_dir(real):
        if real.startswith(str(inner)) and not (tmp_path / "inner-old").exists():
            os.rename(inner, tmp_path / "inner-old")
            inner.symlink_to(outside)

    _swap_after_the_path_check(monkeypatch, moved_dir)
    with pytest.raises(grpc.RpcError) as err:
        list(stubs.exchange.FetchFeed(pb.FetchFeedRequest(name="g"), metadata=md, timeout=30))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "moved since its path was checked" in err.value.details()
    assert list(_entries(stubs, md)) == [f"f:pdq:{kept}"]

    # the same file, left alone, is read as before
    monkeypatch.undo()
    path.unlink()
    path.write_text(f"pdq {kept}\n{small}")
    assert _fetch(stubs, md, "f")[-1].added == 5


def test_library_sources_ncmec_and_stopncii_records():
    """NCMEC (an entry of fingerprints by its id) and StopNCII (type, value)
    deltas as the library yields them, turned into items."""
    from threatexchange.exchanges.clients.ncmec.hash_api import (
        NCMECEntryType,
        NCMECEntryUpdate,
    )

    from hashsvc.exchange.sources import _library_item

    pdq, md5 = _hex(), _hex(16)
    update = NCMECEntryUpdate(
        id="e1",
        member_id=42,
        entry_type=NCMECEntryType.image,
        deleted=False,
        classification="A1",
        fingerprints={"pdq": pdq, "md5": md5, "photodna": "zz"},
        feedback={},
    )
    item = _library_item("e1", update)
    assert (item.key, item.source_id, item.skipped) == ("id:e1", "e1", 1)
    assert item.signals == [("pdq", pdq), ("md5", md5)]
    assert item.labels == {"ncmec_classification": "A1"}
    assert _library_item("e1", None).deleted
    item = _library_item(("pdq", pdq.upper()), object())
    assert item.key == f"pdq:{pdq}" and item.signals == [("pdq", pdq)]
    assert _library_item(("url", "https://x"), object()).skipped == 1
    assert _library_item(("pdq", pdq), None).deleted


def test_sealed_credentials_survive_no_tampering_with_the_feed(make_harness, tmp_path):
    """With exchange.credentials_key_file, someone who can write to the
    database reads no credentials, and pointing the feed at their own server
    makes the fetch fail closed: the token never leaves."""
    key_file = tmp_path / "feeds.key"
    key_file.write_bytes(secrets.token_bytes(48))
    settings = dataclasses.replace(SETTINGS, credentials_key_file=str(key_file))
    db = tmp_path / "db.sqlite"
    h = make_harness(f"sqlite:///{db}", exchange=settings)
    stubs, md = h.stubs("operator")
    _set(stubs, md)
    with TcapServer(password="sealed-pass-123") as tcap, TcapServer() as attacker:
        tcap.add(_hex())
        _add(stubs, md, "tcap", "tcap", "user:sealed-pass-123", base_url=tcap.url)
        assert _fetch(stubs, md, "tcap")[-1].added == 1
        store = h.core.store
        feed = store.get_feed("tcap")
        assert b"sealed-pass-123" not in store.feed_secret(feed.id)
        with store._write() as cur:  # the attacker's UPDATE
            cur.execute(
                "UPDATE exchange_feeds SET options = ? WHERE id = ?",
                (json.dumps({"base_url": attacker.url}), feed.id),
            )
        with pytest.raises(grpc.RpcError) as err:
            _fetch(stubs, md, "tcap")
        assert "do not open" in err.value.details()
        assert attacker.requests == 0  # the credentials never left


def test_threatexchange_wrong_token_and_outage_never_show_the_token(make_harness, tmp_path, caplog):
    """A refused token and a server that fails every retry: clear errors,
    the failures counted in the metrics, and the token (sent in the URL's
    query) in no error, status or log line."""
    import logging

    # urllib3 logs its retries in the process that fetches: this one, for
    # caplog (a fetching child, exchange.fetch_process, installs the same
    # filter when it imports the adapters, and logs warnings only)
    settings = dataclasses.replace(SETTINGS, http_retries=2, fetch_process=False)
    h = make_harness(f"sqlite:///{tmp_path}/db.sqlite", exchange=settings)
    stubs, md = h.stubs("operator")
    _set(stubs, md)
    secret_part = TE_TOKEN.split("|")[1]
    with ThreatExchangeServer(token="9876543210|zyxwvutsrqponmlkjihgfedcba") as te:
        te.add(_hex())
        _add(stubs, md, "gifct", "threatexchange", TE_TOKEN, privacy_group=303, base_url=te.url)
        caplog.set_level(logging.DEBUG)
        with pytest.raises(grpc.RpcError) as refused:
            _fetch(stubs, md, "gifct")
        assert "HTTP 400" in refused.value.details()
        assert "credentials refused" in refused.value.details()
        te.token = TE_TOKEN
        te.fail_status = 503  # retried by urllib3 (logged), then failed
        with pytest.raises(grpc.RpcError) as outage:
            _fetch(stubs, md, "gifct")
        feed = stubs.exchange.GetFeed(pb.GetFeedRequest(name="gifct"), metadata=md)
    for text in (refused.value.details(), outage.value.details(), str(feed), caplog.text):
        assert secret_part not in text
    assert "Incremented Retry" in caplog.text  # urllib3 logged its retries, redacted
    failed = h.running.metrics.registry.get_sample_value(
        "hashsvc_feed_fetches_total", {"feed": "gifct", "result": "failed"}
    )
    assert failed == 2


def test_an_item_added_and_deleted_in_one_page_ends_deleted(harness):
    """Rows are applied in order: a page that adds a hash and then deletes it
    leaves no entry (and one that deletes and adds again, one)."""
    from hashsvc_testing.exchange_servers import TcapRecord

    stubs, md = harness.stubs("operator")
    _set(stubs, md)
    with TcapServer() as tcap:
        gone, back = _hex(), _hex()
        first = tcap.add(gone)
        tcap.records.append(TcapRecord(gone, deleted=True, updated_on=first.updated_on + 1e5, id=9))
        tcap.add(back)
        _add(stubs, md, "tcap", "tcap", "user:secret-pass", base_url=tcap.url)
        last = _fetch(stubs, md, "tcap")[-1]
        assert (last.added, last.deleted) == (1, 0)  # as the feed stands after the page
        assert list(_entries(stubs, md)) == [f"tcap:pdq:{back}"]
        assert _match_hash(harness, "pdq", gone).decision == pb.ALLOW
        feed = stubs.exchange.GetFeed(pb.GetFeedRequest(name="tcap"), metadata=md)
        assert feed.items == 1


def test_a_held_deletion_listed_again_keeps_the_entry_and_moves_the_checkpoint(harness):
    """A deletion held to the fetch's end and then listed again on a later
    page: the entry stays, and the fetch's checkpoint is stored (not the one
    kept before the deletion, which would replay those pages forever)."""
    from hashsvc_testing.exchange_servers import TcapRecord

    stubs, md = harness.stubs("operator")
    _set(stubs, md)
    with TcapServer(page_size=1) as tcap:
        kept, other = _hex(), _hex()
        first = tcap.add(kept)
        tcap.add(other)
        _add(stubs, md, "tcap", "tcap", "user:secret-pass", base_url=tcap.url)
        _fetch(stubs, md, "tcap")
        before = harness.core.store.get_feed("tcap").checkpoint
        when = first.updated_on + 1e5
        tcap.records.append(TcapRecord(kept, deleted=True, updated_on=when, id=first.id))
        tcap.records.append(TcapRecord(kept, updated_on=when + 1, id=first.id))
        last = _fetch(stubs, md, "tcap")[-1]
        assert last.deleted == 0
        assert _match_hash(harness, "pdq", kept).decision == pb.BLOCK
        after = harness.core.store.get_feed("tcap").checkpoint
        assert after != before
        assert json.loads(after) != json.loads(before)


def test_a_fetch_deleting_most_of_a_feed_deletes_nothing_and_fails(harness):
    """A broken or hostile ThreatExchange page marking most hashes deleted
    would tombstone the set (then ALLOW): past exchange.max_delete_fraction
    of what the feed held, none of the fetch's deletions is applied (not the
    earlier pages' either), the checkpoint stays, the fetch is failed (status,
    metric, history), every retry is refused alike (never half now and half
    of the rest next time) and every hash still matches. Within the limit,
    deletions spread over pages apply, with the last page's checkpoint."""
    stubs, md = harness.stubs("operator")
    _set(stubs, md)
    with ThreatExchangeServer(page_size=2) as te:
        values = _te_feed_fetched(stubs, md, te, 6)
        checkpoint = harness.core.store.get_feed("gifct").checkpoint
        for value in values[:4]:  # 4 of 6 over three pages: each under half
            te.add(value, should_delete=True)
        for _attempt in range(2):
            with pytest.raises(grpc.RpcError) as err:
                _fetch(stubs, md, "gifct")
            assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "4 of the feed's 6 items" in err.value.details()
            assert "exchange.max_delete_fraction" in err.value.details()
            feed = stubs.exchange.GetFeed(pb.GetFeedRequest(name="gifct"), metadata=md)
            assert feed.last_result == "failed" and "max_delete_fraction" in feed.last_error
            assert feed.items == 6
            assert harness.core.store.get_feed("gifct").checkpoint == checkpoint
            assert len(_entries(stubs, md)) == 6
            for value in values:
                assert _match_hash(harness, "pdq", value).decision == pb.BLOCK

        te.add(values[2])  # listed again after its deletion: 2 of 6 now
        te.add(values[3])
        last = _fetch(stubs, md, "gifct")[-1]
        assert last.deleted == 2
        assert sorted(_entries(stubs, md)) == sorted(f"gifct:hash_pdq:{v}" for v in values[2:])
        assert _match_hash(harness, "pdq", values[0]).decision == pb.ALLOW
        assert _match_hash(harness, "pdq", values[2]).decision == pb.BLOCK
        assert harness.core.store.get_feed("gifct").checkpoint != checkpoint

        # an operator who checked with the partner: this fetch only, recorded
        for value in values[2:5]:  # 3 of the 4 left
            te.add(value, should_delete=True)
        with pytest.raises(grpc.RpcError):
            _fetch(stubs, md, "gifct")
        request = pb.FetchFeedRequest(name="gifct", allow_mass_delete=True)
        last = list(stubs.exchange.FetchFeed(request, metadata=md))[-1]
        assert last.done and last.deleted == 3
        assert list(_entries(stubs, md)) == [f"gifct:hash_pdq:{values[5]}"]
    failed = harness.running.metrics.registry.get_sample_value(
        "hashsvc_feed_fetches_total", {"feed": "gifct", "result": "failed"}
    )
    assert failed == 3
    a_stubs, a_md = harness.stubs("auditor")
    history = a_stubs.audit.QueryHistory(pb.QueryHistoryRequest(page_size=1000), metadata=a_md)
    refused = [
        r
        for r in history.records
        if r.rpc == "ExchangeFetch" and "max_delete_fraction" in r.error_message
    ]
    assert len(refused) == 3 and all(r.status == "UNAVAILABLE" for r in refused)
    assert "allow_mass_delete" in str(history)


def _te_feed_fetched(stubs, md, te, count: int) -> list[str]:
    """`count` hashes at the ThreatExchange partner, the feed `gifct` of them
    added and fetched once; returns the hashes."""
    values = [_hex() for _ in range(count)]
    for value in values:
        te.add(value)
    _add(stubs, md, "gifct", "threatexchange", TE_TOKEN, privacy_group=303, base_url=te.url)
    _fetch(stubs, md, "gifct")
    return values


def test_slow_drip_deletions_are_refused_over_the_window(harness, tmp_path):
    """A feed deleting just under max_delete_fraction at every fetch would
    empty its set in a few fetches: the fraction holds over
    exchange.delete_window_seconds (24 h), against the feed's items when the
    window's deleting began; past it nothing is deleted (status, metric).
    Once the window has passed, deletions go on. Whole listings alike."""
    stubs, md = harness.stubs("operator")
    _set(stubs, md)
    store = harness.core.store
    with ThreatExchangeServer(page_size=100) as te:
        values = _te_feed_fetched(stubs, md, te, 10)
        for value in values[:4]:  # 4 of 10: within half
            te.add(value, should_delete=True)
        assert _fetch(stubs, md, "gifct")[-1].deleted == 4
        for value in values[4:6]:  # 2 of the 6 left, but 6 of 10 within the window
            te.add(value, should_delete=True)
        for _attempt in range(2):
            with pytest.raises(grpc.RpcError) as err:
                _fetch(stubs, md, "gifct")
            assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            details = err.value.details()
            assert "2 of the feed's 10 items after 4 deleted within the last 24 h" in details
            assert "exchange.delete_window_seconds" in details
            assert "exchange.max_delete_fraction" in details
            feed = stubs.exchange.GetFeed(pb.GetFeedRequest(name="gifct"), metadata=md)
            assert feed.last_result == "failed" and "delete_window_seconds" in feed.last_error
            assert feed.items == 6 and len(_entries(stubs, md)) == 6
            assert _match_hash(harness, "pdq", values[5]).decision == pb.BLOCK
        refused = harness.running.metrics.registry.get_sample_value(
            "hashsvc_feed_deletions_refused_total", {"feed": "gifct"}
        )
        assert refused == 4  # two fetches of 2
        # a day later the window has moved on: the 2 are 2 of 6
        with store._write() as cur:
            cur.execute("UPDATE exchange_deletions SET at = at - ?", (25 * 3600 * 1_000_000,))
        assert _fetch(stubs, md, "gifct")[-1].deleted == 2
        assert len(_entries(stubs, md)) == 4

    path = tmp_path / "list.txt"
    listed = [_hex() for _ in range(10)]
    path.write_text("".join(f"pdq {v}\n" for v in listed))
    _add(stubs, md, "f", "file", path=path)
    _fetch(stubs, md, "f")
    path.write_text("".join(f"pdq {v}\n" for v in listed[4:]))
    assert _fetch(stubs, md, "f")[-1].deleted == 4
    path.write_text("".join(f"pdq {v}\n" for v in listed[6:]))
    with pytest.raises(grpc.RpcError) as err:
        _fetch(stubs, md, "f")
    assert "leaves out 2 of the feed's 10 items after 4 deleted" in err.value.details()
    assert "exchange.snapshot_max_delete_fraction" in err.value.details()
    assert stubs.exchange.GetFeed(pb.GetFeedRequest(name="f"), metadata=md).items == 6

    # padded: a listing that drops 1 of 10 real items and adds 10 of junk
    # records its deletion against the 10 it held, not the 19 after its own
    # additions; the next, leaving out every real item, is refused
    path = tmp_path / "padded.txt"
    real = [_hex() for _ in range(10)]
    junk = [_hex() for _ in range(10)]
    path.write_text("".join(f"pdq {v}\n" for v in real))
    _add(stubs, md, "p", "file", path=path)
    _fetch(stubs, md, "p")
    path.write_text("".join(f"pdq {v}\n" for v in real[1:] + junk))
    assert _fetch(stubs, md, "p")[-1].deleted == 1
    path.write_text("".join(f"pdq {v}\n" for v in junk))
    with pytest.raises(grpc.RpcError) as err:
        _fetch(stubs, md, "p")
    assert "leaves out 9 of the feed's 10 items after 1 deleted" in err.value.details()
    assert stubs.exchange.GetFeed(pb.GetFeedRequest(name="p"), metadata=md).items == 19


def test_a_zero_delete_window_judges_each_fetch_alone(make_harness, store_url):
    settings = dataclasses.replace(SETTINGS, delete_window_seconds=0)
    h = make_harness(store_url, exchange=settings)
    stubs, md = h.stubs("operator")
    _set(stubs, md)
    with ThreatExchangeServer(page_size=100) as te:
        values = _te_feed_fetched(stubs, md, te, 10)
        for batch in (values[:4], values[4:6]):
            for value in batch:
                te.add(value, should_delete=True)
            assert _fetch(stubs, md, "gifct")[-1].deleted == len(batch)
        assert len(_entries(stubs, md)) == 4


@pytest.mark.parametrize("omit_length", [False, True])
def test_a_page_past_max_response_bytes_fails_the_fetch_and_keeps_the_checkpoint(
    make_harness, store_url, omit_length
):
    """A partner answer larger than exchange.max_response_bytes (declared in
    Content-Length, or not declared and read up to the limit) fails the
    fetch clearly; the pages before it stay loaded with their checkpoint, and
    the next fetch goes on from there without duplicates."""
    settings = dataclasses.replace(SETTINGS, max_response_bytes=4096)
    h = make_harness(store_url, exchange=settings)
    stubs, md = h.stubs("operator")
    _set(stubs, md)
    with TcapServer(page_size=2) as tcap:
        tcap.omit_length = omit_length
        values = [_hex() for _ in range(5)]
        for n, value in enumerate(values):
            tcap.add(value, ideology="x" * 8000 if n == 2 else "islamist")
        _add(stubs, md, "tcap", "tcap", "user:secret-pass", base_url=tcap.url)
        with pytest.raises(grpc.RpcError) as err:
            _fetch(stubs, md, "tcap")
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "larger than 4096 bytes (exchange.max_response_bytes)" in err.value.details()
        feed = stubs.exchange.GetFeed(pb.GetFeedRequest(name="tcap"), metadata=md)
        assert feed.last_result == "failed" and "max_response_bytes" in feed.last_error
        assert (feed.items, feed.added) == (2, 2)  # the first page, committed
        checkpoint = h.core.store.get_feed("tcap").checkpoint
        assert checkpoint and json.loads(checkpoint)["checkpoint"]
        assert (
            _fetch_fails_alike(stubs, md) and h.core.store.get_feed("tcap").checkpoint == checkpoint
        )

        tcap.add(values[2], ideology="islamist")  # the partner fixed the row
        last = _fetch(stubs, md, "tcap")[-1]
        assert last.added == 3
        assert sorted(_entries(stubs, md)) == sorted(f"tcap:pdq:{v}" for v in values)
        feed = stubs.exchange.GetFeed(pb.GetFeedRequest(name="tcap"), metadata=md)
        assert (feed.items, feed.added, feed.last_result) == (5, 5, "ok")


def _fetch_fails_alike(stubs, md) -> bool:
    with pytest.raises(grpc.RpcError) as err:
        _fetch(stubs, md, "tcap")
    return "max_response_bytes" in err.value.details()


def test_bad_rows_from_a_partner_are_counted_and_the_rest_loads(harness, tmp_path):
    stubs, md = harness.stubs("operator")
    _set(stubs, md)
    good = _hex()
    path = tmp_path / "list.txt"
    path.write_text(f"pdq not-hex\npdq abcd\npdq {good}\nmd5 {_hex(16)}\n")
    _add(stubs, md, "f", "file", path=path)
    last = _fetch(stubs, md, "f")[-1]
    assert (last.added, last.rejected) == (2, 2)
    assert _match_hash(harness, "pdq", good).decision == pb.BLOCK


def test_whole_listings_delete_what_they_leave_out_within_a_limit(harness, tmp_path):
    """A file that lost most of its lines (truncated) deletes nothing and
    fails; --full on TCAP deletes what the partner purged without a
    tombstone; a ThreatExchange checkpoint older than its 90 days of
    deletions is fetched whole the same way."""
    stubs, md = harness.stubs("operator")
    _set(stubs, md)
    values = [_hex() for _ in range(4)]
    path = tmp_path / "list.txt"
    path.write_text("".join(f"pdq {v}\n" for v in values))
    _add(stubs, md, "f", "file", path=path)
    _fetch(stubs, md, "f")
    path.write_text(f"pdq {values[0]}\n")  # 3 of 4 gone: more than half
    with pytest.raises(grpc.RpcError) as err:
        _fetch(stubs, md, "f")
    assert "snapshot_max_delete_fraction" in err.value.details()
    assert len(_entries(stubs, md)) == 4

    with TcapServer() as tcap:
        kept, purged = _hex(), _hex()
        tcap.add(kept)
        tcap.add(purged)
        _add(stubs, md, "tcap", "tcap", "user:secret-pass", base_url=tcap.url)
        _fetch(stubs, md, "tcap")
        tcap.records.remove(tcap.by_digest.pop(purged))  # no tombstone: just gone
        assert _fetch(stubs, md, "tcap")[-1].deleted == 0  # incremental: cannot see it
        assert _fetch(stubs, md, "tcap", full=True)[-1].deleted == 1
        assert f"tcap:pdq:{purged}" not in _entries(stubs, md)

    with ThreatExchangeServer() as te:
        a, b, c = _hex(), _hex(), _hex()
        for value in (a, b, c):
            te.add(value)
        _add(stubs, md, "gifct", "threatexchange", TE_TOKEN, privacy_group=303, base_url=te.url)
        _fetch(stubs, md, "gifct")
        te.updates = [u for u in te.updates if u.indicator != c]  # expired from its log
        store = harness.core.store
        feed = store.get_feed("gifct")
        old = json.loads(feed.checkpoint)
        old["last_fetch_time"] -= 100 * 24 * 3600
        with store._write() as cur:
            cur.execute(
                "UPDATE exchange_feeds SET checkpoint = ? WHERE id = ?", (json.dumps(old), feed.id)
            )
        assert _fetch(stubs, md, "gifct")[-1].deleted == 1
        assert f"gifct:hash_pdq:{c}" not in _entries(stubs, md)
        assert f"gifct:hash_pdq:{a}" in _entries(stubs, md)
