"""`hashsvc sets create | list | show | disable | enable | update`: hash sets
(operator)."""

from __future__ import annotations

import argparse
import json

from hashsvc.client.commands.common import (
    EXIT_OK,
    Subcommands,
    client_command,
    connect,
    print_json,
)
from hashsvc.client.commands.values import parse_labels
from hashsvc.client.commands.views import set_json
from hashsvc.v1 import hashsvc_pb2 as pb


def register(commands: Subcommands) -> None:
    sets = commands.add_parser("sets", help="manage hash sets", description="Manage hash sets.")
    sets_commands = sets.add_subparsers(title="sets commands", metavar="COMMAND")
    p = client_command(sets_commands, "create", cmd_sets_create, "create a hash set")
    p.add_argument("name")
    p.add_argument("--description", default="")
    p.add_argument("--label", action="append", default=[], metavar="K=V")
    p.add_argument("--block-threshold", type=int, help="PDQ distance <= N blocks (default 31)")
    p.add_argument(
        "--review-threshold", type=int, help="PDQ distance <= N is reviewed (default 56)"
    )
    p.add_argument(
        "--allow-list",
        action="store_true",
        help="an allow list: uploads matching its entries are allowed, other matches suppressed",
    )
    p.add_argument(
        "--review-blocks", action="store_true", help="send this set's BLOCKs to review too"
    )
    p.add_argument(
        "--review-target",
        action="store_true",
        help="reviewers may add confirmed uploads to this set (never an allow list)",
    )
    p = client_command(
        sets_commands, "list", cmd_sets_list, "list hash sets with their entry counts"
    )
    p.add_argument("--all", action="store_true", help="include disabled sets (default: yes)")
    p = client_command(sets_commands, "show", cmd_sets_show, "show one hash set")
    p.add_argument("name")
    for name, enabled in (("disable", False), ("enable", True)):
        p = client_command(
            sets_commands, name, cmd_sets_enable, f"{name} a hash set (takes effect at once)"
        )
        p.add_argument("name")
        p.set_defaults(enabled=enabled)
    p = client_command(sets_commands, "update", cmd_sets_update, "change a hash set's options")
    p.add_argument("name")
    p.add_argument(
        "--review-target",
        action=argparse.BooleanOptionalAction,
        help="whether reviewers may add confirmed uploads to this set (never an allow list)",
    )


def _print_set(s: pb.HashSet, as_json: bool) -> None:
    if as_json:
        print_json(set_json(s))
        return
    labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
    state = "enabled" if s.enabled else "DISABLED"
    print(f"{s.name}\t{state}\t{s.entry_count} entries\t{labels}")


def cmd_sets_create(args: argparse.Namespace) -> int:
    thresholds = []
    if args.block_threshold is not None or args.review_threshold is not None:
        # imported here: the server's config module brings the decoders with
        # it, which no other client command needs
        from hashsvc.matching.policy import PdqPolicy

        defaults = PdqPolicy()
        block = defaults.block_distance if args.block_threshold is None else args.block_threshold
        review = (
            max(block, defaults.review_distance)
            if args.review_threshold is None
            else args.review_threshold
        )
        thresholds.append(
            pb.Threshold(signal_type="pdq", block_distance=block, review_distance=review)
        )
    req = pb.CreateSetRequest(
        name=args.name,
        description=args.description,
        labels=parse_labels(args.label),
        thresholds=thresholds,
        allow_list=args.allow_list,
        review_blocks=args.review_blocks,
        review_target=args.review_target,
    )
    with connect(args) as client:
        _print_set(client.curation.CreateSet(req, metadata=client.metadata), args.json)
    return EXIT_OK


def cmd_sets_list(args: argparse.Namespace) -> int:
    with connect(args) as client:
        resp = client.curation.ListSets(
            pb.ListSetsRequest(include_disabled=True), metadata=client.metadata
        )
    for s in resp.sets:
        _print_set(s, args.json)
    return EXIT_OK


def cmd_sets_show(args: argparse.Namespace) -> int:
    with connect(args) as client:
        s = client.curation.GetSet(pb.GetSetRequest(name=args.name), metadata=client.metadata)
    if args.json:
        print_json(set_json(s))
    else:
        print(json.dumps(set_json(s), indent=2, ensure_ascii=False))
    return EXIT_OK


def cmd_sets_enable(args: argparse.Namespace) -> int:
    with connect(args) as client:
        s = client.curation.UpdateSet(
            pb.UpdateSetRequest(name=args.name, enabled=args.enabled), metadata=client.metadata
        )
    _print_set(s, args.json)
    return EXIT_OK


def cmd_sets_update(args: argparse.Namespace) -> int:
    req = pb.UpdateSetRequest(name=args.name)
    if args.review_target is not None:
        req.review_target = args.review_target
    with connect(args) as client:
        s = client.curation.UpdateSet(req, metadata=client.metadata)
    _print_set(s, args.json)
    return EXIT_OK
