"""CPU of the matcher (not hashing) per upload with the zoomed-copy agreement rule off and on
(hashsvc/matching/local_geometry.py ZOOMED_SCALE), on the robustness bench's known pictures plus
--features synthetic known pictures in the feature index, over unrelated corpus uploads and
copies of the known pictures cut by 30% and turned by 20 degrees (the uploads the rule is for).

    cd bench && python zoomed_cost.py --uploads 150 --rounds 5

The uploads are hashed once; each round matches all of them with the rule off, then on, then
off... (interleaved), and the CPU seconds of each pass are summed (time.process_time: the
machine is shared). Prints the median per-upload CPU ms of each setting, per kind of upload.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import numpy as np
from corpus import CACHE, load_corpus
from photos import load_photos
from robustness import SET, open_core, split_unrelated
from speed import fill_features
from transforms import jpeg

from hashsvc.matching import local_geometry
from hashsvc.matching.policy import ALLOW, PdqPolicy
from hashsvc_testing.local_media import crop, rotate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uploads", type=int, default=150)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--features", type=int, default=100_000)
    parser.add_argument("--known-corpus", type=int, default=40)
    args = parser.parse_args()
    corpus = load_corpus(short=False)
    photos = [p for p in corpus if p.category == "photo" and p.source != "pypi"]
    step = max(1, len(photos) // max(1, args.known_corpus))
    known_corpus = photos[::step][: args.known_corpus]
    bench_photos = load_photos(None)
    unrelated, _ = split_unrelated(corpus, bench_photos, {p.file for p in known_corpus})
    every = max(1, len(unrelated) // args.uploads)
    uploads = unrelated[::every][: args.uploads]
    known = [*bench_photos, *((p.name, p.open()) for p in known_corpus)]
    rng = np.random.default_rng(20261207)
    with tempfile.TemporaryDirectory(prefix="hashsvc-zoomed-") as folder:
        core = open_core(folder, PdqPolicy())
        try:
            for name, img in known:
                core.curation.add_entry(SET, name, {}, "bench", media=jpeg(img, 92))
            fill_features(core.live.features, args.features)
            kinds = {
                "unrelated": [(CACHE / p.file).read_bytes() for p in uploads],
                "crop 30%": [jpeg(crop(img, rng, 0.30), 85) for _, img in known],
                "tilt 20": [jpeg(rotate(img, rng, 20), 85) for _, img in known],
            }
            signals = {
                kind: [core.hashing.hash_query(data).signals for data in datas]
                for kind, datas in kinds.items()
            }
            settings = {"off": 0.0, "on": local_geometry.ZOOMED_SCALE}
            cpu = {(s, k): [] for s in settings for k in signals}
            flagged: dict[tuple[str, str], int] = {}
            for _ in range(args.rounds):
                for setting, value in settings.items():
                    local_geometry.ZOOMED_SCALE = value
                    for kind, uploads_signals in signals.items():
                        started = time.process_time()
                        found = [core.matcher.match(sigs) for sigs in uploads_signals]
                        cpu[setting, kind].append(
                            (time.process_time() - started) * 1000 / len(uploads_signals)
                        )
                        flagged[setting, kind] = sum(f.decision != ALLOW for f in found)
            local_geometry.ZOOMED_SCALE = settings["on"]
        finally:
            core.close()
    print(
        f"{args.rounds} rounds interleaved, {len(core.live.features):,} pictures in the"
        f" feature index, {len(known)} known pictures"
    )
    for kind, uploads_signals in signals.items():
        for setting, value in settings.items():
            rounds = cpu[setting, kind]
            print(
                f"{kind:<10} ({len(uploads_signals)}) zoomed rule {setting:>3} ({value}): matcher"
                f" CPU {statistics.median(rounds):.2f} ms/upload (rounds"
                f" {', '.join(f'{c:.2f}' for c in rounds)}); flagged {flagged[setting, kind]}"
            )


if __name__ == "__main__":
    main()
