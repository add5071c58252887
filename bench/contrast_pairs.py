"""Precision of the equalised local features of low-contrast pictures (features_contrast_below):
every picture that gets them, verified against every unrelated picture, pair by pair.

    cd bench && python contrast_pairs.py [--below 300] [--corpus N]

Pictures: the bench photos (bench/photos.py), the hard set of bench/local_features.py (flat,
gradients, dark noise, stripes, checkers, noise, text screenshots, document pages, one logo
template around different photos) and the corpus (bench/corpus.py; its pictures of the same
content as a bench photo left out as bench/robustness.py does). Each gets its local features as
the service extracts them (whole picture and, under features_enlarge_below, enlarged; each also
equalised when it has fewer than --below keypoints). Every equalised feature set is verified
against every feature set (as it is or equalised) of every unrelated picture that is a bench
photo, a hard picture or itself equalised: stricter than the service, which verifies only the
feature index's best-voted candidates. Printed: how many pictures of each kind get equalised
features, the pairs at review or block, and the closest pair with its margin to review.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter

import numpy as np
from corpus import load_corpus
from local_features import hard_pictures, real_photos
from PIL import Image
from robustness import nearness, split_unrelated
from transforms import jpeg

from hashsvc.matching import local_geometry
from hashsvc.matching.local_thresholds import DEFAULT_THRESHOLDS
from hashsvc.media import image, local_features
from hashsvc.media.limits import ImageLimits


def features_of(img: Image.Image, below: int) -> tuple[list, list]:
    """([features as it is], [features equalised]) as the service extracts a known picture."""
    limits = ImageLimits(features_contrast_below=below)
    rgb = image.decode_rgb(jpeg(img, 92), limits)
    grey = np.asarray(Image.fromarray(rgb).convert("L"))
    signals = image.local_feature_signals(grey, contrast_below=below)
    if max(grey.shape) < limits.features_enlarge_below:
        signals += image.enlarged_feature_signals(grey, max(img.size), limits)
    plain, equalised = [], []
    for s in signals:
        (equalised if "contrast" in s.variant else plain).append(local_features.decode(s.value))
    return plain, equalised


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--below", type=int, default=ImageLimits().features_contrast_below)
    parser.add_argument("--corpus", type=int, help="at most this many corpus pictures")
    args = parser.parse_args()
    started = time.process_time()

    photos = real_photos(None)
    pictures = [(p.name, "bench photo", p.img, p.groups) for p in photos]
    pictures += [(p.name, "hard", p.img, p.groups) for p in hard_pictures(photos)]
    corpus = load_corpus()
    from photos import load_photos

    unrelated, _ = split_unrelated(corpus, load_photos(), set())
    if args.corpus is not None and args.corpus < len(unrelated):
        every = len(unrelated) / args.corpus
        unrelated = [unrelated[int(i * every)] for i in range(args.corpus)]
    pictures += [(p.name, p.category, p.open(), frozenset({p.name})) for p in unrelated]

    extracted = []
    kinds: Counter = Counter()
    with_equalised: Counter = Counter()
    for name, kind, img, groups in pictures:
        plain, equalised = features_of(img, args.below)
        kinds[kind] += 1
        with_equalised[kind] += bool(equalised)
        extracted.append((name, kind, groups, plain, equalised))
    print(
        "pictures with equalised features / all: "
        + ", ".join(f"{k} {with_equalised[k]}/{kinds[k]}" for k in kinds),
        flush=True,
    )

    # the other side of each pair: bench photos, the hard set, and every equalised picture
    others = [e for e in extracted if e[1] in ("bench photo", "hard") or e[4]]
    flagged, closest, pairs = [], None, 0
    for name, kind, groups, _, equalised in extracted:
        if not equalised:
            continue
        for o_name, o_kind, o_groups, o_plain, o_equalised in others:
            if o_name == name or groups & o_groups:
                continue
            for q in equalised:
                for k in o_plain + o_equalised:
                    pairs += 1
                    v = local_geometry.verify(q, k)
                    if v is None:
                        continue
                    row = {"inliers": v.inliers, "coverage": v.coverage, "agreement": v.agreement}
                    level = DEFAULT_THRESHOLDS.level(v)
                    near = nearness(row)
                    if level is not None:
                        flagged.append((level, name, o_name, row))
                    if closest is None or near > closest[0]:
                        closest = (near, name, kind, o_name, o_kind, row)
    print(f"pairs verified: {pairs}; at review or block: {len(flagged)}")
    for level, a, b, row in flagged[:20]:
        print(f"  {level}: {a} -> {b} {row}")
    if closest is not None:
        near, a, ak, b, bk, row = closest
        print(
            f"closest unrelated pair: {a} ({ak}) -> {b} ({bk}): {row['inliers']} inliers,"
            f" coverage {row['coverage']:.3f}, agreement {row['agreement']:.3f};"
            f" {near:.2f} of review (margin {1 / near:.2f}x)"
        )
    print(f"CPU {time.process_time() - started:.0f} s")


if __name__ == "__main__":
    main()
