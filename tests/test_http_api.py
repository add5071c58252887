"""The HTTP/JSON API over real HTTP against a real `hashsvc serve
--http-listen` process: uploads of every media kind (a large video streamed),
the same JSON as `hashsvc match --json`, sets, entries, bulk-load jobs,
export, review, history and tokens, and bad input of every kind answered as
a JSON error with its status, never a 500."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest
from openapi_spec_validator import validate

from hashsvc.http.app import ENDPOINTS
from hashsvc.http.routes_match import INLINE_BODY_BYTES
from hashsvc.matching.policy import DEFAULT_THRESHOLDS
from hashsvc_testing import audio_media, pdf_media, video_media
from hashsvc_testing.http_server import REPO, HttpServerProcess
from hashsvc_testing.image_media import encode, photo, reencoded

# Small limits, so that "too large" is cheap to reach.
LIMITS = """
max_message_bytes = 4194304
max_upload_bytes = 67108864
spool_max_bytes = 268435456
"""


@pytest.fixture(scope="module")
def server(module_store_url, tmp_path_factory):
    """One server per store (SQLite, PostgreSQL) for the module; stopped at its end."""
    log = tmp_path_factory.mktemp("http") / "server.log"
    proc = HttpServerProcess(module_store_url, log, LIMITS)
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def sqlite_server(tmp_path_factory):
    """The media and bad-input tests: one store is enough (the main path runs on both)."""
    d = tmp_path_factory.mktemp("http-sqlite")
    proc = HttpServerProcess(f"sqlite:///{d}/db.sqlite", d / "server.log", LIMITS)
    yield proc
    proc.stop()


def _error(resp, status: int, code: str) -> dict:
    assert resp.status_code == status, (resp.status_code, resp.text[:500])
    body = resp.json()
    assert body["error"]["code"] == code, body
    assert body["error"]["message"]
    return body["error"]


def _cli_json_lines(server, role: str, *command: str) -> list[dict]:
    """`hashsvc COMMAND --json` against the server's gRPC API, one object a line."""
    out = subprocess.run(
        [sys.executable, "-m", "hashsvc", *command, "--json", "--server", server.grpc_address],
        cwd=REPO, env={**os.environ, "HASHSVC_TOKEN": server.tokens[role], "PYTHONPATH": str(REPO)},
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    return [json.loads(line) for line in out.stdout.splitlines()]


def _cli_match_json(server, token: str, path) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "hashsvc", "match", "--json", "--server", server.grpc_address,
         str(path)],
        cwd=REPO, env={**os.environ, "HASHSVC_TOKEN": token, "PYTHONPATH": str(REPO)},
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    return json.loads(out.stdout.splitlines()[0])


# -- the main path, on both stores


def test_operator_adds_pipeline_matches_auditor_finds(server, tmp_path):
    known = encode(photo(3))
    with server.client("operator") as op:
        created = op.post(
            "/v1/sets",
            json={"name": "amaq", "labels": {"group": "ISIS"},
                  "thresholds": {"pdq": {"block": 31, "review": 56}}},
        )  # fmt: skip
        assert created.status_code == 201, created.text
        assert created.json()["thresholds"] == {"pdq": {"block": 31, "review": 56}}
        added = op.post(
            "/v1/sets/amaq/entries",
            files={"file": ("known-3.jpg", known, "image/jpeg")},
            data={"label": "source=analyst-7"},
        )
        assert added.status_code == 201, added.text
        entry = added.json()
        assert entry["entry"] == "known-3.jpg" and entry["media_type"] == "image"
        assert entry["labels"] == {"source": "analyst-7"}
        assert op.get("/v1/sets/amaq").json()["entries"] == 1
    upload = tmp_path / "upload.jpg"
    upload.write_bytes(reencoded(photo(3)))
    with server.client("matcher") as matcher:
        resp = matcher.post(
            "/v1/match", content=upload.read_bytes(),
            params={"client_ref": "post-42", "filename": str(upload)},
        )  # fmt: skip
        assert resp.status_code == 200, resp.text
        answer = resp.json()
    assert answer["decision"] == "block"
    assert [m["entry"] for m in answer["matches"]] == ["known-3.jpg"]
    # the same object as `hashsvc match --json` over gRPC, but for its request id
    cli = _cli_match_json(server, server.tokens["matcher"], upload)
    assert {**answer, "request_id": ""} == {**cli, "request_id": ""}
    with server.client("auditor") as auditor:
        page = auditor.get("/v1/history", params={"decision": "block", "set": "amaq"}).json()
        mine = [r for r in page["records"] if r["request_id"] == answer["request_id"]]
        assert mine and mine[0]["client_ref"] == "post-42" and mine[0]["rpc"] == "Match"
        assert mine[0]["matches"] == answer["matches"]
        verified = auditor.get("/v1/history/verify").json()
        assert verified["intact"] is True and verified["records_checked"] >= 2
        stats = auditor.get("/v1/stats").json()
        assert stats["entries"] >= 1 and stats["indexed_signals"]["pdq"] >= 1


