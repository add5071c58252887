"""Decisions: thresholds per set and signal type, quality gates, strictest wins."""

from __future__ import annotations

from dataclasses import dataclass, replace

from hashdb.model import HashSetRecord
from hashsvc.base.decisions import Decision, Thresholds
from hashsvc.base.signals import LOCAL_FEATURES
from hashsvc.matching import local_thresholds


@dataclass(frozen=True)
class PdqPolicy:
    # Meta's tools use 31 as the PDQ match threshold.
    block_distance: int = 31
    # bench/robustness.py: no unrelated photo came closer than 84 bits (21k
    # pairs, every transform); 56 keeps a margin of ~30 bits and raises recall
    # at review from 0.86 (at 50) to 0.88.
    review_distance: int = 56
    # Below this PDQ quality a hash is too flat to decide BLOCK on its own.
    quality_floor: int = 50
    # ... and too flat for the review band. bench/robustness.py --hard at 7be2b7b (striped
    # pictures and faded textures): of 45k unrelated pairs with a side under
    # the floor, 67 reached review at 56, 15 at 40, 4 at 31 (all <= 22 bits);
    # the cost at 31: real photos' recall at review 0.878 -> 0.877 (one
    # low-quality video frame cropped 5%), the hard pictures' own copies
    # 0.573 -> 0.486.
    low_quality_review_distance: int = 31


@dataclass(frozen=True)
class LocalFeatureMatching:
    """What matching a local_features signal may cost (Config.local_features)."""

    # Candidate pictures the feature index returns per query picture (by votes).
    top_k: int = 8
    # Candidates geometrically verified per query at most (RANSAC each), the
    # best-voted first: bounds the work an upload can cause.
    max_verified: int = 16
    # The same for an uploaded video, over all its sampled frames (taken
    # round by round: each frame's best candidate first; at most
    # frames_per_entry of one known entry). ~1-4 ms each on 2 shared cores:
    # the largest part of a video's matching time.
    max_verified_video: int = 64
    # Of one known entry, frames an uploaded video's frame is verified
    # against at most (the best-voted).
    frames_per_entry: int = 2
    # Candidates the index scores below this are not verified (nor read from the store; 0
    # verifies all). Measured on the bench corpus (600 real pictures among 100k synthetic ones,
    # the retrained vocabulary; crops, tilts, perspective, 2x2/3x3 collages, grids): of the 117
    # true copies in the top 8 that verify, the lowest scored 0.119 (p5 0.19); wrong candidates
    # scored p50 0.18, up to 0.96 (shared clip art), synthetic ones <= 0.11. The score only
    # drops the hopeless: 14% of wrong candidates at 0.1, no true copy lost (at 0.12 one is).
    # Scores grow slowly with the index (idf ~ log n): measure again at another size.
    # 0.14 since 2026-12-08 (0.1 before): the index files 400 words a known picture, not 200,
    # and a score grows about as the square root of the words filed (0.1 x sqrt 2).
    min_votes: float = 0.14
    # ...but an upload whose candidates at min_votes leave its budget unused has up to
    # max_verified_spare more verified, down to min_votes_spare (round by round, as above).
    # bench/robustness.py (77 known, --explain): copies turned 10 and 20 degrees and cut by
    # 30% under a caption, which verify at review or block, scored 0.072-0.098 with their
    # wrong candidates at 0.06-0.13 (no clear lead to pick them by), 1-3 a transform; 300
    # unrelated uploads had 5 candidates a picture in [0.07, 0.1) (median 4; README: Local
    # features: recall). 0 turns the spare pass off.
    # 8 since 2026-12-08 (4 before): a 20-degree tilt of a patterned video frame verifies at
    # block (45 inliers) but scored 0.055-0.064 (200 words filed), its query's 5th-6th
    # candidate, in every draw; +1 copy in 3 of 12 row-draws. 0.07 with 400 words filed is
    # 0.05 with 200 (see min_votes): the same copies as 0.05 on the draws measured, 5.4
    # verifications an unrelated upload instead of 6.2 (bench/spare_cost.py --settings
    # 8:0.05,8:0.07:0.14; README: Pyramid levels and the index).
    max_verified_spare: int = 8
    min_votes_spare: float = 0.07
    # Keypoints a blob may hold, stored (AddEntry by hash, bulk rows) or
    # queried; extraction keeps at most a few hundred.
    max_keypoints: int = 1000


BLOCK = Decision.BLOCK
REVIEW = Decision.REVIEW
ALLOW = Decision.ALLOW
DECISIONS = tuple(Decision)  # in order of strictness

# Exact hashes have no distance to tune: equal means the same file.
EXACT_THRESHOLDS = Thresholds(block_distance=0, review_distance=0)

