"""`hashsvc stats`: counts of sets, entries, indexed signals and history."""

from __future__ import annotations

import argparse

from hashsvc.client.commands.common import (
    EXIT_OK,
    Subcommands,
    client_command,
    connect,
    print_json,
)
from hashsvc.v1 import hashsvc_pb2 as pb


def register(commands: Subcommands) -> None:
    client_command(commands, "stats", cmd_stats, "Counts of sets, entries, signals and history.")


def cmd_stats(args: argparse.Namespace) -> int:
    with connect(args) as client:
        s = client.curation.GetStats(pb.GetStatsRequest(), metadata=client.metadata)
    row = {
        "sets": s.sets,
        "enabled_sets": s.enabled_sets,
        "entries": s.entries,
        "indexed_signals": {c.signal_type: c.count for c in s.indexed_signals},
        "history_records": s.history_records,
        "index_version": s.index_version,
    }
    if args.json:
        print_json(row)
    else:
        indexed = ", ".join(f"{kind} {n:,}" for kind, n in sorted(row["indexed_signals"].items()))
        print(f"sets: {s.sets:,} ({s.enabled_sets:,} enabled)")
        print(f"entries: {s.entries:,}")
        print(f"indexed signals: {sum(row['indexed_signals'].values()):,} ({indexed or 'none'})")
        print(f"history records: {s.history_records:,}")
        print(f"index version: {s.index_version}")
    return EXIT_OK