def test_hash_match_and_paging(server):
    value = "f" * 64
    with server.client("operator") as op:
        op.post("/v1/sets", json={"name": "hashes"})
        for k in range(3):
            resp = op.post(
                "/v1/sets/hashes/entries",
                json={"name": f"h{k}", "signal": {"signal_type": "md5", "value": f"{k:032x}"}},
            )
            assert resp.status_code == 201, resp.text
        first = op.get("/v1/sets/hashes/entries", params={"page_size": 2}).json()
        assert [e["entry"] for e in first["entries"]] == ["h0", "h1"] and first["next_page_token"]
        rest = op.get(
            "/v1/sets/hashes/entries",
            params={"page_size": 2, "page_token": first["next_page_token"]},
        ).json()
        assert [e["entry"] for e in rest["entries"]] == ["h2"] and rest["next_page_token"] == ""
        found = op.post(
            "/v1/sets/hashes/find", json={"signal": {"signal_type": "md5", "value": f"{1:032x}"}}
        ).json()
        assert [e["entry"] for e in found["entries"]] == ["h1"]
        assert op.delete("/v1/sets/hashes/entries/h2").json()["entry"] == "h2"
        _error(op.get("/v1/sets/hashes/entries/h2"), 404, "NOT_FOUND")
    with server.client("matcher") as matcher:
        exact = matcher.post(
            "/v1/match", json={"signal": {"signal_type": "md5", "value": f"{0:032x}"}}
        ).json()
        assert exact["decision"] == "block" and exact["file"] == f"md5:{0:032x}"
        unrelated = matcher.post(
            "/v1/match", json={"signal": {"signal_type": "pdq", "value": value}}
        ).json()
        assert unrelated["decision"] == "allow" and unrelated["matches"] == []


# -- media of every kind, one store


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    d = tmp_path_factory.mktemp("media")
    video = video_media.slideshow(d / "known.mp4", [0, 1, 2], 3.0)
    speech = audio_media.speech_track(1, 20.0, "ar")
    pub = pdf_media.publication(3, "ar")
    # a large video: noise compresses badly, so a few seconds are megabytes
    rng = np.random.default_rng(7)
    frames = [rng.integers(0, 255, (360, 640, 3), dtype=np.uint8) for _ in range(75)]
    big = video_media.write_video(d / "big.mp4", [*video_media.slideshow_frames([0, 1, 2], 3.0),
                                                  *frames])  # fmt: skip
    return {
        "video": video.read_bytes(),
        "video_mirrored": video_media.transformed(video, "mirrored", d).read_bytes(),
        "big_video": big.read_bytes(),
        "speech": audio_media.master(speech),
        "speech_64k": audio_media.encode(speech, "mp3", "-b:a", "64k"),
        "pdf": pdf_media.typeset(pub),
        "pdf_retypeset": pdf_media.retypeset(pub),
    }


@pytest.fixture(scope="module")
def media_set(sqlite_server, media):
    with sqlite_server.client("operator") as op:
        assert op.post("/v1/sets", json={"name": "media"}).status_code == 201
        for name in ("video", "speech", "pdf"):
            resp = op.post("/v1/sets/media/entries", params={"name": name}, content=media[name])
            assert resp.status_code == 201, resp.text
            assert resp.json()["media_type"] == {"speech": "audio"}.get(name, name)
    return sqlite_server


