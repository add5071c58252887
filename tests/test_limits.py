"""Limits that hostile files run into: what a decoder is given before our own
checks run, streams no decoder reads, and the server's memory across many
hostile requests (a real `hashsvc serve`, via bench/fuzz.py)."""

from __future__ import annotations

import importlib.util
import signal
import sys
import time
from pathlib import Path

import pytest

from hashsvc.base.errors import HashsvcError, TooLarge, UnsupportedMedia
from hashsvc.media.dispatch import MediaLimits, hash_media
from hashsvc.media.video import VideoLimits, hash_video
from hashsvc_testing import hostile, processes

FUZZ = Path(__file__).resolve().parents[1] / "bench" / "fuzz.py"


@pytest.mark.parametrize("for_query", [True, False])
def test_a_header_claiming_16000x16000_is_refused_before_decoding(for_query):
    """FFmpeg decodes frames while opening a file to learn its streams; a 1 KB
    MKV whose H.264 header claims 16000x16000 cost 2.5-5 s of a worker there
    (twice: dispatch, then the video reader) before our size check ran."""
    data = hostile.h264_mkv(16_000, 16_000)
    assert len(data) < 2048
    # CPU seconds, not wall: on 2 cores at load 27 the refusal took 1.2 s of
    # wall time for a few ms of work; decoding frames costs seconds of CPU.
    started = time.process_time()
    with pytest.raises(TooLarge, match="16000x16000"):
        hash_media(data, MediaLimits(), for_query)
    assert time.process_time() - started < 1.0


def test_the_probe_pixel_limit_follows_the_video_limits():
    data = hostile.h264_mkv(4_000, 4_000)  # 16 MP: over the default, under this one
    lax = VideoLimits(max_pixels_per_frame=20_000_000)
    try:  # garbage slices: decoded (concealed) or corrupt, but not refused for size
        hash_video(data, lax)
    except HashsvcError as exc:
        assert not isinstance(exc, TooLarge), exc


@pytest.mark.parametrize(
    "data",
    [
        hostile.mkv("V_NOPE", b"", 64, 48, [(0, b"abc" * 10)] * 2),
        hostile.wav_claiming(44_100, 2, bits=0),
    ],
    ids=["video_codec_unknown", "wav_0_bits"],
)
def test_a_stream_no_decoder_reads_is_unsupported_media(data):
    """Both ended in AttributeError (PyAV gives no codec context), which the
    server reported as INTERNAL."""
    with pytest.raises(UnsupportedMedia, match="no decoder"):
        hash_media(data, MediaLimits(), for_query=True)


def test_server_memory_stays_bounded_across_hostile_requests():
    """A real `hashsvc serve` with 2 hashing workers takes hostile requests
    (bench/fuzz.py; CI's bench-short runs 200, `make bench` 10,000): no crash,
    only results or typed statuses, still serving, and the RSS of the server
    and its workers grows by less than 200 MB over the second half of the run
    (the server process alone by less than 40 MB)."""
    fuzz = _load_fuzz()
    report = fuzz.run(requests=150, seconds=120, seed=11, api_cases=False)
    print("\n".join(report.lines()))
    assert not report.crashed
    assert report.untyped == []
    assert report.serving_afterwards
    assert report.requests >= 100
    assert report.growth_mb(2) < 200, report.lines()
    assert report.growth_mb(1) < 40, report.lines()


def _load_fuzz():
    spec = importlib.util.spec_from_file_location("bench_fuzz", FUZZ)
    fuzz = importlib.util.module_from_spec(spec)
    sys.modules["bench_fuzz"] = fuzz  # its dataclasses look their module up
    spec.loader.exec_module(fuzz)
    return fuzz


