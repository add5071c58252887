"""Local features of video frames and of pictures inside videos and PDFs,
through the running service on both stores (issue 18): a known video cropped
by 20% or tilted by 5 degrees, its sound track removed, is found by its
frames with time ranges; an unrelated video is allowed; a known picture shown
(tilted) inside an uploaded video or PDF is found, with when or where; an
uploaded picture that is a cropped frame of a known video names its time.

The set's PDQ thresholds are 0, so what these find beyond a copy is found by
local features, not by PDQ's frame views."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from hashsvc.base.media_kinds import frame_variant
from hashsvc.base.signals import Signal
from hashsvc.matching.video_evidence import LocalFramePair, local_frame_evidence
from hashsvc.v1 import hashsvc_pb2 as pb
from hashsvc_testing import pdf_media, video_media
from hashsvc_testing.image_media import encode as encode_image
from tests.helpers import match_request

KNOWN_PHOTOS = [0, 1, 2, 3, 4]
OTHER_PHOTOS = [12, 13, 14, 15]
SECONDS_EACH = 3.3
PICTURE = 17  # a known picture (image entry): a 1600x1004 photo
PDQ_EXACT_ONLY = [pb.Threshold(signal_type="pdq", block_distance=0, review_distance=0)]


def tilted(img: Image.Image, degrees: float, keep: float = 0.85) -> Image.Image:
    """Turned, then cropped to the middle `keep` of each side."""
    turned = img.rotate(degrees, resample=Image.Resampling.BILINEAR)
    w, h = turned.size
    left, top = int(w * (1 - keep) / 2), int(h * (1 - keep) / 2)
    return turned.crop((left, top, w - left, h - top))


def on_background(img: Image.Image, size: tuple[int, int]) -> Image.Image:
    """`img` fitted into `size` (its aspect kept), centred on dark grey."""
    fitted = img.copy()
    fitted.thumbnail(size, Image.Resampling.LANCZOS)
    out = Image.new("RGB", size, (40, 40, 40))
    out.paste(fitted, ((size[0] - fitted.width) // 2, (size[1] - fitted.height) // 2))
    return out


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    d = tmp_path_factory.mktemp("lf-media")
    known = video_media.slideshow(d / "known.mp4", KNOWN_PHOTOS, SECONDS_EACH)
    other = video_media.slideshow(d / "other.mp4", OTHER_PHOTOS, SECONDS_EACH)
    picture = video_media.photo(PICTURE)
    shown = on_background(tilted(picture, 5), video_media.SIZE)
    # the known picture, tilted, from 4 s to 8 s of an otherwise unrelated video
    frames = [
        *video_media.slideshow_frames([9], 4.0),
        *([np.asarray(shown)] * (4 * video_media.FPS)),
        *video_media.slideshow_frames([10], 4.0),
    ]
    in_video = video_media.write_video(d / "picture-in-video.mp4", frames)
    photo_dir = d / "photos"
    photo_dir.mkdir()
    tilted(picture, 5).save(photo_dir / "shown.jpg", quality=90)
    picture.save(photo_dir / "picture.jpg", quality=90)
    video_media.photo(16).save(photo_dir / "unrelated.jpg", quality=90)
    in_pdf = pdf_media.typeset(
        pdf_media.publication(7, "ar", photos=("shown.jpg",), photo_dir=photo_dir)
    )
    # frame 7.0 s of the known video (photo 2, 0.4 s in), 20% cut off each side
    with_frame = list(video_media.slideshow_frames(KNOWN_PHOTOS, SECONDS_EACH))
    frame = Image.fromarray(with_frame[round(7.0 * video_media.FPS)])
    w, h = frame.size
    frame_crop = frame.crop((int(w * 0.14), int(h * 0.06), int(w * 0.94), int(h * 0.86)))
    return {
        "video": known.read_bytes(),
        "picture": encode_image(picture, "JPEG", quality=92),
        **{
            name: video_media.transformed(known, name, d).read_bytes()
            for name in video_media.CROP_AND_TILT
        },
        "other": other.read_bytes(),
        "picture_in_video": in_video.read_bytes(),
        "picture_in_pdf": in_pdf,
        "frame_crop": encode_image(frame_crop, "JPEG", quality=85),
        # a known document with the picture in it (other text than the upload's)
        "document": pdf_media.typeset(
            pdf_media.publication(9, "ar", photos=("picture.jpg",), photo_dir=photo_dir)
        ),
        "unrelated_pdf": pdf_media.typeset(
            pdf_media.publication(8, "ar", photos=("unrelated.jpg",), photo_dir=photo_dir)
        ),
    }


@pytest.fixture(scope="module")
def service(media, module_store_url, make_module_harness):
    h = make_module_harness(module_store_url, max_upload_bytes=64 << 20)
    stubs, md = h.stubs("operator")
    stubs.curation.CreateSet(pb.CreateSetRequest(name="lf", thresholds=PDQ_EXACT_ONLY), metadata=md)
    for name in ("video", "picture", "document"):
        stubs.curation.AddEntry(
            pb.AddEntryRequest(set="lf", name=name, media=pb.Media(content=media[name])),
            metadata=md,
        )
    return h


def _match(service, data: bytes) -> pb.MatchResponse:
    stubs, md = service.stubs("matcher")
    return stubs.matcher.Match(match_request(data), metadata=md)


def _found(resp: pb.MatchResponse, entry: str) -> pb.MatchedEntry:
    found = [m for m in resp.matches if m.entry == entry]
    assert found, [(m.entry, m.signal_type) for m in resp.matches]
    return found[0]


def test_known_video_entry_has_sampled_frame_features(service):
    stubs, md = service.stubs("operator")
    entry = stubs.curation.GetEntry(pb.GetEntryRequest(set="lf", name="video"), metadata=md)
    frames = [s for s in entry.signals if s.signal_type == "local_features"]
    # one a second over 16.5 s
    assert 14 <= len(frames) <= 18
    assert all(s.variant.startswith("frame:") for s in frames)
    times = sorted(s.position for s in frames)
    assert times[0] == 0.0 and times[-1] >= 15.0


@pytest.mark.parametrize("name", video_media.CROP_AND_TILT)
def test_cropped_or_tilted_video_without_sound_is_found_by_its_frames(service, media, name):
    resp = _match(service, media[name])
    assert resp.media_type == pb.VIDEO
    found = _found(resp, "video")
    assert found.signal_type == "local_features"
    assert found.decision in (pb.REVIEW, pb.BLOCK) and resp.decision == found.decision
    assert found.unit == "seconds" and found.segments
    run = found.segments[0]
    # the copy is the whole video, in step: query time = known time
    assert run.query_end - run.query_start >= 10.0
    assert abs(run.known_start - run.query_start) <= 1.5
    evidence = found.local_features
    assert evidence.inliers >= 20 and evidence.coverage > 0.1
    if name == "tilted_5":
        assert abs(abs(evidence.angle) - 5) < 1.5, evidence
    else:
        assert 1.1 < evidence.scale < 1.4, evidence  # 80% of the frame, same size: x1.25


def test_unrelated_video_is_allowed(service, media):
    resp = _match(service, media["other"])
    assert resp.decision == pb.ALLOW and not resp.matches


def test_known_picture_shown_tilted_inside_a_video_is_found_with_its_times(service, media):
    resp = _match(service, media["picture_in_video"])
    found = _found(resp, "picture")
    assert found.signal_type == "local_features" and found.decision != pb.ALLOW
    assert found.unit == "seconds"
    assert [(s.query_start, s.query_end) for s in found.segments] == [(4.0, 6.0)]
    assert abs(abs(found.local_features.angle) - 5) < 1.5
    assert "video" not in [m.entry for m in resp.matches]


def test_known_picture_inside_an_uploaded_pdf_is_found_on_its_page(service, media):
    resp = _match(service, media["picture_in_pdf"])
    assert resp.media_type == pb.PDF
    found = _found(resp, "picture")
    assert found.signal_type == "local_features" and found.decision != pb.ALLOW
    assert found.unit == "pages" and found.segments[0].query_start >= 1


def test_a_known_documents_picture_in_another_document_never_blocks_alone(service, media):
    """The known document's picture is in the upload (tilted), its text is
    not: a picture shared whole may be a logo or a template photo."""
    resp = _match(service, media["picture_in_pdf"])
    found = _found(resp, "document")
    assert found.signal_type == "local_features" and found.decision == pb.REVIEW
    assert found.unit == "pages" and found.segments[0].known_start >= 1


def test_cropped_frame_of_a_known_video_names_the_known_time(service, media):
    found = _found(_match(service, media["frame_crop"]), "video")
    assert found.signal_type == "local_features" and found.decision != pb.ALLOW
    assert found.unit == "seconds"
    # the strongest of the known frames that show the same photo (6.6-9.9 s)
    assert 6.6 <= found.segments[0].known_start <= 9.9


def test_unrelated_picture_and_document_are_allowed(service, media):
    img = video_media.photo(20)
    assert _match(service, encode_image(img, "JPEG")).decision == pb.ALLOW
    assert _match(service, media["unrelated_pdf"]).decision == pb.ALLOW


# -- the frame rule alone (hashsvc/matching/video_evidence.local_frame_evidence)


def _frame(n: int, seconds: float) -> Signal:
    return Signal("local_features", b"", None, frame_variant(n), seconds)


def _pairs(query_times, offset: float, blocks: bool = True) -> list[LocalFramePair]:
    return [
        LocalFramePair(
            _frame(round(t * 25), t), _frame(round((t + offset) * 25), t + offset), blocks
        )
        for t in query_times
    ]


def test_frame_rule_runs_shares_and_levels():
    query = [_frame(round(t * 25), t) for t in range(0, 20, 2)]
    known = [float(t) for t in range(20)]
    # every other query frame verified, one sample missed at 8 s: one run
    pairs = _pairs([0, 2, 4, 6, 10, 12, 14, 16, 18], 0.0)
    evidence = local_frame_evidence(query, pairs, known)
    assert evidence.decision == "block"
    assert [(r.query_start, r.query_end) for r in evidence.runs] == [(0, 18)]
    assert evidence.query_share == 0.9 and evidence.known_share == 9 / 20
    # one frame is a picture match, not a video match; review-level frames review
    assert local_frame_evidence(query, _pairs([4], 0.0), known).decision is None
    assert local_frame_evidence(query, _pairs([4, 6], 0.0, False), known).decision == "review"
    # an upload with one sampled frame: that frame is enough
    assert local_frame_evidence(query[:1], _pairs([0], 3.0), known).decision == "block"
