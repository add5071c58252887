"""FeatureIndex: candidates by visual-word votes, live adds and removals, snapshots, bad input."""

from __future__ import annotations

import threading

import cv2
import faiss
import numpy as np
import pytest

from hashsvc.index import word_postings
from hashsvc.index.binary import signal_id
from hashsvc.index.local_features import SNAPSHOT_MAGIC, TAIL_POSTINGS, FeatureIndex
from hashsvc.index.vocabulary import (
    VOCABULARY_FORMAT,
    VOCABULARY_PATH,
    Vocabulary,
    default_vocabulary,
)
from hashsvc_testing import descriptors as synth
from hashsvc_testing import image_media

N_KNOWN = 400

# As the server runs FAISS (hashsvc/api/server.py): one thread, no OpenMP spinning.
faiss.omp_set_num_threads(1)


@pytest.fixture(scope="module")
def vocabulary() -> Vocabulary:
    return default_vocabulary()


@pytest.fixture(scope="module")
def known(vocabulary):
    """N_KNOWN synthetic pictures' descriptors, strongest first."""
    return synth.pictures(vocabulary, np.random.default_rng(7), N_KNOWN)


def sid(n: int) -> int:
    return signal_id(1000 + n, 0)


def filled(known, count: int = N_KNOWN) -> FeatureIndex:
    index = FeatureIndex()
    index.add([sid(n) for n in range(count)], list(known[:count]))
    return index


def top_ids(index: FeatureIndex, query: np.ndarray, k: int = 10) -> list[int]:
    return [found for found, _ in index.search([query], k)[0]]


def test_vocabulary_file_is_the_trained_one():
    vocabulary = Vocabulary.load(VOCABULARY_PATH)
    assert vocabulary.coarse.dtype == np.uint8 and vocabulary.fine.dtype == np.uint8
    assert vocabulary.descriptor_bytes == 32  # ORB
    assert vocabulary.n_words == vocabulary.coarse.shape[0] * vocabulary.fine.shape[1] >= 1 << 14
    assert vocabulary.detector == "orb"
    assert "scripts/train_vocabulary.py" in vocabulary.source
    with np.load(VOCABULARY_PATH) as data:
        assert int(data["format"]) == VOCABULARY_FORMAT
    assert vocabulary.word_counts.sum() > 100_000  # trained on that many real descriptors
    # Words are distinct and a centroid is assigned its own word.
    centroids = synth.word_centroids(vocabulary)
    sample = np.random.default_rng(0).choice(vocabulary.n_words, 2000, replace=False)
    assert len(np.unique(centroids, axis=0)) > 0.95 * vocabulary.n_words
    assert (vocabulary.assign(centroids[sample]) == sample).mean() > 0.95


def test_added_picture_is_found_first(known, vocabulary):
    index = filled(known)
    rng = np.random.default_rng(1)
    assert len(index) == N_KNOWN
    for n in (0, 17, 399):
        query = synth.altered_copy(known[n], vocabulary, rng)
        found = index.search([query], 10)[0]
        assert found[0][0] == sid(n)
        scores = [score for _, score in found]
        assert scores == sorted(scores, reverse=True)


def test_real_photo_found_through_crop_and_rotation():
    orb = cv2.ORB_create(500)

    def descriptors(img) -> np.ndarray:
        gray = cv2.cvtColor(np.asarray(img.convert("RGB")), cv2.COLOR_RGB2GRAY)
        _, desc = orb.detectAndCompute(gray, None)
        return desc

    index = FeatureIndex()
    photos = [image_media.photo(n) for n in range(10)]
    index.add([sid(n) for n in range(10)], [descriptors(p) for p in photos])
    w, h = photos[3].size
    copy = photos[3].crop((int(w * 0.12), int(h * 0.05), w, h)).rotate(10, expand=True)
    assert top_ids(index, descriptors(copy), 3)[0] == sid(3)


def test_removed_picture_never_returned_and_can_come_back(known, vocabulary):
    index = filled(known)
    query = synth.altered_copy(known[5], vocabulary, np.random.default_rng(2), 0.05, 0.2)
    assert top_ids(index, query)[0] == sid(5)
    assert index.remove([sid(5), sid(99_999)]) == 1
    assert len(index) == N_KNOWN - 1
    assert sid(5) not in top_ids(index, query, N_KNOWN)
    assert index.remove([sid(5)]) == 0
    index.add([sid(5)], [known[5]])
    assert top_ids(index, query)[0] == sid(5)


