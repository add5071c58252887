"""`hashsvc token create | list | revoke`: API tokens (admin). `create --db`
writes the store directly, for the first admin token."""

from __future__ import annotations

import argparse
import sys

from hashsvc.client.commands.common import (
    EXIT_OK,
    Subcommands,
    UsageError,
    client_command,
    connect,
    print_json,
)
from hashsvc.client.commands.values import iso, parse_seconds
from hashsvc.v1 import hashsvc_pb2 as pb

ROLES = ["matcher", "operator", "auditor", "reviewer", "subscriber", "admin"]


def register(commands: Subcommands) -> None:
    token = commands.add_parser("token", help="manage API tokens", description="Manage API tokens.")
    token_commands = token.add_subparsers(title="token commands", metavar="COMMAND")
    p = client_command(
        token_commands,
        "create",
        cmd_token_create,
        "create a token (prints it on the last line)",
        description="Create an API token. With --db the store is written directly (for the "
        "first admin token); without, the Admin API is called with HASHSVC_TOKEN.",
    )
    p.add_argument("--role", required=True, choices=ROLES)
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
    client_command(token_commands, "list", cmd_token_list, "list tokens (admin)")
    p = client_command(
        token_commands, "revoke", cmd_token_revoke, "revoke a token by id (admin)", json_help=None
    )
    p.add_argument("id", type=int)


def cmd_token_create(args: argparse.Namespace) -> int:
    expires_in = parse_seconds(args.expires_in)
    if args.db:
        token, info = _create_in_store(args, expires_in)
    else:
        with connect(args) as client:
            resp = client.admin.CreateToken(
                pb.CreateTokenRequest(
                    role=args.role, name=args.name, expires_in_seconds=expires_in
                ),
                metadata=client.metadata,
            )
        token = resp.token
        info = {"id": resp.info.id, "name": resp.info.name, "role": resp.info.role}
    if args.json:
        print_json({**info, "token": token})
    else:
        print(f"created {info['role']} token #{info['id']} for {info['name']!r}", file=sys.stderr)
        print(token)
    return EXIT_OK


def _create_in_store(args: argparse.Namespace, expires_in: int) -> tuple[str, dict]:
    # imported here: only `token create --db` opens a store
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
    return token, {"id": record.id, "name": record.name, "role": record.role}


def _record_local_token(store, record) -> None:
    """A token written straight into the store is recorded in its history too,
    by the local user, unless that would append an unsigned record to a
    keyed chain (then --config names the server's history_key_file)."""
    import getpass

    from hashsvc.core.audit import Audit

    if not store.can_extend_history():
        print(
            "warning: the token's creation is not in the history, which is signed with a key:"
            " pass --config with the server's history_key_file to record it",
            file=sys.stderr,
        )
        return
    detail = {"token_id": record.id, "name": record.name, "role": record.role, "via": "--db"}
    detail["expires_at"] = record.expires_at.isoformat() if record.expires_at else None
    Audit(store, store).record_action("CreateToken", f"local:{getpass.getuser()}", detail)


def cmd_token_list(args: argparse.Namespace) -> int:
    with connect(args) as client:
        resp = client.admin.ListTokens(pb.ListTokensRequest(), metadata=client.metadata)
    for t in resp.tokens:
        row = {
            "id": t.id,
            "name": t.name,
            "role": t.role,
            "created_at": iso(t.created_at),
            "revoked_at": iso(t.revoked_at) if t.HasField("revoked_at") else None,
        }
        if args.json:
            print_json(row)
        else:
            state = "revoked" if row["revoked_at"] else "active"
            print(f"{t.id}\t{t.role}\t{state}\t{t.name}")
    return EXIT_OK


def cmd_token_revoke(args: argparse.Namespace) -> int:
    with connect(args) as client:
        client.admin.RevokeToken(pb.RevokeTokenRequest(id=args.id), metadata=client.metadata)
    print(f"revoked token #{args.id}", file=sys.stderr)
    return EXIT_OK
