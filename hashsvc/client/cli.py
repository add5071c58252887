"""hashsvc command line: `serve` and `token create --db` work on the server
side; everything else is a client of the public gRPC API.

Exit codes: 0 success; 1 the operation failed (for several files: at least one
failed; the others were still done); 2 usage error; 3 cannot reach the server.
Results go to stdout, errors and progress to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from datetime import UTC, datetime, timedelta

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from hashsvc import __version__
from hashsvc.base.errors import HashsvcError
from hashsvc.client.client import (
    STREAM_ABOVE_BYTES,
    Client,
    InsecureTransport,
    bytes_chunks,
    file_chunks,
)
from hashsvc.matching.policy import PdqPolicy
from hashsvc.v1 import hashsvc_pb2 as pb

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3
EXIT_BROKEN_PIPE = 128 + 13  # as a process killed by SIGPIPE
DECISION_NAMES = {pb.ALLOW: "allow", pb.REVIEW: "review", pb.BLOCK: "block"}
DECISION_VALUES = {v: k for k, v in DECISION_NAMES.items()}


class UsageError(Exception):
    pass


# Client options taken before the command as well as after it.
_GLOBAL_CLIENT_OPTS = ("server", "tls_ca")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    for name in _GLOBAL_CLIENT_OPTS:
        given = getattr(args, f"global_{name}")
        if given is None:
            continue
        if not hasattr(args, name):
            flag = "--" + name.replace("_", "-")
            print(f"hashsvc: {flag} is for commands that call a server", file=sys.stderr)
            return EXIT_USAGE
        if getattr(args, name) is None:  # given after the command too: that one wins
            setattr(args, name, given)
    try:
        return args.func(args)
    except UsageError as exc:
        print(f"hashsvc: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except HashsvcError as exc:
        print(f"hashsvc: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except grpc.RpcError as exc:
        return _report_rpc_error(exc)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # the reader went away (`hashsvc export ... | head`): quiet, as a
        # Unix tool killed by SIGPIPE; stdout is closed so the exit's own
        # flush does not fail again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


def _report_rpc_error(exc: grpc.RpcError) -> int:
    code = exc.code()
    print(f"hashsvc: {code.name}: {_rpc_details(exc)}", file=sys.stderr)
    return EXIT_UNREACHABLE if code == grpc.StatusCode.UNAVAILABLE else EXIT_FAILED


def _rpc_details(exc: grpc.RpcError) -> str:
    """The server's message, told in the CLI's terms where it names the token
    (the server speaks of gRPC metadata, which a CLI user never sets)."""
    if exc.code() != grpc.StatusCode.UNAUTHENTICATED:
        return exc.details()
    if not os.environ.get("HASHSVC_TOKEN"):
        return (
            "no token: set HASHSVC_TOKEN to your API token (an admin makes one with"
            " `hashsvc token create`)"
        )
    return f"{exc.details()} (the token in HASHSVC_TOKEN)"


# ------------------------------------------------------------------ parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hashsvc",
        description="Match media against hash sets of known terrorist propaganda.",
        epilog="Server address: --server or HASHSVC_SERVER (default 127.0.0.1:50051). "
        "Token: HASHSVC_TOKEN. TLS: --tls-ca or HASHSVC_TLS_CA.",
    )
    parser.add_argument("--version", action="version", version=f"hashsvc {__version__}")
    # Also accepted before the command (`hashsvc --server H:P match ...`); own
    # dests, because a subcommand's default (None) would overwrite the value.
    parser.add_argument(
        "--server", dest="global_server", metavar="HOST:PORT", help="the hashsvc server"
    )
    parser.add_argument(
        "--tls-ca", dest="global_tls_ca", metavar="FILE", help="CA certificate: connect with TLS"
    )
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")

    def client_command(name, func, help_text):
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--server", help="HOST:PORT of the hashsvc server")
        p.add_argument("--tls-ca", help="CA certificate file: connect with TLS")
        p.add_argument("--insecure", action="store_true", help=INSECURE_HELP)
        p.set_defaults(func=func)
        return p

    p = sub.add_parser("serve", help="run the gRPC service", description="Run the gRPC service.")
    p.add_argument("--listen", help="HOST:PORT to listen on (default 127.0.0.1:50051)")
    p.add_argument("--db", help="store URL: sqlite:///PATH (default) or postgresql://...")
    p.add_argument("--config", help="TOML config file (see README)")
    p.add_argument("--workers", type=int, help="hashing processes (default: one per core)")
    p.add_argument("--log-level", default="INFO")
    p.add_argument("--log-json", action="store_true", help="log JSON lines (for log pipelines)")
    p.set_defaults(func=cmd_serve)

    token = sub.add_parser("token", help="manage API tokens", description="Manage API tokens.")
    token_sub = token.add_subparsers(title="token commands", metavar="COMMAND")
    p = token_sub.add_parser(
        "create",
        help="create a token (prints it on the last line)",
        description="Create an API token. With --db the store is written directly (for the "
        "first admin token); without, the Admin API is called with HASHSVC_TOKEN.",
    )
    p.add_argument(
        "--role", required=True, choices=["matcher", "operator", "auditor", "reviewer", "admin"]
    )
    p.add_argument(
        "--name",
        default="",
        help="who holds it (shown as caller in history); unique among unrevoked tokens;"
        " default ROLE-XXXXXX",
    )
    p.add_argument("--expires-in", help="the token stops working after this: 90d, 12h, 3600s")
    p.add_argument("--db", help="store URL, for creating a token without a running server")
    p.add_argument(
        "--config",
        help="with --db: the server's TOML config (its history_key_file signs the record)",
    )
    _client_opts(p, json_flag=True)
    p.set_defaults(func=cmd_token_create)
    p = token_sub.add_parser("list", help="list tokens (admin)")
    _client_opts(p, json_flag=True)
    p.set_defaults(func=cmd_token_list)
    p = token_sub.add_parser("revoke", help="revoke a token by id (admin)")
    p.add_argument("id", type=int)
    _client_opts(p)
    p.set_defaults(func=cmd_token_revoke)

    sets = sub.add_parser("sets", help="manage hash sets", description="Manage hash sets.")
    sets_sub = sets.add_subparsers(title="sets commands", metavar="COMMAND")
    p = sets_sub.add_parser("create", help="create a hash set")
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
    _client_opts(p, json_flag=True)
    p.set_defaults(func=cmd_sets_create)
    p = sets_sub.add_parser("list", help="list hash sets with their entry counts")
    p.add_argument("--all", action="store_true", help="include disabled sets (default: yes)")
    _client_opts(p, json_flag=True)
    p.set_defaults(func=cmd_sets_list)
    p = sets_sub.add_parser("show", help="show one hash set")
    p.add_argument("name")
    _client_opts(p, json_flag=True)
    p.set_defaults(func=cmd_sets_show)
    for name, enabled in (("disable", False), ("enable", True)):
        p = sets_sub.add_parser(name, help=f"{name} a hash set (takes effect at once)")
        p.add_argument("name")
        _client_opts(p, json_flag=True)
        p.set_defaults(func=cmd_sets_enable, enabled=enabled)
    p = sets_sub.add_parser("update", help="change a hash set's options")
    p.add_argument("name")
    p.add_argument(
        "--review-target",
        action=argparse.BooleanOptionalAction,
        help="whether reviewers may add confirmed uploads to this set (never an allow list)",
    )
    _client_opts(p, json_flag=True)
    p.set_defaults(func=cmd_sets_update)

    p = client_command(
        "add",
        cmd_add,
        "Add media files, directories or hashes to a set as known entries. A directory "
        "is walked recursively: entries are named by relative path; files the set "
        "already holds (same SHA-256) and files that are not media are skipped, so a "
        "rerun resumes; a changed file whose name is taken is added as NAME@SHA256 "
        "(first 12 hex digits), keeping the old entry. A FILE named on the command line "
        "that is not media is an error.",
    )
    p.add_argument("--set", required=True, dest="set_name")
    p.add_argument("--label", action="append", default=[], metavar="K=V")
    p.add_argument("--name", help="entry name (one file only; default: the file name)")
    p.add_argument(
        "--hash", action="append", default=[], metavar="TYPE:HEX", help="add a precomputed hash"
    )
    p.add_argument("files", nargs="*", metavar="FILE|DIR")
    p.add_argument(
        "--parallel",
        type=int,
        metavar="N",
        help="uploads in flight (default: one per core of this machine, "
        f"{os.cpu_count() or 1}). The server hashes them on its worker processes (`workers`, "
        "default one per server core), each upload holding one of its `grpc_threads` (default "
        "16, shared with Match) until hashed: for a server on another machine give its worker "
        "count; on a server that also matches live uploads, stay below grpc_threads. Files "
        "over 4 MiB are streams: at most the server's max_streams_per_token and "
        "max_uploads_per_token (default 4) at once, the rest refused (RESOURCE_EXHAUSTED)",
    )
    p.add_argument(
        "--quiet",
        action="store_true",
        help="no progress line (there is none either when stderr is not a terminal)",
    )
    p.add_argument("--json", action="store_true")

    p = client_command("remove", cmd_remove, "Remove entries from a set (stop matching at once).")
    p.add_argument("--set", required=True, dest="set_name")
    p.add_argument("entries", nargs="+", metavar="ENTRY")
    p.add_argument("--json", action="store_true")

    p = client_command(
        "export",
        cmd_export,
        "Write a set's exchangeable hashes (PDQ as other platforms compute it, MD5, "
        "SHA-256, video frame PDQs, videohash, chromaprint, text signals) with entry names "
        "and labels to stdout (vpdq: one file per video in --output DIR).",
    )
    p.add_argument("--set", required=True, dest="set_name")
    p.add_argument(
        "--format", choices=["csv", "tsv", "jsonl", "hma", "tcap", "vpdq"], default="csv"
    )
    p.add_argument(
        "--since",
        help="only what changed since then (ISO time or age like 24h), removed entries as"
        " rows with deleted=true",
    )
    p.add_argument("--output", metavar="DIR", help="directory for --format vpdq")

    p = client_command(
        "load",
        cmd_load,
        "Load precomputed hashes (hash lists from partners) into a set: CSV/TSV with a "
        "header, JSON lines, python-threatexchange/HMA, TCAP-style rows or vPDQ files. "
        "Loading again changes nothing; rerun an interrupted load to complete it.",
    )
    p.add_argument("--set", required=True, dest="set_name")
    p.add_argument(
        "--format",
        choices=["auto", "csv", "tsv", "jsonl", "hma", "tcap", "vpdq"],
        default="auto",
        help="default: from the file name and first line",
    )
    p.add_argument("--strict", action="store_true", help="load nothing if any row is bad")
    p.add_argument("files", nargs="+", metavar="FILE", help="files, or - for stdin")
    p.add_argument("--quiet", action="store_true", help="no progress line")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")

    entries = sub.add_parser("entries", help="list or show entries of a set")
    entries_sub = entries.add_subparsers(title="entries commands", metavar="COMMAND")
    p = entries_sub.add_parser("list", help="list the entries of a set")
    p.add_argument("--set", required=True, dest="set_name")
    _client_opts(p, json_flag=True)
    p.set_defaults(func=cmd_entries_list)
    p = entries_sub.add_parser("show", help="show one entry with its signals")
    p.add_argument("--set", required=True, dest="set_name")
    p.add_argument("name")
    _client_opts(p, json_flag=True)
    p.set_defaults(func=cmd_entries_show)
    p = entries_sub.add_parser(
        "release", help="acknowledge an entry's flood alert (its count starts again)"
    )
    p.add_argument("--set", required=True, dest="set_name")
    p.add_argument("name")
    _client_opts(p, json_flag=True)
    p.set_defaults(func=cmd_entries_release)

    review = sub.add_parser(
        "review",
        help="the review queue (reviewer role)",
        description="Matches that need a person: list, claim, resolve.",
    )
    review_sub = review.add_subparsers(title="review commands", metavar="COMMAND")
    p = review_sub.add_parser("list", help="open items, oldest first")
    _review_filter_opts(p)
    p.add_argument("--limit", type=int, default=0, help="at most N items (default: all)")
    _client_opts(p, json_flag=True)
    p.set_defaults(func=cmd_review_list)
    p = review_sub.add_parser(
        "claim", help="claim an item (default: the oldest free one matching the filters)"
    )
    p.add_argument("id", nargs="?", type=int, default=0)
    _review_filter_opts(p)
    _client_opts(p, json_flag=True)
    p.set_defaults(func=cmd_review_claim)
    p = review_sub.add_parser("resolve", help="resolve an item you have claimed")
    p.add_argument("id", type=int)
    verdict = p.add_mutually_exclusive_group(required=True)
    verdict.add_argument("--confirmed", action="store_const", const="confirmed", dest="resolution")
    verdict.add_argument(
        "--false-positive", action="store_const", const="false_positive", dest="resolution"
    )
    p.add_argument("--note", default="")
    p.add_argument("--add-to-set", default="", help="confirmed: add the upload's hashes to SET")
    p.add_argument("--entry-name", default="", help="name of that entry (default review-<id>)")
    _client_opts(p, json_flag=True)
    p.set_defaults(func=cmd_review_resolve)

    p = client_command("match", cmd_match, "Match media files (or - for stdin, or hashes).")
    p.add_argument("files", nargs="*", metavar="FILE")
    p.add_argument("--hash", action="append", default=[], metavar="TYPE:HEX")
    p.add_argument("--set", action="append", default=[], dest="sets", help="only these sets")
    p.add_argument("--client-ref", default="", help="your reference to the upload")
    p.add_argument("--json", action="store_true", help="one JSON object per line per file")

    p = client_command(
        "history",
        cmd_history,
        "Query the match history (auditor); `history verify` checks its hash chain.",
    )
    p.add_argument(
        "action",
        nargs="?",
        choices=["verify"],
        help="verify: check that no record was edited, inserted or deleted (exit 1 if one was)",
    )
    p.add_argument("--since", help="ISO time or age like 30m, 12h, 7d")
    p.add_argument("--until", help="ISO time or age like 30m, 12h, 7d")
    p.add_argument("--decision", choices=["block", "review", "allow"])
    p.add_argument("--set", dest="set_name")
    p.add_argument("--caller")
    p.add_argument("--limit", type=int, default=0, help="at most N records (default: all)")
    p.add_argument("--json", action="store_true", help="JSON lines (for export)")

    p = client_command("stats", cmd_stats, "Counts of sets, entries, signals and history.")
    p.add_argument("--json", action="store_true")
    return parser


def _client_opts(p: argparse.ArgumentParser, json_flag: bool = False) -> None:
    p.add_argument("--server", help="HOST:PORT of the hashsvc server")
    p.add_argument("--tls-ca", help="CA certificate file: connect with TLS")
    p.add_argument("--insecure", action="store_true", help=INSECURE_HELP)
    if json_flag:
        p.add_argument("--json", action="store_true")


INSECURE_HELP = "send the token without TLS to a server that is not on this machine"


def _client(args) -> Client:
    try:
        return Client(server=args.server, tls_ca_file=args.tls_ca, insecure=args.insecure)
    except InsecureTransport as exc:
        raise UsageError(str(exc)) from None
    except OSError as exc:  # a TLS file (--tls-ca, HASHSVC_TLS_*) that cannot be read
        raise UsageError(f"cannot read {exc.filename}: {exc.strerror}") from None


def _print_json(obj) -> None:
    print(json.dumps(obj, ensure_ascii=False, sort_keys=False), flush=True)


# ------------------------------------------------------------------ server side


def cmd_serve(args) -> int:
    from hashsvc.api.server import StartupError, serve_forever
    from hashsvc.base import logs
    from hashsvc.core.config import load_config

    logs.configure(args.log_level, json_lines=args.log_json)
    try:
        config = load_config(args.config, listen=args.listen, db_url=args.db, workers=args.workers)
    except (OSError, ValueError) as exc:
        raise UsageError(f"config: {exc}") from None
    try:
        serve_forever(config)
    except StartupError as exc:  # one line, no traceback: what to fix
        print(f"hashsvc: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def _seconds(text: str | None) -> int:
    if not text:
        return 0
    age = _AGE.fullmatch(text.strip())
    if not age:
        raise UsageError(f"cannot read duration {text!r}: use e.g. 90d, 12h, 30m, 3600s")
    return int(timedelta(**{_AGE_UNITS[age[2]]: int(age[1])}).total_seconds())


def cmd_token_create(args) -> int:
    expires_in = _seconds(args.expires_in)
    if args.db:
        from hashdb import open_store
        from hashsvc.core import auth
        from hashsvc.core.config import load_config

        try:
            history_key = load_config(args.config).history_key() if args.config else None
            store = open_store(args.db, history_key=history_key)
        except ValueError as exc:  # not a store URL; a store that is down: Unavailable
            raise UsageError(f"--db: {exc}") from None
        try:
            record, token = auth.create_token(store, args.role, args.name, expires_in)
            _record_local_token(store, record)
        finally:
            store.close()
        info = {"id": record.id, "name": record.name, "role": record.role}
    else:
        with _client(args) as client:
            resp = client.admin.CreateToken(
                pb.CreateTokenRequest(
                    role=args.role, name=args.name, expires_in_seconds=expires_in
                ),
                metadata=client.metadata,
            )
        token = resp.token
        info = {"id": resp.info.id, "name": resp.info.name, "role": resp.info.role}
    if args.json:
        _print_json({**info, "token": token})
    else:
        print(f"created {info['role']} token #{info['id']} for {info['name']!r}", file=sys.stderr)
        print(token)
    return EXIT_OK


def _record_local_token(store, record) -> None:
    """A token written straight into the store is recorded in its history too,
    by the local user, unless that would append an unsigned record to a
    keyed chain (then --config names the server's history_key_file)."""
    import getpass

    from hashsvc.core.audit import action_record

    if not store.can_extend_history():
        print(
            "warning: the token's creation is not in the history, which is signed with a key:"
            " pass --config with the server's history_key_file to record it",
            file=sys.stderr,
        )
        return
    detail = {"token_id": record.id, "name": record.name, "role": record.role, "via": "--db"}
    detail["expires_at"] = record.expires_at.isoformat() if record.expires_at else None
    store.record_match(action_record("CreateToken", f"local:{getpass.getuser()}", detail))


def cmd_token_list(args) -> int:
    with _client(args) as client:
        resp = client.admin.ListTokens(pb.ListTokensRequest(), metadata=client.metadata)
    for t in resp.tokens:
        row = {
            "id": t.id,
            "name": t.name,
            "role": t.role,
            "created_at": _iso(t.created_at),
            "revoked_at": _iso(t.revoked_at) if t.HasField("revoked_at") else None,
        }
        if args.json:
            _print_json(row)
        else:
            state = "revoked" if row["revoked_at"] else "active"
            print(f"{t.id}\t{t.role}\t{state}\t{t.name}")
    return EXIT_OK


def cmd_token_revoke(args) -> int:
    with _client(args) as client:
        client.admin.RevokeToken(pb.RevokeTokenRequest(id=args.id), metadata=client.metadata)
    print(f"revoked token #{args.id}", file=sys.stderr)
    return EXIT_OK


# ------------------------------------------------------------------ sets and entries


def _labels(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"label {pair!r} must be key=value")
        out[key.strip()] = value.strip()
    return out


def set_json(s: pb.HashSet) -> dict:
    return {
        "name": s.name,
        "description": s.description,
        "labels": dict(s.labels),
        "enabled": s.enabled,
        "entries": s.entry_count,
        "thresholds": {
            t.signal_type: {"block": t.block_distance, "review": t.review_distance}
            for t in s.thresholds
        },
        "allow_list": s.allow_list,
        "review_blocks": s.review_blocks,
        "review_target": s.review_target,
        "created_at": _iso(s.created_at),
    }


def _print_set(s: pb.HashSet, as_json: bool) -> None:
    if as_json:
        _print_json(set_json(s))
        return
    labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
    state = "enabled" if s.enabled else "DISABLED"
    print(f"{s.name}\t{state}\t{s.entry_count} entries\t{labels}")


def cmd_sets_create(args) -> int:
    thresholds = []
    if args.block_threshold is not None or args.review_threshold is not None:
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
        labels=_labels(args.label),
        thresholds=thresholds,
        allow_list=args.allow_list,
        review_blocks=args.review_blocks,
        review_target=args.review_target,
    )
    with _client(args) as client:
        _print_set(client.curation.CreateSet(req, metadata=client.metadata), args.json)
    return EXIT_OK


