"""`hashsvc match`: files, stdin or hashes against the sets (matcher). Its
--json lines are a public contract (views.match_json)."""

from __future__ import annotations

import argparse
import os
import sys

from hashsvc.client.client import bytes_chunks, file_chunks, streamed
from hashsvc.client.commands.common import (
    Subcommands,
    UsageError,
    client_command,
    connect,
    print_json,
)
from hashsvc.client.commands.items import each_item, read_input
from hashsvc.client.commands.values import parse_hash_arg
from hashsvc.client.commands.views import DECISION_NAMES, match_json
from hashsvc.v1 import hashsvc_pb2 as pb


def register(commands: Subcommands) -> None:
    p = client_command(
        commands,
        "match",
        cmd_match,
        "Match media files (or - for stdin, or hashes).",
        json_help="one JSON object per line per file",
    )
    p.add_argument("files", nargs="*", metavar="FILE")
    p.add_argument("--hash", action="append", default=[], metavar="TYPE:HEX")
    p.add_argument("--set", action="append", default=[], dest="sets", help="only these sets")
    p.add_argument("--client-ref", default="", help="your reference to the upload")
    p.add_argument(
        "--full-signals",
        action="store_true",
        help="answer a picture's local features whole (~36 KB), not as their size and SHA-256",
    )


def cmd_match(args: argparse.Namespace) -> int:
    if not args.files and not args.hash:
        raise UsageError("give files to match (- for stdin), or --hash TYPE:HEX")
    items = [(path, None) for path in args.files] + [(None, h) for h in args.hash]

    def match(item):
        path, hash_text = item
        req = pb.MatchRequest(
            client_ref=args.client_ref, sets=args.sets, full_signals=args.full_signals
        )
        if path == "-":
            data = sys.stdin.buffer.read()
            if streamed(len(data)):
                return client.match_upload(req, bytes_chunks(data))
            req.media.content = data
            req.media.filename = "stdin"
        elif path is not None:
            if streamed(os.path.getsize(path)):
                return client.match_upload(req, file_chunks(path))
            req.media.content = read_input(path)
            req.media.filename = os.path.basename(path)
        else:
            req.signal.CopyFrom(parse_hash_arg(hash_text))
        return client.matcher.Match(req, metadata=client.metadata)

    def show(label, resp):
        if args.json:
            print_json(match_json(label, resp))
        else:
            _print_match_text(label, resp)

    with connect(args) as client:
        return each_item(
            items, lambda item: item[0] if item[0] is not None else item[1], match, show, args.json
        )


def _print_match_text(label: str, resp: pb.MatchResponse) -> None:
    print(f"{label}: {DECISION_NAMES.get(resp.decision, '?').upper()}")
    for m in resp.matches:
        labels = ",".join(f"{k}={v}" for k, v in sorted(m.labels.items()))
        print(
            f"  {DECISION_NAMES.get(m.decision)}\t{m.set}/{m.entry}\t{m.signal_type}"
            f" distance {m.distance}\t{labels}"
        )
        for seg in m.segments:
            unit = "p." if m.unit == "pages" else "s"
            print(
                f"    query {seg.query_start:g}-{seg.query_end:g}{unit}"
                f" = known {seg.known_start:g}-{seg.known_end:g}{unit}"
            )
