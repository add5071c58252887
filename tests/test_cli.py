"""The CLI as scripts use it: commands, --json fields, exit codes, stdin."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from hashdb import HistoryFilter
from hashsvc.client import cli, client
from hashsvc.client.commands import history, views
from hashsvc_testing.image_media import encode, mirrored, photo, reencoded
from tests.helpers import popen


@pytest.fixture
def run(module_harness, monkeypatch, capsys):
    monkeypatch.setenv("HASHSVC_SERVER", module_harness.address)

    def run(*argv, role="admin", stdin: bytes | None = None):
        monkeypatch.setenv("HASHSVC_TOKEN", module_harness.tokens[role])
        if stdin is not None:
            monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin)))
        code = cli.main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    return run


def test_operator_and_pipeline_workflow(run, tmp_path):
    known = tmp_path / "amaq-0042.jpg"
    known.write_bytes(encode(photo(2)))
    copy = tmp_path / "upload.jpg"
    copy.write_bytes(reencoded(photo(2)))
    flipped = tmp_path / "flipped.png"
    flipped.write_bytes(encode(mirrored(photo(2)), "PNG"))
    other = tmp_path / "holiday.jpg"
    other.write_bytes(encode(photo(9)))

    code, out, _ = run(
        "sets", "create", "isis", "--label", "group=ISIS", "--label", "outlet=Amaq",
        "--block-threshold", "31", "--review-threshold", "50", role="operator",
    )  # fmt: skip
    assert code == 0 and "isis" in out
    code, out, _ = run("add", "--set", "isis", "--label", "source=a7", str(known), role="operator")
    assert code == 0 and "amaq-0042.jpg" in out

    code, out, _ = run("match", "--json", str(copy), str(flipped), str(other), role="matcher")
    assert code == 0
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["file"] for r in rows] == [str(copy), str(flipped), str(other)]
    assert [r["decision"] for r in rows] == ["block", "block", "allow"]
    hit = rows[0]["matches"][0]
    assert set(hit) >= {"set", "entry", "signal_type", "distance", "labels"}
    assert (hit["set"], hit["entry"], hit["signal_type"]) == ("isis", "amaq-0042.jpg", "pdq")
    assert hit["labels"] == {"group": "ISIS", "outlet": "Amaq", "source": "a7"}
    assert rows[2]["matches"] == []

    code, out, _ = run("match", "--json", "-", role="matcher", stdin=copy.read_bytes())
    assert code == 0 and json.loads(out)["decision"] == "block"

    code, out, _ = run("sets", "list", "--json", role="operator")
    assert json.loads(out.splitlines()[0])["entries"] == 1

    code, out, _ = run("remove", "--set", "isis", "amaq-0042.jpg", role="operator")
    assert code == 0
    code, out, _ = run("match", "--json", str(copy), role="matcher")
    assert json.loads(out)["decision"] == "allow"

    code, out, _ = run("history", "--json", "--decision", "block", role="auditor")
    assert code == 0
    blocked = [json.loads(line) for line in out.splitlines()]
    assert len(blocked) == 3 and all(r["decision"] == "block" for r in blocked)
    assert blocked[0]["matches"][0]["entry"] == "amaq-0042.jpg"
    code, out, _ = run("history", "--json", "--since", "1h", "--set", "isis", role="auditor")
    rows = [json.loads(line) for line in out.splitlines()]
    # the set's creation, its entry's addition and removal, and the 3 blocks
    assert [r["rpc"] for r in rows if r["decision"] is None] == [
        "CreateSet",
        "AddEntry",
        "RemoveEntry",
    ]
    assert len([r for r in rows if r["decision"] == "block"]) == 3


def test_exit_codes_and_errors_go_to_stderr(run, tmp_path, module_harness, monkeypatch, capsys):
    code, out, err = run("match", "--json", str(tmp_path / "missing.jpg"), role="matcher")
    assert code == 1 and "missing.jpg" in err
    assert json.loads(out)["error"]["code"] == "LOCAL"

    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    code, out, err = run("match", str(bad), role="matcher")
    assert code == 1 and "INVALID_ARGUMENT" in err and out == ""

    code, _, err = run("sets", "create", "x", role="matcher")
    assert code == 1 and "PERMISSION_DENIED" in err

    code, _, err = run("add", "--set", "nope", str(bad), role="operator")
    assert code == 1 and "NOT_FOUND" in err

    code, _, err = run("match", role="matcher")
    assert code == 2

    monkeypatch.setenv("HASHSVC_SERVER", "127.0.0.1:1")
    code, _, err = run("stats", role="admin")
    assert code == 3 and "UNAVAILABLE" in err


def test_token_create_on_the_store_and_help(tmp_path):
    db = f"sqlite:///{tmp_path}/tokens.db"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "hashsvc",
            "token",
            "create",
            "--role",
            "operator",
            "--db",
            db,
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    token = done.stdout.strip().splitlines()[-1]
    assert token.startswith("hsv_") and len(token) > 30
    for argv in (["--help"], ["match", "--help"], ["sets", "create", "--help"]):
        helped = subprocess.run(
            [sys.executable, "-m", "hashsvc", *argv], capture_output=True, text=True
        )
        assert helped.returncode == 0 and "usage:" in helped.stdout
    wrong = subprocess.run(
        [
            sys.executable,
            "-m",
            "hashsvc",
            "token",
            "create",
            "--role",
            "root",
            "--db",
            db,
        ],
        capture_output=True,
        text=True,
    )
    assert wrong.returncode == 2 and "invalid choice" in wrong.stderr


def test_history_verify(run, module_harness):
    run("match", "--hash", "md5:" + "0" * 32, role="matcher")
    code, out, _ = run("history", "verify", "--json", role="auditor")
    result = json.loads(out)
    assert code == 0 and result["intact"] and result["records_checked"] >= 1
    assert len(result["head_hash"]) == 64 and result["problems"] == []
    code, out, _ = run("history", "verify", role="auditor")
    assert code == 0 and "intact" in out


def test_history_verify_reports_tampering_with_exit_1(tmp_path, monkeypatch, capsys, make_harness):
    from tests.test_store import _tamper

    db_url = f"sqlite:///{tmp_path}/audit.db"
    h = make_harness(db_url)
    monkeypatch.setenv("HASHSVC_SERVER", h.address)
    monkeypatch.setenv("HASHSVC_TOKEN", h.tokens["matcher"])
    for _ in range(3):
        cli.main(["match", "--hash", "md5:" + "1" * 32])
    edited = h.core.store.query_history(HistoryFilter())[1].id
    _tamper(db_url, f"UPDATE match_history SET decision = 'block' WHERE id = {edited}")
    capsys.readouterr()
    monkeypatch.setenv("HASHSVC_TOKEN", h.tokens["auditor"])
    code = cli.main(["history", "verify"])
    out = capsys.readouterr().out
    assert code == 1 and "TAMPERED" in out and f"record {edited}: record was edited" in out


def test_serve_logs_json_lines(tmp_path):
    import signal
    import socket
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = popen(
        [sys.executable, "-m", "hashsvc", "serve", "--log-json", "--workers", "1",
         "--listen", f"127.0.0.1:{port}", "--db", f"sqlite:///{tmp_path}/j.db"],
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    # Signal only once it serves (a busy machine may take longer than a fixed
    # sleep, and a SIGTERM during start-up is not what this test is about).
    seen: list[str] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        seen.append(line)
        if "listening" in line:
            break
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    lines = [json.loads(line) for line in [*seen, *err.splitlines()] if line.strip()]
    assert proc.returncode == 0
    assert any("listening" in entry["message"] for entry in lines)
    assert all({"time", "level", "logger", "message"} <= set(entry) for entry in lines)


def test_add_directory_in_parallel_names_by_path_and_resumes(run, tmp_path):
    archive = tmp_path / "archive"
    (archive / "2015").mkdir(parents=True)
    (archive / "2016").mkdir()
    for i, sub in enumerate(["2015", "2016"]):
        (archive / sub / "poster.jpg").write_bytes(encode(photo(i)))  # same base name
        (archive / sub / f"extra{i}.png").write_bytes(encode(photo(i + 4), "PNG"))
    (archive / ".DS_Store").write_bytes(b"junk")
    (archive / "2016" / "broken.jpg").write_bytes(b"\xff\xd8\xff truncated")

    code, _, _ = run("sets", "create", "archive", role="operator")
    code, out, err = run("add", "--set", "archive", "--json", str(archive), role="operator")
    rows = [json.loads(line) for line in out.splitlines()]
    assert code == 1  # the broken file
    added = sorted(r["entry"] for r in rows if r.get("status") == "added")
    assert added == ["2015/extra0.png", "2015/poster.jpg", "2016/extra1.png", "2016/poster.jpg"]
    assert [r["error"]["code"] for r in rows if "error" in r] == ["INVALID_ARGUMENT"]
    assert "broken.jpg" in err

    # running it again adds nothing and skips what is there: resumable; a copy
    # of a known file under another name is skipped by its SHA-256
    (archive / "2016" / "broken.jpg").unlink()
    (archive / "2017").mkdir()
    (archive / "2017" / "renamed.jpg").write_bytes((archive / "2015" / "poster.jpg").read_bytes())
    code, out, _ = run("add", "--set", "archive", "--json", str(archive), role="operator")
    rows = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and {r["status"] for r in rows} == {"skipped"} and len(rows) == 5
    code, out, _ = run("match", "--json", str(archive / "2016" / "poster.jpg"), role="matcher")
    assert json.loads(out)["matches"][0]["entry"] == "2016/poster.jpg"


def test_export_writes_the_exchangeable_hashes(run, tmp_path):
    import csv
    import io

    known = tmp_path / "amaq-7.jpg"
    known.write_bytes(encode(photo(8)))
    run("sets", "create", "exported", "--label", "group=AQ", role="operator")
    run("add", "--set", "exported", "--label", "outlet=Sahab", str(known), role="operator")
    code, out, _ = run("export", "--set", "exported", role="operator")
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    # no crops; the picture's local features go out as one blob a variant: a
    # 300 px picture also has them extracted enlarged, which no side can derive
    # again from the hashes
    assert sorted((r["signal_type"], r["variant"]) for r in rows) == [
        ("local_features", "enlarged"),
        ("local_features", "original"),
        ("md5", "original"),
        ("pdq", "original"),
        ("sha256", "original"),
    ]
    pdq = next(r for r in rows if r["signal_type"] == "pdq")
    assert len(pdq["signal_value"]) == 64 and pdq["entry"] == "amaq-7.jpg"
    assert pdq["labels"] == "outlet=Sahab" and int(pdq["quality"]) >= 50
    code, out, _ = run("export", "--set", "exported", "--format", "jsonl", role="operator")
    lines = [json.loads(line) for line in out.splitlines()]
    assert len(lines) == 5 and lines[0]["labels"] == {"outlet": "Sahab"}
    # the exported PDQ finds the entry again
    code, out, _ = run("match", "--json", "--hash", f"pdq:{pdq['signal_value']}", role="matcher")
    assert json.loads(out)["decision"] == "block"


def test_video_add_and_match_stream_and_report_time_ranges(run, tmp_path, monkeypatch):
    """Files over the one-message size go through the streaming RPCs (the
    threshold is lowered here so a small video crosses it)."""
    from hashsvc_testing import video_media

    monkeypatch.setattr(client, "STREAM_ABOVE_BYTES", 10_000)
    known = video_media.slideshow(tmp_path / "release.mp4", [0, 1, 2], 3.3)
    assert known.stat().st_size > 10_000
    clip = video_media.excerpt(known, 2.0, 6.0, tmp_path)
    code, _, err = run("sets", "create", "videos", role="operator")
    assert code == 0, err
    code, out, err = run("add", "--set", "videos", "--json", str(known), role="operator")
    assert code == 0, err
    assert json.loads(out.splitlines()[0])["media_type"] == "video"
    code, out, err = run("match", "--json", "--set", "videos", str(clip), role="matcher")
    assert code == 0, err
    row = json.loads(out)
    assert row["decision"] == "block"
    hit = row["matches"][0]
    assert hit["entry"] == "release.mp4" and hit["unit"] == "seconds"
    segment = hit["segments"][0]
    assert abs(segment["known_start"] - segment["query_start"] - 2.0) <= 1.5
    code, out, _ = run("match", "--set", "videos", str(clip), role="matcher")
    assert "BLOCK" in out and "= known" in out


def test_export_into_a_pipe_closed_early_ends_quietly(tmp_path, make_harness):
    """`hashsvc export ... | head`: no traceback, the exit status of a
    process stopped by SIGPIPE."""
    import os

    from hashsvc.v1 import hashsvc_pb2 as pb

    harness = make_harness(f"sqlite:///{tmp_path}/db.sqlite")
    stubs, metadata = harness.stubs("operator")
    stubs.curation.CreateSet(pb.CreateSetRequest(name="s"), metadata=metadata)
    rows = pb.BulkRows(packed_type="pdq", packed_values=os.urandom(32 * 5_000))
    requests = [
        pb.BulkLoadRequest(header=pb.BulkLoadHeader(set="s")),
        pb.BulkLoadRequest(rows=rows),
    ]
    assert stubs.curation.BulkLoad(iter(requests), metadata=metadata).added == 5_000
    env = {
        **os.environ,
        "HASHSVC_SERVER": harness.address,
        "HASHSVC_TOKEN": harness.tokens["operator"],
    }
    proc = popen(
        [sys.executable, "-m", "hashsvc", "export", "--set", "s"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )  # fmt: skip
    assert proc.stdout.readline().startswith(b"signal_type,")
    proc.stdout.close()  # more than a pipe holds is still to come
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141 and "Traceback" not in err, err


# ------------------------------------------------------- a new user's first hour


def test_server_and_tls_flags_go_before_or_after_the_command(
    run, module_harness, monkeypatch, tmp_path
):
    """`hashsvc --server H:P stats`, as the top-level help says, and after the
    command as before; the flag given after the command wins."""
    monkeypatch.setenv("HASHSVC_SERVER", "127.0.0.1:1")  # nothing listens there
    code, out, err = run("--server", module_harness.address, "stats", role="auditor")
    assert code == 0 and "entries" in out, err
    code, out, err = run("stats", "--server", module_harness.address, role="auditor")
    assert code == 0, err
    code, _, err = run("--server", module_harness.address, "stats", "--server", "127.0.0.1:1")
    assert code == 3 and "UNAVAILABLE" in err
    # --tls-ca before the command is read too: a CA file that is not there
    code, _, err = run(
        "--server", module_harness.address, "--tls-ca", str(tmp_path / "no-ca.pem"), "stats"
    )
    assert code != 0 and "no-ca.pem" in err
    # a server-side command has no use for --server: a usage error, not ignored
    code, _, err = run("--server", module_harness.address, "serve", "--db", "sqlite:///x.db")
    assert code == 2 and "--server" in err


def test_json_flag_goes_before_or_after_the_command(run, module_harness):
    """`hashsvc --json stats` prints what `hashsvc stats --json` prints; a
    command without JSON output refuses it rather than printing text."""
    code, before, err = run("--json", "stats", role="auditor")
    assert code == 0, err
    code, after, err = run("stats", "--json", role="auditor")
    assert code == 0, err
    assert json.loads(before) == json.loads(after) and "entries" in json.loads(before)
    code, out, err = run("--json", "match", "--hash", "md5:" + "2" * 32, role="matcher")
    assert code == 0, err
    row = json.loads(out)
    assert row["file"] == "md5:" + "2" * 32 and row["decision"] == "allow"
    code, out, err = run("--json", "sets", "create", "json-first", role="operator")
    assert code == 0 and json.loads(out)["name"] == "json-first", err
    code, out, err = run(
        "--json", "--server", module_harness.address, "sets", "list", role="operator"
    )
    assert code == 0, err
    assert "json-first" in [json.loads(line)["name"] for line in out.splitlines()]
    for argv in (["export", "--set", "x"], ["token", "revoke", "1"], ["serve"]):
        code, out, err = run("--json", *argv)
        assert code == 2 and "--json is for commands that print JSON" in err and not out


def test_client_commands_start_without_the_server_code():
    """Every `hashsvc` run builds the whole command line first: the decoders
    (PyAV, PyMuPDF, chromaprint), the indexes and the core are for `serve` and
    `token create --db` only (`hashsvc --version` took 0.41 s with them loaded,
    0.14 s without)."""
    script = "import sys, hashsvc.client.cli; print(' '.join(sys.modules))"
    loaded = subprocess.run(
        [sys.executable, "-c", script],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.split()
    server_side = ("hashsvc.media", "hashsvc.index", "hashsvc.matching", "hashsvc.core",
                   "hashsvc.api", "hashdb", "av", "pymupdf", "fitz", "chromaprint", "faiss",
                   "numpy")  # fmt: skip
    assert [m for m in loaded if m.split(".")[0] in server_side or m.startswith(server_side)] == []
    assert "hashsvc.client.commands.match" in loaded


def test_history_text_names_operator_actions_and_what_they_did(run):
    code, _, err = run("sets", "create", "hist-actions", "--label", "group=HTS", role="operator")
    assert code == 0, err
    code, out, err = run("history", role="auditor")
    assert code == 0, err
    assert "media_type_unspecified" not in out
    line = next(ln for ln in out.splitlines() if "hist-actions" in ln)
    assert "CreateSet" in line and "OK" in line and "set=hist-actions" in line


def test_stats_text_is_readable_lines_and_json_on_request(run):
    code, out, err = run("stats", role="auditor")
    assert code == 0, err
    assert "{" not in out and "'" not in out, out
    assert any(ln.startswith("indexed signals:") for ln in out.splitlines()), out
    code, out, err = run("stats", "--json", role="auditor")
    row = json.loads(out)
    assert code == 0 and isinstance(row["indexed_signals"], dict) and "entries" in row


def test_no_token_tells_a_cli_user_to_set_hashsvc_token(run, monkeypatch, capsys):
    monkeypatch.delenv("HASHSVC_TOKEN", raising=False)
    code = cli.main(["stats"])
    _, err = capsys.readouterr()
    assert code == 1
    assert "HASHSVC_TOKEN" in err and "metadata" not in err, err
    assert len(err.strip().splitlines()) == 1
    # a token the server does not know: its reason, and where the token came from
    monkeypatch.setenv("HASHSVC_TOKEN", "hsv_not-a-real-token")
    code = cli.main(["stats"])
    _, err = capsys.readouterr()
    assert code == 1 and "unknown token" in err and "HASHSVC_TOKEN" in err, err


def test_add_a_file_that_is_not_media_fails_naming_it_a_directory_skips_it(run, tmp_path):
    """A file named on the command line was meant to be added: not media is
    an error (exit 1), one line naming it, before anything is sent. In a
    directory walk the same file is skipped and counted (a release folder
    holds notes and checksums beside the media)."""
    code, _, err = run("sets", "create", "not-media", role="operator")
    assert code == 0, err
    notes = tmp_path / "release" / "notes.txt"
    notes.parent.mkdir()
    notes.write_text("readme of a release, not media\n")
    (tmp_path / "release" / "a.jpg").write_bytes(encode(photo(4)))

    code, out, err = run("add", "--set", "not-media", str(notes), role="operator")
    assert code == 1 and out == ""
    assert err.strip().splitlines() == [
        f"hashsvc: {notes}: INVALID_ARGUMENT: not a media file (image, video, audio or PDF):"
        " not added"
    ], err
    code, out, err = run("add", "--set", "not-media", "--json", str(notes), role="operator")
    assert code == 1 and json.loads(out)["error"]["code"] == "INVALID_ARGUMENT"
    code, out, err = run("entries", "list", "--set", "not-media", "--json", role="operator")
    assert out == ""

    code, out, err = run("add", "--set", "not-media", str(notes.parent), role="operator")
    assert code == 0 and "1 added" in err and "1 not media (skipped)" in err, err


def test_history_text_cannot_be_forged_by_a_note_with_newlines():
    """A reviewer's note is free text: a newline in it must not print what
    looks like another record to an auditor reading `hashsvc history`."""
    from google.protobuf.timestamp_pb2 import Timestamp

    from hashsvc.v1 import hashsvc_pb2 as pb

    forged = "ok\n2026-01-01T00:00:00Z\tadmin\tRemoveEntry\tOK\tset=x\x1b[2K\u202e"
    record = pb.HistoryRecord(
        id=7,
        time=Timestamp(seconds=1_700_000_000),
        caller="rev\tiewer",
        rpc="ResolveReview",
        status="OK",
        detail_json=json.dumps({"review_id": 3, "resolution": "confirmed", "note": forged}),
    )
    line = history.history_line(record, views.history_json(record))
    assert "\n" not in line and "\x1b" not in line and "\u202e" not in line
    assert line.count("\t") == 4, line
    assert "ResolveReview\tOK\treview_id=3 resolution=confirmed note=ok\\n2026" in line
    assert "rev\\tiewer" in line
