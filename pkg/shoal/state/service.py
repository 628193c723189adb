"""`shoal serve state`: the State Service on port 3004.

shoal serve state --port 3004 --data-dir D [--store lmdb|sqlite|etcd] [--admin-address 0x...]
                  [--etcd URL[,URL...]] [--etcd-namespace NS] [--public-url URL]
                  [--insecure-dev | --auth-dir D] [--token-ttl SECONDS] [--no-fsync] [--auth-rate R/B]
                  [--peer URL ...] [--trust-node KEY ...] [--node-key-dir DIR] [--cluster-id ID]
                  (docs/crdt.md)

--auth-dir D (the dir `shoal auth init` made; `shoal up` passes DATA_ROOT/auth) also accepts the
platform's API keys and their JWTs as Bearer credentials (shoal.state.auth.platform).

--public-url is the URL clients use to reach this service: the sign-in message's domain and URI
come from it (never from a request's Host header).

With --store etcd, every State Service given the same etcd and namespace shares one store (one
consistent state, unique fields enforced by etcd transactions), so CRDT replication between them
would be redundant: it is off, and --peer / --trust-node are refused.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import hashlib
import logging
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from shoal.crdt.node import ReplicationNode, add_replication_arguments, load_signer
from shoal.kv import add_store_arguments
from shoal.state.auth.eth import is_address
from shoal.state.auth.middleware import AuthMiddleware
from shoal.state.auth.node_identity import NodeIdentity
from shoal.state.auth.platform import PlatformKeys
from shoal.state.auth.sessions import Authenticator
from shoal.state.auth.signing import CLUSTER_ID, NODE_SIGNATURE, SIGNATURE
from shoal.state.errors import StateError, unavailable
from shoal.state.models import AccountCreate
from shoal.state.store import StateStore, Write
from shoal.web import STATE_ENVELOPE
from shoal.web import create_app as build_app
from shoal.web import patterns as P
from shoal.web.auth.ratelimit import Rate, RateLimiter, client_bucket, retry_after
from shoal.web.auth.store import AuthDirError

TITLE = "State Service"
MAX_WORKERS = 1  # the CRDT replica (op log sequence, heads, registers) lives in this process
SWEEP_SECONDS = 60.0
MAX_BODY = 1 << 20

log = logging.getLogger("shoal.state")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_store_arguments(parser)  # --store lmdb|sqlite|etcd, --etcd URL[,URL], --etcd-namespace
    parser.add_argument("--admin-address", default=None, help="Ethereum address that is always an admin")
    parser.add_argument(
        "--insecure-dev", action="store_true", help="DISABLE authentication (local development only)"
    )
    parser.add_argument(
        "--auth-dir",
        default=None,
        help="auth dir from `shoal auth init`: its API keys (and their JWTs) are accepted as Bearer "
        "credentials beside Ethereum sign-in (admin keys are admins; see docs/state.md)",
    )
    parser.add_argument("--token-ttl", type=int, default=86_400, help="bearer token lifetime in seconds")
    parser.add_argument(
        "--no-fsync", action="store_true", help="no fsync per commit (survives a crash, not power loss)"
    )
    parser.add_argument(
        "--public-url",
        default=None,
        help="URL clients reach this service at (sign-in messages name its host; default "
        "http://127.0.0.1:PORT)",
    )
    parser.add_argument(
        "--auth-rate",
        default="5/20",
        help="sign-in requests (/auth/challenge, /auth/login) per second per client IP, as RATE/BURST "
        "(0: unlimited)",
    )
    add_replication_arguments(parser)


class StateContext:
    """What the routes share: configuration now, the store and authenticator once started."""

    def __init__(self, options: dict[str, Any]) -> None:
        self.data_dir = Path(options.get("data_dir") or "./shoal-data/state")
        self.backend: str = options.get("store") or "lmdb"
        self.etcd: str | None = options.get("etcd")
        self.etcd_namespace: str | None = options.get("etcd_namespace")
        if self.backend == "etcd":
            check_etcd_options(options)
        self.admin_address: str | None = options.get("admin_address")
        if self.admin_address and not is_address(self.admin_address):
            raise SystemExit(f"--admin-address {self.admin_address!r} is not an Ethereum address")
        self.insecure: bool = bool(options.get("insecure_dev"))
        self.platform: PlatformKeys | None = platform_keys(options)
        self.token_ttl = int(options.get("token_ttl") or 86_400)
        self.durable = not options.get("no_fsync")
        self.max_body = MAX_BODY
        self.public_url = (
            options.get("public_url") or f"http://127.0.0.1:{options.get('port') or 3004}"
        ).rstrip("/")
        self.siwe_domain = public_domain(self.public_url)
        self.cluster_id: str = options.get("cluster_id") or "shoal"
        if not CLUSTER_ID.match(self.cluster_id):
            raise SystemExit(f"--cluster-id {self.cluster_id!r}: 1-64 letters, digits, '.', '_' or '-'")
        rate = Rate.parse(options.get("auth_rate") or "5/20")
        self.limiters = {"challenge": RateLimiter(rate), "login": RateLimiter(rate)}
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.identity = NodeIdentity.load_or_create(options.get("node_key_dir") or self.data_dir)
        self.replication = ReplicationNode(options, load_signer(options, self.data_dir))
        self.store: StateStore = None  # type: ignore[assignment]  # set at startup
        self.auth: Authenticator = None  # type: ignore[assignment]

    async def start(self) -> None:
        self.store = await StateStore.open(
            self.data_dir, self.backend, self.durable, etcd=self.etcd, namespace=self.etcd_namespace
        )
        if self.backend == "etcd":
            self.replication.disable(ETCD_SHARED)
        else:
            await self.replication.start(self.store)  # every write becomes a signed op (shoal.crdt)
            if self.replication.peers:  # unique values are claimed on a majority first
                self.store.reserver = self.replication.reservations.reserve_unique
        self.auth = Authenticator(
            self.store, admin_address=self.admin_address, token_ttl=self.token_ttl,
            identity=self.identity, cluster=self.replication,
        )  # fmt: skip
        if self.admin_address:
            await self.ensure_admin_account(self.admin_address)

    async def ensure_admin_account(self, address: str) -> None:
        """The configured admin has an account with role admin (created by configuration, not a route)."""
        if await self.store.lookup("account", "ethereum_address", address):
            return
        body = AccountCreate(name="admin", ethereum_address=address, role="admin")
        # every node creates it under one id derived from the address: the same register on all
        # of them, so it needs no reservation round (and a node starts without its peers)
        account_id = "account-admin-" + hashlib.sha256(address.lower().encode()).hexdigest()[:16]
        try:
            await self.store.apply(
                Write("account", "create", "config", id=account_id, body=body, reserve=False)
            )
        except StateError as exc:  # another worker created it first
            if exc.status != 409:
                raise

    @property
    def ready(self) -> bool:
        """False while this node catches up with its peers after starting (shoal.crdt.node)."""
        return self.replication.ready

    def require_ready(self, what: str) -> None:
        if not self.replication.ready:
            p = self.replication.progress()
            raise unavailable(
                f"this node is catching up with its peers after starting ({p['peers_caught_up']} of "
                f"{p['peers']} read, {p['ops']} operations so far): {what} are refused until it has; "
                "see /health",
                "CATCHING_UP",
            )

    def limit(self, request: Any, route: str) -> None:
        """429 with Retry-After once a client IP exceeds --auth-rate on a sign-in route."""
        client = request.scope.get("client")
        wait = self.limiters[route].take(client_bucket(client[0] if client else None))
        if wait > 0:
            raise StateError(
                429, f"too many sign-in requests from this address; retry in {wait:.1f} s", "RATE_LIMITED",
                headers={"Retry-After": retry_after(wait)},
            )  # fmt: skip

    async def sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_SECONDS)
            try:
                await self.auth.sweep()
                if self.replication.journal is not None:
                    await self.replication.reservations.sweep()
            except Exception:
                log.exception("sweeping expired sessions failed")


ETCD_SHARED = "--store etcd: every State Service on this etcd namespace shares one store"


def public_domain(url: str) -> str:
    """The SIWE domain of a public URL: its host[:port]."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise SystemExit(f"--public-url {url!r}: expected http(s)://host[:port][/path]")
    return parts.netloc


