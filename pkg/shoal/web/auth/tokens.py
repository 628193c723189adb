"""Short-lived JWTs (HS256, PyJWT): what a client holds after trading its API key for a token.

PyJWT is the most used, maintained JWT library for Python; HS256 with a key derived from the
cluster secret needs no key distribution beyond the auth dir every service already reads.
(EdDSA would let verifiers hold only a public key; worth it once services run in different trust
domains, see docs/security.md.)

Claims: iss/aud "shoal", sub (key id or "node:<id>"), role, name, iat, exp, jti. A human token
names the API key it came from, and verification checks that key is still active, so revoking
a key ends its tokens within the same ~0.5 s as the key itself.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from typing import Any

import jwt

from shoal.web.auth.roles import NODE_ROLE, AuthError, Principal, check_role

ISSUER = "shoal"
AUDIENCE = "shoal"
ALGORITHM = "HS256"
DEFAULT_TTL = 900.0  # 15 minutes
MAX_TTL = 86400.0
LEEWAY = 5.0  # seconds of clock skew tolerated on exp/iat


def jwt_key(cluster_secret: bytes) -> bytes:
    """The token-signing key: derived, so a token can never double as a request signature."""
    return hmac.new(cluster_secret, b"shoal jwt v1", hashlib.sha256).digest()


def issue_token(
    cluster_secret: bytes,
    *,
    subject: str,
    role: str,
    name: str = "",
    ttl: float = DEFAULT_TTL,
    now: float | None = None,
) -> str:
    if role != NODE_ROLE:
        check_role(role)
    if not 0 < ttl <= MAX_TTL:
        raise ValueError(f"token ttl must be in (0, {MAX_TTL:g}] seconds")
    now = time.time() if now is None else now
    claims = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": subject,
        "role": role,
        "name": name,
        "iat": int(now),
        "exp": int(now + ttl),
        "jti": secrets.token_hex(8),
    }
    return jwt.encode(claims, jwt_key(cluster_secret), algorithm=ALGORITHM)


def issue_node_token(cluster_secret: bytes, node_id: str, ttl: float = DEFAULT_TTL) -> str:
    """A token for a cluster member that cannot sign each request (role `node`)."""
    return issue_token(cluster_secret, subject=f"node:{node_id}", role=NODE_ROLE, name=node_id, ttl=ttl)


def decode_token(token: str, cluster_secrets: list[bytes]) -> dict[str, Any]:
    """The claims of a valid token, trying each accepted secret; AuthError(401) otherwise."""
    last = "invalid token"
    for secret in cluster_secrets:
        try:
            return jwt.decode(
                token,
                jwt_key(secret),
                algorithms=[ALGORITHM],  # pinned: no "none", no algorithm confusion
                audience=AUDIENCE,
                issuer=ISSUER,
                leeway=LEEWAY,
                options={"require": ["exp", "iat", "sub", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise AuthError("token expired") from None
        except jwt.InvalidSignatureError:
            last = "token signature does not verify"
        except jwt.PyJWTError as exc:
            raise AuthError(f"invalid token: {exc}") from None
    raise AuthError(last)


def principal_from_claims(claims: dict[str, Any]) -> Principal:
    role = claims.get("role")
    sub = str(claims["sub"])
    if role == NODE_ROLE:
        if not sub.startswith("node:"):
            raise AuthError("invalid token: node role without a node subject")
        return Principal("node", sub[5:], NODE_ROLE, str(claims.get("name", "")), via="jwt")
    try:
        check_role(str(role))
    except ValueError:
        raise AuthError("invalid token: unknown role") from None
    return Principal("key", sub, str(role), str(claims.get("name", "")), via="jwt")
