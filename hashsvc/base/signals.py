"""Signal types as data: what a hash is called, how long it is, how it is written.

A signal is held as bytes everywhere inside the program; hex text exists only at
the edges (API, CLI, export files), where `parse` and `format` convert.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from hashsvc.base.errors import InvalidArgument, quoted


@dataclass(frozen=True)
class SignalType:
    name: str
    # Length in bits; for a sequence type, the length of one element.
    bits: int
    # Perceptual signals are compared by Hamming distance; the others match
    # only when equal.
    perceptual: bool
    # A sequence type's value is any number (>= 1) of `bits`-sized elements,
    # big-endian, e.g. a Chromaprint fingerprint: one 32-bit word per ~0.124 s.
    sequence: bool = False
    # An opaque type's value is one versioned, variable-length blob of at most
    # `max_bytes` (local features: keypoints and descriptors of a picture).
    # It is neither a hash compared by Hamming distance nor a sequence of
    # elements: only its own index and verifier read it (code that treats
    # `sequence` as audio or `perceptual and not sequence` as a BinaryIndex
    # must not pick it up).
    opaque: bool = False
    max_bytes: int = 0

    @property
    def nbytes(self) -> int:
        return self.bits // 8

    @property
    def max_distance(self) -> int:
        """Distances are Hamming bits; for a sequence type (audio), the bit
        error rate of an alignment in percent."""
        if self.opaque:
            return 0  # matched by evidence (inliers, coverage), not by a distance
        return 100 if self.sequence else self.bits

    def parse(self, text: str) -> bytes:
        """Canonical hex text -> bytes, or InvalidArgument saying what is wrong."""
        text = text.strip().lower()
        if text.startswith("0x"):
            text = text[2:]
        want = self.nbytes * 2
        if self.opaque:
            # structure (header, counts, ranges) is checked where values enter
            # the store: hashsvc/core (AddEntry by hash, bulk rows)
            if not text or len(text) % 2 or len(text) > self.max_bytes * 2:
                raise InvalidArgument(
                    f"{self.name} value must be a non-empty, even number of hex digits,"
                    f" at most {self.max_bytes * 2}; got {len(text)}"
                )
        elif self.sequence:
            if not text or len(text) % want:
                raise InvalidArgument(
                    f"{self.name} value must be a non-empty multiple of {want} hex digits,"
                    f" got {len(text)}"
                )
        elif len(text) != want:
            raise InvalidArgument(f"{self.name} hash must be {want} hex digits, got {len(text)}")
        if not _HEX.fullmatch(text):
            raise InvalidArgument(f"{self.name} hash must be hexadecimal")
        return bytes.fromhex(text)

    def format(self, value: bytes) -> str:
        return value.hex()


_HEX = re.compile(r"[0-9a-f]*")

PDQ = SignalType("pdq", 256, perceptual=True)
MD5 = SignalType("md5", 128, perceptual=False)
SHA256 = SignalType("sha256", 256, perceptual=False)
# Partner feeds (TCAP) share SHA-512 file hashes: stored for exact match only,
# hashsvc never computes them from media.
SHA512 = SignalType("sha512", 512, perceptual=False)
# Whole-video hash of the `videohash` package (collage of frames -> wavelet hash).
VIDEOHASH = SignalType("videohash", 64, perceptual=True)
# Raw Chromaprint fingerprint (as `fpcalc -raw`), 32-bit words big-endian.
CHROMAPRINT = SignalType("chromaprint", 32, perceptual=True, sequence=True)
# SHA-256 of a document's normalised text (see hashsvc/media/textnorm.py).
TEXT_SHA256 = SignalType("text_sha256", 256, perceptual=False)
# Near-duplicate text signal of a page or a whole document.
TEXT_SIMHASH = SignalType("text_simhash", 256, perceptual=True)

# Local features of a picture (hashsvc/media/local_features.py encodes them):
# keypoint positions and binary descriptors, matched by the feature index and
# a geometric check, not by distance. 64 KiB holds ~1,800 keypoints of 32-byte
# descriptors, several times what extraction keeps; a larger blob is refused
# before it is decoded.
LOCAL_FEATURES_MAX_BYTES = 64 * 1024
LOCAL_FEATURES = SignalType(
    "local_features", 8, perceptual=True, opaque=True, max_bytes=LOCAL_FEATURES_MAX_BYTES
)

SIGNAL_TYPES: dict[str, SignalType] = {
    t.name: t
    for t in (
        PDQ,
        MD5,
        SHA256,
        SHA512,
        VIDEOHASH,
        CHROMAPRINT,
        TEXT_SHA256,
        TEXT_SIMHASH,
        LOCAL_FEATURES,
    )
}


def signal_type(name: str) -> SignalType:
    try:
        return SIGNAL_TYPES[name]
    except KeyError:
        known = ", ".join(sorted(SIGNAL_TYPES))
        raise InvalidArgument(f"unknown signal type {quoted(name)} (known: {known})") from None


@dataclass(frozen=True)
class Signal:
    """One hash of one piece of media, as the program holds it."""

    kind: str  # a SignalType name
    value: bytes
    quality: int | None = None  # PDQ quality 0..100
    # Which view of the media was hashed: "original" for the media as given;
    # for known entries, extra views stored at add time ("crop_c10", ...);
    # for queries, views tried at match time ("flip_x", "region", ...).
    variant: str = "original"
    # Where in the media the signal was taken: seconds from the start for video
    # frames and audio, the 1-based page number for PDF pages; None for a
    # signal of the whole media.
    position: float | None = None

    @property
    def type(self) -> SignalType:
        return signal_type(self.kind)

    def hex(self) -> str:
        return self.value.hex()


def hamming(a: bytes, b: bytes) -> int:
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).bit_count()


def signal_json(sig: Signal) -> dict:
    """A signal as the history and review items store it (hex value)."""
    return {
        "signal_type": sig.kind,
        "value": sig.hex(),
        "quality": sig.quality,
        "variant": sig.variant,
    }
