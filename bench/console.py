"""The web console's page render times with a big store: 1M history records
and 100k open review items, written straight into SQLite, then each page
requested over HTTP (uvicorn on 127.0.0.1, as tests run it) and its p50 printed.
Target: every page under 200 ms.

    .venv/bin/python bench/console.py --short    # 100k records, 10k items (CI, < 60 s)
    nice .venv/bin/python bench/console.py       # 1M records, 100k items

The rows are spread over the last 30 days, with three sets, matches in most
records and labels on every item, so the filters have something to find.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sqlite3
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta

import httpx

from hashdb.times import to_micros
from hashsvc.core.config import Config
from hashsvc.core.core import Core
from hashsvc_testing.console_server import ConsoleServer

SETS = ("isis-amaq", "aq-central", "partner-feed")
CALLERS = ("upload-pipeline", "chat-attachments", "profile-photos", "ads")
DECISIONS = ("allow", "allow", "allow", "review", "block")
MEDIA = ("image", "image", "video", "audio", "pdf")
CHUNK = 50_000
DAYS = 30


def fill(db_path: str, history: int, queue: int, seed: int = 1) -> None:
    """History records and review items, as the store writes them (unchained:
    the chain is not what the pages read)."""
    rng = random.Random(seed)
    now = datetime.now(UTC)
    start = to_micros(now - timedelta(days=DAYS))
    span = to_micros(now) - start
    conn = sqlite3.connect(db_path)
    set_ids = dict(conn.execute("SELECT name, id FROM hash_sets").fetchall())
    matches_of = {}
    for name in SETS:
        matches_of[name] = [
            {
                "set": name,
                "set_id": set_ids[name],
                "entry": f"{name}-{n:05d}.jpg",
                "entry_id": n,
                "signal_type": "pdq",
                "distance": 20,
                "labels": {"group": name.split("-")[0], "source": "analyst-7"},
                "decision": "block",
                "query_variant": "original",
                "known_variant": "original",
                "reason": "",
            }
            for n in range(50)
        ]
    signals = json.dumps([{"signal_type": "pdq", "value": "ab" * 32, "quality": 90}])
    for first in range(0, history, CHUNK):
        rows, set_rows = [], []
        for k in range(first, min(history, first + CHUNK)):
            decision = rng.choice(DECISIONS)
            name = rng.choice(SETS)
            matches = [] if decision == "allow" else [rng.choice(matches_of[name])]
            rows.append(
                (
                    k + 1,
                    f"req-{k:09d}",
                    start + span * k // history,
                    rng.choice(CALLERS),
                    "Match",
                    rng.choice(MEDIA),
                    decision,
                    "OK",
                    "",
                    f"https://uploads.example/{k}",
                    50_000,
                    signals,
                    json.dumps(matches),
                )
            )
            if matches:
                set_rows.append((k + 1, set_ids[name]))
        conn.executemany(
            "INSERT INTO match_history (id, request_id, time, caller, rpc, media_type, decision,"
            " status, error_message, client_ref, media_bytes, query_signals, matches)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
        conn.executemany(
            "INSERT INTO match_history_sets (history_id, set_id) VALUES (?, ?)", set_rows
        )
        conn.commit()
    items = []
    for k in range(queue):
        name = rng.choice(SETS)
        match = rng.choice(matches_of[name])
        labels = sorted(f"{a}={b}" for a, b in match["labels"].items())
        items.append(
            (
                f"item-{k:09d}",
                start + span * k // queue,
                rng.choice(CALLERS),
                rng.choice(MEDIA),
                f"https://uploads.example/q{k}",
                signals,
                json.dumps([{**match, "decision": "review"}]),
                f",{set_ids[name]},",
                "\n" + "\n".join(labels) + "\n",
                "open",
            )
        )
    conn.executemany(
        "INSERT INTO review_items (request_id, created_at, caller, media_type, client_ref,"
        " query_signals, matches, set_ids, labels, status) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        items,
    )
    conn.commit()
    conn.execute("ANALYZE")
    conn.close()


def signed_in(server: ConsoleServer, role: str) -> httpx.Client:
    client = httpx.Client(base_url=f"http://127.0.0.1:{server.port}", timeout=60)
    login = client.get("/ui/login")
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', login.text).group(1)
    answer = client.post(
        "/ui/login", data={"csrf_token": csrf, "token": server.token(role, f"bench-{role}")}
    )
    assert answer.status_code == 303, answer.text[:300]
    return client


def p50_ms(client: httpx.Client, path: str, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        answer = client.get(path)
        times.append((time.perf_counter() - started) * 1000)
        if answer.status_code != 200:
            raise SystemExit(f"{path}: HTTP {answer.status_code}: {answer.text[:300]}")
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--short", action="store_true", help="100k records, 10k items (CI)")
    parser.add_argument("--history", type=int, default=1_000_000)
    parser.add_argument("--queue", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    if args.short:
        args.history, args.queue, args.repeats = 100_000, 10_000, 5
    with tempfile.TemporaryDirectory() as directory:
        db = f"{directory}/hashsvc.db"
        core = Core.open(Config(db_url=f"sqlite:///{db}"), hash_in_process=True)
        try:
            for name in SETS:
                core.curation.create_set(name, labels={"group": name.split("-")[0]})
            started = time.perf_counter()
            fill(db, args.history, args.queue)
            print(
                f"filled {args.history:,} history records and {args.queue:,} review items"
                f" in {time.perf_counter() - started:.1f} s"
            )
            core.start()
            with ConsoleServer(core) as server:
                admin = signed_in(server, "admin")
                middle = args.history // 2
                since, two, three = (
                    (datetime.now(UTC) - timedelta(days=d)).strftime("%Y-%m-%dT%H:%M")
                    for d in (1, 2, 5)
                )
                pages = {
                    "dashboard": "/ui/",
                    "queue": "/ui/review",
                    "queue page 100": f"/ui/review?after={args.queue // 2}",
                    "queue by set": "/ui/review?set=partner-feed",
                    "queue by label": "/ui/review?label=group%3Daq",
                    "queue by media+caller": "/ui/review?media=pdf&caller=ads",
                    "item": f"/ui/review/{args.queue // 2}",
                    "history": "/ui/history",
                    "history deep page": f"/ui/history?after={middle}",
                    "history by decision": "/ui/history?decision=block",
                    "history by set": "/ui/history?set=aq-central",
                    "history by caller": "/ui/history?caller=ads",
                    "history last day": f"/ui/history?since={since}",
                    "history 3 days, block": f"/ui/history?since={three}&until={two}"
                    "&decision=block",
                    "history by request id": f"/ui/history?request_id=req-{middle:09d}",
                    "record": f"/ui/history/{middle}",
                    "sets": "/ui/sets",
                    "set": "/ui/sets/isis-amaq",
                }
                worst = 0.0
                for title, path in pages.items():
                    ms = p50_ms(admin, path, args.repeats)
                    worst = max(worst, ms)
                    print(f"{title:24} p50 {ms:7.1f} ms   {path}")
                print(f"slowest page p50 {worst:.1f} ms (target < 200 ms)")
        finally:
            core.close()


if __name__ == "__main__":
    main()
