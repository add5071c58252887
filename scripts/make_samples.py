"""Sample media for the README's first steps, made here (no downloads, no real
propaganda): three "known" pictures, a re-encoded and mirrored copy of the
first one as an upload that should be blocked, and an unrelated picture that
should be allowed.

    .venv/bin/python scripts/make_samples.py [DIR]     # default ./samples
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageOps

SIZE = (800, 600)


def picture(seed: int) -> Image.Image:
    """Smooth random colour fields with a few shapes: textured enough for a PDQ
    quality well over 50, and about 128 bits from any other seed's."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
    img = Image.fromarray(coarse).resize(SIZE, Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(img)
    for _ in range(6):
        x, y = int(rng.integers(0, SIZE[0] - 200)), int(rng.integers(0, SIZE[1] - 150))
        w, h = int(rng.integers(60, 200)), int(rng.integers(60, 150))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            draw.ellipse((x, y, x + w, y + h), fill=colour)
        else:
            draw.rectangle((x, y, x + w, y + h), fill=colour)
    draw.text((20, SIZE[1] - 40), f"hashsvc sample {seed}", fill=(255, 255, 255))
    return img


def main(argv: list[str]) -> int:
    out = Path(argv[1] if len(argv) > 1 else "samples")
    (out / "known").mkdir(parents=True, exist_ok=True)
    for n in (1, 2, 3):
        picture(n).save(out / "known" / f"{n:04d}.jpg", quality=90)
    # what a re-upload looks like: smaller, mirrored, recompressed
    copy = ImageOps.mirror(picture(1)).resize((480, 360), Image.Resampling.BILINEAR)
    copy.save(out / "upload.jpg", quality=40)
    picture(99).save(out / "unrelated.jpg", quality=85)
    print(f"wrote {out}/known/0001.jpg..0003.jpg, {out}/upload.jpg, {out}/unrelated.jpg")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
