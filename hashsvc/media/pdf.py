"""PDFs: open within limits, then the signals that find known publications.

Per page (position = 1-based page number):
* PDQ of the page rendered at a fixed small size (PDQ reads a 64x64 summary;
  more pixels only cost time), with the image module's views: `known_views` for
  a known document, `query_views` for an upload. Variants are "page:<view>".
  Scanned pages (no text layer) are covered by these.
* PDQ of each embedded image big enough to be a picture, once per document
  (at its first page), with the same views: "image:<view>", plus the SHA-256 of
  a JPEG stream as stored ("image:exact"), which is the JPEG file that was
  embedded. The views are those of image entries, so a known photo reused in a
  new PDF matches image sets, and a known PDF's photos match image uploads.
  The first PdfLimits.max_feature_images of them with enough keypoints also
  get local features ("image:original"), as image entries do: a known picture
  shown cropped or tilted in a document is found by them.
* TEXT_SIMHASH of the page's normalised text ("page"), when it has enough words.

Whole document (position None): TEXT_SHA256 of the normalised text of all
pages and its TEXT_SIMHASH ("document"), when there are enough words.

Limits (PdfLimits): a file past max_pages has its first max_pages hashed (a
partial look still finds a magazine's pages; a refusal finds nothing, and many
platforms let errors through); `hash_pdf_report` says how many pages were
hashed and why the rest were not. The same holds for the time budget: the
first page is always hashed, later pages while the budget lasts. One page is
one call into MuPDF that cannot be interrupted from Python; the service's
per-job timeout (a killed worker) is the backstop for a single pathological
page. Files that cannot be read at all raise CorruptMedia; encrypted ones
UnsupportedMedia; over max_bytes or max_objects, TooLarge.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from dataclasses import dataclass, field

import numpy as np
import pymupdf
from PIL import Image, ImageFilter

from hashsvc.base.errors import CorruptMedia, InvalidArgument, Timeout, TooLarge, UnsupportedMedia
from hashsvc.base.signals import TEXT_SIMHASH, Signal
from hashsvc.media.image import VIEW_SIDE, known_views, local_feature_signals, query_views
from hashsvc.media.limits import PdfLimits
from hashsvc.media.textnorm import normalise, shingles, simhash, text_sha256, words

# Hostile files make MuPDF print to stderr for every broken object; the
# errors that matter reach us as exceptions.
pymupdf.TOOLS.mupdf_display_errors(False)
pymupdf.TOOLS.mupdf_display_warnings(False)

PAGE = "page"
IMAGE = "image"
DOCUMENT = "document"
# Gaussian blur of a rendered page, as a share of its long side (4 px at 512).
# Lines of text alias in PDQ's 64x64 summary, so a skew of half a degree or
# another rasteriser changed ~60 of 256 bits; blurred to grey paragraph shapes,
# a scan stays within ~25 bits of the original, while unrelated pages of the
# same layout stay ~80 apart (bench/pdf.py).
PAGE_BLUR_SHARE = 4 / 512
# Words per shingle of the text SimHash (bench/pdf.py measured 1..4).
SHINGLE_WORDS = 3
# Text extraction: join words hyphenated across lines (re-typesetting moves
# line ends); keep ligatures as code points (NFKC expands them).
_TEXT_FLAGS = (
    pymupdf.TEXT_PRESERVE_LIGATURES
    | pymupdf.TEXT_PRESERVE_WHITESPACE
    | pymupdf.TEXT_MEDIABOX_CLIP
    | pymupdf.TEXT_DEHYPHENATE
)


@dataclass(frozen=True)
class PdfHashes:
    signals: list[Signal]
    page_count: int
    pages_hashed: int
    # Why signals are missing: pages past the limit, skipped pages, time.
    notes: list[str] = field(default_factory=list)

    @property
    def partial(self) -> bool:
        return bool(self.notes)


def hash_pdf(source: bytes | str, limits: PdfLimits, for_query: bool) -> list[Signal]:
    """All signals of a PDF (file bytes or a path), or a typed error."""
    return hash_pdf_report(source, limits, for_query).signals


def hash_pdf_report(source: bytes | str, limits: PdfLimits, for_query: bool) -> PdfHashes:
    """hash_pdf, also saying how much of the document was hashed."""
    data = _read(source, limits)
    doc = _open(data, limits)
    try:
        return _Hasher(doc, limits, for_query).run()
    except (InvalidArgument, TooLarge, Timeout):
        raise
    except Exception as exc:  # MuPDF on hostile input raises many kinds
        raise CorruptMedia(f"unreadable PDF: {exc}") from None
    finally:
        doc.close()


# ------------------------------------------------------------------ opening


def _read(source: bytes | str, limits: PdfLimits) -> bytes:
    if isinstance(source, str):
        try:
            size = os.stat(source).st_size
            if size > limits.max_bytes:
                raise TooLarge(f"PDF is {size} bytes; the limit is {limits.max_bytes}")
            with open(source, "rb") as f:
                source = f.read(limits.max_bytes + 1)
        except OSError as exc:
            raise InvalidArgument(f"cannot read {source}: {exc.strerror}") from None
    if not source:
        raise InvalidArgument("empty media")
    if len(source) > limits.max_bytes:
        raise TooLarge(f"PDF is {len(source)} bytes; the limit is {limits.max_bytes}")
    # Readers accept junk before the header; PyMuPDF would "repair" any bytes
    # into an empty document, so a missing header is a different media type.
    if b"%PDF-" not in source[:1024]:
        raise UnsupportedMedia("not a PDF (no %PDF- header)")
    return source


def _open(data: bytes, limits: PdfLimits) -> pymupdf.Document:
    try:
        doc = pymupdf.open(stream=data, filetype="pdf")
    except Exception as exc:
        raise CorruptMedia(f"corrupt PDF: {exc}") from None
    try:
        if doc.needs_pass:
            raise UnsupportedMedia("PDF is encrypted with a password; cannot read it")
        objects = doc.xref_length()
        if objects > limits.max_objects:
            raise TooLarge(f"PDF has {objects} objects; the limit is {limits.max_objects}")
        if doc.page_count < 1:
            raise CorruptMedia("PDF has no readable pages")
    except Exception as exc:
        doc.close()
        if isinstance(exc, InvalidArgument | TooLarge):
            raise
        raise CorruptMedia(f"corrupt PDF: {exc}") from None
    return doc


# ------------------------------------------------------------------ hashing


class _Hasher:
    def __init__(self, doc: pymupdf.Document, limits: PdfLimits, for_query: bool) -> None:
        self.doc = doc
        self.limits = limits
        self.for_query = for_query
        self.views = query_views if for_query else known_views
        self.signals: list[Signal] = []
        self.notes: list[str] = []
        self.page_texts: list[str] = []
        self.text_complete = True
        self.text_seconds = 0.0
        self.seen_images: set[int] = set()
        self.feature_images = 0
        self.deadline = time.monotonic() + limits.max_seconds

    def run(self) -> PdfHashes:
        page_count = self.doc.page_count
        if self.doc.is_repaired:
            self.notes.append("cross-reference table was broken and has been repaired")
        to_hash = min(page_count, self.limits.max_pages)
        if to_hash < page_count:
            self.notes.append(f"only the first {to_hash} of {page_count} pages were hashed")
            self.text_complete = False
        hashed = 0
        for number in range(to_hash):
            # The first page is always hashed: some evidence beats none, and
            # the worker's own timeout bounds it.
            if number and time.monotonic() > self.deadline:
                self.notes.append(
                    f"time limit of {self.limits.max_seconds} s reached after {hashed} pages"
                )
                self.text_complete = False
                break
            hashed += self._page(number)
        if not hashed:
            raise CorruptMedia("no page of the PDF could be read: " + "; ".join(self.notes[:3]))
        self._document_text()
        return PdfHashes(self.signals, page_count, hashed, self.notes)

    def _page(self, number: int) -> bool:
        """Hash one page; False if it was skipped or unreadable."""
        position = number + 1
        try:
            page = self.doc.load_page(number)
            problem = self._page_problem(page)
            if problem:
                self.notes.append(f"page {position} skipped: {problem}")
                self.text_complete = False
                return False
            self._render(page, position)
            self._text(page, position)
            self._images(page, position)
            return True
        except (InvalidArgument, TooLarge, Timeout):
            raise
        except Exception as exc:  # one broken page does not lose the others
            self.notes.append(f"page {position} unreadable: {exc}")
            self.text_complete = False
            return False

    def _page_problem(self, page: pymupdf.Page) -> str:
        width, height = page.rect.width, page.rect.height
        low, high = self.limits.min_page_points, self.limits.max_page_points
        if not (low <= width <= high and low <= height <= high):
            return f"page size {width:.0f} x {height:.0f} points outside {low:.0f}..{high:.0f}"
        content = sum(len(self.doc.xref_stream_raw(x) or b"") for x in page.get_contents())
        if content > self.limits.max_page_content_bytes:
            limit = self.limits.max_page_content_bytes
            return f"{content} bytes of page content; the limit is {limit}"
        return ""

    def _render(self, page: pymupdf.Page, position: int) -> None:
        long_side, short_side = sorted((page.rect.width, page.rect.height), reverse=True)
        side = self.limits.render_side
        if self.for_query:
            # query_views hashes at VIEW_SIDE: render no larger than that needs
            side = min(side, math.ceil(VIEW_SIDE * long_side / short_side))
        scale = side / long_side
        # Grey: PDQ reads luminance only, and blurring one channel is 3x cheaper.
        pix = page.get_pixmap(matrix=pymupdf.Matrix(scale, scale), colorspace="gray", alpha=False)
        gray = Image.frombytes("L", (pix.width, pix.height), pix.samples)
        blurred = np.asarray(gray.filter(ImageFilter.GaussianBlur(PAGE_BLUR_SHARE * side)))
        self._add_views(np.repeat(blurred[:, :, None], 3, axis=2), PAGE, position)

    def _add_views(self, rgb: np.ndarray, prefix: str, position: int) -> None:
        for sig in self.views(rgb):
            self.signals.append(
                Signal(sig.kind, sig.value, sig.quality, f"{prefix}:{sig.variant}", position)
            )

    def _text(self, page: pymupdf.Page, position: int) -> None:
        if self.text_seconds > self.limits.max_text_seconds:
            return
        started = time.monotonic()
        text = normalise(page.get_text("text", flags=_TEXT_FLAGS))
        self.text_seconds += time.monotonic() - started
        if self.text_seconds > self.limits.max_text_seconds:
            self.notes.append(f"text time limit reached on page {position}; later text not read")
            self.text_complete = False
        self.page_texts.append(text)
        page_words = words(text)
        if len(page_words) >= self.limits.min_page_words:
            value = simhash(list(shingles(page_words, SHINGLE_WORDS)), TEXT_SIMHASH.bits)
            self.signals.append(Signal(TEXT_SIMHASH.name, value, None, PAGE, position))

    def _images(self, page: pymupdf.Page, position: int) -> None:
        limits = self.limits
        for item in page.get_images(full=True):
            xref, width, height, filters = item[0], item[2], item[3], item[8]
            if xref in self.seen_images or len(self.seen_images) >= limits.max_images:
                continue
            self.seen_images.add(xref)
            if min(width, height) < limits.min_image_side:
                continue
            if width * height > limits.max_image_pixels:
                self.notes.append(f"image {xref} on page {position} too large ({width}x{height})")
                continue
            if filters == "DCTDecode":
                jpeg = self.doc.xref_stream_raw(xref)
                self.signals.append(
                    Signal(
                        "sha256", hashlib.sha256(jpeg).digest(), None, f"{IMAGE}:exact", position
                    )
                )
            rgb = _image_rgb(self.doc, xref, limits.render_side)
            self._add_views(rgb, IMAGE, position)
            if self.feature_images < limits.max_feature_images:
                found = local_feature_signals(rgb, f"{IMAGE}:original", position)
                self.feature_images += bool(found)
                self.signals.extend(found)

    def _document_text(self) -> None:
        if not self.text_complete:
            return
        text = " ".join(t for t in self.page_texts if t)
        doc_words = words(text)
        if len(doc_words) < self.limits.min_document_words:
            return
        self.signals.append(Signal("text_sha256", text_sha256(text), None, DOCUMENT))
        value = simhash(list(shingles(doc_words, SHINGLE_WORDS)), TEXT_SIMHASH.bits)
        self.signals.append(Signal(TEXT_SIMHASH.name, value, None, DOCUMENT))


def _pixmap_rgb(pix: pymupdf.Pixmap) -> np.ndarray:
    if pix.alpha:
        pix = pymupdf.Pixmap(pix, 0)  # drop it
    if pix.n != 3:
        pix = pymupdf.Pixmap(pymupdf.csRGB, pix)
    # a copy: a view of samples_mv dangles once the pixmap is freed
    rows = np.frombuffer(pix.samples, np.uint8).reshape(pix.height, pix.stride)
    return rows[:, : pix.width * 3].reshape(pix.height, pix.width, 3)


def _image_rgb(doc: pymupdf.Document, xref: int, side: int) -> np.ndarray:
    pix = pymupdf.Pixmap(doc, xref)  # the image alone, without its soft mask
    # halve until the long side is near `side`: PDQ reads a 64x64 summary
    halvings = 0
    while max(pix.width, pix.height) >> (halvings + 1) >= side:
        halvings += 1
    if halvings:
        pix.shrink(halvings)
    return _pixmap_rgb(pix)
