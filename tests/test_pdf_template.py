"""Unrelated documents that share one page template (a photo in the same
frame at the top, Arabic text below) are not a known document: a page-image
match that the layout explains is no evidence (pdf_evidence module doc), while
a true copy still blocks. Through the running service, both stores."""

from __future__ import annotations

import shutil

import pytest

from hashsvc.matching import pdf_evidence as pdf_match
from hashsvc.media.pdf import PdfLimits, hash_pdf
from hashsvc.v1 import hashsvc_pb2 as pb
from hashsvc_testing import pdf_media as media

CHUNK = 256 * 1024


def _chunks(data: bytes):
    for start in range(0, len(data), CHUNK):
        yield data[start : start + CHUNK]


@pytest.fixture(scope="module")
def documents(tmp_path_factory):
    """Three documents of one template, three pages each, each with its own
    (dark) photos and its own text; and copies of the first."""
    photo_dir = tmp_path_factory.mktemp("photos")
    for name in media.PHOTOS[:9]:
        shutil.copy(media.photo_file(name), photo_dir / name)
    dark = media.dark_photos(photo_dir, media.PHOTOS[:9])
    docs = [
        media.template_document(seed, tuple(dark[3 * i : 3 * i + 3]), "ar", photo_dir)
        for i, seed in enumerate((11, 12, 13))
    ]
    return {
        "known": docs[0],
        "others": docs[1:],
        "resaved": media.resave(docs[0]),
        "pages_3_and_1": media.page_subset(docs[0], [2, 0]),
    }


def test_the_template_alone_used_to_be_page_image_evidence(documents):
    """What makes the case: without the template rule, each unrelated
    document's pages match the known one's by page image within the block
    distance of PDQ (31)."""
    limits = PdfLimits()
    known = hash_pdf(documents["known"], limits, for_query=False)
    for other in documents["others"]:
        query = hash_pdf(other, limits, for_query=True)
        pairs = media.brute_force_pairs(query, known)
        old = pdf_match.match_pdf(pairs)
        assert old.matched_by == (pdf_match.PAGE_IMAGE,)
        assert old.best_distance <= 40
        assert not pdf_match.match_pdf(pairs, query, known).matched


@pytest.fixture(scope="module")
def service(module_store_url, make_module_harness, documents):
    harness = make_module_harness(module_store_url, max_upload_bytes=64 << 20)
    stubs, md = harness.stubs("operator")
    stubs.curation.CreateSet(pb.CreateSetRequest(name="known"), metadata=md)
    messages = [pb.AddEntryUploadRequest(header=pb.AddEntryRequest(set="known", name="doc"))]
    messages += [pb.AddEntryUploadRequest(chunk=c) for c in _chunks(documents["known"])]
    stubs.curation.AddEntryUpload(iter(messages), metadata=md)
    return harness


def _match(harness, data: bytes) -> pb.MatchResponse:
    stubs, md = harness.stubs("matcher")
    messages = [pb.MatchUploadRequest(header=pb.MatchRequest())]
    messages += [pb.MatchUploadRequest(chunk=c) for c in _chunks(data)]
    return stubs.matcher.MatchUpload(iter(messages), metadata=md)


def test_documents_sharing_only_the_template_are_allowed(service, documents):
    for other in documents["others"]:
        resp = _match(service, other)
        assert resp.media_type == pb.PDF
        assert resp.decision == pb.ALLOW
        assert [(m.entry, m.signal_type, m.distance) for m in resp.matches] == []


@pytest.mark.parametrize("copy", ["known", "resaved", "pages_3_and_1"])
def test_copies_of_a_template_document_still_block(service, documents, copy):
    resp = _match(service, documents[copy])
    own = next(m for m in resp.matches if m.entry == "doc")
    assert own.decision == pb.BLOCK
