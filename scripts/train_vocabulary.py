"""Train the visual vocabulary of the local-feature index (hashsvc/index/local_features.py).

    PYTHONPATH=$PWD .venv/bin/python scripts/train_vocabulary.py \
        [--vectors /work/shared/vectors] [--out hashsvc/index/local_features_vocabulary.npz]

Descriptors come from real pictures anyone can get (the reference vectors' photos and frames of
their videos, scikit-image's bundled sample pictures), each also at smaller scales, so the words
follow the statistics of real keypoints rather than of noise. Clustering is k-majority (k-means in
Hamming space: a centroid is the bitwise majority of its members), two levels: COARSE_WORDS coarse
centroids, then FINE_WORDS centroids inside each, so a descriptor's word is found with
COARSE_WORDS + FINE_WORDS comparisons instead of one per word. Everything is seeded and FAISS
runs on one thread, so a rerun on the same inputs should give the same file (not yet checked
byte for byte). The output is generated: retrain, never edit it. It also records how often each
word occurs among the training descriptors (benches draw synthetic pictures from that).

Descriptors are the service's own (hashsvc.media.local_features.extract with its default limits:
the picture shrunk to its max side, keypoints balanced over a grid); `--detector orb|akaze|brisk`
takes a bare OpenCV detector instead. The detector and descriptor length are recorded in the file:
when the extractor changes, rerun this script and commit the new file.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import faiss
import numpy as np
from PIL import Image

from hashsvc.index.vocabulary import Vocabulary
from hashsvc.media.local_features import DEFAULT_LIMITS, extract

COARSE_WORDS = 1024
FINE_WORDS = 64
KMAJORITY_ROUNDS = 10
SEED = 18
SCALES = (1.0, 0.7, 0.5)
MAX_SIDE = 1024  # pictures are shrunk to this side first, as the extractor does
FRAMES_PER_VIDEO = 40
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}
VIDEO_SUFFIXES = {".mp4", ".m4v", ".mkv", ".mov"}
# Pictures that repeat another one (the same photo re-saved in other modes, flipped or
# rotated): they would weigh their keypoints several times over.
SKIP_PARTS = ("/modes/", "/dih/", "/bridge-mods/", "resources/sample-b", "letterboxed")


def detector(name: str):
    if name == "extractor":
        return None  # hashsvc.media.local_features.extract, as the service runs it
    if name == "orb":
        return cv2.ORB_create(nfeatures=500)
    if name == "akaze":
        return cv2.AKAZE_create()
    if name == "brisk":
        return cv2.BRISK_create()
    raise SystemExit(f"unknown detector {name}")


def gray_pictures(vectors: Path):
    for path in sorted(vectors.rglob("*")):
        text = str(path)
        if any(part in text for part in SKIP_PARTS):
            continue
        if path.suffix.lower() in IMAGE_SUFFIXES:
            img = cv2.imread(text, cv2.IMREAD_GRAYSCALE)
            if img is not None:
                yield text, img
        elif path.suffix.lower() in VIDEO_SUFFIXES:
            capture = cv2.VideoCapture(text)
            total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) or 1
            step = max(1, total // FRAMES_PER_VIDEO)
            for frame_no in range(0, total, step):
                capture.set(cv2.CAP_PROP_POS_FRAMES, frame_no)
                ok, frame = capture.read()
                if ok:
                    yield f"{text}#{frame_no}", cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
            capture.release()
    try:
        import skimage.data
    except ImportError:
        print("scikit-image not installed: its sample pictures are left out", file=sys.stderr)
        return
    for name in (
        "astronaut",
        "camera",
        "coffee",
        "chelsea",
        "rocket",
        "brick",
        "grass",
        "gravel",
        "moon",
        "page",
        "text",
        "clock",
        "coins",
        "horse",
        "hubble_deep_field",
        "immunohistochemistry",
        "logo",
        "motorcycle",
        "retina",
        "cat",
        "eagle",
    ):
        loader = getattr(skimage.data, name, None)
        if loader is None:
            continue
        try:
            img = np.asarray(loader())
        except Exception:  # not bundled (downloaded on demand): skip, stay offline
            continue
        if img.ndim == 3:
            img = cv2.cvtColor(img[..., :3].astype(np.uint8), cv2.COLOR_RGB2GRAY)
        yield f"skimage:{name}", img.astype(np.uint8)


def descriptors_of(vectors: Path, detector_name: str) -> tuple[np.ndarray, int]:
    det = detector(detector_name)
    chunks, n_pictures = [], 0
    for _, img in gray_pictures(vectors):
        side = max(img.shape)
        if side > MAX_SIDE:
            img = cv2.resize(
                img, None, fx=MAX_SIDE / side, fy=MAX_SIDE / side, interpolation=cv2.INTER_AREA
            )
        n_pictures += 1
        for scale in SCALES:
            scaled = (
                img
                if scale == 1.0
                else cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
            )
            if min(scaled.shape) < 64:
                continue
            if det is None:
                features = extract(Image.fromarray(scaled))
                desc = None if features is None else features.descriptors
            else:
                _, desc = det.detectAndCompute(scaled, None)
            if desc is not None:
                chunks.append(desc)
    return np.unique(np.concatenate(chunks), axis=0), n_pictures


def majority(members: np.ndarray) -> np.ndarray:
    bits = np.unpackbits(members, axis=1)
    return np.packbits(bits.sum(axis=0, dtype=np.int64) * 2 > len(members))


def kmajority(data: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k centroids of `data` (uint8 rows); when there are fewer rows than k, the rest are
    rows with a few bits flipped, so every word is distinct (and rarely chosen)."""
    n, dbytes = data.shape
    if n <= k:
        extra = (
            data[rng.integers(0, n, k - n)]
            if n
            else rng.integers(0, 256, (k, dbytes), dtype=np.uint8)
        )
        noise = np.packbits(rng.random((len(extra), dbytes * 8)) < 0.1, axis=1)
        return np.concatenate([data, extra ^ noise])[:k].astype(np.uint8)
    centroids = data[rng.choice(n, k, replace=False)].copy()
    for _ in range(KMAJORITY_ROUNDS):
        flat = faiss.IndexBinaryFlat(dbytes * 8)
        flat.add(centroids)
        _, assigned = flat.search(data, 1)
        assigned = assigned[:, 0]
        order = np.argsort(assigned, kind="stable")
        bounds = np.searchsorted(assigned[order], np.arange(k + 1))
        for word in range(k):
            members = data[order[bounds[word] : bounds[word + 1]]]
            if len(members):
                centroids[word] = majority(members)
            else:  # an empty cluster restarts at a random descriptor
                centroids[word] = data[rng.integers(0, n)]
    return centroids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vectors", type=Path, default=Path("/work/shared/vectors"))
    parser.add_argument(
        "--detector",
        default="extractor",
        choices=["extractor", "orb", "akaze", "brisk"],
        help="extractor: hashsvc.media.local_features.extract with its default limits",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parent.parent
        / "hashsvc/index/local_features_vocabulary.npz",
    )
    args = parser.parse_args()
    faiss.omp_set_num_threads(1)  # OpenMP spinning on a shared 2-core machine is 100x slower
    cv2.setRNGSeed(SEED)
    rng = np.random.default_rng(SEED)
    data, n_pictures = descriptors_of(args.vectors, args.detector)
    print(f"{len(data)} distinct descriptors of {data.shape[1]} bytes from {n_pictures} pictures")
    coarse = kmajority(data, COARSE_WORDS, rng)
    flat = faiss.IndexBinaryFlat(data.shape[1] * 8)
    flat.add(coarse)
    _, assigned = flat.search(data, 1)
    assigned = assigned[:, 0]
    fine = np.stack([kmajority(data[assigned == c], FINE_WORDS, rng) for c in range(COARSE_WORDS)])
    # How often each word occurs in real pictures: benches draw synthetic pictures' words from it.
    untrained = Vocabulary(coarse, fine, "", "", np.zeros(COARSE_WORDS * FINE_WORDS))
    word_counts = np.bincount(untrained.assign(data), minlength=untrained.n_words)
    source = (
        f"scripts/train_vocabulary.py --detector {args.detector}: {len(data)} descriptors "
        f"of {n_pictures} pictures ({args.vectors.name} photos and video frames, "
        f"scikit-image samples) at scales {SCALES}, seed {SEED}"
    )
    detector_name = DEFAULT_LIMITS.detector if args.detector == "extractor" else args.detector
    Vocabulary(coarse, fine, detector_name, source, word_counts).save(args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes): {source}")


if __name__ == "__main__":
    main()
