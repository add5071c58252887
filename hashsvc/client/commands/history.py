"""`hashsvc history` and `history verify`: the match history and its hash
chain (auditor)."""

from __future__ import annotations

import argparse
import json

from hashsvc.client.commands.common import (
    EXIT_FAILED,
    EXIT_OK,
    Subcommands,
    UsageError,
    client_command,
    connect,
    print_json,
)
from hashsvc.client.commands.values import parse_time, timestamp
from hashsvc.client.commands.views import DECISION_VALUES, history_json
from hashsvc.v1 import hashsvc_pb2 as pb

TIME_HELP = "ISO time or age like 30m, 12h, 7d"


def register(commands: Subcommands) -> None:
    p = client_command(
        commands,
        "history",
        cmd_history,
        "Query the match history (auditor); `history verify` checks its hash chain.",
        json_help="JSON lines (for export)",
    )
    p.add_argument(
        "action",
        nargs="?",
        choices=["verify", "prune"],
        help="verify: check that no record was edited, inserted or deleted (exit 1 if one was);"
        " prune (admin): drop the query signals of records before --before (the chain still"
        " verifies)",
    )
    p.add_argument(
        "--before",
        help=f"prune: records older than this ({TIME_HELP}); at least the longest retro window"
        " in force plus history_prune_margin_seconds ago (8d by default)",
    )
    p.add_argument("--since", help=TIME_HELP)
    p.add_argument("--until", help=TIME_HELP)
    p.add_argument("--decision", choices=["block", "review", "allow"])
    p.add_argument("--set", dest="set_name")
    p.add_argument("--caller")
    p.add_argument("--limit", type=int, default=0, help="at most N records (default: all)")


def cmd_history(args: argparse.Namespace) -> int:
    if args.action == "verify":
        return cmd_history_verify(args)
    if args.action == "prune":
        return cmd_history_prune(args)
    if args.before:
        raise UsageError("--before is for `history prune`")
    req = pb.QueryHistoryRequest(
        set=args.set_name or "",
        caller=args.caller or "",
        decision=DECISION_VALUES[args.decision] if args.decision else pb.DECISION_UNSPECIFIED,
    )
    if args.since:
        req.since.CopyFrom(timestamp(parse_time(args.since)))
    if args.until:
        req.until.CopyFrom(timestamp(parse_time(args.until)))
    printed = 0
    with connect(args) as client:
        for record in client.audit.ExportHistory(req, metadata=client.metadata):
            row = history_json(record)
            if args.json:
                print_json(row)
            else:
                print(history_line(record, row))
            printed += 1
            if args.limit and printed >= args.limit:
                break
    return EXIT_OK


def cmd_history_prune(args: argparse.Namespace) -> int:
    if not args.before:
        raise UsageError("history prune needs --before (e.g. 7d)")
    req = pb.PruneHistoryRequest(before=timestamp(parse_time(args.before)))
    with connect(args) as client:
        resp = client.retro.PruneHistory(req, metadata=client.metadata)
    if args.json:
        print_json({"records_pruned": resp.records_pruned})
    else:
        print(f"query signals pruned from {resp.records_pruned} record(s)")
    return EXIT_OK


def cmd_history_verify(args: argparse.Namespace) -> int:
    with connect(args) as client:
        resp = client.audit.VerifyHistory(pb.VerifyHistoryRequest(), metadata=client.metadata)
    row = {
        "intact": resp.intact,
        "records_checked": resp.records_checked,
        "unchained_records": resp.unchained_records,
        "checkpoints_checked": resp.checkpoints_checked,
        "head_hash": resp.head_hash,
        "problems": [{"record_id": p.record_id, "problem": p.problem} for p in resp.problems],
        "notes": list(resp.notes),
        "truncation_checked": resp.truncation_checked,
    }
    if args.json:
        print_json(row)
    else:
        state = "intact" if resp.intact else "TAMPERED"
        print(
            f"history {state}: {resp.records_checked} records checked"
            f" ({resp.unchained_records} unchained), {resp.checkpoints_checked} checkpoint(s)"
            f" checked, {len(resp.problems)} problem(s), head {resp.head_hash}"
        )
        for problem in resp.problems:
            print(f"  record {problem.record_id}: {problem.problem}")
        for note in resp.notes:
            print(f"  note: {note}")
    return EXIT_OK if resp.intact else EXIT_FAILED


def one_line(text: str) -> str:
    """Free text (a reviewer's note, an error) on one history line: a newline,
    tab or terminal escape in it would forge a record line or rewrite the
    auditor's screen, so it is shown escaped (\\n, \\x1b, \\u202e)."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


def history_line(record: pb.HistoryRecord, row: dict) -> str:
    """A record as one tab-separated line of `hashsvc history`."""
    outcome = row["decision"] or row["status"]
    if row["error_message"]:
        outcome += f": {one_line(row['error_message'])}"
    caller = one_line(row["caller"])
    if record.media_type == pb.MEDIA_TYPE_UNSPECIFIED:
        # an operator's or reviewer's action (no upload): the RPC and what it did
        detail = row["detail"] or {}
        what = " ".join(
            f"{k}={one_line(v if isinstance(v, str) else json.dumps(v, ensure_ascii=False))}"
            for k, v in detail.items()
        )
        return f"{row['time']}\t{caller}\t{one_line(row['rpc'])}\t{outcome}\t{what}"
    top = row["matches"][0] if row["matches"] else None
    what = f"{top['set']}/{top['entry']} d={top['distance']}" if top else ""
    return f"{row['time']}\t{caller}\t{row['media_type']}\t{outcome}\t{what}"
