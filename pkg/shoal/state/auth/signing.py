"""Per-request signatures (scripts and nodes): what is signed, and the headers that carry it.

The signed text binds the method, the path with its query, the body's SHA-256, a timestamp and
a single-use nonce, so a captured request can be neither altered nor replayed:

    shoal-<user|node>-request-v1
    POST
    /dns/create
    <sha256 hex of the body>
    1718000000
    <nonce>

Users sign it with `personal_sign` (EIP-191); nodes with their Ed25519 identity key.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from urllib.parse import unquote

ADDRESS = "x-shoal-address"
TIMESTAMP = "x-shoal-timestamp"
NONCE = "x-shoal-nonce"
SIGNATURE = "x-shoal-signature"
NODE_KEY = "x-shoal-node-key"
NODE_SIGNATURE = "x-shoal-node-signature"

WINDOW = 300  # seconds a signed request's timestamp may be off from the server's clock


def target(path: str, query: str = "") -> str:
    """The request target as signed: the decoded path, then '?' and the raw query if any."""
    return path + ("?" + query if query else "")


def target_of_url(raw_path: bytes) -> str:
    """The signed target of a URL's raw path (bytes after the host, query included)."""
    path, _, query = raw_path.decode("latin-1").partition("?")
    return target(unquote(path), query)


def request_message(
    who: str, method: str, request_target: str, body: bytes, timestamp: int, nonce: str
) -> bytes:
    digest = hashlib.sha256(body).hexdigest()
    return (
        f"shoal-{who}-request-v1\n{method.upper()}\n{request_target}\n{digest}\n{timestamp}\n{nonce}".encode()
    )


def fresh_nonce() -> str:
    return secrets.token_hex(16)


def now() -> int:
    return int(time.time())
