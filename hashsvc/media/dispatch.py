"""One entry point for hashing any upload: find its kind, hand it to the module
that knows that kind, add the exact hashes of the file. Runs in the hashing
workers (see hashsvc/media/hashing.py), so it only returns plain data.

Each kind's module is imported where that kind is hashed, at its first upload:
the modules load their decoders (FFmpeg, MuPDF, Chromaprint, PDQ, Pillow) when
imported. The server process imports this module to sniff uploads and name the
jobs it sends, and must not hold decoders it never runs (they were ~60 MB of
its RSS, bench/memory.py); a worker holds only those its uploads needed.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from hashsvc.base import media_kinds
from hashsvc.base.errors import HashsvcError, InvalidArgument, TooLarge, UnsupportedMedia
from hashsvc.base.signals import Signal
from hashsvc.media import sniff
from hashsvc.media.limits import STAGE_LOCAL, STAGE_VIEWS, MediaLimits
from hashsvc.media.spool import SpooledMedia

MediaSource = bytes | SpooledMedia


@dataclass(frozen=True)
class Hashed:
    media_type: str  # "image", "video", "audio", "pdf"
    signals: list[Signal]
    # What was left out within the limits (pages past max_pages, audio past
    # max_seconds, a sound track with nothing to match), for the caller.
    notes: tuple[str, ...] = ()
    # False for an image's first step (STAGE_VIEWS): its band and region
    # views and its local features are still to come (STAGE_LOCAL).
    complete: bool = True
    # An image's first step: the picture as decoded (a numpy array), handed
    # to its second step so that one does not decode the upload again (~1.4
    # ms of a 1024x768 JPEG); None when larger than HANDOVER_MAX_BYTES (it
    # travels to the server and back), when not asked for (hash_media's
    # with_picture) or for any other step or kind.
    picture: object = None


# A first step's decoded picture larger than this is decoded again by the
# second step instead of travelling to the server and back: a reduced
# 1024x768 JPEG's luma is 192 KiB, a 1600x1200 PNG's RGB 5.5 MiB.
HANDOVER_MAX_BYTES = 8 * 1024 * 1024


def head_of(source: MediaSource) -> bytes:
    return source.head if isinstance(source, SpooledMedia) else source[:4096]


def size_of(source: MediaSource) -> int:
    return source.size if isinstance(source, SpooledMedia) else len(source)


def kind_of(source: MediaSource) -> str:
    """sniff.IMAGE / PDF / AV, or UnsupportedMedia."""
    if size_of(source) == 0:
        raise InvalidArgument("empty media")
    kind = sniff.sniff(head_of(source))
    if not kind:
        raise UnsupportedMedia(
            "unsupported media format (images: JPEG, PNG, WebP, GIF, BMP, TIFF;"
            " video: MP4, MOV, WebM, MKV, AVI; audio: MP3, AAC, Ogg, Opus, FLAC, WAV; PDF)"
        )
    return kind


def exact_signals(source: MediaSource) -> list[Signal]:
    """MD5 and SHA-256 of the bytes (a spooled upload's were taken as it arrived)."""
    if isinstance(source, SpooledMedia):
        md5, sha256 = source.md5, source.sha256
    else:
        md5, sha256 = hashlib.md5(source).digest(), hashlib.sha256(source).digest()
    return [Signal("md5", md5), Signal("sha256", sha256)]


def hash_media(
    source: MediaSource,
    limits: MediaLimits,
    for_query: bool,
    part: int | None = None,
    stage: str | None = None,
    picture: object = None,
    exact: bool = True,
    with_picture: bool = True,
) -> Hashed:
    """All signals of one upload (for a query, `part` selects half of an image's
    views so two workers can share it; other kinds ignore it). `stage`
    (queries): STAGE_VIEWS, an image's exact hashes and the PDQ views of its
    whole picture (incomplete: its band and region views and local features
    are STAGE_LOCAL's; with the decoded `picture`), any other media whole;
    STAGE_LOCAL, an image's band and region views and local features, from
    the first step's `picture` when given (else decoded again). `exact` False:
    without the MD5 and SHA-256 (the caller has them already). `with_picture`
    False: a first step's answer without its decoded picture, when its second
    step was started ahead (a 1024x768 JPEG's luma is 192 KiB to pickle, send
    and unpickle for nothing)."""
    if stage not in (None, STAGE_VIEWS, STAGE_LOCAL) or (stage and not for_query):
        raise ValueError(f"unknown hashing stage {stage!r}")
    if picture is not None and stage != STAGE_LOCAL:
        raise ValueError("only a second step takes a decoded picture")
    try:
        return _hash_media(source, limits, for_query, part, stage, picture, exact, with_picture)
    except MemoryError:
        # the worker's address-space limit (RLIMIT_AS) stopped a ballooning decoder
        raise TooLarge("decoding the media needs more memory than a worker may use") from None


def _hash_media(
    source: MediaSource,
    limits: MediaLimits,
    for_query: bool,
    part: int | None,
    stage: str | None,
    picture: object = None,
    with_exact: bool = True,
    with_picture: bool = True,
) -> Hashed:
    kind = kind_of(source)
    with_exact = with_exact and part in (None, 0) and stage != STAGE_LOCAL
    exact = exact_signals(source) if with_exact else []
    if kind == sniff.IMAGE:
        if size_of(source) > limits.image.max_bytes:
            raise TooLarge(
                f"image is {size_of(source)} bytes; the limit is {limits.image.max_bytes}"
            )
        from hashsvc.media import image

        data = source.read() if isinstance(source, SpooledMedia) else source
        if stage == STAGE_VIEWS and not image.is_animated_gif(data):
            signals, decoded = image.first_step(data, limits.image)
            handed = decoded if with_picture and decoded.nbytes <= HANDOVER_MAX_BYTES else None
            return Hashed(media_kinds.IMAGE, [*exact, *signals], complete=False, picture=handed)
        if picture is not None or not image.is_animated_gif(data):
            signals = image.picture_signals(data, limits.image, for_query, part, stage, picture)
            return Hashed(media_kinds.IMAGE, [*exact, *signals])
        kind = sniff.AV
    if stage == STAGE_LOCAL:
        # only an image's first step leaves anything for a second one
        raise ValueError("only a still image is hashed in two steps")
    path_or_bytes = source.path if isinstance(source, SpooledMedia) else source
    if kind == sniff.PDF:
        from hashsvc.media import pdf

        report = pdf.hash_pdf_report(path_or_bytes, limits.pdf, for_query)
        return Hashed(media_kinds.PDF, [*exact, *report.signals], tuple(report.notes))
    from hashsvc.media import audio, video

    if video.has_video_stream(path_or_bytes, limits.video.max_pixels_per_frame):
        sound = _SoundTrack(audio.AudioFrameFingerprinter(limits.audio, shifted_views=for_query))
        hashed = video.hash_video(path_or_bytes, limits.video, for_query, on_audio_frame=sound)
        sound_signals = sound.signals()
        notes = (sound.note,) if hashed.has_audio and sound.note else ()
        return Hashed(media_kinds.VIDEO, [*exact, *hashed.signals(), *sound_signals], notes)
    fingerprint = audio.fingerprint_audio(path_or_bytes, limits.audio, shifted_views=for_query)
    notes = ()
    if fingerprint.truncated:
        notes = (f"only the first {limits.audio.max_seconds:g} s of audio were fingerprinted",)
    return Hashed(media_kinds.AUDIO, [*exact, *fingerprint.query_signals()], notes)


class _SoundTrack:
    """A video's sound, fingerprinted in the same decoding pass. A track with
    nothing to match (silence, too short) or that cannot be converted leaves
    the video without an audio signal; it does not fail the video."""

    def __init__(self, fingerprinter) -> None:
        self._fingerprinter = fingerprinter  # an audio.AudioFrameFingerprinter
        self._fed = False
        self.note = ""

    def __call__(self, frame) -> None:
        if self.note:
            return
        try:
            self._fingerprinter(frame)
            self._fed = True
        except HashsvcError as exc:
            self.note = f"sound track not fingerprinted: {exc}"

    def signals(self) -> list[Signal]:
        if self.note:
            return []
        if not self._fed:
            self.note = "sound track not fingerprinted: no audio decoded"
            return []
        try:
            return self._fingerprinter.finish().query_signals()
        except HashsvcError as exc:
            self.note = f"sound track not fingerprinted: {exc}"
            return []
