"""The public match JSON is written once (hashsvc/base/match_json.py): the
CLI's `match --json` (from the protobuf answer) and the core's own Match give
the same object for the same match, with and without where it matched."""

from __future__ import annotations

from hashsvc.api import convert
from hashsvc.client.commands import views
from hashsvc.matching.matcher import LocalEvidence, Match, Segment


def _match(**extent) -> Match:
    fields = {
        "set_id": 3,
        "set_name": "isis-amaq",
        "entry_id": 41,
        "entry_name": "clip.mp4",
        "signal_type": "pdq",
        "distance": 12,
        "labels": {"group": "ISIS", "outlet": "Amaq"},
        "decision": "block",
        "query_variant": "frame:4",
        "known_variant": "frame:9",
        "reason": "",
    }
    return Match(**{**fields, **extent})


def test_the_cli_and_the_core_write_the_same_match_json():
    video = _match(
        unit="seconds",
        segments=(Segment(0.0, 12.0, 30.0, 42.0), Segment(20.0, 26.0, 50.0, 56.0)),
        query_share=0.123456,
        known_share=0.5,
    )
    local = _match(
        signal_type="local_features",
        distance=0,
        local_features=LocalEvidence(
            inliers=57,
            coverage=0.412345,
            query_coverage=0.2,
            scale=0.49876,
            angle=-10.0123,
            agreement=0.87654,
        ),
    )
    for m in (video, _match(), local):
        from_cli = views.matched_json(convert.matched_entry(m))
        assert from_cli == m.public_json()
        # same key order (a protobuf map's labels come in no set order)
        assert list(from_cli) == list(m.public_json())
    shown = video.public_json()
    assert list(shown) == [
        "set", "entry", "signal_type", "distance", "labels", "decision",
        "query_variant", "known_variant", "unit", "query_share", "known_share", "segments",
    ]  # fmt: skip
    assert shown["query_share"] == 0.1235
    assert "unit" not in _match().public_json()
    assert "local_features" not in shown and "local_features" not in _match().public_json()
    evidence = local.public_json()["local_features"]
    assert evidence == {
        "inliers": 57, "coverage": 0.4123, "query_coverage": 0.2, "scale": 0.4988, "angle": -10.01,
        "agreement": 0.8765,
    }  # fmt: skip
    # the history keeps it, and gives it back
    assert Match.from_json(local.to_json()).public_json() == local.public_json()
