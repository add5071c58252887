"""The media bench/loadtest.py sends: known entries of every kind and uploads
that are either re-encoded or edited copies of them or unrelated media.

Images are the real photos of bench/photos.py after the edits of
bench/transforms.py. Videos are short slideshows (8 s, 320x180, 15 fps) of generated
scenes: coloured shapes over a smooth background, so that no frame is one of the
photos (a known photo inside a video, or a frame of a known video sent as an
image, would match across kinds and blur the per-kind figures). Audio is
espeak-ng speech over a tonal bed (hashsvc_testing/audio_media.py), 15 s; PDFs are
generated Arabic and English publications of 2-4 pages (hashsvc_testing/pdf_media.py),
text only for the same reason as the videos. Everything is made once per run in
a temporary directory, in a few seconds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from hashsvc_testing import audio_media, pdf_media, video_media

KINDS = ("image", "video", "audio", "pdf")
VIDEO_SIZE = (320, 180)
VIDEO_FPS = 15
SCENES_PER_VIDEO = 4
SECONDS_PER_SCENE = 2.0
AUDIO_SECONDS = 15.0
PDF_PARAGRAPHS = 24  # 2 pages in Arabic, 3 in English

VIDEO_EDITS = ["reencode_low_bitrate", "mirrored", "360p_to_240p", "webm_vp9"]
AUDIO_EDITS = ["mp3_64k", "ogg_low", "excerpt", "mono"]
# hashsvc_testing/pdf_media.retypeset of an English publication of 3+ pages keeps only its first
# 3 pages of text (830 of 1,233 words at 24 paragraphs): a partial copy, which the
# service answers with REVIEW (text_simhash), not BLOCK.
PDF_EDITS = ["resave", "retypeset", "scanned", "page_subset"]


@dataclass(frozen=True)
class Upload:
    kind: str  # one of KINDS
    known: bool  # a copy of a known entry (should match) or unrelated (should not)
    edit: str  # the edit a known copy went through, or what the unrelated item is
    content: bytes


@dataclass(frozen=True)
class Sizes:
    photos: int  # photos in all; the first half are known entries
    videos: int  # known videos (and as many unrelated ones)
    audio: int
    pdfs: int
    edits: int  # edits of each known video, audio track and PDF sent as uploads


SHORT = Sizes(photos=8, videos=2, audio=2, pdfs=2, edits=3)
FULL = Sizes(photos=40, videos=4, audio=4, pdfs=4, edits=4)


@dataclass
class MediaMix:
    known: list[tuple[str, str, bytes]]  # (kind, entry name, content)
    uploads: dict[str, list[Upload]]  # kind -> uploads


def make_mix(sizes: Sizes, kinds: list[str], out_dir: Path) -> MediaMix:
    """The known entries and uploads of the given kinds. Generation runs in two
    threads: most of it is ffmpeg and espeak-ng subprocesses."""
    makers: dict[str, Callable[[], tuple[list, list]]] = {
        "image": lambda: _images(sizes),
        "video": lambda: _videos(sizes, out_dir),
        "audio": lambda: _audio(sizes),
        "pdf": lambda: _pdfs(sizes),
    }
    with ThreadPoolExecutor(2) as pool:
        futures = {kind: pool.submit(makers[kind]) for kind in kinds}
        made = {kind: f.result() for kind, f in futures.items()}
    mix = MediaMix([], {})
    for kind in kinds:
        known, uploads = made[kind]
        mix.known += [(kind, f"{kind}-{i}", data) for i, data in enumerate(known)]
        mix.uploads[kind] = uploads
    return mix


def _images(sizes: Sizes) -> tuple[list[bytes], list[Upload]]:
    from photos import load_photos
    from transforms import TRANSFORMS, jpeg

    rng = np.random.default_rng(0)
    photos = load_photos(sizes.photos)
    n_known = len(photos) // 2
    known = [jpeg(img, 90) for _, img in photos[:n_known]]
    uploads = [
        Upload("image", i < n_known, name if i < n_known else f"unrelated {name}", edit(img, rng))
        for i, (_, img) in enumerate(photos)
        for name, edit in TRANSFORMS.items()
    ]
    return known, uploads


def scene(seed: int, size: tuple[int, int] = (640, 360)) -> Image.Image:
    """A picture of coloured shapes over a smooth background."""
    rng = np.random.default_rng(seed)
    background = rng.uniform(0, 255, (3, 5, 3)).astype(np.uint8)
    img = Image.fromarray(background).resize(size, Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(img)
    for _ in range(14):
        x, y = rng.uniform(0, size[0]), rng.uniform(0, size[1])
        w, h = rng.uniform(20, 200, 2)
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        box = (x - w / 2, y - h / 2, x + w / 2, y + h / 2)
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=colour)
    return img.filter(ImageFilter.GaussianBlur(1.5))


def scene_frames(seeds: list[int]) -> Iterator[np.ndarray]:
    """Each scene for SECONDS_PER_SCENE, zooming in while panning (as
    hashsvc_testing/video_media.py does with photos), so neighbouring seconds differ."""
    per_scene = round(SECONDS_PER_SCENE * VIDEO_FPS)
    for n, seed in enumerate(seeds):
        img = scene(seed)
        w, h = img.size
        direction = 1 if n % 2 else -1
        for i in range(per_scene):
            t = i / per_scene
            zw, zh = w / (1 + 0.15 * t), h / (1 + 0.15 * t)
            left = (w - zw) / 2 + direction * t * (w - zw) / 2
            top = (h - zh) / 2
            box = (left, top, left + zw, top + zh)
            yield np.asarray(img.resize(VIDEO_SIZE, Image.Resampling.BILINEAR, box=box))


def _videos(sizes: Sizes, out_dir: Path) -> tuple[list[bytes], list[Upload]]:
    def video(name: str, first_scene: int) -> Path:
        seeds = list(range(first_scene, first_scene + SCENES_PER_VIDEO))
        return video_media.write_video(out_dir / f"{name}.mp4", scene_frames(seeds), VIDEO_FPS)

    known_paths = [video(f"video-known-{v}", v * SCENES_PER_VIDEO) for v in range(sizes.videos)]
    first_unrelated = 1000 * SCENES_PER_VIDEO
    uploads = [
        Upload("video", False, "unrelated", video(f"video-other-{v}", first_unrelated + v * 10)
               .read_bytes())
        for v in range(sizes.videos)
    ]  # fmt: skip
    for path in known_paths:
        for edit in VIDEO_EDITS[: sizes.edits]:
            data = video_media.transformed(path, edit, out_dir).read_bytes()
            uploads.append(Upload("video", True, edit, data))
    return [p.read_bytes() for p in known_paths], uploads


def _audio(sizes: Sizes) -> tuple[list[bytes], list[Upload]]:
    edits = {t.name: t for t in audio_media.TRANSFORMS}
    known, uploads = [], []
    for n in range(sizes.audio):
        lang = "ar" if n % 2 == 0 else "en"
        pcm = audio_media.speech_track(n + 1, AUDIO_SECONDS, lang)
        known.append(audio_media.master(pcm))
        for name in AUDIO_EDITS[: sizes.edits]:
            uploads.append(Upload("audio", True, name, edits[name].make(pcm, n)))
        # other speech in the same language and voice over the same bed, or music
        if n % 2 == 0:
            other = audio_media.speech_track(100 + n, AUDIO_SECONDS, lang, background_seed=n + 1)
            uploads.append(Upload("audio", False, "other speech, same bed", _mp3(other)))
        else:
            uploads.append(Upload("audio", False, "music", _mp3(audio_media.tones(n, 15))))
    return known, uploads


def _mp3(pcm: np.ndarray) -> bytes:
    return audio_media.encode(pcm, "mp3", "-b:a", "128k")


def _pdfs(sizes: Sizes) -> tuple[list[bytes], list[Upload]]:
    known, uploads = [], []
    for n in range(sizes.pdfs):
        lang = "ar" if n % 2 == 0 else "en"
        pub = pdf_media.publication(n + 1, lang, paragraphs=PDF_PARAGRAPHS)
        pdf = pdf_media.typeset(pub)
        known.append(pdf)
        edits = {
            "resave": lambda pdf=pdf: pdf_media.resave(pdf),
            "retypeset": lambda pub=pub: pdf_media.retypeset(pub),
            "scanned": lambda pdf=pdf: pdf_media.scanned(pdf),
            "page_subset": lambda pdf=pdf: pdf_media.page_subset(pdf, [1, 0]),
        }
        for name in PDF_EDITS[: sizes.edits]:
            uploads.append(Upload("pdf", True, name, edits[name]()))
        # the same layout, boilerplate and language, other text
        other = pdf_media.publication(100 + n, lang, paragraphs=PDF_PARAGRAPHS)
        uploads.append(Upload("pdf", False, "unrelated", pdf_media.typeset(other)))
    return known, uploads
