"""The visual vocabulary of the local-feature index (hashsvc/index/local_features.py): binary
descriptors -> words, two levels of k-majority centroids trained by scripts/train_vocabulary.py
and shipped as local_features_vocabulary.npz (generated: retrain, never edit)."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import faiss
import numpy as np

from hashsvc.index.word_assign import nearest_coarse, nearest_fine

VOCABULARY_PATH = Path(__file__).with_name("local_features_vocabulary.npz")
VOCABULARY_FORMAT = 1
# Descriptors assigned to words at once (bounds the temporary (n, FINE, bytes) array).
ASSIGN_CHUNK = 8192


@dataclass(frozen=True, eq=False)  # arrays: compared (and hashed) by identity
class Vocabulary:
    """Visual words: coarse (C, D) and fine (C, F, D) uint8 centroids of D-byte descriptors;
    word c * F + f is fine[c, f]. `word_counts`: each word's occurrences among the training
    descriptors (how common it is in real pictures)."""

    coarse: np.ndarray
    fine: np.ndarray
    detector: str
    source: str
    word_counts: np.ndarray

    def __post_init__(self) -> None:
        c, d = self.coarse.shape
        if self.coarse.dtype != np.uint8 or self.fine.dtype != np.uint8:
            raise ValueError("vocabulary centroids must be uint8")
        if self.fine.ndim != 3 or self.fine.shape[0] != c or self.fine.shape[2] != d:
            raise ValueError(f"fine centroids {self.fine.shape} do not fit coarse {(c, d)}")
        if self.word_counts.shape != (self.n_words,):
            raise ValueError(
                f"word counts {self.word_counts.shape} do not fit {self.n_words} words"
            )
        flat = faiss.IndexBinaryFlat(d * 8)
        flat.add(np.ascontiguousarray(self.coarse))
        object.__setattr__(self, "_coarse_index", flat)
        if d % 8 == 0:  # (words, C): the layout word_assign.nearest_coarse scans fastest
            by_lane = np.ascontiguousarray(np.ascontiguousarray(self.coarse).view(np.uint64).T)
            object.__setattr__(self, "_coarse_by_lane", by_lane)

    @property
    def descriptor_bytes(self) -> int:
        return self.coarse.shape[1]

    @property
    def n_words(self) -> int:
        return self.fine.shape[0] * self.fine.shape[1]

    @property
    def fingerprint(self) -> str:
        digest = hashlib.sha256(self.coarse.tobytes())
        digest.update(self.fine.tobytes())
        return digest.hexdigest()[:32]

    def assign(self, descriptors: np.ndarray) -> np.ndarray:
        """The word (int64) of each descriptor row."""
        words = np.empty(len(descriptors), dtype=np.int64)
        n_fine = self.fine.shape[1]
        # Compared 8 bytes at a time where the length allows: 3x faster than byte by byte.
        lanes = np.uint64 if self.descriptor_bytes % 8 == 0 else np.uint8
        fine = self.fine.view(lanes)
        for start in range(0, len(descriptors), ASSIGN_CHUNK):
            chunk = np.ascontiguousarray(descriptors[start : start + ASSIGN_CHUNK])
            if lanes is np.uint64:
                # compiled (word_assign.py): one thread, no OpenMP (FAISS's pool spun on a
                # loaded machine: ~360 ms a search in a gRPC thread), the same words
                lanes_of_chunk = chunk.view(np.uint64)
                coarse = nearest_coarse(lanes_of_chunk, self._coarse_by_lane)
                nearest = nearest_fine(lanes_of_chunk, coarse, fine)
                words[start : start + len(chunk)] = coarse * n_fine + nearest
                continue
            _, coarse = self._coarse_index.search(chunk, 1)
            coarse = coarse[:, 0]
            distances = np.bitwise_count(fine[coarse] ^ chunk.view(lanes)[:, None, :]).sum(
                axis=2, dtype=np.uint16
            )
            words[start : start + len(chunk)] = coarse * n_fine + distances.argmin(axis=1)
        return words

    def save(self, path: str | os.PathLike) -> None:
        with open(path, "wb") as out:
            np.savez(
                out,
                format=np.int64(VOCABULARY_FORMAT),
                coarse=self.coarse,
                fine=self.fine,
                detector=np.str_(self.detector),
                source=np.str_(self.source),
                word_counts=self.word_counts.astype(np.int64),
            )

    @classmethod
    def load(cls, path: str | os.PathLike = VOCABULARY_PATH) -> Vocabulary:
        try:
            with np.load(path, allow_pickle=False) as data:
                if int(data["format"]) != VOCABULARY_FORMAT:
                    raise ValueError(f"vocabulary {path} is format {int(data['format'])}")
                return cls(
                    data["coarse"],
                    data["fine"],
                    str(data["detector"]),
                    str(data["source"]),
                    data["word_counts"],
                )
        except (KeyError, OSError, EOFError) as exc:
            raise ValueError(f"{path} is not a local-feature vocabulary: {exc}") from exc


@cache
def default_vocabulary() -> Vocabulary:
    return Vocabulary.load(VOCABULARY_PATH)
