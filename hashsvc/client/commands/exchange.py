"""`hashsvc exchange add | list | show | disable | enable | remove | fetch |
status | feedback`: partner feeds (operators). Credentials are read from a
file and sent once; the server never shows them again."""

from __future__ import annotations

import argparse
import os
import sys
from datetime import UTC

from hashsvc.base import record_json
from hashsvc.client.commands.common import (
    EXIT_OK,
    Subcommands,
    UsageError,
    client_command,
    connect,
    print_json,
)
from hashsvc.client.commands.values import parse_labels, parse_seconds
from hashsvc.v1 import hashsvc_pb2 as pb

APIS = ["threatexchange", "tcap", "ncmec", "stopncii", "file"]
# a credentials file larger than this is not a credential (the server's limit too)
MAX_CREDENTIALS_BYTES = 4096


def register(commands: Subcommands) -> None:
    exchange = commands.add_parser(
        "exchange",
        help="partner feeds (ThreatExchange, TCAP, NCMEC, StopNCII, files)",
        description="Partner feeds fetched into a set, incrementally, by the server.",
    )
    sub = exchange.add_subparsers(title="exchange commands", metavar="COMMAND")
    p = client_command(sub, "add", cmd_add, "add a feed", json_help=None)
    p.add_argument("name")
    p.add_argument("--api", required=True, choices=APIS)
    p.add_argument("--set", required=True, help="the set the feed loads")
    p.add_argument(
        "--label",
        action="append",
        default=[],
        metavar="K=V",
        help="a label on every entry of the feed",
    )
    p.add_argument(
        "--credentials-file",
        metavar="F",
        help="the API's credentials (a ThreatExchange app token APPID|SECRET;"
        " USER:PASSWORD for TCAP and NCMEC; FETCH_KEY,SUBSCRIPTION_KEY for"
        " StopNCII); sent once, never shown again",
    )
    p.add_argument("--every", default="15m", help="how often the server fetches it (15m)")
    p.add_argument("--privacy-group", metavar="ID", help="threatexchange: the privacy group")
    p.add_argument(
        "--path", metavar="FILE", help="file: the list on the server's disk (`TYPE HASH` a line)"
    )
    p.add_argument(
        "--base-url", metavar="URL", help="another API address (a mirror, a test server)"
    )
    p.add_argument("--environment", help="ncmec: the NCMEC environment (Industry)")
    client_command(sub, "list", cmd_list, "list feeds")
    for name, func, help in (
        ("show", cmd_show, "show a feed, its status and feedback"),
        ("disable", cmd_disable, "stop fetching a feed"),
        ("enable", cmd_enable, "fetch a feed again"),
        ("remove", cmd_remove, "remove a feed (its entries stay in the set)"),
    ):
        p = client_command(sub, name, func, help, json_help=None if name != "show" else "")
        p.add_argument("name")
        if name == "show":
            p.add_argument(
                "--entry", default="", help="the feedback on this entry (queued, sent, failed)"
            )
    p = client_command(sub, "fetch", cmd_fetch, "fetch a feed now (progress on stderr)")
    p.add_argument("name")
    p.add_argument("--full", action="store_true", help="from the start, not the checkpoint")
    p.add_argument(
        "--allow-mass-delete",
        action="store_true",
        help="apply deletions past exchange.max_delete_fraction (this fetch only)",
    )
    client_command(sub, "status", cmd_status, "each feed's last fetch and next run")
    p = client_command(
        sub,
        "feedback",
        cmd_feedback,
        "send a verdict on a feed entry back to its source",
        json_help=None,
    )
    p.add_argument("name")
    p.add_argument("entry")
    p.add_argument("verdict", choices=["confirmed", "false_positive"])


def _options(args: argparse.Namespace) -> dict[str, str]:
    given = {
        "privacy_group": args.privacy_group,
        "path": os.path.abspath(args.path) if args.path else None,
        "base_url": args.base_url,
        "environment": args.environment,
    }
    return {k: v for k, v in given.items() if v}


def _credentials(path: str | None) -> str:
    if not path:
        return ""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_CREDENTIALS_BYTES + 1)
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    if len(data) > MAX_CREDENTIALS_BYTES:
        raise UsageError(f"{path} is larger than {MAX_CREDENTIALS_BYTES} bytes")
    try:
        return data.decode().strip()
    except UnicodeDecodeError:
        raise UsageError(f"{path} is not text") from None


def cmd_add(args: argparse.Namespace) -> int:
    request = pb.AddFeedRequest(
        name=args.name,
        api=args.api,
        set=args.set,
        labels=parse_labels(args.label),
        options=_options(args),
        every_seconds=parse_seconds(args.every),
        credentials=_credentials(args.credentials_file),
    )
    with connect(args) as client:
        feed = client.exchange.AddFeed(request, metadata=client.metadata)
    print(f"added feed {feed.name} ({feed.api} -> set {feed.set})", file=sys.stderr)
    return EXIT_OK