def check_options(options: dict[str, Any]) -> None:
    """Refuse bad flag combinations before the server starts (see shoal.platform.services)."""
    if (options.get("store") or "lmdb") == "etcd":
        check_etcd_options(options)
    address = options.get("admin_address")
    if address and not is_address(address):
        raise SystemExit(f"--admin-address {address!r} is not an Ethereum address")
    platform_keys(options)


def platform_keys(options: dict[str, Any]) -> PlatformKeys | None:
    """The --auth-dir key table, or None; SystemExit saying what to run when it cannot be read,
    and for --insecure-dev beside it (open to all, or keys checked: not both)."""
    auth_dir = options.get("auth_dir")
    if not auth_dir:
        return None
    if options.get("insecure_dev"):
        raise SystemExit(
            "--insecure-dev disables authentication and --auth-dir turns API keys on: give one of them"
        )
    try:
        return PlatformKeys(auth_dir)
    except AuthDirError as exc:
        raise SystemExit(f"--auth-dir: {exc}") from None


def check_etcd_options(options: dict[str, Any]) -> None:
    """--store etcd needs endpoints, and replaces replication (refused with it, not ignored)."""
    if not options.get("etcd"):
        raise SystemExit("--store etcd needs --etcd http://host:2379[,http://host2:2379...]")
    if options.get("peer") or options.get("trust_node"):
        raise SystemExit(
            "--store etcd cannot be combined with --peer or --trust-node: State Services that share "
            "an etcd already share one consistent store, so there is nothing to replicate between "
            "them. Point every State Service at the same etcd (and --etcd-namespace) instead; "
            "replication with --peer is for nodes with their own lmdb or sqlite store."
        )


