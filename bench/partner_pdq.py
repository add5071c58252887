"""Partner PDQ hashes of pictures: does an exact re-upload find them?

python-threatexchange and HMA hash a picture at full resolution
(`pdqhash.compute(np.asarray(Image.open(f).convert("RGB")))`, no EXIF
transpose; ../shared/vectors/MANIFEST.md section 1). For every image file in
the vectors this prints the distance from that hash to the closest PDQ view of
an upload of the same file (hash_query), the decision the default policy gives
it, and what the query hashing costs.

    PYTHONPATH=. python bench/partner_pdq.py
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pdqhash
from PIL import Image

from hashsvc.base.signals import hamming
from hashsvc.matching.policy import PdqPolicy
from hashsvc.media import image
from hashsvc.media.limits import ImageLimits
from hashsvc_testing.vectors import require

SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}
LIMITS = ImageLimits(max_pixels=100_000_000)


def pytx_pdq(path: Path) -> tuple[bytes, int]:
    """What python-threatexchange / HMA compute for a picture file."""
    with Image.open(path) as img:
        bits, quality = pdqhash.compute(np.asarray(img.convert("RGB")))
    return np.packbits(bits.astype(np.uint8)).tobytes(), int(quality)


def pictures() -> list[Path]:
    return sorted(p for p in require().rglob("*") if p.suffix.lower() in SUFFIXES)


def main() -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    policy = PdqPolicy()
    rows, costs, added = [], [], []
    unsquashed_view = getattr(image, "unsquashed_view", None)  # absent before the fix
    for path in pictures():
        data = path.read_bytes()
        try:
            partner, quality = pytx_pdq(path)
        except Exception as exc:  # a vector Pillow cannot read at all
            print(f"skip {path.name}: {exc}")
            continue
        start = time.perf_counter()
        try:
            views = image.hash_query(data, LIMITS)
        except Exception as exc:
            print(f"skip {path.name}: hash_query: {type(exc).__name__}: {exc}")
            continue
        costs.append((time.perf_counter() - start) * 1000)
        if unsquashed_view is not None:
            rgb = image.decode_query(data, LIMITS, at_least=image.VIEW_SIDE)
            if max(rgb.shape[:2]) > image.VIEW_SIDE:
                start = time.perf_counter()
                unsquashed_view(rgb)
                added.append((time.perf_counter() - start) * 1000)
        pdq = [s for s in views if s.kind == "pdq"]
        best = min(pdq, key=lambda s: hamming(s.value, partner))
        distance = hamming(best.value, partner)
        with Image.open(path) as img:
            size = img.size
        if distance <= policy.block_distance and quality >= policy.quality_floor:
            verdict = "block"
        elif distance <= policy.review_distance:
            verdict = "review"
        else:
            verdict = "allow"
        rows.append((path, size, quality, distance, best.variant, verdict))
    rel = require()
    for path, size, quality, distance, variant, verdict in rows:
        print(
            f"{str(path.relative_to(rel)):90s} {size[0]:>5}x{size[1]:<5} q{quality:>3}"
            f" d={distance:>3} {variant:16s} {verdict}"
        )
    big = [r for r in rows if max(r[1]) > image.REFERENCE_SIDE]
    for name, group in (("all", rows), ("over 512 px", big)):
        d = np.array([r[3] for r in group])
        verdicts = [r[5] for r in group]
        print(
            f"{name}: {len(group)} pictures, distance max {d.max()} median {np.median(d):.0f},"
            f" block {verdicts.count('block')} review {verdicts.count('review')}"
            f" allow {verdicts.count('allow')}"
        )
    c = np.array(costs)
    print(f"hash_query ms per picture: p50 {np.median(c):.1f} mean {c.mean():.1f}")
    if added:
        a = np.array(added)
        print(
            f"unsquashed view ms ({len(a)} pictures over {image.VIEW_SIDE} px):"
            f" p50 {np.median(a):.1f} mean {a.mean():.1f} max {a.max():.1f}"
        )


if __name__ == "__main__":
    main()