def cmd_sets_list(args) -> int:
    with _client(args) as client:
        resp = client.curation.ListSets(
            pb.ListSetsRequest(include_disabled=True), metadata=client.metadata
        )
    for s in resp.sets:
        _print_set(s, args.json)
    return EXIT_OK


def cmd_sets_show(args) -> int:
    with _client(args) as client:
        s = client.curation.GetSet(pb.GetSetRequest(name=args.name), metadata=client.metadata)
    if args.json:
        _print_json(set_json(s))
    else:
        print(json.dumps(set_json(s), indent=2, ensure_ascii=False))
    return EXIT_OK


def cmd_sets_enable(args) -> int:
    with _client(args) as client:
        s = client.curation.UpdateSet(
            pb.UpdateSetRequest(name=args.name, enabled=args.enabled), metadata=client.metadata
        )
    _print_set(s, args.json)
    return EXIT_OK


def cmd_sets_update(args) -> int:
    req = pb.UpdateSetRequest(name=args.name)
    if args.review_target is not None:
        req.review_target = args.review_target
    with _client(args) as client:
        s = client.curation.UpdateSet(req, metadata=client.metadata)
    _print_set(s, args.json)
    return EXIT_OK


def entry_json(e: pb.Entry) -> dict:
    return {
        "set": e.set,
        "entry": e.name,
        "id": e.id,
        "labels": dict(e.labels),
        "media_type": pb.MediaType.Name(e.media_type).lower(),
        "signals": [signal_json(s) for s in e.signals],
        "created_at": _iso(e.created_at),
        "added_by": e.added_by,
    }


