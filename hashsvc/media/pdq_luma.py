"""PDQ of many views of one upload from one luma picture: the query side's views
(dihedral, corners, bands, regions) at a fraction of pdqhash's cost.

An upload is hashed as ~15 PDQ views, all rectangles of the same 240 px
picture. pdqhash (Meta's C++) converts each view to luma again and box-filters
every pixel of it twice along each axis, ~0.85 ms a view, when PDQ then reads
only 64 x 64 of the filtered pixels. The same steps, done here:

1. luma as pdqhash computes it (float64 weights, then float32), once per upload;
2. the blur ("Jarosz filter": a box of `window` pixels, two passes along each
   axis, windows shrinking at the edges) and the decimation to 64 x 64 are
   linear, so each of the 64 sampled rows is a weighted sum of a few input
   rows: the weights are built per (length, window) and cached, and a view
   costs two small gathers instead of four passes over all its pixels;
3. the 16 x 16 DCT, the median threshold and the quality metric as PDQ
   defines them (PDQ paper, 2017).

Float sums in another order can move a coefficient that sits on the median:
tests/test_pdq_luma.py holds the bits within 2 of pdqhash (0 on almost every
view) and the quality within 1. Only uploads are hashed so; known pictures,
whose hashes are exchanged and must equal other tools' (reference vectors),
stay on pdqhash.
"""

from __future__ import annotations

from functools import cache, lru_cache

import numpy as np

DCT_ROWS = 16  # the 16 x 16 lowest frequencies (after the constant one) are the hash
SAMPLES = 64  # PDQ's decimated picture is 64 x 64
PASSES = 2  # box passes along each axis (PDQ's tent filter)
MIN_SIDE = 5  # smaller views: PDQ gives the zero hash, quality 0


def luma(rgb: np.ndarray) -> np.ndarray:
    """float32 luma of an RGB picture, computed as pdqhash computes it; a
    picture that is luma already (H x W: an upload's JPEG decoded as its Y
    channel) as it is."""
    if rgb.ndim == 2:
        return rgb.astype(np.float32)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return (r * 0.299 + g * 0.587 + b * 0.114).astype(np.float32)


def window(length: int) -> int:
    """PDQ's box width for a side of `length` pixels decimated to 64 samples."""
    return (length + 2 * SAMPLES - 1) // (2 * SAMPLES)


def _box_pass(rows: np.ndarray, width: int) -> np.ndarray:
    """`rows` (n x length, each a weighting of the input pixels) times one box
    pass: output i is the mean of inputs i - (width - half) .. i + half - 1
    that exist (half = (width + 2) // 2), PDQ's box with windows shrinking at
    the edges. O(n x length) with running sums: no length x length matrix (a
    panorama's side may be 20,000 px)."""
    length = rows.shape[1]
    half = (width + 2) // 2
    index = np.arange(length)
    lo = np.maximum(index - (width - half), 0)
    hi = np.minimum(index + half - 1, length - 1)
    spread = rows / (hi - lo + 1)  # what input i gives to each output of its box
    change = np.zeros((length + 1, rows.shape[0]))
    np.add.at(change, lo, spread.T)
    np.add.at(change, hi + 1, -spread.T)
    return np.cumsum(change[:length], axis=0).T


@lru_cache(maxsize=4096)
def _sampling(length: int) -> tuple[np.ndarray, np.ndarray]:
    """(64 x taps) input indexes and float32 weights giving the 64 decimated
    samples of a side of `length` pixels after PASSES box passes (cached: the
    views of 240 px uploads have a few hundred lengths between them)."""
    samples = ((np.arange(SAMPLES) + 0.5) * length / SAMPLES).astype(np.int64)
    rows = np.zeros((SAMPLES, length))
    rows[np.arange(SAMPLES), samples] = 1.0
    width = window(length)
    if width > 1:
        for _ in range(PASSES):
            rows = _box_pass(rows, width)
    taps = int((rows > 1e-12).sum(axis=1).max())
    index = np.argsort(rows <= 1e-12, axis=1, kind="stable")[:, :taps]  # nonzero ones first
    weights = np.take_along_axis(rows, index, axis=1)
    return index, weights.astype(np.float32)


