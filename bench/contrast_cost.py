"""What the equalised features of low-contrast pictures cost an upload's hashing
(image.features_contrast_below): image.hash_query's CPU on the same uploads with the pass off
(0) and on, interleaved round by round.

    cd bench && python contrast_cost.py [--uploads 300] [--rounds 4]

Uploads: corpus pictures spread over every category (bench/corpus.py, as bench/robustness.py
--unrelated picks them) and the bench photos, as 85% JPEGs. Printed per setting: the median
over rounds of the mean CPU ms an upload, the share of uploads equalised, and the mean CPU of
those alone.
"""

from __future__ import annotations

import argparse
import statistics
import time

from corpus import load_corpus
from photos import load_photos
from transforms import jpeg

from hashsvc.media import image
from hashsvc.media.limits import ImageLimits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uploads", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--below", type=int, default=ImageLimits().features_contrast_below)
    args = parser.parse_args()
    corpus = load_corpus()
    every = max(1.0, len(corpus) / args.uploads)
    picked = [corpus[int(i * every)] for i in range(min(args.uploads, len(corpus)))]
    uploads = [jpeg(p.open(), 85) for p in picked] + [jpeg(img, 85) for _, img in load_photos()]
    settings = {"off": ImageLimits(features_contrast_below=0, local_features_thread=False)}
    settings["on"] = ImageLimits(features_contrast_below=args.below, local_features_thread=False)
    equalised = [
        any("contrast" in s.variant for s in image.hash_query(u, settings["on"])) for u in uploads
    ]
    means: dict[str, list[float]] = {k: [] for k in settings}
    equalised_means: dict[str, list[float]] = {k: [] for k in settings}
    for _ in range(args.rounds):
        for name, limits in settings.items():
            each = []
            for data in uploads:
                t = time.process_time()
                image.hash_query(data, limits)
                each.append((time.process_time() - t) * 1000)
            means[name].append(statistics.fmean(each))
            eq = [ms for ms, e in zip(each, equalised, strict=True) if e]
            equalised_means[name].append(statistics.fmean(eq) if eq else 0.0)
    print(
        f"{len(uploads)} uploads, {sum(equalised)} equalised ({sum(equalised) / len(uploads):.1%});"
        f" {args.rounds} rounds"
    )
    for name in settings:
        print(
            f"{name:4s} hash_query CPU ms an upload, median of rounds:"
            f" {statistics.median(means[name]):.2f} (rounds {[round(m, 2) for m in means[name]]});"
            f" equalised uploads alone {statistics.median(equalised_means[name]):.2f}"
        )


if __name__ == "__main__":
    main()