def _parse_hash_arg(text: str) -> pb.SignalValue:
    kind, sep, value = text.partition(":")
    if not sep:
        raise UsageError(f"--hash {text!r} must be TYPE:HEX, e.g. pdq:<64 hex digits>")
    return pb.SignalValue(signal_type=kind.strip().lower(), value=value.strip())


def _each_item(items: list, label_of, call, show, as_json: bool) -> int:
    """Runs call(item) for every item; a failed item is reported (stderr, and a
    JSON error line with --json) and the rest go on. Stops early only when the
    server is unreachable."""
    failures = 0
    for item in items:
        label = label_of(item)
        try:
            result = call(item)
        except (OSError, grpc.RpcError) as exc:
            failures += 1
            _report_item_error(label, exc, as_json)
            if _unreachable(exc):
                return EXIT_UNREACHABLE
            continue
        show(label, result)
    return EXIT_FAILED if failures else EXIT_OK


def _send_entry(client: Client, req: pb.AddEntryRequest, path: str) -> pb.Entry:
    """AddEntry with the file's bytes, or AddEntryUpload for a large file."""
    if os.path.getsize(path) > STREAM_ABOVE_BYTES:
        return client.add_entry_upload(req, file_chunks(path))
    req.media.content = _read(path)
    req.media.filename = os.path.basename(path)
    return client.curation.AddEntry(req, metadata=client.metadata)


