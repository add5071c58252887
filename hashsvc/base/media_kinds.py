"""Media kinds as data: what each kind of upload is called, the signal types
it yields, which of a query's signals a reviewer keeps, and which bulk rows
are of that kind; and the one spelling of a video frame's variant.

Plain data and no decoders (the server process imports this; the decoders
are imported by the hashing workers only, in hashsvc/media/dispatch.py). A new
kind adds its hashing in hashsvc/media/, a `MediaKind` registered here and,
when its known entries need their own evidence, a rule in the matcher's
table (hashsvc/matching/matcher.py EVIDENCE_RULES).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from hashsvc.base.signals import LOCAL_FEATURES, Signal, signal_type

IMAGE = "image"
VIDEO = "video"
AUDIO = "audio"
PDF = "pdf"
# A known entry added (or a query made) as bare hash values, not media.
HASH = "hash"

# -- video frame variants: "frame:<n>" as decoded, "frame:<n>:<view>" for a
# derived view of that frame (small, center, flip, ...)

_FRAME = "frame"


def frame_variant(number: int, view: str = "") -> str:
    """The variant of frame `number` ("frame:120"), or of a view of it
    ("frame:120:flip")."""
    return f"{_FRAME}:{number}:{view}" if view else f"{_FRAME}:{number}"


def is_frame(variant: str) -> bool:
    """A video frame's signal, as decoded or a view of it."""
    return variant.startswith(_FRAME + ":")


def is_plain_frame(variant: str) -> bool:
    """A video frame as decoded ("frame:120"), not a derived view of it."""
    return is_frame(variant) and variant.count(":") == 1


def frame_number(variant: str) -> int | None:
    """Frame number of a frame variant ("frame:120:flip" -> 120), else None."""
    parts = variant.split(":")
    if len(parts) >= 2 and parts[0] == _FRAME and parts[1].isdigit():
        return int(parts[1])
    return None


# Variants a PDF's signals carry: one per page, one for the whole document.
PAGE_VARIANT = "page"
DOCUMENT_VARIANT = "document"
# A PDF's pages as rendered and its embedded pictures, as hashed
# (hashsvc/media/pdf.py: "page:<view>", "image:<view>"); exchanged are the
# page as rendered, the picture as embedded and its JPEG stream's SHA-256.
EXCHANGED_PDF_PICTURES = ("page:original", "image:original", "image:exact")
# Variants exports write and loads accept: the media as given, a video's
# decoded frames, a document's pages, whole text and pictures. Crops, bands
# and other views stay inside: each side derives its own from these.
EXCHANGED_VARIANT = re.compile(
    r"original|page|document|frame:\d{1,9}|" + "|".join(EXCHANGED_PDF_PICTURES)
)
# Local features a known picture keeps beside those: a small picture's,
# extracted from it enlarged, and a low-contrast picture's, extracted from it
# equalised (hashsvc/media/image.py, local_features.extract_contrast). They
# cannot be derived again from a hash, and without them a small or hazy
# picture loaded elsewhere no longer finds its tilted and cropped copies:
# exports carry them too (only hashsvc reads local_features; other tools'
# formats leave them out).
ENLARGED_VARIANT = "enlarged"
CONTRAST_VARIANT = "contrast"
EXCHANGED_FEATURE_VARIANTS = (
    ENLARGED_VARIANT,
    CONTRAST_VARIANT,
    f"{ENLARGED_VARIANT}:{CONTRAST_VARIANT}",
)


def is_exchanged(kind: str, variant: str) -> bool:
    """Whether exports write, and loads accept, a signal of this type and
    variant ("" is "original")."""
    return (
        not variant
        or EXCHANGED_VARIANT.fullmatch(variant) is not None
        or (kind == LOCAL_FEATURES.name and variant in EXCHANGED_FEATURE_VARIANTS)
    )