@pytest.mark.parametrize(
    ("query", "entry", "unit"),
    [("video_mirrored", "video", "seconds"), ("speech_64k", "speech", "seconds"),
     ("pdf_retypeset", "pdf", "pages")],
)  # fmt: skip
def test_every_media_kind_matches_over_multipart(media_set, media, query, entry, unit):
    with media_set.client("matcher") as matcher:
        resp = matcher.post(
            "/v1/match",
            files={"file": (f"{query}.bin", media[query], "application/octet-stream")},
            data={"client_ref": f"ref-{query}", "sets": "media"},
        )
    assert resp.status_code == 200, resp.text
    answer = resp.json()
    assert answer["file"] == f"{query}.bin"
    found = [m for m in answer["matches"] if m["entry"] == entry]
    assert found and found[0]["unit"] == unit and found[0]["segments"], answer
    assert answer["decision"] == "block"


def test_large_video_is_streamed_to_the_spool(media_set, media):
    data = media["big_video"]
    assert len(data) > INLINE_BODY_BYTES

    def chunks():  # no Content-Length: chunked transfer
        for start in range(0, len(data), 256 * 1024):
            yield data[start : start + 256 * 1024]

    with media_set.client("matcher") as matcher:
        resp = matcher.post("/v1/match", content=chunks(), params={"client_ref": "big"})
    assert resp.status_code == 200, resp.text
    answer = resp.json()
    assert any(m["entry"] == "video" for m in answer["matches"]), answer
    with media_set.client("auditor") as auditor:
        records = auditor.get("/v1/history", params={"page_size": 1000}).json()["records"]
    record = next(r for r in records if r["request_id"] == answer["request_id"])
    assert record["rpc"] == "MatchUpload" and record["media_bytes"] == len(data)


# -- bulk loads, export, review, tokens


def test_bulk_load_job_and_export(sqlite_server):
    rows = (
        "signal_type,signal_value,entry\n"
        + "".join(f"md5,{k:032x},row-{k}\n" for k in range(50))
        + "md5,not-hex,bad-row\n"
    )
    with sqlite_server.client("operator") as op:
        op.post("/v1/sets", json={"name": "bulk"})
        started = op.post(
            "/v1/sets/bulk/load", files={"file": ("list.csv", rows.encode(), "text/csv")}
        )
        assert started.status_code == 202, started.text
        job_id = started.json()["job_id"]
        deadline = time.monotonic() + 60
        while (job := op.get(f"/v1/jobs/{job_id}").json())["state"] == "running":
            assert time.monotonic() < deadline, job
            time.sleep(0.1)
        assert job["state"] == "done", job
        assert job["result"]["added"] == 50 and job["result"]["rejected_count"] == 1
        assert job["result"]["rejected"][0]["line"] == 52
        exported = op.get("/v1/sets/bulk/export")
        assert exported.status_code == 200
        lines = [json.loads(line) for line in exported.text.splitlines()]
        assert len(lines) == 50 and {row["entry"] for row in lines} == {
            f"row-{k}" for k in range(50)
        }
        # a partner's file that is not text: the job fails with its reason
        binary = op.post("/v1/sets/bulk/load", content=b"md5,\xff\xfe\x00\x01" * 100)
        assert binary.status_code == 202, binary.text
        deadline = time.monotonic() + 60
        bad_id = binary.json()["job_id"]
        while (bad := op.get(f"/v1/jobs/{bad_id}").json())["state"] == "running":
            assert time.monotonic() < deadline, bad
            time.sleep(0.1)
        assert bad["state"] == "failed" and bad["error"]["code"] == "INVALID_ARGUMENT", bad
    # another token (even of the same role) does not see the job
    with sqlite_server.client("admin") as admin:
        other = admin.post("/v1/tokens", json={"role": "operator", "name": "other-op"}).json()
    with sqlite_server.client(token=other["token"]) as c:
        _error(c.get(f"/v1/jobs/{job_id}"), 404, "NOT_FOUND")


def test_a_clean_labelled_file_loads_with_its_names_and_labels(sqlite_server):
    """A hash list whose every row is good goes the packed path: its entry
    names and labels are loaded with it (they were once dropped over HTTP:
    every row named after its hash, no labels), strict or not."""
    rows = "signal_type,signal_value,entry,labels\n" + "".join(
        f"md5,{k:032x},poster-{k},group=ISIS;source=feed-{k % 2}\n" for k in range(40)
    )
    with sqlite_server.client("operator") as op:
        for set_name, params in (("named", {}), ("named-strict", {"strict": "true"})):
            op.post("/v1/sets", json={"name": set_name})
            started = op.post(
                f"/v1/sets/{set_name}/load",
                params=params,
                files={"file": ("list.csv", rows.encode(), "text/csv")},
            )
            assert started.status_code == 202, started.text
            job_id = started.json()["job_id"]
            deadline = time.monotonic() + 60
            while (job := op.get(f"/v1/jobs/{job_id}").json())["state"] == "running":
                assert time.monotonic() < deadline, job
                time.sleep(0.1)
            assert job["state"] == "done" and job["result"]["added"] == 40, job
            entries = op.get(f"/v1/sets/{set_name}/entries").json()["entries"]
            by_name = {e["entry"]: e["labels"] for e in entries}
            assert len(by_name) == 40
            assert by_name["poster-3"] == {"group": "ISIS", "source": "feed-1"}


