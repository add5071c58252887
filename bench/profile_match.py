"""Where one image Match spends its CPU: the hashing worker's steps and the core's.

    .venv/bin/python bench/profile_match.py              # 40 uploads, 100k known pictures' features
    .venv/bin/python bench/profile_match.py --cprofile   # and cProfile's top functions of each side

The uploads are bench/speed.py's (1024x768 JPEGs of the vector photos, noise added); the core
hashes in process (workers=0) against a SQLite store holding five of them and --features
synthetic known pictures in the feature index, as bench/speed.py fills it. Each step is timed
alone on every upload (thread CPU, medians): the split of issue 18's cost target.
Last, core.match of the known uploads (blocked), the unrelated ones and exact copies
of the known files, in one step and in a flood (two steps; exact copies answered
from their exact hashes).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import statistics
import tempfile
import time
from collections.abc import Callable

import numpy as np
from PIL import Image
from speed import fill_features, jpeg_1024x768

from hashsvc.core.config import Config
from hashsvc.core.core import Core, MatchQuery
from hashsvc.media import image, local_features, local_regions
from hashsvc.media.dispatch import hash_media
from hashsvc.media.limits import MediaLimits
from hashsvc_testing.image_media import PHOTOS


def cpu_ms(step: Callable[[], object], repeat: int = 1) -> float:
    """CPU of the whole process (hashing runs a second thread) per call."""
    started = time.process_time()
    for _ in range(repeat):
        step()
    return (time.process_time() - started) * 1000 / repeat


def wall_ms(step: Callable[[], object], repeat: int = 1) -> float:
    started = time.perf_counter()
    for _ in range(repeat):
        step()
    return (time.perf_counter() - started) * 1000 / repeat


def worker_steps(data: bytes) -> dict[str, float]:
    """The hashing worker's steps for one upload, each timed alone (thread CPU ms)."""
    limits = MediaLimits().image
    # as the worker decodes it: a JPEG at a reduced DCT scale, as its luma (Y channel)
    rgb = image.decode_query(data, limits, at_least=image.QUERY_DECODE_SIDE)
    grey = np.asarray(Image.fromarray(rgb).convert("L"), dtype=np.float32)
    return {
        "decode (reduced JPEG, luma)": cpu_ms(
            lambda: image.decode_query(data, limits, at_least=image.QUERY_DECODE_SIDE)
        ),
        "exact (md5, sha256)": cpu_ms(lambda: image._exact(data)),
        "PDQ views (part 0: dihedral, corners)": cpu_ms(lambda: image.query_views(rgb, 0)),
        "PDQ views (part 1: bands, regions)": cpu_ms(lambda: image.query_views(rgb, 1)),
        "PDQ unsquashed": cpu_ms(lambda: image.unsquashed_view(rgb)),
        "ORB (grey, detect, select)": cpu_ms(lambda: local_features.extract(Image.fromarray(rgb))),
        "ORB blob encode": cpu_ms(
            lambda: local_features.encode(local_features.extract(Image.fromarray(rgb)))
        )
        - cpu_ms(lambda: local_features.extract(Image.fromarray(rgb))),
        "tiles (find)": cpu_ms(lambda: local_regions.tiles(grey)),
        "tiles (grey for tiles)": cpu_ms(
            lambda: np.asarray(Image.fromarray(rgb).convert("L"), dtype=np.float32)
        ),
        "hash_media total": cpu_ms(lambda: hash_media(data, MediaLimits(), True)),
        "hash_media total, wall ms": wall_ms(lambda: hash_media(data, MediaLimits(), True)),
    }


def core_steps(core: Core, data: bytes) -> dict[str, float]:
    """The core's side of one Match with the upload hashed already."""
    signals = hash_media(data, MediaLimits(), True).signals
    matcher = core.matcher
    local = [s for s in signals if s.kind == "local_features"]
    decoded = [local_features.decode(s.value) for s in local]
    sets = list(core.live.sets_by_id.values())
    return {
        "PDQ/exact search": cpu_ms(lambda: matcher._search(signals, sets), 5),
        "feature index search": cpu_ms(
            lambda: core.live.features.search(
                [f.descriptors for f in decoded], matcher.local.top_k
            ),
            5,
        ),
        "matcher.match total (search, verify, decide)": cpu_ms(lambda: matcher.match(signals), 5),
        "core.match total (hashing + match + history)": cpu_ms(
            lambda: core.match(MatchQuery(media=data), caller="bench")
        ),
        "core.match total, wall ms": wall_ms(
            lambda: core.match(MatchQuery(media=data), caller="bench")
        ),
    }


