"""The whole-video hash (videohash) is a hint only where the frames could not
decide: an uploaded video whose frames were compared with a known video's and
disagree is not sent to review by a close videohash (bench/video.py counts the
unrelated pairs it used to send). Through the running service, both stores."""

from __future__ import annotations

import pytest

from hashsvc.base.signals import hamming
from hashsvc.media import video
from hashsvc.v1 import hashsvc_pb2 as pb
from hashsvc_testing import video_media as vm

CHUNK = 256 * 1024


def _chunks(data: bytes):
    for start in range(0, len(data), CHUNK):
        yield data[start : start + CHUNK]


def _upload_add(stubs, md, set_name: str, name: str, data: bytes) -> pb.Entry:
    messages = [pb.AddEntryUploadRequest(header=pb.AddEntryRequest(set=set_name, name=name))]
    messages += [pb.AddEntryUploadRequest(chunk=c) for c in _chunks(data)]
    return stubs.curation.AddEntryUpload(iter(messages), metadata=md)


def _upload_match(stubs, md, data: bytes) -> pb.MatchResponse:
    messages = [pb.MatchUploadRequest(header=pb.MatchRequest())]
    messages += [pb.MatchUploadRequest(chunk=c) for c in _chunks(data)]
    return stubs.matcher.MatchUpload(iter(messages), metadata=md)


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """Two slideshows of unrelated photos (labelme pictures 12-13 and 14-15)
    whose videohashes agree (measured: 0 bits), and a re-encode of the first."""
    d = tmp_path_factory.mktemp("videohash")
    known = vm.slideshow(d / "known.mp4", [12, 13])
    unrelated = vm.slideshow(d / "unrelated.mp4", [14, 15])
    copy = vm.transformed(known, "reencode_low_bitrate", d)
    return {
        "known": known.read_bytes(),
        "unrelated": unrelated.read_bytes(),
        "copy": copy.read_bytes(),
        "known_videohash": video.hash_video(str(known)).videohash.value,
        "unrelated_videohash": video.hash_video(str(unrelated), for_query=True).videohash.value,
    }


@pytest.fixture(scope="module")
def service(module_store_url, make_module_harness, videos):
    """Set "known": the known video, uploaded (frames and videohash). Set
    "partner": the same video's videohash alone, as a partner sends it."""
    harness = make_module_harness(module_store_url, max_upload_bytes=64 << 20)
    stubs, md = harness.stubs("operator")
    for name in ("known", "partner"):
        stubs.curation.CreateSet(pb.CreateSetRequest(name=name), metadata=md)
    _upload_add(stubs, md, "known", "video", videos["known"])
    stubs.curation.AddEntry(
        pb.AddEntryRequest(
            set="partner",
            name="videohash-only",
            signal=pb.SignalValue(signal_type="videohash", value=videos["known_videohash"].hex()),
        ),
        metadata=md,
    )
    return harness


def test_the_unrelated_videos_agree_on_videohash(videos):
    # what makes the case: without the frames, the videohash would say REVIEW
    assert hamming(videos["known_videohash"], videos["unrelated_videohash"]) <= 4


def test_an_unrelated_video_is_not_sent_to_review_by_videohash(service, videos):
    stubs, md = service.stubs("matcher")
    resp = _upload_match(stubs, md, videos["unrelated"])
    found = [(m.set, m.entry, m.signal_type, m.distance) for m in resp.matches if m.set == "known"]
    assert found == []


def test_a_copy_still_blocks_by_its_frames(service, videos):
    stubs, md = service.stubs("matcher")
    resp = _upload_match(stubs, md, videos["copy"])
    own = next(m for m in resp.matches if m.set == "known")
    assert own.decision == pb.BLOCK and own.signal_type == "pdq"


def test_videohash_is_still_a_hint_where_there_are_no_frames_to_compare(service, videos):
    """A known entry that is a bare videohash: its copy reaches review on it."""
    stubs, md = service.stubs("matcher")
    resp = _upload_match(stubs, md, videos["copy"])
    hint = next(m for m in resp.matches if m.set == "partner")
    assert hint.signal_type == "videohash" and hint.decision == pb.REVIEW