def test_review_claim_and_resolve(sqlite_server):
    with sqlite_server.client("operator") as op:
        local = DEFAULT_THRESHOLDS["local_features"]
        # local features review only: by their defaults a copy of a small
        # picture blocks, and this test needs it at review
        review_only = {
            "block": 0,
            "review": 0,
            "block_inliers": 10_000,
            "review_inliers": local.review_inliers,
            "block_coverage": local.block_coverage,
            "review_coverage": local.review_coverage,
        }
        op.post(
            "/v1/sets",
            json={
                "name": "rev",
                "thresholds": {"pdq": {"block": 0, "review": 60}, "local_features": review_only},
            },
        )
        op.post("/v1/sets/rev/entries", params={"name": "p9"}, content=encode(photo(9)))
    with sqlite_server.client("matcher") as matcher:
        answer = matcher.post(
            "/v1/match", content=reencoded(photo(9)), params={"sets": "rev", "client_ref": "r1"}
        ).json()
    assert answer["decision"] == "review", answer
    with sqlite_server.client("reviewer") as reviewer:
        items = reviewer.get("/v1/review/items", params={"set": "rev"}).json()["items"]
        assert [i["request_id"] for i in items] == [answer["request_id"]]
        claimed = reviewer.post("/v1/review/claim", json={"set": "rev"}).json()
        assert claimed["id"] == items[0]["id"] and claimed["claimed_by"]
        resolved = reviewer.post(
            f"/v1/review/items/{claimed['id']}/resolve",
            json={"resolution": "false_positive", "note": "a different picture"},
        )
        assert resolved.status_code == 200, resolved.text
        assert resolved.json()["status"] == "false_positive"
        _error(reviewer.post("/v1/review/claim", json={"set": "rev"}), 404, "NOT_FOUND")


def test_sets_entries_history_and_review_are_the_clis_objects(sqlite_server):
    """One writer for both APIs (hashsvc/base/record_json.py): the HTTP answer
    for a set, an entry, a history record and a review item is the object
    `hashsvc ... --json` prints for it over gRPC (they once differed: the
    HTTP set had no retro_window_seconds)."""
    with sqlite_server.client("operator") as op:
        made = op.post(
            "/v1/sets",
            json={"name": "same", "labels": {"group": "AQ"}, "review_blocks": True},
        )  # fmt: skip
        assert made.status_code == 201, made.text
        assert made.json()["retro_window_seconds"] is None  # the server's window
        window = op.patch("/v1/sets/same", json={"retro_window_seconds": 3600})
        assert window.status_code == 200, window.text
        both = op.patch(
            "/v1/sets/same", json={"retro_window_seconds": 60, "retro_window_default": True}
        )
        _error(both, 400, "INVALID_ARGUMENT")
        op.post("/v1/sets/same/entries", params={"name": "p11"}, content=encode(photo(11)))
        http_set = op.get("/v1/sets/same").json()
        http_entries = op.get("/v1/sets/same/entries").json()["entries"]
    assert http_set["retro_window_seconds"] == 3600
    assert [http_set] == _cli_json_lines(sqlite_server, "operator", "sets", "show", "same")
    cli_entries = _cli_json_lines(sqlite_server, "operator", "entries", "list", "--set", "same")
    assert [e["entry"] for e in http_entries] == ["p11"]
    for key in http_entries[0]:
        assert http_entries[0][key] == cli_entries[0][key], key
    assert http_entries == cli_entries
    with sqlite_server.client("matcher") as matcher:
        answer = matcher.post(
            "/v1/match", content=reencoded(photo(11)), params={"sets": "same", "client_ref": "s1"}
        ).json()
    assert answer["decision"] == "block", answer  # and to review: review_blocks
    with sqlite_server.client("reviewer") as reviewer:
        items = reviewer.get("/v1/review/items", params={"set": "same"}).json()["items"]
    assert [i["request_id"] for i in items] == [answer["request_id"]]
    cli_items = _cli_json_lines(sqlite_server, "reviewer", "review", "list", "--set", "same")
    for key in items[0]:
        assert items[0][key] == cli_items[0][key], key
    assert items == cli_items
    with sqlite_server.client("auditor") as auditor:
        records = auditor.get("/v1/history", params={"set": "same"}).json()["records"]
    cli_records = _cli_json_lines(sqlite_server, "auditor", "history", "--set", "same")
    assert len(records) == len(cli_records) >= 4
    for mine, theirs in zip(records, cli_records, strict=True):
        for key in mine:
            assert mine[key] == theirs[key], (key, mine["rpc"])
    assert records == cli_records


