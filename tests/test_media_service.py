"""Video, audio and PDF through the running service: streamed uploads, entries
with thousands of signals, matches with time or page ranges, pictures found in
videos and PDFs, sound found in videos, limits, and the history record."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from PIL import ImageOps

from hashsvc.v1 import hashsvc_pb2 as pb
from hashsvc_testing import audio_media, pdf_media, video_media
from hashsvc_testing.image_media import encode as encode_image

CHUNK = 64 * 1024  # small chunks: every upload here crosses many messages


def _chunks(data: bytes):
    for start in range(0, len(data), CHUNK):
        yield data[start : start + CHUNK]


def _upload_add(stubs, md, set_name: str, name: str, data: bytes) -> pb.Entry:
    messages = [pb.AddEntryUploadRequest(header=pb.AddEntryRequest(set=set_name, name=name))]
    messages += [pb.AddEntryUploadRequest(chunk=c) for c in _chunks(data)]
    return stubs.curation.AddEntryUpload(iter(messages), metadata=md)


def _upload_match(stubs, md, data: bytes, **header) -> pb.MatchResponse:
    messages = [pb.MatchUploadRequest(header=pb.MatchRequest(**header))]
    messages += [pb.MatchUploadRequest(chunk=c) for c in _chunks(data)]
    return stubs.matcher.MatchUpload(iter(messages), metadata=md)


def _match_for(resp: pb.MatchResponse, entry: str) -> pb.MatchedEntry | None:
    return next((m for m in resp.matches if m.entry == entry), None)


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    """Known and query media, made once: a 20 s slideshow of photos 0-5, its
    transforms, an unrelated slideshow, speech tracks, PDFs."""
    d = tmp_path_factory.mktemp("media")
    known_video = video_media.slideshow(d / "known.mp4", [0, 1, 2, 3, 4, 5], 3.3)
    other_video = video_media.slideshow(d / "other.mp4", [12, 13, 14, 15], 3.3)
    speech = audio_media.speech_track(1, 40.0, "ar")
    other_speech = audio_media.speech_track(2, 30.0, "ar", background_seed=1)
    # the known video with the known speech as its sound track
    with_sound = d / "with-sound.mp4"
    wav = d / "speech.wav"
    wav.write_bytes(audio_media.encode(speech, "wav"))
    video_media.ffmpeg(
        "-i", str(other_video), "-i", str(wav), "-map", "0:v", "-map", "1:a",
        "-c:v", "copy", "-c:a", "aac", "-shortest", str(with_sound),
    )  # fmt: skip
    # a known photo shown whole (pillarboxed) from 6 s to 10 s of a new video
    still = ImageOps.pad(video_media.photo(7), video_media.SIZE, color=(0, 0, 0))
    frames = [
        *video_media.slideshow_frames([12, 13], 3.0),
        *[np.asarray(still)] * (4 * video_media.FPS),
        *video_media.slideshow_frames([14], 3.0),
    ]
    photo_in_video = video_media.write_video(d / "photo-in-video.mp4", frames)
    known_pub = pdf_media.publication(3, "ar", photos=("image2.jpg",))
    return {
        "video": known_video.read_bytes(),
        "video_mirrored": video_media.transformed(known_video, "mirrored", d).read_bytes(),
        "video_letterboxed": video_media.transformed(known_video, "letterboxed", d).read_bytes(),
        "video_excerpt": video_media.excerpt(known_video, 6.0, 12.0, d).read_bytes(),
        "video_short_excerpt": video_media.excerpt(known_video, 3.0, 7.0, d).read_bytes(),
        "video_compilation": video_media.compilation(
            [(other_video, 0.0, 9.0), (known_video, 6.0, 12.0)], d, "compilation"
        ).read_bytes(),
        "video_other": other_video.read_bytes(),
        "video_with_sound": with_sound.read_bytes(),
        "gif": video_media.gif(known_video, d, seconds=12.0).read_bytes(),
        "photo": encode_image(video_media.photo(7)),
        "photo_in_video": photo_in_video.read_bytes(),
        "speech": audio_media.master(speech),
        "speech_64k": audio_media.encode(speech, "mp3", "-b:a", "64k"),
        "speech_excerpt": audio_media.encode(
            speech[int(20 * audio_media.RATE) : int(32 * audio_media.RATE)], "ogg", "-q:a", "0"
        ),
        "speech_other": audio_media.encode(other_speech, "mp3"),
        "pdf": pdf_media.typeset(known_pub),
        "pdf_retypeset": pdf_media.retypeset(known_pub),
        "pdf_other": pdf_media.typeset(pdf_media.publication(4, "ar")),
        "pdf_photo": pdf_media.photo_file("image2.jpg").read_bytes(),
    }


@pytest.fixture(scope="module")
def service(tmp_path_factory, media, make_module_harness):
    """A server (hashing in worker processes, as in production) holding one
    set with a video, an image, an audio track and a PDF, all streamed in."""
    db = tmp_path_factory.mktemp("svc") / "db.sqlite"
    h = make_module_harness(f"sqlite:///{db}", hash_in_process=False, max_upload_bytes=64 << 20)
    stubs, md = h.stubs("operator")
    stubs.curation.CreateSet(pb.CreateSetRequest(name="known"), metadata=md)
    entries = {
        "video": _upload_add(stubs, md, "known", "video", media["video"]),
        "photo": _upload_add(stubs, md, "known", "photo", media["photo"]),
        "speech": _upload_add(stubs, md, "known", "speech", media["speech"]),
        "pdf": _upload_add(stubs, md, "known", "pdf", media["pdf"]),
    }
    return h, entries


def test_entries_know_their_media(service):
    _, entries = service
    assert entries["video"].media_type == pb.VIDEO
    assert entries["speech"].media_type == pb.AUDIO
    assert entries["pdf"].media_type == pb.PDF
    assert entries["photo"].media_type == pb.IMAGE


@pytest.mark.parametrize("query", ["video_mirrored", "video_letterboxed", "gif"])
def test_whole_video_copies_match(service, media, query):
    h, _ = service
    stubs, md = h.stubs("matcher")
    resp = _upload_match(stubs, md, media[query])
    assert resp.media_type == pb.VIDEO
    found = _match_for(resp, "video")
    assert found is not None, [m.entry for m in resp.matches]
    assert found.unit == "seconds" and found.decision == pb.BLOCK
    assert found.query_share >= 0.5
    if query != "gif":  # the GIF holds the first 12 s only
        assert found.known_share >= 0.5
    assert resp.decision == pb.BLOCK


def test_excerpt_reports_where_it_comes_from(service, media):
    h, _ = service
    stubs, md = h.stubs("matcher")
    found = _match_for(_upload_match(stubs, md, media["video_excerpt"]), "video")
    assert found is not None and found.decision == pb.BLOCK
    run = found.segments[0]
    # the excerpt is the known video's 6-18 s
    assert abs(run.known_start - (6.0 + run.query_start)) <= 1.5
    assert run.query_end - run.query_start >= 10.0


def test_short_excerpt_asks_for_review(service, media):
    """7 s shared with a known video may be a common intro: REVIEW, not BLOCK."""
    h, _ = service
    stubs, md = h.stubs("matcher")
    found = _match_for(_upload_match(stubs, md, media["video_short_excerpt"]), "video")
    assert found is not None and found.decision == pb.REVIEW
    assert abs(found.segments[0].known_start - (3.0 + found.segments[0].query_start)) <= 1.5


def test_known_segment_inside_a_compilation(service, media):
    h, _ = service
    stubs, md = h.stubs("matcher")
    found = _match_for(_upload_match(stubs, md, media["video_compilation"]), "video")
    assert found is not None and found.decision == pb.BLOCK
    run = found.segments[0]
    # the compilation's 9-21 s are the known video's 6-18 s
    assert 7.5 <= run.query_start <= 11.0 and run.query_end >= 18.0
    assert abs(run.known_start - run.query_start + 3.0) <= 1.5


def test_unrelated_video_is_allowed(service, media):
    h, _ = service
    stubs, md = h.stubs("matcher")
    resp = _upload_match(stubs, md, media["video_other"])
    assert resp.decision == pb.ALLOW and not resp.matches


def test_known_picture_shown_in_a_video(service, media):
    """A video showing the known photo between 6 s and 10 s matches the image
    entry there."""
    h, _ = service
    stubs, md = h.stubs("matcher")
    found = _match_for(_upload_match(stubs, md, media["photo_in_video"]), "photo")
    assert found is not None and found.signal_type == "pdq"
    assert found.decision == pb.BLOCK and found.unit == "seconds"
    assert [(s.query_start, s.query_end) for s in found.segments] == [(6.0, 9.0)]


def test_audio_copies_and_excerpts_match_with_offsets(service, media):
    h, _ = service
    stubs, md = h.stubs("matcher")
    whole = _match_for(_upload_match(stubs, md, media["speech_64k"]), "speech")
    assert whole is not None and whole.signal_type == "chromaprint"
    assert whole.decision == pb.BLOCK and whole.unit == "seconds"
    assert whole.segments[0].query_end - whole.segments[0].query_start >= 30
    excerpt = _match_for(_upload_match(stubs, md, media["speech_excerpt"]), "speech")
    assert excerpt is not None and excerpt.decision != pb.ALLOW
    seg = excerpt.segments[0]
    assert abs((seg.known_start - seg.query_start) - 20.0) <= 0.5


def test_unrelated_speech_is_allowed(service, media):
    h, _ = service
    stubs, md = h.stubs("matcher")
    resp = _upload_match(stubs, md, media["speech_other"])
    assert resp.media_type == pb.AUDIO
    assert resp.decision == pb.ALLOW, [(m.entry, m.distance) for m in resp.matches]


def test_video_matches_by_its_sound_too(service, media):
    """The known speech under other pictures: found by the audio track."""
    h, _ = service
    stubs, md = h.stubs("matcher")
    resp = _upload_match(stubs, md, media["video_with_sound"])
    assert any(s.signal_type == "chromaprint" for s in resp.query_signals)
    found = _match_for(resp, "speech")
    assert found is not None and found.signal_type == "chromaprint"
    assert found.decision == pb.BLOCK


def test_pdf_retypeset_matches_with_pages(service, media):
    h, _ = service
    stubs, md = h.stubs("matcher")
    resp = _upload_match(stubs, md, media["pdf_retypeset"])
    assert resp.media_type == pb.PDF
    found = _match_for(resp, "pdf")
    assert found is not None and found.unit == "pages"
    assert found.decision == pb.BLOCK  # same text: the exact text signal
    assert _match_for(_upload_match(stubs, md, media["pdf_other"]), "pdf") is None


def test_picture_inside_a_known_pdf_is_found(service, media):
    """An upload of the photo that the known PDF embeds matches the PDF."""
    h, _ = service
    stubs, md = h.stubs("matcher")
    resp = stubs.matcher.Match(
        pb.MatchRequest(media=pb.Media(content=media["pdf_photo"])), metadata=md
    )
    found = _match_for(resp, "pdf")
    assert found is not None and found.decision != pb.ALLOW


def test_history_keeps_the_ranges(service, media):
    h, _ = service
    stubs, md = h.stubs("matcher")
    resp = _upload_match(stubs, md, media["video_excerpt"], client_ref="upload-77")
    auditor, amd = h.stubs("auditor")
    records = auditor.audit.QueryHistory(pb.QueryHistoryRequest(), metadata=amd).records
    record = next(r for r in records if r.request_id == resp.request_id)
    assert record.client_ref == "upload-77" and record.rpc == "MatchUpload"
    assert record.media_bytes == len(media["video_excerpt"])
    video_match = next(m for m in record.matches if m.entry == "video")
    assert video_match.unit == "seconds" and video_match.segments


def test_upload_limits(tmp_path, make_harness):
    h = make_harness(f"sqlite:///{tmp_path}/db.sqlite", max_upload_bytes=200_000)
    stubs, md = h.stubs("matcher")
    with pytest.raises(grpc.RpcError) as too_big:
        _upload_match(stubs, md, b"\x00" * 300_000)
    assert too_big.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    # chunks without a header first
    with pytest.raises(grpc.RpcError) as headless:
        stubs.matcher.MatchUpload(iter([pb.MatchUploadRequest(chunk=b"x")]), metadata=md)
    assert headless.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as empty:
        _upload_match(stubs, md, b"")
    assert empty.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as unknown:
        _upload_match(stubs, md, b"not a media file at all" * 100)
    assert unknown.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "unsupported media format" in unknown.value.details()


def test_partial_hashing_is_reported(tmp_path, make_harness):
    """A PDF longer than max_pages is hashed in part, and the answer says so."""
    from hashsvc.media.pdf import PdfLimits

    h = make_harness(f"sqlite:///{tmp_path}/db.sqlite", pdf=PdfLimits(max_pages=3))
    stubs, md = h.stubs("matcher")
    resp = _upload_match(stubs, md, pdf_media.many_pages(12))
    assert resp.media_type == pb.PDF and resp.decision == pb.ALLOW
    assert any("12" in note and "3" in note for note in resp.notes), list(resp.notes)
    auditor, amd = h.stubs("auditor")
    record = auditor.audit.QueryHistory(pb.QueryHistoryRequest(), metadata=amd).records[-1]
    assert record.request_id == resp.request_id and "notes" in record.detail_json
