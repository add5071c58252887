"""Signal values that arrive from outside as hashes (AddEntry and Match by
hash, bulk rows, partner files), checked beyond their hex form before they
are stored or matched.

A local-features value is an opaque, versioned blob: its hex form says
nothing of its structure, and the live index and the verifier decode every
stored one. A malformed blob would fail every index build and every replica
that reads it, so it is refused where it enters, with the reason.
"""

from __future__ import annotations

from hashsvc.base.errors import InvalidArgument
from hashsvc.base.signals import LOCAL_FEATURES
from hashsvc.matching.policy import LocalFeatureMatching
from hashsvc.media import local_features

DEFAULT_MAX_KEYPOINTS = LocalFeatureMatching().max_keypoints


def checked_value(
    kind: str,
    value: bytes,
    max_keypoints: int = DEFAULT_MAX_KEYPOINTS,
    descriptor_bytes: int | None = None,
) -> bytes:
    """The value, or InvalidArgument saying what is wrong with it.
    `descriptor_bytes`: what the feature index takes (its vocabulary's); a blob
    of another detector could never match, and is refused rather than kept
    unmatchable."""
    if kind == LOCAL_FEATURES.name:
        features = local_features.decode(value)  # InvalidArgument when malformed
        if len(features.points) > max_keypoints:
            raise InvalidArgument(
                f"{kind} value holds {len(features.points)} keypoints; at most"
                f" {max_keypoints} are accepted"
            )
        if descriptor_bytes is not None and features.descriptor_bytes != descriptor_bytes:
            raise InvalidArgument(
                f"{kind} value has {features.descriptor_bytes}-byte descriptors; this"
                f" server matches {descriptor_bytes}-byte ones (another detector)"
            )
    return value
