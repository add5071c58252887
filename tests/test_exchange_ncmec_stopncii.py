"""NCMEC and StopNCII feeds against real local HTTP servers that speak
their APIs as python-threatexchange 1.2.17's clients call them
(hashsvc_testing/ncmec_stopncii_servers.py), through the running service on
both stores: first fetch (paged), incremental fetch, deletions, a wrong
credential, a server answering 500 or hanging (the feed's timeout, not the
library's fixed 60 s), and a fetch cut short mid-range resumed."""

from __future__ import annotations

import http.server
import json
import threading
import time

import grpc
import pytest

from hashsvc.exchange.sources import ResponseTooLarge, SourceConfig, open_source
from hashsvc.v1 import hashsvc_pb2 as pb
from hashsvc_testing.ncmec_stopncii_servers import NcmecServer, StopNciiServer
from tests.test_exchange import SETTINGS, _add, _entries, _fetch, _hex, _match_hash, _set

NCMEC_CREDENTIALS = "esp-user:esp-pass"
STOPNCII_CREDENTIALS = "fetch-key,sub-key"


@pytest.fixture
def harness_config() -> dict:
    return {"exchange": SETTINGS}


def _feed(stubs, md, name: str) -> pb.Feed:
    return stubs.exchange.GetFeed(pb.GetFeedRequest(name=name), metadata=md)


def _refused(stubs, md, name: str) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        _fetch(stubs, md, name)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    return err.value


# -- NCMEC


def test_ncmec_first_incremental_and_deletions(harness):
    stubs, md = harness.stubs("operator")
    _set(stubs, md)
    with NcmecServer(page_size=2) as ncmec:
        pdqs = [_hex() for _ in range(3)]
        image_md5, video_md5 = _hex(16), _hex(16)
        ncmec.add("img-0", {"pdq": pdqs[0], "md5": image_md5, "pdna": "AAAA" * 36})
        ncmec.add("img-1", {"pdq": pdqs[1]})
        ncmec.add("img-2", {"pdq": pdqs[2]}, classification="A2")
        ncmec.add("vid-0", {"md5": video_md5}, kind="video", classification="B1")
        _add(stubs, md, "ncmec", "ncmec", NCMEC_CREDENTIALS, base_url=ncmec.base_url)
        last = _fetch(stubs, md, "ncmec")[-1]
        # PhotoDNA is not kept (counted once per time its entry came: NCMEC's
        # ranges share their ends, and the client asks for adjoining ones)
        assert (last.added, last.deleted) == (4, 0) and last.skipped >= 1
        assert last.pages >= 2  # page size 2: paged
        entries = _entries(stubs, md)
        entry = entries["ncmec:id:7-img-0"]
        assert entry.labels["ncmec_classification"] == "A1"
        assert entry.labels["source_id"] == "7-img-0" and entry.labels["feed"] == "ncmec"
        assert entries["ncmec:id:7-vid-0"].labels["ncmec_classification"] == "B1"
        assert _match_hash(harness, "pdq", pdqs[0]).decision == pb.BLOCK
        assert _match_hash(harness, "md5", video_md5).decision == pb.BLOCK
        checkpoint = json.loads(_feed(stubs, md, "ncmec").checkpoint)
        assert checkpoint["get_entries_max_ts"] > time.time() - 60

        # changes after the first fetch (the client leaves out the last 5 s)
        changed_at = int(time.time()) - 4
        new = _hex()
        ncmec.delete("img-1")
        ncmec.add("img-2", {"pdq": pdqs[2]}, classification="B2", timestamp=changed_at)
        ncmec.add("img-3", {"pdq": new}, timestamp=changed_at)
        ncmec.entries["img-1"].timestamp = changed_at
        time.sleep(2.0)
        requests_before = ncmec.entry_requests
        last = _fetch(stubs, md, "ncmec")[-1]
        assert (last.added, last.updated, last.deleted) == (1, 1, 1)
        # from the checkpoint: the new range, not the whole history again
        assert ncmec.entry_requests - requests_before < 40
        entries = _entries(stubs, md)
        assert "ncmec:id:7-img-1" not in entries
        assert entries["ncmec:id:7-img-2"].labels["ncmec_classification"] == "B2"
        assert _match_hash(harness, "pdq", pdqs[1]).decision == pb.ALLOW
        assert _match_hash(harness, "pdq", new).decision == pb.BLOCK
        assert _fetch(stubs, md, "ncmec")[-1].added == 0  # nothing new: nothing written


