"""`hashsvc add`, `remove` and `entries list | show | release`: the entries of
a set (operator). `add` sends files (a directory walked by ingest.py), or
precomputed hashes."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator

import grpc

from hashsvc.client.client import Client, file_chunks, streamed
from hashsvc.client.commands.common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_UNREACHABLE,
    Subcommands,
    UsageError,
    client_command,
    connect,
    print_json,
)
from hashsvc.client.commands.items import (
    ItemError,
    each_item,
    read_input,
    report_item_error,
    unreachable,
)
from hashsvc.client.commands.values import parse_hash_arg, parse_labels
from hashsvc.client.commands.views import entry_json, media_type_name
from hashsvc.v1 import hashsvc_pb2 as pb

# How many files skipped as not media the summary names (--json lists all).
NOT_MEDIA_SHOWN = 5
# Entries a ListEntries page asks for.
PAGE_SIZE = 500

ADD_HELP = (
    "Add media files, directories or hashes to a set as known entries. A directory "
    "is walked recursively: entries are named by relative path; files the set "
    "already holds (same SHA-256) and files that are not media are skipped, so a "
    "rerun resumes; a changed file whose name is taken is added as NAME@SHA256 "
    "(first 12 hex digits), keeping the old entry. A FILE named on the command line "
    "that is not media is an error."
)
PARALLEL_HELP = (
    "uploads in flight (default: one per core of this machine, "
    f"{os.cpu_count() or 1}). The server hashes them on its worker processes (`workers`, "
    "default one per server core), each upload holding one of its `grpc_threads` (default "
    "16, shared with Match) until hashed: for a server on another machine give its worker "
    "count; on a server that also matches live uploads, stay below grpc_threads. Files "
    "over 4 MiB are streams: at most the server's max_streams_per_token and "
    "max_uploads_per_token (default 4) at once, the rest refused (RESOURCE_EXHAUSTED)"
)


def register(commands: Subcommands) -> None:
    p = client_command(commands, "add", cmd_add, ADD_HELP)
    p.add_argument("--set", required=True, dest="set_name")
    p.add_argument("--label", action="append", default=[], metavar="K=V")
    p.add_argument("--name", help="entry name (one file only; default: the file name)")
    p.add_argument(
        "--hash", action="append", default=[], metavar="TYPE:HEX", help="add a precomputed hash"
    )
    p.add_argument("files", nargs="*", metavar="FILE|DIR")
    p.add_argument("--parallel", type=int, metavar="N", help=PARALLEL_HELP)
    p.add_argument(
        "--quiet",
        action="store_true",
        help="no progress line (there is none either when stderr is not a terminal)",
    )

    p = client_command(
        commands, "remove", cmd_remove, "Remove entries from a set (stop matching at once)."
    )
    p.add_argument("--set", required=True, dest="set_name")
    p.add_argument("entries", nargs="+", metavar="ENTRY")


def register_entries(commands: Subcommands) -> None:
    entries = commands.add_parser("entries", help="list or show entries of a set")
    entries_commands = entries.add_subparsers(title="entries commands", metavar="COMMAND")
    p = client_command(entries_commands, "list", cmd_entries_list, "list the entries of a set")
    p.add_argument("--set", required=True, dest="set_name")
    p = client_command(
        entries_commands, "show", cmd_entries_show, "show one entry with its signals"
    )
    p.add_argument("--set", required=True, dest="set_name")
    p.add_argument("name")
    p = client_command(
        entries_commands,
        "release",
        cmd_entries_release,
        "acknowledge an entry's flood alert (its count starts again)",
    )
    p.add_argument("--set", required=True, dest="set_name")
    p.add_argument("name")


# ------------------------------------------------------------------ add, remove


def _send_entry(client: Client, req: pb.AddEntryRequest, path: str) -> pb.Entry:
    """AddEntry with the file's bytes, or AddEntryUpload for a large file."""
    if streamed(os.path.getsize(path)):
        return client.add_entry_upload(req, file_chunks(path))
    req.media.content = read_input(path)
    req.media.filename = os.path.basename(path)
    return client.curation.AddEntry(req, metadata=client.metadata)