def test_tokens_create_list_revoke(sqlite_server):
    with sqlite_server.client("admin") as admin:
        made = admin.post("/v1/tokens", json={"role": "auditor", "name": "short-lived"})
        assert made.status_code == 201
        token, info = made.json()["token"], made.json()["info"]
        assert info["role"] == "auditor"
        names = [t["name"] for t in admin.get("/v1/tokens").json()["tokens"]]
        assert "short-lived" in names and all("token_hash" not in t for t in names)
        with sqlite_server.client(token=token) as auditor:
            assert auditor.get("/v1/stats").status_code == 200
            assert admin.delete(f"/v1/tokens/{info['id']}").json()["revoked_at"]
            _error(auditor.get("/v1/stats"), 401, "UNAUTHENTICATED")


def test_retro_hunt_and_events_over_http(sqlite_server):
    """An upload let through, then its hash added: a retro-hunt run by hand
    over HTTP finds it, the run is listed, the platform's event is in the
    outbox page, and a prune with a bad time is a JSON error."""
    value = "7" * 32  # no other test of the module loads it (test_bulk_load_job_and_export: 0-49)
    with sqlite_server.client("operator") as op:
        op.post("/v1/sets", json={"name": "retro-http"})
    with sqlite_server.client("matcher") as matcher:
        before = matcher.post(
            "/v1/match",
            json={"signal": {"signal_type": "md5", "value": value}},
            params={"client_ref": "u-retro"},
        ).json()
        assert before["decision"] == "allow"
    with sqlite_server.client("operator") as op:
        added = op.post(
            "/v1/sets/retro-http/entries",
            json={"name": "claim", "signal": {"signal_type": "md5", "value": value}},
        )
        assert added.status_code == 201, added.text
        started = op.post("/v1/retro/runs", json={"set": "retro-http"})
        assert started.status_code == 202, started.text
        run_id = started.json()["id"]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            run = op.get(f"/v1/retro/runs/{run_id}").json()
            if run["state"] not in ("queued", "running"):
                break
            time.sleep(0.2)
        assert run["state"] == "done" and run["set"] == "retro-http", run
        listed = op.get("/v1/retro/runs").json()["runs"]
        # the same objects as `hashsvc retro list --json` (names and values)
        assert listed == _cli_json_lines(sqlite_server, "operator", "retro", "list")
        assert run_id in [r["id"] for r in listed] and run["window_seconds"] > 0
        assert run["created_at"].endswith("Z") and run["finished_at"].endswith("Z")
        _error(op.post("/v1/retro/runs", json={"since_seconds": -1}), 400, "INVALID_ARGUMENT")
        _error(op.get("/v1/retro/runs/999999"), 404, "NOT_FOUND")
        # only a failed run resumes (tests/test_retro_dask.py resumes one), as it was
        resume = {"resume_run_id": run_id}
        _error(op.post("/v1/retro/runs", json=resume), 409, "FAILED_PRECONDITION")
        _error(op.post("/v1/retro/runs", json={**resume, "set": "x"}), 400, "INVALID_ARGUMENT")
        _error(op.post("/v1/retro/runs", json={"resume_run_id": 999999}), 404, "NOT_FOUND")
    with sqlite_server.client("auditor") as auditor:
        events = auditor.get("/v1/events", params={"from": 1}).json()["events"]
        told = [e for e in events if e["type"] == "retro_match"]
        assert [e["request_id"] for e in told] == [before["request_id"]]
        assert told[0]["client_ref"] == "u-retro" and told[0]["decision"] == "block"
    with sqlite_server.client("admin") as admin:
        _error(admin.post("/v1/history/prune", json={"before": "soon"}), 400, "INVALID_ARGUMENT")
        _error(admin.post("/v1/history/prune", json={}), 400, "INVALID_ARGUMENT")
        pruned = admin.post("/v1/history/prune", json={"before": "2000-01-01T00:00:00Z"})
        assert pruned.status_code == 200 and pruned.json() == {"records_pruned": 0}