# How many files skipped as not media the summary names (--json lists all).
_NOT_MEDIA_SHOWN = 5


def cmd_add(args) -> int:
    from hashsvc.client import ingest

    if not args.files and not args.hash:
        raise UsageError("give files or directories to add, or --hash TYPE:HEX")
    if args.parallel is not None and args.parallel < 1:
        raise UsageError("--parallel must be at least 1")
    files = ingest.media_files(args.files)
    if args.name and len(files) + len(args.hash) != 1:
        raise UsageError("--name needs exactly one file or hash")
    labels = _labels(args.label)
    items: list = [*files, *args.hash]
    counts = {"added": 0, "skipped": 0, "not_media": 0, "renamed": 0, "failed": 0}
    not_media: list[str] = []
    unreachable = False

    def add(item):
        req = pb.AddEntryRequest(set=args.set_name, labels=labels)
        if isinstance(item, ingest.MediaFile):
            req.name = args.name or item.entry_name
            if item.from_directory:
                return walk.add(item, req)
            # A file named on the command line was meant to be added: not media
            # is an error, told before a byte is sent; a directory walk skips it
            if not ingest.is_media(item.path):
                raise _ItemError(
                    "INVALID_ARGUMENT", "not a media file (image, video, audio or PDF): not added"
                )
            return ingest.Added(_send_entry(client, req, item.path))
        req.signal.CopyFrom(_parse_hash_arg(item))
        req.name = args.name or item.partition(":")[2].strip()
        return ingest.Added(client.curation.AddEntry(req, metadata=client.metadata))

    def report(item, result):
        nonlocal unreachable
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
                _print_json(row)
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
                _print_json(row)
            elif len(items) == 1 or args.quiet or not sys.stderr.isatty():
                print(f"added {entry.name} to {args.set_name}")
        elif isinstance(result, (OSError, grpc.RpcError, _ItemError)):
            counts["failed"] += 1
            unreachable = unreachable or _unreachable(result)
            progress.clear()
            _report_item_error(label, result, args.json)
        else:
            raise result

    progress = ingest.Progress(len(items), enabled=sys.stderr.isatty() and not args.quiet)
    parallel = args.parallel or ingest.default_parallel()
    with _client(args) as client:
        walk = ingest.DirectoryIngest(
            client, args.set_name, lambda req, path: _send_entry(client, req, path)
        )
        ingest.run_parallel(items, add, report, parallel, progress)
    walked = any(f.from_directory for f in files) or not items
    if (len(items) > 1 or walked) and not args.json:
        _print_add_summary(counts, not_media)
    if unreachable:
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
        shown = ", ".join(sorted(not_media)[:_NOT_MEDIA_SHOWN])
        more = len(not_media) - _NOT_MEDIA_SHOWN
        tail = f" and {more} more (--json lists every file)" if more > 0 else ""
        print(f"not media: {shown}{tail}", file=sys.stderr)


