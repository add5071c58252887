"""Notifications (issue 20): events written to the outbox with their cause,
delivered to a REAL local HTTP receiver (hashsvc_testing/webhook_receiver.py)
signed and in order, through a receiver that is down, answers 500, hangs or
is slow; failures marked and listed; Events/Subscribe from a cursor. Both
stores. (Processes: kill -9 and two replicas are in test_events_process.py.)"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import random
import subprocess
import time

import grpc
import pytest

from hashdb import ReviewFilter
from hashsvc.api.metrics import Metrics
from hashsvc.client.commands.views import match_json
from hashsvc.core import events
from hashsvc.core.config import Config, load_config
from hashsvc.core.core import Core, MatchQuery
from hashsvc.core.webhook_config import EventSettings, WebhookConfig
from hashsvc.core.webhooks import signature
from hashsvc.matching.matcher import Match
from hashsvc.v1 import hashsvc_pb2 as pb
from hashsvc_testing.webhook_receiver import Receiver

SECRET = b"s3cret-for-tests-0123456789"
# Fast retries for tests; a POST waits 1 s at most.
FAST = EventSettings(
    poll_seconds=0.05, backoff_initial_seconds=0.1, backoff_max_seconds=0.4, lease_seconds=5.0
)


@pytest.fixture
def secret_file(tmp_path):
    path = tmp_path / "webhook.secret"
    path.write_bytes(SECRET + b"\n")
    return str(path)


@pytest.fixture
def receiver():
    r = Receiver(SECRET).start()
    yield r
    r.stop()


def webhook(receiver: Receiver, secret_file: str, **kw) -> WebhookConfig:
    kw.setdefault("timeout_seconds", 1.0)
    return WebhookConfig(url=receiver.url, secret_file=secret_file, **kw)


def _known(core: Core, seed: int, set_name: str = "isis") -> bytes:
    value = random.Random(seed).randbytes(32)
    if core.store.get_set(set_name) is None:
        core.curation.create_set(set_name)
    core.curation.add_entry(set_name, f"k{seed}", {}, "op", signal=("pdq", value.hex(), None))
    return value


def _match(core: Core, value: bytes, ref: str = "") -> str:
    query = MatchQuery(signal_type="pdq", signal_value=value.hex(), client_ref=ref)
    return core.match(query, "pipeline").decision


def test_a_blocked_match_arrives_signed_with_the_match_json(store_url, make_harness, tmp_path):
    """Through the real service: the event's matches are what `match --json`
    prints for the same call; the signature is the HMAC of the exact body."""
    secret = tmp_path / "s"
    secret.write_bytes(SECRET)
    receiver = Receiver(SECRET).start()
    try:
        h = make_harness(
            store_url,
            webhook=(WebhookConfig(url=receiver.url, secret_file=str(secret), timeout_seconds=1),),
            events=FAST,
        )
        operator, op_md = h.stubs("operator")
        matcher, m_md = h.stubs("matcher")
        value = random.Random(7).randbytes(32).hex()
        operator.curation.CreateSet(pb.CreateSetRequest(name="isis"), metadata=op_md)
        operator.curation.AddEntry(
            pb.AddEntryRequest(
                set="isis",
                name="claim.jpg",
                labels={"group": "ISIS"},
                signal=pb.SignalValue(signal_type="pdq", value=value),
            ),
            metadata=op_md,
        )
        signal = pb.SignalValue(signal_type="pdq", value=value)
        resp = matcher.matcher.Match(
            pb.MatchRequest(signal=signal, client_ref="upload-1"), metadata=m_md
        )
        allowed = matcher.matcher.Match(
            pb.MatchRequest(signal=pb.SignalValue(signal_type="pdq", value="0" * 64)),
            metadata=m_md,
        )
        assert resp.decision == pb.BLOCK and allowed.decision == pb.ALLOW
        assert receiver.wait_for(1)
        time.sleep(0.3)  # an allow would have come by now: none does
        [got] = receiver.received
        assert got.signature_ok and receiver.bad_signatures == 0
        printed = match_json("x", resp)
        assert got.body["type"] == "match.block"
        assert got.body["request_id"] == resp.request_id == printed["request_id"]
        assert got.body["matches"] == printed["matches"]
        assert got.body["client_ref"] == "upload-1" and got.body["decision"] == "block"
        assert got.body["id"] == got.event_id and got.body["time"].endswith("Z")
        assert "query_signals" not in got.body  # never the upload's hashes, never media
        # the same event, pulled: Events/Subscribe from a cursor
        auditor, a_md = h.stubs("subscriber")
        pulled = list(
            auditor.events.Subscribe(
                pb.SubscribeRequest(from_id=got.event_id, stop_at_end=True), metadata=a_md
            )
        )
        assert [json.loads(e.json) for e in pulled] == [got.body]
        assert pulled[0].sets == ["isis"]
    finally:
        receiver.stop()


def test_signature_is_hmac_sha256_of_the_body():
    body = b'{"id":1}'
    assert signature(b"k" * 16, body) == (
        "sha256=" + hmac.new(b"k" * 16, body, hashlib.sha256).hexdigest()
    )


def test_review_verdict_and_flood_alert_are_events_in_causal_order(
    store_url, make_core, receiver, secret_file
):
    core = make_core(
        store_url,
        webhook=(webhook(receiver, secret_file),),
        events=FAST,
        quarantine_matches=3,
        flood_flush_seconds=60.0,
    )
    core.curation.create_set("isis", review_blocks=True)
    value = _known(core, 1)
    for _ in range(4):
        assert _match(core, value) == "block"
    core.flood.flush()  # 4 matches > 3: a flood alert
    [item] = core.review.list(ReviewFilter(caller="pipeline"), page_size=1)[0]
    core.review.claim("rev", item.id, ReviewFilter())
    core.review.resolve("rev", item.id, "confirmed", note="seen")
    assert receiver.wait_for(6)
    types = [r.body["type"] for r in receiver.received]
    assert types == ["match.block"] * 4 + ["entry.quarantined", "review.resolved"]
    ids = receiver.ids()
    assert ids == sorted(ids)
    quarantined, resolved = receiver.received[4].body, receiver.received[5].body
    assert quarantined["entry"] == "k1" and quarantined["set"] == "isis"
    assert quarantined["review_id"] > 0 and quarantined["matches"] == 4
    assert resolved["review_id"] == item.id and resolved["resolution"] == "confirmed"
    assert resolved["request_id"] == item.request_id
    assert resolved["matches"] == [Match.from_json(m).public_json() for m in item.matches]


def test_retro_match_event_emitted_directly_is_delivered(
    store_url, make_core, receiver, secret_file
):
    """The retro-hunt (another branch) emits through events.emit / record_match(events=)."""
    core = make_core(store_url, webhook=(webhook(receiver, secret_file),), events=FAST)
    value = _known(core, 3)
    match = core.matcher.match(
        [next(iter(core.store.get_entry(core.store.get_set("isis").id, "k3").signals))], None
    ).matches[0]
    event = events.retro_match_event(
        request_id="r-1",
        upload_time="2026-12-01T00:00:00Z",
        caller="pipeline",
        client_ref="u-9",
        media_type="image",
        decision="block",
        matches=[match],
    )
    core.store.append_events([event])
    assert value and receiver.wait_for(1)
    body = receiver.received[0].body
    assert body["type"] == "retro_match" and body["request_id"] == "r-1"
    assert body["matches"] == [match.public_json()]
    with pytest.raises(ValueError):
        events.new_event("retro-match", {})  # types are checked
    with pytest.raises(ValueError):
        events.new_event(events.RETRO_MATCH, {"id": 5})  # the outbox gives ids


def test_receiver_down_then_up_loses_nothing_in_order(store_url, make_core, receiver, secret_file):
    core = make_core(store_url, webhook=(webhook(receiver, secret_file),), events=FAST)
    values = [_known(core, seed) for seed in range(1, 4)]
    receiver.stop()
    for _ in range(3):
        for value in values:
            _match(core, value)
    time.sleep(1.0)  # several attempts fail meanwhile
    state = core.store.endpoint_states()[0]
    assert state.attempts >= 1 and "connect" in state.last_error
    receiver.start()  # the same port
    assert receiver.wait_for(9, seconds=20)
    assert receiver.ids() == sorted(set(receiver.ids()))  # in outbox order, no gaps
    assert len(set(receiver.ids())) == 9


def test_500_holds_back_later_events_then_all_arrive_in_order(
    store_url, make_core, receiver, secret_file
):
    core = make_core(store_url, webhook=(webhook(receiver, secret_file),), events=FAST)
    value = _known(core, 1)
    receiver.mode = "error"
    for _ in range(5):
        _match(core, value)
    time.sleep(1.0)
    assert receiver.attempts >= 2 and receiver.received == []
    receiver.mode = "ok"
    assert receiver.wait_for(5, seconds=20)
    ids = receiver.ids()
    assert ids == sorted(ids) and len(ids) == 5  # the failing one first, then the rest


def test_hanging_receiver_times_out_and_never_slows_match(
    store_url, make_core, receiver, secret_file
):
    core = make_core(store_url, webhook=(webhook(receiver, secret_file),), events=FAST)
    value = _known(core, 1)
    receiver.mode = "hang"
    started = time.monotonic()
    for _ in range(20):
        assert _match(core, value) == "block"
    match_seconds = time.monotonic() - started
    # waiting for the receiver would take 20 x 1 s (timeout_seconds)
    assert match_seconds < 5.0, match_seconds  # the receiver never holds a Match
    time.sleep(1.5)  # one POST timed out (timeout_seconds = 1)
    state = core.store.endpoint_states()[0]
    assert state.attempts >= 1 and "timed out" in state.last_error
    receiver.release()
    receiver.mode = "ok"
    assert receiver.wait_for(20, seconds=20)


def test_slow_receiver_gets_everything(store_url, make_core, secret_file):
    receiver = Receiver(SECRET, mode="slow", delay=0.5).start()
    try:
        core = make_core(store_url, webhook=(webhook(receiver, secret_file),), events=FAST)
        value = _known(core, 1)
        started = time.monotonic()
        for _ in range(10):
            _match(core, value)
        assert time.monotonic() - started < 3.0  # waiting for the receiver: 10 x 0.5 s
        assert receiver.wait_for(10, seconds=20)
        assert receiver.ids() == sorted(receiver.ids())
    finally:
        receiver.stop()


def test_past_retry_for_an_event_is_marked_failed_listed_and_counted(
    store_url, make_core, receiver, secret_file, caplog
):
    caplog.set_level(logging.DEBUG)
    core = make_core(
        store_url,
        webhook=(webhook(receiver, secret_file, retry_for_seconds=0.5),),
        events=FAST,
    )
    metrics = Metrics(core)
    value = _known(core, 1)
    receiver.mode = "error"
    _match(core, value)
    deadline = time.monotonic() + 15
    while not core.store.event_failures() and time.monotonic() < deadline:
        time.sleep(0.1)
    [failure] = core.store.event_failures()
    assert failure.event_type == "match.block" and failure.attempts >= 1
    assert failure.last_error == "HTTP 500"
    assert (
        metrics.registry.get_sample_value(
            "hashsvc_webhook_failed_events", {"endpoint": failure.endpoint}
        )
        == 1
    )
    page = core.event_feed.list(failed=True)
    assert [f.event_id for f in page.failures] == [failure.event_id]
    # the endpoint moved on: the next event is delivered
    receiver.mode = "ok"
    _match(core, value)
    assert receiver.wait_for(1)
    assert receiver.ids() == [failure.event_id + 1]
    # the secret never appears in logs or the endpoint's state
    assert SECRET.decode() not in caplog.text
    assert SECRET.decode() not in repr(core.store.endpoint_states())
    assert SECRET.decode() not in repr(core.config)


def test_sets_and_types_filter_what_an_endpoint_gets(store_url, make_core, receiver, secret_file):
    core = make_core(
        store_url,
        webhook=(webhook(receiver, secret_file, sets=("isis",), events=("match.block",)),),
        events=FAST,
    )
    mine, other = _known(core, 1, "isis"), _known(core, 2, "aq")
    _match(core, other)
    _match(core, mine)
    assert receiver.wait_for(1)
    time.sleep(0.3)
    assert [r.body["matches"][0]["set"] for r in receiver.received] == ["isis"]


def test_subscribe_follows_new_events_and_checks_its_request(make_harness, tmp_path):
    h = make_harness(f"sqlite:///{tmp_path}/s.db", events=FAST)
    stubs, md = h.stubs("subscriber")
    core = h.core
    value = _known(core, 1)
    _match(core, value)  # event 1, before the subscription
    stream = stubs.events.Subscribe(pb.SubscribeRequest(from_id=0), metadata=md)  # from now on
    time.sleep(0.3)
    _match(core, value, ref="second")
    first = next(stream)
    assert json.loads(first.json)["client_ref"] == "second" and first.id == 2
    stream.cancel()
    # from a cursor: everything from it, oldest first
    again = list(
        stubs.events.Subscribe(pb.SubscribeRequest(from_id=1, stop_at_end=True), metadata=md)
    )
    assert [e.id for e in again] == [1, 2]
    typed = stubs.events.Subscribe(
        pb.SubscribeRequest(from_id=1, stop_at_end=True, types=["review.resolved"]), metadata=md
    )
    assert list(typed) == []
    for bad in (pb.SubscribeRequest(from_id=-1), pb.SubscribeRequest(types=["nope"])):
        with pytest.raises(grpc.RpcError) as err:
            list(stubs.events.Subscribe(bad, metadata=md))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # no token, or a matcher's: refused
    anon, _ = h.stubs(None)
    with pytest.raises(grpc.RpcError) as err:
        list(anon.events.Subscribe(pb.SubscribeRequest(from_id=1, stop_at_end=True)))
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    m, m_md = h.stubs("matcher")
    with pytest.raises(grpc.RpcError) as err:
        list(m.events.Subscribe(pb.SubscribeRequest(from_id=1, stop_at_end=True), metadata=m_md))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_a_large_backlog_is_read_a_page_at_a_time(store_url, make_core):
    core = make_core(store_url, events=EventSettings(subscribe_page_size=50))
    core.store.append_events([events.new_event(events.FEED_UPDATED, {"n": n}) for n in range(260)])
    reads = []
    events_after = core.store.events_after

    def spy(after_id, limit=100):
        reads.append(limit)
        return events_after(after_id, limit)

    core.store.events_after = spy
    got = list(core.event_feed.subscribe(1, (), True, lambda: True))
    assert len(got) == 260 and max(reads) == 50
    page = core.event_feed.list(False, page_size=100)
    assert len(page.events) == 100 and page.next_page_token == "100"
    page = core.event_feed.list(False, page_size=5000)  # capped
    assert len(page.events) == 260


@pytest.mark.parametrize(
    "table, message",
    [
        ({"url": "ftp://x/hook"}, "http:// or https://"),
        ({"url": "http:///hook"}, "with a host"),
        ({"url": "https://user:pw@h/hook"}, "no user or password"),
        ({"url": "http://h/", "secret_file": "/nonexistent/secret"}, "cannot be read"),
        ({"url": "http://h/", "secret_file": "EMPTY"}, "holds no secret"),
        ({"url": "http://h/", "events": ["match.blocked"]}, "unknown: match.blocked"),
        ({"url": "http://h/", "timeout_seconds": 20}, "half of events.lease_seconds"),
        ({"secret_file": "GOOD"}, "needs url"),
    ],
)
def test_bad_webhook_config_is_refused_at_start(tmp_path, secret_file, table, message):
    empty = tmp_path / "empty"
    empty.write_bytes(b"  \n")
    table = dict(table)
    table.setdefault("secret_file", "GOOD")
    table["secret_file"] = {"GOOD": secret_file, "EMPTY": str(empty)}.get(
        table["secret_file"], table["secret_file"]
    )
    lines = ["[[webhook]]"] + [f"{k} = {json.dumps(v)}" for k, v in table.items()]
    path = tmp_path / "hashsvc.toml"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=message.replace("+", r"\+")):
        load_config(str(path))


def test_two_webhooks_need_distinct_names(receiver, secret_file):
    hook = webhook(receiver, secret_file)
    with pytest.raises(ValueError, match="distinct name"):
        Config(webhook=(hook, hook))
    Config(webhook=(hook, webhook(receiver, secret_file, name="second")))


def test_webhook_tables_read_from_toml(tmp_path, secret_file):
    path = tmp_path / "hashsvc.toml"
    path.write_text(
        f"""