def by_kind_and_steps(core: Core, uploads: list[bytes]) -> None:
    """core.match of known uploads (blocked by PDQ: the bench's first five
    photos, noise added), unrelated ones and exact copies of the known files,
    hashed in one step and in two (the mode a flood of known pictures turns on:
    hashsvc/core/two_step.py; a flood of exact copies is answered from their
    exact hashes, NOT_HASHED), interleaved."""
    rows: dict[tuple[str, str], list[float]] = {}
    exact = [path.read_bytes() for path in PHOTOS[:5]]
    saved = core.recent_blocks.share, core.exact_floods.share
    try:
        for i, data in enumerate(uploads):
            kinds = [("known" if i % len(PHOTOS) < 5 else "unrelated", data)]
            if i < 2 * len(exact):
                kinds.append(("exact copy", exact[i % len(exact)]))
            for kind, media in kinds:
                for steps, share in (("one step", float("inf")), ("flood", 0.0)):
                    core.recent_blocks.share = core.exact_floods.share = share
                    ms = cpu_ms(
                        lambda media=media: core.match(MatchQuery(media=media), caller="bench")
                    )
                    rows.setdefault((kind, steps), []).append(ms)
    finally:
        core.recent_blocks.share, core.exact_floods.share = saved
    print(
        "\ncore.match CPU ms by upload and mode (p50, mean); flood: two steps, exact copies first"
    )
    for (kind, steps), values in sorted(rows.items()):
        print(
            f"{kind:<10} {steps:<10} {statistics.median(values):>7.2f}"
            f" {statistics.mean(values):>7.2f}"
        )


def profile(label: str, step: Callable[[], object], uploads: list[bytes], top: int) -> None:
    profiler = cProfile.Profile()
    profiler.enable()
    for data in uploads:
        step(data)
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(top)
    print(f"\n--- cProfile, {label}, {len(uploads)} uploads (tottime) ---")
    print("\n".join(out.getvalue().splitlines()[6 : 6 + top + 4]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uploads", type=int, default=40)
    parser.add_argument("--features", type=int, default=100_000, help="known pictures' features")
    parser.add_argument("--cprofile", action="store_true", help="also cProfile's top functions")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    uploads = [jpeg_1024x768(PHOTOS[i % len(PHOTOS)], i) for i in range(args.uploads)]
    with tempfile.TemporaryDirectory() as tmp:
        core = Core.open(Config(db_url=f"sqlite:///{tmp}/p.db"), hash_in_process=True)
        core.start()
        try:
            core.curation.create_set("bench")
            for i, path in enumerate(PHOTOS[:5]):
                core.curation.add_entry("bench", f"known-{i}", {}, "op", media=path.read_bytes())
            fill_features(core.live.features, args.features)
            core.matcher.warm_up()
            # one step (the steps' table times the whole upload's hashing);
            # by_kind_and_steps compares the two
            core.recent_blocks.share = core.exact_floods.share = float("inf")
            for data in uploads[:3]:
                core.match(MatchQuery(media=data), caller="bench")  # warm up
            rows: dict[str, list[float]] = {}
            for data in uploads:
                for name, ms in {**worker_steps(data), **core_steps(core, data)}.items():
                    rows.setdefault(name, []).append(ms)
            print(
                f"{len(uploads)} uploads 1024x768, {len(core.live.features):,} known pictures'"
                " features; process CPU ms, each step alone"
            )
            print(f"{'step':<48} {'p50':>7} {'mean':>7}")
            for name, values in rows.items():
                median, mean = statistics.median(values), statistics.mean(values)
                print(f"{name:<48} {median:>7.2f} {mean:>7.2f}")
            by_kind_and_steps(core, uploads)
            if args.cprofile:
                profile(
                    "hashing worker (hash_media)",
                    lambda d: hash_media(d, MediaLimits(), True),
                    uploads,
                    args.top,
                )
                profile(
                    "core.match (hashing in process)",
                    lambda d: core.match(MatchQuery(media=d), caller="bench"),
                    uploads,
                    args.top,
                )
        finally:
            core.close()


if __name__ == "__main__":
    main()