# Defaults of the other perceptual types (a set may override any of them).
DEFAULT_THRESHOLDS = {
    # Bit error rate of an audio alignment, in percent. bench/audio.py: true
    # copies align at a median 3.5% and at worst 8.3% (noise at SNR 0 dB);
    # unrelated speech over the same background came no closer than 26%.
    "chromaprint": Thresholds(block_distance=15, review_distance=20),
    # 256-bit SimHash of normalised text (PDF pages and documents): unrelated
    # texts stay 93+ bits apart (bench/pdf.py), and pdf_match counts no
    # evidence past 64. Near text alone asks for review; nearly identical
    # text blocks.
    "text_simhash": Thresholds(block_distance=16, review_distance=64),
    # The videohash package's 64-bit hash: it finds whole copies only, and
    # unrelated videos come within 0-10 bits (bench/video.py); the matcher never
    # blocks on it alone, and ignores it where the frames were compared.
    "videohash": Thresholds(block_distance=0, review_distance=4),
    # Local features are judged by geometric evidence, never by a distance;
    # the defaults are measured in hashsvc/matching/local_thresholds.py.
    LOCAL_FEATURES.name: Thresholds(
        block_distance=0,
        review_distance=0,
        block_inliers=local_thresholds.DEFAULT_THRESHOLDS.block_inliers,
        review_inliers=local_thresholds.DEFAULT_THRESHOLDS.review_inliers,
        block_coverage=local_thresholds.DEFAULT_THRESHOLDS.block_coverage,
        review_coverage=local_thresholds.DEFAULT_THRESHOLDS.review_coverage,
    ),
}


@dataclass(frozen=True)
class Policy:
    pdq: PdqPolicy

    def default_thresholds(self, signal_type: str) -> Thresholds:
        if signal_type == "pdq":
            return Thresholds(self.pdq.block_distance, self.pdq.review_distance)
        return DEFAULT_THRESHOLDS.get(signal_type, EXACT_THRESHOLDS)

    def thresholds(self, hash_set: HashSetRecord, signal_type: str) -> Thresholds:
        return hash_set.thresholds.get(signal_type) or self.default_thresholds(signal_type)

    def search_radius(self, sets: list[HashSetRecord], signal_type: str) -> int:
        """The widest distance any enabled set could act on: how far to search."""
        radii = [self.thresholds(s, signal_type).review_distance for s in sets]
        radii.append(self.default_thresholds(signal_type).review_distance)
        return max(radii)

    def decide_local(
        self, hash_set: HashSetRecord, inliers: int, coverage: float, agreement: float
    ) -> tuple[str, str]:
        """(decision, reason) for a verified local-feature match: enough
        inliers covering enough of the known picture (the set's thresholds),
        and agreeing over the part both pictures show (a fixed floor, not per
        set: below it only a shared logo, frame or page template agrees)."""
        limits = self.thresholds(hash_set, LOCAL_FEATURES.name)
        # the set's inliers and coverage, the fixed agreement floors (lower
        # with many inliers): one rule, LocalThresholds.level
        rule = replace(
            local_thresholds.DEFAULT_THRESHOLDS,
            block_inliers=limits.block_inliers,
            block_coverage=limits.block_coverage,
            review_inliers=limits.review_inliers,
            review_coverage=limits.review_coverage,
        )
        level = rule.level(_Evidence(inliers, coverage, agreement))
        if level == BLOCK:
            return BLOCK, ""
        if level == REVIEW:
            block_agreement, _ = rule.agreement_floors(inliers)
            return REVIEW, (
                f"{inliers} inliers covering {coverage:.2f} of the known picture, agreement"
                f" {agreement:.2f}; blocking needs {limits.block_inliers} covering"
                f" {limits.block_coverage:.2f}, agreement {block_agreement:.2f}"
            )
        return ALLOW, ""

    def decide(
        self,
        hash_set: HashSetRecord,
        signal_type: str,
        distance: int,
        query_quality: int | None,
        known_quality: int | None,
    ) -> tuple[str, str]:
        """(decision, reason) for one match; reason says why it is not stronger."""
        limits = self.thresholds(hash_set, signal_type)
        low = []
        if signal_type == "pdq":
            floor = self.pdq.quality_floor
            low = [q for q in (query_quality, known_quality) if q is not None and q < floor]
        if distance <= limits.block_distance:
            decision = BLOCK
        elif low and distance > self.pdq.low_quality_review_distance:
            return ALLOW, ""
        elif distance <= limits.review_distance:
            return REVIEW, f"distance {distance} above block threshold {limits.block_distance}"
        else:
            return ALLOW, ""
        if signal_type == "pdq":
            if low:
                # A flat, featureless image hashes to near-arbitrary bits; such a
                # match is a hint for a person, not grounds to block.
                return REVIEW, f"PDQ quality {min(low)} below floor {floor}"
        return decision, ""


@dataclass(frozen=True)
class _Evidence:
    """What LocalThresholds.level reads of a verification."""

    inliers: int
    coverage: float
    agreement: float
