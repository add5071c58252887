"""The PDQ index engine at 100k, 1M and 10M clustered, realistic hashes, and
side by side with python-threatexchange's PDQ index.

    .venv/bin/python bench/scale.py --short        # 100k, a few photos (CI, < 60 s)
    .venv/bin/python bench/scale.py --local --short                   # local features, 20k
    nice .venv/bin/python bench/scale.py --local --sizes 100000,1000000  # (bench/scale_local.py)
    nice .venv/bin/python bench/scale.py           # 100k, 1M, 10M; threatexchange at 1M
    nice .venv/bin/python bench/scale.py --sizes 1000000 --te-sizes 1000000,10000000

Known hashes: the views hashsvc stores for real photos (bench/photos.py), plus
synthetic families of near-duplicates (a random seed, members with up to 10% of
its bits flipped, each member stored as 16 views with up to 6% more flipped:
what an image's views and its re-edits look like to PDQ), generated in numpy
blocks, never one Python object per hash. Queries are uploads of 18 views: real
photos after each edit of bench/transforms.py hashed as uploads are, fresh
members of stored families, and unrelated pictures (most real uploads).
Recall is measured per (query view, stored hash) pair against a brute-force
scan (FAISS IndexBinaryFlat) at radius 31 and 56, and per (upload, known
entry): what the matcher sees, an entry found through any of its views.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import tempfile
import time

import faiss
import numpy as np
import scale_local

from hashsvc.core.config import ImageLimits
from hashsvc.index.binary import signal_id, split_signal_id
from hashsvc.index.multi_index import MultiIndexHash

VIEWS_PER_UPLOAD = 18
VIEWS_PER_KNOWN = 16
BUILD_BATCH = 50_000  # as LiveIndex builds from the store
SYNTHETIC_ENTRY_BASE = 1 << 30


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def mb(n: float) -> str:
    return f"{n / 2**20:,.0f} MB"


# -- hashes


def real_hashes(n_photos: int) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Stored views of real photos (codes, ids) and uploads of their edits."""
    from photos import load_photos
    from transforms import TRANSFORMS, jpeg

    from hashsvc.media.image import hash_known, hash_query

    limits = ImageLimits()
    rng = np.random.default_rng(0)
    codes, ids, uploads = [], [], []
    for entry, (_, img) in enumerate(load_photos(n_photos)):
        for variant, sig in enumerate(hash_known(jpeg(img, 90), limits)):
            if sig.kind == "pdq":
                codes.append(np.frombuffer(sig.value, dtype=np.uint8))
                ids.append(signal_id(entry, variant))
        for transform in TRANSFORMS.values():
            views = [s.value for s in hash_query(transform(img, rng), limits) if s.kind == "pdq"]
            uploads.append(np.frombuffer(b"".join(views), dtype=np.uint8).reshape(-1, 32))
    return np.array(codes), np.array(ids, dtype=np.int64), uploads


