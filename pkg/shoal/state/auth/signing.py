"""Per-request signatures (scripts and nodes): what is signed, and the headers that carry it.

The signed text binds the audience (which cluster, and which node of it or any node), the
method, the path with its query, the body's SHA-256, a timestamp and a single-use nonce, so a
captured request can be neither altered, nor replayed, nor sent to another cluster or node:

    shoal-<user|node>-request-v2
    <cluster id>:<target node key | any>
    POST
    /dns/create
    <sha256 hex of the body>
    1718000000
    <nonce>

Users sign it with `personal_sign` (EIP-191); nodes with their Ed25519 identity key. A request
for one node is refused by every other node (audience); its nonce is remembered by that node.
A request for `any` node has its nonce claimed on a majority of the trusted nodes before it is
served (shoal.crdt.reserve), so a replay is refused on every node, including those that did not
see the first request.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from urllib.parse import unquote

ADDRESS = "x-shoal-address"
TIMESTAMP = "x-shoal-timestamp"
NONCE = "x-shoal-nonce"
SIGNATURE = "x-shoal-signature"
NODE_KEY = "x-shoal-node-key"
NODE_SIGNATURE = "x-shoal-node-signature"
AUDIENCE = "x-shoal-audience"
ANY = "any"

WINDOW = 300  # seconds a signed request's timestamp may be off from the server's clock
CLUSTER_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def target(path: str, query: str = "") -> str:
    """The request target as signed: the decoded path, then '?' and the raw query if any."""
    return path + ("?" + query if query else "")


def target_of_url(raw_path: bytes) -> str:
    """The signed target of a URL's raw path (bytes after the host, query included)."""
    path, _, query = raw_path.decode("latin-1").partition("?")
    return target(unquote(path), query)


def audience(cluster_id: str, node: str = ANY) -> str:
    """The audience header value: a cluster id and a node key (base64, as /status shows it) or any."""
    return f"{cluster_id}:{node}"


def parse_audience(value: str) -> tuple[str, str]:
    """(cluster id, node key or 'any'); ValueError when it is not of that form."""
    cluster, sep, node = value.partition(":")
    if not sep or not CLUSTER_ID.match(cluster) or not node or len(node) > 64:
        raise ValueError("the audience is '<cluster id>:<node key | any>'")
    return cluster, node


def request_message(
    who: str, method: str, request_target: str, body: bytes, timestamp: int, nonce: str, aud: str
) -> bytes:
    digest = hashlib.sha256(body).hexdigest()
    return (
        f"shoal-{who}-request-v2\n{aud}\n{method.upper()}\n{request_target}\n{digest}\n{timestamp}\n{nonce}"
    ).encode()


def fresh_nonce() -> str:
    return secrets.token_hex(16)


def now() -> int:
    return int(time.time())
