"""Webhook delivery, sustained: events/s to a local receiver and the delay
from an event's commit to its arrival (issue 20: 1,000 events/s, p99 < 1 s).

    .venv/bin/python bench/events.py             # 30 s at 1,000 events/s, SQLite and PostgreSQL
    .venv/bin/python bench/events.py --short     # 2 s (CI)
    .venv/bin/python bench/events.py --rate 2000 --store postgresql

Eight writer threads append events to the outbox at the target rate, one
transaction each (as a Match writes its history record and its event); the
server's deliverer (hashsvc/core/webhooks.py, its own thread) POSTs each one,
signed, to a real HTTP receiver on 127.0.0.1 (hashsvc_testing/webhook_receiver.py)
in the same process. Printed: events written and delivered per second, the
backlog left at the end, and the delay (commit to 2xx received) p50/p99/max.
Two cores shared by the writer, the deliverer, the receiver and the database.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from datetime import datetime

import psycopg

from hashsvc.core import events
from hashsvc.core.config import Config
from hashsvc.core.core import Core
from hashsvc.core.webhook_config import EventSettings, WebhookConfig
from hashsvc_testing.webhook_receiver import Receiver

PG_URL = os.environ.get("HASHSVC_TEST_PG", "postgresql://127.0.0.1:5432/test")
SECRET = b"bench-secret-0123456789abcdef"
WRITERS = 8


def run(db_url: str, rate: float, seconds: float, tmp: str) -> dict:
    receiver = Receiver(SECRET).start()
    secret = os.path.join(tmp, "secret")
    with open(secret, "wb") as f:
        f.write(SECRET)
    config = Config(
        db_url=db_url,
        workers=1,
        webhook=(WebhookConfig(url=receiver.url, secret_file=secret, timeout_seconds=5),),
        events=EventSettings(poll_seconds=0.05),
    )
    core = Core.open(config, hash_in_process=True)
    core.start()
    written = 0
    lock = threading.Lock()
    try:
        started = time.monotonic()
        interval = 1.0 / rate

        def write() -> None:
            # several writers, as Matches on several threads commit their
            # history records (PostgreSQL commits them together)
            nonlocal written
            while True:
                with lock:
                    n = written
                    written += 1
                due = started + n * interval
                if due - started >= seconds:
                    return
                pause = due - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
                core.store.append_events(
                    [events.new_event(events.FEED_UPDATED, {"n": n}, ("bench",))]
                )

        writers = [threading.Thread(target=write) for _ in range(WRITERS)]
        for t in writers:
            t.start()
        for t in writers:
            t.join()
        written = core.store.last_event_id()
        write_seconds = time.monotonic() - started
        # what is delivered within 10 s more (the backlog drains)
        deadline = time.monotonic() + 10
        while len(receiver.received) < written and time.monotonic() < deadline:
            time.sleep(0.05)
        delivered_in_window = sum(
            1
            for r in receiver.received
            if _created(r.body) - _created(receiver.received[0].body) <= write_seconds
        )
        delays = sorted(r.at - _created(r.body) for r in receiver.received)
        return {
            "written_per_s": written / write_seconds,
            "delivered": len(receiver.received),
            "written": written,
            "delivered_per_s": delivered_in_window / write_seconds,
            "p50": statistics.median(delays) if delays else float("nan"),
            "p99": delays[int(len(delays) * 0.99) - 1] if delays else float("nan"),
            "max": delays[-1] if delays else float("nan"),
            "bad_signatures": receiver.bad_signatures,
        }
    finally:
        core.close()
        receiver.stop()


def _created(body: dict) -> float:
    return datetime.fromisoformat(body["time"].replace("Z", "+00:00")).timestamp()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--short", action="store_true", help="2 s per store (CI)")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--rate", type=float, default=1000.0, help="events written per second")
    parser.add_argument("--store", choices=["sqlite", "postgresql", "both"], default="both")
    args = parser.parse_args()
    seconds = 2.0 if args.short else args.seconds
    stores = ["sqlite", "postgresql"] if args.store == "both" else [args.store]
    failed = False
    for kind in stores:
        with tempfile.TemporaryDirectory() as tmp:
            schema = f"bench_events_{uuid.uuid4().hex[:8]}"
            url = (
                f"sqlite:///{tmp}/events.db"
                if kind == "sqlite"
                else f"{PG_URL}?options=-csearch_path%3D{schema}"
            )
            try:
                r = run(url, args.rate, seconds, tmp)
            finally:
                if kind == "postgresql":
                    with psycopg.connect(PG_URL, autocommit=True) as conn:
                        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        print(
            f"{kind:10s} {seconds:.0f} s at {args.rate:.0f}/s: written {r['written_per_s']:.0f}/s,"
            f" delivered {r['delivered_per_s']:.0f}/s ({r['delivered']}/{r['written']} within"
            f" 10 s after), delay p50 {r['p50'] * 1000:.0f} ms, p99 {r['p99'] * 1000:.0f} ms,"
            f" max {r['max'] * 1000:.0f} ms, bad signatures {r['bad_signatures']}"
        )
        failed |= r["delivered"] < r["written"] or r["bad_signatures"] > 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
