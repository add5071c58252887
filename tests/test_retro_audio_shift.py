"""Audio in retro-hunts, through the running service: an upload's own
fingerprint is in its history record, so a plain copy let through is found
when the recording becomes known; a copy pitched up 6% is found only when
the history keeps the shifted views Match searched with
(history_keep_audio_shifted_views, both stores); other speech in the same
voice over the same bed is never found."""

from __future__ import annotations

import pytest

from hashsvc.v1 import hashsvc_pb2 as pb
from hashsvc_testing import audio_media as am
from tests.test_retro import _retro_items, _upload_add, _upload_match, _wait_runs

VOICE = "ar+m3"
BED = 5


@pytest.fixture(scope="module")
def media():
    known = am.speech_track(5, 40.0, "ar", voice=VOICE, background_seed=BED)
    return {
        "known": am.master(known),
        "copy": am.encode(known, "mp3", "-b:a", "64k"),
        "pitch_up_6": am.shifted(known, pitch=1.06),
        "others": [
            am.encode(am.speech_track(seed, 30.0, "ar", voice=VOICE, background_seed=BED), "mp3")
            for seed in (605, 606)
        ],
    }


def _hunt(h, media) -> dict[str, pb.ReviewItem]:
    """The uploads let through, then the recording added: the retro items by
    client_ref, and the run."""
    ops, op_md = h.stubs("operator")
    m, m_md = h.stubs("matcher")
    rev, rev_md = h.stubs("reviewer")
    ops.curation.CreateSet(pb.CreateSetRequest(name="nasheeds"), metadata=op_md)
    uploads = {"copy": media["copy"], "pitch_up_6": media["pitch_up_6"]}
    uploads.update({f"other-{n}": data for n, data in enumerate(media["others"])})
    for ref, data in uploads.items():
        assert _upload_match(m, m_md, data, ref).decision == pb.ALLOW
    _upload_add(ops, op_md, "nasheeds", "speech", media["known"])
    (run,) = _wait_runs(ops, op_md, seconds=300)
    assert run.state == "done" and run.uploads_scanned == len(uploads)
    return {i.client_ref: i for i in _retro_items(rev, rev_md)}


def test_kept_shifted_views_find_a_pitched_copy(store_url, make_harness, media):
    h = make_harness(store_url, retro_poll_seconds=0.2, history_keep_audio_shifted_views=True)
    found = _hunt(h, media)
    assert set(found) == {"copy", "pitch_up_6"}
    (shifted,) = found["pitch_up_6"].matches
    assert shifted.entry == "speech" and shifted.decision in (pb.BLOCK, pb.REVIEW)
    assert shifted.audio_shift.pitch_ratio == pytest.approx(1.06, abs=0.011)
    assert not found["copy"].matches[0].HasField("audio_shift")


def test_by_default_the_fingerprint_finds_plain_copies_only(tmp_path, make_harness, media):
    h = make_harness(f"sqlite:///{tmp_path}/db.sqlite", retro_poll_seconds=0.2)
    found = _hunt(h, media)
    assert set(found) == {"copy"}  # README, Retro-hunt: why not the pitched one
