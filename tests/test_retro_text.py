"""A PDF's text in retro-hunts, through the running service on both stores:
an upload let through whose only likeness to a later-added publication is
its text (the same words typeset anew: other page breaks, other page
images) is found by the hunt the new entry triggers; other publications in
the same language and vocabulary, let through beside it, are not."""

from __future__ import annotations

import pytest

from hashsvc.v1 import hashsvc_pb2 as pb
from hashsvc_testing import pdf_media
from tests.test_retro import _retro_items, _upload_add, _upload_match, _wait_runs


@pytest.fixture
def harness_config():
    return {"retro_poll_seconds": 0.2}


def test_a_pdf_let_through_is_found_by_its_text(harness, operator, matcher, reviewer):
    ops, op_md = operator
    m, m_md = matcher
    rev, rev_md = reviewer
    ops.curation.CreateSet(pb.CreateSetRequest(name="isis"), metadata=op_md)
    statement = pdf_media.publication(41, "en", paragraphs=10)  # text only: no photos
    copy = _upload_match(m, m_md, pdf_media.retypeset(statement), "retypeset")
    assert copy.decision == pb.ALLOW
    others = [
        _upload_match(
            m, m_md, pdf_media.typeset(pdf_media.publication(seed, "en")), f"other-{seed}"
        )
        for seed in range(50, 56)
    ]
    assert all(o.decision == pb.ALLOW for o in others)

    _upload_add(ops, op_md, "isis", "statement", pdf_media.typeset(statement))
    (run,) = _wait_runs(ops, op_md, seconds=300)
    assert (run.state, run.hits, run.uploads_scanned) == ("done", 1, 7)
    (item,) = _retro_items(rev, rev_md)  # the copy, none of the others
    assert (item.request_id, item.client_ref) == (copy.request_id, "retypeset")
    (found,) = item.matches
    assert found.entry == "statement" and found.decision in (pb.BLOCK, pb.REVIEW)
    assert found.unit == "pages" and found.segments
    assert "document_text" in found.reason or "page_text" in found.reason, found.reason
