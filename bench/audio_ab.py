"""Audio Match cost, an older commit's code against this checkout's: the 3-minute
MP3s of bench/audio.py (one part; two parts: music, then speech), alternated.

    .venv/bin/python bench/audio_ab.py --old main --known 10000 --rounds 9
    .venv/bin/python bench/audio_ab.py --old 7d92448 --known 100000

The machine is shared, so each figure is CPU time (time.process_time: every
thread of the process, so a library's spinning helper threads count), and the
two sides run in turns in one process, the order flipped every round, over one
index: a load that comes and goes falls on both. The old side is the commit's
hashsvc package (git archive into a temporary directory) imported under its own
modules; both sides search with this checkout's search_sounds and AudioIndex,
so the A/B is fair only while the search is the same code on both (the script
says so when it is not). Each round times, per side and upload: the plain
fingerprint and its search ("plain"), the fingerprint with its shifted views
and the search of all ("shifted"), and the views alone ("views": shifted
fingerprint minus plain fingerprint, searches left out). Medians of the
rounds; ratio = median shifted / median plain.
"""

from __future__ import annotations

import argparse
import importlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import audio as bench_audio  # noqa: E402  (bench/audio.py: its uploads and filler)
import numpy as np  # noqa: E402

from hashsvc.index.audio import AudioIndex  # noqa: E402
from hashsvc.matching.matcher import search_sounds  # noqa: E402
from hashsvc.media import audio as new_audio  # noqa: E402

SEARCH_FILES = ("hashsvc/index/audio.py", "hashsvc/matching/matcher.py")


def old_package(commit: str, into: str) -> Path:
    """The commit's hashsvc package, extracted under into/old."""
    root = Path(into) / "old"
    root.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", commit, "hashsvc"], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(root)], input=archive, check=True)
    # generated protos are not committed: the checkout's serve both sides
    for generated in (REPO / "hashsvc" / "v1").glob("*_pb2*.py*"):
        (root / "hashsvc" / "v1" / generated.name).write_bytes(generated.read_bytes())
    return root


def import_old(root: Path, name: str):
    """Module `name` of the package under root, imported beside this
    checkout's: its hashsvc modules are swapped out of sys.modules while it
    loads, and back in after (the old functions keep their own globals)."""
    mine = {k: v for k, v in sys.modules.items() if k == "hashsvc" or k.startswith("hashsvc.")}
    for k in mine:
        del sys.modules[k]
    sys.path.insert(0, str(root))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(root))
        for k in [k for k in sys.modules if k == "hashsvc" or k.startswith("hashsvc.")]:
            del sys.modules[k]
        sys.modules.update(mine)


def same_search(commit: str) -> bool:
    """Whether the search code is the same in the commit and this checkout."""
    diff = subprocess.run(
        ["git", "-C", str(REPO), "diff", "--quiet", commit, "--", *SEARCH_FILES], check=False
    )
    return diff.returncode == 0


def build_index(n_known: int) -> AudioIndex:
    """n_known synthetic tracks of 3 minutes (bench/audio.py's filler)."""
    index = AudioIndex()
    rng = np.random.default_rng(0)
    words_per_track = int(180 / new_audio.SECONDS_PER_WORD)
    for chunk in range(0, n_known, 5000):
        block = bench_audio.filler_words(rng, min(5000, n_known - chunk), words_per_track)
        index.add_many([(1_000_000 + chunk + i, row) for i, row in enumerate(block)])
    return index


def one_round(module, index: AudioIndex, mp3: bytes) -> tuple[float, float, float]:
    """(plain, shifted, views) CPU seconds of one side on one upload."""
    limits = bench_audio.SHIFT_LIMITS
    max_ber = bench_audio.CHROMAPRINT_LIMITS.review_distance / 100
    started = time.process_time()
    plain_fp = module.fingerprint_audio(mp3, limits, shifted_views=False)
    plain_fingerprinted = time.process_time()
    search_sounds(index, plain_fp.query_signals(), max_ber)
    plain_done = time.process_time()
    shifted_fp = module.fingerprint_audio(mp3, limits, shifted_views=True)
    shifted_fingerprinted = time.process_time()
    search_sounds(index, shifted_fp.query_signals(), max_ber)
    shifted_done = time.process_time()
    plain = plain_done - started
    shifted = shifted_done - plain_done
    views = (shifted_fingerprinted - plain_done) - (plain_fingerprinted - started)
    return plain, shifted, views


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--old", default="main", help="the commit to compare against")
    parser.add_argument("--known", type=int, default=10_000, help="known tracks in the index")
    parser.add_argument("--rounds", type=int, default=9, help="alternated rounds (>= 7)")
    args = parser.parse_args()
    with open("/proc/loadavg") as f:
        print(f"load average at start: {' '.join(f.read().split()[:3])}", flush=True)
    if not same_search(args.old):
        print(f"NOTE: {', '.join(SEARCH_FILES)} differ from {args.old}: both sides search with")
        print("this checkout's code, so the search's share of the cost is not compared")
    with tempfile.TemporaryDirectory() as tmp:
        old_root = old_package(args.old, tmp)
        sides = {"old": import_old(old_root, "hashsvc.media.audio"), "new": new_audio}
        index = build_index(args.known)
        print(f"{len(index)} known tracks", flush=True)
        uploads = {
            "one part": bench_audio.three_minutes(False),
            "two parts": bench_audio.three_minutes(True),
        }
        for module in sides.values():  # compile (or load) numba code, warm caches
            for mp3 in uploads.values():
                one_round(module, index, mp3)
        costs = {(side, part): [] for side in sides for part in uploads}
        for rnd in range(args.rounds):
            order = list(sides) if rnd % 2 == 0 else list(sides)[::-1]
            for part, mp3 in uploads.items():
                for side in order:
                    costs[side, part].append(one_round(sides[side], index, mp3))
        with open("/proc/loadavg") as f:
            print(f"load average at end: {' '.join(f.read().split()[:3])}")
    print(f"CPU ms, medians of {args.rounds} alternated rounds, {len(index)} known tracks:")
    for part in uploads:
        for side in sides:
            plain, shifted, views = (
                statistics.median(c[i] for c in costs[side, part]) * 1000 for i in range(3)
            )
            print(
                f"  {part:9s} {side}: plain {plain:5.0f}  shifted {shifted:5.0f}"
                f"  views {views:5.0f}  ratio {shifted / plain:.2f}"
            )


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
