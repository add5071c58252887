"""Where the picture is inside an upload: uniform borders to trim, and
rectangles bounded by long straight edges (a photo above a caption bar, inside a
screenshot, between letterbox bars of any colour).

Works on a small grayscale copy; returns fractions of the image (top, left,
bottom, right in 0..1) so the caller can cut them from any resolution.
"""

from __future__ import annotations

import numpy as np

Box = tuple[float, float, float, float]  # top, left, bottom, right as fractions
FULL: Box = (0.0, 0.0, 1.0, 1.0)

# A row or column is "uniform" when its pixels vary less than this (0..255):
# flat bars survive JPEG noise at this level, photo content does not.
UNIFORM_STD = 6.0
# An edge pixel: a jump in brightness bigger than this between neighbours.
EDGE_STEP = 28.0
# A straight edge must run along at least this share of the image side...
MIN_LINE = 0.25
# ...and each side of a rectangle that is not the image border must be this
# well supported along its length.
MIN_SUPPORT = 0.5
MIN_SIDE = 0.3  # candidate rectangles keep at least this share of each side
MAX_CUTS = 8
TEXTURE_STD = 10.0  # an 8x8 block of a photo varies more than this; flat UI does not
# "Mostly flat" rows: FLAT_SHARE of their pixels within FLAT_TOLERANCE of the
# row's median.
FLAT_TOLERANCE = 12.0
FLAT_SHARE = 0.7
PER_KIND = 2


def trim_uniform_borders(gray: np.ndarray, keep: float = 0.4) -> Box:
    """Box without the near-uniform rows and columns at the edges."""
    h, w = gray.shape
    row_std = gray.std(axis=1)
    col_std = gray.std(axis=0)
    top, bottom = _trim(row_std, int(h * keep))
    left, right = _trim(col_std, int(w * keep))
    return top / h, left / w, bottom / h, right / w


def _trim(std: np.ndarray, min_keep: int) -> tuple[int, int]:
    n = len(std)
    busy = np.nonzero(std > UNIFORM_STD)[0]
    if len(busy) == 0:
        return 0, n
    start, end = int(busy[0]), int(busy[-1]) + 1
    if end - start < max(min_keep, 1):
        return 0, n
    return start, end


def content_box(gray: np.ndarray, run: float = 0.0, keep: float = 0.3) -> Box:
    """Box without the bands at the edges that are mostly one colour, text or
    not: a caption bar, a title strip, letterboxing with a logo, app chrome.
    Content starts where `run` (a share of the side; 0: 3 rows) of rows in a
    row are not flat: a larger run also steps over lines of dense text."""
    return content_boxes(gray, (run,), keep)[0]


def content_boxes(gray: np.ndarray, runs: tuple[float, ...], keep: float = 0.3) -> list[Box]:
    """content_box for each run, the rows' flatness found once (the median of
    every row is most of the cost) and the columns' once per band."""
    h, w = gray.shape
    if _busy_to_the_edges(gray, runs):
        return [FULL] * len(runs)
    flat_rows = _mostly_flat(gray)
    flat_cols: dict[tuple[int, int], np.ndarray] = {}
    boxes = []
    for run in runs:
        top, bottom = _content_span(flat_rows, int(h * keep), _run(h, run))
        if (top, bottom) not in flat_cols:
            flat_cols[top, bottom] = _mostly_flat(gray[top:bottom].T)
        left, right = _content_span(flat_cols[top, bottom], int(w * keep), _run(w, run))
        boxes.append((top / h, left / w, bottom / h, right / w))
    return boxes


def _busy_to_the_edges(gray: np.ndarray, runs: tuple[float, ...]) -> bool:
    """Whether the longest run of rows at the top and at the bottom, and of
    columns at the left and right, are all busy: then every content box is the
    whole picture (content starts at the first row), found from those lines
    alone. An ordinary photo is busy to its edges; its 2 x 240 + 2 x 320 lines'
    flatness cost ~0.6 ms of an upload."""
    h, w = gray.shape
    rows, cols = max(_run(h, r) for r in runs), max(_run(w, r) for r in runs)
    if h < 2 * rows or w < 2 * cols:
        return False
    edge_rows = np.concatenate([gray[:rows], gray[h - rows :]])
    edge_cols = np.concatenate([gray[:, :cols], gray[:, w - cols :]], axis=1).T
    return not _mostly_flat(edge_rows).any() and not _mostly_flat(edge_cols).any()


def _mostly_flat(gray: np.ndarray) -> np.ndarray:
    """Per row: does at least FLAT_SHARE of it lie close to its median colour?"""
    # the median of every other pixel is as good an estimate, at half the cost
    median = _row_medians(gray[:, ::2])
    return (np.abs(gray - median) < FLAT_TOLERANCE).mean(axis=1) >= FLAT_SHARE


