"""What keeps local-feature matching cheap and repeatable (issue 18, Targets: Cost): a seeded
RANSAC that gives the same answer in any thread, and the checks that skip hopeless candidates
without losing true ones."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hashsvc.index.local_features import default_vocabulary
from hashsvc.matching.local_geometry import _matches, verify
from hashsvc.matching.policy import LocalFeatureMatching
from hashsvc.matching.ransac import inverted, similarity_ransac
from hashsvc.media.local_features import LocalFeatures, decode, extract
from hashsvc_testing.descriptors import pictures as descriptor_pictures
from hashsvc_testing.image_media import encode as encode_image
from hashsvc_testing.local_media import perspective, rotate
from hashsvc_testing.vectors import vector
from tests.helpers import match_request

REPO = Path(__file__).resolve().parents[1]
BRIDGE = ("threatexchange", "pdq", "data", "reg-test-input", "dih", "bridge-1-original.jpg")


def bridge() -> Image.Image:
    return Image.open(vector(*BRIDGE)).convert("RGB")


def jpeg(img: Image.Image, quality: int = 80) -> Image.Image:
    out = io.BytesIO()
    img.save(out, "JPEG", quality=quality)
    return Image.open(io.BytesIO(out.getvalue())).convert("RGB")


def features(img: Image.Image) -> LocalFeatures:
    found = extract(img)
    assert found is not None
    return found


def test_ransac_finds_a_similarity_among_outliers_and_says_which_points_fit():
    rng = np.random.default_rng(1)
    src = rng.uniform(0, 600, (200, 2))
    angle, scale = np.radians(25), 0.7
    a, b = scale * np.cos(angle), scale * np.sin(angle)
    truth = np.array([[a, -b, 40.0], [b, a, -15.0]])
    dst = src @ truth[:, :2].T + truth[:, 2] + rng.normal(0, 0.5, (200, 2))
    outliers = rng.random(200) < 0.7  # 70% wrong pairs
    dst[outliers] = rng.uniform(0, 600, (int(outliers.sum()), 2))
    matrix, mask = similarity_ransac(src, dst, 3.0, 2000, 0.995)
    assert matrix is not None
    assert np.abs(matrix - truth).max() < 0.5
    assert mask[~outliers].mean() > 0.95
    assert mask[outliers].mean() < 0.05
    back = inverted(matrix)
    assert np.allclose(back[:, :2] @ matrix[:, :2], np.eye(2))


@pytest.mark.parametrize("count", [0, 1])
def test_ransac_with_too_few_points_finds_nothing(count):
    matrix, mask = similarity_ransac(np.zeros((count, 2)), np.zeros((count, 2)), 3.0, 100, 0.99)
    assert matrix is None and not mask.any()


def test_ransac_on_coincident_points_finds_nothing():
    points = np.full((20, 2), 7.0)
    matrix, _ = similarity_ransac(points, points, 3.0, 100, 0.99)
    assert matrix is None


def test_a_pair_verifies_the_same_every_time_in_any_thread():
    """OpenCV's RANSAC drew from a shared random state: 0.20 coverage once, 0.38 the next."""
    img = bridge()
    rng = np.random.default_rng(4)
    # a perspective tilt and a turn leave many near-inliers: where a random fit varies most
    queries = [features(jpeg(perspective(img, rng))), features(jpeg(rotate(img, rng, 10)))]
    known = features(img)
    for query in queries:
        first = verify(query, known)
        assert first is not None and first.inliers >= 16
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(verify, [query] * 50, [known] * 50))
        assert all(r == first for r in results)


def test_a_match_answers_local_features_as_size_and_sha256_unless_asked(harness, matcher):
    """The blob was ~36 KB of hex in every answer; the history keeps the same summary."""
    stub, md = matcher
    upload = encode_image(bridge(), "JPEG", quality=85)
    request = match_request(upload)
    request.full_signals = True
    full = stub.matcher.Match(request, metadata=md)
    (whole,) = [s for s in full.query_signals if s.signal_type == "local_features"]
    blob = bytes.fromhex(whole.value)
    assert len(decode(blob)) >= 60 and whole.value_bytes == 0 and whole.value_sha256 == ""
    short = stub.matcher.Match(match_request(upload), metadata=md)
    (summary,) = [s for s in short.query_signals if s.signal_type == "local_features"]
    assert summary.value == ""
    assert summary.value_bytes == len(blob)
    assert summary.value_sha256 == hashlib.sha256(blob).hexdigest()
    # the PDQ views stay whole: 64 hex digits each
    assert all(len(s.value) == 64 for s in short.query_signals if s.signal_type == "pdq")
    assert len(full.SerializeToString()) > len(short.SerializeToString()) + 2 * len(blob) - 100


