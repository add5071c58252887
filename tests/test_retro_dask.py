"""Retro-hunt runs on Dask's distributed scheduler (retro_engine = "dask";
issue 20, Scale), on a real local cluster of 2 worker processes and
PostgreSQL: the same hits as the in-process run on the same data, with
planted copies in several time partitions; a worker killed mid-run and every
hit still reported once; a scheduler that cannot be reached fails the run
with the reason (never done with 0 hits) and the run resumes once it can;
workers are handed the store URL, and its password reaches no log."""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from distributed import Client, LocalCluster

from hashdb import HistoryRecord, ReviewFilter, open_store
from hashdb.bulk_sql import PlainSignals
from hashdb.times import to_micros
from hashsvc.base.signals import Signal
from hashsvc.client import cli
from hashsvc.core.retro_dask import DaskSettings, PartitionScan, plan_partitions
from hashsvc.matching.policy import PdqPolicy
from hashsvc.v1 import hashsvc_pb2 as pb
from hashsvc_testing.image_media import encode, photo, reencoded
from tests.conftest import PG_URL, _pg_schema

HOURS = 72  # the planted history spans three days...
UPLOADS = 72  # ...one upload an hour
PLANTED = {3: 0, 20: 1, 41: 2, 66: 0}  # upload number -> which new entry it copies
VIEWS = 6


@pytest.fixture(scope="module")
def cluster():
    """A local cluster of 2 worker processes (Dask's own), shared by the
    module's tests: its scheduler address is what a server is given."""
    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
    ) as local:
        yield local


@pytest.fixture
def client(cluster):
    with Client(cluster.scheduler_address, set_as_default=False) as c:
        yield c


def _flip(value: np.ndarray, bits: int, rng) -> bytes:
    unpacked = np.unpackbits(value)
    unpacked[rng.choice(256, bits, replace=False)] ^= 1
    return np.packbits(unpacked).tobytes()


def _plant(core) -> set[str]:
    """Three new PDQ entries in set "isis", and UPLOADS allowed Match records
    an hour apart over HOURS, written as the server writes them (random
    views; the PLANTED ones hold a 4-bit copy of an entry). Returns the
    request ids of the planted copies."""
    rng = np.random.default_rng(20)
    hashes = np.unique(rng.integers(0, 256, (3, 32), dtype=np.uint8), axis=0)
    hash_set = core.curation.create_set("isis")
    core.store.bulk_add_plain(hash_set.id, PlainSignals("pdq", "hash", hashes), "test")
    core.live.catch_up()
    now = datetime.now(UTC)
    planted = set()
    for n in range(UPLOADS):
        views = [rng.integers(0, 256, 32, dtype=np.uint8).tobytes() for _ in range(VIEWS)]
        if n in PLANTED:
            views[n % VIEWS] = _flip(hashes[PLANTED[n]], 4, rng)
            planted.add(f"upload-{n}")
        core.audit.record_call(
            request_id=f"upload-{n}",
            started=now - timedelta(hours=HOURS - n - 0.5),
            caller="test-matcher",
            rpc="Match",
            media_type="image",
            decision="allow",
            status="OK",
            error_message="",
            client_ref=f"ref-{n}",
            media_bytes=1000,
            query_signals=[
                Signal("pdq", v, 90, "original" if k == 0 else f"view{k}")
                for k, v in enumerate(views)
            ],
            matches=[],
        )
    return planted


def _start(core):
    """A run by hand over the whole planted history."""
    return core.retro.start_run("test-operator", "isis", since_seconds=(HOURS + 2) * 3600)


