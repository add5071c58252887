"""The PDQ index engine (multi-index hashing) against brute force on clustered
hashes: families of near-duplicates and real photos' views, through adds,
removals, re-adds, segment seals and merges, and snapshots."""

from __future__ import annotations

import numpy as np
import pytest

from hashsvc.core.config import ImageLimits
from hashsvc.index import multi_index
from hashsvc.index.binary import BinaryIndex, signal_id
from hashsvc.index.engines import load_index, new_index
from hashsvc.index.multi_index import EXACT_RADIUS, MultiIndexHash
from hashsvc.media.image import hash_known, hash_query
from hashsvc_testing.image_media import encode, photo, reencoded


@pytest.fixture(autouse=True)
def small_segments(monkeypatch):
    # Tiny segments, so a few thousand hashes go through seals and merges.
    monkeypatch.setattr(multi_index, "SEAL_ROWS", 256)
    monkeypatch.setattr(multi_index, "MAX_SEGMENT_ROWS", 4096)


def families(rng, n_families: int, size: int, max_flip: float) -> np.ndarray:
    """Near-duplicate families: each member is its seed with a share of bits flipped."""
    seeds = np.unpackbits(rng.integers(0, 256, (n_families, 32), dtype=np.uint8), axis=1)
    members = np.repeat(seeds, size, axis=0)
    flip_rate = rng.uniform(0, max_flip, (len(members), 1))
    return np.packbits(members ^ (rng.random(members.shape) < flip_rate), axis=1)


def brute_force(codes: dict[int, bytes], query: bytes, radius: int) -> set[tuple[int, int]]:
    q = np.unpackbits(np.frombuffer(query, dtype=np.uint8))
    found = set()
    for sid, code in codes.items():
        distance = int(np.count_nonzero(q != np.unpackbits(np.frombuffer(code, dtype=np.uint8))))
        if distance <= radius:
            found.add((sid, distance))
    return found


def check_against_brute_force(index, codes, queries, radius) -> tuple[int, int]:
    """Every result is a true one; returns (true results found, true results)."""
    found = total = 0
    for query, hits in zip(queries, index.search(queries, radius), strict=True):
        truth = brute_force(codes, query, radius)
        assert set(hits) <= truth
        assert len(hits) == len(set(hits))  # each hash once
        found += len(set(hits) & truth)
        total += len(truth)
    return found, total


