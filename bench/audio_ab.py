"""Audio Match cost, an older commit's code against this checkout's: the 3-minute
MP3s of bench/audio.py (one part; two parts: music, then speech), alternated.

    .venv/bin/python bench/audio_ab.py --old 7d92448 --known 10000 --rounds 9
    .venv/bin/python bench/audio_ab.py --old 7d92448 --known 100000

The machine is shared, so each figure is CPU time (time.process_time: every
thread of the process, so a library's helper threads that spin count), and the
two sides take turns round by round, the order flipped every round, so a load
that comes and goes falls on both. Each side is a process of its own (the
commit's hashsvc package from git archive, or this checkout's) with its own
index of the same synthetic known tracks: helper threads one side leaves
spinning cannot bill the other. Each round times, per side and upload, the
plain fingerprint and its search ("plain"), the fingerprint with its shifted
views and the search of all ("shifted"), and the views alone ("views": shifted
fingerprint minus plain fingerprint, searches left out), and how much of
"shifted" other threads than the one that did the work were billed ("other
threads": a library's helpers spinning). Medians of the rounds; ratio =
median shifted / median plain.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
UPLOADS = ("one part", "two parts")


def serve(tree: str, n_known: int, uploads_dir: str) -> None:
    """A side: build the index with `tree`'s hashsvc, then answer each "round"
    line on stdin with one JSON line of (plain, shifted, views) per upload."""
    sys.path[:0] = [tree, str(REPO), str(REPO / "bench")]
    import audio as bench_audio  # bench/audio.py, importing tree's hashsvc
    import numpy as np

    from hashsvc.index.audio import AudioIndex
    from hashsvc.matching.matcher import search_sounds
    from hashsvc.media import audio as media_audio

    assert media_audio.__file__.startswith(tree), media_audio.__file__
    index = AudioIndex()
    rng = np.random.default_rng(0)
    words_per_track = int(180 / media_audio.SECONDS_PER_WORD)
    for chunk in range(0, n_known, 5000):
        block = bench_audio.filler_words(rng, min(5000, n_known - chunk), words_per_track)
        index.add_many([(1_000_000 + chunk + i, row) for i, row in enumerate(block)])
    uploads = [(Path(uploads_dir) / f"{i}.mp3").read_bytes() for i in range(len(UPLOADS))]
    limits = bench_audio.SHIFT_LIMITS
    max_ber = bench_audio.CHROMAPRINT_LIMITS.review_distance / 100

    def one_round(mp3: bytes) -> tuple[float, float, float, float]:
        started = time.process_time()
        plain_fp = media_audio.fingerprint_audio(mp3, limits, shifted_views=False)
        plain_fingerprinted = time.process_time()
        search_sounds(index, plain_fp.query_signals(), max_ber)
        plain_done = time.process_time()
        main_thread_started = time.thread_time()
        shifted_fp = media_audio.fingerprint_audio(mp3, limits, shifted_views=True)
        shifted_fingerprinted = time.process_time()
        search_sounds(index, shifted_fp.query_signals(), max_ber)
        shifted_done = time.process_time()
        main_thread = time.thread_time() - main_thread_started
        views = (shifted_fingerprinted - plain_done) - (plain_fingerprinted - started)
        helpers = (shifted_done - plain_done) - main_thread
        return plain_done - started, shifted_done - plain_done, views, helpers

    for mp3 in uploads:  # compile (or load) numba code, warm caches
        one_round(mp3)
    print(json.dumps({"ready": len(index)}), flush=True)
    for line in sys.stdin:
        if line.strip() != "round":
            break
        print(json.dumps([one_round(mp3) for mp3 in uploads]), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--old", default="main", help="the commit to compare against")
    parser.add_argument("--known", type=int, default=10_000, help="known tracks in the index")
    parser.add_argument("--rounds", type=int, default=9, help="alternated rounds (>= 7)")
    parser.add_argument("--serve", nargs=2, metavar=("TREE", "UPLOADS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve[0], args.known, args.serve[1])
        return
    sys.path[:0] = [str(REPO), str(REPO / "bench")]
    import audio as bench_audio

    def load() -> str:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])

    print(f"load average at start: {load()}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        old_tree = Path(tmp) / "old"
        old_tree.mkdir()
        archive = subprocess.run(
            ["git", "-C", str(REPO), "archive", args.old, "hashsvc"],
            check=True,
            capture_output=True,
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(old_tree)], input=archive, check=True)
        # generated protos are not committed: the checkout's serve both sides
        for generated in (REPO / "hashsvc" / "v1").glob("*_pb2*.py*"):
            (old_tree / "hashsvc" / "v1" / generated.name).write_bytes(generated.read_bytes())
        for i, two_parts in enumerate((False, True)):
            (Path(tmp) / f"{i}.mp3").write_bytes(bench_audio.three_minutes(two_parts))
        sides = {
            name: subprocess.Popen(
                [sys.executable, __file__, "--known", str(args.known), "--serve", tree, tmp],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            for name, tree in (("old", str(old_tree)), ("new", str(REPO)))
        }
        try:
            for proc in sides.values():
                known = json.loads(proc.stdout.readline())["ready"]
            costs: dict[str, list] = {name: [] for name in sides}
            for rnd in range(args.rounds):
                order = list(sides) if rnd % 2 == 0 else list(sides)[::-1]
                for name in order:
                    sides[name].stdin.write("round\n")
                    sides[name].stdin.flush()
                    costs[name].append(json.loads(sides[name].stdout.readline()))
        finally:
            for proc in sides.values():
                proc.stdin.close()
                proc.wait()
    print(f"load average at end: {load()}")
    print(f"CPU ms, medians of {args.rounds} alternated rounds, {known} known tracks:")
    for u, upload in enumerate(UPLOADS):
        for name in sides:
            plain, shifted, views, helpers = (
                statistics.median(r[u][k] for r in costs[name]) * 1000 for k in range(4)
            )
            print(
                f"  {upload:9s} {name} ({args.old if name == 'old' else 'this'}):"
                f" plain {plain:4.0f}  shifted {shifted:4.0f}  views {views:4.0f}"
                f"  other threads {helpers:3.0f}  ratio {shifted / plain:.2f}"
            )


if __name__ == "__main__":
    main()
