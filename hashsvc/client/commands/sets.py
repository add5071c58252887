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
from hashsvc.client.commands.values import parse_labels, parse_seconds
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
    _local_threshold_flags(p)
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
    p.add_argument(
        "--retro-window",
        help="how far back a retro-hunt looks when entries are added (7d, 12h; 0: off;"
        " default: the server's retro_window)",
    )
    _local_threshold_flags(p)


# flag -> Threshold field of the local_features type
_LOCAL_FLAGS = {
    "local_block_inliers": "block_inliers",
    "local_review_inliers": "review_inliers",
    "local_block_coverage": "block_coverage",
    "local_review_coverage": "review_coverage",
}


def _local_threshold_flags(p: argparse.ArgumentParser) -> None:
    what = "a verified local-feature match (crop, tilt, collage)"
    p.add_argument(
        "--local-block-inliers", type=int, metavar="N", help=f"{what} with >= N inliers blocks"
    )
    p.add_argument(
        "--local-review-inliers",
        type=int,
        metavar="N",
        help=f"{what} with >= N inliers is reviewed",
    )
    p.add_argument(
        "--local-block-coverage",
        type=float,
        metavar="F",
        help=f"{what} blocks only when its inliers cover >= F (0..1) of the known picture",
    )
    p.add_argument(
        "--local-review-coverage",
        type=float,
        metavar="F",
        help=f"{what} is reviewed only when its inliers cover >= F (0..1) of the known picture",
    )


def _local_threshold(args: argparse.Namespace, current: pb.Threshold | None) -> pb.Threshold | None:
    """The local_features threshold the flags ask for, the rest taken from
    `current` (the set's own) or the defaults; None when no flag is given."""
    given = {f: getattr(args, flag) for flag, f in _LOCAL_FLAGS.items()}
    if all(v is None for v in given.values()):
        return None
    if current is None:
        # imported here: the policy brings the matching code, which no other
        # client command needs
        from hashsvc.matching.policy import DEFAULT_THRESHOLDS

        defaults = DEFAULT_THRESHOLDS["local_features"]
        current = pb.Threshold(
            block_inliers=defaults.block_inliers,
            review_inliers=defaults.review_inliers,
            block_coverage=defaults.block_coverage,
            review_coverage=defaults.review_coverage,
        )
    threshold = pb.Threshold(signal_type="local_features")
    for f, value in given.items():
        setattr(threshold, f, getattr(current, f) if value is None else value)
    return threshold


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
    local = _local_threshold(args, None)
    if local is not None:
        thresholds.append(local)
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
    if args.retro_window == "default":
        req.retro_window_default = True
    elif args.retro_window is not None:
        req.retro_window_seconds = (
            0 if args.retro_window == "0" else parse_seconds(args.retro_window)
        )
    with connect(args) as client:
        if any(getattr(args, flag) is not None for flag in _LOCAL_FLAGS):
            current = client.curation.GetSet(
                pb.GetSetRequest(name=args.name), metadata=client.metadata
            )
            own = next((t for t in current.thresholds if t.signal_type == "local_features"), None)
            req.thresholds.append(_local_threshold(args, own))
        s = client.curation.UpdateSet(req, metadata=client.metadata)
    _print_set(s, args.json)
    return EXIT_OK
