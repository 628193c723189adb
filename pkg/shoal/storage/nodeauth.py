"""Credentials of the video stack's cluster members, and the storage node's cheap checks.

Callers (uploader, metadata, storage nodes) hold `NodeCredentials`: the auth dir's key table
(so they follow secret rotation) and their node id. `httpx_auth()` signs every request;
`headers()` does it for aiohttp clients (the Paxos transport).

Why not `shoal.web.auth.SignedAuth` alone: a chunk PUT carries `X-Chunk-Checksum: sha256:...`,
a hash the caller has already computed, and the signature covers the same SHA-256. Here the
signer reuses it (hashing 2 MiB once, not once per replica again), and the storage node checks
the signature against the *claimed* hash before it reads the body, then compares the claim
with the SHA-256 it computes anyway for the record (`claimed_sha256`). A forged, expired or
replayed PUT is refused before a byte of its body is read.

`StorageAuthLayer` also remembers verified bearer credentials: a viewer's chunk GET costs a
dict lookup (plus the key's revocation state, also a dict lookup) after its first request.
The memory is dropped whenever the auth file is reloaded (rotation, revocation).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator
from typing import Any

import httpx
import jwt

from shoal.web.auth import signing, tokens
from shoal.web.auth.middleware import AuthLayer
from shoal.web.auth.roles import AuthError, Principal
from shoal.web.auth.store import KeyTable

CHUNK_CHECKSUM = "x-chunk-checksum"
CLAIMED = "shoal.claimed_sha256"  # scope key: the body hash a verified chunk PUT claims
_CACHE_MAX = 10_000


def _claimed_hash(checksum: str | None) -> str | None:
    if checksum and checksum.startswith("sha256:") and len(checksum) == 71:
        return checksum[7:].lower()
    return None


class NodeCredentials:
    """A cluster member's identity: the cluster secret (from the auth dir) and its node id."""

    def __init__(self, auth_dir: str, node_id: str) -> None:
        self.table = KeyTable(auth_dir)
        self.node_id = node_id

    @classmethod
    def from_options(cls, options: dict[str, Any], node_id: str) -> NodeCredentials | None:
        """None without --auth-dir (dev mode: nothing to sign with)."""
        auth_dir = options.get("auth_dir")
        return cls(auth_dir, node_id) if auth_dir else None

    def secret(self) -> bytes:
        return self.table.secrets[0]

    def headers(
        self, method: str, target: str, body: bytes = b"", body_sha256: str | None = None
    ) -> dict[str, str]:
        """Signature headers for one request; `target` is the path and query as sent."""
        return signing.sign_request(
            self.secret(), method, target, body, node_id=self.node_id, body_sha256=body_sha256
        )

    def httpx_auth(self) -> httpx.Auth:
        return NodeAuth(self)

    def token(self, ttl: float = tokens.DEFAULT_TTL) -> str:
        """A node JWT (for a client that cannot sign each request)."""
        return tokens.issue_node_token(self.secret(), self.node_id, ttl)


class NodeAuth(httpx.Auth):
    """Signs every request; a chunk PUT's X-Chunk-Checksum doubles as the signed body hash."""

    requires_request_body = True

    def __init__(self, creds: NodeCredentials) -> None:
        self.creds = creds

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        target = request.url.raw_path.decode("ascii")
        claimed = _claimed_hash(request.headers.get(CHUNK_CHECKSUM))
        request.headers.update(self.creds.headers(request.method, target, request.content, claimed))
        yield request


def auth_for(options: dict[str, Any], node_id: str) -> httpx.Auth | None:
    """httpx `auth=` for a service's clients (None without --auth-dir)."""
    creds = NodeCredentials.from_options(options, node_id)
    return creds.httpx_auth() if creds else None


class StorageAuthLayer(AuthLayer):
    """The storage node's AuthLayer: signed chunk PUTs checked before the body is read (the
    handler compares the hash), bearer credentials remembered after their first check."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._known: dict[str, tuple[Principal, float]] = {}
        self._known_for: list[bytes] | None = None

    async def authenticate(self, scope: dict, receive: Callable) -> tuple[Principal, Callable]:
        assert self.table is not None and self.verifier is not None
        hdrs = scope["headers"]
        signed = auth = None
        for k, v in hdrs:
            if k == b"x-shoal-signature":
                signed = v
            elif k == b"authorization":
                auth = v
        if signed is not None and scope["method"] == "PUT" and scope["path"].startswith("/chunk/"):
            headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in hdrs if k.startswith(b"x-shoal-")}
            query = scope.get("query_string", b"").decode("latin-1")
            p, scope[CLAIMED] = self.verifier.verify_claim("PUT", scope["path"], query, headers)
            return p, receive
        if signed is None and auth is not None:
            return await self._bearer(auth.decode("latin-1"), scope, receive)
        return await super().authenticate(scope, receive)

    async def _bearer(self, auth: str, scope: dict, receive: Callable) -> tuple[Principal, Callable]:
        assert self.table is not None
        generation = self.table.secrets  # a new list object whenever the auth file is reloaded
        if generation is not self._known_for:
            self._known.clear()
            self._known_for = generation
        hit = self._known.get(auth)
        if hit is not None:
            p, expires = hit
            if time.time() < expires:
                if p.kind == "key":
                    record = self.table.require_active(p.id)  # revoked or expired keys end here
                    if record.role != p.role:
                        raise AuthError("token role no longer matches its API key")
                return p, receive
            del self._known[auth]
        p, receive = await super().authenticate(scope, receive)
        expires = float("inf")
        if p.via == "jwt":
            credential = auth.strip().partition(" ")[2].strip()
            claims = jwt.decode(credential, options={"verify_signature": False})
            expires = float(claims.get("exp", 0))
        if len(self._known) >= _CACHE_MAX:
            self._known.clear()
        self._known[auth] = (p, expires)
        return p, receive
