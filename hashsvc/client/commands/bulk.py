"""`hashsvc load` and `hashsvc export`: hash lists in and out of a set (the
reading, batching and writing are in client/cli_bulk.py)."""

from __future__ import annotations

import argparse
import os
import sys

from hashsvc.client.commands.common import (
    EXIT_FAILED,
    EXIT_OK,
    Subcommands,
    UsageError,
    client_command,
    connect,
)
from hashsvc.client.commands.values import parse_time

FORMATS = ["csv", "tsv", "jsonl", "hma", "tcap", "vpdq"]


def register(commands: Subcommands) -> None:
    p = client_command(
        commands,
        "export",
        cmd_export,
        "Write a set's exchangeable hashes (PDQ as other platforms compute it, MD5, "
        "SHA-256, video frame PDQs, videohash, chromaprint, text signals) with entry names "
        "and labels to stdout (vpdq: one file per video in --output DIR).",
        json_help=None,
    )
    p.add_argument("--set", required=True, dest="set_name")
    p.add_argument("--format", choices=FORMATS, default="csv")
    p.add_argument(
        "--since",
        help="only what changed since then (ISO time or age like 24h), removed entries as"
        " rows with deleted=true",
    )
    p.add_argument("--output", metavar="DIR", help="directory for --format vpdq")

    p = client_command(
        commands,
        "load",
        cmd_load,
        "Load precomputed hashes (hash lists from partners) into a set: CSV/TSV with a "
        "header, JSON lines, python-threatexchange/HMA, TCAP-style rows or vPDQ files. "
        "Loading again changes nothing; rerun an interrupted load to complete it.",
        json_help="print the summary as JSON",
    )
    p.add_argument("--set", required=True, dest="set_name")
    p.add_argument(
        "--format",
        choices=["auto", *FORMATS],
        default="auto",
        help="default: from the file name and first line",
    )
    p.add_argument("--strict", action="store_true", help="load nothing if any row is bad")
    p.add_argument("files", nargs="+", metavar="FILE", help="files, or - for stdin")
    p.add_argument("--quiet", action="store_true", help="no progress line")


def cmd_export(args: argparse.Namespace) -> int:
    from hashsvc.client import cli_bulk

    if args.format == "vpdq" and not args.output:
        raise UsageError("--format vpdq writes one file per video: give --output DIR")
    since = parse_time(args.since) if args.since else None
    with connect(args) as client:
        cli_bulk.export(client, args.set_name, args.format, since, args.output)
    return EXIT_OK


def cmd_load(args: argparse.Namespace) -> int:
    from hashsvc.client import cli_bulk

    for path in args.files:
        if path != "-" and not os.path.isfile(path):
            raise UsageError(f"no such file: {path}")
    progress = cli_bulk.LoadProgress(
        cli_bulk.total_bytes(args.files), enabled=sys.stderr.isatty() and not args.quiet
    )
    with connect(args) as client:
        summary = cli_bulk.load(
            client, args.set_name, args.files, args.format, args.strict, progress
        )
    cli_bulk.print_summary(summary, args.json, args.strict)
    return EXIT_FAILED if summary["rejected"] else EXIT_OK
