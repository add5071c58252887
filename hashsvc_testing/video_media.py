"""Videos made from real photos for the video tests and bench/video.py.

A slideshow shows each photo for a few seconds with a slow zoom and pan, so
neighbouring seconds differ as in real footage. Transforms (re-encode,
resize, excerpt, compilation, mirror, letterbox, logo, ...) are made with
Debian's ffmpeg CLI, as a re-uploader's tools would.
"""

from __future__ import annotations

import functools
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

import av
import numpy as np
from PIL import Image

from hashsvc.base.signals import hamming
from hashsvc.matching.video_evidence import FramePair
from hashsvc.media import video
from hashsvc_testing import vectors

VECTORS = vectors.VECTORS  # paths only: photo() checks the folder is there
_REG = VECTORS / "threatexchange" / "pdq" / "data" / "reg-test-input"
PHOTOS = [
    *sorted((VECTORS / "pdqhash-python" / "images").glob("image*.jpg")),
    *sorted((_REG / "labelme-subset").glob("*.jpg")),
    _REG / "dih" / "bridge-1-original.jpg",
    _REG / "pen-and-coaster.png",
]
# Two large photos give four distinct pictures each (their quadrants), so the
# bench has enough unrelated content: (path, (left, top, right, bottom) shares).
QUADRANTS = [(0, 0, 0.5, 0.5), (0.5, 0, 1, 0.5), (0, 0.5, 0.5, 1), (0.5, 0.5, 1, 1)]
PICTURES: list[tuple[Path, tuple[float, float, float, float] | None]] = [
    *[(p, None) for p in PHOTOS],
    *[(_REG / "exif-rotn" / f"exif-rotn-{n}.jpg", q) for n in (1, 6) for q in QUADRANTS],
]
SIZE = (640, 360)
FPS = 25


@functools.lru_cache(maxsize=64)
def photo(index: int) -> Image.Image:
    vectors.require()
    path, box = PICTURES[index % len(PICTURES)]
    img = Image.open(path)
    img.draft("RGB", (1000, 1000))
    img = img.convert("RGB")
    if box:
        w, h = img.size
        img = img.crop((int(box[0] * w), int(box[1] * h), int(box[2] * w), int(box[3] * h)))
    return img


def slideshow_frames(
    photo_indexes: Sequence[int], seconds_each: float = 3.3, fps: int = FPS, size=SIZE
) -> Iterator[np.ndarray]:
    """Each photo for seconds_each, zooming from 100% to 115% while panning."""
    per_photo = round(seconds_each * fps)
    for n, index in enumerate(photo_indexes):
        img = photo(index)
        w, h = img.size
        # the largest crop of the photo with the video's aspect
        aspect = size[0] / size[1]
        cw, ch = (w, w / aspect) if w / h < aspect else (h * aspect, h)
        direction = 1 if n % 2 else -1
        for i in range(per_photo):
            t = i / per_photo
            zoom = 1.0 + 0.15 * t
            zw, zh = cw / zoom, ch / zoom
            left = (w - zw) / 2 + direction * t * (w - zw) / 2
            top = (h - zh) / 2
            box = (left, top, left + zw, top + zh)
            yield np.asarray(img.resize(size, Image.Resampling.BILINEAR, box=box))


def write_video(
    path: Path, frames, fps: int = FPS, codec: str = "libx264", bitrate: int | None = None
) -> Path:
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=fps)
        first = None
        for rgb in frames:
            if first is None:
                first = rgb
                stream.width, stream.height = rgb.shape[1], rgb.shape[0]
                stream.pix_fmt = "yuv420p"
                if bitrate:
                    stream.bit_rate = bitrate
                if codec == "libx264":
                    stream.options = {"preset": "ultrafast", "crf": "20"}
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def slideshow(
    path: Path,
    photo_indexes: Sequence[int],
    seconds_each: float = 3.3,
    size: tuple[int, int] = SIZE,
    fps: int = FPS,
) -> Path:
    return write_video(path, slideshow_frames(photo_indexes, seconds_each, fps, size), fps)


def ffmpeg(*args: str) -> None:
    subprocess.run(
        ["ffmpeg", "-nostdin", "-loglevel", "error", "-y", *args],
        check=True,
        timeout=120,
    )


X264_FAST = ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p"]
# A channel logo: an opaque white badge with a red mark, top right.
LOGO = (
    "drawbox=x=iw-150:y=12:w=138:h=44:color=white@0.85:t=fill,"
    "drawbox=x=iw-140:y=20:w=40:h=28:color=red:t=fill"
)

