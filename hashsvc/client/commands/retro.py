"""`hashsvc retro run | list`: retro-hunts (operator; auditors may list)."""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC

from hashsvc.base.retro_json import OPEN_STATES, retro_run_json
from hashsvc.client.commands.common import (
    EXIT_FAILED,
    EXIT_OK,
    Subcommands,
    client_command,
    connect,
    print_json,
)
from hashsvc.client.commands.values import parse_seconds
from hashsvc.v1 import hashsvc_pb2 as pb

# How often `retro run` asks how its run is doing.
_POLL_SECONDS = 0.5
_OPEN = OPEN_STATES


def register(commands: Subcommands) -> None:
    retro = commands.add_parser(
        "retro",
        help="retro-hunts: find uploads let through before their hash was known",
        description="Retro-hunts: match the uploads in the history against entries added since.",
    )
    retro_commands = retro.add_subparsers(title="retro commands", metavar="COMMAND")
    p = client_command(
        retro_commands,
        "run",
        cmd_retro_run,
        "hunt now (operator): entries added within the window against the uploads within it",
        json_help="the run's summary as JSON on stdout",
    )
    p.add_argument("--set", dest="set_name", default="", help="one set (default: all enabled)")
    p.add_argument("--since", help="the window, e.g. 7d, 12h (default: the set's retro window)")
    p.add_argument(
        "--resume",
        type=int,
        default=0,
        metavar="RUN_ID",
        help="queue a failed run again: it goes on from its checkpoint, no hit reported twice",
    )
    client_command(retro_commands, "list", cmd_retro_list, "list retro-hunt runs, newest first")


def run_json(run: pb.RetroRunInfo) -> dict:
    # one writer of the shape, also GET /v1/retro/runs's (hashsvc/base/retro_json.py)
    return retro_run_json(
        run_id=run.id,
        trigger=run.trigger,
        requested_by=run.requested_by,
        set_name=run.set,
        entries=run.entries,
        since=run.since.ToDatetime(tzinfo=UTC),
        uploads_scanned=run.uploads_scanned,
        hits=run.hits,
        duration_seconds=run.duration_seconds,
        state=run.state,
        error=run.error,
        created_at=run.created_at.ToDatetime(tzinfo=UTC),
        finished_at=run.finished_at.ToDatetime(tzinfo=UTC) if run.HasField("finished_at") else None,
    )


def cmd_retro_run(args: argparse.Namespace) -> int:
    req = pb.StartRetroRunRequest(
        set=args.set_name, since_seconds=parse_seconds(args.since), resume_run_id=args.resume
    )
    with connect(args) as client:
        run = client.retro.StartRetroRun(req, metadata=client.metadata)
        # The run is the server's (it goes on if this command is stopped):
        # follow it, with progress on stderr.
        while run.state in _OPEN:
            print(
                f"retro run {run.id}: {run.state}, {run.uploads_scanned} uploads scanned,"
                f" {run.hits} hits",
                file=sys.stderr,
            )
            time.sleep(_POLL_SECONDS)
            run = client.retro.ListRetroRuns(
                pb.ListRetroRunsRequest(id=run.id), metadata=client.metadata
            ).runs[0]
    row = run_json(run)
    if args.json:
        print_json(row)
    else:
        print(_line(row))
    return EXIT_OK if run.state == "done" else EXIT_FAILED


def cmd_retro_list(args: argparse.Namespace) -> int:
    token = ""
    with connect(args) as client:
        while True:
            resp = client.retro.ListRetroRuns(
                pb.ListRetroRunsRequest(page_token=token), metadata=client.metadata
            )
            for run in resp.runs:
                row = run_json(run)
                print_json(row) if args.json else print(_line(row))
            token = resp.next_page_token
            if not token:
                return EXIT_OK


def _line(row: dict) -> str:
    error = f"\t{row['error']}" if row["error"] else ""
    return (
        f"{row['id']}\t{row['state']}\t{row['trigger']}\t{row['set'] or '-'}"
        f"\tentries={row['entries']}\twindow={row['window_seconds']}s"
        f"\tscanned={row['uploads_scanned']}"
        f"\thits={row['hits']}\t{row['duration_seconds']:.1f}s{error}"
    )
