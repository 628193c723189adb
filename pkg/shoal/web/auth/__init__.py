"""shoal.web.auth: the one authentication layer every shoal service uses.

- `store`: the auth dir (`shoal auth init`): cluster secret(s), API keys stored hashed, re-read
  by every process within 0.5 s of a change (revocation)
- `tokens`: short-lived HS256 JWTs (PyJWT) traded for an API key at POST /auth/token
- `signing`: node-to-node HMAC request signatures with a 30 s window and replay refusal, and
  httpx auth classes for clients
- `ratelimit`: token buckets per client IP and per credential (429 + Retry-After)
- `middleware`: `AuthLayer` (policy per route, OpenAPI `security`, the ASGI middleware)
- `options`: `add_auth_arguments(parser)` and `check_startup(options, service)`

See docs/security.md for the threat model, the roles and how a service is wired.
"""

from shoal.web.auth.middleware import (
    PRINCIPAL,
    AuthLayer,
    AuthMiddleware,
    AuthSettings,
    Policy,
    by_method,
    principal,
)
from shoal.web.auth.options import add_auth_arguments, check_startup, is_loopback
from shoal.web.auth.ratelimit import Rate, RateLimiter
from shoal.web.auth.roles import (
    ADMIN,
    NODE,
    NODE_ROLE,
    OPERATOR,
    ROLES,
    UPLOADER,
    VIEWER,
    AuthError,
    Principal,
    Requirement,
)
from shoal.web.auth.signing import BearerAuth, RequestVerifier, SignedAuth, sign_request
from shoal.web.auth.store import AuthDir, AuthDirError, KeyTable
from shoal.web.auth.tokens import decode_token, issue_node_token, issue_token

__all__ = [
    "ADMIN",
    "NODE",
    "NODE_ROLE",
    "OPERATOR",
    "PRINCIPAL",
    "ROLES",
    "UPLOADER",
    "VIEWER",
    "AuthDir",
    "AuthDirError",
    "AuthError",
    "AuthLayer",
    "AuthMiddleware",
    "AuthSettings",
    "BearerAuth",
    "KeyTable",
    "Policy",
    "Principal",
    "Rate",
    "RateLimiter",
    "RequestVerifier",
    "Requirement",
    "SignedAuth",
    "add_auth_arguments",
    "by_method",
    "check_startup",
    "decode_token",
    "is_loopback",
    "issue_node_token",
    "issue_token",
    "principal",
    "sign_request",
]