def test_the_cli_reads_default_thresholds_without_the_matching_code():
    """`sets create --block-threshold` imports the policy for its defaults: that must not bring
    numba, OpenCV or FAISS into a command-line process."""
    script = (
        "import json, sys\n"
        "import hashsvc.client.cli\n"
        "from hashsvc.matching.policy import DEFAULT_THRESHOLDS, PdqPolicy\n"
        "assert DEFAULT_THRESHOLDS['local_features'].block_inliers > 0\n"
        "heavy = ('numba', 'cv2', 'faiss', 'PIL')\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in heavy)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []


def test_compiled_word_assignment_gives_the_words_numpy_gave():
    """Known pictures were filed with the numpy assignment: a query's words must be the same."""
    vocabulary = default_vocabulary()
    rng = np.random.default_rng(0)
    near_words = descriptor_pictures(vocabulary, rng, 10, 300).reshape(-1, 32)
    anywhere = rng.integers(0, 256, (5000, 32), dtype=np.uint8)
    descriptors = np.concatenate([near_words, anywhere])
    fine = vocabulary.fine.view(np.uint64)
    _, coarse = vocabulary._coarse_index.search(descriptors, 1)
    coarse = coarse[:, 0]
    distances = np.bitwise_count(fine[coarse] ^ descriptors.view(np.uint64)[:, None, :])
    expected = coarse * fine.shape[1] + distances.sum(axis=2).argmin(axis=1)
    assert np.array_equal(vocabulary.assign(descriptors), expected)


def test_verify_stops_before_ransac_below_the_mutual_matches_asked():
    """Inliers are a subset of the mutual matches: asking for more matches than a pair has can
    only turn a verification that could not decide into None."""
    img = bridge()
    query, known = features(jpeg(rotate(img, np.random.default_rng(4), 10))), features(img)
    found = verify(query, known)
    assert found is not None
    assert verify(query, known, min_matches=found.inliers) == found
    mutual = len(_matches(query.descriptors, known.descriptors)[0])
    assert verify(query, known, min_matches=mutual) == found
    assert verify(query, known, min_matches=mutual + 1) is None


@pytest.mark.parametrize("min_votes, found", [(0.1, True), (0.0, True), (1000.0, False)])
def test_candidates_scored_below_min_votes_are_not_verified(make_core, tmp_path, min_votes, found):
    from hashsvc.core.core import MatchQuery

    # the gate alone: the spare pass (tests/test_local_recall.py) would verify under it
    core = make_core(
        f"sqlite:///{tmp_path}/h.db",
        local_features=LocalFeatureMatching(min_votes=min_votes, max_verified_spare=0),
    )
    core.curation.create_set("s")
    core.curation.add_entry("s", "poster", {}, "op", media=encode_image(bridge(), "JPEG"))
    upload = encode_image(rotate(bridge(), np.random.default_rng(0), 10), "JPEG")
    outcome = core.match(MatchQuery(media=upload), caller="t")
    local = [m for m in outcome.matches if m.signal_type == "local_features"]
    assert bool(local) == found


def test_grpc_threads_run_faiss_on_one_openmp_thread(harness, matcher, monkeypatch):
    """faiss.omp_set_num_threads(1) holds only for the thread that calls it; a gRPC thread that
    left it unset searched on a spinning OpenMP pool of its own."""
    import faiss

    seen = []
    match = harness.core.match

    def recording(*args, **kwargs):
        seen.append(faiss.omp_get_max_threads())
        return match(*args, **kwargs)

    monkeypatch.setattr(harness.core, "match", recording)
    stub, md = matcher
    stub.matcher.Match(match_request(encode_image(bridge(), "JPEG")), metadata=md)
    assert seen == [1]


def test_describing_only_the_kept_keypoints_gives_the_blobs_describing_all_gave():
    """extract() describes the 500 keypoints it keeps, not the 1,500 detected: known
    pictures' stored blobs must stay what detectAndCompute made (same bytes)."""
    import cv2

    from hashsvc.media.local_features import DEFAULT_LIMITS, _balanced, _detector, _grey, encode
    from hashsvc_testing.image_media import PHOTOS, photo

    def described_all(img: Image.Image) -> LocalFeatures:
        grey = _grey(img, DEFAULT_LIMITS.max_side)
        keypoints, descriptors = _detector(DEFAULT_LIMITS).detectAndCompute(grey, None)
        points = cv2.KeyPoint_convert(keypoints).astype(np.float32)
        response = np.array([k.response for k in keypoints])
        order = _balanced(points, response, grey.shape[1], grey.shape[0], DEFAULT_LIMITS)
        levels = np.array([k.octave for k in keypoints], np.uint8)[order]
        return LocalFeatures(
            grey.shape[1], grey.shape[0], points[order], descriptors[order], levels=levels
        )

    rng = np.random.default_rng(3)
    checked = 0
    for n in range(len(PHOTOS)):
        img = photo(n)
        for variant in (img, jpeg(rotate(img, rng, 10)), img.resize((1400, 1000))):
            found = extract(variant)
            if found is None:
                continue
            assert encode(found) == encode(described_all(variant))
            checked += 1
    assert checked >= 20


def test_votes_added_in_place_give_the_scores_gathering_gave():
    """The feature index adds each posting's weight straight into the scores (compiled): the
    candidates and scores must be those of gathering the postings and np.add.at, over several
    segments and the tail, with a removed picture among them."""
    from hashsvc.index import local_features as feature_index
    from hashsvc.index.local_features import FeatureIndex, _top
    from hashsvc_testing.descriptors import word_draws

    index = FeatureIndex()
    rng = np.random.default_rng(7)
    per = index.words_per_picture
    first = 0
    for count in (400, 400, 400, 50):  # > TAIL_POSTINGS postings, then a few: segments, a tail
        words = word_draws(index.vocabulary, rng, count * per).reshape(count, per)
        index.add_words(list(range(first, first + count)), list(words))
        first += count
    index.remove([5])
    view = index._view
    assert len(view.segments) >= 1 and view.tail_len > 0
    query = np.unique(word_draws(index.vocabulary, rng, 500))

    def gathered(words: np.ndarray, idf: np.ndarray) -> np.ndarray:
        scores = np.zeros(view.n_slots, np.float32)
        parts = []
        for segment in view.segments:
            starts, ends = segment.starts[words], segment.starts[words + 1]
            for word_slots, weight in zip(
                [segment.slots[a:b] for a, b in zip(starts, ends, strict=True)], idf, strict=True
            ):
                parts.append((word_slots, np.full(len(word_slots), weight, np.float32)))
        weight_of_word = np.zeros(index.vocabulary.n_words, np.float32)
        weight_of_word[words] = idf
        tail_weights = weight_of_word[view.tail_words[: view.tail_len]]
        hit = tail_weights > 0
        parts.append((view.tail_slots[: view.tail_len][hit], tail_weights[hit]))
        np.add.at(
            scores, np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
        )
        return scores * view.norms[: view.n_slots]

    recorded = {}
    real_top = feature_index._top

    def recording_top(scores, k):
        recorded["scores"] = scores.copy()
        return real_top(scores, k)

    feature_index._top = recording_top
    try:
        found = index.search_words([query], 20)[0]
    finally:
        feature_index._top = real_top
    assert found and all(sid != 5 for sid, _ in found)
    # the words and weights the search used, recomputed as it does
    n_alive = len(index._slot_of)
    freq = np.bincount(view.tail_words[: view.tail_len], minlength=index.vocabulary.n_words)
    freq = freq[query] + sum(s.starts[query + 1] - s.starts[query] for s in view.segments)
    useful = (freq > 0) & (
        freq <= max(feature_index.MIN_SKIPPED_WORD_POSTINGS, index.max_word_share * n_alive)
    )
    words, freq = query[useful], freq[useful]
    idf = np.log((n_alive + 1) / np.minimum(freq, n_alive)).astype(np.float32)
    assert np.array_equal(recorded["scores"], gathered(words, idf))
    assert _top(recorded["scores"], 20).tolist() == real_top(gathered(words, idf), 20).tolist()
