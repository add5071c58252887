"""What hashing one upload may cost, per media kind: the limits that the
server's configuration (hashsvc/core/config.py) names and that the hashing
pool checks before it sends a job to a worker.

Kept apart from the media modules, which load their decoders (FFmpeg, MuPDF,
Chromaprint, PDQ, Pillow) when imported: the server process reads these
settings but never decodes, and importing the decoders there cost it ~60 MB
of RSS (bench/memory.py). Only plain values here.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int = 50 * 1024 * 1024
    # Decompression bombs: refuse before decoding pixels. 50 MP covers any
    # camera photo; a 30,000 x 30,000 PNG (900 MP) is refused.
    max_pixels: int = 50_000_000
    max_side: int = 20_000
    # A picture's local features (ORB, tiles) are extracted in a second
    # thread beside its PDQ views: one upload's latency drops by ~7 ms when a
    # core is free (bench/speed.py); off, one thread does both, one after the
    # other. The signals are the same either way. On, the thread is still
    # used only while the machine has a core to spare (hashsvc/media/
    # machine.py): on a loaded one the two threads wait for each other's GIL.
    local_features_thread: bool = True
    # A picture (known or uploaded) shorter than this on its long side, as
    # stored, also gets its local features extracted from it enlarged to
    # features_enlarge_side (variant "enlarged"; 0: never). ORB finds no
    # keypoint within 31 px of an edge: of a 300x168 picture turned 20 degrees
    # and cut to fit (243x87) that leaves a 25 px strip, and the upload got no
    # signal. Enlarged, both pictures keep their content off those bands
    # (README: Local features of small pictures).
    features_enlarge_below: int = 400
    features_enlarge_side: int = 512
    # A picture (known or uploaded, whole or enlarged) in which ORB detects
    # fewer than this many keypoints (of up to 1,500: a low-contrast picture)
    # is also extracted after adaptive equalisation (variant "contrast" or
    # "enlarged:contrast"; 0: never). A hazy sea under a pale sky had 9
    # keypoints and no signal, a dim fundus photo 76 and its crops none; so
    # every crop and tilt of them was missed. Equalised on both sides, they
    # verify (README: Local features of low-contrast pictures).
    features_contrast_below: int = 300
    # An upload's local features (ORB, its tiles: 6-14 ms of a 1024x768
    # upload's 10-25 ms of hashing) cannot change a decision that exact or PDQ
    # evidence makes BLOCK in every set asked. When at least this share of the
    # last local_after_views_window image uploads were blocked so (a flood of
    # known pictures), uploads are hashed in two steps: exact hashes and the
    # PDQ views of the whole picture, matched; then the band and region views
    # and the local features (side by side) only if they could still decide.
    # A blocked upload then costs its whole-picture views alone; any other one
    # a second job and its whole-picture views and the rest one after the
    # other. 0: always two steps; above 1: never.
    local_after_views_share: float = 0.25
    local_after_views_window: int = 64
    # The share is counted per caller (token): one caller's flood turns two
    # steps on for that caller only. Windows kept at most (~1 KB each), the
    # least recently seen caller's dropped first.
    local_after_views_callers: int = 1000
    # In two steps, an image's second step starts beside its first when a
    # hashing worker has no job and the machine a core to spare (its 1-minute
    # load average under its cores; it decodes the upload itself): an upload
    # that is not blocked then waits for the longer step, not for both one
    # after the other; a blocked one leaves it unused (~8 ms of CPU that no
    # other job wanted). Never when the workers or the cores are busy.
    second_step_when_idle: bool = True

    def __post_init__(self) -> None:
        if self.features_enlarge_below < 0:
            raise ValueError("image.features_enlarge_below must be 0 (never) or more")
        if not 0 <= self.features_contrast_below <= 100_000:
            raise ValueError("image.features_contrast_below must be within 0 (never)..100000")
        if not 64 <= self.features_enlarge_side <= 2048:
            raise ValueError("image.features_enlarge_side must be within 64..2048")
        if not self.local_after_views_share >= 0:  # NaN too
            raise ValueError("image.local_after_views_share must be 0 or more")
        if not 1 <= self.local_after_views_window <= 100_000:
            raise ValueError("image.local_after_views_window must be within 1..100000")
        if not 1 <= self.local_after_views_callers <= 1_000_000:
            raise ValueError("image.local_after_views_callers must be within 1..1000000")


@dataclass(frozen=True)
class VideoLimits:
    max_seconds: float = 4 * 3600.0
    max_pixels_per_frame: int = 8_300_000  # 3840x2160
    max_side: int = 8192
    max_frames_hashed: int = 100_000
    # Decoded frames, whatever the sampling: a 1000 fps or million-frame GIF
    # costs decode time even when few frames are hashed.
    max_frames_decoded: int = 2_000_000
    # Wall-clock budget for one decode pass; None = no limit.
    max_wall_seconds: float | None = None
    # The videohash keeps every sampled frame at 144x144 (62 kB) until the end,
    # as the package's collage and strip need all of them; past this many
    # (an hour at the default rate) it is left out rather than use ~GBs. The
    # package itself cannot hash such videos (a strip of 2M x 144 pixels).
    max_videohash_frames: int = 3600
    # Local features of sampled frames (issue 18: a cropped or tilted copy
    # has no PDQ-close frame, its keypoints still agree). Known videos are
    # sampled densely, uploads half as often (a shared scene spans seconds);
    # a longer video's samples are spread evenly so at most max_* are taken
    # (a 10-minute known video: one every 5 s). Each known sample is a
    # picture in the feature index (~1 kB) and an ~11 kB blob in the store and
    # in the entry's messages (120: ~1.3 MB, well inside gRPC's 4 MiB); each
    # query sample costs ~9 ms to extract plus its verifications.
    feature_every_seconds_known: float = 1.0
    feature_every_seconds_query: float = 2.0
    max_feature_frames_known: int = 120
    max_feature_frames_query: int = 60

    def __post_init__(self) -> None:
        # A negative interval or an unbounded count would make a long video's
        # entry outgrow gRPC's 4 MiB messages (~11 kB a known sample) or a
        # query's hashing unbounded: refuse them when the config is read. 0
        # turns the samples off.
        for name in ("feature_every_seconds_known", "feature_every_seconds_query"):
            if not 0 <= getattr(self, name) <= 3600:
                raise ValueError(f"video.{name} must be within 0..3600 (0: no samples)")
        for name in ("max_feature_frames_known", "max_feature_frames_query"):
            if not 0 <= getattr(self, name) <= 300:
                raise ValueError(f"video.{name} must be within 0..300")


@dataclass(frozen=True)
class AudioLimits:
    max_bytes: int = 512 * 1024 * 1024
    # Longer audio is fingerprinted over its first max_seconds only and the
    # result says so (`truncated`): refusing would leave a long recording
    # unchecked, and a policy can still send truncated results to review.
    # Four hours, as VideoLimits.max_seconds, so a video's sound is covered.
    max_seconds: float = 4 * 3600.0
    max_channels: int = 16
    max_sample_rate: int = 384_000
    min_sample_rate: int = 4_000  # below telephone quality nothing is left to hear
    # Shorter fingerprints are refused as too short to match; the index asks
    # for at least audio_index.DEFAULT_MIN_SECONDS of aligned audio anyway.
    min_seconds: float = 5.0
    # Wall-clock bound on one decode (Timeout beyond it; 0 = none): four hours of
    # audio take ~30 s on a free core, so this only stops a pathological decode.
    max_wall_seconds: float = 300.0
    # Pitch- and tempo-shifted uploads (query only): stretches of
    # shift_window_seconds of the first shift_scan_seconds of the upload are
    # time-stretched at the same pitch by each of shift_tempo_stretches (1.0:
    # as they are), then resampled by each pitch ratio from 1 -
    # shift_pitch_range to 1 + shift_pitch_range in steps of shift_pitch_step,
    # and fingerprinted again (hashsvc/media/audio.py says why these values;
    # each view costs ~4 ms). One stretch, in the middle, when the scanned
    # audio sounds alike throughout; one in the middle of each part, up to
    # shift_windows, where its sound changes by more than shift_change_db
    # (an intro, then the track). 0 windows: no shifted search. The parts
    # share shift_budget_seconds of stretch: each is at most
    # shift_window_seconds and at most the budget over the number of parts,
    # so an upload of two parts costs about what one of one part costs.
    shift_windows: int = 2
    shift_window_seconds: float = 16.0
    shift_budget_seconds: float = 24.0
    shift_scan_seconds: float = 120.0
    shift_change_db: float = 2.5
    shift_pitch_range: float = 0.10
    shift_pitch_step: float = 0.01
    shift_tempo_stretches: tuple[float, ...] = (0.9, 1.0, 1.1)

    def __post_init__(self) -> None:
        # A bad shift setting would silently turn the shifted search off or
        # make it unboundedly costly: refuse it when the config is read.
        if not 0 <= self.shift_windows <= 20:
            raise ValueError("audio.shift_windows must be within 0..20")
        if not 5 <= self.shift_window_seconds <= 120:
            raise ValueError("audio.shift_window_seconds must be within 5..120")
        if not 0 < self.shift_pitch_step <= 0.05 or not 0 <= self.shift_pitch_range <= 0.3:
            raise ValueError("audio.shift_pitch_step must be within (0, 0.05], range 0..0.3")
        if self.shift_pitch_range / self.shift_pitch_step > 40:
            raise ValueError("audio.shift_pitch_range / shift_pitch_step must be <= 40")
        if not 5 <= self.shift_budget_seconds <= 240:
            raise ValueError("audio.shift_budget_seconds must be within 5..240")
        if not 5 <= self.shift_scan_seconds <= 600:
            raise ValueError("audio.shift_scan_seconds must be within 5..600")
        if not 0 < self.shift_change_db <= 60:
            raise ValueError("audio.shift_change_db must be within (0, 60]")
        stretches = self.shift_tempo_stretches
        if not 1 <= len(stretches) <= 5 or any(not 0.5 <= a <= 2.0 for a in stretches):
            raise ValueError("audio.shift_tempo_stretches: 1..5 factors within 0.5..2")


@dataclass(frozen=True)
class PdfLimits:
    max_bytes: int = 100 * 1024 * 1024
    # Pages hashed; the rest of a longer file is left out and reported.
    # Magazines run to ~100 pages; 300 pages take ~10 s on one core.
    max_pages: int = 300
    # Objects in the cross-reference table: a file past this is refused
    # before any page is parsed.
    max_objects: int = 1_000_000
    # PDF's own largest page (200 inches, 14,400 points); a page outside
    # [min, max] on either side is skipped.
    max_page_points: float = 14_400.0
    min_page_points: float = 8.0
    # Long side of a rendered page in pixels.
    render_side: int = 512
    # Raw (compressed) bytes of a page's content streams: a page past this
    # is not rendered or read.
    max_page_content_bytes: int = 32 * 1024 * 1024
    # Embedded images hashed per document; smaller ones (icons, bullets,
    # rules) are skipped, as are ones too big to decode.
    max_images: int = 200
    min_image_side: int = 100
    max_image_pixels: int = 50_000_000
    # Embedded pictures that also get local features (the first ones with
    # enough keypoints; ~9 ms each): a known picture shown cropped or tilted
    # inside a document is found by them.
    max_feature_images: int = 20
    # Whole-document budget: pages are hashed until it runs out.
    max_seconds: float = 15.0
    # Text extraction budget within it: past it, no more text is read, and
    # the whole-document text signals are left out (they would describe a
    # document that does not exist).
    max_text_seconds: float = 5.0
    # Fewer words give too few shingles for a stable SimHash, and an exact
    # hash of "Page 1" matches everything.
    min_page_words: int = 20
    min_document_words: int = 20


@dataclass(frozen=True)
class MediaLimits:
    image: ImageLimits = field(default_factory=ImageLimits)
    video: VideoLimits = field(default_factory=VideoLimits)
    audio: AudioLimits = field(default_factory=AudioLimits)
    pdf: PdfLimits = field(default_factory=PdfLimits)


# hash_query's work in two halves of similar cost, so that two worker
# processes can hash one upload at once (each decodes it: ~1.5 ms).
QUERY_PARTS = 2
# What one hashing job of an upload computes (HashingPool.hash_query's
# `stage`): everything (None), an image's exact hashes and the PDQ views of
# its whole picture (query part 0), or the rest: its band and region views and
# local features (part 1); other kinds of media are hashed whole in the first
# step.
STAGE_VIEWS = "views"
STAGE_LOCAL = "local"