def test_fuzz_server_stopped_leaves_no_hashing_workers(tmp_path):
    """bench/fuzz.py's server runs in a session of its own and is stopped as a
    group: its hashing workers go too, also one that does not answer (stuck
    in a decode, here stopped). Before, the server was terminated alone and
    such workers were left running, in the caller's own process group."""
    fuzz = _load_fuzz()
    with open(tmp_path / "server.log", "wb") as log:
        server = fuzz.start_server(
            ["--listen", "127.0.0.1:0", "--db", f"sqlite:///{tmp_path}/f.db", "--workers", "2"],
            log,
        )
    server_mark = processes.mark(server.pid)
    workers: list[int] = []
    marks: list[processes.ProcessMark] = []
    try:
        deadline = time.monotonic() + 60
        while len(workers) < 2 and time.monotonic() < deadline and server.poll() is None:
            time.sleep(0.1)
            workers = fuzz._children(server.pid)
        # each worker as it runs now: the checks and kills below name these
        # processes, not whatever takes their pids after they were reaped
        marks = [m for m in map(processes.mark, workers) if m is not None]
        assert len(marks) >= 2, (tmp_path / "server.log").read_text()
        assert {m.pgid for m in marks} == {server.pid}  # not the caller's group
        assert processes.kill(
            marks[-1], signal.SIGSTOP
        )  # a worker that will not notice its server go
        fuzz.stop_server(server, grace=5)
        assert server.returncode is not None
        deadline = time.monotonic() + 10
        while any(map(processes.alive, marks)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [m for m in marks if processes.alive(m)]
    finally:
        # whatever happened above: only those still the processes seen, in
        # the server's group
        for m in [server_mark, *marks]:
            if m is not None:
                processes.kill(m, signal.SIGKILL)


def test_a_request_racing_a_pool_replacement_is_hashed_by_the_new_pool():
    """A request that read the pool just before another request replaced it
    (a worker died or hung) submitted to the old, shut-down pool: RuntimeError,
    reported as INTERNAL. It now goes to the new pool."""
    from hashsvc.media.hashing import HashingPool
    from hashsvc.media.image import ImageLimits
    from hashsvc_testing.image_media import encode, photo

    pool = HashingPool(1, ImageLimits())
    try:
        old = pool._pool
        submit = old.submit

        def replaced_meanwhile(*args, **kwargs):
            pool._replace(old, kill=True)  # what the other request's failure does
            return submit(*args, **kwargs)

        old.submit = replaced_meanwhile
        assert pool.hash_query(encode(photo(1))).media_type == "image"
        assert pool._pool is not old
    finally:
        pool.close()


@pytest.mark.parametrize("fmt, tag", [("mkv", b"ENCODER"), ("mp4", b"Lavf")])
def test_tags_in_bad_utf8_do_not_fail_the_upload(hostile_media, fmt, tag):
    """A bit-flipped MKV, MP4 or FLAC whose metadata is no longer UTF-8 ended
    in UnicodeDecodeError when opened (INTERNAL; 7 of 10,000 fuzz requests)."""
    data = bytearray(hostile.seeds(hostile_media)[fmt])
    at = data.find(tag)
    data[at : at + 2] = b"\xe1\xff"
    assert hash_media(bytes(data), MediaLimits(), for_query=True).media_type == "video"


@pytest.mark.parametrize(
    "setting, value",
    [
        ("max_feature_frames_known", 100_000),
        ("max_feature_frames_query", -1),
        ("feature_every_seconds_known", -1.0),
        ("feature_every_seconds_query", 1e9),
    ],
)
def test_video_feature_sampling_limits_are_refused_when_the_config_is_read(
    tmp_path, setting, value
):
    """A known video's samples travel in its entry's messages (~11 kB each):
    an unbounded count would outgrow them, a negative interval means nothing."""
    from hashsvc.core.config import load_config

    path = tmp_path / "hashsvc.toml"
    path.write_text(f"[video]\n{setting} = {value}\n")
    with pytest.raises(ValueError, match=f"video.{setting}"):
        load_config(str(path))
    path.write_text(f"[video]\n{setting} = 0\n")  # 0: no samples, allowed
    assert getattr(load_config(str(path)).video, setting) == 0
