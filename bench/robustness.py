"""Recall per re-upload transform, and false matches, on real photographs.

    .venv/bin/python bench/robustness.py           # every photo
    .venv/bin/python bench/robustness.py --short   # 12 photos (CI)
    .venv/bin/python bench/robustness.py --hard    # + striped and faded pictures

--hard adds 30 striped pictures and 10 faded textures (hashsvc_testing.image_media),
many under the PDQ quality floor, as entries and queries of their own: the
recall table stays over real photos; a line reports the hard pictures'
recall and the false matches among pairs with a side under the floor.
--low-quality-review N tries another PdqPolicy.low_quality_review_distance
(56, the review distance, is the rule before it existed).

Every photo is a known entry (hash_known, as AddEntry stores it). Every
transformed copy is a query (hash_query, as Match hashes it) compared against
every entry with the service's own policy (default PDQ thresholds, quality
floor). The index is exact, so this is what the service answers. A query that
reaches an entry made from a *different* photo is a false match.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from collections import defaultdict

import numpy as np
from photos import load_photos
from transforms import TRANSFORMS, jpeg

from hashdb import HashSetRecord
from hashsvc.base.decisions import strictest
from hashsvc.base.signals import hamming
from hashsvc.core.config import Config
from hashsvc.matching.policy import ALLOW, BLOCK, Policy
from hashsvc.media import image
from hashsvc_testing.image_media import faded, noise_image, striped_image

CONFIG = Config()
POLICY = Policy(CONFIG.pdq)


def use_thresholds(block: int | None, review: int | None, low_quality: int | None) -> None:
    """Try other default thresholds (to choose them from measurements)."""
    global CONFIG, POLICY
    pdq = dataclasses.replace(
        CONFIG.pdq,
        block_distance=CONFIG.pdq.block_distance if block is None else block,
        review_distance=CONFIG.pdq.review_distance if review is None else review,
        low_quality_review_distance=(
            CONFIG.pdq.low_quality_review_distance if low_quality is None else low_quality
        ),
    )
    CONFIG = dataclasses.replace(CONFIG, pdq=pdq)
    POLICY = Policy(pdq)


DEFAULT_SET = HashSetRecord(0, "bench", "", {}, {}, True, None, None)


def pdq_matrix(signals) -> tuple[np.ndarray, list]:
    pdq = [s for s in signals if s.kind == "pdq"]
    return np.frombuffer(b"".join(s.value for s in pdq), dtype=np.uint8).reshape(-1, 32), pdq


def min_distance(query: np.ndarray, known: np.ndarray) -> tuple[int, int, int]:
    """Smallest Hamming distance over all pairs: (distance, query row, known row)."""
    x = np.bitwise_xor(query[:, None, :], known[None, :, :])
    d = np.unpackbits(x, axis=2).sum(axis=2)
    qi, ki = np.unravel_index(np.argmin(d), d.shape)
    return int(d[qi, ki]), int(qi), int(ki)


def decide(q_sigs, k_sigs, qi, ki, distance) -> str:
    q_quality, k_quality = q_sigs[qi].quality, k_sigs[ki].quality
    decision, _ = POLICY.decide(DEFAULT_SET, "pdq", distance, q_quality, k_quality)
    return decision


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--short", action="store_true", help="12 photos, for CI")
    parser.add_argument("--block", type=int, help="PDQ block threshold to try")
    parser.add_argument("--review", type=int, help="PDQ review threshold to try")
    parser.add_argument("--low-quality-review", type=int, help="PDQ low-quality review distance")
    parser.add_argument("--hard", action="store_true", help="+ striped and faded pictures")
    args = parser.parse_args()
    use_thresholds(args.block, args.review, args.low_quality_review)
    photos = load_photos(12 if args.short else None)
    real = len(photos)
    if args.hard:
        photos += [(f"stripes{s}", striped_image(s)) for s in range(30)]
        # faded made-up textures, not faded bench photos (those are copies)
        photos += [(f"faded{n}", faded(noise_image(n))) for n in range(10)]
    floor = CONFIG.pdq.quality_floor
    low_false_review = low_pairs = hard_false_block = hard_false_review = 0
    hard_block = hard_review = hard_queries = 0
    closest_low: tuple[int, str, str] | None = None
    limits = CONFIG.image
    rng = np.random.default_rng(20261124)

    known = []
    fast_path_cost = []
    for _, img in photos:
        data = jpeg(img, 92)
        sigs = image.hash_known(data, limits)
        known.append(pdq_matrix(sigs))
        # the same bytes through the upload path (reduced-scale decode, small views)
        stored = [s for s in sigs if s.kind == "pdq" and s.variant in ("original", "small")]
        query = image.hash_query(data, limits)
        fast_path_cost.append(
            min(
                hamming(k.value, s.value)
                for k in stored
                for s in query
                if s.kind == "pdq" and s.variant in ("original", "untrimmed")
            )
        )
    print(
        f"{len(photos)} photos; {known[0][0].shape[0]} stored PDQ views per entry;"
        f" thresholds block <= {CONFIG.pdq.block_distance}, review <= {CONFIG.pdq.review_distance},"
        f" quality floor {CONFIG.pdq.quality_floor}"
    )

    rows = []
    unrelated_min: list[int] = []
    false_block, false_review = 0, 0
    variant_hits: dict[str, int] = defaultdict(int)
    misses: dict[str, list[str]] = defaultdict(list)
    query_ms: list[float] = []
    for name, transform in TRANSFORMS.items():
        block = review = 0
        distances = []
        for i, (photo_name, img) in enumerate(photos):
            data = transform(img, rng)
            started = time.perf_counter()
            q_arr, q_sigs = pdq_matrix(image.hash_query(data, limits))
            query_ms.append((time.perf_counter() - started) * 1000)
            decisions = []
            for j, (k_arr, k_sigs) in enumerate(known):
                d, qi, ki = min_distance(q_arr, k_arr)
                decision = decide(q_sigs, k_sigs, qi, ki, d)
                if j == i:
                    decisions.append(decision)
                    if i < real:
                        distances.append(d)
                    if decision != ALLOW and i < real:
                        variant_hits[f"{q_sigs[qi].variant} ~ {k_sigs[ki].variant}"] += 1
                else:
                    if min(q_sigs[qi].quality or 0, k_sigs[ki].quality or 0) < floor:
                        low_pairs += 1
                        low_false_review += decision != ALLOW
                        if closest_low is None or d < closest_low[0]:
                            closest_low = (d, f"{photo_name}/{name}", photos[j][0])
                    if i >= real or j >= real:  # a pair with a hard picture
                        hard_false_block += decision == BLOCK
                        hard_false_review += decision != ALLOW
                        continue
                    unrelated_min.append(d)
                    false_block += decision == BLOCK
                    false_review += decision != ALLOW
            own = strictest(decisions)
            if i >= real:  # a hard picture: reported apart
                hard_queries += 1
                hard_block += own == BLOCK
                hard_review += own != ALLOW
                continue
            block += own == BLOCK
            review += own != ALLOW
            if own == ALLOW:
                misses[name].append(f"{photo_name}({distances[-1]})")
        n = real
        rows.append((name, block / n, review / n, statistics.median(distances), max(distances)))

    header = f"{'transform':<22}{'recall@block':>13}{'recall@review':>14}{'median d':>9}"
    print(f"\n{header}{'max d':>7}")
    for name, rb, rr, med, worst in rows:
        print(f"{name:<22}{rb:>13.2f}{rr:>14.2f}{med:>9.0f}{worst:>7}")
    print(
        f"{'ALL':<22}{statistics.mean(r[1] for r in rows):>13.3f}"
        f"{statistics.mean(r[2] for r in rows):>14.3f}"
    )
    pairs = len(unrelated_min)
    print(
        f"\nfalse matches over {pairs} (query, unrelated entry) pairs:"
        f" BLOCK {false_block}, REVIEW or BLOCK {false_review}"
    )
    print(
        f"pairs with a side under PDQ quality {floor}: {low_pairs}, false REVIEW or BLOCK"
        f" {low_false_review} (low-quality review distance"
        f" {CONFIG.pdq.low_quality_review_distance}); closest {closest_low}"
    )
    if hard_queries:
        print(
            f"hard pictures' own copies ({hard_queries}): recall@block"
            f" {hard_block / hard_queries:.3f}, recall@review {hard_review / hard_queries:.3f};"
            f" false matches in pairs with a hard picture: BLOCK {hard_false_block},"
            f" REVIEW or BLOCK {hard_false_review}"
        )
    lowest = sorted(unrelated_min)[:10]
    print(f"smallest unrelated distances: {lowest}")
    print(
        "unrelated distance percentiles: "
        + ", ".join(f"p{p}={np.percentile(unrelated_min, p):.0f}" for p in (0.1, 1, 5, 50))
    )
    print(f"\nhash_query: median {statistics.median(query_ms):.1f} ms per upload (one core)")
    print(
        "fast upload path vs stored whole-picture hashes, same bytes: median"
        f" {statistics.median(fast_path_cost):.0f} bits, max {max(fast_path_cost)}"
    )
    print("\nwhich query view ~ stored view decided the true matches:")
    for key, count in sorted(variant_hits.items(), key=lambda kv: -kv[1])[:12]:
        print(f"  {count:5}  {key}")
    if misses:
        print("\nmissed (photo(distance)):")
        for name, items in misses.items():
            print(f"  {name}: {', '.join(items)}")


if __name__ == "__main__":
    main()
