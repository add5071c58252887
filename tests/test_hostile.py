"""Hundreds of hostile uploads through the core: every one ends in a result or
a typed error (which the gRPC layer turns into a clear status), never anything
else, and the core keeps working."""

from __future__ import annotations

import random

import pytest

from hashsvc.config import Config
from hashsvc.core import Core
from hashsvc.errors import HashsvcError, status_name
from tests import hostile
from tests.helpers import encode, photo


@pytest.fixture(scope="module")
def core(tmp_path_factory):
    c = Core.open(
        Config(db_url=f"sqlite:///{tmp_path_factory.mktemp('hostile')}/h.db"),
        hash_in_process=True,
    )
    c.start()
    c.curation.create_set("known")
    c.curation.add_entry("known", "photo", {}, "test", media=encode(photo(3)))
    yield c
    c.close()


def test_hostile_uploads_end_in_a_result_or_a_typed_error(core):
    from hashsvc import convert

    rng = random.Random(2026)
    base = hostile.seeds()
    outcomes: dict[str, int] = {}
    for _ in range(150):
        kind, request = hostile.hostile(rng, base, huge_bytes=51 * 1024 * 1024)
        try:
            core.match(convert.match_query(request), caller="fuzz")
            code = "OK"
        except HashsvcError as exc:
            code = status_name(exc)
            assert str(exc), kind  # every error says what was wrong
        assert code != "INTERNAL", kind
        outcomes[code] = outcomes.get(code, 0) + 1
    assert outcomes.get("INVALID_ARGUMENT", 0) > 25
    assert outcomes.get("RESOURCE_EXHAUSTED", 0) > 5
    # the core still matches after all that
    assert core.match(convert.match_query(_good()), caller="fuzz").decision == "block"
    assert core.store.count_history() >= 151


def _good():
    from hashsvc.v1 import hashsvc_pb2 as pb

    return pb.MatchRequest(media=pb.Media(content=encode(photo(3))))
