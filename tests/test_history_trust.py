"""Issue 16, items 6, 15 and 16 on both stores: a history that cannot be
rewritten without `history verify` saying so (nulled chain, edited records, a
cut-off tail, the per-set index), every call recorded (failed uploads, token
changes, actions indexed under their set), and who did it (the token id)."""

from __future__ import annotations

import json
import time

import grpc
import pytest

from hashdb import HistoryFilter
from hashsvc.client import cli
from hashsvc.core import auth
from hashsvc.core.core import MatchQuery
from hashsvc.v1 import hashsvc_pb2 as pb
from hashsvc_testing.store_tamper import store_before, tamper
from tests.helpers import start_harness

MD5 = "md5:" + "1" * 32


@pytest.fixture
def audited(store_url, tmp_path, make_harness):
    """A server whose history is keyed and checkpointed to a file outside the
    database (checkpoints taken by the test, not by count or time)."""
    key = tmp_path / "history.key"
    key.write_bytes(b"k" * 32)
    h = make_harness(
        store_url,
        history_key_file=str(key),
        history_checkpoint_file=str(tmp_path / "checkpoints.jsonl"),
        history_checkpoint_records=1_000_000,
        history_checkpoint_seconds=3600,
    )
    yield h


def _tamper(store_url: str, *statements: str) -> None:
    """What someone with database access does: switch the append-only
    triggers off (history and its per-set index), then rewrite."""
    tamper(store_url, ("match_history", "match_history_sets"), *statements)


def _matches(h, n: int, caller: str = "pipeline") -> list[int]:
    for i in range(n):
        h.core.match(MatchQuery(signal_type="md5", signal_value=f"{i:032x}"), caller)
    return [r.id for r in h.core.store.query_history(HistoryFilter(), 0, 1000)]


def _verify(h, monkeypatch, capsys) -> tuple[int, str]:
    monkeypatch.setenv("HASHSVC_SERVER", h.address)
    monkeypatch.setenv("HASHSVC_TOKEN", h.tokens["auditor"])
    capsys.readouterr()
    code = cli.main(["history", "verify"])
    return code, capsys.readouterr().out


# -- item 6: a rewritten history does not verify


def test_nulled_and_edited_history_fails_verify(audited, store_url, monkeypatch, capsys):
    ids = _matches(audited, 5)
    audited.core.audit.checkpoint()
    code, out = _verify(audited, monkeypatch, capsys)
    assert code == 0 and "intact" in out
    # every record's chain columns nulled (as if written before the chain),
    # one record's decision and caller rewritten
    _tamper(
        store_url,
        "UPDATE match_history SET prev_hash = NULL, record_hash = NULL, chain_key_id = NULL",
        f"UPDATE match_history SET decision = 'block', caller = 'someone' WHERE id = {ids[2]}",
    )
    code, out = _verify(audited, monkeypatch, capsys)
    assert code == 1 and "TAMPERED" in out
    assert "checkpoint" in out and f"record {ids[-1]}" in out
    assert "records checked" in out and "unchained" in out and "problem" in out


def test_deleted_tail_fails_verify(audited, store_url, monkeypatch, capsys):
    ids = _matches(audited, 6)
    audited.core.audit.checkpoint()
    _tamper(store_url, f"DELETE FROM match_history WHERE id > {ids[2]}")
    code, out = _verify(audited, monkeypatch, capsys)
    assert code == 1 and "TAMPERED" in out
    assert f"record {ids[-1]}" in out and "missing" in out


def test_deleted_tail_with_its_checkpoints_fails_against_the_file(
    audited, store_url, monkeypatch, capsys
):
    ids = _matches(audited, 4)
    audited.core.audit.checkpoint()
    _matches(audited, 2)
    audited.core.audit.checkpoint()
    # everything after the second match goes, the in-database checkpoints too
    _tamper(store_url, f"DELETE FROM match_history WHERE id > {ids[1]}")
    code, out = _verify(audited, monkeypatch, capsys)
    assert code == 1 and "missing" in out