def _row_medians(values: np.ndarray) -> np.ndarray:
    """np.median(values, axis=1, keepdims=True), the same numbers, for
    pictures (no NaN): np.median also partitions for the largest value, to
    look for NaN, and checks it (~0.1 ms of the content bands' ~0.9)."""
    if values.dtype.kind in "iub":  # np.median's float64, and two uint8 middles would wrap
        values = values.astype(np.float64)
    n = values.shape[1]
    half = n // 2
    if not n:
        return np.median(values, axis=1, keepdims=True)
    if n % 2:
        return np.partition(values, half, axis=1)[:, half : half + 1]
    part = np.partition(values, (half - 1, half), axis=1)
    return (part[:, half - 1 : half] + part[:, half : half + 1]) / 2


def _run(n: int, share: float) -> int:
    return max(3, int(n * share))


def _content_span(flat: np.ndarray, min_keep: int, run: int) -> tuple[int, int]:
    """First and last rows of content: where `run` non-flat rows in a row start
    (a line of caption text is shorter than that and stays outside)."""
    n = len(flat)
    busy = ~flat
    runs = np.convolve(busy.astype(np.int32), np.ones(run, dtype=np.int32), "valid")
    starts = np.nonzero(runs == run)[0]
    if len(starts) == 0:
        return 0, n
    start, end = int(starts[0]), int(starts[-1]) + run
    if end - start < max(min_keep, 1):
        return 0, n
    return start, end


def textured_box(gray: np.ndarray, block: int = 8) -> Box | None:
    """The bounding box of the largest textured area, after erasing thin
    textured strokes (lines of text, icons): a photo inside a screenshot whose
    edges do not stand out against the app's background."""
    h, w = gray.shape
    rows, cols = h // block, w // block
    if rows < 6 or cols < 6:
        return None
    blocks = gray[: rows * block, : cols * block].reshape(rows, block, cols, block)
    # each block's pixels made contiguous first: std over one axis is ~2.5x faster
    pixels = blocks.transpose(0, 2, 1, 3).reshape(rows, cols, block * block)
    busy = pixels.std(axis=2) > TEXTURE_STD
    # erode by one block in every direction (3x3): a line of text is one or two
    # blocks tall and disappears; a photo keeps its core. The outer blocks are
    # never core, so the inner ones' neighbours are slices (18 np.roll copies
    # cost ~0.2 ms an upload).
    core = np.zeros_like(busy)
    inner = busy[1:-1, 1:-1].copy()
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            inner &= busy[dy : rows - 2 + dy, dx : cols - 2 + dx]
    core[1:-1, 1:-1] = inner
    if not core.any():
        return None
    ys, xs = np.nonzero(core)
    bbox_cells = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
    if len(ys) < 0.8 * bbox_cells:  # not one solid blob: keep the large parts only
        ys, xs = np.nonzero(_large_components(core))
    # grow back the eroded block on each side
    top, bottom = max(0, ys.min() - 1), min(rows, ys.max() + 2)
    left, right = max(0, xs.min() - 1), min(cols, xs.max() + 2)
    if (bottom - top) < MIN_SIDE * rows or (right - left) < MIN_SIDE * cols:
        return None
    box = (top * block / h, left * block / w, bottom * block / h, right * block / w)
    return None if _iou(box, FULL) > 0.9 else box


def _large_components(mask: np.ndarray, share: float = 0.2) -> np.ndarray:
    """4-connected components with at least `share` of the largest one's cells:
    a photo with a flat patch (sky) splits into parts that all belong to it,
    while a stray icon stays out. The grid is small (32x32); OpenCV labels it
    (a flood fill in Python cost ~1 ms an upload)."""
    from hashsvc.media.local_features import opencv

    count, labels, stats, _ = opencv().connectedComponentsWithStats(
        mask.astype(np.uint8), connectivity=4
    )
    sizes = stats[1:count, opencv().CC_STAT_AREA]  # label 0 is the background
    if not len(sizes):
        return np.zeros(mask.shape, dtype=bool)
    keep = 1 + np.nonzero(sizes >= share * sizes.max())[0]
    return np.isin(labels, keep)