def cmd_remove(args) -> int:
    def remove(name):
        req = pb.RemoveEntryRequest(set=args.set_name, name=name)
        return client.curation.RemoveEntry(req, metadata=client.metadata)

    def show(name, _):
        if args.json:
            _print_json({"set": args.set_name, "entry": name, "removed": True})
        else:
            print(f"removed {name} from {args.set_name}")

    with _client(args) as client:
        return _each_item(args.entries, str, remove, show, args.json)


def _entries(client: Client, set_name: str):
    from hashsvc.client.cli_bulk import joined_entries

    return joined_entries(_entry_parts(client, set_name))


def _entry_parts(client: Client, set_name: str):
    token = ""
    while True:
        resp = client.curation.ListEntries(
            pb.ListEntriesRequest(set=set_name, page_size=500, page_token=token),
            metadata=client.metadata,
        )
        yield from resp.entries
        token = resp.next_page_token
        if not token:
            return


def cmd_export(args) -> int:
    from hashsvc.client import cli_bulk

    if args.format == "vpdq" and not args.output:
        raise UsageError("--format vpdq writes one file per video: give --output DIR")
    since = parse_time(args.since) if args.since else None
    with _client(args) as client:
        cli_bulk.export(client, args.set_name, args.format, since, args.output)
    return EXIT_OK