# -- bad input of every kind


MULTIPART_B = "multipart/form-data; boundary=b"


def _bad_requests(big_json: bytes):
    pdq = {"signal_type": "pdq", "value": "0" * 64}
    return [
        # (role, method, path, request kwargs, status, code)
        (None, "GET", "/v1/sets", {}, 401, "UNAUTHENTICATED"),
        ("wrong", "GET", "/v1/sets", {}, 401, "UNAUTHENTICATED"),
        ("matcher", "GET", "/v1/sets", {}, 403, "PERMISSION_DENIED"),
        ("reviewer", "POST", "/v1/match", {"json": {"signal": pdq}}, 403, "PERMISSION_DENIED"),
        ("operator", "GET", "/v1/tokens", {}, 403, "PERMISSION_DENIED"),
        ("matcher", "GET", "/v1/no-such-route", {}, 404, "NOT_FOUND"),
        ("matcher", "PUT", "/v1/match", {}, 405, "UNIMPLEMENTED"),
        ("matcher", "POST", "/v1/match",
         {"content": b"{not json", "headers": {"content-type": "application/json"}},
         400, "INVALID_ARGUMENT"),
        ("matcher", "POST", "/v1/match", {"json": [1, 2]}, 400, "INVALID_ARGUMENT"),
        ("matcher", "POST", "/v1/match", {"json": {}}, 400, "INVALID_ARGUMENT"),
        ("matcher", "POST", "/v1/match", {"json": {"signal": "pdq"}}, 400, "INVALID_ARGUMENT"),
        ("matcher", "POST", "/v1/match", {"json": {"signal": {**pdq, "value": 5}}},
         400, "INVALID_ARGUMENT"),
        ("matcher", "POST", "/v1/match", {"json": {"signal": {**pdq, "value": "zz"}}},
         400, "INVALID_ARGUMENT"),
        ("matcher", "POST", "/v1/match", {"json": {"signal": {**pdq, "signal_type": "nope"}}},
         400, "INVALID_ARGUMENT"),
        ("matcher", "POST", "/v1/match", {"json": {"signal": {**pdq, "quality": True}}},
         400, "INVALID_ARGUMENT"),
        ("matcher", "POST", "/v1/match", {"json": {"signal": pdq, "sets": "a"}},
         400, "INVALID_ARGUMENT"),
        ("matcher", "POST", "/v1/match", {"json": {"signal": pdq, "sets": ["no-such-set"]}},
         404, "NOT_FOUND"),
        ("matcher", "POST", "/v1/match", {"json": {"signal": pdq, "client_ref": "x" * 1001}},
         400, "INVALID_ARGUMENT"),
        ("matcher", "POST", "/v1/match", {"json": {"signal": pdq, "client_ref": "a\x00b"}},
         400, "INVALID_ARGUMENT"),
        ("matcher", "POST", "/v1/match", {"content": b""}, 400, "INVALID_ARGUMENT"),
        ("matcher", "POST", "/v1/match", {"content": b"\x89PNG\r\n\x1a\n" + b"junk" * 100},
         400, "INVALID_ARGUMENT"),
        ("matcher", "POST", "/v1/match", {"content": b"just some text, no media"},
         400, "INVALID_ARGUMENT"),
        ("matcher", "POST", "/v1/match",
         {"content": big_json, "headers": {"content-type": "application/json"}},
         413, "RESOURCE_EXHAUSTED"),
        ("matcher", "POST", "/v1/match",
         {"content": b"--b\r\nbroken", "headers": {"content-type": MULTIPART_B}},
         400, "INVALID_ARGUMENT"),
        ("matcher", "POST", "/v1/match", {"data": {"client_ref": "x"},
                                          "files": {"other": ("a", b"x")}},
         400, "INVALID_ARGUMENT"),
        ("matcher", "POST", "/v1/match",
         {"content": b"x", "headers": {"content-type": "multipart/form-data"}},
         400, "INVALID_ARGUMENT"),
        ("operator", "POST", "/v1/sets", {"json": {"name": 5}}, 400, "INVALID_ARGUMENT"),
        ("operator", "POST", "/v1/sets", {"json": {"name": "bad name!"}}, 400, "INVALID_ARGUMENT"),
        ("operator", "POST", "/v1/sets", {"json": {"name": "t", "thresholds": {"pdq": 3}}},
         400, "INVALID_ARGUMENT"),
        ("operator", "POST", "/v1/sets",
         {"json": {"name": "t", "thresholds": {"pdq": {"block": 300, "review": 400}}}},
         400, "INVALID_ARGUMENT"),
        ("operator", "POST", "/v1/sets", {"json": {"name": "t", "labels": {"k": 1}}},
         400, "INVALID_ARGUMENT"),
        ("operator", "GET", "/v1/sets/no-such-set", {}, 404, "NOT_FOUND"),
        ("operator", "GET", "/v1/sets/amaq2/entries", {}, 404, "NOT_FOUND"),
        ("operator", "GET", "/v1/sets/media/entries", {"params": {"page_size": -1}},
         400, "INVALID_ARGUMENT"),
        ("operator", "GET", "/v1/sets/media/entries", {"params": {"page_size": "ten"}},
         400, "INVALID_ARGUMENT"),
        ("operator", "GET", "/v1/sets/media/entries", {"params": {"page_size": "--5"}},
         400, "INVALID_ARGUMENT"),
        ("operator", "GET", "/v1/retro/runs/--1", {}, 400, "INVALID_ARGUMENT"),
        ("operator", "GET", "/v1/sets/media/entries", {"params": {"page_token": "1e9"}},
         400, "INVALID_ARGUMENT"),
        ("operator", "GET", "/v1/sets", {"params": {"include_disabled": "maybe"}},
         400, "INVALID_ARGUMENT"),
        ("operator", "POST", "/v1/sets/media/load", {"params": {"format": "xls"}, "content": b"x"},
         400, "INVALID_ARGUMENT"),
        ("operator", "GET", "/v1/sets/media/export", {"params": {"since": "yesterday"}},
         400, "INVALID_ARGUMENT"),
        ("operator", "GET", "/v1/jobs/nope", {}, 404, "NOT_FOUND"),
        ("auditor", "GET", "/v1/history", {"params": {"decision": "maybe"}},
         400, "INVALID_ARGUMENT"),
        ("auditor", "GET", "/v1/history", {"params": {"since": "2026-13-40"}},
         400, "INVALID_ARGUMENT"),
        ("reviewer", "POST", "/v1/review/items/abc/resolve", {"json": {}}, 400, "INVALID_ARGUMENT"),
        ("reviewer", "POST", "/v1/review/items/99999/resolve",
         {"json": {"resolution": "confirmed"}}, 404, "NOT_FOUND"),
        ("reviewer", "POST", "/v1/review/claim", {"json": {"id": "x"}}, 400, "INVALID_ARGUMENT"),
        ("admin", "POST", "/v1/tokens", {"json": {"role": "god"}}, 400, "INVALID_ARGUMENT"),
        ("admin", "POST", "/v1/tokens", {"json": {"role": "matcher", "expires_in_seconds": -5}},
         400, "INVALID_ARGUMENT"),
        ("admin", "DELETE", "/v1/tokens/99999999999999999999999", {}, 400, "INVALID_ARGUMENT"),
    ]  # fmt: skip


