"""Recall of crops and tilts by local features (issue 18) through the real core, on both
stores: copies whose votes sit under min_votes are still verified while the upload has budget
left (the spare pass), never more than max_verified_spare of them, and none under
min_votes_spare."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from hashsvc.core.core import MatchQuery
from hashsvc.matching import local_geometry
from hashsvc.matching.policy import LocalFeatureMatching
from hashsvc_testing.image_media import encode as encode_image
from hashsvc_testing.image_media import photo
from hashsvc_testing.local_media import rotate
from hashsvc_testing.vectors import vector

BRIDGE = ("threatexchange", "pdq", "data", "reg-test-input", "dih", "bridge-1-original.jpg")


def bridge() -> Image.Image:
    return Image.open(vector(*BRIDGE)).convert("RGB")


def _known(core, n_photos: int = 3) -> None:
    core.curation.create_set("s")
    core.curation.add_entry("s", "poster", {}, "op", media=encode_image(bridge(), "JPEG"))
    for n in range(n_photos):
        core.curation.add_entry("s", f"photo{n}", {}, "op", media=encode_image(photo(n), "JPEG"))


def _counting_verify(monkeypatch) -> list[int]:
    calls: list[int] = []
    verify = local_geometry.verify

    def counting(*args, **kwargs):
        calls.append(1)
        return verify(*args, **kwargs)

    monkeypatch.setattr(local_geometry, "verify", counting)
    return calls


# 4 known pictures, all candidates: the bound (2) is below what the index offers
@pytest.mark.parametrize("spare, found", [(2, True), (0, False)])
def test_a_copy_voted_under_min_votes_is_verified_by_the_spare_pass(
    make_core, store_url, monkeypatch, spare, found
):
    # min_votes out of reach: every candidate is under it, as a turned copy's were in the bench
    core = make_core(
        store_url,
        local_features=LocalFeatureMatching(
            min_votes=1000.0, min_votes_spare=0.0, max_verified_spare=spare
        ),
    )
    _known(core)
    calls = _counting_verify(monkeypatch)
    upload = encode_image(rotate(bridge(), np.random.default_rng(0), 10), "JPEG")
    outcome = core.match(MatchQuery(media=upload), caller="t")
    local = [m for m in outcome.matches if m.signal_type == "local_features"]
    assert [m.entry_name for m in local] == (["poster"] if found else [])
    if found:
        assert local[0].decision in ("block", "review")
    # bounded: a flood of uploads with weak candidates costs at most `spare` verifications each
    assert 0 < len(calls) <= spare if found else calls == []


def test_the_spare_pass_adds_nothing_under_min_votes_spare(make_core, store_url, monkeypatch):
    core = make_core(
        store_url,
        local_features=LocalFeatureMatching(
            min_votes=1000.0, min_votes_spare=999.0, max_verified_spare=4
        ),
    )
    _known(core)
    calls = _counting_verify(monkeypatch)
    upload = encode_image(rotate(bridge(), np.random.default_rng(0), 10), "JPEG")
    outcome = core.match(MatchQuery(media=upload), caller="t")
    assert not [m for m in outcome.matches if m.signal_type == "local_features"]
    assert calls == []


def test_spare_settings_out_of_range_are_refused():
    from hashsvc.core.config import Config

    for bad in ({"max_verified_spare": -1}, {"min_votes_spare": float("nan")}):
        with pytest.raises(ValueError, match="spare"):
            Config(local_features=LocalFeatureMatching(**bad))
