"""Local features of a picture: keypoints and binary descriptors, the second
image signal beside PDQ (issue 18). PDQ is global, so crops, tilts and
collages move it far; keypoints found again in the copy, checked for one
consistent geometric transform (hashsvc/matching/local_geometry.py), survive
them.

The signal's value is one opaque blob per picture (`encode` / `decode`):

    magic "LF" | version u8 | algorithm u8 | width u16 | height u16 | count u16 |
    descriptor bytes u8 | count x (x u16, y u16) | count x descriptor |
    (version 2 only) count x pyramid level u8

little-endian; positions in quarter pixels of the picture the points were
found in (the picture resized to `max_side`), descriptors as the detector
gives them, strongest keypoint first. Version 2 adds each keypoint's level
in ORB's pyramid (0: the finest; see LocalFeatures.levels); version 1 blobs
(stored before 2026-12-08) still decode, without levels, and match as before.
Blobs arrive from bulk files and AddEntry-by-hash, so `decode` trusts nothing
in them.

Pictures without enough distinctive, well-spread keypoints get no signal at
all (`extract` returns None): flat, dark, gradient and tiny pictures would
otherwise match each other on noise and compression artefacts.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    # imported where pictures are decoded (hashing workers), not by the server,
    # which only decodes blobs (issue 17: no image decoder in the server process)
    from PIL import Image

from hashsvc.base.errors import InvalidArgument

MAGIC = b"LF"
# 2 since 2026-12-08 (pyramid levels); 1 still decodes (no levels)
VERSION = 2
VERSIONS = (1, 2)
ALGORITHM_ORB = 1
ALGORITHM_AKAZE = 2
ALGORITHM_BRISK = 3
# algorithm -> descriptor bytes (AKAZE's 486 bits take 61)
_ALGORITHMS = {ALGORITHM_ORB: 32, ALGORITHM_AKAZE: 61, ALGORITHM_BRISK: 64}
DETECTORS = {"orb": ALGORITHM_ORB, "akaze": ALGORITHM_AKAZE, "brisk": ALGORITHM_BRISK}
_HEADER = struct.Struct("<2sBBHHHB")
# Positions are stored in quarter pixels: well under RANSAC's reprojection
# threshold, and a u16 holds any side up to 16383 px.
_POSITION_STEPS = 4
MAX_SIDE_STORED = 65535 // _POSITION_STEPS
# The most keypoints a blob may carry, whatever the limits it was made with:
# a hostile count cannot make decode allocate or verify cost more.
MAX_POINTS_STORED = 2000
# The deepest pyramid level a blob may name (ORB's nlevels is 8 by default).
MAX_LEVEL_STORED = 31


@cache
def opencv():
    """OpenCV, imported where pictures are hashed (workers), not by the server, which only
    decodes and verifies blobs: it maps 33 MB and a bundled FFmpeg."""
    import cv2

    # OpenCV runs its own thread pool per call; the service already runs one
    # hashing job per core, and nested pools only add contention.
    cv2.setNumThreads(1)
    return cv2


@dataclass(frozen=True)
class LocalFeatureLimits:
    """What extraction keeps and when it refuses a picture."""

    # "orb", "akaze" or "brisk" (bench/local_features.py compares them);
    # features of different detectors never match each other.
    detector: str = "orb"

    # Strongest keypoints kept per picture: verification cost and blob size
    # grow with it, recall on crops and collages too.
    max_keypoints: int = 500
    # The picture is resized (down only) so its long side is at most this
    # before detection: keypoints of a 4000 px photo and its 600 px re-upload
    # then come from comparable scales, and detection cost is bounded.
    max_side: int = 640
    # Smaller pictures carry too little to be evidence (thumbnails are PDQ's job).
    min_side: int = 64
    # ORB's FAST threshold (grey levels): higher refuses weak corners that
    # JPEG artefacts and sensor noise make in flat or dark regions. AKAZE and
    # BRISK use their own (akaze_threshold, brisk_threshold).
    fast_threshold: int = 20
    akaze_threshold: float = 0.001
    brisk_threshold: int = 30
    pyramid_levels: int = 8
    pyramid_scale: float = 1.2
    # Refusal: fewer keypoints than this, or keypoints in fewer cells of a
    # spread_grid x spread_grid grid, and the picture gets no signal.
    min_keypoints: int = 60
    # Keypoints are detected oversample x max_keypoints, then max_keypoints
    # kept evenly over a balance_grid x balance_grid grid (see _balanced).
    oversample: int = 3
    balance_grid: int = 4
    spread_grid: int = 4
    min_spread_cells: int = 6
    # Equalisation of a low-contrast picture before its second extraction
    # (extract_contrast): contrast-limited adaptive histogram equalisation
    # (CLAHE) over a contrast_grid x contrast_grid grid of tiles; the clip
    # bounds how much a flat region's noise is amplified.
    contrast_clip: float = 3.0
    contrast_grid: int = 8


DEFAULT_LIMITS = LocalFeatureLimits()


@dataclass(frozen=True)
class LocalFeatures:
    """Keypoints of one picture: `points` (N, 2) float32 x, y in pixels of a
    `width` x `height` picture, `descriptors` (N, D) uint8, strongest first;
    `levels` (N,) uint8, each keypoint's ORB pyramid level (0: found at the
    picture's own size, n: on it shrunk by pyramid_scale ** n), or None
    (a version 1 blob, or another detector)."""

    width: int
    height: int
    points: np.ndarray
    descriptors: np.ndarray
    algorithm: int = ALGORITHM_ORB
    levels: np.ndarray | None = None

    @property
    def descriptor_bytes(self) -> int:
        return int(self.descriptors.shape[1])

    def __len__(self) -> int:
        return int(self.points.shape[0])


def _grey(img: Image.Image, max_side: int) -> np.ndarray:
    grey = img.convert("L")
    if max(grey.size) > max_side:
        scale = max_side / max(grey.size)
        size = (max(1, round(grey.width * scale)), max(1, round(grey.height * scale)))
        from PIL import Image

        grey = grey.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)
    return np.asarray(grey)


def _contrib(name: str):
    """AKAZE and BRISK left OpenCV's main package in 5.0 (now in
    opencv-contrib's xfeatures2d); they are compared in the bench only."""
    cv2 = opencv()
    for module in (cv2, getattr(cv2, "xfeatures2d", None)):
        if module is not None and hasattr(module, name):
            return getattr(module, name)
    raise ValueError(f"{name} needs opencv-contrib-python-headless (OpenCV 5 moved it there)")


