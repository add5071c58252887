"""PDFs: each way a publication re-circulates is matched to it, with the
right pages; unrelated publications are not; hostile files end in a typed
error or a partial result within the limits."""

from __future__ import annotations

import dataclasses
import time

import pymupdf
import pytest

from hashsvc.base.errors import CorruptMedia, InvalidArgument, TooLarge, UnsupportedMedia
from hashsvc.base.signals import TEXT_SIMHASH
from hashsvc.core.config import ImageLimits
from hashsvc.matching import pdf_evidence as pdf_match
from hashsvc.media.image import hash_known
from hashsvc.media.pdf import PdfLimits, hash_pdf, hash_pdf_report
from hashsvc_testing import pdf_media as media

LIMITS = PdfLimits()


@pytest.fixture(scope="module")
def arabic():
    """A known Arabic publication with a photo, and its signals."""
    pub = media.publication(7, "ar", paragraphs=14, photos=("image1.jpg",))
    pdf = media.typeset(pub)
    return pub, pdf, hash_pdf(pdf, LIMITS, for_query=False)


@pytest.fixture(scope="module")
def english():
    pub = media.publication(8, "en", paragraphs=14, photos=("image2.jpg",))
    pdf = media.typeset(pub)
    return pub, pdf, hash_pdf(pdf, LIMITS, for_query=False)


def match(query_pdf: bytes, known_signals) -> pdf_match.PdfEvidence:
    query = hash_pdf(query_pdf, LIMITS, for_query=True)
    return pdf_match.match_pdf(media.brute_force_pairs(query, known_signals))


def page_map(evidence: pdf_match.PdfEvidence) -> dict[int, int]:
    return {m.query_page: m.known_page for m in evidence.pages}


def pages_of(pdf: bytes) -> int:
    with pymupdf.open(stream=pdf, filetype="pdf") as doc:
        return doc.page_count


# ------------------------------------------------------------------ signals


def test_signals_of_a_known_publication(arabic) -> None:
    _, pdf, signals = arabic
    pages = pages_of(pdf)
    assert pages >= 2
    page_views = [s for s in signals if s.kind == "pdq" and s.variant.startswith("page:")]
    assert {s.position for s in page_views} == set(range(1, pages + 1))
    assert any(s.variant == "page:original" for s in page_views)
    image_views = [s for s in signals if s.variant.startswith("image:")]
    assert "image:original" in {s.variant for s in image_views}
    page_text = [s for s in signals if s.kind == "text_simhash" and s.variant == "page"]
    assert len(page_text) == pages
    assert all(len(s.value) == TEXT_SIMHASH.nbytes for s in page_text)
    document = [s for s in signals if s.position is None]
    assert {(s.kind, s.variant) for s in document} == {
        ("text_sha256", "document"),
        ("text_simhash", "document"),
    }


def test_path_and_bytes_give_the_same_signals(arabic, tmp_path) -> None:
    _, pdf, signals = arabic
    path = tmp_path / "known.pdf"
    path.write_bytes(pdf)
    assert hash_pdf(str(path), LIMITS, for_query=False) == signals


# ------------------------------------------------------------------ transforms


@pytest.mark.parametrize("which", ["arabic", "english"])
def test_resaved_copy_matches_page_for_page(which, request) -> None:
    _, pdf, known = request.getfixturevalue(which)
    evidence = match(media.resave(pdf), known)
    assert evidence.matched_by[0] == pdf_match.DOCUMENT_TEXT_EXACT
    assert page_map(evidence) == {p: p for p in range(1, pages_of(pdf) + 1)}


def test_retypeset_copy_matches_by_document_text(arabic) -> None:
    pub, pdf, known = arabic
    query = media.retypeset(pub)
    assert pages_of(query) != pages_of(pdf)  # the page breaks moved
    evidence = match(query, known)
    assert pdf_match.DOCUMENT_TEXT_EXACT in evidence.matched_by
    assert pdf_match.EMBEDDED_IMAGE in evidence.matched_by