def test_rejected_items_are_counted_and_never_mapped_as_loaded(harness):
    """Items a partner sends that cannot load (a bad hash; an id too long
    for an entry name) are counted as rejected in the fetch and the feed's
    status and are not mapped: the feed's items, added counts and deletion
    budget count only what loaded, and the same id sent valid later loads."""
    stubs, md = harness.stubs("operator")
    _set(stubs, md)
    with NcmecServer(page_size=10) as ncmec:
        good, fixed = _hex(), _hex()
        ncmec.add("ok", {"pdq": good})
        ncmec.add("bad-hash", {"pdq": "zz" * 32})
        ncmec.add("x" * 600, {"pdq": _hex()})  # its entry name would be past 512 characters
        _add(stubs, md, "ncmec", "ncmec", NCMEC_CREDENTIALS, base_url=ncmec.base_url)
        last = _fetch(stubs, md, "ncmec")[-1]
        assert (last.added, last.rejected) == (1, 2)
        feed = _feed(stubs, md, "ncmec")
        assert (feed.items, feed.added, feed.rejected, feed.last_result) == (1, 1, 2, "ok")
        assert list(_entries(stubs, md)) == ["ncmec:id:7-ok"]
        assert harness.core.store.feed_items(feed_id(harness), ["id:7-bad-hash"]) == {}

        ncmec.add("bad-hash", {"pdq": fixed}, timestamp=int(time.time()) - 4)
        time.sleep(2.0)
        last = _fetch(stubs, md, "ncmec")[-1]
        assert (last.added, last.rejected) == (1, 0)
        assert _match_hash(harness, "pdq", fixed).decision == pb.BLOCK
        feed = _feed(stubs, md, "ncmec")
        assert (feed.items, feed.added, feed.rejected) == (2, 2, 2)
        assert sorted(_entries(stubs, md)) == ["ncmec:id:7-bad-hash", "ncmec:id:7-ok"]
    rejected = harness.running.metrics.registry.get_sample_value(
        "hashsvc_feed_hashes_total", {"feed": "ncmec", "change": "rejected"}
    )
    assert rejected == 2


def feed_id(harness) -> int:
    return harness.core.store.get_feed("ncmec").id


def test_ncmec_wrong_credential_500_and_hang_lose_nothing(harness):
    stubs, md = harness.stubs("operator")
    _set(stubs, md)
    with NcmecServer() as ncmec:
        value = _hex()
        ncmec.add("img-0", {"pdq": value})
        _add(stubs, md, "ncmec", "ncmec", NCMEC_CREDENTIALS, base_url=ncmec.base_url)
        _fetch(stubs, md, "ncmec")
        before = _feed(stubs, md, "ncmec")
        time.sleep(1.2)  # a new second: the client asks again (the same one: nothing to ask)
        ncmec.password = "rotated"  # NCMEC rotated it: ours is now wrong
        error = _refused(stubs, md, "ncmec")
        assert "HTTP 401" in error.details() and "credentials refused" in error.details()
        assert "esp-pass" not in error.details()
        ncmec.password = "esp-pass"
        ncmec.fail_status = 500
        assert "500" in _refused(stubs, md, "ncmec").details()
        ncmec.fail_status = 0
        ncmec.hang_seconds = 30  # the library's own timeout would wait 60 s
        started = time.monotonic()
        assert "timed out" in _refused(stubs, md, "ncmec").details().lower()
        assert time.monotonic() - started < 10  # the feed's 1 s, not 60 s
        after = _feed(stubs, md, "ncmec")
        assert after.checkpoint == before.checkpoint
        assert after.failures == 3 and after.last_result == "failed"
        assert list(_entries(stubs, md)) == ["ncmec:id:7-img-0"]
        ncmec.hang_seconds = 0
        assert _fetch(stubs, md, "ncmec")[-1].added == 0
        assert _feed(stubs, md, "ncmec").failures == 0


def test_ncmec_fetch_cut_short_mid_range_resumes_from_its_page(harness):
    """A range's second page fails after its first page was committed: the
    stored checkpoint holds the paging URL, and the next fetch goes on from
    there (the library's checkpoint, rebuilt from JSON), loading everything
    once."""
    stubs, md = harness.stubs("operator")
    _set(stubs, md)
    with NcmecServer(page_size=2) as ncmec:
        stamp = int(time.time()) - 100
        values = [_hex() for _ in range(5)]
        for i, value in enumerate(values):
            ncmec.add(f"img-{i}", {"pdq": value}, timestamp=stamp)
        _add(stubs, md, "ncmec", "ncmec", NCMEC_CREDENTIALS, base_url=ncmec.base_url)
        ncmec.fail_later_pages = 1
        assert "500" in _refused(stubs, md, "ncmec").details()
        checkpoint = json.loads(_feed(stubs, md, "ncmec").checkpoint)
        assert checkpoint["paging_info"]["paging_url"].startswith("/v2/entries?")
        assert len(_entries(stubs, md)) == 2  # the first page, committed
        last = _fetch(stubs, md, "ncmec")[-1]
        assert last.added == 3
        assert len(_entries(stubs, md)) == 5
        assert all(_match_hash(harness, "pdq", v).decision == pb.BLOCK for v in values)
        assert json.loads(_feed(stubs, md, "ncmec").checkpoint)["paging_info"] is None


# -- StopNCII