@pytest.fixture
def clustered():
    rng = np.random.default_rng(7)
    stored = families(rng, 60, 40, 0.1)  # 2,400 hashes in 60 families
    codes = {signal_id(i // 16, i % 16): c.tobytes() for i, c in enumerate(stored)}
    # queries: fresh members of the stored families, plus unrelated hashes
    seeds = np.unpackbits(stored[::40], axis=1)
    fresh = seeds ^ (rng.random(seeds.shape) < rng.uniform(0, 0.1, (len(seeds), 1)))
    queries = [c.tobytes() for c in np.packbits(fresh, axis=1)]
    queries += [rng.integers(0, 256, 32, dtype=np.uint8).tobytes() for _ in range(10)]
    return codes, queries


def build(codes: dict[int, bytes], batch: int = 100) -> MultiIndexHash:
    index = MultiIndexHash()
    items = list(codes.items())
    for start in range(0, len(items), batch):
        part = items[start : start + batch]
        index.add([sid for sid, _ in part], [code for _, code in part])
    return index


def test_exact_within_the_guaranteed_radius_on_clustered_hashes(clustered):
    codes, queries = clustered
    index = build(codes)
    assert len(index) == len(codes)
    assert len(index._sealed) > 1  # seals and merges happened
    found, total = check_against_brute_force(index, codes, queries, EXACT_RADIUS)
    assert total > 500 and found == total


def test_wide_radius_finds_nearly_everything_and_nothing_false(clustered):
    codes, queries = clustered
    found, total = check_against_brute_force(build(codes), codes, queries, 56)
    # Beyond EXACT_RADIUS a match is found when one of its 11 chunks is within
    # 2 bits of the query's: here pairs reach 50 bits apart (bench/scale.py
    # measures realistic data).
    assert total > 1000 and found / total >= 0.97


def test_real_photo_views_found_like_brute_force():
    limits = ImageLimits()
    codes = {}
    for entry in range(4):
        for variant, sig in enumerate(hash_known(encode(photo(entry)), limits)):
            if sig.kind == "pdq":
                codes[signal_id(entry, variant)] = sig.value
    index = build(codes, batch=7)
    queries = [s.value for s in hash_query(reencoded(photo(1)), limits) if s.kind == "pdq"]
    found, total = check_against_brute_force(index, codes, queries, EXACT_RADIUS)
    assert total > 0 and found == total
    assert {sid >> 20 for hits in index.search(queries, 31) for sid, _ in hits} == {1}


def test_add_remove_readd(clustered):
    codes, queries = clustered
    index = build(codes)
    victim = next(iter(codes)) >> 20  # an entry with 16 signals
    removed = index.remove_entry(victim)
    assert removed == 16 and len(index) == len(codes) - 16
    assert index.remove_entry(victim) == 0
    first = signal_id(victim + 1, 0)
    assert index.remove([first, first]) == 1 and index.remove([first]) == 0
    left = {sid: c for sid, c in codes.items() if sid >> 20 != victim and sid != first}
    found, total = check_against_brute_force(index, left, queries, EXACT_RADIUS)
    assert found == total

    # Re-adding replaces instead of duplicating, in sealed and open segments alike.
    again = {sid: c for sid, c in codes.items() if sid >> 20 in (victim, victim + 2)}
    index.add(list(again), list(again.values()))
    left.update(again)
    assert len(index) == len(left)
    found, total = check_against_brute_force(index, left, queries, EXACT_RADIUS)
    assert found == total


def test_removed_hashes_compacted_away_on_later_seals(clustered):
    codes, _ = clustered
    index = build(codes)
    for entry in range(0, 100, 2):
        index.remove_entry(entry)
    rng = np.random.default_rng(1)
    more = {signal_id(10_000 + i, 0): rng.bytes(32) for i in range(600)}
    index.add(list(more), list(more.values()))
    stored_rows = sum(len(seg) for seg in index._segments())
    assert len(index) == len(codes) - 50 * 16 + 600
    assert stored_rows < len(index) * 1.4


def test_snapshot_round_trip(clustered, tmp_path):
    codes, queries = clustered
    index = build(codes)
    index.remove_entry(3)
    path = str(tmp_path / "index-pdq.faiss")
    index.save(path)
    loaded = load_index(path, 256)  # LiveIndex's way: the file says which engine
    assert isinstance(loaded, MultiIndexHash) and len(loaded) == len(index)
    for before, after in zip(index.search(queries, 56), loaded.search(queries, 56), strict=True):
        assert sorted(before) == sorted(after)
    loaded.add([signal_id(3, 0)], [codes[signal_id(3, 0)]])  # still incremental after a load
    assert len(loaded) == len(index) + 1


def test_engine_per_signal_type_and_old_snapshots(tmp_path):
    assert isinstance(new_index("pdq", 256), MultiIndexHash)
    flat = new_index("videohash", 64)
    assert isinstance(flat, BinaryIndex)
    flat.add([1], [b"\x01" * 8])
    flat.save(str(tmp_path / "flat.faiss"))
    assert len(load_index(str(tmp_path / "flat.faiss"), 64)) == 1
    with pytest.raises(ValueError):
        MultiIndexHash.load(str(tmp_path / "flat.faiss"), 256)


def test_empty_index_and_empty_queries():
    index = MultiIndexHash()
    assert index.search([], 31) == []
    assert index.search([bytes(32)], 31) == [[]]
    assert index.remove([1]) == 0 and index.remove_entry(1) == 0
    with pytest.raises(ValueError):
        index.add([1], [bytes(8)])


def test_snapshot_of_the_first_layout_is_rebuilt(clustered, tmp_path):
    # Snapshots written before postings were saved hold ids and hashes only.
    codes, queries = clustered
    path = tmp_path / "index-pdq.faiss"
    with open(path, "wb") as f:
        f.write(multi_index.SNAPSHOT_MAGIC)
        np.save(f, np.array(list(codes), dtype=np.int64))
        np.save(f, np.frombuffer(b"".join(codes.values()), dtype=np.uint8).reshape(-1, 32))
    loaded = load_index(str(path), 256)
    assert isinstance(loaded, MultiIndexHash) and len(loaded) == len(codes)
    found, total = check_against_brute_force(loaded, codes, queries, EXACT_RADIUS)
    assert total > 500 and found == total


def test_damaged_snapshot_is_refused(clustered, tmp_path):
    codes, _ = clustered
    path = tmp_path / "index-pdq.faiss"
    build(codes).save(str(path))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError):
        MultiIndexHash.load(str(path), 256)


def test_a_cluster_larger_than_the_first_result_buffer():
    # Thousands of near-identical hashes: one query view matches them all.
    rng = np.random.default_rng(3)
    seed = rng.integers(0, 256, 32, dtype=np.uint8)
    members = np.unpackbits(np.repeat(seed[None], 3000, axis=0), axis=1)
    members ^= rng.random(members.shape) < 0.03
    codes = {i: c.tobytes() for i, c in enumerate(np.packbits(members, axis=1))}
    index = build(codes, batch=1000)
    found, total = check_against_brute_force(index, codes, [seed.tobytes()], EXACT_RADIUS)
    assert total > 2900 and found == total


def test_review_band_search_is_a_setting(clustered, tmp_path):
    codes, queries = clustered
    with pytest.raises(ValueError):
        MultiIndexHash(review_search="exhaustive")
    narrow, wide = MultiIndexHash(review_search="fast"), MultiIndexHash(review_search="thorough")
    narrow.add(list(codes), list(codes.values()))
    wide.add(list(codes), list(codes.values()))
    narrow_found, total = check_against_brute_force(narrow, codes, queries, 56)
    wide_found, _ = check_against_brute_force(wide, codes, queries, 56)
    assert narrow_found < wide_found <= total and wide_found / total >= 0.995
    # Within the exact radius both find everything the same way.
    assert check_against_brute_force(wide, codes, queries, EXACT_RADIUS) == (
        check_against_brute_force(narrow, codes, queries, EXACT_RADIUS)
    )
    path = str(tmp_path / "index-pdq")
    wide.save(path)
    assert load_index(path, 256, pdq_review_search="thorough").review_search == "thorough"


def test_searches_run_while_adds_seal_and_merge(clustered):
    import threading

    codes, queries = clustered
    items = list(codes.items())
    index = build(dict(items[:400]))
    errors: list[BaseException] = []
    done = threading.Event()

    def searcher() -> None:
        try:
            while not done.is_set():
                for query, hits in zip(queries, index.search(queries, EXACT_RADIUS), strict=True):
                    for sid, distance in hits:  # every result is a true one
                        assert brute_force({sid: codes[sid]}, query, EXACT_RADIUS) == {
                            (sid, distance)
                        }
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=searcher) for _ in range(2)]
    for t in threads:
        t.start()
    for start in range(400, len(items), 50):
        part = items[start : start + 50]
        index.add([sid for sid, _ in part], [c for _, c in part])
        index.remove_entry(part[0][0] >> 20)
    done.set()
    for t in threads:
        t.join()
    assert not errors
    removed = {sid >> 20 for sid, _ in items[400::50]}
    left = {sid: c for sid, c in codes.items() if sid >> 20 not in removed}
    found, total = check_against_brute_force(index, left, queries, EXACT_RADIUS)
    assert found == total


def test_review_search_names_agree_with_the_config():
    from hashsvc.core.config import PDQ_REVIEW_SEARCHES, load_config

    assert set(PDQ_REVIEW_SEARCHES) == set(multi_index.REVIEW_SEARCHES)
    assert load_config().pdq_review_search == multi_index.DEFAULT_REVIEW_SEARCH
    with pytest.raises(ValueError, match="pdq_review_search"):
        load_config(pdq_review_search="exhaustive")