@cache
def _dct() -> np.ndarray:
    """16 x 64 float32 DCT-II rows for frequencies 1..16."""
    i = np.arange(1, DCT_ROWS + 1)[:, None]
    j = np.arange(SAMPLES)[None, :]
    scale = np.sqrt(2.0 / SAMPLES)
    return (scale * np.cos(np.pi / 2 / SAMPLES * i * (2 * j + 1))).astype(np.float32)


def _decimated(view: np.ndarray) -> np.ndarray:
    """The 64 x 64 blurred and decimated luma of a (rows x cols) float32 view."""
    row_index, row_weights = _sampling(view.shape[0])
    col_index, col_weights = _sampling(view.shape[1])
    rows = np.einsum("st,stc->sc", row_weights, view[row_index])
    return np.einsum("st,rst->rs", col_weights, rows[:, col_index])


def _quality(buffer: np.ndarray) -> int:
    """PDQ's quality: significant gradients of the 64 x 64 picture, 0..100."""
    scale, full = np.float32(100), np.float32(255)
    vertical = ((buffer[:-1] - buffer[1:]) * scale / full).astype(np.int32)
    horizontal = ((buffer[:, :-1] - buffer[:, 1:]) * scale / full).astype(np.int32)
    total = int(np.abs(vertical).sum()) + int(np.abs(horizontal).sum())
    return min(100, total // 90)


def _bits(coefficients: np.ndarray) -> bytes:
    """256 bits, each whether a coefficient is above their median (the lower
    middle one, as PDQ takes it); bit 0 of the 16 x 16 is the last bit of the
    hash (the canonical hex order)."""
    flat = coefficients.reshape(-1)
    median = np.partition(flat, 127)[127]
    return np.packbits((flat > median)[::-1].astype(np.uint8)).tobytes()


def _coefficients(view: np.ndarray) -> tuple[np.ndarray, int]:
    buffer = _decimated(view)
    dct = _dct()
    return dct @ buffer @ dct.T, _quality(buffer)


def pdq(view: np.ndarray) -> tuple[bytes, int]:
    """PDQ (32 bytes, quality) of a float32 luma view (any rectangle of `luma`)."""
    if min(view.shape) < MIN_SIDE:
        return bytes(32), 0
    coefficients, quality = _coefficients(view)
    return _bits(coefficients), quality


# Each of the 8 dihedral transforms of the picture changes its DCT only by a
# transpose and signs: mirroring an axis negates that axis's odd frequencies
# (1-based: the even slots 0, 2, 4, ...). In pdqhash.compute_dihedral's order.
_EVEN = (np.arange(DCT_ROWS) % 2 == 0).astype(np.float32)
_ROW_SIGN = (1 - 2 * _EVEN)[:, None]  # -1 on even rows: the picture upside down
_COL_SIGN = (1 - 2 * _EVEN)[None, :]  # -1 on even columns: the picture mirrored
DIHEDRAL_DCT = (
    lambda c: c,  # original
    lambda c: (c * _COL_SIGN).T,  # rotate_90
    lambda c: c * _ROW_SIGN * _COL_SIGN,  # rotate_180
    lambda c: (c * _ROW_SIGN).T,  # rotate_270
    lambda c: c * _ROW_SIGN,  # flip_vertical
    lambda c: c * _COL_SIGN,  # flip_horizontal
    lambda c: c.T,  # transpose
    lambda c: (c * _ROW_SIGN * _COL_SIGN).T,  # transverse
)


def pdq_dihedral(view: np.ndarray) -> tuple[list[bytes], int]:
    """The 8 dihedral PDQ hashes of a luma view, in pdqhash.compute_dihedral's
    order (hashsvc.media.image.DIHEDRAL), and its quality."""
    if min(view.shape) < MIN_SIDE:
        return [bytes(32)] * len(DIHEDRAL_DCT), 0
    coefficients, quality = _coefficients(view)
    return [_bits(turn(coefficients)) for turn in DIHEDRAL_DCT], quality