def _detector(limits: LocalFeatureLimits):
    if limits.detector == "akaze":
        return _contrib("AKAZE_create")(threshold=limits.akaze_threshold)
    if limits.detector == "brisk":
        return _contrib("BRISK_create")(thresh=limits.brisk_threshold, octaves=3)
    if limits.detector != "orb":
        raise ValueError(f"unknown local feature detector {limits.detector!r}")
    return opencv().ORB_create(
        nfeatures=limits.max_keypoints * limits.oversample,
        scaleFactor=limits.pyramid_scale,
        nlevels=limits.pyramid_levels,
        fastThreshold=limits.fast_threshold,
    )


def extract(img: Image.Image, limits: LocalFeatureLimits = DEFAULT_LIMITS) -> LocalFeatures | None:
    """Keypoints and descriptors of `img`, or None when it has too few
    distinctive, well-spread keypoints to be evidence."""
    grey = _sized_grey(img, limits)
    if grey is None:
        return None
    return _extract_grey(grey, limits)[0]


def extract_contrast(
    img: Image.Image, below: int, limits: LocalFeatureLimits = DEFAULT_LIMITS
) -> tuple[LocalFeatures | None, LocalFeatures | None]:
    """(features of `img` as extract gives them, features of `img` equalised).

    Low-contrast pictures (a hazy sea under a pale sky, a dim fundus photo)
    give FAST few corners, and their crops and tilts fewer still, under the
    refusal limits. The second features are extracted only when the picture
    as it is yields fewer than `below` keypoints (else None; never when
    `below` is 0), from the picture equalised (_equalised); refusal limits
    and verification apply to them unchanged."""
    grey = _sized_grey(img, limits)
    if grey is None:
        return None, None
    features, detected = _extract_grey(grey, limits)
    if detected >= below:
        return features, None
    return features, _extract_grey(_equalised(grey, limits), limits)[0]