def flip(bits: np.ndarray, rate: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return bits ^ (rng.random(bits.shape, dtype=np.float32) < rate)


def synthetic_block(
    rng: np.random.Generator, first_entry: int, n_entries: int
) -> tuple[np.ndarray, np.ndarray]:
    """n_entries known images of 16 views each, in families of 1 to 8 images."""
    family_sizes = rng.integers(1, 9, n_entries)
    family_of = np.repeat(np.arange(n_entries), family_sizes)[:n_entries]
    seeds = np.unpackbits(rng.integers(0, 256, (n_entries, 32), dtype=np.uint8), axis=1)
    members = flip(seeds[family_of], rng.uniform(0, 0.10, (n_entries, 1)), rng)
    views = flip(
        np.repeat(members, VIEWS_PER_KNOWN, axis=0),
        rng.uniform(0, 0.06, (n_entries * VIEWS_PER_KNOWN, 1)),
        rng,
    )
    entries = np.repeat(np.arange(first_entry, first_entry + n_entries), VIEWS_PER_KNOWN)
    variants = np.tile(np.arange(VIEWS_PER_KNOWN), n_entries)
    return np.packbits(views, axis=1), (entries << 20) | variants


def build_corpus(n: int, real_codes: np.ndarray, real_ids: np.ndarray, seed: int = 1):
    """n hashes: the real ones first, then synthetic families (one array, no objects)."""
    rng = np.random.default_rng(seed)
    codes = np.empty((n, 32), dtype=np.uint8)
    ids = np.empty(n, dtype=np.int64)
    k = min(len(real_codes), n)
    codes[:k], ids[:k] = real_codes[:k], real_ids[:k]
    entry = SYNTHETIC_ENTRY_BASE
    block = 12_500  # entries per block: 200k hashes
    while k < n:
        c, i = synthetic_block(rng, entry, block)
        take = min(len(c), n - k)
        codes[k : k + take], ids[k : k + take] = c[:take], i[:take]
        k, entry = k + take, entry + block
    return codes, ids


def synthetic_uploads(codes: np.ndarray, rng, n_near: int, n_unrelated: int) -> list[np.ndarray]:
    """Re-uploads (18 views near one stored hash each) and unrelated uploads."""
    uploads = []
    for _ in range(n_near):
        base = np.unpackbits(codes[rng.integers(len(codes))])
        views = flip(np.tile(base, (VIEWS_PER_UPLOAD, 1)), rng.uniform(0, 0.1), rng)
        uploads.append(np.packbits(views, axis=1))
    for _ in range(n_unrelated):
        uploads.append(rng.integers(0, 256, (VIEWS_PER_UPLOAD, 32), dtype=np.uint8))
    return uploads


# -- measuring


def build_index(
    codes: np.ndarray, ids: np.ndarray, review_search: str
) -> tuple[MultiIndexHash, float, int]:
    gc.collect()
    before = rss_bytes()
    started = time.perf_counter()
    index = MultiIndexHash(review_search=review_search)
    for start in range(0, len(ids), BUILD_BATCH):
        # One bytes object per batch: add() reads the joined buffer.
        index.add(ids[start : start + BUILD_BATCH], [codes[start : start + BUILD_BATCH].tobytes()])
    return index, time.perf_counter() - started, rss_bytes() - before


def truth(codes: np.ndarray, ids: np.ndarray, uploads, radius: int) -> list[list[set]]:
    flat = faiss.IndexBinaryFlat(256)
    flat.add(codes)
    out = []
    for upload in uploads:
        lims, dist, rows = flat.range_search(upload, radius + 1)
        out.append(
            [
                set(
                    zip(
                        ids[rows[lims[v] : lims[v + 1]]].tolist(),
                        dist[lims[v] : lims[v + 1]],
                        strict=True,
                    )
                )
                for v in range(len(upload))
            ]
        )
    return out


def search_all(index: MultiIndexHash, uploads, radius: int) -> tuple[list, list[float]]:
    results, per_upload_ms = [], []
    for upload in uploads:
        queries = [v.tobytes() for v in upload]
        started = time.perf_counter()
        results.append(index.search(queries, radius))
        per_upload_ms.append((time.perf_counter() - started) * 1000)
    return results, per_upload_ms


def recall(results, expected) -> tuple[float, int, int]:
    found = total = false = 0
    for got_upload, want_upload in zip(results, expected, strict=True):
        for got, want in zip(got_upload, want_upload, strict=True):
            got = {(sid, int(d)) for sid, d in got}
            want = {(sid, int(d)) for sid, d in want}
            found += len(got & want)
            false += len(got - want)
            total += len(want)
    return (found / total if total else 1.0), total, false


def entry_recall(results, expected) -> tuple[float, int]:
    """What the matcher sees: (upload, known entry) pairs with any of their
    views within the radius, found through any view."""
    found = total = 0
    for got_upload, want_upload in zip(results, expected, strict=True):
        got = {split_signal_id(sid)[0] for view in got_upload for sid, _ in view}
        want = {split_signal_id(sid)[0] for view in want_upload for sid, _ in view}
        found += len(got & want)
        total += len(want)
    return (found / total if total else 1.0), total


def measure(n: int, real, args, rng) -> dict:
    real_codes, real_ids, real_uploads = real
    codes, ids = build_corpus(n, real_codes, real_ids)
    index, build_s, rss = build_index(codes, ids, args.review_search)
    stored = sum(
        seg.codes.nbytes + seg.ids.nbytes + seg.alive.nbytes + seg.rows.nbytes
        + seg.suffixes.nbytes + seg.offsets.nbytes + seg.id_order.nbytes
        + seg.sorted_ids.nbytes
        for seg in index._segments()
    )  # fmt: skip
    uploads = real_uploads + synthetic_uploads(codes, rng, args.uploads, args.uploads)
    row = {
        "n": n,
        "build_s": build_s,
        "rss": rss,
        "index_bytes": stored,
        "bytes_per_hash": stored / n,
    }
    row["process_rss"] = rss_bytes()  # everything: the corpus arrays for brute force too
    expected56 = truth(codes, ids, uploads, 56)
    for radius in (31, 56):
        expected = [[{p for p in v if p[1] <= radius} for v in u] for u in expected56]
        search_all(index, uploads[:20], radius)  # warm up
        results, times = search_all(index, uploads, radius)
        per_view = [t / len(u) for t, u in zip(times, uploads, strict=True)]
        rec, total, false = recall(results, expected)
        entry_rec, entry_total = entry_recall(results, expected)
        real_rec, real_total, _ = recall(
            results[: len(real_uploads)], expected[: len(real_uploads)]
        )
        row[radius] = {
            "p50_view": statistics.median(per_view),
            "p99_view": float(np.percentile(per_view, 99)),
            "p50_upload": statistics.median(times),
            "recall": rec,
            "pairs": total,
            "false": false,
            "real_recall": real_rec,
            "real_pairs": real_total,
            "entry_recall": entry_rec,
            "entry_pairs": entry_total,
        }
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "index-pdq")
        started = time.perf_counter()
        index.save(path)
        row["save_s"] = time.perf_counter() - started
        del index
        gc.collect()
        started = time.perf_counter()
        loaded = MultiIndexHash.load(path, 256, args.review_search)
        row["load_s"] = time.perf_counter() - started
        assert len(loaded) == n
    if n in args.te_sizes:
        row["te"] = threatexchange_side_by_side(codes, ids, uploads, index_results=results)
    return row


