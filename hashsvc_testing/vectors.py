"""Where the reference vectors are: ../shared/vectors beside the repository
(public test images, videos, audio and expected hashes from Meta's and
AcoustID's projects, read in place, never copied into the repo), or the folder
named by HASHSVC_TEST_VECTORS.

Tests that read them call `vector(...)` (or `require()`) when they run, never at
import: without the folder those tests fail with one line naming it, and every
other test still runs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

VECTORS = Path(
    os.environ.get("HASHSVC_TEST_VECTORS")
    or Path(__file__).resolve().parents[2] / "shared" / "vectors"
)


def present() -> bool:
    return VECTORS.is_dir()


def require() -> Path:
    """The vectors folder; a test failure naming it when it is not there."""
    if not present():
        pytest.fail(
            f"../shared/vectors not found at {VECTORS}: the tests that read reference"
            " media need it beside the repository (or HASHSVC_TEST_VECTORS=DIR; README: Two"
            " commands)",
            pytrace=False,
        )
    return VECTORS


def vector(*parts: str) -> Path:
    """A file or folder inside the vectors (checked to be there)."""
    return require().joinpath(*parts)
