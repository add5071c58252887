"""`hashsvc events list | tail`: the notifications hashsvc sends (webhooks)
and serves (Events/Subscribe); subscriber, auditor or admin."""

from __future__ import annotations

import argparse
import json
import time

import grpc

from hashsvc.client.commands.common import (
    EXIT_OK,
    Subcommands,
    client_command,
    connect,
    print_json,
)
from hashsvc.client.commands.history import one_line
from hashsvc.client.commands.values import iso
from hashsvc.v1 import hashsvc_pb2 as pb

# Events or failures a ListEvents page asks for.
PAGE_SIZE = 500
# Between the end of one Subscribe stream (the server's subscribe_max_seconds)
# and the next.
RESUME_PAUSE_SECONDS = 0.5


def register(commands: Subcommands) -> None:
    events = commands.add_parser(
        "events",
        help="notifications: the outbox, failed deliveries, a live tail (subscriber role)",
        description="Events hashsvc sends to webhooks and streams (Events/Subscribe).",
    )
    event_commands = events.add_subparsers(title="events commands", metavar="COMMAND")
    p = client_command(
        event_commands,
        "list",
        cmd_events_list,
        "events, oldest first, and each webhook endpoint's delivery state",
        json_help="JSON lines: each event as webhooks receive it (--failed: each failure)",
    )
    p.add_argument(
        "--failed", action="store_true", help="events an endpoint never took (retry_for_seconds)"
    )
    p.add_argument("--from", dest="from_id", type=int, default=0, metavar="N", help="from id N on")
    p.add_argument("--limit", type=int, default=0, help="at most N lines (default: all)")
    p = client_command(
        event_commands,
        "tail",
        cmd_events_tail,
        "follow new events (Events/Subscribe); Ctrl-C stops",
        json_help="JSON lines: each event as webhooks receive it",
    )
    p.add_argument(
        "--from", dest="from_id", type=int, default=0, metavar="N",
        help="start at event id N (default: only events from now on)",
    )  # fmt: skip


def cmd_events_list(args: argparse.Namespace) -> int:
    printed, token = 0, ""
    with connect(args) as client:
        while True:
            resp = client.events.ListEvents(
                pb.ListEventsRequest(
                    failed=args.failed, page_size=PAGE_SIZE, page_token=token, from_id=args.from_id
                ),
                metadata=client.metadata,
            )
            rows = resp.failures if args.failed else resp.events
            for row in rows:
                if args.limit and printed >= args.limit:
                    break
                _print_row(row, args.json)
                printed += 1
            token = resp.next_page_token
            if not token or (args.limit and printed >= args.limit):
                break
    if not args.json:
        for endpoint in resp.endpoints:
            print(endpoint_line(endpoint, resp.last_event_id))
    return EXIT_OK


def cmd_events_tail(args: argparse.Namespace) -> int:
    from_id = args.from_id
    with connect(args) as client:
        try:
            while True:  # the server ends a stream after subscribe_max_seconds: resume
                stream = client.events.Subscribe(
                    pb.SubscribeRequest(from_id=from_id), metadata=client.metadata
                )
                for event in stream:
                    _print_row(event, args.json)
                    from_id = event.id + 1
                if from_id == 0:  # "from now on": resume after the last event there was
                    from_id = _next_id(client)
                time.sleep(RESUME_PAUSE_SECONDS)
        except KeyboardInterrupt:
            return EXIT_OK
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.CANCELLED:
                return EXIT_OK
            raise


def _next_id(client) -> int:
    resp = client.events.ListEvents(pb.ListEventsRequest(page_size=1), metadata=client.metadata)
    return resp.last_event_id + 1


def _print_row(row, as_json: bool) -> None:
    if isinstance(row, pb.Event):
        if as_json:
            print(row.json, flush=True)
        else:
            print(event_line(row), flush=True)
    elif as_json:
        print_json(failure_json(row))
    else:
        print(
            f"{row.event_id}\t{iso(row.failed_at)}\t{row.event_type}\t{one_line(row.endpoint)}"
            f"\tFAILED after {row.attempts} attempts: {one_line(row.last_error)}",
            flush=True,
        )


def failure_json(f: pb.EventFailure) -> dict:
    return {
        "endpoint": f.endpoint,
        "event_id": f.event_id,
        "event_type": f.event_type,
        "failed_at": iso(f.failed_at),
        "attempts": f.attempts,
        "last_error": f.last_error,
    }


def event_line(event: pb.Event) -> str:
    body = json.loads(event.json)
    what = body.get("decision") or body.get("resolution") or body.get("entry") or ""
    ref = body.get("request_id") or ""
    sets = ",".join(event.sets)
    return "\t".join(
        one_line(str(x)) for x in (event.id, iso(event.time), event.type, sets, what, ref)
    )


def endpoint_line(e: pb.WebhookEndpoint, last_event_id: int) -> str:
    line = (
        f"endpoint {one_line(e.name)}: done through {e.delivered_through} of {last_event_id},"
        f" {e.failed_events} failed"
    )
    if e.attempts:
        line += (
            f"; retrying event {e.delivered_through + 1} ({e.attempts} attempts,"
            f" next at {iso(e.next_attempt_at)}): {one_line(e.last_error)}"
        )
    return line
