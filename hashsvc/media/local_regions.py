"""Local features of the pictures inside an upload: a known picture shown as
one tile of a collage, or among other pictures in a feed or gallery screenshot.

The upload's own local_features signal (keypoints of the whole picture at
<= 640 px, the strongest 500) leaves such a tile a few dozen keypoints and its
descriptors a small share of the upload's votes in the feature index.
Keypoints of the whole upload split into windows did not help: the edges of
every tile against the gutter are the strongest corners of the picture and
take the tile's share (a 3x3 tile kept 0-46 inliers so, 80-113 extracted on
its own; bench/robustness.py, README: Local features).

So the upload is cut into its tiles first, as a layout is built: rows that
are flat across the whole picture (gutters, the gaps under captions) split it
into bands, columns flat across a band split the band into cells, and each
cell without its flat margins is a tile. Each tile large enough to carry
evidence is extracted on its own and becomes one more query signal (variant
"tile:<n>"), searched and verified like the whole picture. An ordinary photo
has no flat line across it and costs one pass over its rows and columns.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from hashsvc.media import local_features

if TYPE_CHECKING:
    from PIL import Image

Box = tuple[int, int, int, int]  # left, top, right, bottom in pixels


@dataclass(frozen=True)
class TileLimits:
    """How an upload is cut into tiles (measured by bench/robustness.py)."""

    # A row or column is a separator when its pixels vary less than this
    # (grey levels, standard deviation): a gutter under JPEG noise does,
    # photo content does not.
    flat_std: float = 8.0
    # ... and when its darkest and brightest pixels are at most this far apart
    # (grey levels): a line through a dark picture (a star field, the moon on
    # black) has a small deviation but bright points on it, and cut such a
    # picture into slivers too narrow to be tiles; a gutter's range under JPEG
    # noise is a few levels (bench/robustness.py --explain).
    flat_range: float = 24.0
    # A tile must be at least this many pixels on its short side (a 3x3 tile
    # of a 540 px collage is ~170) and this share of the upload's area...
    min_tile_side: int = 96
    min_tile_share: float = 0.03
    # ... and at most this share: a "tile" that is the whole upload is the
    # whole-picture signal already.
    max_tile_share: float = 0.85
    # Tiles searched per upload at most, the largest first: bounds the cost.
    max_tiles: int = 12
    # Each tile's extraction (the whole picture's defaults).
    extraction: local_features.LocalFeatureLimits = local_features.DEFAULT_LIMITS
    # A tile shorter than enlarge_below on its long side (pixels of the upload)
    # is also extracted enlarged to enlarge_side (variant "tile:<n>:enlarged";
    # enlarge_below 0: never). A known picture is extracted at up to 640 px: a
    # collage shows it at a third to half of that, where ORB's finest pyramid
    # levels (half of a known picture's keypoints) have no counterpart in the
    # tile; enlarged, the tile's keypoints come at the known's scales (3x3 tiles
    # of the bench photos: 41-48 -> 107-119 inliers at 512 px, 201-207 at 640,
    # for a star field; 12-21 -> 102-119 / 165-178 for a rocket on sky; the
    # same decisions at 512 as at 640 for 0.64 of the pixels). Enlarging a tile
    # of a small known picture (shown at its own size) does the opposite
    # (346 -> 25 inliers), so the tile as cut is searched too.
    enlarge_below: int = 480
    enlarge_side: int = 512


DEFAULT_TILE_LIMITS = TileLimits()


def tiles(
    gray: np.ndarray, limits: TileLimits = DEFAULT_TILE_LIMITS, scale: float = 1.0
) -> list[Box]:
    """The tiles of a grey picture (H x W uint8), largest first; none when it
    is one picture. `scale`: pixels of the upload per pixel of `gray` (a JPEG
    decoded at a reduced scale): min_tile_side is a size in the upload, where
    the tile is cut and extracted. Measured in the reduced decode, a 300 x 168
    picture in a 1080 px collage or a 1280 px feed screenshot (84 px high at
    half scale) was never cut."""
    h, w = gray.shape
    min_side = limits.min_tile_side / max(scale, 1e-9)
    found: list[Box] = []
    flat_rows = _flat(gray, 1, limits)
    for top, bottom in _spans(flat_rows, min_side):
        band = gray[top:bottom]
        flat_cols = _flat(band, 0, limits)
        for left, right in _spans(flat_cols, min_side):
            cell = band[:, left:right]
            # the cell without its flat margins (a tile fitted into its cell).
            # Its columns are its band's; its rows are the picture's when it
            # is as wide as the picture: an ordinary photo (one band, one
            # cell) pays one pass over its rows and columns, not two.
            cell_rows = flat_rows[top:bottom] if right - left == w else _flat(cell, 1, limits)
            rows = np.nonzero(~cell_rows)[0]
            cols = np.nonzero(~flat_cols[left:right])[0]
            if not len(rows) or not len(cols):
                continue
            box = (
                left + int(cols[0]),
                top + int(rows[0]),
                left + int(cols[-1]) + 1,
                top + int(rows[-1]) + 1,
            )
            bw, bh = box[2] - box[0], box[3] - box[1]
            share = bw * bh / (w * h)
            if min(bw, bh) >= min_side and (
                limits.min_tile_share <= share <= limits.max_tile_share
            ):
                found.append(box)
    found.sort(key=lambda b: -(b[2] - b[0]) * (b[3] - b[1]))
    return found[: limits.max_tiles]


def _flat(gray: np.ndarray, axis: int, limits: TileLimits) -> np.ndarray:
    """Per line (rows: axis 1, columns: axis 0), whether it is a separator:
    little deviation and no bright or dark point. The range is read only on
    lines flat by deviation (few, in a photo), so a photo pays one pass."""
    flat = gray.std(axis=axis) < limits.flat_std
    lines = np.flatnonzero(flat)
    if len(lines):
        picked = gray[lines] if axis == 1 else gray[:, lines]
        flat[lines] = np.ptp(picked, axis=axis) <= limits.flat_range
    return flat


def _spans(flat: np.ndarray, min_len: float) -> list[tuple[int, int]]:
    """Runs of non-flat lines at least `min_len` long, as (start, end)."""
    busy = np.concatenate([[False], ~flat, [False]])
    edges = np.flatnonzero(busy[1:] != busy[:-1])
    starts, ends = edges[::2], edges[1::2]
    return [(int(s), int(e)) for s, e in zip(starts, ends, strict=True) if e - s >= min_len]


def tile_features(
    img: Image.Image,
    boxes: list[Box],
    limits: TileLimits = DEFAULT_TILE_LIMITS,
    contrast_below: int = 0,
) -> list[tuple[str, local_features.LocalFeatures]]:
    """(variant, features) of each tile of `img` (boxes from `tiles`, in its
    pixels) with enough distinctive, well-spread keypoints to be evidence. A
    tile (as cut or enlarged) with fewer than `contrast_below` keypoints is also
    extracted equalised (variant "<tile variant>:contrast",
    local_features.extract_contrast), as the known pictures are: a hazy photo
    shown as a collage tile kept no features as it is."""
    from PIL import Image  # where pictures are decoded (workers), as local_features

    found: list[tuple[str, local_features.LocalFeatures]] = []

    def extract(variant: str, picture: Image.Image) -> None:
        # contrast_below 0: extract_contrast never equalises (as extract alone)
        features, equalised = local_features.extract_contrast(
            picture, contrast_below, limits.extraction
        )
        if features is not None:
            found.append((variant, features))
        if equalised is not None:
            found.append((f"{variant}:contrast", equalised))

    for n, box in enumerate(boxes):
        tile = img.crop(box)
        extract(f"tile:{n}", tile)
        if 0 < max(tile.size) < limits.enlarge_below:
            factor = limits.enlarge_side / max(tile.size)
            size = (round(tile.width * factor), round(tile.height * factor))
            extract(f"tile:{n}:enlarged", tile.resize(size, Image.Resampling.BICUBIC))
    return found
