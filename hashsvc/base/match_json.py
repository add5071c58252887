"""A match as JSON, the public shape (`hashsvc match --json` prints it; the
README names its fields as a contract), written once: the CLI builds it from
a MatchedEntry message, the core from its own Match (Match.public_json), and
both give the same object for the same match."""

from __future__ import annotations

from collections.abc import Iterable, Mapping


def match_json(
    *,
    set_name: str,
    entry: str,
    signal_type: str,
    distance: int,
    labels: Mapping[str, str],
    decision: str | None,
    query_variant: str,
    known_variant: str,
    unit: str = "",
    query_share: float = 0.0,
    known_share: float = 0.0,
    segments: Iterable = (),
    local_features=None,
) -> dict:
    """`segments`: objects with query_start, query_end, known_start and
    known_end (a core Segment or a protobuf one); `local_features`: an object
    with inliers, coverage, query_coverage, scale, angle and agreement (the core's
    LocalEvidence or the protobuf message), only on a local_features match."""
    out = {
        "set": set_name,
        "entry": entry,
        "signal_type": signal_type,
        "distance": distance,
        "labels": dict(labels),
        "decision": decision,
        "query_variant": query_variant,
        "known_variant": known_variant,
    }
    if unit:  # video, audio, PDF: where the query matches the known media
        out.update(
            unit=unit,
            query_share=round(query_share, 4),
            known_share=round(known_share, 4),
            segments=[
                {
                    "query_start": seg.query_start,
                    "query_end": seg.query_end,
                    "known_start": seg.known_start,
                    "known_end": seg.known_end,
                }
                for seg in segments
            ],
        )
    if local_features is not None:
        out["local_features"] = local_features_json(local_features)
    return out


def local_features_json(evidence) -> dict:
    """Why a local-feature match matched, as the public JSON and the history
    show it."""
    return {
        "inliers": int(evidence.inliers),
        "coverage": round(evidence.coverage, 4),
        "query_coverage": round(evidence.query_coverage, 4),
        "scale": round(evidence.scale, 4),
        "angle": round(evidence.angle, 2),
        "agreement": round(evidence.agreement, 4),
    }
