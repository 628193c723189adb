"""Who is asking (a Principal) and what a route needs (a Requirement).

Human roles are ordered, each including the ones below it:

    viewer < uploader < operator < admin

- viewer: reads (GET of videos, keys, status, listings)
- uploader: viewer + uploads (the uploader's upload routes)
- operator: uploader + runs the cluster (nodes, instances, the manager, kv writes)
- admin: operator + manages credentials

`node` is not on that ladder: it is a cluster member (a storage node, the metadata service, the
uploader talking to storage) proven by the cluster secret, never by a human's key. A route
opens to nodes explicitly (`Requirement(..., nodes=True)` or `NODE`), and a human admin key does
not satisfy a node-only route: chunk writes and acceptor messages come from the cluster only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

ROLES: tuple[str, ...] = ("viewer", "uploader", "operator", "admin")
RANK: dict[str, int] = {role: i for i, role in enumerate(ROLES)}
NODE_ROLE = "node"


def check_role(role: str) -> str:
    """`role` if it is a human role; ValueError otherwise (CLI and key files)."""
    if role not in RANK:
        raise ValueError(f"unknown role {role!r}; one of {', '.join(ROLES)}")
    return role


@dataclass(frozen=True)
class Principal:
    """An authenticated caller. `via`: "key" (API key), "jwt" (token), "hmac" (signed request)."""

    kind: str  # "key" for a human API key holder, "node" for a cluster member
    id: str  # key id, or the node id
    role: str  # a human role, or "node"
    name: str = ""
    via: str = "key"

    @property
    def is_node(self) -> bool:
        return self.role == NODE_ROLE


@dataclass(frozen=True)
class Requirement:
    """What a route needs: at least `role` (None: nodes only), optionally nodes too.

    `credentials` narrows how the caller may prove itself (the token route takes API keys only,
    so a token cannot mint its own successor forever).
    """

    role: str | None = "viewer"
    nodes: bool = False
    credentials: frozenset[str] = field(default_factory=lambda: frozenset({"key", "jwt", "hmac"}))

    def __post_init__(self) -> None:
        if self.role is not None:
            check_role(self.role)
        if self.role is None and not self.nodes:
            raise ValueError("a requirement needs a role, nodes, or both")

    def allows(self, p: Principal) -> bool:
        if p.via not in self.credentials:
            return False
        if p.is_node:
            return self.nodes
        return self.role is not None and RANK.get(p.role, -1) >= RANK[self.role]

    def describe(self) -> str:
        parts = [f"{self.role} or above"] if self.role else []
        if self.nodes:
            parts.append("a cluster node")
        return " or ".join(parts)


VIEWER = Requirement("viewer")
UPLOADER = Requirement("uploader")
OPERATOR = Requirement("operator")
ADMIN = Requirement("admin")
NODE = Requirement(None, nodes=True)


class AuthError(Exception):
    """A refused credential: 401 (who are you?), 403 (not allowed), 429 or 503, with headers."""

    def __init__(self, message: str, status: int = 401, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.headers = headers