def warn_insecure() -> None:
    banner = "INSECURE DEV MODE: --insecure-dev DISABLES ALL AUTHENTICATION; every request is an admin"
    log.warning(banner)
    print(f"\n{'!' * 80}\n{banner}\n{'!' * 80}\n", file=sys.stderr, flush=True)


def create_app(options: dict[str, Any]) -> AuthMiddleware:
    """The ASGI app (the `shoal serve` entry point). The routes (shoal.state.api) sit above this
    module and import it, so they are imported here, when the app is built, not at import."""
    from shoal.state.api import build_api

    ctx = StateContext(options)
    if ctx.insecure:
        warn_insecure()

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        await ctx.start()
        sweeper = asyncio.create_task(ctx.sweep_forever())
        try:
            yield
        finally:
            sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeper
            await ctx.auth.close()
            await ctx.replication.stop()
            await ctx.store.close()

    inner = build_app(
        title=TITLE,
        apis=[build_api(ctx), trimmed_replication_status(ctx.replication.api())],
        envelope=STATE_ENVELOPE,
        max_body=MAX_BODY,
        lifespan=lifespan,
        state={"ctx": ctx},
        description="Peers, CIDRs, associations, DNS records, instances, nodes and accounts. "
        "Authenticate with POST /auth/challenge + /auth/login (Sign-In with Ethereum), then "
        "`Authorization: Bearer <token>`; or sign each request; with --auth-dir also "
        "`Authorization: Bearer <shoal API key or its JWT>` (see docs/state.md).",
    )
    document_security(inner.openapi)
    document_dns_values(inner.openapi)
    return AuthMiddleware(inner, ctx)


DNS_VALUES = [
    (["A"], P.IPV4, "an IPv4 address"),
    (["AAAA"], P.IPV6, "an IPv6 address"),
    (["CNAME", "NS", "PTR"], P.HOSTNAME, "a DNS name"),
    (["MX"], P.MX, "'PRIORITY HOST' or 'HOST'"),
    (["SRV"], P.SRV, "'PRIORITY WEIGHT PORT TARGET'"),
    (["TXT", "CAA"], None, "free text"),
]


def document_dns_values(doc: dict) -> None:
    """A DNS record's value depends on its type: the create schema is one variant per type."""
    schemas = doc["components"]["schemas"]
    base = schemas.get("DnsCreate")
    if base is None or "oneOf" in base:
        return
    variants = []
    for types, pattern, what in DNS_VALUES:
        v = copy.deepcopy(base)
        v["properties"]["record_type"] = {"enum": types}
        v["properties"]["value"] = {**v["properties"]["value"], "description": what}
        if pattern:
            v["properties"]["value"]["pattern"] = pattern
        v.pop("title", None)
        variants.append(v)
    schemas["DnsCreate"] = {"title": base.get("title", "DnsCreate"), "oneOf": variants}


OPEN_ROUTES = {
    ("get", "/health"),
    ("get", "/status"),
    ("get", "/replication/status"),
    ("post", "/auth/challenge"),
    ("post", "/auth/login"),
}
ANONYMOUS_STATUS = (
    "Open: anonymous callers see this node's own public key (peers address it by that key) and "
    "counters only: no trusted keys, peer keys, peer URLs or peer errors."
)


def document_security(doc: dict) -> None:
    """`security` on exactly the operations that need it: sign-in, health and status are open;
    the replication routes take node signatures; everything else a token or a signed request."""
    doc.setdefault("components", {})["securitySchemes"] = {
        "bearer": {"type": "http", "scheme": "bearer"},
        "signedRequest": {"type": "apiKey", "in": "header", "name": SIGNATURE},
        "nodeSignature": {"type": "apiKey", "in": "header", "name": NODE_SIGNATURE},
    }
    doc.pop("security", None)
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            if (method, path) in OPEN_ROUTES:
                op["security"] = []
            elif path.startswith("/replication/"):
                op["security"] = [{"nodeSignature": []}]
            else:
                op["security"] = [{"bearer": []}, {"signedRequest": []}, {"nodeSignature": []}]
                op["responses"].setdefault("401", {"description": "no or bad credentials"})


# this node's own public key stays: peers discover it here to name it as their audience
_PRIVATE_STATUS = ("trusted_nodes", "heads", "base", "snapshot_refused")


def trimmed_replication_status(api: Any) -> Any:
    """GET /replication/status stays open (monitoring polls it), but an anonymous caller gets
    no node keys, peer URLs or peer errors: what a cluster is made of is for its members."""
    for ep in api.endpoints:
        if ep.method == "GET" and ep.path == "/replication/status":
            full = ep.handler

            async def status(request: Any, _full: Any = full) -> dict:
                out = await _full(request)
                if request.scope.get("shoal.principal") is not None:
                    return out
                trimmed = {k: v for k, v in out.items() if k not in _PRIVATE_STATUS}
                trimmed["peers"] = [
                    {k: p[k] for k in ("lag", "caught_up", "last_sync_age") if k in p}
                    for p in out.get("peers", [])
                ]
                return trimmed

            ep.handler = status
            ep.description = ANONYMOUS_STATUS
    return api
