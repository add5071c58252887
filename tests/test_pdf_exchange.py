"""A known PDF exported and loaded on another server stays matchable there,
on both stores: its rendered pages, its embedded pictures (PDQ, local
features, the JPEG stream's SHA-256) and its text travel. A scanned document
has no text layer: before, its export held no row at all."""

from __future__ import annotations

import json

import pytest

from hashsvc.base.media_kinds import EXCHANGED_PDF_PICTURES
from hashsvc.client import cli
from hashsvc.v1 import hashsvc_pb2 as pb
from hashsvc_testing import pdf_media as media
from tests.helpers import match_request


@pytest.fixture(scope="module")
def typeset_pdf() -> bytes:
    pub = media.publication(21, "ar", paragraphs=18, photos=("image1.jpg",))
    return media.typeset(pub)


@pytest.fixture(scope="module")
def scanned_pdf(typeset_pdf) -> bytes:
    return media.scanned(typeset_pdf)


def _cli(server, role: str, *argv) -> int:
    import os

    os.environ["HASHSVC_SERVER"] = server.address
    os.environ["HASHSVC_TOKEN"] = server.tokens[role]
    return cli.main([str(a) for a in argv])


def test_a_scanned_pdf_exported_and_loaded_still_matches(
    store_url, make_harness, tmp_path, typeset_pdf, scanned_pdf, capsys, monkeypatch
):
    monkeypatch.delenv("HASHSVC_SERVER", raising=False)
    source = make_harness(store_url)
    known = tmp_path / "statement.pdf"
    known.write_bytes(scanned_pdf)
    assert _cli(source, "operator", "sets", "create", "docs") == 0
    assert _cli(source, "operator", "add", "--set", "docs", known) == 0
    capsys.readouterr()
    assert _cli(source, "operator", "export", "--set", "docs", "--format", "jsonl") == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    variants = {(r["signal_type"], r.get("variant", "original")) for r in rows}
    assert ("pdq", "page:original") in variants  # each page as rendered
    assert ("pdq", "image:original") in variants  # the scanned page as a picture
    assert ("local_features", "image:original") in variants
    # the views each side derives itself (crops, corners, small copies) stay inside
    assert {v for _, v in variants} <= {"original", "page", "document", *EXCHANGED_PDF_PICTURES}
    pages = {r["position"] for r in rows if r.get("variant") == "page:original"}
    assert len(pages) >= 2
    export = tmp_path / "docs.jsonl"
    export.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    # HMA's format leaves out what only hashsvc reads and the rendered pages
    assert _cli(source, "operator", "export", "--set", "docs", "--format", "hma") == 0
    hma = capsys.readouterr().out
    assert "local_features" not in hma and hma.count("\n") < len(rows)
    make_harness.stop(source)

    partner = make_harness(f"sqlite:///{tmp_path}/partner.db")
    assert _cli(partner, "operator", "sets", "create", "copy") == 0
    assert _cli(partner, "operator", "load", "--set", "copy", "--quiet", export) == 0
    capsys.readouterr()
    assert _cli(partner, "operator", "entries", "list", "--set", "copy", "--json") == 0
    (entry,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert entry["media_type"] == "pdf"
    stub, md = partner.stubs("matcher")
    # the same print scanned again: no exact hash in common, found by its pages
    rescan = media.scanned(typeset_pdf, dpi=110, skew=-0.4, quality=70)
    resp = stub.matcher.Match(match_request(rescan), metadata=md)
    assert resp.decision == pb.BLOCK, resp
    best = resp.matches[0]
    assert (best.set, best.entry, best.unit) == ("copy", "statement.pdf", "pages")
    # the share of the known document's pages that matched (was always 0)
    assert 0.5 <= best.known_share <= 1.0, best