def test_diacritics_and_tatweel_added_still_match(arabic) -> None:
    pub, _, known = arabic
    evidence = match(media.typeset(media.vocalised(pub)), known)
    assert pdf_match.PAGE_TEXT in evidence.matched_by
    assert pdf_match.DOCUMENT_TEXT_NEAR in evidence.matched_by
    assert page_map(evidence)[1] == 1


def test_subset_of_pages_maps_to_the_known_pages(english) -> None:
    _, pdf, known = english
    last = pages_of(pdf) - 1
    evidence = match(media.page_subset(pdf, [last, 0]), known)
    assert page_map(evidence) == {1: last + 1, 2: 1}
    assert pdf_match.DOCUMENT_TEXT_EXACT not in evidence.matched_by


def test_new_cover_page_shifts_the_mapping(arabic) -> None:
    _, pdf, known = arabic
    cover = media.publication(99, "ar", paragraphs=3, photos=("image5.jpg",))
    evidence = match(media.with_cover(pdf, cover), known)
    pages = pages_of(pdf)
    assert page_map(evidence) == {p + 1: p for p in range(1, pages + 1)}


@pytest.mark.parametrize("which", ["arabic", "english"])
def test_scanned_copy_matches_by_page_image(which, request) -> None:
    _, pdf, known = request.getfixturevalue(which)
    scan = media.scanned(pdf)
    report = hash_pdf_report(scan, LIMITS, for_query=True)
    assert not [s for s in report.signals if s.kind.startswith("text")]  # no text layer
    evidence = pdf_match.match_pdf(media.brute_force_pairs(report.signals, known))
    assert evidence.matched_by[0] == pdf_match.PAGE_IMAGE
    assert page_map(evidence)[1] == 1


@pytest.mark.parametrize("language", ["ar", "en"])
def test_unrelated_publications_do_not_match(arabic, english, language) -> None:
    known = arabic[2] if language == "ar" else english[2]
    for seed in (101, 102, 103):
        other = media.publication(seed, language, paragraphs=14, photos=("image6.jpg",))
        evidence = match(media.typeset(other), known)
        assert not evidence.matched, evidence


def test_known_photo_reused_in_a_new_pdf_matches_the_image_entry() -> None:
    photo = media.photo_file("image3.jpg").read_bytes()
    image_entry = hash_known(photo, ImageLimits())
    # inserted as is, as most tools do with a JPEG
    with pymupdf.open() as doc:
        page = doc.new_page()
        page.insert_text((72, 72), "A new statement with an old photo", fontsize=14)
        page.insert_image(pymupdf.Rect(72, 100, 472, 400), stream=photo)
        new_pdf = doc.tobytes()
    query = hash_pdf(new_pdf, LIMITS, for_query=True)
    pairs = media.brute_force_pairs(query, image_entry)
    embedded = [(q, d) for q, k, d in pairs if q.variant.startswith("image:")]
    # the embedded JPEG is the file itself, and its PDQ views are the image's
    assert any(q.kind == "sha256" for q, _ in embedded)
    assert min(d for q, d in embedded if q.kind == "pdq") <= pdf_match.IMAGE_PDQ_MAX


def test_evidence_ranks_and_ignores_what_is_no_evidence(arabic) -> None:
    _, _, known = arabic
    page_text = next(s for s in known if s.kind == "text_simhash" and s.variant == "page")
    doc_text = next(s for s in known if s.kind == "text_simhash" and s.variant == "document")
    far = pdf_match.PAGE_SIMHASH_MAX + 1
    assert not pdf_match.match_pdf([(page_text, page_text, far)]).matched
    # a page's text near a whole document's is not evidence
    assert not pdf_match.match_pdf([(page_text, doc_text, 0)]).matched
    evidence = pdf_match.match_pdf([(page_text, page_text, 3), (doc_text, doc_text, 5)])
    assert evidence.matched_by == (pdf_match.PAGE_TEXT, pdf_match.DOCUMENT_TEXT_NEAR)
    assert evidence.best_distance == 3


# ------------------------------------------------------------------ bad input


