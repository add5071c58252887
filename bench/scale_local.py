"""The local-feature index (hashsvc/index/local_features.py) at scale: `bench/scale.py --local`.

Known pictures are synthetic: descriptors near vocabulary words, each word drawn as often as it
occurs in real pictures (the vocabulary's training counts), so posting lists are as long as real
ones would be. Probe pictures (PROBES of them, 500 descriptors each, the index files their 200
strongest) go through the whole path, descriptors -> words; the other known pictures are filed
by their words directly (add_words, drawn from the same distribution), since assigning 200M
descriptors to words is the hashing workers' cost, measured here per descriptor and not the
index's. Queries: each probe re-uploaded (every bit flipped with probability 0.15, half of its
descriptors replaced by unrelated ones), and as many unrelated pictures; recall is the share of
re-uploads whose picture is in the top 10.
"""

from __future__ import annotations

import gc
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
from photos import load_photos

from hashsvc.index.binary import signal_id
from hashsvc.index.local_features import FeatureIndex
from hashsvc.index.vocabulary import default_vocabulary
from hashsvc.media.local_features import extract
from hashsvc_testing import descriptors as synth
from hashsvc_testing import local_media

REFRAMINGS = {
    "crop 12%": lambda img, rng, others: local_media.crop(img, rng, 0.12),
    "crop 20%": lambda img, rng, others: local_media.crop(img, rng, 0.20),
    "crop 30%": lambda img, rng, others: local_media.crop(img, rng, 0.30),
    "rotate 3": lambda img, rng, others: local_media.rotate(img, rng, 3),
    "rotate 10": lambda img, rng, others: local_media.rotate(img, rng, 10),
    "rotate 20": lambda img, rng, others: local_media.rotate(img, rng, 20),
    "collage 2x2": lambda img, rng, others: local_media.collage(img, rng, 2, others)[0],
    "collage 3x3": lambda img, rng, others: local_media.collage(img, rng, 3, others)[0],
    "screenshot": lambda img, rng, others: local_media.screenshot_grid(img, rng, others)[0],
    "perspective": lambda img, rng, others: local_media.perspective(img, rng),
}
MATCHER_TOP_K = 8  # candidates the matcher verifies per query (lf-service's policy default)
REAL_BASE = 1 << 23  # real photos' entry ids
PROBES = 200
QUERY_DESCRIPTORS = 500
TOP_K = 10
BUILD_BATCH = 50_000
FILLER_BASE = 1 << 24  # filler entry ids start here; probes are entries 0..PROBES-1

LOAD_PROBE = """
import os, sys, time
from hashsvc.index.local_features import FeatureIndex
from hashsvc.index.vocabulary import default_vocabulary
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
default_vocabulary()
before = rss()
started = time.perf_counter()
index = FeatureIndex.load(sys.argv[1])
print(time.perf_counter() - started, rss() - before)
"""


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def filler_words(index: FeatureIndex, rng: np.random.Generator, count: int) -> list[np.ndarray]:
    draws = synth.word_draws(index.vocabulary, rng, count * index.words_per_picture)
    return list(draws.reshape(count, index.words_per_picture))


def timed_queries(
    index: FeatureIndex, queries: list[np.ndarray], cpu_ms: list[float] | None = None
) -> tuple[list, list[float]]:
    """Results and wall-clock ms per query; the CPU ms of each (this thread's) are appended to
    `cpu_ms`: on a shared machine, wall time also counts waiting for a core."""
    results, times = [], []
    for query in queries:
        started, cpu_started = time.perf_counter(), time.thread_time()
        results.append(index.search([query], TOP_K)[0])
        times.append((time.perf_counter() - started) * 1000)
        if cpu_ms is not None:
            cpu_ms.append((time.thread_time() - cpu_started) * 1000)
    return results, times


