"""History pruning hardened, through the running service on both stores:
a prune may not reach into the uploads a retro-hunt may still read (the
longest retro window in force, a set's own too, plus
history_prune_margin_seconds), and `history verify` fails a record whose
signals are gone without an intact PruneHistory record covering it
(signals stripped in the database, a prune action edited or forged)."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta

import pytest

from hashdb import HistoryFilter, HistoryRecord
from hashdb.history_sql import _format_3, chain_hash
from hashdb.times import now_micros, to_micros
from hashsvc.base.signals import Signal
from hashsvc.client import cli
from hashsvc.core.audit import history_signal_json
from hashsvc.v1 import hashsvc_pb2 as pb
from tests.test_history_trust import _tamper

DAY = 86_400


def _upload(store, days_ago: float, name: str) -> None:
    """A Match record written as the server writes one, `days_ago` old."""
    store.record_match(
        HistoryRecord(
            request_id=name,
            time=datetime.now(UTC) - timedelta(days=days_ago),
            caller="pipeline",
            rpc="Match",
            media_type="image",
            decision="allow",
            status="OK",
            error_message="",
            client_ref=name,
            media_bytes=1000,
            query_signals=[history_signal_json(Signal("pdq", bytes([len(name)]) * 32, 90))],
            matches=[],
        )
    )


def _uploads(h) -> dict[str, HistoryRecord]:
    records = h.core.store.query_history(HistoryFilter(), 0, 1000)
    return {r.request_id: r for r in records if r.rpc == "Match"}


def _cli(h, monkeypatch, capsys, role: str, *args: str) -> tuple[int, str, str]:
    monkeypatch.setenv("HASHSVC_TOKEN", h.tokens[role])
    capsys.readouterr()
    code = cli.main(["--server", h.address, *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def _before(days: float) -> str:
    return (datetime.now(UTC) - timedelta(days=days)).isoformat()


def test_prune_stays_out_of_the_longest_retro_window(harness, monkeypatch, capsys):
    """Default retro_window 7 days + margin 1 day: 7 days ago is refused
    (FAILED_PRECONDITION, saying how far back it may go), 8 days ago prunes
    only what is older; a set with a 15-day window moves the limit to 16
    days, whether the set is enabled or not; refusals are recorded and touch
    nothing; the chain still verifies."""
    store = harness.core.store
    for name, days in (("u-30d", 30), ("u-12d", 12), ("u-7.5d", 7.5), ("u-1h", 1 / 24)):
        _upload(store, days, name)

    code, _, err = _cli(harness, monkeypatch, capsys, "admin", "history", "prune", "--before", "1h")
    assert code == 1 and "FAILED_PRECONDITION" in err
    assert "the last 7 day(s)" in err and "history_prune_margin_seconds adds 1 day(s)" in err
    code, _, err = _cli(
        harness, monkeypatch, capsys, "admin", "history", "prune", "--before", _before(7.9)
    )
    assert code == 1 and "FAILED_PRECONDITION" in err
    assert all(r.query_signals for r in _uploads(harness).values())

    # a set's own window is in force too, disabled or not
    ops = harness.stubs("operator")[0]
    op_md = harness.stubs("operator")[1]
    ops.curation.CreateSet(pb.CreateSetRequest(name="long"), metadata=op_md)
    ops.curation.UpdateSet(
        pb.UpdateSetRequest(name="long", retro_window_seconds=15 * DAY, enabled=False),
        metadata=op_md,
    )
    code, _, err = _cli(
        harness, monkeypatch, capsys, "admin", "history", "prune", "--before", _before(10)
    )
    assert code == 1 and "the last 15 day(s)" in err
    code, out, _ = _cli(
        harness, monkeypatch, capsys, "admin", "--json", "history", "prune", "--before", _before(16)
    )
    assert code == 0 and json.loads(out) == {"records_pruned": 1}
    kept = _uploads(harness)
    assert kept["u-30d"].query_signals == []
    assert all(kept[n].query_signals for n in ("u-12d", "u-7.5d", "u-1h"))

    actions = [r for r in store.query_history(HistoryFilter(), 0, 1000) if r.rpc == "PruneHistory"]
    assert [a.status for a in actions] == [
        "FAILED_PRECONDITION",
        "FAILED_PRECONDITION",
        "FAILED_PRECONDITION",
        "OK",  # started, recorded before the first batch
        "OK",
    ]
    assert actions[-2].detail == {"before": actions[-1].detail["before"], "started": True}
    assert actions[-1].detail["records_pruned"] == 1
    code, out, _ = _cli(harness, monkeypatch, capsys, "auditor", "history", "verify")
    assert code == 0 and "history intact" in out


@pytest.mark.parametrize("harness_config", [{"history_prune_margin_seconds": 0}])
def test_the_margin_is_configurable(harness, monkeypatch, capsys):
    """With no margin, 7 days and a minute ago is allowed; 6 days is not."""
    _upload(harness.core.store, 8, "u-8d")
    code, _, err = _cli(
        harness, monkeypatch, capsys, "admin", "history", "prune", "--before", _before(6)
    )
    assert code == 1 and "FAILED_PRECONDITION" in err
    code, _, _ = _cli(
        harness, monkeypatch, capsys, "admin", "history", "prune", "--before", _before(7.001)
    )
    assert code == 0 and _uploads(harness)["u-8d"].query_signals == []


def _pruned_setup(harness, monkeypatch, capsys) -> dict[str, HistoryRecord]:
    store = harness.core.store
    for name, days in (("u-30d", 30), ("u-20d", 20), ("u-1h", 1 / 24)):
        _upload(store, days, name)
    code, _, _ = _cli(
        harness, monkeypatch, capsys, "admin", "history", "prune", "--before", _before(25)
    )
    assert code == 0
    code, out, _ = _cli(harness, monkeypatch, capsys, "auditor", "history", "verify")
    assert code == 0 and "history intact" in out, out
    return _uploads(harness)


def _strip(store_url: str, record_id: int) -> str:
    # exactly the update the append-only triggers let through for a prune
    return (
        "UPDATE match_history SET query_signals = '[]',"
        f" signals_pruned_at = {now_micros()} WHERE id = {record_id}"
    )


def test_signals_stripped_in_the_database_fail_verify(harness, store_url, monkeypatch, capsys):
    """Yesterday's upload (and one 20 days old, past no prune's `before`)
    stripped with the update a prune makes: verify names both; the record the
    real prune covered is fine."""
    uploads = _pruned_setup(harness, monkeypatch, capsys)
    _tamper(
        store_url, _strip(store_url, uploads["u-1h"].id), _strip(store_url, uploads["u-20d"].id)
    )
    code, out, _ = _cli(harness, monkeypatch, capsys, "auditor", "history", "verify")
    assert code == 1
    problems = [line for line in out.splitlines() if "no intact PruneHistory" in line]
    assert len(problems) == 2, out
    assert str(uploads["u-1h"].id) in problems[0] + problems[1]
    assert str(uploads["u-20d"].id) in problems[0] + problems[1]
    assert str(uploads["u-30d"].id) not in " ".join(problems)


def test_a_prune_killed_between_its_batches_still_verifies(harness, monkeypatch, capsys):
    """The server dies after a batch committed, before the prune's outcome is
    recorded: the record written before the first batch covers what it
    pruned, so `history verify` does not call it tampering."""
    store = harness.core.store
    for name, days in (("u-30d", 30), ("u-20d", 20), ("u-1h", 1 / 24)):
        _upload(store, days, name)
    real = store.prune_history_signals

    def prune_then_die(before_micros, batch=10_000):
        real(before_micros, batch)
        raise SystemExit("killed")  # not an Exception: nothing after it runs

    monkeypatch.setattr(store, "prune_history_signals", prune_then_die)
    with pytest.raises(SystemExit):
        harness.core.prune_history("admin", datetime.now(UTC) - timedelta(days=25))
    monkeypatch.undo()
    assert _uploads(harness)["u-30d"].query_signals == []
    actions = [r for r in store.query_history(HistoryFilter(), 0, 1000) if r.rpc == "PruneHistory"]
    assert [a.detail.get("started") for a in actions] == [True]
    code, out, _ = _cli(harness, monkeypatch, capsys, "auditor", "history", "verify")
    assert code == 0 and "history intact" in out, out


def test_an_edited_prune_action_covers_nothing(harness, store_url, monkeypatch, capsys):
    """The prune action's `before` moved to now (to cover a stripped record):
    its hash breaks, so it covers nothing, and even the record it really
    pruned shows."""
    uploads = _pruned_setup(harness, monkeypatch, capsys)
    actions = [
        r
        for r in harness.core.store.query_history(HistoryFilter(), 0, 1000)
        if r.rpc == "PruneHistory"
    ]
    assert len(actions) == 2  # started, done
    now = datetime.now(UTC).isoformat()
    _tamper(
        store_url,
        *[
            f"UPDATE match_history SET detail = '{json.dumps({**a.detail, 'before': now})}'"
            f" WHERE id = {a.id}"
            for a in actions
        ],
        _strip(store_url, uploads["u-1h"].id),
    )
    code, out, _ = _cli(harness, monkeypatch, capsys, "auditor", "history", "verify")
    assert code == 1
    assert "record was edited: its hash does not match" in out
    problems = [line for line in out.splitlines() if "no intact PruneHistory" in line]
    assert len(problems) == 2, out  # u-30d (really pruned) and u-1h


def test_a_forged_prune_action_covers_nothing(audited_prune, store_url, monkeypatch, capsys):
    """Keyed history: someone with database access appends a PruneHistory
    record chained to the head, hashed as well as they can without the key,
    and strips yesterday's upload: the forged record and the stripped one
    are both problems."""
    h = audited_prune
    uploads = _pruned_setup(h, monkeypatch, capsys)
    store = h.core.store
    last = store.query_history(HistoryFilter(), 0, 1000)[-1]
    with store._read() as cur:
        cur.execute("SELECT record_hash FROM match_history WHERE id = ?", (last.id,))
        head = cur.fetchone()[0]
    when = now_micros()
    detail = json.dumps({"before": datetime.now(UTC).isoformat(), "records_pruned": 1})
    fields = (f"prunehistory-{time.time_ns()}", when, "admin", "PruneHistory", "", "", "OK")
    fields += ("", "", 0, "[]", "[]")
    digest = "4f53cda18c2baa0c0354bb5f9a3ecbe5ed12ab4d8e11ba873c2f11161202b945"  # sha256("[]")
    forged = chain_hash(head, _format_3(fields, digest, detail, None, []), None)
    _tamper(
        store_url,
        "INSERT INTO match_history (request_id, time, caller, rpc, media_type, decision, status,"
        " error_message, client_ref, media_bytes, query_signals, matches, prev_hash, record_hash,"
        " chain_key_id, detail, caller_token_id, chain_format, query_signals_sha256) VALUES"
        f" ('{fields[0]}', {when}, 'admin', 'PruneHistory', '', '', 'OK', '', '', 0, '[]', '[]',"
        f" '{head}', '{forged}', '', '{detail}', NULL, 3, '{digest}')",
        _strip(store_url, uploads["u-1h"].id),
    )
    code, out, _ = _cli(h, monkeypatch, capsys, "auditor", "history", "verify")
    assert code == 1
    assert "record is not signed: written without the key" in out
    problems = [line for line in out.splitlines() if "no intact PruneHistory" in line]
    assert len(problems) == 1 and str(uploads["u-1h"].id) in problems[0], out


@pytest.fixture
def audited_prune(store_url, tmp_path, make_harness):
    key = tmp_path / "history.key"
    key.write_bytes(b"k" * 32)
    return make_harness(
        store_url,
        history_key_file=str(key),
        history_checkpoint_file=str(tmp_path / "checkpoints.jsonl"),
    )


def test_a_prune_record_covers_only_records_written_before_it():
    """PruneCover: a record after the action, or past its `before`, is not covered."""
    from hashdb.history_sql import PruneCover

    cover = PruneCover()
    base = to_micros(datetime(2026, 1, 1, tzinfo=UTC))
    cover.add(10, base)
    cover.add(20, base - 1000)
    assert cover.covers(5, base - 1)
    assert not cover.covers(5, base)  # not before `before`
    assert cover.covers(15, base - 1001) and not cover.covers(15, base - 1000)
    assert not cover.covers(25, 0)  # written after every prune
    assert not type(cover)().covers(1, 0)


def test_http_prune_is_held_to_the_same_limit(harness):
    """POST /v1/history/prune: a `before` inside the window is 409
    FAILED_PRECONDITION naming the field and the limit; one past it prunes."""
    import httpx

    from tests.test_access import start_http_on

    _upload(harness.core.store, 30, "u-30d")
    server = start_http_on(harness.running)
    try:
        headers = {"Authorization": f"Bearer {harness.tokens['admin']}"}
        with httpx.Client(base_url=f"http://127.0.0.1:{server.port}", headers=headers) as c:
            refused = c.post("/v1/history/prune", json={"before": _before(2)})
            assert refused.status_code == 409, refused.text
            error = refused.json()["error"]
            assert error["code"] == "FAILED_PRECONDITION" and error["field"] == "before"
            assert error["limit"] == "history_prune_margin_seconds"
            pruned = c.post("/v1/history/prune", json={"before": _before(20)})
            assert pruned.status_code == 200 and pruned.json() == {"records_pruned": 1}
    finally:
        server.stop()