[[webhook]]
url = "https://platform.example/hooks/hashsvc"
secret_file = "{secret_file}"
events = ["match.block", "retro_match"]
sets = ["isis-amaq"]

[[webhook]]
url = "http://127.0.0.1:9000/"
secret_file = "{secret_file}"
retry_for_seconds = 3600

[events]
lease_seconds = 60
"""
    )
    config = load_config(str(path))
    first, second = config.webhook
    assert first.name == "https://platform.example/hooks/hashsvc"
    assert first.events == ("match.block", "retro_match") and first.sets == ("isis-amaq",)
    assert second.retry_for_seconds == 3600 and second.events == events.EVENT_TYPES
    assert config.events.lease_seconds == 60


def test_a_row_forged_in_the_database_is_never_sent(
    store_url, make_core, receiver, secret_file, tmp_path
):
    """Someone with database access but not the history key cannot make
    hashsvc sign and send an event of theirs."""
    key = tmp_path / "history.key"
    key.write_bytes(b"k" * 32)
    core = make_core(
        store_url,
        webhook=(webhook(receiver, secret_file),),
        events=FAST,
        history_key_file=str(key),
        history_checkpoint_file=str(tmp_path / "checkpoints.jsonl"),
    )
    value = _known(core, 1)
    _match(core, value)  # 1: genuine
    assert core.store.last_event_id() == 1
    with core.store._write() as cur:  # the forger's INSERT, copying a genuine row's shape
        cur.execute(
            "INSERT INTO event_outbox (seq, type, created_at, set_names, body)"
            " VALUES ((SELECT COALESCE(MAX(seq), 0) + 1 FROM event_outbox), 'match.block',"
            ' 1, \'["isis"]\', \'{"decision": "block", "request_id": "forged"}\')'
        )
    _match(core, value)  # 3: genuine
    assert receiver.wait_for(2)
    time.sleep(0.3)
    assert [r.body["request_id"] != "forged" for r in receiver.received] == [True, True]
    [failure] = core.store.event_failures()
    assert failure.event_id == 2 and "does not verify" in failure.last_error
    pulled = list(core.event_feed.subscribe(1, (), True, lambda: True))
    assert [e.id for e in pulled] == [1, 3]


def test_prune_keeps_what_an_endpoint_has_not_taken(store_url, make_core, receiver, secret_file):
    core = make_core(
        store_url,
        webhook=(webhook(receiver, secret_file),),
        events=EventSettings(
            poll_seconds=0.05,
            backoff_initial_seconds=0.1,
            backoff_max_seconds=0.4,
            lease_seconds=5.0,
            keep_seconds=0.2,
        ),
    )
    value = _known(core, 1)
    _match(core, value)
    assert receiver.wait_for(1)
    receiver.mode = "error"
    _match(core, value)
    time.sleep(0.5)
    assert core.event_feed.prune([core.config.webhook[0].name]) == 1  # the delivered one
    assert [e.id for e in core.store.events_after(0, 10)] == [2]  # the other waits
    receiver.mode = "ok"
    assert receiver.wait_for(2)


def test_list_events_refuses_bad_paging(make_harness, tmp_path):
    h = make_harness(f"sqlite:///{tmp_path}/l.db")
    stubs, md = h.stubs("auditor")
    for bad in (
        pb.ListEventsRequest(page_size=-1),
        pb.ListEventsRequest(page_token="x"),
        pb.ListEventsRequest(failed=True, page_token="abc"),
        pb.ListEventsRequest(from_id=-1),
    ):
        with pytest.raises(grpc.RpcError) as err:
            stubs.events.ListEvents(bad, metadata=md)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, bad
    resp = stubs.events.ListEvents(pb.ListEventsRequest(), metadata=md)
    assert resp.last_event_id == 0 and list(resp.events) == []


def test_pruning_everything_never_restarts_the_ids(store_url, make_core):
    core = make_core(store_url, events=EventSettings(keep_seconds=0.01))
    core.store.append_events([events.new_event(events.FEED_UPDATED, {"n": n}) for n in range(3)])
    time.sleep(0.05)
    assert core.event_feed.prune([]) == 2  # the newest stays
    core.store.append_events([events.new_event(events.FEED_UPDATED, {"n": 3})])
    assert [e.id for e in core.store.events_after(0, 10)] == [3, 4]


def test_https_receiver_is_verified_against_ca_file(store_url, make_core, secret_file, tmp_path):
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-keyout", str(tmp_path / "key.pem"), "-out", str(tmp_path / "cert.pem"),
            "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1",
        ],
        check=True, capture_output=True,
    )  # fmt: skip
    receiver = Receiver(SECRET, tls=(str(tmp_path / "cert.pem"), str(tmp_path / "key.pem")))
    receiver.start()
    try:
        trusted = webhook(receiver, secret_file, ca_file=str(tmp_path / "cert.pem"))
        untrusted = webhook(receiver, secret_file, name="no-ca")  # the system's CAs
        core = make_core(store_url, webhook=(trusted, untrusted), events=FAST)
        _match(core, _known(core, 1))
        assert receiver.wait_for(1)
        time.sleep(0.5)
        assert len(receiver.received) == 1  # only the endpoint that trusts the CA
        states = {s.name: s for s in core.store.endpoint_states()}
        assert "CERTIFICATE_VERIFY_FAILED" in states["no-ca"].last_error
    finally:
        receiver.stop()
    with pytest.raises(ValueError, match="ca_file is for an https"):
        WebhookConfig(url="http://h/", secret_file=secret_file, ca_file=str(tmp_path / "cert.pem"))
    with pytest.raises(ValueError, match="not a readable CA bundle"):
        WebhookConfig(url="https://h/", secret_file=secret_file, ca_file=secret_file)


def test_a_partner_list_loaded_is_a_feed_updated_event(store_url, make_harness, secret_file):
    receiver = Receiver(SECRET).start()
    try:
        h = make_harness(store_url, webhook=(webhook(receiver, secret_file),), events=FAST)
        stubs, md = h.stubs("operator")
        stubs.curation.CreateSet(pb.CreateSetRequest(name="partner-list"), metadata=md)
        values = [random.Random(n).randbytes(32) for n in range(3)]

        def load():
            header = pb.BulkLoadHeader(set="partner-list")
            rows = pb.BulkRows(signal_type=["pdq"] * 3, value=values)
            return stubs.curation.BulkLoad(
                iter(
                    [
                        pb.BulkLoadRequest(header=header),
                        pb.BulkLoadRequest(rows=rows),
                        pb.BulkLoadRequest(end=pb.BulkLoadEnd(rows=3)),
                    ]
                ),
                metadata=md,
            )

        assert load().added == 3
        assert load().unchanged == 3  # the same list again: nothing changed, no event
        assert receiver.wait_for(1)
        time.sleep(0.3)
        [got] = receiver.received
        assert got.body["type"] == "feed.updated" and got.body["set"] == "partner-list"
        assert got.body["counts"]["added"] == 3 and got.body["source"] == "bulk_load"
        assert got.body["status"] == "OK"
    finally:
        receiver.stop()


def test_an_uploaders_client_ref_cannot_forge_event_fields(
    store_url, make_core, receiver, secret_file
):
    core = make_core(store_url, webhook=(webhook(receiver, secret_file),), events=FAST)
    value = _known(core, 1)
    hostile = 'x", "decision": "allow", "id": 1, "type": "review.resolved\n\u202e'
    assert _match(core, value, ref=hostile) == "block"
    assert receiver.wait_for(1)
    body = receiver.received[0].body
    assert body["client_ref"] == hostile  # one string, escaped in the JSON
    assert body["decision"] == "block" and body["type"] == "match.block"
    assert receiver.received[0].signature_ok


def _wait_for_failures(core: Core, count: int, seconds: float = 15.0) -> list:
    deadline = time.monotonic() + seconds
    while len(core.store.event_failures()) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    return core.store.event_failures()


def test_a_4xx_refusal_is_marked_failed_at_once(store_url, make_core, receiver, secret_file):
    """400, 401, 403, 404, 410, 422: a retry would be refused again (and hold
    back every later event for retry_for_seconds): each event is sent once,
    marked failed at once, listed and counted; the next one is delivered."""
    core = make_core(
        store_url,
        webhook=(webhook(receiver, secret_file, retry_for_seconds=3600, refusals_in_a_row=6),),
        events=FAST,
    )
    metrics = Metrics(core)
    value = _known(core, 1)
    refusals = [400, 401, 403, 404, 410, 422]
    receiver.script = [(status, {}) for status in refusals]
    started = time.monotonic()
    for _ in range(len(refusals) + 1):
        _match(core, value)
    assert receiver.wait_for(1, seconds=15)
    failures = _wait_for_failures(core, len(refusals))
    assert time.monotonic() - started < 10  # not held for retry_for_seconds (an hour)
    assert [f.last_error for f in failures] == [
        f"HTTP {status} (refused: not retried)" for status in refusals
    ]
    assert all(f.attempts == 1 and f.event_type == "match.block" for f in failures)
    assert receiver.attempts == len(refusals) + 1  # each sent once
    assert receiver.ids() == [failures[-1].event_id + 1]
    page = core.event_feed.list(failed=True)
    assert [f.event_id for f in page.failures] == [f.event_id for f in failures]
    endpoint = failures[0].endpoint
    assert metrics.registry.get_sample_value(
        "hashsvc_webhook_failed_events", {"endpoint": endpoint}
    ) == len(refusals)
    state = core.store.endpoint_states()[0]
    assert state.attempts == 0 and state.last_error == ""  # nothing left pending


def test_an_endpoint_refusing_every_event_is_held_not_drained(
    store_url, make_core, receiver, secret_file
):
    """A receiver answering 401 to everything (its secret rotated): the first
    refusals_in_a_row events are failed at once, then the endpoint is held
    and retried; once it takes events again, the rest arrive, in order. The
    backlog is not turned into failures."""
    core = make_core(
        store_url,
        webhook=(webhook(receiver, secret_file, retry_for_seconds=3600, refusals_in_a_row=2),),
        events=FAST,
    )
    value = _known(core, 1)
    receiver.script = [(401, {})] * 8
    for _ in range(5):
        _match(core, value)
    assert receiver.wait_for(3, seconds=30)
    failures = core.store.event_failures()
    assert [f.last_error for f in failures] == ["HTTP 401 (refused: not retried)"] * 2
    # events 3..5 arrived after the endpoint took events again (401s 3..8
    # were answers to event 3, retried)
    assert receiver.ids() == [failures[-1].event_id + n for n in (1, 2, 3)]
    assert receiver.attempts == 2 + 6 + 3
    # the endpoint's position moves after the receiver answered: wait for it
    deadline = time.monotonic() + 15
    while (state := core.store.endpoint_states()[0]).delivered_through < receiver.ids()[-1]:
        assert time.monotonic() < deadline, state
        time.sleep(0.05)
    assert state.attempts == 0 and state.last_error == ""


def test_408_425_429_and_5xx_are_retried_until_taken(store_url, make_core, receiver, secret_file):
    core = make_core(store_url, webhook=(webhook(receiver, secret_file),), events=FAST)
    value = _known(core, 1)
    retried = [408, 425, 429, 500, 502, 503, 504]
    receiver.script = [(status, {}) for status in retried]
    _match(core, value)
    assert receiver.wait_for(1, seconds=20)
    assert receiver.attempts == len(retried) + 1
    assert core.store.event_failures() == []


def test_a_retried_4xx_list_is_configurable(store_url, make_core, receiver, secret_file):
    """A receiver that answers 409 while it catches up: listed, it is retried;
    429 left out of the list is then a refusal like any other 4xx."""
    core = make_core(
        store_url,
        webhook=(webhook(receiver, secret_file, retried_4xx=(409,)),),
        events=FAST,
    )
    value = _known(core, 1)
    receiver.script = [(409, {}), (409, {}), (429, {})]
    _match(core, value)
    _match(core, value)
    [failure] = _wait_for_failures(core, 1)
    assert failure.last_error == "HTTP 429 (refused: not retried)"
    assert failure.attempts == 3  # 409 twice, retried; then 429
    assert receiver.wait_for(1, seconds=20)
    assert receiver.ids() == [failure.event_id + 1]
    with pytest.raises(ValueError, match="retried_4xx"):
        webhook(receiver, secret_file, retried_4xx=(500,))
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="refusals_in_a_row"):
            webhook(receiver, secret_file, refusals_in_a_row=bad)


def test_429_waits_as_retry_after_asks_within_bounds(store_url, make_core, receiver, secret_file):
    """Retry-After: 1 waits ~1 s (the backoff alone would wait 0.1 s); an hour
    is cut to backoff_max_seconds; an HTTP date is read as well."""
    settings = EventSettings(
        poll_seconds=0.05, backoff_initial_seconds=0.1, backoff_max_seconds=1.5, lease_seconds=5.0
    )
    core = make_core(store_url, webhook=(webhook(receiver, secret_file),), events=settings)
    value = _known(core, 1)
    receiver.script = [
        (429, {"Retry-After": "1"}),
        (429, {"Retry-After": "3600"}),
        (503, {"Retry-After": "0"}),  # never sooner than backoff_initial_seconds
    ]
    _match(core, value)
    assert receiver.wait_for(1, seconds=20)
    times = receiver.attempt_times
    gaps = [later - earlier for earlier, later in zip(times, times[1:], strict=False)]
    assert len(gaps) == 3, gaps
    assert 0.9 <= gaps[0] < 1.5, gaps
    assert 1.4 <= gaps[1] < 2.5, gaps
    assert 0.09 <= gaps[2] < 1.0, gaps
    assert core.store.event_failures() == []


def test_retry_after_header_forms():
    from datetime import UTC, datetime

    from hashsvc.core.webhooks import retry_after_seconds

    now = datetime(2026, 12, 7, 4, 0, 0, tzinfo=UTC)
    assert retry_after_seconds("120", now) == 120.0
    assert retry_after_seconds("Mon, 07 Dec 2026 04:00:30 GMT", now) == 30.0
    assert retry_after_seconds("Mon, 07 Dec 2026 03:00:00 GMT", now) == 0.0  # past
    assert retry_after_seconds("", now) is None
    assert retry_after_seconds("soon", now) is None
    assert retry_after_seconds("-5", now) is None


def test_idle_subscribers_have_their_own_pool_not_the_upload_streams(make_harness, tmp_path):
    """Subscribe streams idle for up to subscribe_max_seconds: in the upload
    streams' pool (max_streams) a few consumers would refuse every
    MatchUpload for an hour. They have a pool of their own, capped in all and
    per token, and MatchUpload still answers while it is full."""
    from hashsvc.core import auth
    from hashsvc_testing.image_media import encode, photo
    from tests.test_media_service import _upload_match

    h = make_harness(
        f"sqlite:///{tmp_path}/pool.db",
        max_streams=2,
        max_streams_per_token=2,
        events=EventSettings(
            poll_seconds=0.05, lease_seconds=5.0, max_subscribers=2, max_subscribers_per_token=1
        ),
    )
    tokens = [auth.create_token(h.core.store, "subscriber", f"consumer-{n}")[1] for n in range(3)]
    stubs, _ = h.stubs("subscriber")
    open_streams = []
    try:
        for token in tokens[:2]:
            md = (("authorization", f"Bearer {token}"),)
            stream = stubs.events.Subscribe(pb.SubscribeRequest(from_id=0), metadata=md)
            open_streams.append(stream)
        deadline = time.monotonic() + 10
        while h.running.subscribers.open_streams() < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert h.running.subscribers.open_streams() == 2
        for token, limit in (
            (tokens[0], "events.max_subscribers_per_token"),
            (tokens[2], "events.max_subscribers"),
        ):
            md = (("authorization", f"Bearer {token}"),)
            with pytest.raises(grpc.RpcError) as err:
                next(stubs.events.Subscribe(pb.SubscribeRequest(from_id=0), metadata=md))
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert f"({limit})" in err.value.details()
        # the uploads' pool is untouched: MatchUpload answers
        m, mmd = h.stubs("matcher")
        assert _upload_match(m, mmd, encode(photo(4))).decision == pb.ALLOW  # no set yet
    finally:
        for stream in open_streams:
            stream.cancel()