def real_candidates(index: FeatureIndex, rng: np.random.Generator) -> dict[str, tuple[int, int]]:
    """Real photographs added live to the full index, then searched as re-framed uploads
    (hashsvc_testing/local_media.py) with the service's extractor: per re-framing, how many
    found their photo among the matcher's MATCHER_TOP_K candidates, of how many."""
    photos = [(img, features) for _, img in load_photos() if (features := extract(img)) is not None]
    ids = [signal_id(REAL_BASE + k, 0) for k in range(len(photos))]
    index.add(ids, [features.descriptors for _, features in photos])
    found: dict[str, tuple[int, int]] = {}
    for name, reframe in REFRAMINGS.items():
        hits = total = 0
        for k, (img, _) in enumerate(photos):
            others = [other for j, (other, _) in enumerate(photos) if j != k]
            query = extract(reframe(img, rng, others))
            total += 1
            if query is not None:
                results = index.search([query.descriptors], MATCHER_TOP_K)[0]
                hits += ids[k] in [sid for sid, _ in results]
        found[name] = (hits, total)
    index.remove(ids)
    return found


def percentile(values: list[float], share: float) -> float:
    return float(np.percentile(values, share * 100))


def measure(n: int, seed: int = 5) -> dict:
    rng = np.random.default_rng(seed)
    vocabulary = default_vocabulary()
    probes = synth.pictures(vocabulary, rng, PROBES, QUERY_DESCRIPTORS)
    reuploads = [synth.altered_copy(p, vocabulary, rng, 0.15, 0.5) for p in probes]
    unrelated = list(synth.pictures(vocabulary, rng, PROBES, QUERY_DESCRIPTORS))

    sample = probes[:20].reshape(-1, vocabulary.descriptor_bytes)
    vocabulary.assign(sample)  # warm up
    started = time.thread_time()  # CPU time: wall time on a shared machine counts waiting
    words = vocabulary.assign(sample)
    assign_us = (time.thread_time() - started) * 1e6 / len(words)

    gc.collect()
    rss_before = rss_bytes()
    index = FeatureIndex(vocabulary)
    build_s = build_cpu_s = 0.0  # filing only: generating the synthetic words is not counted
    started, cpu_started = time.perf_counter(), time.process_time()
    index.add([signal_id(e, 0) for e in range(PROBES)], list(probes))
    build_s += time.perf_counter() - started
    build_cpu_s += time.process_time() - cpu_started
    for first in range(0, n - PROBES, BUILD_BATCH):
        count = min(BUILD_BATCH, n - PROBES - first)
        ids = [signal_id(FILLER_BASE + first + k, 0) for k in range(count)]
        words = filler_words(index, rng, count)
        started, cpu_started = time.perf_counter(), time.process_time()
        index.add_words(ids, words)
        build_s += time.perf_counter() - started
        build_cpu_s += time.process_time() - cpu_started
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    gc.collect()
    rss_delta = rss_bytes() - rss_before
    row = {
        "n": n,
        "build_s": build_s,
        "build_cpu_s": build_cpu_s,
        "segments": len(index._view.segments),
        "assign_us": assign_us,
        "rss_per_picture": rss_delta / n,
        "build_peak_per_picture": (peak_rss - rss_before) / n,
        "arrays_per_picture": index.memory_bytes() / n,
    }

    for _ in range(3):  # warm caches and the allocator
        index.search([unrelated[0]], TOP_K)
    cpu_ms: list[float] = []
    found, reupload_ms = timed_queries(index, reuploads, cpu_ms)
    _, unrelated_ms = timed_queries(index, unrelated, cpu_ms)
    hits = sum(signal_id(e, 0) in [sid for sid, _ in r] for e, r in enumerate(found))
    first = sum(bool(r) and r[0][0] == signal_id(e, 0) for e, r in enumerate(found))
    all_ms = reupload_ms + unrelated_ms
    row.update(
        recall_top10=hits / PROBES,
        recall_top1=first / PROBES,
        p50_ms=statistics.median(all_ms),
        p95_ms=percentile(all_ms, 0.95),
        cpu_p50_ms=statistics.median(cpu_ms),
        cpu_p95_ms=percentile(cpu_ms, 0.95),
        reupload_p50_ms=statistics.median(reupload_ms),
        unrelated_p50_ms=statistics.median(unrelated_ms),
    )

    row["real"] = real_candidates(index, rng)

    extra = synth.pictures(vocabulary, rng, 1, QUERY_DESCRIPTORS)[0]
    started = time.perf_counter()
    index.add([signal_id(FILLER_BASE - 1, 0)], [extra])
    row["live_add_ms"] = (time.perf_counter() - started) * 1000
    started = time.perf_counter()
    index.remove([signal_id(0, 0)])
    row["remove_ms"] = (time.perf_counter() - started) * 1000
    assert signal_id(0, 0) not in [sid for sid, _ in index.search([probes[0]], TOP_K)[0]]
    index.add([signal_id(0, 0)], [probes[0]])

    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        path = os.path.join(tmp, "local_features.snapshot")
        started = time.perf_counter()
        index.save(path)
        row["save_s"] = time.perf_counter() - started
        row["snapshot_bytes"] = os.path.getsize(path)
        expected, _ = timed_queries(index, reuploads[:20])
        del index
        gc.collect()
        # Loaded in a fresh process: this one's freed memory would hide the growth.
        probe = subprocess.run(
            [sys.executable, "-c", LOAD_PROBE, path],
            capture_output=True,
            text=True,
            check=True,
        )
        load_s, rss_delta = probe.stdout.split()
        row["load_s"] = float(load_s)
        row["loaded_rss_per_picture"] = int(rss_delta) / n
        loaded = FeatureIndex.load(path)
        again, _ = timed_queries(loaded, reuploads[:20])
        row["snapshot_same"] = [[i for i, _ in r] for r in again] == [
            [i for i, _ in r] for r in expected
        ]
    return row


