"""A fresh clone without ../shared/vectors beside it: collection works, the
tests that read reference media fail with one line naming the folder, and the
others run and pass."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MISSING = "../shared/vectors not found at"


def _clone_without_vectors(tmp_path: Path) -> Path:
    """The tests and the testing package (which finds the vectors from where
    it lies) copied into a folder with no ../shared beside it; the code itself
    linked in (generated gRPC modules included)."""
    repo = tmp_path / "repo"
    # bench/: tests/test_bench_transforms.py loads the bench's edits from there.
    # Compiled modules come along (copytree keeps the sources' times, which
    # the compiled files are checked against): rewriting every test module's
    # asserts again took most of the collection's time (12 of 55 s under
    # load); numba's caches stay behind.
    for copied in ("tests", "hashsvc_testing", "bench"):
        shutil.copytree(REPO / copied, repo / copied, ignore=shutil.ignore_patterns("*.nb[ic]"))
    shutil.copy(REPO / "pyproject.toml", repo)
    for package in ("hashsvc", "hashdb", "loaders"):
        (repo / package).symlink_to(REPO / package)
    assert not (tmp_path / "shared").exists()
    return repo


def _pytest(repo: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "HASHSVC_TEST_VECTORS"}
    env["COLUMNS"] = "1000"  # the short summary keeps each failure's message whole
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:xdist", "-p", "no:cacheprovider", *args],
        cwd=repo, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_collection_does_not_crash_without_the_vectors(tmp_path):
    repo = _clone_without_vectors(tmp_path)
    done = _pytest(repo, "--collect-only", "-q", "tests")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "error" not in done.stdout.lower().split("collected")[-1], done.stdout[-3000:]


def test_vector_tests_fail_in_one_line_naming_the_folder_the_others_pass(tmp_path):
    repo = _clone_without_vectors(tmp_path)
    done = _pytest(
        repo, "-q", "-rfE",
        "tests/test_image_vectors.py", "tests/test_video_frames.py", "tests/test_image.py",
        "tests/test_loaders.py", "tests/test_textnorm.py", "tests/test_pdf.py",
    )  # fmt: skip
    out = done.stdout
    assert done.returncode == 1, out[-3000:] + done.stderr[-3000:]
    failed = [ln for ln in out.splitlines() if ln.startswith(("FAILED", "ERROR"))]
    assert failed, out[-3000:]
    want = f"{MISSING} {tmp_path / 'shared' / 'vectors'}"
    for line in failed:
        assert want in line, line
    assert "Traceback" not in out and "ZeroDivisionError" not in out
    assert "FileNotFoundError" not in out
    summary = out.strip().splitlines()[-1]
    assert " passed" in summary, summary  # loaders, text normalisation, PDF limits need none