def threatexchange_side_by_side(codes, ids, uploads, index_results) -> dict | str:
    """python-threatexchange's PDQ index (PdqSignal.get_index_cls()) on the same hashes."""
    try:
        from threatexchange.signal_type.pdq.signal import PdqSignal
    except ImportError:
        return "skipped: threatexchange is not installed (pip install threatexchange)"
    index_cls = PdqSignal.get_index_cls()
    gc.collect()
    before = rss_bytes()
    started = time.perf_counter()
    hexes = [c.tobytes().hex() for c in codes]  # its API takes hex strings
    te_index = index_cls.build(zip(hexes, ids.tolist(), strict=True))
    build_s = time.perf_counter() - started
    rss = rss_bytes() - before
    del hexes
    threshold = index_cls.get_match_threshold()
    agree = disagree = 0
    times = []
    # our results at its threshold come from the run at radius 56
    for upload, our_upload in zip(uploads, index_results, strict=True):
        started = time.perf_counter()
        theirs = [te_index.query(v.tobytes().hex()) for v in upload]
        times.append((time.perf_counter() - started) * 1000 / len(upload))
        for their_view, our_view in zip(theirs, our_upload, strict=True):
            mine = {(sid, int(d)) for sid, d in our_view if d <= threshold}
            their = {(m.metadata, int(m.similarity_info.distance)) for m in their_view}
            agree += len(mine & their)
            disagree += len(mine ^ their)
    del te_index
    gc.collect()
    return {
        "index": index_cls.__name__,
        "threshold": threshold,
        "build_s": build_s,
        "rss": rss,
        "p50_view": statistics.median(times),
        "agree": agree,
        "disagree": disagree,
    }


