"""Who is asking: a user (Ethereum address), a registered node, a platform API key (--auth-dir,
shoal.state.auth.platform), or the --insecure-dev stand-in."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass(slots=True)
class Principal:
    kind: Literal["user", "node", "key", "dev"]
    address: str | None = None  # users: EIP-55 checksum address
    node_id: str | None = None  # nodes: the id of the nodes entity whose key signed
    # filled in by Authenticator.resolve (looked up once per request, when a route needs it)
    role: Literal["user", "admin"] | None = None
    account_id: str | None = None
    peer_id: str | None = None
    resolved: bool = False
    trusted: bool = False  # nodes: their record was registered (or approved) by an admin
    identities: set[str] = field(default_factory=set)  # what owner / operator_id may equal
    # platform keys: the key's id and shoal role (viewer, uploader, operator, admin), and whether
    # it may read and write accounts (admin keys only: accounts carry State roles)
    key_id: str | None = None
    key_role: str | None = None
    accounts: bool = True

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    @property
    def label(self) -> str:
        """The author recorded on operations."""
        if self.kind == "user":
            return f"user:{self.address}"
        if self.kind == "node":
            return f"node:{self.node_id}"
        if self.kind == "key":
            return f"key:{self.key_id}"
        return "dev"


DEV = Principal("dev", role="admin", resolved=True)