def _wait(core, run_id: int, seconds: float = 60):
    """The run once it has ended (bounded)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        run = core.store.get_retro_run(run_id)
        if run.state not in ("queued", "running"):
            return run
        time.sleep(0.05)
    raise AssertionError(f"retro run {run_id} still {run.state} after {seconds} s")


def _hunt(core):
    return _wait(core, _start(core).id)


def _hits(core, run) -> set[tuple[int, str, str]]:
    return {
        (entry, request, decision)
        for entry, request, decision, _ in core.store.retro_matches_of(run.id)
    }


def _dask(cluster, **more) -> dict:
    return {
        "retro_engine": "dask",
        "retro_scheduler_address": cluster.scheduler_address,
        "retro_partition_seconds": 6 * 3600,  # 13 partitions of the 3 days
        "retro_poll_seconds": 0.1,
        "retro_lease_seconds": 5,
        **more,
    }


# A scheduler nobody reaches: each of the run's retro_max_attempts (5)
# attempts fails after a second, retried at once (the default backoff, 2 s
# doubling, waited 30 s before the run failed: what a run's retries wait is
# tests/test_retro_faults.py's)
UNREACHABLE = {"retro_engine_connect_seconds": 1, "retro_retry_initial_seconds": 0.05}


def test_dask_run_finds_what_the_in_process_run_finds(make_core, pg_url, cluster):
    """The same history on two stores: one run in process, one on the
    cluster; the same hits (entry, upload, decision), each once, from
    partitions all over the three days, and the same review items."""
    with _pg_schema() as other_url:
        inprocess = make_core(other_url, retro_poll_seconds=0.1)
        expected = _plant(inprocess)
        run = _hunt(inprocess)
        assert (run.state, run.hits) == ("done", len(PLANTED))
        in_process_hits = _hits(inprocess, run)
        assert {r for _, r, _ in in_process_hits} == expected
        make_core.stop(inprocess)  # before its schema is dropped

        core = make_core(pg_url, **_dask(cluster))
        assert _plant(core) == expected
        run = _hunt(core)
        assert (run.state, run.error) == ("done", "")
        assert _hits(core, run) == in_process_hits
        assert run.hits == len(PLANTED) and run.scanned == UPLOADS
        parts = core.store.retro_partitions(run.id)
        assert len(parts) >= 10 and all(p.done for p in parts)
        assert sum(p.scanned for p in parts) == UPLOADS
        assert sum(1 for p in parts if p.hits) == len(PLANTED)  # one copy per partition
        # the partitions tile the run: no record read twice or left out
        assert [p.after_id for p in parts[1:]] == [p.upto_id for p in parts[:-1]]
        assert run.checkpoint == parts[-1].upto_id
        items = core.store.list_review_items(ReviewFilter())
        assert sorted(i.request_id for i in items if i.source == "retro") == sorted(expected)

        # a run by hand again over the same window: every hit known, none twice
        again = _hunt(core)
        assert (again.state, again.hits) == ("done", 0)


def test_worker_killed_mid_run_still_reports_every_hit_once(make_core, pg_url, cluster, client):
    """A worker process killed (-9) while it scans a partition: the
    scheduler runs the partition again on the other worker (or the
    restarted one); every planted hit is reported once, the run done."""
    core = make_core(
        pg_url,
        **_dask(cluster, retro_partition_seconds=3600, retro_batch_records=1),  # 72 small tasks
    )
    expected = _plant(core)
    pids = client.run(os.getpid)
    run = _start(core)
    killed = None
    deadline = time.monotonic() + 30
    while killed is None and time.monotonic() < deadline:
        for worker, keys in client.processing().items():
            if any(str(k).startswith(f"retro-run{run.id}-") for k in keys):
                os.kill(pids[worker], signal.SIGKILL)
                killed = worker
                break
        time.sleep(0.01)
    assert killed is not None, "no partition was seen running"
    run = _wait(core, run.id)
    assert (run.state, run.error) == ("done", "")
    assert {r for _, r, _ in _hits(core, run)} == expected and run.hits == len(PLANTED)
    assert all(p.done for p in core.store.retro_partitions(run.id))
    client.wait_for_workers(2, timeout=30)  # the nanny restarted it
    assert killed not in client.run(os.getpid) or client.run(os.getpid)[killed] != pids[killed]


def test_unreachable_scheduler_fails_the_run_and_it_resumes(make_core, pg_url, cluster):
    """A scheduler that cannot be reached: the run ends failed, saying which
    and why, with no hit and no partition done (never done with 0 hits);
    resumed with the scheduler named right, it finds every hit."""
    nowhere = "tcp://127.0.0.1:9"  # discard: nothing listens
    core = make_core(pg_url, **_dask(cluster, **UNREACHABLE, retro_scheduler_address=nowhere))
    expected = _plant(core)
    run = _hunt(core)
    assert run.state == "failed" and run.hits == 0
    assert "cannot be reached" in run.error and nowhere in run.error
    assert not any(p.done for p in core.store.retro_partitions(run.id))
    make_core.stop(core)

    core = make_core(pg_url, **_dask(cluster))
    resumed = core.retro.resume_run(run.id)
    # queued again; the server's worker may already have claimed it by the
    # time resume_run reads it back (it wakes the worker first)
    assert resumed.state in ("queued", "running", "done") and resumed.error == ""
    run = _wait(core, run.id)
    assert (run.state, run.hits) == ("done", len(PLANTED))
    assert {r for _, r, _ in _hits(core, run)} == expected


def test_workers_get_the_store_url_and_no_log_shows_its_password(
    make_core, pg_url, cluster, client, caplog
):
    """A store URL with a password (PostgreSQL here trusts local
    connections, so any password opens it): the workers open the store from
    it and find the hits; neither the server's log nor the workers' nor the
    scheduler's shows the password, and a task's arguments (which Dask logs
    when a task fails) print without the URL."""
    secret = "pw-never-logged-7f3a"
    assert pg_url.startswith("postgresql://127.0.0.1")
    with_password = pg_url.replace("postgresql://", f"postgresql://root:{secret}@", 1)
    caplog.set_level(logging.DEBUG)
    core = make_core(with_password, **_dask(cluster))
    expected = _plant(core)
    run = _hunt(core)
    assert (run.state, run.hits) == ("done", len(PLANTED))
    assert {r for _, r, _ in _hits(core, run)} == expected
    logs = [caplog.text, repr(client.get_scheduler_logs(n=1000))]
    logs += [repr(lines) for lines in client.get_worker_logs(n=1000).values()]
    assert all(secret not in text for text in logs)
    scan = PartitionScan(with_password, run.id, PdqPolicy(), None, None, 100, 1.0)
    assert secret not in repr(scan) and secret not in str(scan)


def test_dask_engine_settings_are_checked():
    """Refused at start: an unknown engine, a scheduler that is no URL, an
    in-memory SQLite store (workers are other processes), a SQLite file
    with a remote scheduler (the file is on this machine only)."""
    from hashsvc.core.config import Config

    with pytest.raises(ValueError, match="retro_engine must be one of"):
        Config(retro_engine="ray")
    with pytest.raises(ValueError, match="must be a URL"):
        Config(db_url=PG_URL, retro_engine="dask", retro_scheduler_address="sched:8786")
    with pytest.raises(ValueError, match="in-memory SQLite"):
        Config(db_url="sqlite:///:memory:", retro_engine="dask")
    with pytest.raises(ValueError, match="needs PostgreSQL"):
        Config(
            db_url="sqlite:///h.db",
            retro_engine="dask",
            retro_scheduler_address="tcp://10.1.2.3:8786",
        )
    with pytest.raises(ValueError, match="retro_partition_seconds"):
        Config(db_url=PG_URL, retro_engine="dask", retro_partition_seconds=0)
    # a password travels to the workers: not over a remote scheduler without TLS
    secret_url = "postgresql://hashsvc:s3cret@db.internal:5432/hashsvc"
    with pytest.raises(ValueError, match="without TLS would carry db_url's password"):
        Config(
            db_url=secret_url, retro_engine="dask", retro_scheduler_address="tcp://10.1.2.3:8786"
        )
    Config(db_url=secret_url, retro_engine="dask", retro_scheduler_address="tls://10.1.2.3:8786")
    Config(db_url=secret_url, retro_engine="dask", retro_scheduler_address="tcp://127.0.0.1:8786")
    # on one machine a SQLite file is shared: a local cluster may read it
    Config(db_url="sqlite:///h.db", retro_engine="dask")
    Config(
        db_url="sqlite:///h.db", retro_engine="dask", retro_scheduler_address="tcp://127.0.0.1:8786"
    )


def test_retro_run_cli_on_dask_fails_then_resumes(
    make_harness, pg_url, cluster, monkeypatch, capsys
):
    """Through the running service: `hashsvc retro run` on a server whose
    scheduler cannot be reached exits 1 with the run failed and the reason;
    `retro run --resume ID` on a server that reaches it finds the upload let
    through; a run that did not fail does not resume."""
    nowhere = "tcp://127.0.0.1:9"
    harness = make_harness(pg_url, **_dask(cluster, **UNREACHABLE, retro_scheduler_address=nowhere))
    ops, op_md = harness.stubs("operator")
    m, m_md = harness.stubs("matcher")
    ops.curation.CreateSet(pb.CreateSetRequest(name="isis"), metadata=op_md)
    ops.curation.UpdateSet(pb.UpdateSetRequest(name="isis", retro_window_seconds=0), metadata=op_md)
    copy = m.matcher.Match(
        pb.MatchRequest(media=pb.Media(content=reencoded(photo(1))), client_ref="u1"),
        metadata=m_md,
    )
    assert copy.decision == pb.ALLOW
    ops.curation.AddEntry(
        pb.AddEntryRequest(set="isis", name="poster", media=pb.Media(content=encode(photo(1)))),
        metadata=op_md,
    )
    monkeypatch.setenv("HASHSVC_TOKEN", harness.tokens["operator"])
    run_cmd = ["--server", harness.address, "retro", "run", "--json"]
    assert cli.main([*run_cmd, "--set", "isis", "--since", "1d"]) == 1
    failed = json.loads(capsys.readouterr().out)
    assert failed["state"] == "failed" and failed["hits"] == 0
    assert "cannot be reached" in failed["error"] and nowhere in failed["error"]
    make_harness.stop(harness)

    harness = make_harness(pg_url, **_dask(cluster))
    monkeypatch.setenv("HASHSVC_TOKEN", harness.tokens["operator"])
    run_cmd = ["--server", harness.address, "retro", "run", "--json"]
    assert cli.main([*run_cmd, "--resume", str(failed["id"]), "--set", "isis"]) == 1
    assert "INVALID_ARGUMENT" in capsys.readouterr().err
    assert cli.main([*run_cmd, "--resume", str(failed["id"])]) == 0
    resumed = json.loads(capsys.readouterr().out)
    assert (resumed["id"], resumed["state"], resumed["hits"]) == (failed["id"], "done", 1)
    rev, rev_md = harness.stubs("reviewer")
    items = rev.review.ListReviewItems(pb.ListReviewItemsRequest(), metadata=rev_md).items
    assert [i.request_id for i in items if i.source == "retro"] == [copy.request_id]
    assert cli.main([*run_cmd, "--resume", str(failed["id"])]) == 1
    assert "FAILED_PRECONDITION" in capsys.readouterr().err


def test_run_survives_its_coordinator_stopping(make_core, pg_url, cluster):
    """The server coordinating a run stops mid-run: the run goes back to
    queued with its partitions done written down; the next server submits
    only the others. Every hit once, and every record counted once (a
    partition scanned twice would count its records twice)."""
    config = _dask(cluster, retro_partition_seconds=3600, retro_batch_records=1)
    core = make_core(pg_url, **config)
    expected = _plant(core)
    run = _start(core)
    deadline = time.monotonic() + 60
    # stopped early (one partition done): a loaded machine must not let the
    # workers finish the whole run before the stop lands
    while sum(p.done for p in core.store.retro_partitions(run.id)) < 1:
        assert time.monotonic() < deadline, "no partition done"
        time.sleep(0.02)
    make_core.stop(core)
    store = open_store(pg_url)
    try:
        stopped = store.get_retro_run(run.id)
        parts = store.retro_partitions(run.id)
    finally:
        store.close()
    assert stopped.state == "queued" and 1 <= sum(p.done for p in parts) < len(parts)

    core = make_core(pg_url, **config)
    run = _wait(core, run.id)
    assert (run.state, run.hits, run.scanned) == ("done", len(PLANTED), UPLOADS)
    assert {r for _, r, _ in _hits(core, run)} == expected


def test_partitions_tile_the_history_in_both_stores(store):
    """The partitions of a run (hashdb/retro_sql.py), on SQLite and
    PostgreSQL: cut at time boundaries into id ranges that tile the run,
    planned once, marked done; only a failed run resumes."""
    now = datetime.now(UTC)
    ids = [
        store.record_match(
            HistoryRecord(
                f"r{n}", now - timedelta(hours=10 - n), "c", "Match", "image", "allow", "OK"
            )
        )
        for n in range(10)
    ]
    run = store.create_retro_run("manual", "op", None, [1], to_micros(now - timedelta(hours=11)))
    run = store.claim_retro_run(60)
    settings = DaskSettings(partition_seconds=3 * 3600)
    parts = plan_partitions(store, run, settings, now=now)
    # from the first record (10 h ago) in 3-hour steps: records 0-2, 3-5, 6-8, 9
    assert [(p.after_id, p.upto_id) for p in parts] == [
        (run.checkpoint, ids[2]),
        (ids[2], ids[5]),
        (ids[5], ids[8]),
        (ids[8], ids[9]),
    ]
    assert plan_partitions(store, run, DaskSettings(partition_seconds=60), now=now) == parts
    assert store.finish_retro_partition(run.id, 1, 3, 2, owner=run.lease_owner)
    assert [(p.done, p.scanned, p.hits) for p in store.retro_partitions(run.id)][:2] == [
        (False, 0, 0),
        (True, 3, 2),
    ]
    assert not store.resume_retro_run(run.id)  # running, not failed
    assert store.finish_retro_run(run.id, "failed", "scheduler gone", owner=run.lease_owner)
    assert store.resume_retro_run(run.id)
    resumed = store.get_retro_run(run.id)
    assert (resumed.state, resumed.error, resumed.finished_at) == ("queued", "", None)
