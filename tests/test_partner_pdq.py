"""Partner PDQ hashes of pictures (python-threatexchange, HMA: PDQ at full
resolution, aspect kept, no EXIF transpose) block the exact re-upload of the
picture, as HMA blocks it: every picture in ../shared/vectors, bulk-loaded as a
partner would send it, then uploaded, through the running service on both
stores. bench/partner_pdq.py measures the distances."""

from __future__ import annotations

import csv

import numpy as np
import pdqhash
import pytest
from PIL import Image

from hashsvc.base.signals import hamming
from hashsvc.core.config import ImageLimits
from hashsvc.media import image
from hashsvc.v1 import hashsvc_pb2 as pb
from hashsvc_testing.vectors import VECTORS, present, require

SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}
CHUNK = 256 * 1024
LIMITS = ImageLimits(max_pixels=100_000_000)


def _pictures():
    return sorted(p for p in require().rglob("*") if p.suffix.lower() in SUFFIXES)


def _pytx_pdq(path) -> tuple[bytes, int]:
    """python-threatexchange's PdqSignal.hash_from_file (MANIFEST.md section 1)."""
    with Image.open(path) as img:
        bits, quality = pdqhash.compute(np.asarray(img.convert("RGB")))
    return np.packbits(bits.astype(np.uint8)).tobytes(), int(quality)


@pytest.fixture(scope="module")
def partner_hashes() -> dict[str, tuple[bytes, int]]:
    """The pytx-style hash of every vector picture by its path in the vectors,
    hashed once for both stores (full resolution: most of the module's time)."""
    return {str(p.relative_to(VECTORS)): _pytx_pdq(p) for p in _pictures()}


@pytest.fixture(scope="module")
def partner_set(module_store_url, make_module_harness, partner_hashes):
    """A server whose set "partner" holds the pytx-style hash of every vector
    picture, one entry per file (entry name: its path in the vectors)."""
    harness = make_module_harness(module_store_url, max_upload_bytes=64 << 20)
    stubs, md = harness.stubs("operator")
    stubs.curation.CreateSet(pb.CreateSetRequest(name="partner"), metadata=md)
    hashes = partner_hashes
    rows = pb.BulkRows(
        signal_type=["pdq"] * len(hashes),
        value=[value for value, _ in hashes.values()],
        entry=list(hashes),
        quality=[quality for _, quality in hashes.values()],
    )
    requests = [
        pb.BulkLoadRequest(header=pb.BulkLoadHeader(set="partner", strict=True)),
        pb.BulkLoadRequest(rows=rows),
        pb.BulkLoadRequest(end=pb.BulkLoadEnd(rows=len(hashes))),
    ]
    loaded = stubs.curation.BulkLoad(iter(requests), metadata=md)
    assert loaded.added == len(hashes) and loaded.rejected_count == 0
    return harness, hashes


def _upload_match(stubs, md, data: bytes) -> pb.MatchResponse:
    messages = [pb.MatchUploadRequest(header=pb.MatchRequest())]
    messages += [
        pb.MatchUploadRequest(chunk=data[i : i + CHUNK]) for i in range(0, len(data), CHUNK)
    ]
    return stubs.matcher.MatchUpload(iter(messages), metadata=md)


def test_a_partner_hash_of_each_vector_picture_blocks_its_upload(partner_set):
    harness, hashes = partner_set
    stubs, md = harness.stubs("matcher")
    assert len(hashes) >= 60  # every picture file of the vectors
    missed = {}
    for name, (_, quality) in hashes.items():
        resp = _upload_match(stubs, md, (VECTORS / name).read_bytes())
        own = next((m for m in resp.matches if m.entry == name), None)
        # A near-flat picture (PDQ quality < 50) never blocks on PDQ (the
        # policy's quality floor, as HMA's); it still reaches review.
        want = pb.BLOCK if quality >= 50 else pb.REVIEW
        if own is None or own.decision != want:
            missed[name] = (quality, own and (own.decision, own.distance))
    assert missed == {}


def _pytx_rows():
    if not present():
        yield pytest.param(None, id="vectors-missing")
        return
    with open(VECTORS / "threatexchange" / "expected_pdq.csv", newline="") as f:
        for row in csv.DictReader(f):
            if row["impl"] == "pytx_pdqhash":
                yield pytest.param(row, id=row["image"].rsplit("/", 1)[-1])


@pytest.mark.parametrize("row", list(_pytx_rows()))
def test_pytx_reference_rows_agree_exactly_and_an_upload_reaches_them(row):
    """The way the partner hash is computed here is python-threatexchange's
    own (its expected hashes and qualities, exactly); an upload's views come
    within the block distance of it, and within 0 bits when the picture was
    decoded whole (<= 512 px on its short side, or not a JPEG)."""
    path = require() / "threatexchange" / row["image"]
    value, quality = _pytx_pdq(path)
    assert value.hex() == row["expected_hex"]
    if row["expected_quality"]:
        assert quality == int(row["expected_quality"])
    views = image.hash_query(path.read_bytes(), LIMITS)
    best = min(hamming(s.value, value) for s in views if s.kind == "pdq")
    assert best <= 31
    with Image.open(path) as img:
        whole = img.format != "JPEG" or min(img.size) < 2 * image.VIEW_SIDE
    if whole:
        assert best == 0
