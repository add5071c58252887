"""The media-kind registry (hashsvc/base/media_kinds.py): frame variants
spelled and read in one place, bulk rows' kinds, what a review item keeps,
and every kind known to the matcher's evidence table and the API."""

from hashsvc.api.convert import MEDIA_TO_PB
from hashsvc.base import media_kinds
from hashsvc.base.media_kinds import (
    AUDIO,
    HASH,
    IMAGE,
    MEDIA_KINDS,
    PDF,
    VIDEO,
    frame_number,
    frame_variant,
    is_frame,
    is_plain_frame,
    media_type_of,
    worth_keeping,
)
from hashsvc.base.signals import SIGNAL_TYPES, Signal
from hashsvc.matching.matcher import EVIDENCE_RULES
from hashsvc.v1 import hashsvc_pb2 as pb

PDQ = bytes(32)


def test_frame_variants_round_trip():
    assert frame_variant(120) == "frame:120"
    assert frame_variant(120, "flip") == "frame:120:flip"
    assert frame_number(frame_variant(120, "center_flip")) == 120
    assert frame_number("frame:7") == 7
    assert frame_number("original") is None
    assert frame_number("frame:x") is None
    assert is_frame("frame:3:small") and not is_frame("original")
    assert is_plain_frame("frame:3") and not is_plain_frame("frame:3:small")


def test_bulk_rows_kind_from_signals():
    def sig(kind, variant="original", value=PDQ):
        return Signal(kind, value, None, variant)

    assert media_type_of([sig("pdq")]) == HASH
    assert media_type_of([sig("md5", value=bytes(16))]) == HASH
    assert media_type_of([sig("videohash", value=bytes(8))]) == VIDEO
    assert media_type_of([sig("chromaprint", value=bytes(4))]) == AUDIO
    assert media_type_of([sig("text_sha256")]) == PDF
    assert media_type_of([sig("text_simhash")]) == PDF
    # several signals: a frame makes a video even beside pages and sound
    assert media_type_of([sig("pdq", "page"), sig("pdq", frame_variant(1))]) == VIDEO
    assert media_type_of([sig("chromaprint", value=bytes(4)), sig("pdq", "page")]) == PDF
    assert media_type_of([sig("chromaprint", value=bytes(4)), sig("md5", value=bytes(16))]) == (
        AUDIO
    )
    assert media_type_of([sig("pdq", "document"), sig("md5", value=bytes(16))]) == PDF
    assert media_type_of([sig("pdq"), sig("pdq", "crop_c10")]) == HASH


def test_a_review_item_keeps_the_uploads_own_hashes_not_its_views():
    assert worth_keeping(Signal("pdq", PDQ, 90, "original"))
    assert worth_keeping(Signal("pdq", PDQ, 90, "untrimmed"))
    assert worth_keeping(Signal("pdq", PDQ, 90, frame_variant(4)))
    assert worth_keeping(Signal("md5", bytes(16)))  # exact hashes always
    assert worth_keeping(Signal("chromaprint", bytes(8), None, "audio"))
    assert worth_keeping(Signal("videohash", bytes(8), None, "whatever"))
    assert not worth_keeping(Signal("pdq", PDQ, 90, "flip_x"))
    assert not worth_keeping(Signal("pdq", PDQ, 90, frame_variant(4, "flip")))
    assert not worth_keeping(Signal("text_simhash", PDQ, None, "page"))


def test_every_kind_is_known_to_the_api_and_yields_known_signal_types():
    assert set(MEDIA_KINDS) == {IMAGE, VIDEO, AUDIO, PDF, HASH}
    assert MEDIA_TO_PB == {
        IMAGE: pb.IMAGE,
        VIDEO: pb.VIDEO,
        AUDIO: pb.AUDIO,
        PDF: pb.PDF,
        HASH: pb.HASH,
    }
    for kind in MEDIA_KINDS.values():
        assert set(kind.signal_types) <= set(SIGNAL_TYPES), kind.name
    assert set(EVIDENCE_RULES) <= set(MEDIA_KINDS)
    assert set(media_kinds.SINGLE_MEDIA_TYPE.values()) <= set(MEDIA_KINDS)
