"""Images: decode within limits, then the signals that find re-uploads.

Exact: MD5 and SHA-256 of the bytes. Perceptual: PDQ (Meta's reference C++
through `pdqhash`) with quality, on several views of the picture.

* "original" is what other platforms compute, so hash sets can be exchanged:
  like Meta's current C++ hasher, images over 512 px are squashed to 512x512 by
  nearest neighbour first (also what makes hashing fast); no EXIF rotation.
* Known images (hash_known) also store views that survive common edits: the
  picture without uniform borders, crops that a re-upload may have made, and
  crops that leave out each corner (where logos and watermarks go), unless all
  four corners are plain background (a roundel or a logo on white) and the
  picture is small; an upload with plain corners gets no corner crops.
* Uploads (hash_query) are hashed as the 8 dihedral transforms (mirror and
  90-degree rotations cost PDQ almost nothing extra), the same corner-free crops,
  and the rectangles framed by long straight edges (caption bars, a photo inside
  a screenshot, letterboxing of any colour), and, when those squashed it, the
  picture "unsquashed" at its own aspect, as python-threatexchange and HMA hash
  it, so partners' hashes find their exact re-uploads (bench/partner_pdq.py).

Both also get one `local_features` signal (hashsvc/media/local_features.py:
keypoints and descriptors, variant "original") when the picture has enough
distinctive, well-spread keypoints; flat pictures get none. PDQ cannot see a
crop of more than a few percent, a tilt or a collage; these can.
"""

from __future__ import annotations

import hashlib
import io
import os
import threading
import warnings
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import pdqhash
from PIL import Image, UnidentifiedImageError

from hashsvc.base.errors import CorruptMedia, InvalidArgument, TooLarge, UnsupportedMedia
from hashsvc.base.media_kinds import CONTRAST_VARIANT, ENLARGED_VARIANT
from hashsvc.base.signals import LOCAL_FEATURES, Signal
from hashsvc.media import local_features, local_regions, pdq_luma, regions
from hashsvc.media.limits import STAGE_LOCAL, STAGE_VIEWS, ImageLimits
from hashsvc.media.machine import spare_core

