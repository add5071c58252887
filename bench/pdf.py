"""PDF matching: recall per transform, false matches against unrelated PDFs,
the margins behind pdf_match's thresholds, and hashing speed.

    .venv/bin/python bench/pdf.py [--short]

A corpus of generated publications (Arabic and English, real photos from
../shared) is hashed as known entries; each is transformed the ways
publications re-circulate, and every transformed copy and every unrelated
publication (other text, same languages and layout, other photos) is matched
against every known one with the brute-force pairing the tests use.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import pymupdf
from photos import load_photos

from hashsvc.matching import pdf_evidence as pdf_match
from hashsvc.media.pdf import PdfLimits, hash_pdf
from hashsvc_testing import pdf_media as media

LIMITS = PdfLimits()


def transforms(pub: media.Publication, pdf: bytes, cover: media.Publication):
    """(name, query PDF, expected query page -> known page or None if unknown)."""
    pages = pymupdf.open(stream=pdf, filetype="pdf").page_count
    subset = [pages - 1, 0] if pages > 1 else [0]
    yield "resave", media.resave(pdf), {p: p for p in range(1, pages + 1)}
    yield "retypeset", media.retypeset(pub), None
    if pub.language == "ar":
        yield "diacritics_tatweel", media.typeset(media.vocalised(pub)), None
    yield (
        "page_subset",
        media.page_subset(pdf, subset),
        {i + 1: p + 1 for i, p in enumerate(subset)},
    )
    yield "new_cover", media.with_cover(pdf, cover), {p + 1: p for p in range(1, pages + 1)}
    yield "scanned", media.scanned(pdf), {p: p for p in range(1, pages + 1)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--short", action="store_true", help="a small corpus (< 60 s)")
    args = parser.parse_args()
    known_count, unrelated_count, paragraphs = (6, 6, 14) if args.short else (20, 20, 18)

    photo_dir = Path(tempfile.mkdtemp(prefix="pdfbench-"))
    names = []
    for n, (_, img) in enumerate(load_photos()):
        names.append(f"photo{n}.jpg")
        img.save(photo_dir / names[-1], quality=90)
    # Each known publication that has a photo has its own (a shared photo is a
    # true match, not a false one); unrelated publications and new covers use
    # the other half of the photos.
    half = len(names) // 2
    known_photos, other_photos = names[:half], names[half:]

    def pub(seed: int, language: str, photos: tuple[str, ...]) -> media.Publication:
        return media.publication(seed, language, paragraphs, photos, photo_dir)

    def other(n: int) -> tuple[str, ...]:
        return (other_photos[n % len(other_photos)],)

    known = []
    hash_seconds = {"known": 0.0, "query": 0.0}
    pages_hashed = {"known": 0, "query": 0}

    def hashed(pdf: bytes, for_query: bool):
        side = "query" if for_query else "known"
        started = time.perf_counter()
        signals = hash_pdf(pdf, LIMITS, for_query)
        hash_seconds[side] += time.perf_counter() - started
        pages_hashed[side] += pymupdf.open(stream=pdf, filetype="pdf").page_count
        return signals

    for i in range(known_count):
        photos = (known_photos[i],) if i < len(known_photos) else ()
        p = pub(1000 + i, "ar" if i % 2 == 0 else "en", photos)
        pdf = media.typeset(p)
        known.append((p, pdf, hashed(pdf, False)))

    queries = []  # (transform, known index or None, expected pages, signals)
    for i, (p, pdf, _) in enumerate(known):
        cover = pub(5000 + i, p.language, other(i))
        for name, query_pdf, expected in transforms(p, pdf, cover):
            queries.append((name, i, expected, hashed(query_pdf, True)))
    for i in range(unrelated_count):
        p = pub(2000 + i, "ar" if i % 2 == 0 else "en", other(i + 7))
        queries.append(("unrelated", None, None, hashed(media.typeset(p), True)))

    found = defaultdict(int)
    total = defaultdict(int)
    pages_right = defaultdict(lambda: [0, 0])
    false_matches = []
    near = defaultdict(list)  # evidence kind -> distances seen, for true/false pairs
    for name, source, expected, q_signals in queries:
        for k, (_, _, k_signals) in enumerate(known):
            pairs = media.brute_force_pairs(q_signals, k_signals, radius=256)
            _record_margins(pairs, near, k == source, expected)
            evidence = pdf_match.match_pdf(pairs, q_signals, k_signals)
            if k != source:
                if evidence.matched:
                    false_matches.append((name, source, k, evidence))
                continue
            total[name] += 1
            found[name] += evidence.matched
            if expected:
                got = {m.query_page: m.known_page for m in evidence.pages}
                pages_right[name][0] += sum(got.get(q) == kp for q, kp in expected.items())
                pages_right[name][1] += len(expected)

    print(f"corpus: {known_count} known, {unrelated_count} unrelated, {len(queries)} queries")
    print("recall per transform (pages mapped right where the mapping is known):")
    for name in total:
        right, of = pages_right[name]
        mapped = f"  pages {right}/{of}" if of else ""
        print(f"  {name:20s} {found[name]}/{total[name]} = {found[name] / total[name]:.2f}{mapped}")
    print(f"false matches: {len(false_matches)}")
    for name, source, k, evidence in false_matches[:10]:
        print(f"  {name} of {source} -> known {k}: {evidence}")
    print("closest pairs by kind (bits): true = a query against its own source")
    for kind in sorted({key[0] for key in near}):
        true, false = sorted(near[kind, True]), sorted(near[kind, False])
        print(
            f"  {kind:28s} true p50/p90/max {_pct(true, 50)}/{_pct(true, 90)}/{_pct(true, 100)}"
            f"  unrelated min {false[:3]}"
        )
    for side in ("known", "query"):
        rate = pages_hashed[side] / hash_seconds[side]
        print(f"hashing speed ({side}, one core): {rate:.0f} pages/s over {pages_hashed[side]}")
    template_case(photo_dir, names, 4 if args.short else 8)


def template_case(photo_dir: Path, names: list[str], documents: int) -> None:
    """Unrelated documents of one page template (a dark photo in the same
    frame at the top, Arabic text below; hashsvc_testing.pdf_media.
    template_document), three pages each, no photo or text shared: how many
    (query, known) pairs match, with and without the template rule of
    pdf_match; and whether re-saved copies and page subsets still match."""
    dark = media.dark_photos(photo_dir, names[: 3 * documents])
    docs = [
        media.template_document(3000 + i, tuple(dark[3 * i : 3 * i + 3]), "ar", photo_dir)
        for i in range(len(dark) // 3)
    ]
    known = [hash_pdf(d, LIMITS, False) for d in docs]
    queries = [hash_pdf(d, LIMITS, True) for d in docs]
    copies = [
        hash_pdf(c, LIMITS, True)
        for d in docs
        for c in (media.resave(d), media.page_subset(d, [2, 0]))
    ]
    before = after = 0
    closest = 256
    for i, q in enumerate(queries):
        for k, kn in enumerate(known):
            if i == k:
                continue
            pairs = media.brute_force_pairs(q, kn, radius=80)
            old = pdf_match.match_pdf(pairs)
            before += old.matched
            after += pdf_match.match_pdf(pairs, q, kn).matched
            if old.best_distance is not None:
                closest = min(closest, old.best_distance)
    # copies match by their text anyway: count those still matched by page image
    by_page_image = sum(
        pdf_match.PAGE_IMAGE
        in pdf_match.match_pdf(
            media.brute_force_pairs(c, known[n // 2], radius=80), c, known[n // 2]
        ).matched_by
        for n, c in enumerate(copies)
    )
    pairs_count = len(docs) * (len(docs) - 1)
    print(
        f"template: {len(docs)} documents of one template, {pairs_count} unrelated pairs;"
        f" matched without the template rule {before} (closest evidence {closest} bits),"
        f" with it {after}; copies (re-saved, page subset) still matched by page image"
        f" {by_page_image}/{len(copies)}"
    )


def _record_margins(pairs, near, truth: bool, expected: dict | None) -> None:
    """The best distance per (query page or document, evidence kind) of one
    query/known pairing, ignoring the thresholds. For a query against its own
    source, only pairs of corresponding pages (where known) count."""
    best: dict[tuple, int] = {}
    for query, known, distance in pairs:
        kind = _kind(query, known)
        if kind is None:
            continue
        if truth and query.position is not None:
            if not expected or expected.get(int(query.position)) != known.position:
                continue
        key = (kind, query.position)
        best[key] = min(best.get(key, 999), distance)
    for (kind, _), distance in best.items():
        near[kind, truth].append(distance)


def _kind(query, known) -> str | None:
    if known.kind == "pdq":
        low = min(query.quality or 0, known.quality or 0) < pdf_match.MIN_PDQ_QUALITY
        if low:
            return None
        return f"pdq {known.variant.split(':')[0]}"
    if known.kind == "text_simhash" and query.variant == known.variant:
        return f"text_simhash {known.variant}"
    return None


def _pct(values: list[int], pct: int):
    if not values:
        return "-"
    return values[min(len(values) - 1, len(values) * pct // 100)]


if __name__ == "__main__":
    main()
