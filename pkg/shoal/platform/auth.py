"""`shoal auth`: create and manage the credentials every service checks (shoal.web.auth).

shoal auth init --dir D                         cluster secret + admin key (printed once, D/admin.key)
shoal auth key create --dir D --role R --name N [--expires-in S] [--json]
shoal auth key list --dir D [--json]
shoal auth key revoke --dir D ID_OR_NAME        every process notices within ~0.5 s
shoal auth secret rotate --dir D                new signing secret; the old one still verifies
shoal auth secret retire --dir D                drop every secret but the newest
shoal auth node-token --dir D --node ID [--ttl S]   a node JWT, for clients that cannot sign
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys

from shoal.web.auth.roles import ROLES
from shoal.web.auth.store import ADMIN_KEY, AuthDir, AuthDirError, KeyTable
from shoal.web.auth.tokens import DEFAULT_TTL, issue_node_token


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="auth_command", required=True, metavar="ACTION")

    def with_dir(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--dir", required=True, help="the auth dir (services take it as --auth-dir)")
        return p

    with_dir(sub.add_parser("init", help="create the cluster secret and the first admin key"))
    key = sub.add_parser("key", help="API keys: create, list, revoke")
    keys = key.add_subparsers(dest="key_command", required=True, metavar="ACTION")
    create = with_dir(keys.add_parser("create", help="issue a key (shown once)"))
    create.add_argument("--role", required=True, choices=ROLES)
    create.add_argument("--name", required=True, help="who or what holds it (unique among active keys)")
    create.add_argument("--expires-in", type=float, default=None, help="seconds until it stops working")
    create.add_argument("--json", action="store_true")
    listing = with_dir(keys.add_parser("list", help="every key (never the key itself)"))
    listing.add_argument("--json", action="store_true")
    revoke = with_dir(keys.add_parser("revoke", help="revoke a key by id, or the active key of a name"))
    revoke.add_argument("key", metavar="ID_OR_NAME")
    secret = sub.add_parser("secret", help="cluster secret rotation")
    secrets = secret.add_subparsers(dest="secret_command", required=True, metavar="ACTION")
    with_dir(secrets.add_parser("rotate", help="add a new signing secret (old ones still verify)"))
    with_dir(secrets.add_parser("retire", help="keep only the newest secret"))
    node = with_dir(sub.add_parser("node-token", help="a JWT with the node role (prefer request signing)"))
    node.add_argument("--node", required=True, help="node id")
    node.add_argument("--ttl", type=float, default=DEFAULT_TTL)


def _when(t: float | None) -> str:
    if t is None:
        return "-"
    return datetime.datetime.fromtimestamp(t, datetime.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def run(args: argparse.Namespace) -> int:
    store = AuthDir(args.dir)
    try:
        return _run(store, args)
    except AuthDirError as exc:
        print(f"shoal auth: {exc}", file=sys.stderr)
        return 1


def _run(store: AuthDir, args: argparse.Namespace) -> int:
    if args.auth_command == "init":
        key = store.init()
        print(f"auth dir: {store.dir}")
        print(f"admin API key (shown once; also in {store.dir / ADMIN_KEY}, mode 0600):")
        print(key)
        print(f"serve with: shoal serve <service> --auth-dir {store.dir}")
        return 0
    if args.auth_command == "key":
        if args.key_command == "create":
            record, key = store.create_key(args.role, args.name, args.expires_in)
            if args.json:
                print(json.dumps({**record.public(), "key": key}))
            else:
                print(f"key {record.id} ({record.role}, {record.name}); shown once:")
                print(key)
            return 0
        if args.key_command == "list":
            records = store.keys()
            if args.json:
                print(json.dumps([r.public() for r in records]))
                return 0
            print(f"{'ID':16}  {'ROLE':8}  {'STATE':7}  {'CREATED':20}  {'EXPIRES':20}  NAME")
            for r in records:
                print(
                    f"{r.id:16}  {r.role:8}  {r.state():7}  {_when(r.created_at):20}  "
                    f"{_when(r.expires_at):20}  {r.name}"
                )
            return 0
        if args.key_command == "revoke":
            for r in store.revoke(args.key):
                print(f"revoked {r.id} ({r.role}, {r.name})")
            return 0
    if args.auth_command == "secret":
        if args.secret_command == "rotate":
            print(
                f"new signing secret {store.rotate_secret()}; run `shoal auth secret retire` once every node has it"
            )
        else:
            print(f"retired {store.retire_secrets()} old secret(s)")
        return 0
    if args.auth_command == "node-token":
        print(issue_node_token(KeyTable(store.dir).secrets[0], args.node, args.ttl))
        return 0
    return 2
