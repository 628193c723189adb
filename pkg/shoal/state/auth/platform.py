"""The platform's API keys in the State Service (`--auth-dir D`, the dir `shoal auth init` made).

`shoal up` gives every service one credential store (shoal.web.auth: API keys and the JWTs
traded for them). With --auth-dir the State Service accepts those beside its own Ethereum
sign-in, signed requests and node keys, checked by shoal.web.auth's KeyTable (the same file, the
same 0.5 s reload, so `shoal auth key revoke` ends a key and its tokens here within ~0.5 s).

How a key's shoal role maps onto the State Service (docs/state.md, "Platform API keys"):

- admin: a State admin (everything, accounts included);
- operator: runs the platform, so it writes every kind but accounts (it registers nodes, which
  are trusted like an admin's); it neither reads nor writes accounts, which carry State roles:
  managing who is an admin is the admin's job, as on every other service;
- viewer, uploader: read every kind but accounts (what a trusted node reads); write nothing.
  The uploader role adds nothing here: the State Service has no uploads.

Cluster-node JWTs (`shoal auth node-token`) are refused: State nodes prove themselves with their
registered Ed25519 key.
"""

from __future__ import annotations

from pathlib import Path

from shoal.state.auth.principal import Principal
from shoal.state.errors import unauthorized
from shoal.web.auth.roles import AuthError
from shoal.web.auth.store import PREFIX, KeyTable

STATE_ROLE = {"admin": "admin", "operator": "admin", "uploader": "user", "viewer": "user"}


def is_platform_credential(token: str) -> bool:
    """An API key (shoal_<id>_<secret>) or a JWT (three dot-separated parts). The State Service's
    own tokens have one dot (claims.signature) or none (stored tokens of the previous kind)."""
    return token.startswith(PREFIX) or token.count(".") == 2


class PlatformKeys:
    """Checks platform credentials; answers State principals (401 in the State envelope)."""

    def __init__(self, auth_dir: str | Path) -> None:
        self.table = KeyTable(auth_dir)  # AuthDirError when it is not an auth dir

    def principal(self, credential: str) -> Principal:
        try:
            p = self.table.verify_bearer(credential)
        except AuthError as exc:
            raise unauthorized(f"platform credential refused: {exc.message}", "INVALID_API_KEY") from None
        if p.is_node:
            raise unauthorized(
                "cluster-node tokens are not State credentials: a node signs its requests with its "
                "registered Ed25519 key (docs/state.md)",
                "NODE_TOKEN_REFUSED",
            )
        return Principal(
            "key",
            role=STATE_ROLE[p.role],  # type: ignore[arg-type]
            resolved=True,
            key_id=p.id,
            key_role=p.role,
            accounts=p.role == "admin",
        )