def test_forged_checkpoint_file_line_is_a_problem(audited, tmp_path, monkeypatch, capsys):
    _matches(audited, 3)
    audited.core.audit.checkpoint()
    path = tmp_path / "checkpoints.jsonl"
    line = json.loads(path.read_text().splitlines()[-1])
    line["records"] = 1  # an attacker lowering the count the database must reach
    path.write_text(path.read_text() + json.dumps(line) + "\n")
    code, out = _verify(audited, monkeypatch, capsys)
    assert code == 1 and "not signed" in out


def test_deleted_checkpoint_file_is_a_problem_not_a_note(
    audited, store_url, tmp_path, monkeypatch, capsys
):
    _matches(audited, 2)
    audited.core.audit.checkpoint()
    ids = _matches(audited, 2)  # the first checkpoint record is ids[2]
    audited.core.audit.checkpoint()
    # the tail goes with its newer in-database checkpoint, and the file with
    # it: the chain and the older checkpoint left in the history still hold
    _tamper(store_url, f"DELETE FROM match_history WHERE id > {ids[2]}")
    (tmp_path / "checkpoints.jsonl").unlink()
    code, out = _verify(audited, monkeypatch, capsys)
    assert code == 1 and "TAMPERED" in out and "checkpoints.jsonl is missing" in out


def test_unreadable_checkpoint_file_is_a_problem(audited, tmp_path, monkeypatch, capsys):
    _matches(audited, 2)
    audited.core.audit.checkpoint()
    path = tmp_path / "checkpoints.jsonl"
    path.unlink()
    path.mkdir()  # in the way of the file: it cannot be read
    code, out = _verify(audited, monkeypatch, capsys)
    assert code == 1 and "cannot be read" in out


def test_no_checkpoint_yet_is_a_note(audited, monkeypatch, capsys):
    _matches(audited, 2)  # no checkpoint written: the missing file is expected
    code, out = _verify(audited, monkeypatch, capsys)
    assert code == 0 and "note: checkpoint file" in out and "holds no checkpoint yet" in out


def test_verify_says_truncation_is_not_checked_without_a_checkpoint_file(
    store_url, monkeypatch, capsys
):
    h = start_harness(store_url)
    try:
        _matches(h, 2)
        h.core.audit.checkpoint()
        code, out = _verify(h, monkeypatch, capsys)
        assert code == 0 and "history intact" in out and "truncation NOT checked" in out
        assert cli.main(["history", "verify", "--json"]) == 0
        row = json.loads(capsys.readouterr().out)
        assert row["intact"] is True and row["truncation_checked"] is False
    finally:
        h.close()