def candidate_boxes(gray: np.ndarray, limit: int = 4) -> list[Box]:
    """Rectangles framed by long straight edges, best supported first."""
    h, w = gray.shape
    if h < 16 or w < 16:
        return []
    g = gray.astype(np.float32)
    # horizontal edges lie between rows y-1 and y; vertical ones between columns
    h_edges = np.abs(np.diff(g, axis=0)) > EDGE_STEP  # (h-1, w)
    v_edges = np.abs(np.diff(g, axis=1)) > EDGE_STEP  # (h, w-1)
    rows = [0, *_line_positions(h_edges.mean(axis=1)), h]
    cols = [0, *_line_positions(v_edges.mean(axis=0)), w]
    if len(rows) == 2 and len(cols) == 2:
        return []  # no long line: the only rectangle is the picture, with no real side

    row_pairs = [(a, b) for a, b in _pairs(rows) if b - a >= MIN_SIDE * h]
    col_pairs = [(a, b) for a, b in _pairs(cols) if b - a >= MIN_SIDE * w]
    if not row_pairs or not col_pairs:
        return []
    ry0, ry1 = (np.array(v) for v in zip(*row_pairs, strict=True))
    cx0, cx1 = (np.array(v) for v in zip(*col_pairs, strict=True))
    # Running counts of edge pixels along the candidate lines only (at most
    # MAX_CUTS + 2 rows and columns): the whole grids' cumulative sums were
    # ~0.25 ms an upload. The counts are integers, so the supports are the
    # same floats either way.
    line_rows = np.clip(np.array(rows) - 1, 0, h - 2)
    line_cols = np.clip(np.array(cols) - 1, 0, w - 2)
    h_cum = np.zeros((h - 1, w + 1))
    h_cum[line_rows, 1:] = np.cumsum(h_edges[line_rows], axis=1)
    v_cum = np.zeros((h + 1, w - 1))
    v_cum[1:, line_cols] = np.cumsum(v_edges[:, line_cols], axis=0)

    def along_rows(ys: np.ndarray) -> np.ndarray:
        """Support of the horizontal line at each y over each column pair."""
        inner = np.clip(ys - 1, 0, h - 2)
        run = h_cum[inner][:, cx1] - h_cum[inner][:, cx0]
        return run / np.maximum(1, cx1 - cx0)[None, :]

    def along_cols(xs: np.ndarray) -> np.ndarray:
        inner = np.clip(xs - 1, 0, w - 2)
        run = v_cum[ry1][:, inner] - v_cum[ry0][:, inner]  # (row pairs, xs)
        return (run / np.maximum(1, ry1 - ry0)[:, None]).T

    # (row pair, column pair) grids of each side's support and whether the
    # side is a real edge (not the image border).
    top, bottom = along_rows(ry0), along_rows(ry1)
    left, right = along_cols(cx0).T, along_cols(cx1).T
    real_top = np.broadcast_to((ry0 != 0)[:, None], top.shape)
    real_bottom = np.broadcast_to((ry1 != h)[:, None], top.shape)
    real_left = np.broadcast_to((cx0 != 0)[None, :], top.shape)
    real_right = np.broadcast_to((cx1 != w)[None, :], top.shape)
    sides = np.stack([top, bottom, left, right])
    real = np.stack([real_top, real_bottom, real_left, real_right])
    n_real = real.sum(axis=0)
    weakest = np.where(real, sides, np.inf).min(axis=0)
    mean_real = np.where(real, sides, 0).sum(axis=0) / np.maximum(1, n_real)
    keep = (n_real > 0) & (weakest >= MIN_SUPPORT)
    scored = []
    for a, b in zip(*np.nonzero(keep), strict=True):
        y0, y1, x0, x1 = int(ry0[a]), int(ry1[a]), int(cx0[b]), int(cx1[b])
        # More real edges first: a photo framed on all four sides inside a
        # screenshot is rarely a coincidence; a box with one real edge (a
        # caption bar's) comes after.
        area = (y1 - y0) * (x1 - x0) / (h * w)
        scored.append(
            (int(n_real[a, b]), float(mean_real[a, b]), area, (y0 / h, x0 / w, y1 / h, x1 / w))
        )
    scored.sort(key=lambda t: (-t[0], -round(t[1], 1), -t[2]))
    # A few of each kind: framed on four sides (screenshot), on two or three,
    # and cut once across (caption bar), so one kind cannot crowd out another.
    chosen: list[Box] = []
    for real_sides in (4, 3, 2, 1):
        taken = 0
        for n, _, _, box in scored:
            if n != real_sides or taken == PER_KIND:
                continue
            if all(_iou(box, other) < 0.85 for other in chosen):
                chosen.append(box)
                taken += 1
    return chosen[:limit]


def _pairs(positions: list[int]) -> list[tuple[int, int]]:
    return [(a, b) for i, a in enumerate(positions) for b in positions[i + 1 :]]


def _line_positions(strength: np.ndarray) -> list[int]:
    """Edge positions (as row/column boundaries) where a long straight line runs."""
    order = np.argsort(strength)[::-1]
    # strongest first: the walk below ends at the first line under MIN_LINE
    order = order[: np.count_nonzero(strength >= MIN_LINE)].tolist()
    picked: list[int] = []
    for idx in order:
        if len(picked) == MAX_CUTS:
            break
        pos = idx + 1  # boundary after row/column idx
        if all(abs(pos - p) > 2 for p in picked):  # one line, not its anti-aliased twin
            picked.append(pos)
    return sorted(picked)


def _iou(a: Box, b: Box) -> float:
    top, left = max(a[0], b[0]), max(a[1], b[1])
    bottom, right = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, bottom - top) * max(0.0, right - left)
    area = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / area if area else 0.0


def cut(img: np.ndarray, box: Box) -> np.ndarray:
    h, w = img.shape[:2]
    top, left = int(round(box[0] * h)), int(round(box[1] * w))
    bottom, right = int(round(box[2] * h)), int(round(box[3] * w))
    return img[top:bottom, left:right]
