"""Recall and false matches of local-feature verification, offline, from the
blobs one bench/robustness.py run recorded (`--dump`): changes to the
verification or its thresholds are measured in a minute, without hashing again.

    cd bench && python robustness.py ... --dump /tmp/lf.pickle
    python local_offline.py /tmp/lf.pickle

Every query signal is verified against EVERY known picture's signals (not
only the feature index's candidates): recall is what verification allows when
the index offers the right candidate (bench/robustness.py --explain says how
often it does), and a false match is any pair of different pictures that
reaches review, whatever the index would have offered: a stricter test of
precision than the service's own. A copy counts as found at a level when the
query's other signals (PDQ) decided it there in the run, or local features do.
"""

from __future__ import annotations

import argparse
import pickle
import time
from collections import defaultdict
from collections.abc import Callable

from hashsvc.matching import local_geometry
from hashsvc.matching.local_thresholds import DEFAULT_THRESHOLDS, LocalThresholds
from hashsvc.matching.policy import ALLOW, BLOCK, REVIEW
from hashsvc.media import local_features

RANK = {ALLOW: 0, REVIEW: 1, BLOCK: 2}


def _decoded(blobs):
    return [(variant, local_features.decode(value)) for variant, value in blobs]


def evaluate(
    dump: dict,
    verify: Callable = local_geometry.verify,
    thresholds: LocalThresholds = DEFAULT_THRESHOLDS,
    unrelated: bool = True,
    transforms: set[str] | None = None,
) -> dict:
    known = {name: _decoded(b) for name, b in dump["known"].items()}

    def level(query_blobs, known_name) -> tuple[str, object]:
        best, evidence = ALLOW, None
        for _, q in query_blobs:
            for _, k in known[known_name]:
                v = verify(q, k)
                decided = thresholds.level(v) or ALLOW if v is not None else ALLOW
                if RANK[decided] > RANK[best]:
                    best, evidence = decided, v
        return best, evidence

    recall: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])  # block, review, n
    false: list[tuple] = []
    closest = None
    for tname, name, _decision, blobs, rest in dump["queries"]:
        if transforms is not None and tname not in transforms:
            continue
        q = _decoded(blobs)
        own, _ = level(q, name)
        got = max(own, rest, key=RANK.get)
        row = recall[tname]
        row[0] += got == BLOCK
        row[1] += got != ALLOW
        row[2] += 1
        for other in known:
            if other != name:
                found, v = level(q, other)
                if found != ALLOW:
                    false.append((f"{tname}({name})", other, found, v))
    if unrelated:
        for qname, category, blobs in dump["unrelated"]:
            q = _decoded(blobs)
            for other in known:
                for _, qf in q:
                    for _, kf in known[other]:
                        v = verify(qf, kf)
                        if v is None:
                            continue
                        decided = thresholds.level(v) or ALLOW
                        if decided != ALLOW:
                            false.append((f"{qname} [{category}]", other, decided, v))
                        score = _nearness(v, thresholds)
                        if closest is None or score > closest[0]:
                            closest = (score, qname, other, v)
    return {"recall": dict(recall), "false": false, "closest": closest}


def tiles_among_unrelated(
    dump: dict,
    categories: tuple[str, ...],
    verify: Callable = local_geometry.verify,
    thresholds: LocalThresholds = DEFAULT_THRESHOLDS,
    every: int = 1,
) -> dict:
    """Precision of the upload's tiles where it is hardest: every tile signal
    (as cut and enlarged) of an unrelated picture of `categories` (document
    pages of one manual share headings, rules and tables) verified against the
    whole-picture signal of every OTHER picture of those categories, as if each
    were known. Per kind of tile: pairs verified, at review, at block, and the
    closest."""
    pool = [
        (name, dict(blobs)) for name, category, blobs in dump["unrelated"] if category in categories
    ][::every]
    wholes = [(name, local_features.decode(b["original"])) for name, b in pool if "original" in b]
    found: dict[str, dict] = {}
    for name, blobs in pool:
        for variant, value in blobs.items():
            if not variant.startswith("tile:"):
                continue
            kind = "enlarged" if variant.endswith(":enlarged") else "as cut"
            row = found.setdefault(
                kind, {"tiles": 0, "pairs": 0, REVIEW: 0, BLOCK: 0, "closest": None}
            )
            row["tiles"] += 1
            query = local_features.decode(value)
            for other, known in wholes:
                if other == name:
                    continue
                row["pairs"] += 1
                v = verify(query, known)
                if v is None:
                    continue
                decided = thresholds.level(v)
                if decided is not None:
                    row[decided] += 1
                    print(
                        f"  {decided}: {name} [{variant}] ~ {other}: inliers={v.inliers}"
                        f" coverage={v.coverage:.2f} agreement={v.agreement:.2f}"
                    )
                score = _nearness(v, thresholds)
                if row["closest"] is None or score > row["closest"][0]:
                    row["closest"] = (score, f"{name} [{variant}] ~ {other}", v)
    return found


def _nearness(v, t: LocalThresholds) -> float:
    _, review_agreement = t.agreement_floors(v.inliers)
    return min(
        v.inliers / t.review_inliers,
        v.coverage / t.review_coverage,
        v.agreement / review_agreement,
    )


def report(result: dict) -> None:
    print(f"{'transform':<24}{'@block':>8}{'@review':>8}")
    for tname, (block, review, n) in result["recall"].items():
        print(f"{tname:<24}{block / n:>8.2f}{review / n:>8.2f}")
    print(f"false matches (pairs of different pictures at review or block): {len(result['false'])}")
    for query, other, decided, v in result["false"][:30]:
        print(
            f"  {decided} {query} -> {other}: inliers={v.inliers} coverage={v.coverage:.2f}"
            f" agreement={v.agreement:.2f} scale={v.scale:.2f}"
        )
    if result["closest"]:
        score, qname, other, v = result["closest"]
        print(
            f"closest unrelated pair: {qname} ~ {other} inliers={v.inliers}"
            f" coverage={v.coverage:.2f} agreement={v.agreement:.2f}: {score:.2f} of review"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dump", help="a bench/robustness.py --dump file")
    parser.add_argument("--no-unrelated", action="store_true", help="transformed queries only")
    parser.add_argument("--transforms", help="comma-separated names (default: all recorded)")
    parser.add_argument("--every", type=int, default=1, help="--tiles-among: every n-th picture")
    parser.add_argument(
        "--tiles-among",
        help="instead: tiles of unrelated pictures of these categories (comma-separated, e.g."
        " 'document page,text screenshot') against the others' whole pictures",
    )
    args = parser.parse_args()
    with open(args.dump, "rb") as src:
        dump = pickle.load(src)
    started = time.process_time()
    if args.tiles_among:
        found = tiles_among_unrelated(dump, tuple(args.tiles_among.split(",")), every=args.every)
        for kind, row in found.items():
            print(
                f"{kind}: {row['tiles']} tiles, {row['pairs']} pairs, review {row[REVIEW]},"
                f" block {row[BLOCK]}"
            )
            if row["closest"]:
                score, pair, v = row["closest"]
                print(
                    f"  closest: {pair} inliers={v.inliers} coverage={v.coverage:.2f}"
                    f" agreement={v.agreement:.2f}: {score:.2f} of review"
                )
        print(f"CPU {time.process_time() - started:.0f} s")
        return
    wanted = set(args.transforms.split(",")) if args.transforms else None
    report(evaluate(dump, unrelated=not args.no_unrelated, transforms=wanted))
    print(f"CPU {time.process_time() - started:.0f} s")


if __name__ == "__main__":
    main()