def cmd_load(args) -> int:
    from hashsvc.client import cli_bulk

    for path in args.files:
        if path != "-" and not os.path.isfile(path):
            raise UsageError(f"no such file: {path}")
    progress = cli_bulk.LoadProgress(
        cli_bulk.total_bytes(args.files), enabled=sys.stderr.isatty() and not args.quiet
    )
    with _client(args) as client:
        summary = cli_bulk.load(
            client, args.set_name, args.files, args.format, args.strict, progress
        )
    cli_bulk.print_summary(summary, args.json, args.strict)
    return EXIT_FAILED if summary["rejected"] else EXIT_OK


def cmd_entries_list(args) -> int:
    with _client(args) as client:
        for e in _entries(client, args.set_name):
            if args.json:
                _print_json(entry_json(e))
            else:
                labels = ",".join(f"{k}={v}" for k, v in sorted(e.labels.items()))
                print(f"{e.name}\t{pb.MediaType.Name(e.media_type).lower()}\t{labels}")
    return EXIT_OK


def cmd_entries_show(args) -> int:
    with _client(args) as client:
        e = client.curation.GetEntry(
            pb.GetEntryRequest(set=args.set_name, name=args.name), metadata=client.metadata
        )
    print(json.dumps(entry_json(e), indent=None if args.json else 2, ensure_ascii=False))
    return EXIT_OK


# ------------------------------------------------------------------ matching


def signal_json(s: pb.QuerySignal) -> dict:
    return {
        "signal_type": s.signal_type,
        "value": s.value,
        "quality": s.quality,
        "variant": s.variant,
    }


def matched_json(m: pb.MatchedEntry) -> dict:
    return {
        "set": m.set,
        "entry": m.entry,
        "signal_type": m.signal_type,
        "distance": m.distance,
        "labels": dict(m.labels),
        "decision": DECISION_NAMES.get(m.decision),
        "query_variant": m.query_variant,
        "known_variant": m.known_variant,
        # video, audio, PDF: where the query matches the known media
        **(
            {
                "unit": m.unit,
                "query_share": round(m.query_share, 4),
                "known_share": round(m.known_share, 4),
                "segments": [
                    {
                        "query_start": seg.query_start,
                        "query_end": seg.query_end,
                        "known_start": seg.known_start,
                        "known_end": seg.known_end,
                    }
                    for seg in m.segments
                ],
            }
            if m.unit
            else {}
        ),
    }


