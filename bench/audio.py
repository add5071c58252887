"""Audio: recall per transform family, false matches, fingerprinting speed, and
search latency and memory with 100k known tracks.

    .venv/bin/python bench/audio.py            # 12 real tracks, 100k known tracks
    .venv/bin/python bench/audio.py --short    # 6 real tracks, 10k known tracks (< 60 s)

Known tracks are generated speech (espeak-ng, Arabic, English, French, German,
several voices) over a tonal background bed, stored as 192 kbps MP3. Queries are
the transforms of hashsvc_testing/audio_media.py. Unrelated audio is other speech in the
same language and voices over the very same background beds, other languages,
music and noise. The bulk of the 100k known tracks is synthetic filler (3 minutes
of Chromaprint-like words each: every word a few bits away from the previous);
the queries are real fingerprints.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

import numpy as np

from hashsvc.index.audio import DEFAULT_MAX_BER, DEFAULT_MIN_SECONDS, AudioIndex
from hashsvc.media.audio import SECONDS_PER_WORD, AudioLimits, fingerprint_audio
from hashsvc_testing import audio_media as am

LIMITS = AudioLimits()
LANGS = ["ar", "ar", "en", "fr", "ar", "de"]
SLACK = 1.0  # seconds of tolerance on a reported offset
# Loose search settings, to see how close unrelated audio comes to matching.
PROBE_MAX_BER, PROBE_MIN_SECONDS = 0.35, 3.0


def filler_words(rng: np.random.Generator, n_tracks: int, n_words: int) -> np.ndarray:
    flips = (np.uint32(1) << rng.integers(0, 32, (n_tracks, n_words, 3), dtype=np.uint32)).sum(
        axis=2, dtype=np.uint32
    )
    start = rng.integers(0, 2**32, (n_tracks, 1), dtype=np.uint32)
    return np.bitwise_xor.accumulate(flips, axis=1) ^ start


def build_known(n_real: int, seconds: float) -> tuple[dict, dict]:
    pcm, words = {}, {}
    for tid in range(1, n_real + 1):
        pcm[tid] = am.speech_track(tid, seconds, LANGS[tid % len(LANGS)])
        words[tid] = fingerprint_audio(am.master(pcm[tid]), LIMITS).words
    return pcm, words


def recall(index: AudioIndex, pcm: dict) -> tuple[dict, list[float], list[np.ndarray]]:
    per_transform, true_bers, queries = {}, [], []
    for transform in am.TRANSFORMS:
        hits = 0
        for tid, track in pcm.items():
            query = fingerprint_audio(transform.make(track, tid), LIMITS).words
            queries.append(query)
            found = index.search(query)
            ok = bool(found) and (
                found[0].track_id == tid
                and abs(found[0].known_start - transform.known_start(track, tid)) <= SLACK
                and abs(found[0].query_start - transform.query_start(track, tid)) <= SLACK
            )
            hits += ok
            if ok:
                true_bers.append(found[0].ber)
        per_transform[transform.name] = hits / len(pcm)
    return per_transform, true_bers, queries


def false_matches(index: AudioIndex, n_real: int, seconds: float) -> tuple[int, int, float | None]:
    """(queries, false matches at the defaults, lowest BER of any loose alignment)."""
    queries = []
    for seed in range(n_real):
        bed = 1 + seed % n_real
        queries += [data for _, data in am.unrelated(1000 + 10 * seed, seconds, bed)]
        same_voice = am.speech_track(2000 + seed, seconds, "ar", voice="ar", background_seed=bed)
        queries.append(am.encode(same_voice, "mp3"))
    false, closest = 0, None
    for data in queries:
        words = fingerprint_audio(data, LIMITS).words
        false += len(index.search(words))
        loose = index.search(words, PROBE_MAX_BER, PROBE_MIN_SECONDS)
        closest = min(
            [b for b in (closest, *(a.ber for a in loose)) if b is not None], default=None
        )
    return len(queries), false, closest


def fingerprint_speed() -> tuple[float, float, float]:
    """(seconds of audio, x realtime by wall clock, x realtime by CPU time): the
    machine is shared, so CPU time says what one free core would do."""
    mp3 = am.master(am.speech_track(99, 180, "ar"))
    wall, cpu = [], []
    for _ in range(5):
        started, cpu_started = time.perf_counter(), time.process_time()
        fp = fingerprint_audio(mp3, LIMITS)
        wall.append(time.perf_counter() - started)
        cpu.append(time.process_time() - cpu_started)
    return fp.duration, fp.duration / statistics.median(wall), fp.duration / statistics.median(cpu)


def latency(index: AudioIndex, queries: list[np.ndarray], rounds: int) -> tuple[float, float]:
    for query in queries[:3]:  # warm the caches: the first touch of fresh arrays faults pages
        index.search(query)
    times = []
    for _ in range(rounds):
        for query in queries:
            started = time.perf_counter()
            index.search(query)
            times.append(time.perf_counter() - started)
    times.sort()
    return times[len(times) // 2] * 1000, times[int(len(times) * 0.99)] * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--short", action="store_true")
    args = parser.parse_args()
    n_real, seconds = (5, 36) if args.short else (12, 60)
    n_filler = 10_000 if args.short else 100_000
    started = time.perf_counter()

    print(f"defaults: max_ber={DEFAULT_MAX_BER} min_seconds={DEFAULT_MIN_SECONDS}")
    pcm, words = build_known(n_real, seconds)
    small = AudioIndex()
    small.add_many(words.items())
    per_transform, true_bers, queries = recall(small, pcm)
    for name, value in per_transform.items():
        print(f"recall {name:14s} {value:.2f}  ({len(pcm)} tracks of {seconds} s)")
    print(
        f"BER of true matches: median {statistics.median(true_bers):.3f} max {max(true_bers):.3f}"
    )
    n_unrelated, false, closest = false_matches(small, n_real, 20)
    print(f"false matches: {false} of {n_unrelated} unrelated uploads")
    print(
        f"closest unrelated alignment (max_ber {PROBE_MAX_BER}, {PROBE_MIN_SECONDS:g} s): "
        + ("none" if closest is None else f"BER {closest:.3f}")
    )

    duration, wall, cpu = fingerprint_speed()
    print(
        f"fingerprinting a {duration:.0f} s MP3 (44.1 kHz stereo, 192 kbps):"
        f" {wall:.0f}x realtime wall clock, {cpu:.0f}x per CPU second"
    )

    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    words_per_track = int(180 / SECONDS_PER_WORD)
    big = AudioIndex()
    rng = np.random.default_rng(0)
    build_started = time.perf_counter()
    filler: list[tuple[int, np.ndarray]] = []
    for chunk in range(0, n_filler, 5000):
        block = filler_words(rng, min(5000, n_filler - chunk), words_per_track)
        filler += [(1_000_000 + chunk + i, row) for i, row in enumerate(block)]
    big.add_many([*filler, *words.items()])
    del filler
    build = time.perf_counter() - build_started
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        f"index of {len(big)} tracks ({len(big) * words_per_track / 1e6:.0f}M words):"
        f" built in {build:.1f} s, {big.nbytes / 2**20:.0f} MiB of arrays,"
        f" peak RSS +{(rss - rss_before) / 1024:.0f} MiB"
    )
    p50, p99 = latency(big, queries, 1 if args.short else 3)
    lengths = [len(q) * SECONDS_PER_WORD for q in queries]
    print(
        f"search latency ({len(queries)} real queries of {min(lengths):.0f}-{max(lengths):.0f} s):"
        f" p50 {p50:.1f} ms, p99 {p99:.1f} ms"
    )
    big_recall = sum(
        bool(r) and r[0].track_id in words for r in (big.search(q) for q in queries)
    ) / len(queries)
    print(f"recall of the same queries with {len(big)} known tracks: {big_recall:.2f}")
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
