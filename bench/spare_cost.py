"""CPU of the matcher (not hashing) per upload with and without the local-feature spare pass
(LocalFeatureMatching.max_verified_spare), on the robustness bench's known pictures plus
--features synthetic known pictures in the feature index, over unrelated corpus uploads.

    cd bench && python spare_cost.py --uploads 150 --rounds 4
    cd bench && python spare_cost.py --settings 4:0.07,8:0.05   # two spare passes compared

The uploads are hashed once; each round matches all of them with the spare pass off, then
on, then off... (interleaved; or with each of --settings in turn), and the CPU seconds of
each pass are summed (time.process_time: the machine is shared). Prints the median
per-upload CPU ms of each setting and the number of verifications each made.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time

from corpus import CACHE, load_corpus
from photos import load_photos
from robustness import SET, open_core, split_unrelated
from speed import fill_features
from transforms import jpeg

from hashsvc.matching import local_geometry
from hashsvc.matching.policy import PdqPolicy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uploads", type=int, default=150)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--features", type=int, default=100_000)
    parser.add_argument("--known-corpus", type=int, default=40)
    parser.add_argument("--spare", type=int, help="max_verified_spare of the 'on' setting")
    parser.add_argument(
        "--settings",
        help="instead of off/on: max_verified_spare:min_votes_spare[:min_votes] to compare, e.g."
        " 4:0.07,8:0.05:0.14",
    )
    parser.add_argument(
        "--short", action="store_true", help="20 uploads, 2 rounds, 10k features, 20 known (CI)"
    )
    args = parser.parse_args()
    if args.short:
        args.uploads, args.rounds, args.features, args.known_corpus = 20, 2, 10_000, 8
    corpus = load_corpus(short=args.short)
    photos = [p for p in corpus if p.category == "photo" and p.source != "pypi"]
    step = max(1, len(photos) // max(1, args.known_corpus))
    known_corpus = photos[::step][: args.known_corpus]
    bench_photos = load_photos(12 if args.short else None)
    unrelated, _ = split_unrelated(corpus, bench_photos, {p.file for p in known_corpus})
    every = max(1, len(unrelated) // args.uploads)
    uploads = unrelated[::every][: args.uploads]
    with tempfile.TemporaryDirectory(prefix="hashsvc-spare-") as folder:
        core = open_core(folder, PdqPolicy())
        try:
            for name, img in [*bench_photos, *((p.name, p.open()) for p in known_corpus)]:
                core.curation.add_entry(SET, name, {}, "bench", media=jpeg(img, 92))
            fill_features(core.live.features, args.features)
            signals = [
                core.hashing.hash_query((CACHE / p.file).read_bytes()).signals for p in uploads
            ]
            base = core.matcher.local
            on = (
                base
                if args.spare is None
                else dataclasses.replace(base, max_verified_spare=args.spare)
            )
            settings = {"off": dataclasses.replace(base, max_verified_spare=0), "on": on}
            if args.settings:
                settings = {}
                for pair in args.settings.split(","):
                    spare, least, *votes = pair.split(":")
                    settings[pair] = dataclasses.replace(
                        base,
                        max_verified_spare=int(spare),
                        min_votes_spare=float(least),
                        min_votes=float(votes[0]) if votes else base.min_votes,
                    )
            calls = {"n": 0}
            verify = local_geometry.verify

            def counting(*a, **kw):
                calls["n"] += 1
                return verify(*a, **kw)

            local_geometry.verify = counting
            cpu: dict[str, list[float]] = {k: [] for k in settings}
            verified: dict[str, int] = {}
            for _ in range(args.rounds):
                for key, local in settings.items():
                    core.matcher.local = local
                    calls["n"] = 0
                    started = time.process_time()
                    for sigs in signals:
                        core.matcher.match(sigs)
                    cpu[key].append((time.process_time() - started) * 1000 / len(signals))
                    verified[key] = calls["n"]
            core.matcher.local = base
        finally:
            core.close()
    print(
        f"{len(uploads)} unrelated uploads, {args.rounds} rounds interleaved,"
        f" {len(core.live.features):,} pictures in the feature index"
    )
    for key in settings:
        print(
            f"spare {key:>3} ({settings[key].max_verified_spare},"
            f" {settings[key].min_votes_spare}, min_votes {settings[key].min_votes}): matcher CPU"
            f" {statistics.median(cpu[key]):.2f} ms/upload (median of"
            f" rounds {', '.join(f'{c:.2f}' for c in cpu[key])}); verifications"
            f" {verified[key] / len(uploads):.2f}/upload"
        )


if __name__ == "__main__":
    main()
