"""Does a known PDF match an upload, and which pages? A pure function over the
pairs of signals that the indexes found close (see hashsvc/media/pdf.py for the
signals and variant names).

Evidence, strongest first:
* document_text_exact: the normalised text of the whole document is the same
  (re-saved, re-vocalised with harakat and tatweel, re-typeset).
* page_image: a rendered page looks like a known page (re-saved, subset of
  pages, new cover, scanned).
* embedded_image: a picture inside the upload (or a region of a page, as in a
  scan) is one of the known document's pictures.
* page_text: a page's text is near a known page's text (subset, new cover,
  re-typeset pages that share most of their text).
* document_text_near: the document's text is near the known one's (a few
  words changed, pages added or removed).

Thresholds are in bits and were chosen with bench/pdf.py: each sits well below
the closest unrelated pair it saw and above most transformed pairs.

A page image is no evidence where the page's look is explained by its layout
(bench/pdf.py, "template"): unrelated documents of one page template (a photo
in the same frame at the top, text below) matched at 26-38 bits. So a
page_image pair does not count when the two pages have text layers that
disagree (a copy keeps its text; a scan has none, so is judged by its look),
nor when the known page's view that matched is shared by another page of the
known document (the view shows the template, not the page). Not even review:
what such pages may truly share, a photo or text, is judged by its own
evidence (embedded_image, page_text).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from hashsvc.base.signals import Signal, hamming

DOCUMENT_TEXT_EXACT = "document_text_exact"
PAGE_IMAGE = "page_image"
EMBEDDED_IMAGE = "embedded_image"
PAGE_TEXT = "page_text"
DOCUMENT_TEXT_NEAR = "document_text_near"
# Order of strength, for choosing one signal per page and the best evidence.
STRENGTH = (DOCUMENT_TEXT_EXACT, PAGE_IMAGE, EMBEDDED_IMAGE, PAGE_TEXT, DOCUMENT_TEXT_NEAR)

# PDQ (256 bits) of a rendered (blurred) page against a known page: scans and
# re-saves came within 24 bits, unrelated pages of the same layout no closer than 54.
PAGE_PDQ_MAX = 40
# PDQ of an embedded picture: the image policy's block distance (Meta's 31).
IMAGE_PDQ_MAX = 31
# Below this PDQ quality a page or picture is too flat (a near-blank page,
# a plain background) to be evidence.
MIN_PDQ_QUALITY = 50
# TEXT_SIMHASH (256 bits) of a page and of the whole document: unrelated texts
# (same language, vocabulary and boilerplate) came no closer than 96 bits; a
# vocalised page or document stays within ~20, half a document within ~60.
PAGE_SIMHASH_MAX = 64
DOCUMENT_SIMHASH_MAX = 64
# Two pages' texts disagree past this: unrelated texts came no closer than 93
# bits, the pages of one template's documents at 113+ (bench/pdf.py).
PAGE_TEXT_DISAGREE = PAGE_SIMHASH_MAX


@dataclass(frozen=True)
class PageMatch:
    """One piece of evidence: query page -> known page (None for the whole
    document), the kind of evidence and its Hamming distance in bits."""

    query_page: int | None
    known_page: int | None
    signal: str
    distance: int


@dataclass(frozen=True)
class PdfEvidence:
    # One per query page that matched (its strongest evidence), by page.
    pages: tuple[PageMatch, ...]
    # Whole-document evidence (query_page and known_page None).
    document: tuple[PageMatch, ...]
    # Every kind of evidence seen, strongest first.
    matched_by: tuple[str, ...]

    @property
    def matched(self) -> bool:
        return bool(self.pages or self.document)

    @property
    def best(self) -> PageMatch | None:
        found = [*self.document, *self.pages]
        return min(found, key=_rank) if found else None

    @property
    def best_distance(self) -> int | None:
        best = self.best
        return best.distance if best else None


NO_MATCH = PdfEvidence((), (), ())


def match_pdf(
    pairs: Iterable[tuple[Signal, Signal, int]],
    query_signals: Sequence[Signal] = (),
    known_signals: Sequence[Signal] = (),
) -> PdfEvidence:
    """The evidence that one known PDF matches the upload.

    pairs: (query signal, known signal, Hamming distance) for the known
    entry's signals that the index search found near the upload's signals.
    Pairs that are no evidence (too far, too flat, page text against the
    whole document) are ignored, so the search radius may be wider than any
    threshold here. query_signals and known_signals (all of each side's
    signals) let page images that show only a template be told apart."""
    page_evidence: dict[int, PageMatch] = {}
    document: dict[str, PageMatch] = {}
    layout: _Layout | None = None
    for query, known, distance in pairs:
        signal = classify(query, known, distance)
        if signal is None:
            continue
        if signal == PAGE_IMAGE:
            layout = layout or _Layout(query_signals, known_signals)
            if layout.explains(query, known):
                continue
        if signal in (DOCUMENT_TEXT_EXACT, DOCUMENT_TEXT_NEAR):
            found = PageMatch(None, None, signal, distance)
            if signal not in document or _rank(found) < _rank(document[signal]):
                document[signal] = found
            continue
        found = PageMatch(_page(query), _page(known), signal, distance)
        current = page_evidence.get(found.query_page)
        if current is None or _rank(found) < _rank(current):
            page_evidence[found.query_page] = found
    if not page_evidence and not document:
        return NO_MATCH
    pages = tuple(page_evidence[p] for p in sorted(page_evidence))
    kinds = {m.signal for m in pages} | set(document)
    return PdfEvidence(
        pages=pages,
        document=tuple(sorted(document.values(), key=_rank)),
        matched_by=tuple(s for s in STRENGTH if s in kinds),
    )


def classify(query: Signal, known: Signal, distance: int) -> str | None:
    """The kind of evidence one pair of signals is, or None if it is none."""
    if query.kind != known.kind:
        return None
    if known.kind == "text_sha256":
        same = query.value == known.value and known.variant == query.variant
        return DOCUMENT_TEXT_EXACT if same else None
    if known.kind == "text_simhash":
        if query.variant != known.variant:
            return None  # a page's text against a whole document's
        if known.variant == "document":
            return DOCUMENT_TEXT_NEAR if distance <= DOCUMENT_SIMHASH_MAX else None
        return PAGE_TEXT if distance <= PAGE_SIMHASH_MAX else None
    if known.kind == "sha256":
        is_image = known.variant.startswith("image:") and query.value == known.value
        return EMBEDDED_IMAGE if is_image else None
    if known.kind == "pdq":
        if min(query.quality or 0, known.quality or 0) < MIN_PDQ_QUALITY:
            return None
        if known.variant.startswith("image:"):
            # Any view of the upload: an embedded picture, or a region of a
            # scanned page that frames the picture.
            return EMBEDDED_IMAGE if distance <= IMAGE_PDQ_MAX else None
        if known.variant.startswith("page:"):
            # A page, or a full-page picture (a scan) of the upload.
            return PAGE_IMAGE if distance <= PAGE_PDQ_MAX else None
    return None


class _Layout:
    """What a page image match may owe to the page template (module doc).
    Built on the first page image pair, once per known document and upload."""

    def __init__(self, query_signals: Sequence[Signal], known_signals: Sequence[Signal]):
        self.query_text = _page_texts(query_signals)
        self.known_text = _page_texts(known_signals)
        # the known document's page views by view name: pages, and values as rows
        by_view: dict[str, list[Signal]] = {}
        for s in known_signals:
            if s.kind == "pdq" and s.variant.startswith("page:") and s.position is not None:
                by_view.setdefault(s.variant, []).append(s)
        self.known_views = {
            view: (
                np.array([_page(s) for s in views]),
                np.frombuffer(b"".join(s.value for s in views), np.uint8).reshape(len(views), -1),
            )
            for view, views in by_view.items()
        }
        self._shared: dict[tuple[str, int | None], bool] = {}

    def explains(self, query: Signal, known: Signal) -> bool:
        query_text = self.query_text.get(_page(query))
        known_text = self.known_text.get(_page(known))
        if query_text and known_text and hamming(query_text, known_text) > PAGE_TEXT_DISAGREE:
            return True
        return self._shared_by_another_page(known)

    def _shared_by_another_page(self, known: Signal) -> bool:
        key = (known.variant, _page(known))
        if key not in self._shared:
            shared = False
            if key[1] is not None and known.variant in self.known_views:
                pages, values = self.known_views[known.variant]
                value = np.frombuffer(known.value, np.uint8)
                distances = np.unpackbits(values ^ value, axis=1).sum(axis=1)
                shared = bool(np.any((pages != key[1]) & (distances <= PAGE_PDQ_MAX)))
            self._shared[key] = shared
        return self._shared[key]


def _page_texts(signals: Sequence[Signal]) -> dict[int | None, bytes]:
    return {
        _page(s): s.value
        for s in signals
        if s.kind == "text_simhash" and s.variant == "page" and s.position is not None
    }


def _page(signal: Signal) -> int | None:
    return int(signal.position) if signal.position is not None else None


def _rank(found: PageMatch) -> tuple[int, int]:
    return STRENGTH.index(found.signal), found.distance
