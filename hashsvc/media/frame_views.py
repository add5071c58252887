"""The PDQ views of one video frame: what a query frame is hashed as, so that
mirrored, letterboxed/pillarboxed and logo-stamped re-uploads still match.

Measured with bench/video.py (slideshows of real photos) and kept few, as a
10-minute video is 600 frames: per frame the picture as decoded and mirrored
(one dihedral PDQ gives both), its middle without the corners where logos go
(known frames store the same view) and mirrored, and, only on frames with
bars, the picture inside them and mirrored: 4 signals a frame, 6 with bars.
A logo of 140x44 on 640x360 took frame recall from 0.33 to 1 with the center
view; the bar view took letterboxed copies from ~0.35 to 1 of frames.
"""

from __future__ import annotations

import numpy as np
import pdqhash

from hashsvc.base.media_kinds import frame_variant
from hashsvc.base.signals import Signal
from hashsvc.media import regions

QUERY_SIDE = 512  # queries are hashed at most this size (PDQ reads a 64x64 summary)
MIN_TRIM = 0.02  # trimming less than this share of a side is noise, not a bar
BAR_LUMA = 24  # ffmpeg cropdetect's default black limit
MIN_PICTURE_SHARE = 0.25  # a "picture" smaller than this is not letterboxing
# The middle of a frame, without the corners and edges where channel logos,
# captions and watermarks go. Known frames store it beside the vPDQ hash and
# queries hash the same view, so a new logo does not move it (bench/video.py:
# a 140x44 logo on 640x360 took recall from 0.33 of frames to ~1).
CENTER_KEEP = 0.6


def _pack(bits: np.ndarray) -> bytes:
    return np.packbits(np.asarray(bits, dtype=np.uint8)).tobytes()


# pdqhash.compute_dihedral's order: original, rot90, rot180, rot270, flip_vertical,
# flip_horizontal, transpose, transverse.
_FLIP_HORIZONTAL = 5


def query_frame_signals(rgb: np.ndarray, number: int, seconds: float) -> list[Signal]:
    """A query frame's PDQ views (RGB at <= QUERY_SIDE): as decoded, its
    center, and (when it has bars) the picture inside them, each also
    mirrored. Mirroring comes with the dihedral hash at no extra cost."""

    def view(bits: np.ndarray, quality: float, name: str = "") -> Signal:
        return Signal("pdq", _pack(bits), int(quality), frame_variant(number, name), seconds)

    hashes, quality = pdqhash.compute_dihedral(np.ascontiguousarray(rgb))
    signals = [view(hashes[0], quality), view(hashes[_FLIP_HORIZONTAL], quality, "flip")]
    hashes, quality = pdqhash.compute_dihedral(np.ascontiguousarray(center(rgb)))
    signals += [
        view(hashes[0], quality, "center"),
        view(hashes[_FLIP_HORIZONTAL], quality, "center_flip"),
    ]
    box = _bars_box(_gray(rgb))
    if box is not None:
        inner = np.ascontiguousarray(regions.cut(rgb, box))
        hashes, quality = pdqhash.compute_dihedral(inner)
        signals += [
            view(hashes[0], quality, "trimmed"),
            view(hashes[_FLIP_HORIZONTAL], quality, "trimmed_flip"),
        ]
    return signals


def _bars_box(gray: np.ndarray) -> regions.Box | None:
    """The picture inside letterbox/pillarbox bars, or None. Black bars are
    found as cropdetect does (edge lines whose mean luma is <= 24), which stops
    at the picture even when it begins with a flat sky; bars of another colour
    fall back to the image module's uniform-border trim."""
    h, w = gray.shape
    box = _dark_edges(gray)
    if box is None or not _trims(box):
        box = regions.trim_uniform_borders(gray)
    return box if _trims(box) else None


def _dark_edges(gray: np.ndarray) -> regions.Box | None:
    rows = np.flatnonzero(gray.mean(axis=1) > BAR_LUMA)
    cols = np.flatnonzero(gray.mean(axis=0) > BAR_LUMA)
    if rows.size == 0 or cols.size == 0:
        return None  # an all-dark frame: nothing to trim to
    h, w = gray.shape
    return rows[0] / h, cols[0] / w, (rows[-1] + 1) / h, (cols[-1] + 1) / w


def _trims(box: regions.Box) -> bool:
    top, left, bottom, right = box
    inner = (bottom - top) * (right - left)
    return max(top, left, 1 - bottom, 1 - right) >= MIN_TRIM and inner >= MIN_PICTURE_SHARE


def center(rgb: np.ndarray) -> np.ndarray:
    h, w = rgb.shape[:2]
    kh, kw = max(1, round(h * CENTER_KEEP)), max(1, round(w * CENTER_KEEP))
    top, left = (h - kh) // 2, (w - kw) // 2
    return rgb[top : top + kh, left : left + kw]


def _gray(rgb: np.ndarray) -> np.ndarray:
    r, g, b = (rgb[..., i].astype(np.float32) for i in range(3))
    return 0.299 * r + 0.587 * g + 0.114 * b
