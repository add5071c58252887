"""Video, frame level: PDQ of sampled frames, compatible with Meta's vPDQ.

vPDQ hashes decoded frames (RGB24, full size) with PDQ and records, per hashed
frame, its number, quality, hash and timestamp; its text format is one line per
frame: `frame_number,quality,pdq_hex,timestamp_seconds` (3 decimals). Frames
are numbered in decode order from 0; with `every_seconds` > 0 only every
round(fps * every_seconds)-th frame is hashed (vPDQ's seconds_per_hash).

This module is the frame signal only; matching videos (shares of matching
frames, contiguous runs, time ranges) is the video issue's work.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np

from hashsvc.errors import CorruptMedia, InvalidArgument, TooLarge, UnsupportedMedia
from hashsvc.media.image import pdq_hash


@dataclass(frozen=True)
class VideoLimits:
    max_seconds: float = 4 * 3600.0
    max_pixels_per_frame: int = 8_300_000  # 3840x2160
    max_frames_hashed: int = 100_000


@dataclass(frozen=True)
class FrameHash:
    frame: int
    quality: int
    pdq: bytes
    seconds: float

    def vpdq_line(self) -> str:
        return f"{self.frame},{self.quality},{self.pdq.hex()},{self.seconds:.3f}"


def frame_hashes(
    data: bytes, every_seconds: float = 1.0, limits: VideoLimits | None = None
) -> list[FrameHash]:
    """PDQ of the sampled frames of the first video stream."""
    return list(_hash_frames(data, every_seconds, limits or VideoLimits()))


def _hash_frames(data: bytes, every_seconds: float, limits: VideoLimits) -> Iterator[FrameHash]:
    if not data:
        raise InvalidArgument("empty media")
    try:
        container = av.open(io.BytesIO(data))
    except av.error.InvalidDataError:
        raise UnsupportedMedia(
            "not a video the decoder can read (unknown format, or truncated)"
        ) from None
    except av.error.FFmpegError as exc:
        raise CorruptMedia(f"cannot open the video: {exc}") from None
    with container:
        if not container.streams.video:
            raise UnsupportedMedia("the file has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        width, height = stream.codec_context.width, stream.codec_context.height
        if width * height > limits.max_pixels_per_frame:
            raise TooLarge(f"video frames are {width}x{height}; the limit is "
                           f"{limits.max_pixels_per_frame} pixels")  # fmt: skip
        rate = Fraction(stream.average_rate or stream.guessed_rate or 0)
        if rate <= 0:
            raise CorruptMedia("the video stream has no frame rate")
        step = max(1, round(float(rate) * every_seconds)) if every_seconds > 0 else 1
        hashed = 0
        try:
            for number, frame in enumerate(container.decode(stream)):
                seconds = float(number / rate)
                if seconds > limits.max_seconds:
                    raise TooLarge(f"video is longer than {limits.max_seconds:g} s")
                if number % step:
                    continue
                rgb = frame.to_ndarray(format="rgb24")
                value, quality = pdq_hash(np.ascontiguousarray(rgb))
                yield FrameHash(number, quality, value, round(seconds, 3))
                hashed += 1
                if hashed > limits.max_frames_hashed:
                    raise TooLarge(f"more than {limits.max_frames_hashed} frames to hash")
        except av.error.FFmpegError as exc:
            raise CorruptMedia(f"corrupt video: {exc}") from None


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