def report(rows: list[dict]) -> None:
    print("\nlocal-feature index (synthetic descriptors, words as common as in real pictures)")
    print(
        f"{'pictures':>10} {'build':>7} {'assign':>9} {'RSS/pic':>8} {'arrays/pic':>10}"
        f" {'p50':>7} {'p95':>7} {'top10':>6} {'top1':>5} {'save':>6} {'load':>6}"
        f" {'snapshot':>9} {'add':>7} {'remove':>7}"
    )
    for r in rows:
        print(
            f"{r['n']:>10,} {r['build_s']:>6.1f}s {r['assign_us']:>6.1f} us"
            f" {r['rss_per_picture']:>7,.0f}B {r['arrays_per_picture']:>9,.0f}B"
            f" {r['p50_ms']:>5.1f}ms {r['p95_ms']:>5.1f}ms {r['recall_top10']:>6.3f}"
            f" {r['recall_top1']:>5.2f} {r['save_s']:>5.1f}s {r['load_s']:>5.1f}s"
            f" {r['snapshot_bytes'] / 2**20:>7,.0f}MB {r['live_add_ms']:>5.1f}ms"
            f" {r['remove_ms']:>5.1f}ms"
        )
        print(
            f"{'':>10} query CPU time p50 {r['cpu_p50_ms']:.1f} ms, p95 {r['cpu_p95_ms']:.1f} ms;"
            f" re-uploads p50 {r['reupload_p50_ms']:.1f} ms, unrelated p50"
            f" {r['unrelated_p50_ms']:.1f} ms; build CPU {r['build_cpu_s']:.1f} s,"
            f" {r['segments']} segments after it"
            f" (peak RSS {r['build_peak_per_picture']:,.0f} B/picture);"
            f" loaded RSS {r['loaded_rss_per_picture']:,.0f} B/picture;"
            f" snapshot gives the same top 10: {r['snapshot_same']}"
        )
    print("\nreal photos added live to the full index, searched as re-framed uploads:")
    print("  found among the matcher's 8 candidates, per re-framing and index size")
    for name in REFRAMINGS:
        print(
            f"  {name:>12}: "
            + ", ".join(f"{r['real'][name][0]}/{r['real'][name][1]} at {r['n']:,}" for r in rows)
        )
    print(
        "  assign: descriptor -> word, CPU per descriptor (one core); build: filing the words;"
        " add/remove: one picture into / out of the full index"
    )


def run(sizes: list[int]) -> None:
    rows = []
    for n in sizes:
        started = time.perf_counter()
        rows.append(measure(n))
        print(f"  local features {n:,} done in {time.perf_counter() - started:.0f} s", flush=True)
    report(rows)
