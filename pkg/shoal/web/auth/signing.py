"""Node-to-node request signing: HMAC-SHA256 with the cluster secret, replay refused.

    headers = sign_request(secret, "PUT", "/chunks/abc?replica=1", body, node_id="storage-3")

The signature covers the method, the path (percent-decoded, as the server sees it), the raw
query string, the SHA-256 of the body, a timestamp and a random nonce, under a key derived from
the cluster secret (so a JWT and a request signature are never interchangeable). A verifier
accepts a timestamp within ±30 s of its clock and refuses a nonce it has already accepted
inside that window: a captured request cannot be replayed, altered or sent later.

The nonce cache is in memory, per process, bounded (`max_nonces`); when it is full of live
nonces new signed requests get 503 with Retry-After rather than forgetting a nonce (which would
re-open the replay). A replay sent to a *different* worker process of the same service within
30 s is not caught; see docs/security.md.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets as _secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Generator, Mapping
from urllib.parse import unquote

import httpx

from shoal.web.auth.roles import NODE_ROLE, AuthError, Principal

SCHEME = "SHOAL-HMAC-SHA256-V1"
WINDOW = 30.0
H_NODE = "x-shoal-node"
H_TIMESTAMP = "x-shoal-timestamp"
H_NONCE = "x-shoal-nonce"
H_BODY = "x-shoal-content-sha256"
H_SIGNATURE = "x-shoal-signature"
SIGNED_HEADERS = (H_NODE, H_TIMESTAMP, H_NONCE, H_BODY, H_SIGNATURE)
_NODE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$")
_NONCE = re.compile(r"^[A-Za-z0-9_-]{16,64}$")

Secrets = list[bytes] | Callable[[], list[bytes]]


def signing_key(cluster_secret: bytes) -> bytes:
    return hmac.new(cluster_secret, b"shoal request-signing v1", hashlib.sha256).digest()


def _canonical(
    method: str, path: str, query: str, timestamp: str, nonce: str, body_hash: str, node: str
) -> bytes:
    return "\n".join((SCHEME, method.upper(), path, query, timestamp, nonce, body_hash, node)).encode()


def _mac(cluster_secret: bytes, message: bytes) -> str:
    return hmac.new(signing_key(cluster_secret), message, hashlib.sha256).hexdigest()


def split_target(target: str) -> tuple[str, str]:
    """'/a%20b?x=1' -> ('/a b', 'x=1'): the path as an ASGI server decodes it, the query raw."""
    path, _, query = target.partition("?")
    return unquote(path), query


def sign_request(
    secret: bytes,
    method: str,
    path: str,
    body: bytes = b"",
    *,
    node_id: str = "node",
    now: float | None = None,
    nonce: str | None = None,
    body_sha256: str | None = None,
) -> dict[str, str]:
    """Headers that make this exact request verifiable; `path` is the request target as sent
    on the wire (query included). `body_sha256` (hex): a hash of the body the caller already
    has (a chunk's checksum), so a large body is not hashed again."""
    if not _NODE_ID.match(node_id):
        raise ValueError(f"node id {node_id!r} is not [A-Za-z0-9._:@-]{{1,128}}")
    timestamp = str(int(time.time() if now is None else now))
    nonce = nonce or _secrets.token_urlsafe(18)
    body_hash = body_sha256.lower() if body_sha256 is not None else hashlib.sha256(body).hexdigest()
    p, q = split_target(path)
    signature = _mac(secret, _canonical(method, p, q, timestamp, nonce, body_hash, node_id))
    return {
        H_NODE: node_id,
        H_TIMESTAMP: timestamp,
        H_NONCE: nonce,
        H_BODY: body_hash,
        H_SIGNATURE: signature,
    }


def is_signed(headers: Mapping[str, str]) -> bool:
    return H_SIGNATURE in headers


class NonceCache:
    """Nonces accepted in the last 2 windows, oldest first; bounded."""

    def __init__(self, ttl: float, max_size: int) -> None:
        self.ttl = ttl
        self.max_size = max_size
        self._seen: OrderedDict[str, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._seen)

    def add(self, nonce: str, now: float) -> bool:
        """True if new (and now remembered), False if seen. AuthError(503) when full."""
        seen = self._seen
        while seen:
            oldest, expiry = next(iter(seen.items()))
            if expiry > now:
                break
            del seen[oldest]
        if nonce in seen:
            return False
        if len(seen) >= self.max_size:
            raise AuthError(
                "too many signed requests in the replay window; retry shortly", 503, {"Retry-After": "1"}
            )
        seen[nonce] = now + self.ttl
        return True


class RequestVerifier:
    """Checks signed requests against the accepted cluster secrets (newest first)."""

    def __init__(self, secrets: Secrets, window: float = WINDOW, max_nonces: int = 200_000) -> None:
        self._secrets = secrets
        self.window = window
        # A timestamp up to `window` in the future stays acceptable until 2 windows from now.
        self.nonces = NonceCache(2 * window, max_nonces)

    def secrets(self) -> list[bytes]:
        return self._secrets() if callable(self._secrets) else self._secrets

    def verify(
        self,
        method: str,
        path: str,
        query: str | bytes,
        headers: Mapping[str, str],
        body: bytes,
        now: float | None = None,
    ) -> Principal:
        """The node principal of a valid signed request; AuthError(401) otherwise.

        `path` is the decoded path (ASGI scope["path"]), `query` the raw query string."""
        return self.verify_claim(method, path, query, headers, now, body=body)[0]

    def verify_claim(
        self,
        method: str,
        path: str,
        query: str | bytes,
        headers: Mapping[str, str],
        now: float | None = None,
        *,
        body: bytes | None = None,
    ) -> tuple[Principal, str]:
        """(principal, the body's signed SHA-256). Without `body` the body is not read: the caller
        MUST compare the hash with the body it receives (a chunk PUT checks it against the
        SHA-256 it computes for its record anyway), before it acts on the request."""
        try:
            node, timestamp, nonce, body_hash, signature = (headers[h] for h in SIGNED_HEADERS)
        except KeyError as exc:
            raise AuthError(f"signed request without the {exc.args[0]} header") from None
        if not _NODE_ID.match(node) or not _NONCE.match(nonce):
            raise AuthError("malformed node id or nonce in a signed request")
        body_hash = body_hash.lower()
        if len(body_hash) != 64 or body_hash.strip("0123456789abcdef"):
            raise AuthError("malformed body hash in a signed request")
        now = time.time() if now is None else now
        try:
            ts = int(timestamp)
        except ValueError:
            raise AuthError("signature timestamp is not an integer") from None
        if abs(now - ts) > self.window:
            raise AuthError(
                f"signature timestamp is outside the {self.window:g} s window (clock skew or a replay)"
            )
        if body is not None and not hmac.compare_digest(hashlib.sha256(body).hexdigest(), body_hash):
            raise AuthError("the body does not match its signed hash")
        if isinstance(query, bytes):
            query = query.decode("latin-1")
        message = _canonical(method, path, query, timestamp, nonce, body_hash, node)
        if not any(hmac.compare_digest(_mac(s, message), signature.lower()) for s in self.secrets()):
            raise AuthError("request signature does not verify")
        if not self.nonces.add(nonce, now):
            raise AuthError("replayed request: this nonce was already used")
        return Principal("node", node, NODE_ROLE, node, via="hmac"), body_hash


class SignedAuth(httpx.Auth):
    """httpx auth that signs every request as cluster node `node_id`.

        httpx.AsyncClient(auth=SignedAuth(secret, "uploader-1"))

    `secret` may be a callable (e.g. `KeyTable(...).secrets[0]` via a lambda) to follow rotation.
    """

    requires_request_body = True

    def __init__(self, secret: bytes | Callable[[], bytes], node_id: str) -> None:
        self.secret = secret
        self.node_id = node_id

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        secret = self.secret() if callable(self.secret) else self.secret
        target = request.url.raw_path.decode("ascii")
        request.headers.update(
            sign_request(secret, request.method, target, request.content, node_id=self.node_id)
        )
        yield request


class BearerAuth(httpx.Auth):
    """httpx auth sending an API key or a JWT as `Authorization: Bearer`."""

    def __init__(self, token: str) -> None:
        self.token = token

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = f"Bearer {self.token}"
        yield request