def _equalised(grey: np.ndarray, limits: LocalFeatureLimits) -> np.ndarray:
    grid = max(1, limits.contrast_grid)
    clahe = opencv().createCLAHE(clipLimit=limits.contrast_clip, tileGridSize=(grid, grid))
    return clahe.apply(np.ascontiguousarray(grey, dtype=np.uint8))


def _sized_grey(img: Image.Image, limits: LocalFeatureLimits) -> np.ndarray | None:
    if min(img.size) < limits.min_side:
        return None
    grey = _grey(img, limits.max_side)
    if min(grey.shape) < limits.min_side:
        return None
    return grey


def _extract_grey(grey: np.ndarray, limits: LocalFeatureLimits) -> tuple[LocalFeatures | None, int]:
    """(features or None, keypoints detected) of a grey picture sized for extraction."""
    height, width = grey.shape
    detector = _detector(limits)
    every_descriptor = None
    if limits.detector == "orb":
        # described below once the keypoints to keep are chosen
        keypoints = detector.detect(grey, None)
    else:  # BRISK drops keypoints it cannot describe: describe them all first
        keypoints, every_descriptor = detector.detectAndCompute(grey, None)
        if every_descriptor is None:
            return None, 0
    detected = len(keypoints)
    if detected < limits.min_keypoints:
        return None, detected
    # OpenCV converts the positions in C++ (a list comprehension over 1,500
    # keypoints cost ~0.2 ms); the responses have no such call
    points = _positions(keypoints)
    response = np.fromiter((k.response for k in keypoints), dtype=np.float64, count=len(keypoints))
    order = _balanced(points, response, width, height, limits)
    points = points[order]
    if _cells_occupied(points, width, height, limits.spread_grid) < limits.min_spread_cells:
        return None, detected
    levels = None
    if every_descriptor is not None:
        descriptors = np.ascontiguousarray(every_descriptor[order], dtype=np.uint8)
    else:
        kept = [keypoints[i] for i in order]
        descriptors = _describe(detector, grey, kept, points)
        # ORB's octave is its pyramid level (AKAZE and BRISK pack other things there)
        levels = np.fromiter((k.octave for k in kept), dtype=np.uint8, count=len(kept))
    if descriptors is None:
        return None, detected
    algorithm = DETECTORS[limits.detector]
    return LocalFeatures(width, height, points, descriptors, algorithm, levels), detected


def _describe(detector, grey: np.ndarray, keypoints: list, points: np.ndarray) -> np.ndarray | None:
    """Descriptors of the kept keypoints only (a third of those detected: ~1.5 ms
    less than describing all), row for row; the same bytes detectAndCompute gave
    them (tests/test_local_cost.py). OpenCV hands the keypoints back grouped by
    pyramid level, so they go in grouped (a stable sort) and come back in order."""
    octaves = np.fromiter((k.octave for k in keypoints), dtype=np.int64, count=len(keypoints))
    by_octave = np.argsort(octaves, kind="stable")
    described, descriptors = detector.compute(grey, [keypoints[i] for i in by_octave])
    if descriptors is None or len(described) != len(keypoints):
        return None  # no detector drops its own keypoints; refuse rather than misalign
    back = np.empty_like(by_octave)
    back[by_octave] = np.arange(len(by_octave))
    descriptors = np.ascontiguousarray(descriptors[back], dtype=np.uint8)
    if not np.array_equal(_positions(described)[back], points):
        return None
    return descriptors


