"""Real photographs for benchmarks: the distinct photos in ../shared/vectors,
the photos scikit-image ships in its wheel (if installed: the `bench` extra),
and one frame from each distinct scene of the ThreatExchange sample videos."""

from __future__ import annotations

import hashlib
from pathlib import Path

from PIL import Image

from hashsvc_testing.vectors import VECTORS

# ../shared/vectors, or the folder named by HASHSVC_TEST_VECTORS (as in the tests)
SHARED = VECTORS

_SHARED_PHOTOS = [
    "threatexchange/pdq/data/reg-test-input/dih/bridge-1-original.jpg",
    "threatexchange/pdq/data/reg-test-input/exif-rotn/exif-rotn-1.jpg",
    "threatexchange/pdq/data/reg-test-input/exif-rotn/exif-rotn-6.jpg",
    "threatexchange/pdq/data/reg-test-input/pen-and-coaster.png",
    *[f"threatexchange/pdq/data/reg-test-input/labelme-subset/{n}.jpg"
      for n in ("q0122", "q2821", "q0291", "q0746", "q1050")],
    *[f"pdqhash-python/images/image{i}.jpg" for i in range(1, 11)],
]  # fmt: skip
# Photographs only (no charts, textures of one colour, or near-duplicate pairs).
_SKIMAGE_PHOTOS = [
    "astronaut.png", "camera.png", "chelsea.png", "coffee.png", "coins.png",
    "hubble_deep_field.jpg", "motorcycle_left.png", "retina.jpg", "rocket.jpg",
    "brick.png", "grass.png", "gravel.png", "moon.png", "ihc.png", "page.png",
]  # fmt: skip
_VIDEOS = ["chair-20-sd-bar.mp4", "doorknob-hd-no-bar.mp4", "pattern-hd-no-bar.mp4"]


def load_photos(limit: int | None = None) -> list[tuple[str, Image.Image]]:
    photos: list[tuple[str, Image.Image]] = []
    seen: set[str] = set()

    def add(name: str, img: Image.Image) -> None:
        digest = hashlib.sha256(img.tobytes()).hexdigest()
        if digest not in seen:
            seen.add(digest)
            photos.append((name, img.convert("RGB")))

    def enough() -> bool:  # stop decoding once the caller has what it asked for
        return bool(limit) and len(photos) >= limit

    for rel in _SHARED_PHOTOS:
        path = SHARED / rel
        if path.exists() and not enough():
            add(path.name, _bounded(Image.open(path)))
    try:
        import skimage

        data_dir = Path(skimage.__file__).parent / "data"
        for name in _SKIMAGE_PHOTOS:
            if (data_dir / name).exists() and not enough():
                add(f"skimage-{name}", _bounded(Image.open(data_dir / name)))
    except ImportError:
        pass
    for name in _VIDEOS:
        if enough():
            break
        frame = _video_frame(SHARED / "threatexchange/tmk/sample-videos" / name)
        if frame is not None:
            add(f"frame-{name}", frame)
    return photos[:limit] if limit else photos


def _bounded(img: Image.Image, side: int = 1600) -> Image.Image:
    # Camera originals are 4032 px wide; uploads are rarely that large and the
    # benchmark should spend its time on transforms, not decoding.
    img = img.convert("RGB")
    if max(img.size) > side:
        img.thumbnail((side, side), Image.Resampling.LANCZOS)
    return img


def _video_frame(path: Path) -> Image.Image | None:
    if not path.exists():
        return None
    import av

    with av.open(str(path)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i == 45:  # 1.5 s in: past any fade-in
                return frame.to_image()
    return None