def feed_status(feed: pb.Feed) -> dict:
    """A feed's status as `exchange status --json` prints it."""

    def when(field: str):
        return getattr(feed, field).ToDatetime(tzinfo=UTC) if feed.HasField(field) else None

    return record_json.feed_status_json(
        name=feed.name,
        api=feed.api,
        set_name=feed.set,
        enabled=feed.enabled,
        last_fetch=when("last_fetch_at"),
        result=feed.last_result,
        error=feed.last_error,
        added=feed.added,
        updated=feed.updated,
        deleted=feed.deleted,
        skipped=feed.skipped,
        rejected=feed.rejected,
        failures=feed.failures,
        checkpoint=feed.checkpoint,
        next_run=when("next_run_at"),
        fetching_replica=feed.fetching_replica,
    )


def _feed_row(feed: pb.Feed) -> dict:
    return record_json.feed_json(
        feed_status(feed),
        labels=feed.labels,
        options=feed.options,
        every_seconds=feed.every_seconds,
        has_credentials=feed.has_credentials,
        items=feed.items,
    )


def _list(args: argparse.Namespace) -> list[pb.Feed]:
    with connect(args) as client:
        return list(
            client.exchange.ListFeeds(pb.ListFeedsRequest(), metadata=client.metadata).feeds
        )


def cmd_list(args: argparse.Namespace) -> int:
    for feed in _list(args):
        if args.json:
            print_json(_feed_row(feed))
        else:
            state = "enabled" if feed.enabled else "disabled"
            print(f"{feed.name}\t{feed.api}\t{feed.set}\t{state}\tevery {feed.every_seconds}s")
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    for feed in _list(args):
        row = feed_status(feed)
        if args.json:
            print_json(row)
        else:
            print(
                f"{feed.name}\tlast {row['last_fetch'] or 'never'}\t{row['result'] or '-'}"
                f"\t+{feed.added} ~{feed.updated} -{feed.deleted} skipped {feed.skipped}"
                f" rejected {feed.rejected}"
                f"\tnext {row['next_run']}\tcheckpoint {row['checkpoint'] or '-'}"
                + (f"\terror: {feed.last_error}" if feed.last_error else "")
            )
    return EXIT_OK


def cmd_show(args: argparse.Namespace) -> int:
    with connect(args) as client:
        feed = client.exchange.GetFeed(
            pb.GetFeedRequest(name=args.name, entry=args.entry), metadata=client.metadata
        )
    row = _feed_row(feed)
    row["feedback"] = [
        record_json.feedback_json(
            item_id=f.id,
            entry=f.entry,
            verdict=f.verdict,
            state=f.state,
            attempts=f.attempts,
            error=f.last_error,
            created_at=f.created_at.ToDatetime(tzinfo=UTC) if f.HasField("created_at") else None,
            sent_at=f.sent_at.ToDatetime(tzinfo=UTC) if f.HasField("sent_at") else None,
        )
        for f in feed.feedback
    ]
    if args.json:
        print_json(row)
    else:
        for key, value in row.items():
            print(f"{key}: {value}")
    return EXIT_OK


def _set_enabled(args: argparse.Namespace, enabled: bool) -> int:
    with connect(args) as client:
        client.exchange.SetFeedEnabled(
            pb.SetFeedEnabledRequest(name=args.name, enabled=enabled), metadata=client.metadata
        )
    print(f"{'enabled' if enabled else 'disabled'} feed {args.name}", file=sys.stderr)
    return EXIT_OK


def cmd_disable(args: argparse.Namespace) -> int:
    return _set_enabled(args, False)


def cmd_enable(args: argparse.Namespace) -> int:
    return _set_enabled(args, True)


def cmd_remove(args: argparse.Namespace) -> int:
    with connect(args) as client:
        client.exchange.RemoveFeed(pb.RemoveFeedRequest(name=args.name), metadata=client.metadata)
    print(f"removed feed {args.name} (its entries stay in the set)", file=sys.stderr)
    return EXIT_OK


def cmd_fetch(args: argparse.Namespace) -> int:
    last = None
    with connect(args) as client:
        request = pb.FetchFeedRequest(
            name=args.name, full=args.full, allow_mass_delete=args.allow_mass_delete
        )
        for progress in client.exchange.FetchFeed(request, metadata=client.metadata):
            last = progress
            print(
                f"\r{args.name}: {progress.pages} pages, {progress.items} items,"
                f" +{progress.added} ~{progress.updated} -{progress.deleted}"
                f" skipped {progress.skipped}",
                end="\n" if progress.done else "",
                file=sys.stderr,
                flush=True,
            )
    if args.json and last is not None:
        print_json(
            {
                "feed": args.name,
                "pages": last.pages,
                "items": last.items,
                "added": last.added,
                "updated": last.updated,
                "deleted": last.deleted,
                "skipped": last.skipped,
                "rejected": last.rejected,
                "seconds": round(last.seconds, 3),
            }
        )
    return EXIT_OK


def cmd_feedback(args: argparse.Namespace) -> int:
    with connect(args) as client:
        item = client.exchange.SendFeedback(
            pb.SendFeedbackRequest(feed=args.name, entry=args.entry, verdict=args.verdict),
            metadata=client.metadata,
        )
    print(f"feedback #{item.id} {item.verdict} on {item.entry}: {item.state}", file=sys.stderr)
    return EXIT_OK