# name -> ffmpeg arguments between input and output, and the output suffix.
TRANSFORMS: dict[str, tuple[list[str], str]] = {
    "reencode_low_bitrate": (["-c:v", "libx264", "-preset", "veryfast", "-b:v", "120k"], ".mp4"),
    "360p_to_240p": (["-vf", "scale=trunc(iw/3)*2:trunc(ih/3)*2", *X264_FAST], ".mp4"),
    "15fps": (["-r", "15", *X264_FAST], ".mp4"),
    "webm_vp9": (
        ["-c:v", "libvpx-vp9", "-b:v", "400k", "-deadline", "realtime", "-cpu-used", "8"],
        ".webm",
    ),
    "webm_vp8": (["-c:v", "libvpx", "-b:v", "500k", "-deadline", "realtime"], ".webm"),
    "mkv": ([*X264_FAST], ".mkv"),
    "mov": ([*X264_FAST], ".mov"),
    "avi_mpeg4": (["-c:v", "mpeg4", "-q:v", "4"], ".avi"),
    "mirrored": (["-vf", "hflip", *X264_FAST], ".mp4"),
    # the picture squeezed to 3/4 of the height (or of both sides) inside black bars
    "letterboxed": (
        ["-vf", "scale=iw:trunc(ih*3/8)*2,pad=iw:trunc(ih*2/3)*2:0:(oh-ih)/2:black", *X264_FAST],
        ".mp4",
    ),
    "pillarboxed": (
        [
            "-vf",
            "scale=trunc(iw*3/8)*2:trunc(ih*3/8)*2,"
            "pad=trunc(iw*2/3)*2:trunc(ih*2/3)*2:(ow-iw)/2:(oh-ih)/2:black",
            *X264_FAST,
        ],
        ".mp4",
    ),
    "logo": (["-vf", LOGO, *X264_FAST], ".mp4"),
    # Issue 18's re-uploads, each with the sound track removed (re-uploads
    # often replace it): 20% of each side cut away off-centre; turned by 5
    # degrees inside the same frame (black corners); shown at half size on a
    # coloured background; played 1.25x as fast.
    "cropped_20": (
        [
            "-vf",
            "crop=trunc(iw*0.4)*2:trunc(ih*0.4)*2:trunc(iw*0.14):trunc(ih*0.06)",
            "-an",
            *X264_FAST,
        ],
        ".mp4",
    ),  # fmt: skip
    "tilted_5": (["-vf", "rotate=5*PI/180", "-an", *X264_FAST], ".mp4"),
    "half_size_on_background": (
        [
            "-vf",
            "scale=trunc(iw/4)*2:trunc(ih/4)*2,pad=iw*2:ih*2:iw/2:ih/3:color=0x4a6a3a",
            "-an",
            *X264_FAST,
        ],
        ".mp4",
    ),  # fmt: skip
    "speed_1.25x": (["-vf", "setpts=PTS/1.25", "-an", *X264_FAST], ".mp4"),
}
# The transforms PDQ frames cannot see (issue 18), found by local features.
CROP_AND_TILT = ("cropped_20", "tilted_5")


def transformed(src: Path, name: str, out_dir: Path) -> Path:
    args, suffix = TRANSFORMS[name]
    dst = out_dir / f"{src.stem}-{name}{suffix}"
    ffmpeg("-i", str(src), *args, str(dst))
    return dst


def excerpt(src: Path, start: float, seconds: float, out_dir: Path) -> Path:
    dst = out_dir / f"{src.stem}-excerpt-{start:g}-{seconds:g}.mp4"
    ffmpeg("-ss", str(start), "-i", str(src), "-t", str(seconds), *X264_FAST, str(dst))
    return dst


def compilation(
    parts: Sequence[tuple[Path, float, float]],
    out_dir: Path,
    name: str,
    size: tuple[int, int] = SIZE,
    fps: int = FPS,
) -> Path:
    """(file, start, seconds) segments, scaled to one size, joined in order."""
    inputs, filters = [], []
    for n, (src, start, seconds) in enumerate(parts):
        inputs += ["-ss", str(start), "-t", str(seconds), "-i", str(src)]
        filters.append(f"[{n}:v]scale={size[0]}:{size[1]},setsar=1,fps={fps}[v{n}]")
    joined = "".join(f"[v{n}]" for n in range(len(parts)))
    graph = ";".join(filters) + f";{joined}concat=n={len(parts)}:v=1:a=0[out]"
    dst = out_dir / f"{name}.mp4"
    ffmpeg(*inputs, "-filter_complex", graph, "-map", "[out]", *X264_FAST, str(dst))
    return dst


def gif(src: Path, out_dir: Path, seconds: float = 6.0) -> Path:
    dst = out_dir / f"{src.stem}.gif"
    ffmpeg("-t", str(seconds), "-i", str(src), "-vf", "fps=10,scale=320:-1", str(dst))
    return dst


def brute_force_pairs(
    query: video.VideoHashes, known: video.VideoHashes, radius: int = 56
) -> list[FramePair]:
    """What the matcher's index search returns for one known video: every
    (query frame signal, known frame signal) within radius."""
    known_values = [(s, int.from_bytes(s.value, "big")) for s in known.frame_signals]
    pairs = []
    for q in query.frame_signals:
        qv = int.from_bytes(q.value, "big")
        for k, kv in known_values:
            d = (qv ^ kv).bit_count()
            if d <= radius:
                pairs.append(FramePair(q, k, d))
    return pairs


def image_hits(query: video.VideoHashes, image_hash: bytes, radius: int = 31):
    return [
        (s, hamming(s.value, image_hash))
        for s in query.frame_signals
        if hamming(s.value, image_hash) <= radius
    ]
