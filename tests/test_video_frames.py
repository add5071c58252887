"""Frame-level video signal, against Meta's vPDQ reference hashes in
../shared/vectors (read in place).

Held here (upstream's own criterion, vpdq/python/tests): the same number of
frames and the same timestamps; for frames where both qualities are >= 50 the
PDQ distance is < 31. Measured: chair-20 max 6, padded max 2, doorknob (low
texture) max 22.
"""

from __future__ import annotations

import csv
import io
import wave

import pytest

from hashsvc.base.errors import InvalidArgument, UnsupportedMedia
from hashsvc.base.signals import hamming
from hashsvc.media import video
from hashsvc_testing import vectors

# Paths only: each test that reads them first checks the folder is there.
VECTORS = vectors.VECTORS / "threatexchange"
VIDEOS = VECTORS / "tmk" / "sample-videos"
HASHES = VECTORS / "vpdq" / "sample-hashes"


@pytest.mark.parametrize(
    ("name", "max_distance"),
    [("chair-20-sd-bar", 8), ("test-padded-dimensions", 4), ("doorknob-hd-no-bar", 30)],
)
def test_every_frame_agrees_with_vpdq(name, max_distance):
    vectors.require()
    got = video.frame_hashes((VIDEOS / f"{name}.mp4").read_bytes(), every_seconds=0)
    want = video.parse_vpdq((HASHES / f"{name}.txt").read_text())
    assert len(got) == len(want)
    assert [f.frame for f in got] == [f.frame for f in want]
    assert all(abs(a.seconds - b.seconds) < 0.002 for a, b in zip(got, want, strict=True))
    distances = [
        hamming(a.pdq, b.pdq)
        for a, b in zip(got, want, strict=True)
        if a.quality >= 50 and b.quality >= 50
    ]
    assert distances and max(distances) <= max_distance


def test_one_frame_per_second_matches_python_threatexchange():
    vectors.require()
    got = video.frame_hashes((VIDEOS / "chair-20-sd-bar.mp4").read_bytes(), every_seconds=1)
    with open(VECTORS / "pytx_vpdq_chair-20-sd-bar_1fps_expected.csv", newline="") as f:
        want = list(csv.DictReader(f))
    assert [f.frame for f in got] == [int(r["equals_vpdq_sample_hashes_frame"]) for r in want]
    for frame, row in zip(got, want, strict=True):
        assert hamming(frame.pdq, bytes.fromhex(row["pdq_hex"])) <= 8
        assert frame.seconds == float(row["timestamp_sec"])


def test_vpdq_text_round_trip_and_errors():
    vectors.require()
    text = (HASHES / "chair-19-sd-bar.txt").read_text()
    frames = video.parse_vpdq(text)
    assert video.format_vpdq(frames) == text
    with pytest.raises(InvalidArgument, match="line 2"):
        video.parse_vpdq("0,100," + "ab" * 32 + ",0.000\n1,100,abcd,0.033\n")
    with pytest.raises(InvalidArgument, match="quality"):
        video.parse_vpdq("0,101," + "ab" * 32 + ",0.000\n")


def _video_bytes(name: str) -> bytes:
    vectors.require()
    return (VIDEOS / f"{name}.mp4").read_bytes()


def _wav() -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(b"\x00\x01" * 8000)
    return buf.getvalue()


@pytest.mark.parametrize(
    ("data", "error", "words"),
    [
        (b"", InvalidArgument, "empty"),
        (b"definitely not a video" * 10, UnsupportedMedia, "decoder can read"),
        (_wav(), UnsupportedMedia, "no video stream"),
        # read when the test runs (../shared/vectors)
        (lambda: _video_bytes("chair-20-sd-bar")[:20000], UnsupportedMedia, "truncated"),
    ],
)
def test_bad_video_input(data, error, words):
    data = data() if callable(data) else data
    with pytest.raises(error, match=words):
        video.frame_hashes(data)


@pytest.mark.parametrize("name", ["chair-20-sd-bar", "test-padded-dimensions"])
def test_fast_query_frames_agree_with_the_known_small_view(name):
    """Queries skip non-reference frames and the loop filter and hash at
    <= 512 px; known frames keep a view hashed the same way. Measured: max 4
    (chair-20, padded), 8 (doorknob); full size vs 512 px differs by up to 32
    on padded, which is why known frames keep that view."""
    vectors.require()
    path = str(VIDEOS / f"{name}.mp4")
    known = video.hash_video(path, videohash_rate=0)
    query = video.hash_video(path, for_query=True, videohash_rate=0)
    small = {s.position: s for s in known.frame_signals if s.variant.endswith(":small")}
    distances = [
        hamming(s.value, small[s.position].value)
        for s in query.frame_signals
        if s.variant.count(":") == 1 and s.position in small and s.quality >= 50
    ]
    assert len(distances) >= 5 and max(distances) <= 10