def test_bad_input_of_every_kind_is_a_json_error(media_set):
    big_json = b'{"signal": {"signal_type": "pdq", "value": "' + b"0" * (5 << 20) + b'"}}'
    media_set.tokens["wrong"] = "hsv_not-a-token"
    failures = []
    for role, method, path, kwargs, status, code in _bad_requests(big_json):
        with media_set.client(role) as client:
            resp = client.request(method, path, **kwargs)
        try:
            _error(resp, status, code)
        except (AssertionError, ValueError) as exc:
            failures.append((method, path, str(kwargs)[:80], str(exc)[:300]))
    assert not failures, "\n".join(map(str, failures))


def test_oversize_upload_is_413_and_recorded(media_set):
    data = b"\x00" * (64 << 20) + b"more"

    def chunks():
        for start in range(0, len(data), 1 << 20):
            yield data[start : start + (1 << 20)]

    with media_set.client("matcher") as matcher:
        resp = matcher.post("/v1/match", content=chunks(), params={"client_ref": "huge"})
    error = _error(resp, 413, "RESOURCE_EXHAUSTED")
    assert error["limit"] == "max_upload_bytes"
    with media_set.client("auditor") as auditor:
        records = auditor.get("/v1/history", params={"page_size": 1000}).json()["records"]
    refused = [r for r in records if r["client_ref"] == "huge"]
    assert refused and refused[0]["status"] == "RESOURCE_EXHAUSTED"


