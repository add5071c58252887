"""Whole-video 64-bit hash of the `videohash` package (v3.0.1), computed in process.

The package runs the ffmpeg binary: cropdetect at a few start times (the most
frequent crop wins), then `-vf crop -s 144x144 -r <frame_interval>` to JPEG
files. It then builds two images from those 144x144 frames and XORs two 64-bit
strings:

* a collage: round(sqrt(n)) frames per row, each shrunk (Lanczos) to fill a
  1024 px wide canvas, black elsewhere, saved as JPEG; imagehash.whash of it
  (Haar wavelets down to 8x8 after removing the mean, bits above the median);
* a strip of all frames side by side, cut into 8x8 tiles (row-major, as the
  sorted tile file names come out); for each tile its dominant colour among
  r/g/b/l ("l": no single channel is the largest) on a 16x16 Lanczos copy; bit
  i is 1 when tile i's colour is the one expected at i (16 r, 16 g, 16 b, 16 l).

Here the frames come from the decode pass hash_video already makes; this module
holds the three pieces that depend on nothing else: which frames ffmpeg's `-r`
keeps (CFR), the cropdetect rectangle, and the hash of the 144x144 frames.
Note that `frame_interval` is a rate (frames per second), as in the package.
Measured on the reference vector: exactly 0xa9a9fffb5eb10303 (tests/test_video.py),
from the known side's exact decode and from a query's fast, 512 px one alike.

When to rely on it (bench/video.py, slideshows of real photos): a whole copy
(re-encode, 240p, 15 fps, VP9, letterbox, logo) stays within 0-8 bits, a mirror
within 9; an 8 s excerpt or a 12 s segment in a compilation is 20-29 bits away,
as far as unrelated videos (min 10, 10th percentile 14, median 23). So it finds
whole copies only, and the package's own "similar" (<= 10 bits) already let one
unrelated pair in of 120. Use it to exchange hashes with systems that use it,
and as a hint (review, <= 4 bits) where the frame signal cannot decide (a known
entry without frames, or frames too flat on either side), never to block alone
nor to find excerpts: where frames were compared and disagree it is ignored
(matcher; bench/video.py --videohash-only: two-photo slideshows reached 0
bits). It costs little: it reuses the decode pass (one 144x144 shrink per
sampled second) and is ~60 kB of memory per sampled frame until the end
(VideoLimits.max_videohash_frames).
"""

from __future__ import annotations

import io
import math
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from hashsvc.base.errors import CorruptMedia

FRAME_SIDE = 144
COLLAGE_WIDTH = 1024
HASH_SIDE = 8
TILE_SAMPLE_SIDE = 16
EXPECTED_COLOURS = "r" * 16 + "g" * 16 + "b" * 16 + "l" * 16
# A tile is "r" only when r-dominant pixels outnumber each other colour by 10%.
DOMINANCE_MARGIN = 0.10
# ffmpeg's cropdetect defaults: luma line average above 24 is picture; sizes
# are rounded down to a multiple of 16.
CROP_LIMIT = 24
CROP_ROUND = 16
# The package runs cropdetect from these start times (seconds), 3 frames each.
CROP_START_TIMES = (2, 5, 10, 20, 40, 100, 300, 600, 1200, 2400, 7200, 14400)
CROP_FRAMES_PER_START = 3


class CfrSampler:
    """Which decoded frames ffmpeg's `-r rate` output keeps, and how often.

    ffmpeg's CFR rule (fftools, do_video_out): a frame at output-tick position
    ipts (seconds since the file's start x rate) lasting `duration` ticks is
    dropped when ipts - next_tick + duration < -1.1, repeated round(delta)
    times when that delta > 1.1, else written once.
    """

    def __init__(self, rate: float, source_fps: float) -> None:
        self.rate = rate
        self.duration = rate / source_fps if source_fps > 0 else 0.0
        self.next_tick = 0

    def copies(self, seconds_from_start: float) -> int:
        ipts = seconds_from_start * self.rate
        delta0 = ipts - self.next_tick
        delta = delta0 + self.duration
        if delta < -1.1:
            return 0
        count = round(delta) if delta > 1.1 else 1
        self.next_tick += count
        return count


def crop_box(luma: np.ndarray) -> tuple[int, int, int, int]:
    """cropdetect's rectangle (x, y, w, h) for one frame's luma plane."""
    h, w = luma.shape
    rows = luma.mean(axis=1) > CROP_LIMIT
    cols = luma.mean(axis=0) > CROP_LIMIT
    if not rows.any() or not cols.any():
        y1, y2, x1, x2 = h - 1, 0, w - 1, 0
    else:
        ys, xs = np.flatnonzero(rows), np.flatnonzero(cols)
        y1, y2, x1, x2 = ys[0], ys[-1], xs[0], xs[-1]
    x, width = _rounded(x1, x2)
    y, height = _rounded(y1, y2)
    return x, y, width, height