@pytest.fixture(scope="module")
def small_pdf() -> bytes:
    return media.typeset(media.publication(3, "en", paragraphs=4))


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"", InvalidArgument),
        (b"%", UnsupportedMedia),
        (b"GIF89a" + b"\0" * 100, UnsupportedMedia),
        (b"%PDF-1.7\n" + b"\xff" * 300, CorruptMedia),
    ],
)
def test_not_a_pdf(data, error) -> None:
    with pytest.raises(error):
        hash_pdf(data, LIMITS, for_query=True)


def test_encrypted_pdf_is_refused_with_a_clear_error(small_pdf) -> None:
    with pytest.raises(UnsupportedMedia, match="encrypted"):
        hash_pdf(media.encrypted(small_pdf), LIMITS, for_query=True)


def test_broken_xref_is_repaired_and_said(small_pdf) -> None:
    report = hash_pdf_report(media.broken_xref(small_pdf), LIMITS, for_query=True)
    assert report.pages_hashed == report.page_count >= 1
    assert any("repaired" in note for note in report.notes)
    assert report.signals


def test_truncated_pdf_gives_what_can_be_read_or_a_typed_error(small_pdf) -> None:
    for cut in (len(small_pdf) // 2, 200, 20):
        try:
            report = hash_pdf_report(small_pdf[:cut], LIMITS, for_query=True)
        except (CorruptMedia, UnsupportedMedia):
            continue
        assert report.partial


def test_too_many_bytes(small_pdf) -> None:
    with pytest.raises(TooLarge):
        hash_pdf(small_pdf, dataclasses.replace(LIMITS, max_bytes=1000), for_query=True)


def test_ten_thousand_pages_hash_the_first_pages_and_say_so() -> None:
    limits = dataclasses.replace(LIMITS, max_pages=20)
    pdf = media.many_pages(10_000)
    # CPU seconds, not wall (the machine's load stretches wall time):
    # hashing all 10,000 pages would cost minutes of CPU
    started = time.process_time()
    report = hash_pdf_report(pdf, limits, for_query=True)
    assert time.process_time() - started < 5
    assert (report.page_count, report.pages_hashed) == (10_000, 20)
    assert "first 20 of 10000" in report.notes[0]
    assert max(s.position for s in report.signals if s.position) == 20
    # the whole-document text would describe a document that does not exist
    assert not [s for s in report.signals if s.position is None]


@pytest.mark.parametrize("size", [(1e6, 1e6), (0.5, 0.5), (20_000, 10)])
def test_page_of_absurd_size_is_skipped(size) -> None:
    report = hash_pdf_report(media.absurd_page(*size), LIMITS, for_query=True)
    assert {s.position for s in report.signals if s.position} == {1}
    assert "page 2 skipped" in report.notes[0]


def test_cyclic_page_tree_is_a_typed_error_or_partial() -> None:
    with pytest.raises(CorruptMedia):
        hash_pdf(media.cyclic_page_tree(), LIMITS, for_query=True)


@pytest.mark.parametrize("make", [media.deep_nesting, media.deep_page_tree])
def test_very_deep_object_graphs(make) -> None:
    try:
        report = hash_pdf_report(make(), LIMITS, for_query=True)
    except CorruptMedia:
        return
    assert report.pages_hashed == 1


def test_slow_text_extraction_stops_at_its_budget() -> None:
    slow = media.slow_text_page(operators=60_000)
    with pymupdf.open(stream=slow, filetype="pdf") as one, pymupdf.open() as doc:
        for _ in range(3):
            doc.insert_pdf(one)
        three = doc.tobytes()
    limits = dataclasses.replace(LIMITS, max_text_seconds=0.001)
    report = hash_pdf_report(three, limits, for_query=True)
    assert report.pages_hashed == 3  # pages are still rendered
    assert any("text time limit" in note for note in report.notes)
    assert not [s for s in report.signals if s.position is None]


def test_time_budget_gives_partial_results(english) -> None:
    _, pdf, _ = english
    report = hash_pdf_report(pdf, dataclasses.replace(LIMITS, max_seconds=1e-6), for_query=True)
    assert report.pages_hashed == 1 < report.page_count
    assert "time limit" in report.notes[-1]


def test_too_many_objects_is_refused(small_pdf) -> None:
    with pytest.raises(TooLarge):
        hash_pdf(small_pdf, dataclasses.replace(LIMITS, max_objects=3), for_query=True)