# -- the description, health


def test_openapi_describes_every_route_and_is_valid(sqlite_server):
    with sqlite_server.client() as anyone:
        spec = anyone.get("/openapi.json").json()
        docs = anyone.get("/docs")
        assert anyone.get("/healthz").status_code == 200
        assert anyone.get("/readyz").json() == {"status": "ready"}
    validate(spec)
    described = {(m.upper(), p) for p, ops in spec["paths"].items() for m in ops}
    routes = {(ep.method, ep.path.replace(":path}", "}")) for ep in ENDPOINTS}
    assert routes <= described
    assert docs.status_code == 200 and "<script" not in docs.text.lower()
    for _, path in routes:
        assert path in docs.text


def test_http_port_in_use_is_one_line_and_exit_1(tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "hashsvc", "serve", "--listen", "127.0.0.1:0",
             "--http-listen", f"127.0.0.1:{port}", "--db", f"sqlite:///{tmp_path}/db.sqlite",
             "--workers", "1"],
            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    assert done.returncode == 1, done.stderr[-2000:]
    assert f"cannot listen on 127.0.0.1:{port} (HTTP API)" in done.stderr
    assert "Traceback" not in done.stderr


def test_http_listen_beyond_loopback_needs_tls(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "hashsvc", "serve", "--http-listen", "0.0.0.0:0",
         "--db", f"sqlite:///{tmp_path}/db.sqlite"],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode != 0
    assert "http_listen = '0.0.0.0:0' is not a loopback address" in done.stderr


def test_failed_authentications_are_limited_per_address_with_the_console(tmp_path):
    """Bad tokens on /v1/* count against the address's failed sign-ins (the
    console's limiter, one budget): past the limit even a good token is
    refused 429 with Retry-After before any lookup, the console's sign-in
    too, unless the token authenticated lately; another address is not held
    back."""
    config = LIMITS + "[console]\nsign_in_failures_per_minute = 3\n"
    proc = HttpServerProcess(f"sqlite:///{tmp_path}/db.sqlite", tmp_path / "server.log", config)
    try:
        with proc.client(token="hs_guess") as guesser:
            for n in range(3):
                # another X-Forwarded-For each time: the socket's address counts
                spoofed = {"X-Forwarded-For": f"203.0.113.{n}"}
                _error(guesser.get("/v1/stats", headers=spoofed), 401, "UNAUTHENTICATED")
            spoofed = {"X-Forwarded-For": "198.51.100.7"}
            _error(guesser.get("/v1/stats", headers=spoofed), 429, "RESOURCE_EXHAUSTED")
        with proc.client("auditor") as right:
            refused = right.get("/v1/stats")
            error = _error(refused, 429, "RESOURCE_EXHAUSTED")
            assert error["limit"] == "console.sign_in_failures_per_minute"
            assert 1 <= int(refused.headers["retry-after"]) <= 60
            assert refused.headers["cache-control"] == "no-store"
            assert right.post("/ui/login").status_code == 429  # the console's, same budget
            assert right.get("/healthz").status_code == 200
        elsewhere = httpx.Client(
            base_url=proc.url,
            headers={"Authorization": f"Bearer {proc.tokens['auditor']}"},
            transport=httpx.HTTPTransport(local_address="127.0.0.2"),
            timeout=30,
        )
        with elsewhere:
            assert elsewhere.get("/v1/stats").status_code == 200
        # that token has authenticated lately: the throttled address lets it
        # through (pipelines behind one NAT keep working); guesses stay refused
        with proc.client("auditor") as right:
            assert right.get("/v1/stats").status_code == 200
        with proc.client(token="hs_guess") as guesser:
            _error(guesser.get("/v1/stats"), 429, "RESOURCE_EXHAUSTED")
    finally:
        proc.stop()