def report(rows: list[dict]) -> None:
    print(
        f"\n{'hashes':>11} {'build s':>8} {'index':>9} {'B/hash':>7} {'radius':>6}"
        f" {'p50 ms/view':>11} {'p99 ms/view':>11} {'p50 ms/upload':>13}"
        f" {'recall':>8} {'pairs':>9} {'false':>5} {'real recall':>11}"
        f" {'entry recall':>19}"
    )
    for row in rows:
        for radius in (31, 56):
            r = row[radius]
            print(
                f"{row['n']:>11,} {row['build_s']:>8.2f} {mb(row['index_bytes']):>9}"
                f" {row['bytes_per_hash']:>7.0f} {radius:>6} {r['p50_view']:>11.3f}"
                f" {r['p99_view']:>11.3f} {r['p50_upload']:>13.2f} {r['recall']:>8.4f}"
                f" {r['pairs']:>9,} {r['false']:>5} {r['real_recall']:>6.4f} ({r['real_pairs']})"
                f" {r['entry_recall']:>8.4f} ({r['entry_pairs']:,})"
            )
    print("\nindex: bytes of the engine's arrays; RSS growth while building and process RSS:")
    for row in rows:
        print(
            f"  {row['n']:>11,}: +{mb(row['rss'])} while building, process {mb(row['process_rss'])}"
        )
    print("\nsnapshot (restart: load, then apply the changes since):")
    for row in rows:
        print(f"  {row['n']:>11,}: saved in {row['save_s']:.1f} s, loaded in {row['load_s']:.1f} s")
    if len(rows) >= 2:
        a, b = rows[-2], rows[-1]
        for radius in (31, 56):
            slope = (b[radius]["p50_view"] - a[radius]["p50_view"]) / (b["n"] - a["n"])
            at_100m = b[radius]["p50_view"] + slope * (100_000_000 - b["n"])
            print(
                f"projected to 100M at radius {radius}: p50 {at_100m:.2f} ms per query view"
                f" (linear from the last two sizes), memory"
                f" {mb(b['bytes_per_hash'] * 100_000_000)} of index arrays"
            )
    for row in rows:
        te = row.get("te")
        if te is None:
            continue
        print(f"\nside by side at {row['n']:,} hashes:")
        if isinstance(te, str):
            print(f"  threatexchange {te}")
            continue
        ours = row[31]
        print(
            f"  threatexchange {te['index']} (threshold {te['threshold']}): build"
            f" {te['build_s']:.1f} s, RSS {mb(te['rss'])}, p50 {te['p50_view']:.3f} ms per query"
        )
        print(
            f"  hashsvc MultiIndexHash (radius 31): build {row['build_s']:.1f} s, index"
            f" {mb(row['index_bytes'])}, p50 {ours['p50_view']:.3f} ms per query view (batched)"
        )
        print(
            f"  ratio threatexchange/hashsvc: build {te['build_s'] / row['build_s']:.1f}x,"
            f" memory {te['rss'] / row['index_bytes']:.1f}x (its RSS growth / our index arrays),"
            f" latency {te['p50_view'] / ours['p50_view']:.1f}x"
        )
        total = te["agree"] + te["disagree"]
        print(
            f"  agreement: {te['agree']:,} (entry, distance) results in both,"
            f" {te['disagree']:,} in one only ({te['agree'] / max(total, 1):.4%})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--short", action="store_true", help="100k hashes, a few photos (CI)")
    parser.add_argument("--sizes", default="", help="comma-separated numbers of hashes")
    parser.add_argument("--te-sizes", default="", help="sizes for the threatexchange side by side")
    parser.add_argument("--uploads", type=int, default=0, help="synthetic uploads of each kind")
    parser.add_argument(
        "--review-search", default="balanced", help="pdq_review_search: fast, balanced, thorough"
    )
    parser.add_argument(
        "--local",
        action="store_true",
        help="the local-feature index instead (bench/scale_local.py; --short: 20k pictures)",
    )
    args = parser.parse_args()
    if args.local:
        faiss.omp_set_num_threads(1)  # as the server runs it
        scale_local.run(
            [int(s) for s in args.sizes.split(",") if s]
            or ([20_000] if args.short else [100_000, 1_000_000])
        )
        return
    sizes = [int(s) for s in args.sizes.split(",") if s] or (
        [100_000] if args.short else [100_000, 1_000_000, 10_000_000]
    )
    args.te_sizes = {int(s) for s in args.te_sizes.split(",") if s} or (
        {100_000} if args.short else {1_000_000}
    )
    args.uploads = args.uploads or (50 if args.short else 200)
    faiss.omp_set_num_threads(1)  # the brute-force truth; one core like a request

    started = time.perf_counter()
    real = real_hashes(4 if args.short else 40)
    print(
        f"real photos: {len(real[0])} stored views, {len(real[2])} uploads of their edits"
        f" (hashed in {time.perf_counter() - started:.0f} s);"
        f" synthetic uploads: {args.uploads} re-uploads + {args.uploads} unrelated;"
        f" review-band search {args.review_search}"
    )
    rng = np.random.default_rng(2)
    rows = []
    for n in sizes:
        rows.append(measure(n, real, args, rng))
        print(f"  {n:,} done at {time.perf_counter() - started:.0f} s", flush=True)
    report(rows)


if __name__ == "__main__":
    main()