@dataclass(frozen=True)
class MediaKind:
    name: str
    # Signal types its hashing yields (besides the exact md5/sha256 of the file).
    signal_types: tuple[str, ...]
    # Perceptual signals of a query a reviewer keeps with a review item,
    # besides REMEMBERED_VARIANTS and the exact hashes: these types whatever
    # their variant,
    kept_signal_types: tuple[str, ...] = ()
    # and decoded video frames ("frame:<n>"), not their views.
    keeps_plain_frames: bool = False
    # Bulk rows: an imported entry is of this kind when one of its signals is
    # of one of these types or variants (see media_type_of for the order).
    bulk_signal_types: tuple[str, ...] = ()
    bulk_variants: tuple[str, ...] = ()
    bulk_frames: bool = False

    def keeps(self, sig: Signal) -> bool:
        """Whether a reviewer keeps this query signal (a perceptual one)."""
        # a frame's PDQ, not its local features (~10 kB each, dozens a video)
        return sig.kind in self.kept_signal_types or (
            self.keeps_plain_frames and is_plain_frame(sig.variant) and sig.kind == "pdq"
        )

    def claims(self, sig: Signal) -> bool:
        """Whether an imported entry with this signal is of this kind."""
        return (
            sig.kind in self.bulk_signal_types
            or sig.variant in self.bulk_variants
            or (self.bulk_frames and is_frame(sig.variant))
        )


# In the order bulk rows are recognised: a frame or a whole-video hash makes
# a video even beside page signals; a text signal makes a PDF even beside a
# sound; rows that no kind claims are bare hashes.
MEDIA_KINDS: dict[str, MediaKind] = {
    k.name: k
    for k in (
        MediaKind(
            VIDEO,
            ("pdq", "videohash", "chromaprint", "local_features"),
            keeps_plain_frames=True,
            kept_signal_types=("videohash", "chromaprint"),
            bulk_signal_types=("videohash",),
            bulk_frames=True,
        ),
        MediaKind(
            PDF,
            ("pdq", "text_sha256", "text_simhash", "local_features"),
            bulk_signal_types=("text_sha256", "text_simhash"),
            bulk_variants=(PAGE_VARIANT, DOCUMENT_VARIANT, *EXCHANGED_PDF_PICTURES),
        ),
        MediaKind(
            AUDIO,
            ("chromaprint",),
            kept_signal_types=("chromaprint",),
            bulk_signal_types=("chromaprint",),
        ),
        MediaKind(IMAGE, ("pdq", "local_features")),
        MediaKind(HASH, ()),
    )
}

# The upload's own hashes, which a review item keeps and a false-positive
# judgement remembers: the media as given (any kind) and an image before its
# borders were trimmed.
REMEMBERED_VARIANTS: tuple[str, ...] = ("original", "untrimmed")


def media_kind(name: str) -> MediaKind:
    return MEDIA_KINDS[name]


def worth_keeping(sig: Signal) -> bool:
    """A query signal a review item keeps: the upload's own hashes, not every
    derived view."""
    return (
        sig.variant in REMEMBERED_VARIANTS
        or not signal_type(sig.kind).perceptual
        or any(k.keeps(sig) for k in MEDIA_KINDS.values())
    )


# Bulk rows of one signal of the whole media (variant "original"), the common
# case: its kind by signal type alone.
SINGLE_MEDIA_TYPE: dict[str, str] = {
    t: k.name for k in reversed(MEDIA_KINDS.values()) for t in k.bulk_signal_types
}


def media_type_of(signals: Sequence[Signal]) -> str:
    """What kind of media an imported entry is, from its signals (the matcher
    treats video and PDF entries by their frames and pages)."""
    if len(signals) == 1 and signals[0].variant == "original":
        return SINGLE_MEDIA_TYPE.get(signals[0].kind, HASH)  # the common case, fast
    for kind in MEDIA_KINDS.values():
        if any(kind.claims(s) for s in signals):
            return kind.name
    return HASH