def _positions(keypoints) -> np.ndarray:
    """(N, 2) float32 x, y of OpenCV keypoints, as their `pt` gives them."""
    if not len(keypoints):
        return np.zeros((0, 2), dtype=np.float32)
    return opencv().KeyPoint_convert(keypoints).reshape(-1, 2).astype(np.float32, copy=False)


def _balanced(
    points: np.ndarray, response: np.ndarray, width: int, height: int, limits: LocalFeatureLimits
) -> np.ndarray:
    """Indexes of the keypoints to keep, strongest first: the strongest of each
    cell of a balance_grid x balance_grid grid up to an equal share, then the
    strongest of the rest. Kept by strength alone, the most textured part of a
    picture takes them all, and a photo shown as one tile of a collage or in a
    screenshot beside busier pictures keeps almost none."""
    by_strength = np.argsort(-response, kind="stable")
    grid = limits.balance_grid
    if grid <= 1 or len(by_strength) <= limits.max_keypoints:
        return by_strength[: limits.max_keypoints]
    cx = np.clip((points[by_strength, 0] * grid / width).astype(np.int64), 0, grid - 1)
    cy = np.clip((points[by_strength, 1] * grid / height).astype(np.int64), 0, grid - 1)
    cell = cy * grid + cx
    # rank of each keypoint among the stronger ones of its cell
    rank = np.empty(len(cell), np.int64)
    order = np.argsort(cell, kind="stable")
    sorted_cells = cell[order]
    starts = np.searchsorted(sorted_cells, sorted_cells, side="left")
    rank[order] = np.arange(len(cell)) - starts
    quota = max(1, limits.max_keypoints // (grid * grid))
    first = by_strength[rank < quota]
    rest = by_strength[rank >= quota]
    chosen = np.concatenate([first, rest[: max(0, limits.max_keypoints - len(first))]])
    # strongest first, as the contract says
    return chosen[np.argsort(-response[chosen], kind="stable")]


def _cells_occupied(points: np.ndarray, width: int, height: int, grid: int) -> int:
    cx = np.clip((points[:, 0] * grid / width).astype(np.int64), 0, grid - 1)
    cy = np.clip((points[:, 1] * grid / height).astype(np.int64), 0, grid - 1)
    return int(np.unique(cy * grid + cx).size)


def encode(features: LocalFeatures) -> bytes:
    """The compact, versioned blob of `features` (see the module docstring)."""
    _check(features)
    steps = np.rint(features.points.astype(np.float64) * _POSITION_STEPS)
    limit = np.array([features.width, features.height], dtype=np.float64) * _POSITION_STEPS
    positions = np.minimum(steps, limit).astype("<u2")
    header = _HEADER.pack(
        MAGIC,
        1 if features.levels is None else VERSION,
        features.algorithm,
        features.width,
        features.height,
        len(features),
        features.descriptor_bytes,
    )
    blob = header + positions.tobytes() + np.ascontiguousarray(features.descriptors).tobytes()
    if features.levels is None:
        return blob
    return blob + np.ascontiguousarray(features.levels, dtype=np.uint8).tobytes()


def decode(value: bytes) -> LocalFeatures:
    """The features in a blob; InvalidArgument naming what is wrong with any
    blob that `encode` would not have made."""
    if not isinstance(value, bytes | bytearray | memoryview):
        raise InvalidArgument("local_features value must be bytes")
    value = bytes(value)
    if len(value) < _HEADER.size:
        raise InvalidArgument(f"local_features value is truncated: {len(value)} bytes, no header")
    magic, version, algorithm, width, height, count, dbytes = _HEADER.unpack_from(value)
    if magic != MAGIC:
        raise InvalidArgument("local_features value has no LF header")
    if version not in VERSIONS:
        known = ", ".join(map(str, VERSIONS))
        raise InvalidArgument(f"local_features version {version} is not supported (only {known})")
    if algorithm not in _ALGORITHMS:
        raise InvalidArgument(f"local_features algorithm {algorithm} is unknown")
    if dbytes != _ALGORITHMS[algorithm]:
        raise InvalidArgument(
            f"local_features descriptors of {dbytes} bytes; algorithm {algorithm}"
            f" has {_ALGORITHMS[algorithm]}"
        )
    if not (1 <= width <= MAX_SIDE_STORED and 1 <= height <= MAX_SIDE_STORED):
        raise InvalidArgument(f"local_features picture size {width}x{height} is out of range")
    if not 1 <= count <= MAX_POINTS_STORED:
        raise InvalidArgument(
            f"local_features keypoint count {count} is out of range (1..{MAX_POINTS_STORED})"
        )
    leveled = version >= 2
    expected = _HEADER.size + count * 4 + count * dbytes + (count if leveled else 0)
    if len(value) != expected:
        raise InvalidArgument(
            f"local_features value is {len(value)} bytes; {count} keypoints need {expected}"
        )
    positions = np.frombuffer(value, dtype="<u2", count=count * 2, offset=_HEADER.size)
    positions = positions.reshape(count, 2)
    if (positions[:, 0] > width * _POSITION_STEPS).any() or (
        positions[:, 1] > height * _POSITION_STEPS
    ).any():
        raise InvalidArgument(f"local_features keypoint outside its {width}x{height} picture")
    points = positions.astype(np.float32) / _POSITION_STEPS
    start = _HEADER.size + count * 4
    descriptors = np.frombuffer(value, dtype=np.uint8, count=count * dbytes, offset=start)
    levels = None
    if leveled:
        levels = np.frombuffer(value, dtype=np.uint8, offset=start + count * dbytes).copy()
        if (levels > MAX_LEVEL_STORED).any():
            raise InvalidArgument(
                f"local_features pyramid level {int(levels.max())} is out of range"
                f" (0..{MAX_LEVEL_STORED})"
            )
    return LocalFeatures(
        width, height, points, descriptors.reshape(count, dbytes).copy(), algorithm, levels
    )


def _check(features: LocalFeatures) -> None:
    """What encode refuses: anything decode would refuse."""
    points, descriptors = features.points, features.descriptors
    if features.algorithm not in _ALGORITHMS:
        raise InvalidArgument(f"local_features algorithm {features.algorithm} is unknown")
    if not (1 <= features.width <= MAX_SIDE_STORED and 1 <= features.height <= MAX_SIDE_STORED):
        raise InvalidArgument(
            f"local_features picture size {features.width}x{features.height} is out of range"
        )
    if points.ndim != 2 or points.shape[1] != 2 or descriptors.ndim != 2:
        raise InvalidArgument("local_features points must be (N, 2), descriptors (N, D)")
    if points.shape[0] != descriptors.shape[0] or not 1 <= points.shape[0] <= MAX_POINTS_STORED:
        raise InvalidArgument(
            f"local_features needs 1..{MAX_POINTS_STORED} keypoints with one descriptor each"
        )
    if descriptors.dtype != np.uint8 or descriptors.shape[1] != _ALGORITHMS[features.algorithm]:
        raise InvalidArgument("local_features descriptors must be uint8 of the algorithm's size")
    if not np.isfinite(points).all():
        raise InvalidArgument("local_features keypoint position is not a finite number")
    levels = features.levels
    if levels is not None and (
        levels.shape != (points.shape[0],)
        or levels.dtype != np.uint8
        or (levels > MAX_LEVEL_STORED).any()
    ):
        raise InvalidArgument(
            f"local_features levels must be one uint8 of 0..{MAX_LEVEL_STORED} a keypoint"
        )
    if (
        (points < 0).any()
        or (points[:, 0] > features.width).any()
        or (points[:, 1] > features.height).any()
    ):
        raise InvalidArgument("local_features keypoint outside its picture")