def test_stopncii_first_incremental_and_withdrawn_cases(harness):
    stubs, md = harness.stubs("operator")
    _set(stubs, md)
    with StopNciiServer(page_size=2) as stopncii:
        pdqs = [_hex() for _ in range(3)]
        video_md5 = _hex(16)
        for value in pdqs:
            stopncii.add(value)
        stopncii.add(video_md5, signal_type="VideoMD5")
        stopncii.add("https://example.org/x", signal_type="URL")
        _add(stubs, md, "ncii", "stopncii", STOPNCII_CREDENTIALS, base_url=stopncii.base_url)
        last = _fetch(stubs, md, "ncii")[-1]
        assert (last.pages, last.added, last.skipped) == (3, 4, 1)
        entry = _entries(stubs, md)[f"ncii:pdq:{pdqs[0]}"]
        assert entry.labels["stopncii_status"] == "Active" and entry.labels["feed"] == "ncii"
        assert _match_hash(harness, "pdq", pdqs[0]).decision == pb.BLOCK
        assert _match_hash(harness, "md5", video_md5).decision == pb.BLOCK
        checkpoint = json.loads(_feed(stubs, md, "ncii").checkpoint)
        assert checkpoint["update_time"] == stopncii._clock + 1

        requests_before = stopncii.fetch_requests
        stopncii.withdraw(pdqs[1])  # the person withdrew the case: the hash goes
        stopncii.add(pdqs[2], status="Deleted")
        new = _hex()
        stopncii.add(new)
        last = _fetch(stubs, md, "ncii")[-1]
        assert (last.added, last.deleted) == (1, 2)
        assert stopncii.fetch_requests - requests_before == 2  # only the 3 changed records
        entries = _entries(stubs, md)
        assert f"ncii:pdq:{pdqs[1]}" not in entries and f"ncii:pdq:{pdqs[2]}" not in entries
        assert _match_hash(harness, "pdq", pdqs[1]).decision == pb.ALLOW
        assert _match_hash(harness, "pdq", new).decision == pb.BLOCK
        assert _fetch(stubs, md, "ncii")[-1].added == 0


def test_stopncii_wrong_key_500_and_hang_lose_nothing(harness):
    stubs, md = harness.stubs("operator")
    _set(stubs, md)
    with StopNciiServer() as stopncii:
        value = _hex()
        stopncii.add(value)
        _add(stubs, md, "ncii", "stopncii", STOPNCII_CREDENTIALS, base_url=stopncii.base_url)
        _fetch(stubs, md, "ncii")
        before = _feed(stubs, md, "ncii")
        stopncii.subscription_key = "rotated"
        error = _refused(stubs, md, "ncii")
        assert "HTTP 401" in error.details() and "credentials refused" in error.details()
        assert "fetch-key" not in error.details() and "sub-key" not in error.details()
        stopncii.subscription_key = "sub-key"
        stopncii.fail_status = 500
        assert "500" in _refused(stubs, md, "ncii").details()
        stopncii.fail_status = 0
        stopncii.hang_seconds = 30
        started = time.monotonic()
        assert "timed out" in _refused(stubs, md, "ncii").details().lower()
        assert time.monotonic() - started < 10
        after = _feed(stubs, md, "ncii")
        assert after.checkpoint == before.checkpoint and after.failures == 3
        assert list(_entries(stubs, md)) == [f"ncii:pdq:{value}"]
        stopncii.hang_seconds = 0
        assert _fetch(stubs, md, "ncii")[-1].added == 0
    # malformed keys are refused without being echoed
    with pytest.raises(grpc.RpcError) as err:
        _add(stubs, md, "bad", "stopncii", "only-one-key-secret", base_url="http://127.0.0.1:9/")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "only-one-key-secret" not in err.value.details()


class _RedirectElsewhere(http.server.BaseHTTPRequestHandler):
    """Answers every GET with a redirect to the `target` server's /big."""

    target = ""

    def do_GET(self):  # noqa: N802 (http.server's name)
        self.send_response(302)
        self.send_header("Location", f"{self.target}/big")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


class _BigBody(http.server.BaseHTTPRequestHandler):
    """3 MiB without a Content-Length (read until the connection closes)."""

    def do_GET(self):  # noqa: N802
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Connection", "close")
        self.end_headers()
        for _ in range(48):
            self.wfile.write(b" " * 65536)

    def log_message(self, *args):
        pass


@pytest.mark.parametrize(
    ("api", "credentials"), [("ncmec", "user:password"), ("stopncii", "fetch-key,subscription-key")]
)
def test_a_redirect_elsewhere_is_read_within_max_response_bytes(api, credentials):
    """A partner (or whoever answers in its place) redirecting to another
    host: the answer there is held to the same size limit, not read whole
    by the library's own session."""
    servers = []
    try:
        for handler in (_BigBody, _RedirectElsewhere):
            server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
            threading.Thread(target=server.serve_forever, daemon=True).start()
            servers.append(server)
        big, redirect = servers
        _RedirectElsewhere.target = f"http://127.0.0.1:{big.server_address[1]}"
        source = open_source(
            api,
            SourceConfig(
                name="partner",
                options={"base_url": f"http://127.0.0.1:{redirect.server_address[1]}"},
                credentials=credentials,
                timeout_seconds=10,
                retries=0,
                max_response_bytes=1 << 20,
            ),
        )
        with pytest.raises(ResponseTooLarge, match="max_response_bytes"):
            next(iter(source.pages(None)))
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()
