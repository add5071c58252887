"""The console's limits on callers: failed sign-ins per client address (a
caller without a token cannot go on guessing), and hash-list loads per token
under a global cap (one operator cannot take every slot)."""

from __future__ import annotations

import io
import threading
import time

import httpx
import pytest

from hashsvc.base.errors import TooLarge
from hashsvc.core import sign_in_limits
from hashsvc.core.config import Config, ConsoleSettings
from hashsvc.core.core import Core
from hashsvc.core.sign_in_limits import SignInLimits
from hashsvc.http.console.load_jobs import LoadJobs
from hashsvc_testing.console_server import ConsoleServer, sign_in

WAIT_SECONDS = 20.0


@pytest.fixture
def core(tmp_path):
    core = Core.open(Config(db_url=f"sqlite:///{tmp_path}/hashsvc.db"), hash_in_process=True)
    try:
        core.start()
        yield core
    finally:
        core.close()


def test_failed_sign_ins_are_limited_per_client_address(core):
    limits = ConsoleSettings(sign_in_failures_per_minute=3)
    with ConsoleServer(core, limits=limits) as server:
        token = server.token("reviewer", "reviewer-1")
        with server.client() as guesser:
            for k in range(3):
                assert sign_in(guesser, f"hs_guess{k}").status_code == 401
            # past the limit even the right token is refused: a guesser learns nothing more
            answer = sign_in(guesser, token)
            assert answer.status_code == 429
            assert "too many failed sign-ins from your address" in answer.text
            assert 1 <= int(answer.headers["retry-after"]) <= 60
            assert "hashsvc_console" not in guesser.cookies
        # another address is not held back by this one
        other = httpx.HTTPTransport(local_address="127.0.0.2")
        with server.client(transport=other) as elsewhere:
            assert sign_in(elsewhere, token).status_code == 303
            assert elsewhere.get("/ui/review").status_code == 200


def test_the_limit_is_a_sliding_minute_and_remembers_a_bounded_number_of_addresses(
    monkeypatch,
):
    now = [1000.0]
    monkeypatch.setattr(sign_in_limits.time, "monotonic", lambda: now[0])
    limits = SignInLimits(failures_per_minute=2, max_addresses=2)
    limits.failed("10.0.0.1")
    now[0] += 30
    limits.failed("10.0.0.1")
    assert limits.retry_after("10.0.0.1") == 30  # until the first failure is a minute old
    assert limits.retry_after("10.0.0.9") == 0
    now[0] += 30
    assert limits.retry_after("10.0.0.1") == 0  # one failure left in the window
    limits.failed("10.0.0.1")
    assert limits.retry_after("10.0.0.1") == 30
    # a third address pushes out the longest-quiet one
    limits.failed("10.0.0.2")
    limits.failed("10.0.0.3")
    assert limits.retry_after("10.0.0.1") == 0
    with pytest.raises(ValueError, match="positive"):
        ConsoleSettings(sign_in_failures_per_minute=0)


class _HeldUpload(io.RawIOBase):
    """A hash list whose copy to the spool waits for `release`: its load
    stays running (holds its slot) until then."""

    def __init__(self, release: threading.Event) -> None:
        self.release = release
        self.body = io.BytesIO(b"signal_type,value\n")

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if not self.release.wait(WAIT_SECONDS):
            raise TimeoutError("the test did not release the upload")
        return self.body.read(size)


def test_loads_are_limited_per_token_under_a_global_cap(core):
    core.curation.create_set("lists")
    jobs = LoadJobs(core, max_jobs=3, max_jobs_per_token=1, shown_rejected=10)
    release = threading.Event()
    started, threads = [], []

    def start(token_id: int) -> None:
        started.append(
            jobs.start("lists", _HeldUpload(release), "l.csv", "auto", False, "op", token_id)
        )

    def start_held(token_id: int) -> None:
        thread = threading.Thread(target=start, args=(token_id,))
        thread.start()
        threads.append(thread)
        deadline = time.monotonic() + WAIT_SECONDS
        while sum(1 for j in jobs._jobs.values() if j.owner_token_id == token_id) == 0:
            assert time.monotonic() < deadline, "the load did not start"
            time.sleep(0.01)

    try:
        start_held(1)
        with pytest.raises(TooLarge, match=r"1 loads running \(at most 1 a token\)"):
            jobs.start("lists", io.BytesIO(b""), "l.csv", "auto", False, "op", 1)
        start_held(2)
        start_held(3)
        with pytest.raises(TooLarge, match="3 loads are running"):
            jobs.start("lists", io.BytesIO(b""), "l.csv", "auto", False, "op", 4)
    finally:
        release.set()
        for thread in threads:
            thread.join(WAIT_SECONDS)
    assert len(started) == 3
    deadline = time.monotonic() + WAIT_SECONDS
    while not all(job.done for job in started):
        assert time.monotonic() < deadline, "the loads did not finish"
        time.sleep(0.02)
    assert all(not job.error for job in started), [job.error for job in started]
    # finished loads free their token's slot, and the oldest is forgotten for a new one
    job = jobs.start("lists", io.BytesIO(b"pdq,0\n"), "l.csv", "auto", False, "op", 4)
    assert jobs.get(job.id, 4) is job and jobs.get(started[0].id, 1) is None
    assert jobs.get(job.id, 1) is None  # shown only to the token that started it
    deadline = time.monotonic() + WAIT_SECONDS
    while not job.done:
        assert time.monotonic() < deadline, "the load did not finish"
        time.sleep(0.02)
