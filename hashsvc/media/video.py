"""Video: one decode pass -> PDQ of sampled frames (vPDQ-compatible), the
videohash whole-video hash, duration and frame rate; audio frames to a hook.

vPDQ hashes decoded frames (RGB24, full size) with PDQ and records, per hashed
frame, its number, quality, hash and timestamp; its text format is one line per
frame: `frame_number,quality,pdq_hex,timestamp_seconds` (3 decimals). Frames
are numbered in decode order from 0; with `every_seconds` > 0 only every
round(fps * every_seconds)-th frame is hashed (vPDQ's seconds_per_hash).

Known videos (for_query=False) are decoded exactly as vPDQ does, so their frame
hashes can be exchanged (tests/test_video_frames.py). Queries (for_query=True)
are decoded fast: frames no other frame refers to are skipped and so is the
loop filter, sampled frames are scaled to <= QUERY_SIDE by swscale and hashed
there (PDQ of a 720p frame costs ~20x a 512 px one), and each is also hashed
mirrored, without its corners (logos) and without black bars, which is how
re-uploads hide. PDQ depends on the resolution it is given, so known frames
also keep their <= QUERY_SIDE hash: a fast query frame is within 4-8 bits of it
on the vPDQ samples (the full-size hash can be 10-30 away). Only sampled frames
are ever converted to RGB. Speed (bench/video.py, 2 shared cores): query 720p
~30x realtime, 1080p ~20x; known (exact) 720p ~14x.

Sampled frames also get local features (keypoints and descriptors,
hashsvc/media/local_features.py) from the same small copy, one every
VideoLimits.feature_every_seconds_* up to max_feature_frames_*: PDQ cannot see
a cropped or tilted copy, they can. ~9 ms a sample, a few percent of a query's
hashing time (bench/video.py).

Matching frames into video matches is hashsvc/matching/video_evidence.py.
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace

import av
import numpy as np
from PIL import Image

from hashsvc.base.errors import CorruptMedia, InvalidArgument, Timeout, TooLarge, UnsupportedMedia
from hashsvc.base.media_kinds import frame_variant
from hashsvc.base.signals import Signal
from hashsvc.media import videohash as vh
from hashsvc.media.frame_views import QUERY_SIDE, center, query_frame_signals
from hashsvc.media.image import local_feature_signals, pdq_hash
from hashsvc.media.limits import VideoLimits
from hashsvc.media.local_features import DEFAULT_LIMITS as PICTURE_FEATURE_LIMITS

# Containers we accept, by FFmpeg demuxer name, and the file extensions that may
# name each (a path whose extension names another container is refused).
CONTAINERS = {
    "mov,mp4,m4a,3gp,3g2,mj2": {".mp4", ".m4v", ".mov", ".3gp"},
    "matroska,webm": {".mkv", ".webm"},
    "avi": {".avi"},
    "gif": {".gif"},
}
# The package's crop vote is settled by the start times up to 40 s (5 of the
# 12); frames for the videohash are held until then, then shrunk at once.
CROP_SETTLED_SECONDS = 41.0
# Held frames larger than this are reduced (box filter, integer factor) first:
# 41 held 4K frames would be ~1 GB. Costs exactness on the first 41 s of such
# videos only, and only by what a box pre-filter changes in a 144 px shrink.
VIDEOHASH_HOLD_MAX_PIXELS = 1280 * 720
# A sampled frame keeps fewer keypoints than a picture: a video has many
# samples (store and index size), and a re-upload's frames still shared
# 60-190 verified inliers with the known ones at this count (bench/video.py).
FRAME_FEATURE_LIMITS = replace(PICTURE_FEATURE_LIMITS, max_keypoints=300)


@dataclass(frozen=True)
class FrameHash:
    frame: int
    quality: int
    pdq: bytes
    seconds: float

    def vpdq_line(self) -> str:
        return f"{self.frame},{self.quality},{self.pdq.hex()},{self.seconds:.3f}"


@dataclass
class VideoHashes:
    """Everything one decode pass gives for a video."""

    frames: list[FrameHash]  # the vPDQ frame hashes (format_vpdq writes them)
    # PDQ signals, position = seconds. "frame:<n>" is the frame as decoded
    # (the vPDQ hash, frames[i]); known frames add "frame:<n>:small" (hashed at
    # <= QUERY_SIDE, as queries are; only when the video is larger) and
    # "frame:<n>:center", its middle without the logo corners. Queries are
    # hashed at <= QUERY_SIDE and add "frame:<n>:flip", ":center_flip" and,
    # on frames with bars, ":trimmed" and ":trimmed_flip".
    frame_signals: list[Signal]
    videohash: Signal | None
    duration: float
    fps: float
    width: int
    height: int
    container: str
    has_audio: bool = False
    decode_seconds: float = 0.0
    frames_decoded: int = 0
    # local_features of sampled frames ("frame:<n>", position = seconds), at
    # most VideoLimits.max_feature_frames_*; frames without enough keypoints
    # (fades, title cards) have none.
    feature_signals: list[Signal] = field(default_factory=list)
    feature_seconds: float = 0.0  # of decode_seconds, spent extracting them

    def signals(self) -> list[Signal]:
        return [
            *self.frame_signals,
            *self.feature_signals,
            *([self.videohash] if self.videohash else []),
        ]


AudioHook = Callable[["av.AudioFrame"], None]


def frame_hashes(
    data: bytes | str, every_seconds: float = 1.0, limits: VideoLimits | None = None
) -> list[FrameHash]:
    """vPDQ frame hashes of the first video stream (every_seconds=0: every frame)."""
    hashes = hash_video(data, limits, every_seconds=every_seconds, videohash_rate=0, views=False)
    return hashes.frames


def hash_video(
    source: bytes | str | os.PathLike,
    limits: VideoLimits | None = None,
    for_query: bool = False,
    every_seconds: float = 1.0,
    videohash_rate: float = 1.0,
    on_audio_frame: AudioHook | None = None,
    views: bool = True,
) -> VideoHashes:
    """Decode once: sampled-frame PDQ signals, the videohash (videohash_rate
    frames per second, the package's frame_interval; 0 = none), duration, fps.
    Decoded audio frames of the first audio stream go to on_audio_frame (for
    the audio fingerprint) in the same pass. Sampled frames also get local
    features (VideoLimits.feature_*). views=False: the vPDQ frame hashes
    only, no derived views and no local features (for export). Typed errors
    only."""
    limits = limits or VideoLimits()
    started = time.monotonic()
    container, extension = _open(source, limits.max_pixels_per_frame)
    with container:
        stream = _checked_video_stream(container, extension, limits)
        audio = container.streams.audio[0] if container.streams.audio else None
        state = _Pass(container, stream, limits, for_query, every_seconds, videohash_rate, views)
        try:
            wanted = [stream, audio] if audio is not None and on_audio_frame else [stream]
            for packet in container.demux(*wanted):
                if packet.stream is audio:
                    _feed_audio(packet, on_audio_frame)
                    continue
                for frame in packet.decode():
                    state.add(frame)
                    if limits.max_wall_seconds and time.monotonic() - started > (
                        limits.max_wall_seconds
                    ):
                        raise Timeout(f"video decoding took over {limits.max_wall_seconds:g} s")
        except av.error.FFmpegError as exc:
            raise CorruptMedia(f"corrupt video: {exc}") from None
        except (ValueError, OverflowError, IndexError, MemoryError) as exc:
            raise CorruptMedia(f"corrupt video: {type(exc).__name__}: {exc}") from None
        result = state.finish()
        result.has_audio = audio is not None
        result.decode_seconds = time.monotonic() - started
        return result


def _feed_audio(packet, on_audio_frame: AudioHook) -> None:
    # A damaged audio packet costs the audio fingerprint a moment, not the
    # video its frame signals: skip it.
    try:
        frames = packet.decode()
    except av.error.FFmpegError:
        return
    for frame in frames:
        on_audio_frame(frame)


# ------------------------------------------------------------------ opening


def _open(
    source: bytes | str | os.PathLike, max_pixels: int = 0
) -> tuple[av.container.InputContainer, str | None]:
    if isinstance(source, (bytes, bytearray, memoryview)):
        if not source:
            raise InvalidArgument("empty media")
        target, extension = io.BytesIO(source), None
    else:
        path = os.fspath(source)
        if not os.path.isfile(path) or os.path.getsize(path) == 0:
            raise InvalidArgument("empty media" if os.path.isfile(path) else "no such file")
        target, extension = path, os.path.splitext(path)[1].lower() or None
    try:
        container = av.open(target, metadata_errors="ignore", options=probe_options(max_pixels))
    except av.error.InvalidDataError:
        raise UnsupportedMedia(
            "not a video the decoder can read (unknown format, or truncated)"
        ) from None
    except (av.error.FFmpegError, ValueError, OSError) as exc:
        raise CorruptMedia(f"cannot open the video: {exc}") from None
    return container, extension


def has_video_stream(source: bytes | str | os.PathLike, max_pixels: int = 0) -> bool:
    """Whether an audio/video container (bytes or a path) holds a picture
    stream (a video) or only sound (audio); UnsupportedMedia if neither."""
    try:
        opened = av.open(
            source if isinstance(source, (str, os.PathLike)) else io.BytesIO(source),
            options=probe_options(max_pixels),
            metadata_errors="ignore",  # tags in bad UTF-8 raised UnicodeDecodeError
        )
    except av.error.FFmpegError:
        raise UnsupportedMedia("not a video or audio file the decoder can read") from None
    with opened as container:
        # A cover picture attached to an audio file is a "video" stream too.
        pictures = [
            s
            for s in container.streams.video
            if not s.disposition & av.stream.Disposition.attached_pic
        ]
        if pictures:
            return True
        if container.streams.audio:
            return False
    raise UnsupportedMedia("the file holds neither a video nor an audio stream")


def probe_options(max_pixels: int) -> dict[str, str]:
    """Opening a file decodes a few frames to learn its streams: a 1 KB file
    whose H.264 header claims 16000x16000 cost seconds there, before any of our
    checks. FFmpeg's own pixel limit makes the probe refuse such frames."""
    return {"max_pixels": str(max_pixels)} if max_pixels > 0 else {}


def _checked_video_stream(container, extension: str | None, limits: VideoLimits):
    if not container.streams.video:
        raise UnsupportedMedia("the file has no video stream")
    name = container.format.name
    if name not in CONTAINERS:
        raise UnsupportedMedia(f"unsupported container {name!r} (MP4, MOV, MKV, WebM, AVI, GIF)")
    if extension is not None and extension not in CONTAINERS[name]:
        raise UnsupportedMedia(f"the file is named {extension} but is a {name.split(',')[0]} file")
    stream = container.streams.video[0]
    if stream.codec_context is None:  # FFmpeg has no decoder for its codec
        raise UnsupportedMedia("the video stream is in a format no decoder reads")
    width, height = stream.codec_context.width, stream.codec_context.height
    if width <= 0 or height <= 0:
        # (a GIF claiming a 65535x65535 screen ends here: FFmpeg refuses it)
        raise CorruptMedia("the video stream has no picture size")
    if width * height > limits.max_pixels_per_frame or max(width, height) > limits.max_side:
        raise TooLarge(
            f"video frames are {width}x{height}; the limits are "
            f"{limits.max_pixels_per_frame} pixels and {limits.max_side} per side"
        )
    if container.duration and container.duration / 1e6 > limits.max_seconds:
        raise TooLarge(f"video is {container.duration / 1e6:.0f} s long; "
                       f"the limit is {limits.max_seconds:g} s")  # fmt: skip
    if stream.frames and stream.frames > limits.max_frames_decoded:
        raise TooLarge(
            f"video has {stream.frames} frames; the limit is {limits.max_frames_decoded}"
        )
    stream.thread_type = "AUTO"
    return stream


# ------------------------------------------------------------------ the pass


@dataclass
class _HeldFrame:
    rgb: np.ndarray  # uncropped; reduced when huge (see VIDEOHASH_HOLD_MAX_PIXELS)
    copies: int
    scale: float


@dataclass
class _Pass:
    container: av.container.InputContainer
    stream: av.video.stream.VideoStream
    limits: VideoLimits
    for_query: bool
    every_seconds: float
    videohash_rate: float
    views: bool
    frames: list[FrameHash] = field(default_factory=list)
    signals: list[Signal] = field(default_factory=list)
    feature_signals: list[Signal] = field(default_factory=list)
    feature_samples: int = 0
    feature_seconds: float = 0.0
    next_feature: float = 0.0
    decoded: int = 0
    next_sample: int = 0
    last_seconds: float = 0.0

    def __post_init__(self) -> None:
        stream = self.stream
        rate = stream.average_rate or stream.guessed_rate
        self.fps = float(rate) if rate else 0.0
        if self.fps <= 0:
            raise CorruptMedia("the video stream has no frame rate")
        self.step = max(1, round(self.fps * self.every_seconds)) if self.every_seconds > 0 else 1
        self.start = self._start_seconds()
        if self.for_query:
            # Frames that no other frame refers to (most B-frames) need not be
            # decoded at all; the loop filter only polishes block edges.
            stream.codec_context.skip_frame = "NONREF"
            stream.codec_context.options = {"skip_loop_filter": "all"}
        self.cfr = vh.CfrSampler(self.videohash_rate, self.fps) if self.videohash_rate else None
        self.crop_votes = vh.CropVotes()
        self.held: list[_HeldFrame] = []
        self.crop: tuple[int, int, int, int] | None = None
        self.crop_fixed = False
        self.small_frames: list[np.ndarray] = []
        self.feature_interval, self.max_feature_frames = self._feature_sampling()

    def _feature_sampling(self) -> tuple[float, int]:
        """(seconds between local-feature samples, most samples); (0, 0): none."""
        limits = self.limits
        if self.for_query:
            every, most = limits.feature_every_seconds_query, limits.max_feature_frames_query
        else:
            every, most = limits.feature_every_seconds_known, limits.max_feature_frames_known
        if not self.views or every <= 0 or most <= 0:
            return 0.0, 0
        duration = self.container.duration / 1e6 if self.container.duration else 0.0
        # spread over the whole video; a header that lies about the duration
        # only ends the samples early (the count is also capped)
        return max(every, duration / most), most

    def _start_seconds(self) -> float:
        # ffmpeg's CLI (and so the videohash package) shifts times so the
        # file starts at 0; vPDQ's timestamps are frame_number / fps.
        if self.container.start_time is not None:
            return self.container.start_time / 1e6
        st = self.stream
        return float(st.start_time * st.time_base) if st.start_time is not None else 0.0

    def add(self, frame: av.VideoFrame) -> None:
        self.decoded += 1
        if self.decoded > self.limits.max_frames_decoded:
            raise TooLarge(f"more than {self.limits.max_frames_decoded} frames")
        if frame.width * frame.height > self.limits.max_pixels_per_frame:
            # a stream may change size mid-way; the header only told the first
            raise TooLarge(f"a video frame is {frame.width}x{frame.height} pixels")
        seconds = self._seconds(frame)
        if seconds > self.limits.max_seconds:
            raise TooLarge(f"video is longer than {self.limits.max_seconds:g} s")
        self.last_seconds = max(self.last_seconds, seconds)
        if self.for_query:
            # Skipped frames leave holes in decode order: number by time.
            number = max(0, round(seconds * self.fps))
        else:
            number = self.decoded - 1
        rgb = _LazyRgb(frame)
        if number >= self.next_sample:
            self.next_sample = (number // self.step + 1) * self.step
            self._hash_frame(frame, rgb, number)
        if self.feature_interval and number / self.fps >= self.next_feature - 0.5 / self.fps:
            self._feature_frame(rgb, number)
        if self.cfr is not None:
            self._videohash_frame(frame, rgb, seconds)

    def _seconds(self, frame: av.VideoFrame) -> float:
        if frame.pts is None or frame.time_base is None:
            return (self.decoded - 1) / self.fps
        return float(frame.pts * frame.time_base) - self.start

    def _hash_frame(self, frame: av.VideoFrame, full: _LazyRgb, number: int) -> None:
        if len(self.frames) >= self.limits.max_frames_hashed:
            raise TooLarge(f"more than {self.limits.max_frames_hashed} frames to hash")
        # vPDQ's timestamp is the frame number over the frame rate.
        seconds = round(number / self.fps, 3)
        if self.for_query:
            signals = query_frame_signals(full.small(), number, seconds)
            self.signals.extend(signals if self.views else signals[:1])
            as_decoded = signals[0]
            self.frames.append(
                FrameHash(number, as_decoded.quality or 0, as_decoded.value, seconds)
            )
            return
        value, quality = pdq_hash(full.get())
        self.frames.append(FrameHash(number, quality, value, seconds))
        self.signals.append(Signal("pdq", value, quality, frame_variant(number), seconds))
        if not self.views:
            return
        # PDQ depends on the resolution it is given (its box-filter window
        # grows with the picture): the same frame hashed full-size and at
        # 512 px differs by 10-30 bits on textured footage (vPDQ samples,
        # bench/video.py). Queries are hashed at <= QUERY_SIDE for speed (PDQ
        # of a 720p frame costs ~20x a 512 px one), so known frames also keep
        # that view; the center view need not be vPDQ-exact at all.
        if max(frame.width, frame.height) > QUERY_SIDE:
            small, small_quality = pdq_hash(full.small())
            self.signals.append(
                Signal("pdq", small, small_quality, frame_variant(number, "small"), seconds)
            )
        middle, middle_quality = pdq_hash(np.ascontiguousarray(center(full.small())))
        self.signals.append(
            Signal("pdq", middle, middle_quality, frame_variant(number, "center"), seconds)
        )

    def _feature_frame(self, full: _LazyRgb, number: int) -> None:
        """Local features of one sampled frame, from its small copy (the one
        PDQ's query views use, <= QUERY_SIDE: the same scale on both sides)."""
        seconds = round(number / self.fps, 3)
        self.next_feature = seconds + self.feature_interval
        self.feature_samples += 1
        if self.feature_samples >= self.max_feature_frames:
            self.feature_interval = 0.0  # the last sample
        started = time.monotonic()
        found = local_feature_signals(
            full.small(), frame_variant(number), seconds, FRAME_FEATURE_LIMITS
        )
        self.feature_seconds += time.monotonic() - started
        self.feature_signals.extend(found)

    def _videohash_frame(self, frame: av.VideoFrame, full: _LazyRgb, seconds: float) -> None:
        if not self.crop_fixed and self.crop_votes.wants(seconds):
            self.crop_votes.add(_luma(frame))
        copies = self.cfr.copies(seconds)
        if not self.crop_fixed and seconds >= CROP_SETTLED_SECONDS:
            self._fix_crop()
        if not copies:
            return
        if len(self.small_frames) + sum(h.copies for h in self.held) >= (
            self.limits.max_videohash_frames
        ):
            self.cfr, self.held, self.small_frames = None, [], []
            return
        if self.for_query:
            # A query's videohash is only compared, never exported: shrink
            # from the small copy the frame views use.
            rgb = full.small()
            scale = rgb.shape[1] / frame.width
        else:
            rgb, scale = full.get(), 1.0
        if self.crop_fixed:
            self.small_frames.extend([_shrink_rgb(rgb, _scaled(self.crop, scale))] * copies)
            return
        factor = 1
        while rgb.shape[0] * rgb.shape[1] > VIDEOHASH_HOLD_MAX_PIXELS * factor * factor:
            factor += 1
        if factor > 1:
            width = rgb.shape[1]
            rgb = np.asarray(Image.fromarray(rgb).reduce(factor))
            scale = scale * rgb.shape[1] / width
        self.held.append(_HeldFrame(rgb, copies, scale))

    def _fix_crop(self) -> None:
        self.crop_fixed = True
        self.crop = self.crop_votes.best()
        for held in self.held:
            crop = _scaled(self.crop, held.scale)
            self.small_frames.extend([_shrink_rgb(held.rgb, crop)] * held.copies)
        self.held = []

    def finish(self) -> VideoHashes:
        if self.decoded == 0:
            raise CorruptMedia("the video has no decodable frames")
        videohash = None
        if self.cfr is not None:
            if not self.crop_fixed:
                self._fix_crop()
            if self.small_frames:
                value = vh.videohash(self.small_frames)
                videohash = Signal("videohash", value, None, "original", None)
        container = self.container
        duration = container.duration / 1e6 if container.duration else 0.0
        duration = duration or self.last_seconds + 1 / self.fps
        ctx = self.stream.codec_context
        return VideoHashes(
            frames=self.frames,
            frame_signals=self.signals,
            videohash=videohash,
            duration=duration,
            fps=self.fps,
            width=ctx.width,
            height=ctx.height,
            container=container.format.name,
            frames_decoded=self.decoded,
            feature_signals=self.feature_signals,
            feature_seconds=self.feature_seconds,
        )


# ------------------------------------------------------------------ frames


def _rgb_at_most(frame: av.VideoFrame, side: int) -> np.ndarray:
    """The frame as RGB, shrunk in swscale (area averaging) to fit side."""
    scale = side / max(frame.width, frame.height)
    if scale >= 1:
        return frame.to_ndarray(format="rgb24")
    width, height = max(1, round(frame.width * scale)), max(1, round(frame.height * scale))
    return frame.reformat(width, height, "rgb24", interpolation="AREA").to_ndarray()


def _luma(frame: av.VideoFrame) -> np.ndarray:
    """The Y plane as stored (cropdetect reads it raw), or gray for RGB/palette."""
    if frame.format.name.startswith(("yuv", "yuvj")) and frame.planes:
        plane = frame.planes[0]
        raw = np.frombuffer(plane, dtype=np.uint8)
        if raw.size >= plane.line_size * frame.height and plane.line_size >= frame.width:
            return raw[: plane.line_size * frame.height].reshape(frame.height, -1)[:, : frame.width]
    return frame.to_ndarray(format="gray")


class _LazyRgb:
    """A frame's RGB (full size, or small), converted at most once and only if asked."""

    def __init__(self, frame: av.VideoFrame) -> None:
        self.frame = frame
        self.rgb: np.ndarray | None = None

        self.small_rgb: np.ndarray | None = None

    def get(self) -> np.ndarray:
        if self.rgb is None:
            self.rgb = np.ascontiguousarray(self.frame.to_ndarray(format="rgb24"))
        return self.rgb

    def small(self) -> np.ndarray:
        """At most QUERY_SIDE, scaled by swscale straight from the decoder's YUV."""
        if self.small_rgb is None:
            self.small_rgb = np.ascontiguousarray(_rgb_at_most(self.frame, QUERY_SIDE))
        return self.small_rgb


def _scaled(box: tuple[int, int, int, int] | None, scale: float):
    return box if box is None or scale == 1 else tuple(int(v * scale) for v in box)


def _shrink_rgb(rgb: np.ndarray, crop) -> np.ndarray:
    """ffmpeg's `-vf crop=... -s 144x144` (bicubic), as the package extracts."""
    if crop:
        x, y, w, h = crop
        rgb = rgb[y : y + h, x : x + w]
    side = vh.FRAME_SIDE
    img = Image.fromarray(np.ascontiguousarray(rgb)).resize((side, side), Image.Resampling.BICUBIC)
    return np.asarray(img)


# ------------------------------------------------------------------ vPDQ text


def format_vpdq(frames: list[FrameHash]) -> str:
    return "".join(f"{f.vpdq_line()}\n" for f in frames)


def parse_vpdq(text: str) -> list[FrameHash]:
    """vPDQ text (as its tools write it) -> frames; InvalidArgument names the line."""
    frames = []
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.strip().split(",")
        try:
            if len(parts) != 4 or len(parts[2]) != 64:
                raise ValueError
            frame, quality, value, seconds = int(parts[0]), int(parts[1]), parts[2], parts[3]
            frames.append(FrameHash(frame, quality, bytes.fromhex(value), float(seconds)))
        except ValueError:
            raise InvalidArgument(
                f"line {line_no}: expected frame,quality,64-hex-digit PDQ,seconds"
            ) from None
        if not 0 <= quality <= 100:
            raise InvalidArgument(f"line {line_no}: quality must be within 0..100")
    return frames


def iter_vpdq_signals(frames: list[FrameHash]) -> Iterator[Signal]:
    """Imported vPDQ hashes as the frame signals a known video stores."""
    for f in frames:
        yield Signal("pdq", f.pdq, f.quality, frame_variant(f.frame), f.seconds)