def test_readding_an_id_replaces_its_picture(known, vocabulary):
    index = filled(known, 50)
    index.add([sid(1)], [known[200]])  # the same id now holds another picture
    assert len(index) == 50
    rng = np.random.default_rng(3)
    assert top_ids(index, synth.altered_copy(known[200], vocabulary, rng))[0] == sid(1)
    assert top_ids(index, known[1], 1) != [sid(1)]  # its old picture is not it any more
    index.add([sid(2), sid(2)], [known[0], known[201]])  # twice in one call: the last counts
    assert len(index) == 50
    found = top_ids(index, synth.altered_copy(known[201], vocabulary, rng), 50)
    assert found[0] == sid(2) and found.count(sid(2)) == 1


def test_remove_entry_removes_all_its_pictures(known):
    index = FeatureIndex()
    index.add([signal_id(7, 0), signal_id(7, 1), signal_id(8, 0)], list(known[:3]))
    assert index.remove_entry(7) == 2
    assert len(index) == 1
    for query in known[:3]:
        assert top_ids(index, query, 5) in ([], [signal_id(8, 0)])
    assert top_ids(index, known[2], 5) == [signal_id(8, 0)]


@pytest.mark.parametrize("merge_block", [word_postings.MERGE_BLOCK, 997])
def test_many_adds_one_by_one_merge_segments_and_stay_searchable(
    known, vocabulary, monkeypatch, merge_block
):
    # merge_block 997: merges and filters go block by block, as at millions of pictures.
    monkeypatch.setattr(word_postings, "MERGE_BLOCK", merge_block)
    # Enough postings for several tail flushes and segment merges, with removals between.
    index = FeatureIndex()
    pictures = synth.pictures(vocabulary, np.random.default_rng(9), 3 * TAIL_POSTINGS // 200 + 50)
    for n, descriptors in enumerate(pictures):
        index.add([sid(n)], [descriptors])
        if n % 7 == 3:
            index.remove([sid(n - 1)])
    assert index._view.segments  # the tail was flushed and merged
    rng = np.random.default_rng(4)
    for n in (0, 3, 500, len(pictures) - 1):
        query = synth.altered_copy(pictures[n], vocabulary, rng)
        assert top_ids(index, query)[0] == sid(n)
    for n in (2, 9):  # removed (n % 7 == 3 removed n - 1)
        assert sid(n) not in top_ids(index, pictures[n], len(pictures))


@pytest.mark.parametrize("merge_block", [word_postings.MERGE_BLOCK, 997])
def test_compaction_after_many_removals_keeps_the_rest(known, vocabulary, monkeypatch, merge_block):
    monkeypatch.setattr(word_postings, "MERGE_BLOCK", merge_block)
    index = filled(known)
    index.remove([sid(n) for n in range(0, N_KNOWN, 2)] + [sid(n) for n in range(1, 200, 2)])
    assert len(index) == 100
    for n in (201, 399):
        assert top_ids(index, known[n])[0] == sid(n)
    assert all(
        top_ids(index, known[n], 100) and sid(n) not in top_ids(index, known[n], 100)
        for n in (0, 3, 198)
    )


def test_snapshot_round_trip_gives_equal_results(known, vocabulary, tmp_path):
    index = filled(known)
    index.remove([sid(10), sid(11)])
    index.add([sid(10)], [known[300]])  # id 10 now holds picture 300 (and so does id 300)
    queries = [
        synth.altered_copy(known[n], vocabulary, np.random.default_rng(n))
        for n in (11, 12, 13, 250)
    ]
    before = index.search(queries, 10)
    path = tmp_path / "lf.snapshot"
    index.save(path)
    loaded = FeatureIndex.load(path)
    assert len(loaded) == len(index) == N_KNOWN - 1
    after = loaded.search(queries, 10)
    # Saving compacts the index (removed pictures' postings no longer weigh on word
    # frequencies), so scores move a little; the index and its snapshot then agree exactly.
    assert [r[0][0] for r in after[1:]] == [r[0][0] for r in before[1:]]
    assert [r[0][0] for r in after[1:]] == [sid(12), sid(13), sid(250)]
    assert sid(11) not in [i for r in after for i, _ in r]
    assert index.search(queries, 10) == after
    assert {i for i, _ in loaded.search([known[300]], 2)[0]} == {sid(10), sid(300)}
    loaded.add([sid(5000)], [known[12]])  # a loaded index takes live adds
    assert sid(5000) in top_ids(loaded, known[12], 2)


def test_concurrent_search_while_adding_does_not_crash(known, vocabulary):
    index = filled(known, 100)
    pictures = synth.pictures(vocabulary, np.random.default_rng(11), 1200)
    errors: list[BaseException] = []
    stop = threading.Event()

    def searcher() -> None:
        rng = np.random.default_rng(12)
        try:
            while not stop.is_set():
                n = int(rng.integers(0, 100))
                found = top_ids(index, known[n], 5)
                assert found and found[0] == sid(n)
        except BaseException as exc:  # reported to the test thread
            errors.append(exc)

    threads = [threading.Thread(target=searcher) for _ in range(2)]
    for thread in threads:
        thread.start()
    try:
        for n, descriptors in enumerate(pictures):
            index.add([sid(10_000 + n)], [descriptors])
            if n % 5 == 0:
                index.remove([sid(10_000 + n // 2)])
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert not errors, errors[0]


def test_empty_index_and_empty_queries():
    index = FeatureIndex()
    assert len(index) == 0 and index.memory_bytes() > 0
    query = synth.pictures(index.vocabulary, np.random.default_rng(0), 1)[0]
    assert index.search([query], 10) == [[]]
    assert index.search([], 10) == []
    assert index.search([np.zeros((0, 32), np.uint8)], 10) == [[]]
    index.add([], [])
    assert index.remove([sid(1)]) == 0


def test_wrong_descriptors_are_refused_clearly(known):
    index = FeatureIndex()
    with pytest.raises(ValueError, match=r"\(n, 32\)"):
        index.add([sid(1)], [np.zeros((10, 61), np.uint8)])
    with pytest.raises(ValueError, match="uint8"):
        index.add([sid(1)], [np.zeros((10, 32), np.float32)])
    with pytest.raises(ValueError, match=r"\(n, 32\)"):
        index.search([np.zeros(32, np.uint8)], 5)
    with pytest.raises(ValueError, match="ids for"):
        index.add([sid(1), sid(2)], [known[0]])
    with pytest.raises(ValueError, match="top_k"):
        index.search([known[0]], 0)
    assert len(index) == 0


@pytest.mark.parametrize(
    "damage",
    ["truncated", "empty", "magic", "flipped_slot", "trailing", "other_vocabulary"],
)
def test_corrupt_snapshot_is_refused_clearly(known, tmp_path, damage):
    path = tmp_path / "lf.snapshot"
    filled(known, 50).save(path)
    data = bytearray(path.read_bytes())
    vocabulary = None
    if damage == "truncated":
        data = data[: len(data) * 2 // 3]
    elif damage == "empty":
        data = bytearray()
    elif damage == "magic":
        data[:4] = b"XXXX"
    elif damage == "flipped_slot":
        data[-2:] = b"\xff\xff"  # the last posting now names a picture that does not exist
    elif damage == "trailing":
        data += b"\x00" * 9
    else:
        base = default_vocabulary()
        vocabulary = Vocabulary(
            base.coarse, base.fine ^ 1, base.detector, base.source, base.word_counts
        )
    path.write_bytes(bytes(data))
    assert data[: len(SNAPSHOT_MAGIC)] == SNAPSHOT_MAGIC or damage in ("empty", "magic")
    with pytest.raises(ValueError, match="snapshot"):
        FeatureIndex.load(path, vocabulary)


def test_a_query_reads_its_rarest_words_within_its_posting_budget(known, vocabulary):
    # A query's ~300 words hold ~700 postings here; a budget of 100 leaves most of them
    # unread, but the rarest ones, read first, still point at the picture.
    index = FeatureIndex(max_postings_per_query=100)
    index.add([sid(n) for n in range(N_KNOWN)], list(known))
    rng = np.random.default_rng(21)
    for n in (4, 44, 144):
        assert top_ids(index, synth.altered_copy(known[n], vocabulary, rng))[0] == sid(n)
    with pytest.raises(ValueError, match="max_postings_per_query"):
        FeatureIndex(max_postings_per_query=0)