FORMATS = {"JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "MPO"}
# pdqhash.compute_dihedral's order, named by what was done to the upload.
DIHEDRAL = (
    "original", "rotate_90", "rotate_180", "rotate_270",
    "flip_vertical", "flip_horizontal", "transpose", "transverse",
)  # fmt: skip
REFERENCE_SIDE = 512  # the C++ hasher's squash size
# Views are hashed small (PDQ reads a 64x64 summary), and not at a power of two:
# pdqhash is measurably slower on those.
VIEW_SIDE = 240
# An upload is decoded with at least this short side (a JPEG at a reduced DCT
# scale): local features need more pixels than PDQ's views. A picture inside a
# 2x2 collage of a 1600x1004 upload kept 8 inliers decoded at 240 (400x251),
# 22 at 320 (800x502), as many as at full size.
QUERY_DECODE_SIDE = 320
# The tiles of a collage or feed screenshot (hashsvc/media/local_regions.py)
# are cut from the upload decoded at least this large: a 3x3 tile of a
# 1080 px collage decoded at 540 was found in 0.13 of uploads at review, at
# full size in 0.84 (bench/robustness.py). Only uploads with tiles pay for it.
TILE_DECODE_SIDE = 1024
# ... unless every tile is at least this long on its long side in the upload
# as decoded for its other signals: 3/4 of the extraction's max_side, as a
# 1024x768 upload's own features (decoded at 512x384). Measured by
# bench/robustness.py: recall of collages, feeds and captioned crops unchanged.
TILE_CUT_MIN_SIDE = 480
# Crops a re-upload may have made, as (keep share, vertical anchor, horizontal anchor).
KNOWN_CROPS = [(0.95, ay, ax) for ay in (0.0, 0.5, 1.0) for ax in (0.0, 0.5, 1.0)]
# Crops anchored in each corner that leave out the opposite corner's logo area.
CORNER_KEEP = 0.68
CORNERS = [(0.0, 0.0), (0.0, 1.0), (1.0, 0.0), (1.0, 1.0)]
# An upload whose four corners are plain (a roundel, an oval, a logo or clip art
# on a plain background) gets no corner views, nor does such a known picture
# under PLAIN_KNOWN_MAX_SIDE: their crops are mostly the
# shape's outline against the background, the same for every such picture. On
# the bench corpus 29 small roundels on white were within PDQ 28-56 of 81
# unrelated pictures by corner views alone (3 at BLOCK); this test holds 107 of
# the 110 pictures in those pairs, and one side of every pair. A corner is plain
# when the patch of this share of each side there has a grey-level standard
# deviation at most PLAIN_CORNER_STD (JPEG ringing on white stays under 2).
PLAIN_CORNER_PATCH = 0.1
PLAIN_CORNER_STD = 4.0
# A known picture keeps its corner views (and corner-anchored crops) when it
# has plain corners but a short side of at least this many pixels.
PLAIN_KNOWN_MAX_SIDE = 256
MIN_TRIM = 0.02  # trimming less than this is noise, not a border
# Views of the whole picture are always kept (the policy caps low-quality
# matches at REVIEW); a derived view (crop, region, band) this flat is no
# evidence at all: a patch of sky or of app background matches any other.
WHOLE_PICTURE_VIEWS = {*DIHEDRAL, "untrimmed", "trimmed", "small", "unsquashed"}
MIN_DERIVED_QUALITY = 50
# Partners' picture hashes (python-threatexchange, HMA) are PDQ at full
# resolution, aspect kept; the views above squash by nearest neighbour, which
# moved such a hash up to 108 bits on textured 256 px pictures (bench/
# partner_pdq.py). An upload's picture is also hashed as decoded, box-reduced
# while its short side stays >= this: within 14 bits of the full-resolution
# hash on every vector picture, at ~1 ms (a 1600 px PNG: ~5 ms).
UNSQUASHED_MIN_SIDE = 256

# Our own pixel limit (ImageLimits) is checked from the header before any pixel
# is decoded; Pillow's global one would override the configured value.
Image.MAX_IMAGE_PIXELS = None


# ------------------------------------------------------------------ decoding


def is_animated_gif(data: bytes) -> bool:
    """A GIF of more than one frame: hashed as a video, not as a picture."""
    if not data.startswith((b"GIF87a", b"GIF89a")):
        return False
    try:
        with Image.open(io.BytesIO(data)) as img:
            return getattr(img, "n_frames", 1) > 1
    except Exception:
        return False  # the image reader reports what is wrong with it


def decode_rgb(data: bytes, limits: ImageLimits, at_least: int = 0) -> np.ndarray:
    """HxWx3 uint8 of the first frame, or a typed error saying what is wrong.

    at_least > 0 lets a JPEG be decoded at a reduced scale (1/2, 1/4, 1/8, done
    inside the DCT, several times faster) as long as both sides stay >= at_least.
    """
    return _decode(data, limits, at_least, "RGB")


def decode_query(data: bytes, limits: ImageLimits, at_least: int = 0) -> np.ndarray:
    """An upload's picture as its signals need it: a colour JPEG decoded at a
    reduced scale (see decode_rgb) as its H x W uint8 luma, anything else as
    H x W x 3 RGB exactly as decode_rgb; errors as decode_rgb. Every query
    signal reads luma only (PDQ views, ORB, tiles), and a JPEG's luma is its Y
    channel: decoded alone, without the chroma's inverse DCT, upsampling and
    colour conversion, ~0.4 ms of a 1024x768 upload's 1.8 ms. Y differs from
    the luma of the decoded RGB by rounding (mean 0.16 grey levels) and where
    the RGB was clipped (a few levels): the whole-picture views move 0-12 bits
    (tests/test_image_cost.py). A JPEG decoded whole keeps its RGB: its
    unsquashed view is then the partner's full-resolution hash exactly
    (tests/test_partner_pdq.py), and a small picture costs little to decode."""
    return _decode(data, limits, at_least, "L")


def _decode(data: bytes, limits: ImageLimits, at_least: int, mode: str) -> np.ndarray:
    if not data:
        raise InvalidArgument("empty media")
    if len(data) > limits.max_bytes:
        raise TooLarge(f"image is {len(data)} bytes; the limit is {limits.max_bytes}")
    with warnings.catch_warnings():
        # Pillow's own bomb check only warns below 2x its limit; ours is explicit.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data))
        except UnidentifiedImageError:
            raise UnsupportedMedia(
                "not a supported image (JPEG, PNG, WebP, GIF, BMP, TIFF)"
            ) from None
        except Image.DecompressionBombError as exc:
            raise TooLarge(f"image has too many pixels: {exc}") from None
        except (OSError, SyntaxError, ValueError) as exc:
            raise CorruptMedia(f"corrupt or truncated image: {exc}") from None
        if img.format not in FORMATS:
            raise UnsupportedMedia(f"unsupported image format {img.format}")
        width, height = img.size
        if width * height > limits.max_pixels or max(width, height) > limits.max_side:
            raise TooLarge(
                f"image is {width}x{height} pixels; the limits are {limits.max_pixels} pixels"
                f" and {limits.max_side} per side"
            )
        try:
            img.seek(0)  # first frame of an animation
            luma_only = False
            if at_least and img.format == "JPEG":
                # Pillow's draft scale: the largest of 1/2, 1/4, 1/8 keeping both sides >= at_least
                reduced = min(width // at_least, height // at_least) >= 2
                # a colour JPEG drafted as "L" decodes its Y channel only
                luma_only = reduced and mode == "L" and img.mode == "RGB"
                img.draft("L" if luma_only else "RGB", (at_least, at_least))
            img.load()
            if luma_only and img.mode == "L":
                return np.asarray(img)
            return np.asarray(img if img.mode == "RGB" else _to_rgb(img))
        except Image.DecompressionBombError as exc:
            raise TooLarge(f"image has too many pixels: {exc}") from None
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise CorruptMedia(f"corrupt or truncated {img.format} image: {exc}") from None


def _to_rgb(img: Image.Image) -> Image.Image:
    # Pillow's own conversion for every mode (L, LA, P, RGBA, CMYK, I;16, ...) is
    # what python-threatexchange feeds pdqhash, so hashes and qualities agree.
    return img.convert("RGB")


# ------------------------------------------------------------------ hashing


def squash(rgb: np.ndarray, side: int = REFERENCE_SIDE) -> np.ndarray:
    """Nearest-neighbour resize to side x side when larger, indexing like CImg
    (src = floor(dst * n / side)), which is what the C++ reference does."""
    h, w = rgb.shape[:2]
    if h <= side and w <= side:
        return rgb
    ys = (np.arange(side) * h) // side
    xs = (np.arange(side) * w) // side
    return np.take(np.take(rgb, ys, axis=0), xs, axis=1)


def _shrink(rgb: np.ndarray, side: int = VIEW_SIDE) -> np.ndarray:
    """Nearest-neighbour shrink keeping the aspect, for derived views."""
    h, w = rgb.shape[:2]
    scale = side / max(h, w)
    if scale >= 1:
        return rgb
    ys = (np.arange(max(1, int(h * scale))) / scale).astype(np.intp)
    xs = (np.arange(max(1, int(w * scale))) / scale).astype(np.intp)
    return np.take(np.take(rgb, ys, axis=0), xs, axis=1)


def _pack(bits: np.ndarray) -> bytes:
    # bit 0 of pdqhash's array is the most significant: canonical hex order
    return np.packbits(bits.astype(np.uint8)).tobytes()


def pdq_hash(rgb: np.ndarray) -> tuple[bytes, int]:
    bits, quality = pdqhash.compute(np.ascontiguousarray(rgb))
    return _pack(bits), int(quality)


def _pdq_signal(
    view: np.ndarray, variant: str, hasher: Callable[[np.ndarray], tuple[bytes, int]] = pdq_hash
) -> Signal:
    """PDQ of an RGB view (pdq_hash), or of a luma view (hasher=pdq_luma.pdq:
    an upload's views, see query_views)."""
    value, quality = hasher(view)
    return Signal("pdq", value, quality, variant)


def _exact(data: bytes) -> list[Signal]:
    return [
        Signal("md5", hashlib.md5(data).digest()),
        Signal("sha256", hashlib.sha256(data).digest()),
    ]


def _gray(rgb: np.ndarray) -> np.ndarray:
    """float32 grey of an RGB picture, or of a luma one (an upload's JPEG)."""
    if rgb.ndim == 2:
        return rgb.astype(np.float32)
    # Weighted sum, not a matrix product: BLAS threads in two worker processes
    # on two cores only fight each other.
    r, g, b = (rgb[..., i].astype(np.float32) for i in range(3))
    return 0.299 * r + 0.587 * g + 0.114 * b


def _box_or_none(box: regions.Box) -> regions.Box | None:
    return None if max(box[0], box[1], 1 - box[2], 1 - box[3]) < MIN_TRIM else box


def _crop(rgb: np.ndarray, keep: float, anchor_y: float, anchor_x: float) -> np.ndarray:
    h, w = rgb.shape[:2]
    kh, kw = max(1, int(h * keep)), max(1, int(w * keep))
    top, left = int((h - kh) * anchor_y), int((w - kw) * anchor_x)
    return rgb[top : top + kh, left : left + kw]


def _plain_corners(gray: np.ndarray) -> bool:
    """Whether all four corners of the picture are plain background."""
    h, w = gray.shape
    ph, pw = max(2, int(h * PLAIN_CORNER_PATCH)), max(2, int(w * PLAIN_CORNER_PATCH))
    patches = (gray[:ph, :pw], gray[:ph, -pw:], gray[-ph:, :pw], gray[-ph:, -pw:])
    return all(float(patch.std()) <= PLAIN_CORNER_STD for patch in patches)


def _corner_views(view: np.ndarray, hasher=pdq_hash) -> list[Signal]:
    return [
        _pdq_signal(_crop(view, CORNER_KEEP, ay, ax), f"corner_{int(ay)}{int(ax)}", hasher)
        for ay, ax in CORNERS
    ]


class _Views:
    """The decoded picture at the sizes hashing needs. Boxes are fractions of
    the picture, so one found on the small copy cuts the same region from the
    512 px one; PDQ reads a 64x64 summary, so the squash's change of aspect does
    not matter to it."""

    def __init__(self, rgb: np.ndarray, reference_side: int = REFERENCE_SIDE) -> None:
        # what the "original" hash is computed on
        self.reference = squash(rgb, reference_side)
        self.small = _shrink(self.reference, VIEW_SIDE)
        self.gray = _gray(self.small)
        self.border = _box_or_none(regions.trim_uniform_borders(self.gray))

    def picture(self) -> np.ndarray:
        """The reference-size picture without uniform borders."""
        return regions.cut(self.reference, self.border) if self.border else self.reference

    def picture_small(self) -> tuple[np.ndarray, np.ndarray]:
        if not self.border:
            return self.small, self.gray
        return regions.cut(self.small, self.border), regions.cut(self.gray, self.border)


# Content bands: strict (any 3 busy rows are content) and wide (a run of 8% of
# the side is needed, so lines of caption text are cut away too).
CONTENT_RUNS = {"content": 0.0, "content_wide": 0.08}


def _content_views(small: np.ndarray, gray: np.ndarray, hasher=pdq_hash) -> list[Signal]:
    boxes: list[regions.Box] = []
    signals = []
    found = regions.content_boxes(gray, tuple(CONTENT_RUNS.values()))
    for name, content in zip(CONTENT_RUNS, found, strict=True):
        box = _box_or_none(content)
        if box and box not in boxes:
            boxes.append(box)
            signals.append(_pdq_signal(regions.cut(small, box), name, hasher))
    return signals


def _informative(signals: list[Signal]) -> list[Signal]:
    return [
        s
        for s in signals
        if s.kind != "pdq"
        or s.variant in WHOLE_PICTURE_VIEWS
        or (s.quality or 0) >= MIN_DERIVED_QUALITY
    ]


def hash_known(data: bytes, limits: ImageLimits) -> list[Signal]:
    return [*_exact(data), *picture_signals(data, limits, for_query=False)]


def picture_signals(
    data: bytes,
    limits: ImageLimits,
    for_query: bool,
    part: int | None = None,
    stage: str | None = None,
    decoded: np.ndarray | None = None,
) -> list[Signal]:
    """A picture's PDQ views and local features (not its exact hashes), for a
    query (`part` 0 or 1: one half, as in hash_query; `stage` STAGE_VIEWS or
    STAGE_LOCAL: an upload's two steps, which are its two halves: part 0, the
    views of the whole picture, and part 1, the band and region views with
    the local features, see hashsvc/media/dispatch.py; `decoded`: the upload
    as its first step decoded it, see first_step) or a known picture.

    The local features of the whole picture (ORB) run in a second thread
    while this one hashes the PDQ views and then an upload's tiles
    (ImageLimits.local_features_thread): OpenCV releases the GIL, so an
    upload's latency drops by the shorter thread's work when a core is free.
    Under full load the CPU per upload is the same."""
    # Uploads are only compared with our own stored views, never exported, so
    # they can be decoded and hashed small: a JPEG at a reduced DCT scale (enough
    # for local features), every PDQ view at VIEW_SIDE. The cost is a few bits
    # (bench/robustness.py measures it).
    if decoded is not None:
        rgb = decoded
    elif for_query:
        rgb = decode_query(data, limits, at_least=QUERY_DECODE_SIDE)  # luma for a JPEG
    else:
        rgb = decode_rgb(data, limits)

    # Two steps are a split query's two halves, one after the other: the
    # whole picture's views decide a flood's blocked copies (~2 ms of views
    # less than all of them), and the band and region views of an upload that
    # is not blocked are hashed in the second step, beside its local features.
    if stage == STAGE_VIEWS:
        part = 0
    elif stage == STAGE_LOCAL:
        part = 1
    if part == 0:
        # the regions' half (part 1) carries the local features
        return upload_views(rgb, part)
    # ORB and the tiles both read the grey picture: converted once
    grey = rgb if rgb.ndim == 2 else np.asarray(Image.fromarray(rgb).convert("L"))

    def local() -> list[Signal]:
        found = local_feature_signals(grey, contrast_below=limits.features_contrast_below)
        if max(grey.shape) < limits.features_enlarge_below:  # small as decoded; as stored?
            found += enlarged_feature_signals(grey, _stored_side(data), limits)
        return found

    # a second thread only on a core to spare (on a loaded one its GIL waits cost more)
    pending = _in_background(local) if limits.local_features_thread and spare_core() else None
    views = upload_views(rgb, part) if for_query else known_views(rgb)
    # An upload's tiles (a collage's pictures, a feed's) in this thread, after
    # the views: the whole picture's ORB is the longer thread's work alone
    # (a 1024x768 upload: ~6.5 ms against ~2.8 of views), and an upload with
    # tiles adds their decode and features (several ms) to the shorter one.
    # The signals keep their order.
    tiles = region_signals(rgb, data, limits, grey) if for_query else []
    return [*views, *(pending.result() if pending is not None else local()), *tiles]


def first_step(data: bytes, limits: ImageLimits) -> tuple[list[Signal], np.ndarray]:
    """An upload's first step of two (STAGE_VIEWS): the PDQ views of its whole
    picture (upload_views' part 0), and the picture as decoded for them,
    which its second step (picture_signals' `decoded`) takes instead of
    decoding the upload again."""
    rgb = decode_query(data, limits, at_least=QUERY_DECODE_SIDE)
    return upload_views(rgb, 0), rgb


_background: ThreadPoolExecutor | None = None
_background_lock = threading.Lock()


def _in_background(work: Callable[[], list[Signal]]) -> Future[list[Signal]]:
    # One pool per process, started at its first picture: a hashing worker
    # runs one job at a time, an in-process core (workers = 0) one per caller.
    global _background
    with _background_lock:
        if _background is None:
            _background = ThreadPoolExecutor(
                max(1, os.cpu_count() or 1), thread_name_prefix="local-features"
            )
    return _background.submit(work)


def local_feature_signals(
    rgb: np.ndarray,
    variant: str = "original",
    position: float | None = None,
    limits: local_features.LocalFeatureLimits = local_features.DEFAULT_LIMITS,
    contrast_below: int = 0,
) -> list[Signal]:
    """The picture's local_features signal, or none when it has too few
    distinctive, well-spread keypoints to be evidence. `variant` and
    `position` say where it was taken, as for PDQ (a video frame, a page).
    `rgb` may be the picture in grey already (H x W): keypoints are found
    on the grey picture either way. A picture with fewer than `contrast_below`
    keypoints (low contrast; 0: none) also gets the features of its equalised
    self (variant contrast_variant(variant); local_features.extract_contrast)."""
    # contrast_below 0: extract_contrast never equalises (as extract alone)
    found, equalised = local_features.extract_contrast(Image.fromarray(rgb), contrast_below, limits)
    return [
        Signal(LOCAL_FEATURES.name, local_features.encode(features), None, name, position)
        for name, features in ((variant, found), (contrast_variant(variant), equalised))
        if features is not None
    ]


def contrast_variant(variant: str) -> str:
    """The variant of a picture's features extracted equalised (CONTRAST_VARIANTS)."""
    return CONTRAST_VARIANT if variant == "original" else f"{variant}:{CONTRAST_VARIANT}"


def enlarged_feature_signals(
    grey: np.ndarray, stored_side: int, limits: ImageLimits
) -> list[Signal]:
    """The local_features signal of a small picture (long side under
    limits.features_enlarge_below as stored) extracted from it enlarged to
    features_enlarge_side (variant "enlarged"), beside the one at its own size:
    ORB's 31 px edge bands take most of a small picture's keypoints, and a
    small copy turned or cut by 20-30% kept a strip of them or none. Known
    pictures and uploads both get it, so both sides are compared at a size
    where their content is off the bands. None for larger pictures."""
    if not 0 < stored_side < limits.features_enlarge_below:
        return []
    picture = Image.fromarray(grey)
    factor = limits.features_enlarge_side / max(picture.size)
    if factor <= 1.0:
        return []
    size = (round(picture.width * factor), round(picture.height * factor))
    return local_feature_signals(
        np.asarray(picture.resize(size, Image.Resampling.BICUBIC)),
        variant=ENLARGED_VARIANT,
        contrast_below=limits.features_contrast_below,
    )


def known_views(rgb: np.ndarray) -> list[Signal]:
    """The PDQ views stored for a known picture (RGB array, any size): the
    reference hash first ("original"), then the crops and bands that uploads'
    views are compared with. Also used for PDF pages and embedded images."""
    views = _Views(rgb)
    signals = [_pdq_signal(views.reference, "original")]
    if views.border:
        signals.append(_pdq_signal(views.picture(), "trimmed"))
    # The picture as an upload's own views see it (hash_query works at
    # VIEW_SIDE): the dihedral hashes of a mirrored copy land closer to this.
    small_views = _Views(rgb, reference_side=VIEW_SIDE)
    signals.append(_pdq_signal(small_views.picture(), "small"))
    small, gray = views.picture_small()
    # A small shape on plain background: its crops from one side are its outline
    # again (after corner views, 2 corpus roundels of 72-74 px were still within
    # PDQ 46-56 of unrelated discs by these alone); its borders are trimmed, so
    # the centred crop is enough. A large one keeps them: a watermark in the
    # corner of scikit-image's retina (1411 px, a disc on black) is found by its
    # corner views, and the upload's own plain corners already rule out the pair.
    outline_only = _plain_corners(gray) and min(rgb.shape[:2]) < PLAIN_KNOWN_MAX_SIDE
    for keep, ay, ax in KNOWN_CROPS:
        if outline_only and (ay, ax) != (0.5, 0.5):
            continue
        signals.append(_pdq_signal(_crop(small, keep, ay, ax), f"crop_{keep:.2f}_{ay}_{ax}"))
    if not outline_only:
        signals.extend(_corner_views(small))
    signals.extend(_content_views(small, gray))
    return _informative(signals)


def hash_query(data: bytes, limits: ImageLimits, part: int | None = None) -> list[Signal]:
    """All signals of an upload, or (part = 0 or 1) one half of them."""
    exact = _exact(data) if part in (None, 0) else []
    return [*exact, *picture_signals(data, limits, for_query=True, part=part)]


def region_signals(
    rgb: np.ndarray,
    data: bytes | None = None,
    limits: ImageLimits | None = None,
    grey: np.ndarray | None = None,
) -> list[Signal]:
    """local_features signals of the pictures inside an upload (a collage
    tile, a picture in a feed screenshot: hashsvc/media/local_regions.py).
    Tiles are found on `rgb` as decoded for the upload's other signals (RGB,
    or luma: decode_query), and cut from the upload decoded again at
    TILE_DECODE_SIDE when `rgb` is a reduced JPEG decode (`data`, `limits`)
    and the upload has tiles."""
    if grey is None:  # `rgb` in grey, when the caller has it
        grey = rgb if rgb.ndim == 2 else np.asarray(Image.fromarray(rgb).convert("L"))
    upload_side = _stored_side(data) if data is not None else max(rgb.shape[:2])
    boxes = local_regions.tiles(
        np.asarray(grey, dtype=np.float32), scale=max(1.0, upload_side / max(rgb.shape[:2]))
    )
    if not boxes:
        return []
    full = rgb
    if data is not None and limits is not None and _tiles_need_pixels(rgb, boxes, upload_side):
        full = decode_query(data, limits, at_least=TILE_DECODE_SIDE)
    if full.shape[:2] != rgb.shape[:2]:
        sx, sy = full.shape[1] / rgb.shape[1], full.shape[0] / rgb.shape[0]
        boxes = [
            (round(b[0] * sx), round(b[1] * sy), round(b[2] * sx), round(b[3] * sy)) for b in boxes
        ]
    return [
        Signal(LOCAL_FEATURES.name, local_features.encode(found), None, variant)
        for variant, found in local_regions.tile_features(
            Image.fromarray(full),
            boxes,
            contrast_below=limits.features_contrast_below if limits is not None else 0,
        )
    ]


def _stored_side(data: bytes) -> int:
    """The long side of an upload as stored (its header only)."""
    with Image.open(io.BytesIO(data)) as img:
        return max(img.size)


def _tiles_need_pixels(rgb: np.ndarray, boxes: list[local_regions.Box], upload_side: int) -> bool:
    """Whether the tiles are worth decoding the upload again at TILE_DECODE_SIDE:
    the picture was decoded smaller than it is (a reduced JPEG decode) and a tile
    is small in it. One large tile (a photo under a caption, beside a flat sky)
    is cut from the decode at hand, at about the size the whole upload's own
    features are extracted at: the second decode and the larger extraction
    cost ~10 ms of a 1024x768 upload's ~20 (bench/profile_match.py)."""
    if min(rgb.shape[:2]) >= TILE_DECODE_SIDE:
        return False
    if upload_side <= max(rgb.shape[:2]):
        return False  # decoded whole already
    return any(max(b[2] - b[0], b[3] - b[1]) < TILE_CUT_MIN_SIDE for b in boxes)


def upload_views(rgb: np.ndarray, part: int | None = None) -> list[Signal]:
    """The PDQ views of an uploaded picture: query_views and, when those
    squashed it, the picture hashed as partners hash it (unsquashed_view)."""
    # in the order of a split query's halves and of two steps: part 0's views
    # and the unsquashed one, then part 1's
    first, second = _query_view_parts(rgb, part)
    if part in (None, 0) and max(rgb.shape[:2]) > VIEW_SIDE:
        first.append(unsquashed_view(rgb))
    return [*first, *second]


def unsquashed_view(rgb: np.ndarray) -> Signal:
    """PDQ of the whole picture at its own aspect, as python-threatexchange and
    HMA hash it at full resolution; large pictures are box-reduced first (PDQ's
    own filter averages boxes too, so little changes but the cost)."""
    factor = min(rgb.shape[:2]) // UNSQUASHED_MIN_SIDE
    if factor > 1:
        rgb = np.asarray(Image.fromarray(np.ascontiguousarray(rgb)).reduce(factor))
    return _pdq_signal(pdq_luma.luma(rgb), "unsquashed", pdq_luma.pdq)


def query_views(rgb: np.ndarray, part: int | None = None) -> list[Signal]:
    """The PDQ views of an upload's picture (RGB or luma array, best at least
    VIEW_SIDE on its short side): dihedral, trimmed, corners, bands, regions.
    Also used for video frames and PDF pages of a query.

    Every view is a rectangle of one VIEW_SIDE picture (here `reference` and
    `small` are the same array), hashed from its luma computed once
    (hashsvc/media/pdq_luma.py: the bits pdqhash gives, ~8x cheaper a view)."""
    first, second = _query_view_parts(rgb, part)
    return [*first, *second]


def _query_view_parts(
    rgb: np.ndarray, part: int | None = None
) -> tuple[list[Signal], list[Signal]]:
    """query_views of part 0 (the whole picture: dihedral, untrimmed, corners)
    and of part 1 (bands, regions): each empty when `part` leaves it out."""
    views = _Views(rgb, reference_side=VIEW_SIDE)
    whole = pdq_luma.luma(views.small)
    small = regions.cut(whole, views.border) if views.border else whole
    gray = views.picture_small()[1]
    hasher = pdq_luma.pdq
    signals: list[Signal] = []
    second: list[Signal] = []
    if part in (None, 0):
        if views.border:
            # the upload as is, as another platform would hash it
            signals.append(_pdq_signal(whole, "untrimmed", hasher))
        hashes, quality = pdq_luma.pdq_dihedral(small)
        for name, value in zip(DIHEDRAL, hashes, strict=True):
            signals.append(Signal("pdq", value, quality, name))
        if not _plain_corners(gray):
            signals.extend(_corner_views(small, hasher))
    if part in (None, 1):
        second.extend(_content_views(small, gray, hasher))
        for n, box in enumerate(regions.candidate_boxes(gray)):
            second.append(_pdq_signal(regions.cut(small, box), f"region_{n}", hasher))
        textured = regions.textured_box(gray)
        if textured is not None:
            second.append(_pdq_signal(regions.cut(small, textured), "textured", hasher))
    return _informative(signals), _informative(second)
