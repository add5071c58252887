"""`hashsvc add --set NAME DIR`: a whole media archive, every media kind, rerun
to resume; files that are not media skipped, changed files kept apart, the
progress line only for someone watching a terminal."""

from __future__ import annotations

import hashlib
import json
import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest

from hashsvc.client import cli, client, ingest
from hashsvc_testing.image_media import encode, photo
from tests.helpers import popen

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def run(module_harness, monkeypatch, capsys):
    monkeypatch.setenv("HASHSVC_SERVER", module_harness.address)

    def run(*argv, role="operator"):
        monkeypatch.setenv("HASHSVC_TOKEN", module_harness.tokens[role])
        code = cli.main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    return run


def rows(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines()]


def by_status(out: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for row in rows(out):
        key = row["status"] if row["status"] == "added" else row["reason"]
        found.setdefault(key, []).append(row["entry"])
    return {k: sorted(v) for k, v in found.items()}


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    """One small file of each media kind, a copy, and what else an archive holds."""
    from hashsvc_testing import audio_media, pdf_media, video_media

    root = tmp_path_factory.mktemp("archive")
    (root / "img").mkdir()
    (root / "av").mkdir()
    (root / "img" / "poster.jpg").write_bytes(encode(photo(1)))
    (root / "img" / "copy of poster.jpg").write_bytes(encode(photo(1)))
    video_media.slideshow(root / "av" / "release.mp4", [0, 1], 1.0, size=(160, 90), fps=10)
    pcm = audio_media.tones(1, 8) + audio_media.noise(2, 8, 0.2)
    (root / "av" / "nasheed.mp3").write_bytes(audio_media.encode(pcm, "mp3"))
    (root / "magazine.pdf").write_bytes(pdf_media.typeset(pdf_media.publication(3, "en", 2)))
    (root / "notes.txt").write_text("where these came from\n")
    (root / "img" / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0" + bytes(60))
    (root / "empty.jpg").write_bytes(b"")
    return root


def test_every_media_kind_is_added_and_a_rerun_adds_nothing(run, archive, monkeypatch):
    # the larger files (video, PDF) go through the streaming upload
    monkeypatch.setattr(client, "STREAM_ABOVE_BYTES", 30_000)
    run("sets", "create", "kinds")
    code, out, err = run("add", "--set", "kinds", "--json", str(archive))
    assert code == 0, err
    found = by_status(out)
    added = {r["entry"]: r["media_type"] for r in rows(out) if r["status"] == "added"}
    assert sorted(added.values()) == ["audio", "image", "pdf", "video"]
    assert {added["av/release.mp4"], added["av/nasheed.mp3"]} == {"video", "audio"}
    assert found["not_media"] == ["empty.jpg", "img/Thumbs.db", "notes.txt"]
    # the two copies of the poster: one entry, the other skipped by its bytes
    assert len([n for n in added if n.endswith("poster.jpg")]) == 1
    assert len(found["duplicate"]) == 1
    duplicate = next(r for r in rows(out) if r.get("reason") == "duplicate")
    assert duplicate["same_as"].endswith("poster.jpg")

    code, out, err = run("add", "--set", "kinds", "--json", str(archive))
    assert code == 0, err
    assert "added" not in by_status(out)
    found = by_status(out)
    assert len(found["already_in_set"]) == 4 and len(found["duplicate"]) == 1
    code, _, err = run("add", "--set", "kinds", str(archive))
    assert code == 0
    assert "0 added, 5 already in the set, 3 not media (skipped), 0 failed" in err
    assert "not media: " in err and "notes.txt" in err

    code, out, _ = run("match", "--json", str(archive / "av" / "release.mp4"), role="matcher")
    assert json.loads(out)["matches"][0]["entry"] == "av/release.mp4"


def test_a_changed_file_is_added_under_a_new_name_and_the_old_entry_kept(run, tmp_path):
    archive = tmp_path / "archive"
    archive.mkdir()
    (archive / "poster.jpg").write_bytes(encode(photo(2)))
    (archive / "other.jpg").write_bytes(encode(photo(3)))
    run("sets", "create", "changed")
    code, _, err = run("add", "--set", "changed", str(archive))
    assert code == 0, err

    changed = encode(photo(5))
    (tmp_path / "old.jpg").write_bytes((archive / "poster.jpg").read_bytes())
    (archive / "poster.jpg").write_bytes(changed)
    code, out, err = run("add", "--set", "changed", str(archive))
    new_name = f"poster.jpg@{hashlib.sha256(changed).hexdigest()[:12]}"
    assert code == 0, err
    assert "poster.jpg in changed holds other content" in err and new_name in err
    assert f"added {new_name} to changed" in out
    assert "1 added (1 as NAME@SHA256: their name held other content)" in err

    for path, entry in ((tmp_path / "old.jpg", "poster.jpg"), (archive / "poster.jpg", new_name)):
        code, out, _ = run("match", "--json", "--set", "changed", str(path), role="matcher")
        assert json.loads(out)["matches"][0]["entry"] == entry

    code, out, err = run("add", "--set", "changed", "--json", str(archive))
    assert code == 0, err
    assert by_status(out) == {"already_in_set": ["other.jpg", "poster.jpg"]}


def test_a_changed_file_json_row_names_the_taken_name(run, tmp_path):
    archive = tmp_path / "a"
    archive.mkdir()
    (archive / "x.jpg").write_bytes(encode(photo(6)))
    run("sets", "create", "changed-json")
    run("add", "--set", "changed-json", str(archive))
    (archive / "x.jpg").write_bytes(encode(photo(7)))
    code, out, err = run("add", "--set", "changed-json", "--json", str(archive))
    assert code == 0, err
    (row,) = rows(out)
    assert row["status"] == "added" and row["name_in_use"] == "x.jpg"
    assert row["entry"].startswith("x.jpg@") and row["media_type"] == "image"


def test_a_named_file_that_is_not_media_is_still_an_error(run, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("not a picture\n")
    run("sets", "create", "named")
    code, out, err = run("add", "--set", "named", "--json", str(notes))
    assert code == 1
    assert rows(out)[0]["error"]["code"] == "INVALID_ARGUMENT"
    assert "not a media file" in err and "notes.txt" in err


def test_uploads_in_flight_default_to_one_per_core(run, tmp_path, monkeypatch):
    seen: list[int] = []
    real = ingest.run_parallel

    def spy(items, work, report, workers, progress):
        seen.append(workers)
        return real(items, work, report, workers, progress)

    monkeypatch.setattr(ingest, "run_parallel", spy)
    monkeypatch.setattr(os, "cpu_count", lambda: 7)
    (tmp_path / "x.jpg").write_bytes(encode(photo(8)))
    run("sets", "create", "cores")
    run("add", "--set", "cores", str(tmp_path))
    run("add", "--set", "cores", "--parallel", "2", str(tmp_path))
    assert seen == [7, 2]
    code, _, err = run("add", "--set", "cores", "--parallel", "0", str(tmp_path))
    assert code == 2 and "--parallel" in err


def test_help_says_what_bounds_the_parallel_hashing(capsys):
    with pytest.raises(SystemExit):
        cli.main(["add", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "one per core of this machine" in text and "worker processes" in text


def _cli_env(module_harness) -> dict[str, str]:
    return {
        **os.environ,
        "HASHSVC_SERVER": module_harness.address,
        "HASHSVC_TOKEN": module_harness.tokens["operator"],
    }


def _images(root: Path, count: int, first: int) -> Path:
    root.mkdir()
    for i in range(count):
        (root / f"{i}.jpg").write_bytes(encode(photo(first + i)))
    (root / "readme.txt").write_text("x")
    return root


def test_no_progress_line_when_stderr_is_not_a_terminal(module_harness, run, tmp_path):
    archive = _images(tmp_path / "piped", 3, 20)
    run("sets", "create", "piped")
    proc = subprocess.run(
        [sys.executable, "-m", "hashsvc", "add", "--set", "piped", str(archive)],
        env=_cli_env(module_harness),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "ETA" not in proc.stderr and "\r" not in proc.stderr
    assert "3 added, 0 already in the set, 1 not media (skipped), 0 failed" in proc.stderr


def _on_a_terminal(module_harness, *argv: str) -> tuple[int, str]:
    """Runs the CLI with stderr on a pseudo-terminal; (exit code, what it showed)."""
    controller, terminal = pty.openpty()
    proc = popen(
        [sys.executable, "-m", "hashsvc", *argv],
        env=_cli_env(module_harness),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=terminal,
    )
    os.close(terminal)
    shown = b""
    while True:
        try:
            chunk = os.read(controller, 4096)
        except OSError:  # the other end closed: the CLI has exited
            break
        if not chunk:
            break
        shown += chunk
    os.close(controller)
    return proc.wait(timeout=120), shown.decode(errors="replace")


def test_progress_line_on_a_terminal_unless_quiet(module_harness, run, tmp_path):
    run("sets", "create", "tty")
    run("sets", "create", "tty-quiet")
    code, shown = _on_a_terminal(
        module_harness, "add", "--set", "tty", str(_images(tmp_path / "a", 3, 30))
    )
    assert code == 0, shown
    assert "3/4 files" in shown or "4/4 files" in shown
    assert "/s" in shown and "ETA" in shown
    code, shown = _on_a_terminal(
        module_harness, "add", "--set", "tty-quiet", "--quiet", str(_images(tmp_path / "b", 3, 30))
    )
    assert code == 0, shown
    assert "ETA" not in shown and "files " not in shown
    assert "3 added" in shown
