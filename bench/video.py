"""Video robustness and speed: recall per transform and false matches for the
frame signal (hash_video + video_match) and for the videohash; decode+hash
speed in x realtime.

    .venv/bin/python bench/video.py [--short]

Known videos are slideshows of real photos (hashsvc_testing/video_media.py), each from
its own photos; unrelated videos use photos no known video shows. Every query
is compared with every known video: a match with its own source counts for
recall, any other match is a false match. videohash "matches" at <= 10 bits
(the package's is_similar: 15% of 64).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from hashsvc.matching import video_evidence as video_match
from hashsvc.matching.policy import DEFAULT_THRESHOLDS
from hashsvc.media import video
from hashsvc_testing import video_media as vm

VIDEOHASH_SIMILAR_BITS = 10
PHOTOS_PER_VIDEO = 5
TRANSFORMS = [
    "reencode_low_bitrate",
    "360p_to_240p",
    "15fps",
    "webm_vp9",
    "excerpt_8s",
    "inside_compilation_12s",
    "mirrored",
    "letterboxed",
    "logo",
]


def make_queries(known: Path, filler: Path, out: Path) -> dict[str, Path]:
    queries = {}
    for name in TRANSFORMS:
        if name == "excerpt_8s":
            queries[name] = vm.excerpt(known, 4, 8, out)
        elif name == "inside_compilation_12s":
            parts = [(filler, 0, 6), (known, 2, 12), (filler, 6, 6)]
            queries[name] = vm.compilation(parts, out, f"{known.stem}-compilation")
        else:
            queries[name] = vm.transformed(known, name, out)
    return queries


def hamming64(a, b) -> int:
    return (int.from_bytes(a.value, "big") ^ int.from_bytes(b.value, "big")).bit_count()


def robustness(n_known: int, n_unrelated: int, out: Path, verbose: bool = False) -> None:
    started = time.monotonic()
    photo_count = len(vm.PICTURES)
    known_paths = [
        vm.slideshow(out / f"known{k}.mp4", range(k * PHOTOS_PER_VIDEO, (k + 1) * PHOTOS_PER_VIDEO))
        for k in range(n_known)
    ]
    first_free = n_known * PHOTOS_PER_VIDEO
    free = list(range(first_free, photo_count))
    unrelated_paths = [
        vm.slideshow(out / f"unrelated{u}.mp4", [free[(u * 3 + i) % len(free)] for i in range(4)])
        for u in range(n_unrelated)
    ]
    known = [video.hash_video(str(p)) for p in known_paths]
    queries: list[tuple[str, int, video.VideoHashes]] = []
    for k, path in enumerate(known_paths):
        for name, qpath in make_queries(path, unrelated_paths[0], out).items():
            queries.append((name, k, video.hash_video(str(qpath), for_query=True)))
    for u, path in enumerate(unrelated_paths):
        queries.append(("unrelated", -1 - u, video.hash_video(str(path), for_query=True)))
    print(f"{n_known} known videos, {len(queries)} queries; made and hashed in "
          f"{time.monotonic() - started:.0f} s")  # fmt: skip

    frame_hits: dict[str, list[bool]] = {}
    vh_hits: dict[str, list[bool]] = {}
    frame_false = vh_false = comparisons = 0
    # Unrelated pairs the videohash sends to review (<= its review distance):
    # before, whatever the frames said; now only when the frames could not
    # be compared (matcher._frames_comparable).
    vh_review = DEFAULT_THRESHOLDS["videohash"].review_distance
    vh_review_before = vh_review_after = 0
    closest_unrelated_frames = 256
    vh_same: dict[str, list[int]] = {}
    vh_unrelated: list[int] = []
    for name, source, query in queries:
        for k, entry in enumerate(known):
            pairs = vm.brute_force_pairs(query, entry)
            ev = video_match.video_evidence(
                query.frame_signals,
                pairs,
                video_match.countable_frames(entry.frame_signals),
                entry.duration,
            )
            vh_distance = hamming64(query.videohash, entry.videohash)
            vh_close = vh_distance <= VIDEOHASH_SIMILAR_BITS
            if k == source:
                frame_hits.setdefault(name, []).append(ev.is_match)
                vh_hits.setdefault(name, []).append(vh_close)
                vh_same.setdefault(name, []).append(vh_distance)
                if not ev.is_match and verbose:
                    print(f"  missed: {name} of known{k}: {ev.reason}; runs {ev.runs[:3]}")
            else:
                comparisons += 1
                frame_false += ev.is_match
                vh_false += vh_close
                if vh_distance <= vh_review and not ev.is_match:
                    vh_review_before += 1
                    query_frames = video_match.countable_frames(query.frame_signals)
                    known_frames = video_match.countable_frames(entry.frame_signals)
                    vh_review_after += not (query_frames and known_frames)
                vh_unrelated.append(vh_distance)
                everything = vm.brute_force_pairs(query, entry, radius=256)
                good = [
                    p.distance for p in everything if min(p.query.quality, p.known.quality) >= 50
                ]
                closest_unrelated_frames = min([closest_unrelated_frames, *good])
    print("\nrecall; videohash distances to the source (bits)")
    print(f"{'transform':26s} {'frames+runs':>12s} {'videohash':>10s} {'vh bits':>12s}")
    for name in TRANSFORMS:
        f, v = frame_hits[name], vh_hits[name]
        bits = ",".join(map(str, vh_same[name]))
        print(f"{name:26s} {sum(f) / len(f):12.2f} {sum(v) / len(v):10.2f} {bits:>12s}")
    vh_unrelated.sort()
    print(f"videohash distances between unrelated videos: min {vh_unrelated[0]}, "
          f"10th percentile {vh_unrelated[len(vh_unrelated) // 10]}, "
          f"median {vh_unrelated[len(vh_unrelated) // 2]}")  # fmt: skip
    print(f"\nfalse matches over {comparisons} unrelated (query, known) pairs: "
          f"frames+runs {frame_false}, videohash {vh_false}")  # fmt: skip
    print(f"closest unrelated frame pair (quality >= 50): {closest_unrelated_frames} bits")
    print(f"unrelated pairs sent to review by the videohash (<= {vh_review} bits) while the"
          f" frames disagreed: before {vh_review_before}, now {vh_review_after}"
          f" (of {comparisons})")  # fmt: skip


def videohash_alone(out: Path) -> None:
    """Short slideshows of two photos each (every picture of
    hashsvc_testing.video_media, none shared): unrelated pairs that the
    videohash alone sends to review (<= its review distance) before, and now
    that it is no hint where the frames were compared and disagree."""
    vh_review = DEFAULT_THRESHOLDS["videohash"].review_distance
    count = len(vm.PICTURES) // 2
    paths = [vm.slideshow(out / f"pair{n}.mp4", [2 * n, 2 * n + 1]) for n in range(count)]
    queries = [video.hash_video(str(p), for_query=True) for p in paths]
    knowns = [video.hash_video(str(p)) for p in paths]
    before = after = frame_false = pairs = 0
    closest = 64
    kept = []  # where the hint stays: frames of quality < 50 only
    for i, query in enumerate(queries):
        for k, known in enumerate(knowns):
            if i == k:
                continue
            pairs += 1
            ev = video_match.video_evidence(
                query.frame_signals,
                vm.brute_force_pairs(query, known),
                video_match.countable_frames(known.frame_signals),
                known.duration,
            )
            frame_false += ev.is_match
            distance = hamming64(query.videohash, known.videohash)
            closest = min(closest, distance)
            if distance <= vh_review and not ev.is_match:
                before += 1
                query_frames = video_match.countable_frames(query.frame_signals)
                known_frames = video_match.countable_frames(known.frame_signals)
                if not (query_frames and known_frames):
                    after += 1
                    kept.append(f"pair{i}->pair{k} ({query_frames}/{known_frames} good frames)")
    print(
        f"\nvideohash alone: {count} two-photo slideshows, {pairs} unrelated (query, known)"
        f" pairs; closest videohash {closest} bits; frame matches {frame_false};"
        f" sent to review by videohash (<= {vh_review} bits) before {before}, now {after}"
        + (f": {', '.join(kept)}" if kept else "")
    )


def speed(seconds: float, out: Path) -> None:
    base = vm.slideshow(out / "speed.mp4", range(0, max(2, round(seconds / 3.3))))
    print(f"\nspeed, {seconds:.0f} s slideshow, 1 frame/s; x realtime (higher is faster)")
    print(f"{'size':8s} {'known (vPDQ-exact)':>19s} {'query (fast+views)':>19s}")
    for height in (360, 720, 1080):
        path = out / f"speed{height}.mp4"
        vm.ffmpeg("-i", str(base), "-vf", f"scale=-2:{height}", "-c:v", "libx264",
                  "-preset", "veryfast", "-crf", "23", "-g", "250", str(path))  # fmt: skip
        known = video.hash_video(str(path))
        query = video.hash_video(str(path), for_query=True)
        print(f"{height}p{'':4s} {known.duration / known.decode_seconds:19.1f}"
              f" {query.duration / query.decode_seconds:19.1f}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--short", action="store_true", help="a quick run (< 60 s)")
    parser.add_argument("--verbose", action="store_true", help="say why each miss missed")
    parser.add_argument(
        "--videohash-only", action="store_true", help="only the videohash-alone case (~30 s)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        if args.videohash_only:
            videohash_alone(out)
        elif args.short:
            robustness(n_known=2, n_unrelated=2, out=out, verbose=args.verbose)
            videohash_alone(out)
            speed(10, out)
        else:
            robustness(n_known=4, n_unrelated=3, out=out, verbose=args.verbose)
            videohash_alone(out)
            speed(30, out)


if __name__ == "__main__":
    main()
