"""Local features (issue 18): which detector, which settings, which thresholds.

    .venv/bin/python bench/local_features.py --short           # a few minutes
    .venv/bin/python bench/local_features.py                   # every config
    .venv/bin/python bench/local_features.py --config orb-500 --pictures DIR

Known pictures: the real photographs of bench/photos.py, one frame of each
distinct video in the vectors, the pictures under --pictures DIR (e.g. clip
art unpacked from a Debian package; PNG/JPEG, searched recursively), and hard
ones (text screenshots, document pages, logo templates, patterns).

Positives: each real photograph under the new transforms (crops off-centre,
tilts cropped to fit, a tile of a 2x2 / 3x3 collage, inside a screenshot among
other pictures, slight perspective; each also with a caption bar and JPEG
re-encoding) and those of bench/transforms.py, verified against its original.

Negatives: every query (transformed photographs and hard pictures) verified
against every known picture it has nothing in common with (a collage tile or
screenshot neighbour is in common). Printed: per config, recall at review and
block per transform at the default thresholds (LocalThresholds), extraction
and verification ms (medians), blob bytes, and the closest unrelated pair with
its margin to the review thresholds.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from photos import SHARED, load_photos
from PIL import Image, ImageDraw
from transforms import TRANSFORMS, caption_bar, jpeg

from hashsvc.matching.local_geometry import DEFAULT_THRESHOLDS, LocalThresholds, verify
from hashsvc.media.local_features import LocalFeatureLimits, encode, extract
from hashsvc_testing.local_media import (
    ARABIC,
    LATIN,
    collage,
    crop,
    document_page,
    logo_template,
    perspective,
    rotate,
    screenshot_grid,
    text_screenshot,
)

_DISTINCT_VIDEOS = [
    "threatexchange/tmk/sample-videos/chair-20-sd-bar.mp4",
    "threatexchange/tmk/sample-videos/doorknob-hd-no-bar.mp4",
    "threatexchange/tmk/sample-videos/pattern-hd-no-bar.mp4",
    "videohash/rocket.mkv",
    "perception/videos/v2s.mov",
]

CONFIGS: dict[str, tuple[LocalFeatureLimits, LocalFeatureLimits]] = {}


def _config(name: str, known: LocalFeatureLimits, query: LocalFeatureLimits | None = None):
    CONFIGS[name] = (known, query or known)


_config("orb-500", LocalFeatureLimits())
_config("orb-500-unbalanced", LocalFeatureLimits(oversample=1, balance_grid=1))
_config("orb-300", LocalFeatureLimits(max_keypoints=300))
_config("orb-1000", LocalFeatureLimits(max_keypoints=1000))
_config("orb-500-side480", LocalFeatureLimits(max_side=480))
_config("orb-500-side800", LocalFeatureLimits(max_side=800))
_config("orb-500-fast10", LocalFeatureLimits(fast_threshold=10))
_config("orb-500-fast30", LocalFeatureLimits(fast_threshold=30))
_config("orb-500-pyr4x1.4", LocalFeatureLimits(pyramid_levels=4, pyramid_scale=1.4))
_config(
    "orb-500-q1000x1024",
    LocalFeatureLimits(),
    LocalFeatureLimits(max_keypoints=1000, max_side=1024),
)
_config("akaze-500", LocalFeatureLimits(detector="akaze"))
_config("brisk-500", LocalFeatureLimits(detector="brisk"))
SHORT_CONFIGS = ["orb-500", "orb-500-q1000x1024", "akaze-500", "brisk-500"]


# --- pictures -------------------------------------------------------------------


@dataclass
class Picture:
    name: str
    img: Image.Image
    groups: frozenset[str]  # what it shows; pictures sharing none are unrelated
    kind: str = "photo"  # photo, extra, hard


def _video_frames() -> list[Picture]:
    import av

    out = []
    for rel in _DISTINCT_VIDEOS:
        path = SHARED / rel
        if not path.exists():
            continue
        with av.open(str(path)) as container:
            for i, frame in enumerate(container.decode(video=0)):
                if i == 60:
                    out.append(
                        Picture(
                            f"frame-{path.name}",
                            frame.to_image().convert("RGB"),
                            frozenset({path.name}),
                        )
                    )
                    break
    return out


def real_photos(limit: int | None) -> list[Picture]:
    pictures = []
    for name, img in load_photos(limit):
        # the two EXIF test pictures are one photograph
        group = "exif-rotn" if name.startswith("exif-rotn") else name
        if name.startswith("frame-"):
            continue  # one frame of every distinct video is added below
        pictures.append(Picture(name, img, frozenset({group})))
    pictures += _video_frames()
    return pictures[:limit] if limit else pictures


def extra_pictures(folders: list[Path], limit: int) -> list[Picture]:
    paths = sorted(
        p for d in folders for p in d.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg")
    )
    rng = np.random.default_rng(7)
    rng.shuffle(paths)
    out = []
    for path in paths:
        if len(out) >= limit:
            break
        try:
            img = Image.open(path)
            if min(img.size) < 128:
                continue
            img = img.convert("RGBA")
            white = Image.new("RGBA", img.size, (255, 255, 255, 255))
            img = Image.alpha_composite(white, img).convert("RGB")
            img.thumbnail((1600, 1600))
        except OSError:
            continue
        out.append(Picture(f"extra-{path.stem}", img, frozenset({str(path)}), "extra"))
    return out


def hard_pictures(photos: list[Picture]) -> list[Picture]:
    out: list[Picture] = []

    def add(name, img):
        out.append(Picture(name, img, frozenset({name}), "hard"))

    for c in [(128, 128, 128), (5, 5, 5), (250, 250, 250), (30, 60, 120)]:
        add(f"flat-{c[0]}-{c[2]}", Image.new("RGB", (640, 480), c))
    ramp = np.linspace(0, 255, 640, dtype=np.float32)
    add("gradient-h", Image.fromarray(np.tile(ramp, (480, 1)).astype(np.uint8)).convert("RGB"))
    yy, xx = np.mgrid[0:480, 0:640]
    radial = np.hypot(xx - 320, yy - 240) / 400 * 255
    add("gradient-radial", Image.fromarray(radial.astype(np.uint8)).convert("RGB"))
    rng = np.random.default_rng(3)
    for seed in range(3):
        dark = np.clip(rng.normal(10 + seed * 4, 3, (480, 640, 3)), 0, 255).astype(np.uint8)
        add(f"dark-{seed}", Image.open(io.BytesIO(jpeg(Image.fromarray(dark), 40))).convert("RGB"))
    for period, angle in [(12, 0), (20, 0), (32, 30), (16, 45)]:
        img = Image.new("RGB", (640, 640), (255, 255, 255))
        draw = ImageDraw.Draw(img)
        for x in range(-640, 1280, period):
            draw.rectangle((x, -640, x + period // 2, 1280), fill=(0, 0, 0))
        add(f"stripes-{period}-{angle}", img.rotate(angle, fillcolor=(255, 255, 255)))
    for cell in (16, 40):
        idx = np.indices((640, 640)) // cell
        board = ((idx[0] + idx[1]) % 2 * 255).astype(np.uint8)
        add(f"checker-{cell}", Image.fromarray(board).convert("RGB"))
    for seed in range(3):
        noise = np.random.default_rng(seed).integers(0, 256, (40, 40, 3), dtype=np.uint8)
        add(f"noise-{seed}", Image.fromarray(noise).resize((640, 640), Image.Resampling.BICUBIC))
        fine = np.random.default_rng(seed + 10).integers(0, 256, (640, 640), dtype=np.uint8)
        add(f"finenoise-{seed}", Image.fromarray(fine).convert("RGB"))
    for i, text in enumerate(LATIN):
        add(f"text-latin-{i}", text_screenshot(text, False, dark=i % 2 == 1))
    for i, text in enumerate(ARABIC):
        add(f"text-arabic-{i}", text_screenshot(text, True, dark=i % 2 == 1))
    for i in range(4):
        add(f"document-{i}", document_page(i))
    # the template around different photos: each shows its photo (related to
    # it), none is related to another
    for p in photos[:6]:
        name = f"template-{p.name}"
        out.append(Picture(name, logo_template(p.img), frozenset({name, *p.groups}), "hard"))
    return out


# --- transforms -------------------------------------------------------------------


def _open(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data)).convert("RGB")


def captioned(img, rng):
    """A caption bar added, then re-encoded as a JPEG again (as apps do)."""
    return _open(jpeg(_open(caption_bar(img, rng)), 75))


NEW_TRANSFORMS = {
    "crop_5": lambda img, rng, o: (crop(img, rng, 0.05), []),
    "crop_12": lambda img, rng, o: (crop(img, rng, 0.12), []),
    "crop_20": lambda img, rng, o: (crop(img, rng, 0.20), []),
    "crop_30": lambda img, rng, o: (crop(img, rng, 0.30), []),
    "rotate_3": lambda img, rng, o: (rotate(img, rng, 3), []),
    "rotate_10": lambda img, rng, o: (rotate(img, rng, 10), []),
    "rotate_20": lambda img, rng, o: (rotate(img, rng, 20), []),
    "collage_2x2": lambda img, rng, o: collage(img, rng, 2, o),
    "collage_3x3": lambda img, rng, o: collage(img, rng, 3, o),
    "screenshot_grid": screenshot_grid,
    "perspective": lambda img, rng, o: (perspective(img, rng), []),
}


def queries_of(photo: Picture, others: list[Picture], seed: int, short: bool):
    """(transform name, query picture) for one photo: new ones plain and captioned, old ones."""
    other_imgs = [o.img for o in others]
    by_img = {id(o.img): o for o in others}
    for name, fn in NEW_TRANSFORMS.items():
        rng = np.random.default_rng(seed)
        img, used = fn(photo.img, rng, other_imgs)
        groups = photo.groups.union(*(by_img[id(u)].groups for u in used))
        yield name, Picture(f"{photo.name}/{name}", _open(jpeg(img, 85)), groups)
        if not short or name in ("crop_12", "rotate_10", "collage_3x3"):
            yield (
                f"{name}+caption",
                Picture(f"{photo.name}/{name}+caption", captioned(img, rng), groups),
            )
    if short:
        return
    for name, fn in TRANSFORMS.items():
        rng = np.random.default_rng(seed)
        yield (
            f"old:{name}",
            Picture(f"{photo.name}/{name}", _open(fn(photo.img, rng)), photo.groups),
        )


# --- measuring ----------------------------------------------------------------------


@dataclass
class Result:
    name: str
    recall: dict[str, list] = field(default_factory=lambda: defaultdict(list))
    negatives: list = field(default_factory=list)  # (verification, query, known)
    extract_ms: list = field(default_factory=list)
    verify_true_ms: list = field(default_factory=list)
    verify_false_ms: list = field(default_factory=list)
    blob_bytes: list = field(default_factory=list)
    refused: list = field(default_factory=list)


def _extract(img, limits, result, timed=True):
    t = time.thread_time()
    found = extract(img, limits)
    if timed:
        result.extract_ms.append((time.thread_time() - t) * 1e3)
    return found


def run(name, photos, extras, hard, args) -> Result:
    known_limits, query_limits = CONFIGS[name]
    result = Result(name)
    knowns = photos + extras + hard
    known_features = []
    for p in knowns:
        f = extract(p.img, known_limits)
        if f is None:
            result.refused.append(p.name)
        else:
            result.blob_bytes.append(len(encode(f)))
        known_features.append(f)
    by_group = defaultdict(list)
    for i, p in enumerate(knowns):
        for g in p.groups:
            by_group[g].append(i)

    def check_unrelated(q: Picture, qf):
        if qf is None:
            return
        for k, kf in zip(knowns, known_features, strict=True):
            if kf is None or q.groups & k.groups:
                continue
            t = time.thread_time()
            v = verify(qf, kf)
            result.verify_false_ms.append((time.thread_time() - t) * 1e3)
            if v is not None:
                result.negatives.append((v, q.name, k.name))

    for n, photo in enumerate(photos):
        others = [p for p in photos if not p.groups & photo.groups]
        kf = known_features[n]
        for tname, q in queries_of(photo, others, n, args.short):
            qf = _extract(q.img, query_limits, result)
            if tname == "old:mirror" and args.mirror:
                qf = _extract(
                    q.img.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
                    query_limits,
                    result,
                    timed=False,
                )
            v = None
            if qf is not None and kf is not None:
                t = time.thread_time()
                v = verify(qf, kf)
                result.verify_true_ms.append((time.thread_time() - t) * 1e3)
            result.recall[tname].append(v)
            if n % args.negative_every == 0 or tname.startswith(("collage", "screenshot")):
                check_unrelated(q, qf)
    for h in hard:
        check_unrelated(h, extract(h.img, query_limits))
    return result


def closeness(v, thresholds: LocalThresholds) -> float:
    """How far a verification is towards review (1.0 = at both review minima)."""
    return min(
        v.inliers / thresholds.review_inliers,
        v.coverage / thresholds.review_coverage,
        v.agreement / thresholds.review_agreement,
    )


def report(result: Result, thresholds: LocalThresholds) -> None:
    med = lambda xs: statistics.median(xs) if xs else float("nan")  # noqa: E731
    print(f"\n== {result.name}")
    print(
        f"extract {med(result.extract_ms):.2f} ms (p90"
        f" {np.percentile(result.extract_ms, 90):.2f}); verify true"
        f" {med(result.verify_true_ms):.2f} ms, unrelated {med(result.verify_false_ms):.3f} ms"
        " (CPU ms of the calling thread)"
        f" ({len(result.verify_false_ms)} pairs); blob {med(result.blob_bytes):.0f} B median,"
        f" {max(result.blob_bytes)} max; known pictures refused: {len(result.refused)}"
        f" ({', '.join(result.refused[:12])})"
    )
    print(f"{'transform':28s} {'n':>4s} {'review':>7s} {'block':>7s} {'inliers p50':>12s}")
    worst_review, worst_block = 1.0, 1.0
    for tname, vs in result.recall.items():
        levels = [thresholds.level(v) for v in vs]
        review = sum(lv in ("block", "review") for lv in levels) / len(vs)
        block = sum(lv == "block" for lv in levels) / len(vs)
        if not tname.startswith("old:") or tname in ("old:crop_5", "old:crop_12", "old:rotate_3"):
            worst_review, worst_block = min(worst_review, review), min(worst_block, block)
        inl = med([v.inliers if v else 0 for v in vs])
        print(f"{tname:28s} {len(vs):4d} {review:7.2f} {block:7.2f} {inl:12.0f}")
    print(f"worst new transform: review {worst_review:.2f}, block {worst_block:.2f}")
    false_review = [n for n in result.negatives if thresholds.level(n[0]) is not None]
    print(f"false matches at review or block: {len(false_review)}")
    for v, q, k in false_review[:10]:
        print(f"  FALSE {thresholds.level(v)}: {q} -> {k}: {v}")
    top = sorted(result.negatives, key=lambda n: -closeness(n[0], thresholds))[:5]
    for v, q, k in top:
        print(
            f"  closest unrelated: {q} -> {k}: inliers {v.inliers}, coverage {v.coverage:.3f},"
            f" agreement {v.agreement:.3f}, cells {v.cells}, scale {v.scale:.2f}, angle"
            f" {v.angle:.1f}; {closeness(v, thresholds):.2f} of the way to review"
        )
    for v, q, k in sorted(result.negatives, key=lambda n: -n[0].inliers)[:3]:
        print(
            f"  most inliers unrelated: {q} -> {k}: {v.inliers} inliers, coverage"
            f" {v.coverage:.3f}, cells {v.cells}"
        )
    most = max((n[0].inliers for n in result.negatives), default=0)
    widest = max((n[0].coverage for n in result.negatives), default=0.0)
    agreeing = max((n[0].agreement for n in result.negatives), default=0.0)
    print(
        f"  unrelated maxima (not one pair): inliers {most}, coverage {widest:.3f},"
        f" agreement {agreeing:.3f}; review margin on agreement"
        f" {thresholds.review_agreement / max(agreeing, 1e-9):.2f}x"
    )
    if args_dump := getattr(report, "dump", None):
        import json

        with open(args_dump, "a") as out:
            out.write(
                json.dumps(
                    {
                        "config": result.name,
                        "positives": {
                            t: [
                                (v.inliers, v.coverage, v.cells, v.agreement) if v else None
                                for v in vs
                            ]
                            for t, vs in result.recall.items()
                        },
                        "negatives": [
                            (v.inliers, v.coverage, v.cells, q, k, v.agreement)
                            for v, q, k in result.negatives
                        ],
                    }
                )
                + "\n"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--short", action="store_true", help="fewer photos, configs, transforms")
    parser.add_argument("--config", action="append", choices=sorted(CONFIGS))
    parser.add_argument(
        "--pictures",
        action="append",
        type=Path,
        default=[],
        help="folder of more real pictures (known, unrelated)",
    )
    parser.add_argument("--extra", type=int, default=300, help="most pictures from --pictures")
    parser.add_argument(
        "--negative-every",
        type=int,
        default=1,
        help="check every Nth photo's queries against all known pictures",
    )
    parser.add_argument(
        "--mirror",
        action="store_true",
        help="also extract the mirrored query (for the mirror transform)",
    )
    parser.add_argument("--dump", help="append every pair's figures (JSON lines) here")
    args = parser.parse_args()
    report.dump = args.dump  # type: ignore[attr-defined]
    photos = real_photos(12 if args.short else None)
    extras = extra_pictures(args.pictures, 60 if args.short else args.extra)
    hard = hard_pictures(photos)
    configs = args.config or (SHORT_CONFIGS if args.short else list(CONFIGS))
    print(
        f"{len(photos)} photos, {len(extras)} extra pictures, {len(hard)} hard pictures;"
        f" thresholds {DEFAULT_THRESHOLDS}"
    )
    sys.stdout.flush()
    for name in configs:
        report(run(name, photos, extras, hard, args), DEFAULT_THRESHOLDS)
        sys.stdout.flush()


if __name__ == "__main__":
    main()