def cmd_add(args: argparse.Namespace) -> int:
    from hashsvc.client import ingest

    if not args.files and not args.hash:
        raise UsageError("give files or directories to add, or --hash TYPE:HEX")
    if args.parallel is not None and args.parallel < 1:
        raise UsageError("--parallel must be at least 1")
    files = ingest.media_files(args.files)
    if args.name and len(files) + len(args.hash) != 1:
        raise UsageError("--name needs exactly one file or hash")
    labels = parse_labels(args.label)
    items: list = [*files, *args.hash]
    counts = {"added": 0, "skipped": 0, "not_media": 0, "renamed": 0, "failed": 0}
    not_media: list[str] = []
    unreachable_seen = False

    def add(item):
        req = pb.AddEntryRequest(set=args.set_name, labels=labels)
        if isinstance(item, ingest.MediaFile):
            req.name = args.name or item.entry_name
            if item.from_directory:
                return walk.add(item, req)
            # A file named on the command line was meant to be added: not media
            # is an error, told before a byte is sent; a directory walk skips it
            if not ingest.is_media(item.path):
                raise ItemError(
                    "INVALID_ARGUMENT", "not a media file (image, video, audio or PDF): not added"
                )
            return ingest.Added(_send_entry(client, req, item.path))
        req.signal.CopyFrom(parse_hash_arg(item))
        req.name = args.name or item.partition(":")[2].strip()
        return ingest.Added(client.curation.AddEntry(req, metadata=client.metadata))

    def report(item, result):
        nonlocal unreachable_seen
        label = item.path if isinstance(item, ingest.MediaFile) else item
        if isinstance(result, ingest.Skipped):
            if result.reason == ingest.NOT_MEDIA:
                counts["not_media"] += 1
                not_media.append(label)
            else:
                counts["skipped"] += 1
            if args.json:
                row = {"file": label, "entry": item.entry_name, "status": "skipped"}
                row["reason"] = result.reason
                if result.same_as:
                    row["same_as"] = result.same_as
                print_json(row)
        elif isinstance(result, ingest.Added):
            counts["added"] += 1
            entry = result.entry
            if result.name_in_use:
                counts["renamed"] += 1
                progress.clear()
                print(
                    f"hashsvc: {label}: the entry {result.name_in_use} in {args.set_name} holds"
                    f" other content (the file changed?); added as {entry.name}, the old"
                    " entry kept",
                    file=sys.stderr,
                )
            if args.json:
                row = {"file": label, "status": "added", **entry_json(entry)}
                if result.name_in_use:
                    row["name_in_use"] = result.name_in_use
                print_json(row)
            elif len(items) == 1 or args.quiet or not sys.stderr.isatty():
                print(f"added {entry.name} to {args.set_name}")
        elif isinstance(result, (OSError, grpc.RpcError, ItemError)):
            counts["failed"] += 1
            unreachable_seen = unreachable_seen or unreachable(result)
            progress.clear()
            report_item_error(label, result, args.json)
        else:
            raise result

    progress = ingest.Progress(len(items), enabled=sys.stderr.isatty() and not args.quiet)
    parallel = args.parallel or ingest.default_parallel()
    with connect(args) as client:
        walk = ingest.DirectoryIngest(
            client, args.set_name, lambda req, path: _send_entry(client, req, path)
        )
        ingest.run_parallel(items, add, report, parallel, progress)
    walked = any(f.from_directory for f in files) or not items
    if (len(items) > 1 or walked) and not args.json:
        _print_add_summary(counts, not_media)
    if unreachable_seen:
        return EXIT_UNREACHABLE
    return EXIT_FAILED if counts["failed"] else EXIT_OK


def _print_add_summary(counts: dict[str, int], not_media: list[str]) -> None:
    renamed = counts["renamed"]
    added = f"{counts['added']} added"
    if renamed:
        added += f" ({renamed} as NAME@SHA256: their name held other content)"
    print(
        f"{added}, {counts['skipped']} already in the set,"
        f" {counts['not_media']} not media (skipped), {counts['failed']} failed",
        file=sys.stderr,
    )
    if not_media:
        shown = ", ".join(sorted(not_media)[:NOT_MEDIA_SHOWN])
        more = len(not_media) - NOT_MEDIA_SHOWN
        tail = f" and {more} more (--json lists every file)" if more > 0 else ""
        print(f"not media: {shown}{tail}", file=sys.stderr)


def cmd_remove(args: argparse.Namespace) -> int:
    def remove(name):
        req = pb.RemoveEntryRequest(set=args.set_name, name=name)
        return client.curation.RemoveEntry(req, metadata=client.metadata)

    def show(name, _):
        if args.json:
            print_json({"set": args.set_name, "entry": name, "removed": True})
        else:
            print(f"removed {name} from {args.set_name}")

    with connect(args) as client:
        return each_item(args.entries, str, remove, show, args.json)


# ------------------------------------------------------------------ entries


def _entries(client: Client, set_name: str) -> Iterator[pb.Entry]:
    from hashsvc.client.cli_bulk import joined_entries

    return joined_entries(_entry_parts(client, set_name))


def _entry_parts(client: Client, set_name: str) -> Iterator[pb.Entry]:
    token = ""
    while True:
        resp = client.curation.ListEntries(
            pb.ListEntriesRequest(set=set_name, page_size=PAGE_SIZE, page_token=token),
            metadata=client.metadata,
        )
        yield from resp.entries
        token = resp.next_page_token
        if not token:
            return


def cmd_entries_list(args: argparse.Namespace) -> int:
    with connect(args) as client:
        for e in _entries(client, args.set_name):
            if args.json:
                print_json(entry_json(e))
            else:
                labels = ",".join(f"{k}={v}" for k, v in sorted(e.labels.items()))
                print(f"{e.name}\t{media_type_name(e.media_type)}\t{labels}")
    return EXIT_OK


def cmd_entries_show(args: argparse.Namespace) -> int:
    with connect(args) as client:
        e = client.curation.GetEntry(
            pb.GetEntryRequest(set=args.set_name, name=args.name), metadata=client.metadata
        )
    print(json.dumps(entry_json(e), indent=None if args.json else 2, ensure_ascii=False))
    return EXIT_OK


def cmd_entries_release(args: argparse.Namespace) -> int:
    with connect(args) as client:
        entry = client.curation.ReleaseEntry(
            pb.ReleaseEntryRequest(set=args.set_name, name=args.name), metadata=client.metadata
        )
    if args.json:
        print_json({"set": args.set_name, "entry": entry.name, "released": True})
    else:
        print(f"released {args.set_name}/{entry.name}: flood alert acknowledged")
    return EXIT_OK