def _rounded(first: int, last: int) -> tuple[int, int]:
    """(offset, size) rounded like cropdetect: size down to a multiple of 16,
    offset moved in by half the cut, to an even pixel."""
    size = int(last) - int(first) + 1
    if size <= 0:
        # an all-black frame: cropdetect reports a negative size; ffmpeg's
        # crop filter then fails and the package keeps the whole frame.
        return 0, 0
    shrink = size % CROP_ROUND
    return (int(first) + shrink // 2 + 1) & ~1, size - shrink


@dataclass
class CropVotes:
    """The package's crop: the most frequent cropdetect answer over the frames
    right after each start time (3 per start). None when nothing was voted."""

    votes: Counter = field(default_factory=Counter)
    _start_index: int = 0
    _taken: int = 0

    def wants(self, seconds: float) -> bool:
        while self._start_index < len(CROP_START_TIMES) and self._taken >= CROP_FRAMES_PER_START:
            self._start_index += 1
            self._taken = 0
        if self._start_index >= len(CROP_START_TIMES):
            return False
        return seconds >= CROP_START_TIMES[self._start_index]

    def add(self, luma: np.ndarray) -> None:
        self._taken += 1
        # ffmpeg's cropdetect skips the first 2 frames of each run.
        if self._taken == CROP_FRAMES_PER_START:
            box = crop_box(luma)
            if box[2] > 0 and box[3] > 0:
                self.votes[box] += 1

    def best(self) -> tuple[int, int, int, int] | None:
        return self.votes.most_common(1)[0][0] if self.votes else None


def videohash(frames: list[np.ndarray]) -> bytes:
    """The 64-bit hash of the 144x144 RGB frames (in time order), 8 bytes."""
    if not frames:
        raise CorruptMedia("no frames to compute the videohash from")
    images = [Image.fromarray(np.ascontiguousarray(f)) for f in frames]
    wavelet_bits = _wavelet_hash(_jpeg_round_trip(_collage(images)))
    colour_bits = np.array(
        [d == e for d, e in zip(_tile_colours(images), EXPECTED_COLOURS, strict=True)]
    )
    return np.packbits(wavelet_bits ^ colour_bits).tobytes()


def _collage(images: list[Image.Image]) -> Image.Image:
    per_row = int(round(math.sqrt(len(images))))
    width, height = images[0].size
    scale = COLLAGE_WIDTH / (per_row * width)
    cell_w, cell_h = math.ceil(width * scale), math.ceil(height * scale)
    rows = math.ceil(len(images) / per_row)
    canvas = Image.new("RGB", (COLLAGE_WIDTH, math.ceil(scale * height * rows)))
    for n, img in enumerate(images):
        cell = img.copy()
        cell.thumbnail((cell_w, cell_h), Image.Resampling.LANCZOS)
        canvas.paste(cell, ((n % per_row) * cell_w, (n // per_row) * cell_h))
    return canvas


def _jpeg_round_trip(img: Image.Image) -> Image.Image:
    # The package hashes its collage as read back from collage.jpg (Pillow's
    # default quality 75); the loss moves block means by a hair near the median.
    buf = io.BytesIO()
    img.save(buf, "JPEG")
    return Image.open(io.BytesIO(buf.getvalue()))


def _wavelet_hash(img: Image.Image) -> np.ndarray:
    """imagehash.whash(img) (hash_size 8, Haar, top LL removed) without pywt:
    after removing the mean, Haar's level-k LL band is the image's
    2^k x 2^k block sums scaled by a constant, so comparing the 8x8 block means
    with their median gives the same bits."""
    side = 2 ** int(math.log2(min(img.size)))
    side = max(side, HASH_SIDE)
    gray = img.convert("L").resize((side, side), Image.Resampling.LANCZOS)
    pixels = np.asarray(gray, dtype=np.float64) / 255.0
    block = side // HASH_SIDE
    means = pixels.reshape(HASH_SIDE, block, HASH_SIDE, block).mean(axis=(1, 3))
    return (means > np.median(means)).ravel()


def _tile_colours(images: list[Image.Image]) -> list[str]:
    width, height = images[0].size
    strip = Image.new("RGB", (width * len(images), height))
    for n, img in enumerate(images):
        strip.paste(img, (n * width, 0))
    tile_w, tile_h = strip.width // 8, strip.height // 8
    return [
        _dominant_colour(strip.crop((x * tile_w, y * tile_h, (x + 1) * tile_w, (y + 1) * tile_h)))
        for y in range(8)
        for x in range(8)
    ]


def _dominant_colour(tile: Image.Image) -> str:
    side = TILE_SAMPLE_SIDE
    rgb = np.asarray(tile.resize((side, side), Image.Resampling.LANCZOS).convert("RGB"))
    r, g, b = (rgb[..., i].astype(np.int16) for i in range(3))
    counts = {
        "r": int(((r > g) & (r > b)).sum()),
        "g": int(((g > b) & (g > r)).sum()),
        "b": int(((b > r) & (b > g)).sum()),
    }
    counts["l"] = side * side - sum(counts.values())
    if counts["l"] >= max(counts.values()):
        # The package takes max() over a set of labels, so a tie with "l" is
        # decided by the set's (per-process) order; we say "l". Rare on frames.
        return "l"
    margin = int(side * side * DOMINANCE_MARGIN)
    for colour, (a, b_) in {"r": ("g", "b"), "g": ("b", "r"), "b": ("r", "g")}.items():
        if counts[colour] - margin > counts[a] and counts[colour] - margin > counts[b_]:
            return colour
    return "n"