def match_json(label: str, resp: pb.MatchResponse) -> dict:
    return {
        "file": label,
        "decision": DECISION_NAMES.get(resp.decision),
        "request_id": resp.request_id,
        "matches": [matched_json(m) for m in resp.matches],
        **({"notes": list(resp.notes)} if resp.notes else {}),
    }


def cmd_match(args) -> int:
    if not args.files and not args.hash:
        raise UsageError("give files to match (- for stdin), or --hash TYPE:HEX")
    items = [(path, None) for path in args.files] + [(None, h) for h in args.hash]

    def match(item):
        path, hash_text = item
        req = pb.MatchRequest(client_ref=args.client_ref, sets=args.sets)
        if path == "-":
            data = sys.stdin.buffer.read()
            if len(data) > STREAM_ABOVE_BYTES:
                return client.match_upload(req, bytes_chunks(data))
            req.media.content = data
            req.media.filename = "stdin"
        elif path is not None:
            if os.path.getsize(path) > STREAM_ABOVE_BYTES:
                return client.match_upload(req, file_chunks(path))
            req.media.content = _read(path)
            req.media.filename = os.path.basename(path)
        else:
            req.signal.CopyFrom(_parse_hash_arg(hash_text))
        return client.matcher.Match(req, metadata=client.metadata)

    def show(label, resp):
        if args.json:
            _print_json(match_json(label, resp))
        else:
            _print_match_text(label, resp)

    with _client(args) as client:
        return _each_item(
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


def _read(path: str) -> bytes:
    if path == "-":
        return sys.stdin.buffer.read()
    with open(path, "rb") as f:
        return f.read()


def _unreachable(exc: BaseException) -> bool:
    return isinstance(exc, grpc.RpcError) and exc.code() == grpc.StatusCode.UNAVAILABLE


class _ItemError(Exception):
    """A file the CLI itself refuses, reported like a server's answer."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def _report_item_error(label: str, exc: BaseException, as_json: bool) -> None:
    if isinstance(exc, grpc.RpcError):
        code, message = exc.code().name, _rpc_details(exc)
    elif isinstance(exc, _ItemError):
        code, message = exc.code, exc.message
    else:
        code, message = "LOCAL", f"{exc.strerror or exc}: {getattr(exc, 'filename', '')}"
    print(f"hashsvc: {label}: {code}: {message}", file=sys.stderr)
    if as_json:
        _print_json({"file": label, "decision": None, "error": {"code": code, "message": message}})


# ------------------------------------------------------------------ audit


_AGE = re.compile(r"(\d+)([smhdw])")
_AGE_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_time(text: str) -> datetime:
    """ISO 8601 (naive means UTC) or an age like 30m / 12h / 7d before now."""
    age = _AGE.fullmatch(text.strip())
    if age:
        return datetime.now(UTC) - timedelta(**{_AGE_UNITS[age[2]]: int(age[1])})
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise UsageError(f"cannot read time {text!r}: use ISO 8601 or an age like 12h") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _ts(value: datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(value.astimezone(UTC).replace(tzinfo=None))
    return ts


def _iso(ts: Timestamp) -> str:
    return ts.ToDatetime(tzinfo=UTC).isoformat().replace("+00:00", "Z")


def history_json(r: pb.HistoryRecord) -> dict:
    return {
        "id": r.id,
        "request_id": r.request_id,
        "time": _iso(r.time),
        "caller": r.caller,
        "caller_token_id": r.caller_token_id or None,
        "rpc": r.rpc,
        "media_type": pb.MediaType.Name(r.media_type).lower(),
        "decision": DECISION_NAMES.get(r.decision),
        "status": r.status,
        "error_message": r.error_message,
        "client_ref": r.client_ref,
        "media_bytes": r.media_bytes,
        "query_signals": [signal_json(s) for s in r.query_signals],
        "matches": [matched_json(m) for m in r.matches],
        # reviewers' and operators' actions: what was done
        "detail": json.loads(r.detail_json) if r.detail_json else None,
    }


def cmd_history_verify(args) -> int:
    with _client(args) as client:
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
        _print_json(row)
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


def cmd_history(args) -> int:
    if args.action == "verify":
        return cmd_history_verify(args)
    req = pb.QueryHistoryRequest(
        set=args.set_name or "",
        caller=args.caller or "",
        decision=DECISION_VALUES[args.decision] if args.decision else pb.DECISION_UNSPECIFIED,
    )
    if args.since:
        req.since.CopyFrom(_ts(parse_time(args.since)))
    if args.until:
        req.until.CopyFrom(_ts(parse_time(args.until)))
    printed = 0
    with _client(args) as client:
        for record in client.audit.ExportHistory(req, metadata=client.metadata):
            row = history_json(record)
            if args.json:
                _print_json(row)
            else:
                print(_history_line(record, row))
            printed += 1
            if args.limit and printed >= args.limit:
                break
    return EXIT_OK


def _one_line(text: str) -> str:
    """Free text (a reviewer's note, an error) on one history line: a newline,
    tab or terminal escape in it would forge a record line or rewrite the
    auditor's screen, so it is shown escaped (\\n, \\x1b, \\u202e)."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


def _history_line(record: pb.HistoryRecord, row: dict) -> str:
    outcome = row["decision"] or row["status"]
    if row["error_message"]:
        outcome += f": {_one_line(row['error_message'])}"
    caller = _one_line(row["caller"])
    if record.media_type == pb.MEDIA_TYPE_UNSPECIFIED:
        # an operator's or reviewer's action (no upload): the RPC and what it did
        detail = row["detail"] or {}
        what = " ".join(
            f"{k}={_one_line(v if isinstance(v, str) else json.dumps(v, ensure_ascii=False))}"
            for k, v in detail.items()
        )
        return f"{row['time']}\t{caller}\t{_one_line(row['rpc'])}\t{outcome}\t{what}"
    top = row["matches"][0] if row["matches"] else None
    what = f"{top['set']}/{top['entry']} d={top['distance']}" if top else ""
    return f"{row['time']}\t{caller}\t{row['media_type']}\t{outcome}\t{what}"


def cmd_stats(args) -> int:
    with _client(args) as client:
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
        _print_json(row)
    else:
        indexed = ", ".join(f"{kind} {n:,}" for kind, n in sorted(row["indexed_signals"].items()))
        print(f"sets: {s.sets:,} ({s.enabled_sets:,} enabled)")
        print(f"entries: {s.entries:,}")
        print(f"indexed signals: {sum(row['indexed_signals'].values()):,} ({indexed or 'none'})")
        print(f"history records: {s.history_records:,}")
        print(f"index version: {s.index_version}")
    return EXIT_OK


# ------------------------------------------------------------------ review


def _review_filter_opts(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", dest="set_name", default="", help="items with a match in this set")
    p.add_argument("--label", default="", metavar="K=V", help="items with a match labelled K=V")
    p.add_argument("--media", default="", choices=["", "image", "video", "audio", "pdf", "hash"])
    p.add_argument("--caller", default="", help="items from this caller")
    p.add_argument("--status", default="open", choices=["open", "confirmed", "false_positive"])


def _review_filter(args) -> pb.ReviewFilter:
    return pb.ReviewFilter(
        set=args.set_name,
        label=args.label,
        media_type=pb.MediaType.Value(args.media.upper()) if args.media else 0,
        caller=args.caller,
        status=args.status,
    )


def review_item_json(item: pb.ReviewItem) -> dict:
    return {
        "id": item.id,
        "request_id": item.request_id,
        "created_at": _iso(item.created_at),
        "caller": item.caller,
        "media_type": pb.MediaType.Name(item.media_type).lower(),
        "client_ref": item.client_ref,
        "status": item.status,
        "claimed_by": item.claimed_by,
        "claim_expires_at": _iso(item.claim_expires_at) if item.claimed_by else None,
        "resolved_by": item.resolved_by,
        "resolved_at": _iso(item.resolved_at) if item.resolved_by else None,
        "note": item.note,
        "added_entry_id": item.added_entry_id or None,
        "query_signals": [signal_json(s) for s in item.query_signals],
        "matches": [matched_json(m) for m in item.matches],
    }


def _print_review_item(item: pb.ReviewItem, as_json: bool) -> None:
    if as_json:
        _print_json(review_item_json(item))
        return
    top = item.matches[0] if item.matches else None
    what = f"{top.set}/{top.entry} d={top.distance}" if top else ""
    holder = f"claimed by {item.claimed_by}" if item.claimed_by else "free"
    print(
        f"{item.id}\t{_iso(item.created_at)}\t{item.caller}\t{item.client_ref}\t"
        f"{item.status}\t{holder}\t{what}"
    )


def cmd_review_list(args) -> int:
    printed, token = 0, ""
    with _client(args) as client:
        while True:
            resp = client.review.ListReviewItems(
                pb.ListReviewItemsRequest(
                    filter=_review_filter(args), page_size=500, page_token=token
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


def cmd_review_claim(args) -> int:
    with _client(args) as client:
        item = client.review.ClaimReviewItem(
            pb.ClaimReviewItemRequest(id=args.id, filter=_review_filter(args)),
            metadata=client.metadata,
        )
    _print_review_item(item, args.json)
    return EXIT_OK


def cmd_review_resolve(args) -> int:
    with _client(args) as client:
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


def cmd_entries_release(args) -> int:
    with _client(args) as client:
        entry = client.curation.ReleaseEntry(
            pb.ReleaseEntryRequest(set=args.set_name, name=args.name), metadata=client.metadata
        )
    if args.json:
        _print_json({"set": args.set_name, "entry": entry.name, "released": True})
    else:
        print(f"released {args.set_name}/{entry.name}: flood alert acknowledged")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
