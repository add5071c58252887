"""`hashsvc review list | claim | resolve`: the review queue (reviewer)."""

from __future__ import annotations

import argparse

from hashsvc.client.commands.common import (
    EXIT_OK,
    Subcommands,
    client_command,
    connect,
    print_json,
)
from hashsvc.client.commands.values import iso
from hashsvc.client.commands.views import review_item_json
from hashsvc.v1 import hashsvc_pb2 as pb

MEDIA_CHOICES = ["", "image", "video", "audio", "pdf", "hash"]
STATUS_CHOICES = ["open", "confirmed", "false_positive"]
# Items a ListReviewItems page asks for.
PAGE_SIZE = 500


def register(commands: Subcommands) -> None:
    review = commands.add_parser(
        "review",
        help="the review queue (reviewer role)",
        description="Matches that need a person: list, claim, resolve.",
    )
    review_commands = review.add_subparsers(title="review commands", metavar="COMMAND")
    p = client_command(review_commands, "list", cmd_review_list, "open items, oldest first")
    _add_filter_flags(p)
    p.add_argument("--limit", type=int, default=0, help="at most N items (default: all)")
    p = client_command(
        review_commands,
        "claim",
        cmd_review_claim,
        "claim an item (default: the oldest free one matching the filters)",
    )
    p.add_argument("id", nargs="?", type=int, default=0)
    _add_filter_flags(p)
    p = client_command(
        review_commands, "resolve", cmd_review_resolve, "resolve an item you have claimed"
    )
    p.add_argument("id", type=int)
    verdict = p.add_mutually_exclusive_group(required=True)
    verdict.add_argument("--confirmed", action="store_const", const="confirmed", dest="resolution")
    verdict.add_argument(
        "--false-positive", action="store_const", const="false_positive", dest="resolution"
    )
    p.add_argument("--note", default="")
    p.add_argument("--add-to-set", default="", help="confirmed: add the upload's hashes to SET")
    p.add_argument("--entry-name", default="", help="name of that entry (default review-<id>)")


def _add_filter_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", dest="set_name", default="", help="items with a match in this set")
    p.add_argument("--label", default="", metavar="K=V", help="items with a match labelled K=V")
    p.add_argument("--media", default="", choices=MEDIA_CHOICES)
    p.add_argument("--caller", default="", help="items from this caller")
    p.add_argument("--status", default="open", choices=STATUS_CHOICES)


def _review_filter(args: argparse.Namespace) -> pb.ReviewFilter:
    return pb.ReviewFilter(
        set=args.set_name,
        label=args.label,
        media_type=(
            pb.MediaType.Value(args.media.upper()) if args.media else pb.MEDIA_TYPE_UNSPECIFIED
        ),
        caller=args.caller,
        status=args.status,
    )


def _print_review_item(item: pb.ReviewItem, as_json: bool) -> None:
    if as_json:
        print_json(review_item_json(item))
        return
    top = item.matches[0] if item.matches else None
    what = f"{top.set}/{top.entry} d={top.distance}" if top else ""
    holder = f"claimed by {item.claimed_by}" if item.claimed_by else "free"
    print(
        f"{item.id}\t{iso(item.created_at)}\t{item.caller}\t{item.client_ref}\t"
        f"{item.status}\t{holder}\t{what}"
    )


def cmd_review_list(args: argparse.Namespace) -> int:
    printed, token = 0, ""
    with connect(args) as client:
        while True:
            resp = client.review.ListReviewItems(
                pb.ListReviewItemsRequest(
                    filter=_review_filter(args), page_size=PAGE_SIZE, page_token=token
                ),
                metadata=client.metadata,
            )
            for item in resp.items:
                if args.limit and printed >= args.limit:
                    return EXIT_OK
                _print_review_item(item, args.json)
                printed += 1
            token = resp.next_page_token
            if not token:
                return EXIT_OK


def cmd_review_claim(args: argparse.Namespace) -> int:
    with connect(args) as client:
        item = client.review.ClaimReviewItem(
            pb.ClaimReviewItemRequest(id=args.id, filter=_review_filter(args)),
            metadata=client.metadata,
        )
    _print_review_item(item, args.json)
    return EXIT_OK


def cmd_review_resolve(args: argparse.Namespace) -> int:
    with connect(args) as client:
        item = client.review.ResolveReviewItem(
            pb.ResolveReviewItemRequest(
                id=args.id,
                resolution=args.resolution,
                note=args.note,
                add_to_set=args.add_to_set,
                entry_name=args.entry_name,
            ),
            metadata=client.metadata,
        )
    _print_review_item(item, args.json)
    return EXIT_OK