def test_a_checkpoint_file_makes_truncation_checked(audited, monkeypatch, capsys):
    _matches(audited, 2)
    audited.core.audit.checkpoint()
    _verify(audited, monkeypatch, capsys)
    assert cli.main(["history", "verify", "--json"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["truncation_checked"] is True and row["checkpoints_checked"] >= 1


def test_history_key_without_checkpoint_file_refuses_to_start(tmp_path, capsys):
    key = tmp_path / "history.key"
    key.write_bytes(b"k" * 32)
    config = tmp_path / "c.toml"
    config.write_text(f'history_key_file = "{key}"\n')
    argv = ["serve", "--db", f"sqlite:///{tmp_path}/h.db", "--config", str(config)]
    assert cli.main(argv) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "history_checkpoint_file" in err
    with pytest.raises(ValueError, match="history_checkpoint_file"):
        start_harness(f"sqlite:///{tmp_path}/h.db", history_key_file=str(key))


def test_set_index_of_history_is_covered_by_the_chain(audited, store_url, monkeypatch, capsys):
    op, md = audited.stubs("operator")
    op.curation.CreateSet(pb.CreateSetRequest(name="known"), metadata=md)
    op.curation.CreateSet(pb.CreateSetRequest(name="other"), metadata=md)
    op.curation.AddEntry(
        pb.AddEntryRequest(
            set="known", name="e", signal=pb.SignalValue(signal_type="md5", value="1" * 32)
        ),
        metadata=md,
    )
    audited.core.match(MatchQuery(signal_type="md5", signal_value="1" * 32), "pipeline")
    known, other = (audited.core.store.get_set(n).id for n in ("known", "other"))
    hit = audited.core.store.query_history(HistoryFilter(decision="block"))[0].id
    # the block moved from "known" to "other" in `history --set`
    _tamper(
        store_url,
        f"DELETE FROM match_history_sets WHERE history_id = {hit}",
        f"INSERT INTO match_history_sets (history_id, set_id) VALUES ({hit}, {other})",
    )
    assert known != other
    code, out = _verify(audited, monkeypatch, capsys)
    assert code == 1 and f"record {hit}: record was edited" in out


def test_checkpoints_are_written_every_n_records(store_url, tmp_path, make_harness):
    path = tmp_path / "cp.jsonl"
    h = make_harness(
        store_url,
        history_checkpoint_file=str(path),
        history_checkpoint_records=3,
        change_poll_seconds=0.05,
    )

    def lines() -> list[dict]:
        return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []

    def wait_for(count: int) -> None:
        # the file line comes first, then the record in the history
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (
            len([r for r in _history(h) if r.rpc == "HistoryCheckpoint"]) < count
        ):
            time.sleep(0.05)

    _matches(h, 2)
    time.sleep(0.3)
    assert lines() == []  # 2 < 3 records: not due yet
    _matches(h, 1)
    wait_for(1)
    assert [c["records"] for c in lines()] == [3]
    _matches(h, 3)
    wait_for(2)
    last = lines()[-1]
    assert len(lines()) == 2 and last["records"] == 7  # 6 matches + the first checkpoint
    in_history = [r for r in _history(h) if r.rpc == "HistoryCheckpoint"]
    assert in_history[-1].detail["head_hash"] == last["head_hash"]
    assert in_history[-1].caller == "hashsvc" and in_history[-1].caller_token_id is None
    assert h.core.audit.verify().intact


# -- item 15: every call recorded


def _history(h) -> list:
    return h.core.store.query_history(HistoryFilter(), 0, 1000)


def _upload(stub, md, messages):
    return stub.matcher.MatchUpload(iter(messages), metadata=md, timeout=30)


def test_failed_uploads_are_recorded(store_url, make_harness):
    h = make_harness(store_url, max_upload_bytes=1000)
    m, md = h.stubs("matcher")
    matcher_id = h.core.store.find_token(auth.hash_token(h.tokens["matcher"])).id
    header = pb.MatchUploadRequest(header=pb.MatchRequest(client_ref="up"))
    chunk = pb.MatchUploadRequest(chunk=b"x" * 600)
    cases = {
        "too-large": ([header, chunk, chunk], grpc.StatusCode.RESOURCE_EXHAUSTED),
        "header-only": ([header], grpc.StatusCode.INVALID_ARGUMENT),
        "two-headers": ([header, header, chunk], grpc.StatusCode.INVALID_ARGUMENT),
        "chunk-first": ([chunk, header], grpc.StatusCode.INVALID_ARGUMENT),
    }
    for name, (messages, code) in cases.items():
        before = len(_history(h))
        with pytest.raises(grpc.RpcError) as err:
            _upload(m, md, messages)
        assert err.value.code() == code, name
        new = _history(h)[before:]
        assert len(new) == 1, name
        assert new[0].rpc == "MatchUpload" and new[0].status == code.name, name
        assert new[0].caller == "test-matcher" and new[0].decision == ""
        assert new[0].caller_token_id == matcher_id
        assert new[0].error_message
    assert h.core.audit.verify().intact


def test_a_match_the_store_rejects_is_still_recorded(store_url, tmp_path, make_harness):
    h = make_harness(store_url)
    # PostgreSQL text cannot hold NUL: the record must not be lost to it
    try:
        h.core.match(MatchQuery(signal_type="md5", signal_value="2" * 32, client_ref="a\x00b"), "p")
    except Exception:  # noqa: BLE001 - whatever the answer, it is recorded
        pass
    records = [r for r in _history(h) if r.rpc == "Match"]
    assert len(records) == 1 and records[0].client_ref.startswith("a")


def test_token_create_and_revoke_are_recorded_without_the_secret(store_url, make_harness):
    h = make_harness(store_url)
    a, md = h.stubs("admin")
    made = a.admin.CreateToken(pb.CreateTokenRequest(role="matcher", name="cam"), metadata=md)
    a.admin.RevokeToken(pb.RevokeTokenRequest(id=made.info.id), metadata=md)
    with pytest.raises(grpc.RpcError):
        a.admin.CreateToken(pb.CreateTokenRequest(role="root", name="x"), metadata=md)
    records = {r.rpc: r for r in _history(h) if r.status == "OK"}
    created, revoked = records["CreateToken"], records["RevokeToken"]
    assert created.caller == "test-admin" and created.detail["token_id"] == made.info.id
    assert created.detail["name"] == "cam" and created.detail["role"] == "matcher"
    assert revoked.detail["token_id"] == made.info.id
    failed = [r for r in _history(h) if r.rpc == "CreateToken" and r.status != "OK"]
    assert failed and failed[0].status == "INVALID_ARGUMENT"
    everything = json.dumps([r.__dict__ for r in _history(h)], default=str)
    assert made.token not in everything and made.token[4:] not in everything
    assert auth.hash_token(made.token) not in everything


def test_history_of_a_set_holds_its_curation(store_url, make_harness):
    h = make_harness(store_url)
    op, md = h.stubs("operator")
    op.curation.CreateSet(pb.CreateSetRequest(name="s"), metadata=md)
    op.curation.CreateSet(pb.CreateSetRequest(name="t"), metadata=md)
    sig = pb.SignalValue(signal_type="md5", value="3" * 32)
    added = op.curation.AddEntry(pb.AddEntryRequest(set="s", name="e", signal=sig), metadata=md)
    assert h.core.review.raise_flood_alert(added.id, 250, 60.0) == "s"
    op.curation.ReleaseEntry(pb.ReleaseEntryRequest(set="s", name="e"), metadata=md)
    op.curation.RemoveEntry(pb.RemoveEntryRequest(set="s", name="e"), metadata=md)
    a, amd = h.stubs("auditor")
    got = a.audit.QueryHistory(pb.QueryHistoryRequest(set="s"), metadata=amd).records
    assert [r.rpc for r in got] == [
        "CreateSet",
        "AddEntry",
        "FloodAlert",
        "ReleaseEntry",
        "RemoveEntry",
    ]
    assert h.core.audit.verify().intact


# -- item 16: who did it


def test_history_records_the_token_id(store_url, monkeypatch, capsys, make_harness):
    h = make_harness(store_url)
    a, md = h.stubs("admin")
    one = a.admin.CreateToken(pb.CreateTokenRequest(role="matcher"), metadata=md)
    two = a.admin.CreateToken(pb.CreateTokenRequest(role="matcher"), metadata=md)
    assert one.info.name != two.info.name  # no shared default name
    for made in (one, two):
        stub = h.stubs("matcher")[0]
        stub.matcher.Match(
            pb.MatchRequest(signal=pb.SignalValue(signal_type="md5", value="4" * 32)),
            metadata=(("authorization", f"Bearer {made.token}"),),
        )
    au, amd = h.stubs("auditor")
    got = au.audit.QueryHistory(pb.QueryHistoryRequest(), metadata=amd).records
    matched = [r for r in got if r.rpc == "Match"]
    assert [r.caller_token_id for r in matched] == [one.info.id, two.info.id]
    monkeypatch.setenv("HASHSVC_SERVER", h.address)
    monkeypatch.setenv("HASHSVC_TOKEN", h.tokens["auditor"])
    capsys.readouterr()
    assert cli.main(["history", "--json"]) == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert {r["caller_token_id"] for r in rows if r["rpc"] == "Match"} == {
        one.info.id,
        two.info.id,
    }
    # an action by a caller carries its token id too
    admin_id = h.core.store.find_token(auth.hash_token(h.tokens["admin"])).id
    assert {r["caller_token_id"] for r in rows if r["rpc"] == "CreateToken"} == {admin_id}


def test_token_id_is_covered_by_the_chain(audited, store_url, monkeypatch, capsys):
    ids = _matches(audited, 3)
    other = audited.core.store.find_token(auth.hash_token(audited.tokens["operator"])).id
    _tamper(store_url, f"UPDATE match_history SET caller_token_id = {other} WHERE id = {ids[1]}")
    code, out = _verify(audited, monkeypatch, capsys)
    assert code == 1 and f"record {ids[1]}: record was edited" in out


def test_token_names_are_unique_among_active_tokens(store_url, make_harness):
    h = make_harness(store_url)
    a, md = h.stubs("admin")
    first = a.admin.CreateToken(pb.CreateTokenRequest(role="reviewer", name="rev"), metadata=md)
    with pytest.raises(grpc.RpcError) as err:
        a.admin.CreateToken(pb.CreateTokenRequest(role="matcher", name="rev"), metadata=md)
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    a.admin.RevokeToken(pb.RevokeTokenRequest(id=first.info.id), metadata=md)
    again = a.admin.CreateToken(pb.CreateTokenRequest(role="reviewer", name="rev"), metadata=md)
    assert again.info.id != first.info.id


def test_migration_renames_tokens_that_share_an_active_name(store_url):
    """Tokens made without --name were all named after their role: the
    migration keeps the oldest name and renames the others NAME#ID."""
    from hashdb import migrations, open_store

    conn, cur = store_before(store_url, migrations._HISTORY_IDENTITY)
    for i, (name, revoked) in enumerate(
        [("matcher", None), ("matcher", None), ("matcher", 5), ("alice", None)]
    ):
        cur.execute(
            "INSERT INTO tokens (name, role, token_hash, created_at, revoked_at)"
            " VALUES (?, 'matcher', ?, 1, ?)",
            (name, f"h{i}", revoked),
        )
    conn.commit()
    conn.close()
    store = open_store(store_url)
    try:
        tokens = store.list_tokens()
        assert [t.name for t in tokens] == [
            "matcher",
            f"matcher#{tokens[1].id}",
            "matcher",
            "alice",
        ]
        with pytest.raises(Exception, match="already exists"):
            store.add_token("alice", "matcher", "h9")
    finally:
        store.close()


def test_nulled_chain_of_a_database_chained_from_the_start_is_caught_without_a_file(store_url):
    """No checkpoint file: a database created with the chain holds no record
    without a hash, so a wholesale nulling still shows; a database that had
    records before the chain existed (migration 2 applied later) keeps them."""
    from hashdb import open_store
    from tests.test_store import _chain_of

    store = open_store(store_url, history_key=b"k" * 32)
    try:
        ids = _chain_of(store, 3)
        _tamper(store_url, "UPDATE match_history SET prev_hash = NULL, record_hash = NULL")
        problems = store.verify_history().problems
        assert [p[0] for p in problems] == ids and "emptied" in problems[0][1]
        # as an upgraded database would be: the chain began a day after the schema
        _tamper(
            store_url,
            "UPDATE schema_migrations SET applied_at = applied_at + 86400000000 WHERE version = 2",
        )
        result = store.verify_history()
        assert result.intact and result.unchained_records == 3
    finally:
        store.close()


def test_review_claims_name_the_token(store_url, make_harness):
    """Two tokens may carry one name over time (revoke, reissue): a claim
    belongs to the token that made it, and the history names both."""
    h = make_harness(store_url)
    op, md = h.stubs("operator")
    op.curation.CreateSet(pb.CreateSetRequest(name="q", review_blocks=True), metadata=md)
    sig = pb.SignalValue(signal_type="md5", value="5" * 32)
    op.curation.AddEntry(pb.AddEntryRequest(set="q", name="e", signal=sig), metadata=md)
    m, mmd = h.stubs("matcher")
    for _ in range(2):
        assert m.matcher.Match(pb.MatchRequest(signal=sig), metadata=mmd).decision == pb.BLOCK
    a, amd = h.stubs("admin")
    old = a.admin.CreateToken(pb.CreateTokenRequest(role="reviewer", name="rev"), metadata=amd)
    stub = h.stubs("reviewer")[0]
    old_md = (("authorization", f"Bearer {old.token}"),)
    claimed = stub.review.ClaimReviewItem(pb.ClaimReviewItemRequest(), metadata=old_md)
    assert claimed.claimed_by == f"rev#{old.info.id}"
    a.admin.RevokeToken(pb.RevokeTokenRequest(id=old.info.id), metadata=amd)
    new = a.admin.CreateToken(pb.CreateTokenRequest(role="reviewer", name="rev"), metadata=amd)
    new_md = (("authorization", f"Bearer {new.token}"),)
    with pytest.raises(grpc.RpcError) as err:  # not the same reviewer's claim
        stub.review.ResolveReviewItem(
            pb.ResolveReviewItemRequest(id=claimed.id, resolution="confirmed"), metadata=new_md
        )
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    mine = stub.review.ClaimReviewItem(pb.ClaimReviewItemRequest(), metadata=new_md)
    done = stub.review.ResolveReviewItem(
        pb.ResolveReviewItemRequest(id=mine.id, resolution="confirmed"), metadata=new_md
    )
    assert done.resolved_by == f"rev#{new.info.id}"
    actions = [r for r in _history(h) if r.rpc in ("ClaimReview", "ResolveReview")]
    assert [(r.rpc, r.caller, r.caller_token_id) for r in actions] == [
        ("ClaimReview", "rev", old.info.id),
        ("ClaimReview", "rev", new.info.id),
        ("ResolveReview", "rev", new.info.id),
    ]


def test_planted_checkpoint_record_is_a_problem_not_a_crash(
    audited, store_url, monkeypatch, capsys
):
    _matches(audited, 2)
    audited.core.audit.checkpoint()
    planted = (
        "INSERT INTO match_history (request_id, time, caller, rpc, media_type, decision, status,"
        " error_message, client_ref, media_bytes, query_signals, matches, detail) VALUES"
        " ('x', 1, 'hashsvc', 'HistoryCheckpoint', '', '', 'OK', '', '', 0, '[]', '[]',"
        """ '{"head_id": "1 OR 1=1", "records": -5}')"""
    )
    _tamper(store_url, planted)
    code, out = _verify(audited, monkeypatch, capsys)
    assert code == 1 and "malformed" in out
    _matches(audited, 1)
    assert audited.core.audit.checkpoint()  # checkpointing goes on


def test_token_created_with_db_is_recorded(store_url, tmp_path, capsys):
    from hashdb import open_store

    plain = f"sqlite:///{tmp_path}/plain.db"
    assert cli.main(["token", "create", "--role", "admin", "--name", "first", "--db", plain]) == 0
    store = open_store(plain)
    try:
        (record,) = store.query_history(HistoryFilter())
        assert record.rpc == "CreateToken" and record.caller.startswith("local:")
        assert record.detail["name"] == "first" and record.detail["via"] == "--db"
        assert store.verify_history().intact
    finally:
        store.close()
    # a keyed history: recorded only with the key (else a warning, not a break)
    key = tmp_path / "k"
    key.write_bytes(b"s" * 32)
    keyed = open_store(store_url, history_key=b"s" * 32)
    keyed.record_match(_history_probe())
    keyed.close()
    capsys.readouterr()
    assert cli.main(["token", "create", "--role", "matcher", "--db", store_url]) == 0
    assert "not in the history" in capsys.readouterr().err
    config = tmp_path / "c.toml"
    config.write_text(
        f'history_key_file = "{key}"\nhistory_checkpoint_file = "{tmp_path}/cp.jsonl"\n'
    )
    argv = ["token", "create", "--role", "matcher", "--db", store_url, "--config", str(config)]
    assert cli.main(argv) == 0
    keyed = open_store(store_url, history_key=b"s" * 32)
    try:
        assert [r.rpc for r in keyed.query_history(HistoryFilter())] == ["Probe", "CreateToken"]
        assert keyed.verify_history().intact
    finally:
        keyed.close()


def _history_probe():
    from hashsvc.core.audit import action_record

    return action_record("Probe", "test", {"n": 1})


def test_empty_match_requests_are_recorded(store_url, make_harness):
    h = make_harness(store_url)
    m, md = h.stubs("matcher")
    token_id = h.core.store.find_token(auth.hash_token(h.tokens["matcher"])).id
    with pytest.raises(grpc.RpcError) as err:
        m.matcher.Match(pb.MatchRequest(client_ref="empty"), metadata=md)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    answers = list(
        m.matcher.MatchBatch(iter([pb.MatchRequest(client_ref="empty-item")]), metadata=md)
    )
    assert answers[0].error_code == "INVALID_ARGUMENT"
    got = [(r.rpc, r.client_ref, r.status, r.caller_token_id) for r in _history(h)]
    assert got == [
        ("Match", "empty", "INVALID_ARGUMENT", token_id),
        ("MatchBatch", "empty-item", "INVALID_ARGUMENT", token_id),
    ]
