"""The auth layer a service wraps around its app: rate limits, authentication, roles per route.

    layer = AuthLayer.from_options(options, envelope=DETAIL_ENVELOPE)
    apis = layer.secure([make_api(...)], by_method(read=VIEWER, write=OPERATOR))
    app = create_app(title=..., apis=apis, envelope=DETAIL_ENVELOPE, ...)
    return layer.wrap(app)

`secure` asks the policy for each declared endpoint's Requirement (None: open), adds the
`POST /auth/token` and `GET /auth/whoami` routes, and records `security` on each operation;
`wrap` puts the middleware in front of the app (raw hot routes included) and adds the
securitySchemes to /openapi.json. Routes the service did not declare (/health, /openapi.json,
/metrics, 404s) stay open.

Per request, in this order: the requests in flight from the client's address (--max-conns-per-ip,
held until the app has answered), the client-IP bucket (before any credential is checked, so
guessing keys costs tokens too), the credential (HMAC signature, API key or JWT as Bearer),
the per-credential bucket (cluster nodes exempt), then the route's role. Refusals are 401 (no or
bad credentials, with WWW-Authenticate), 403 (wrong role) or 429 (Retry-After), always in the
service's own envelope. The principal is in scope["shoal.principal"] (`principal(request)`).

Without --auth-dir (loopback dev mode) nothing is checked and rate limits apply only when
given explicitly.
"""

from __future__ import annotations

import hmac
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

import msgspec
from starlette.requests import Request
from starlette.routing import compile_path

from shoal.web.api import Api, Endpoint
from shoal.web.auth import signing, tokens
from shoal.web.auth.limits import ConnectionLimiter, too_many_connections
from shoal.web.auth.ratelimit import Rate, RateLimiter, client_bucket, retry_after
from shoal.web.auth.roles import NODE_ROLE, OPERATOR, VIEWER, AuthError, Principal, Requirement
from shoal.web.auth.store import KeyTable
from shoal.web.errors import ApiError, Envelope
from shoal.web.fastpath import read_raw_body, replay_body, respond_error

log = logging.getLogger("shoal.auth")

PRINCIPAL = "shoal.principal"
DEFAULT_IP_RATE = Rate(1000, 2000)  # per client IP: far above what `shoal demo` sends
DEFAULT_KEY_RATE = Rate(500, 1000)  # per API key / token subject
DEFAULT_MAX_SIGNED_BODY = 64 << 20
DEFAULT_MAX_CONNS_PER_IP = 256  # requests in flight per client address (with --auth-dir)
OFF = Rate(0, 0)
WWW_AUTHENTICATE = {"WWW-Authenticate": 'Bearer realm="shoal"'}

SECURITY_SCHEMES = {
    "bearerAuth": {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT (POST /auth/token) or a shoal API key (shoal_<id>_<secret>)",
        "description": "An API key from `shoal auth key create`, or a short-lived token obtained with one.",
    },
    "nodeSignature": {
        "type": "apiKey",
        "in": "header",
        "name": "X-Shoal-Signature",
        "description": "Cluster nodes: HMAC-SHA256 with the cluster secret over method, path, query, body "
        "hash, X-Shoal-Timestamp (30 s window) and X-Shoal-Nonce (single use), by X-Shoal-Node "
        "(shoal.web.auth.signing).",
    },
}

Policy = Callable[[Endpoint], Requirement | None]


def by_method(read: Requirement | None = VIEWER, write: Requirement | None = OPERATOR) -> Policy:
    """GET/HEAD need `read`, every other method `write`."""
    return lambda ep: read if ep.method in ("GET", "HEAD") else write


def principal(request: Request | dict) -> Principal | None:
    """Who made this request (None in dev mode or on an open route)."""
    scope = request if isinstance(request, dict) else request.scope
    return scope.get(PRINCIPAL)


@dataclass
class AuthSettings:
    auth_dir: str | None = None
    ip_rate: Rate = OFF
    key_rate: Rate = OFF
    token_ttl: float = tokens.DEFAULT_TTL
    max_signed_body: int = DEFAULT_MAX_SIGNED_BODY
    window: float = signing.WINDOW
    max_conns_per_ip: int = 0

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> AuthSettings:
        auth_dir = options.get("auth_dir") or None
        ip, key = options.get("rate_limit_ip"), options.get("rate_limit_key")
        return cls(
            auth_dir=auth_dir,
            ip_rate=Rate.parse(ip) if ip is not None else (DEFAULT_IP_RATE if auth_dir else OFF),
            key_rate=Rate.parse(key) if key is not None else (DEFAULT_KEY_RATE if auth_dir else OFF),
            token_ttl=float(options.get("token_ttl") or tokens.DEFAULT_TTL),
            max_signed_body=int(options.get("max_signed_body") or DEFAULT_MAX_SIGNED_BODY),
            max_conns_per_ip=_max_conns(options.get("max_conns_per_ip"), auth_dir),
        )


class TokenQuery(msgspec.Struct, forbid_unknown_fields=True):
    ttl: Annotated[float, msgspec.Meta(gt=0, le=tokens.MAX_TTL)] | None = None


class TokenOut(msgspec.Struct):
    access_token: str
    token_type: str
    expires_in: int
    role: str
    key_id: str


class WhoAmI(msgspec.Struct):
    kind: str
    id: str
    role: str
    name: str
    via: str


TOKEN_REQUIREMENT = Requirement("viewer", credentials=frozenset({"key"}))


class AuthLayer:
    """One service's auth: settings, the key table, the verifier and the rules per route."""

    def __init__(self, settings: AuthSettings, envelope: Envelope) -> None:
        self.settings = settings
        self.envelope = envelope
        self.table = KeyTable(settings.auth_dir) if settings.auth_dir else None
        self.verifier = (
            signing.RequestVerifier(lambda: self.table.secrets, settings.window) if self.table else None
        )
        self.ip_limiter = RateLimiter(settings.ip_rate)
        self.key_limiter = RateLimiter(settings.key_rate)
        self.conn_limiter = ConnectionLimiter(settings.max_conns_per_ip)
        self.rules: list[tuple[str, re.Pattern[str], Requirement | None]] = []
        # bearer credentials a service accepts besides API keys and tokens (compute's --token),
        # checked here so that they pass the same limits as every other credential
        self.static_bearers: list[tuple[str, Principal]] = []

    @classmethod
    def from_options(cls, options: dict[str, Any], envelope: Envelope) -> AuthLayer:
        return cls(AuthSettings.from_options(options), envelope)

    @property
    def enabled(self) -> bool:
        return self.table is not None

    def secure(self, apis: list[Api], policy: Policy) -> list[Api]:
        """`apis` plus the token routes, each endpoint's requirement recorded and documented."""
        if not self.enabled:
            return apis
        apis = [*apis, self.token_api()]
        for api in apis:
            for ep in api.endpoints:
                req = TOKEN_REQUIREMENT if ep.path == "/auth/token" else policy(ep)
                if ep.path == "/auth/whoami":
                    req = Requirement("viewer", nodes=True)
                self.rules.append((ep.method, compile_path(ep.path)[0], req))
                if req is not None:
                    document(ep, req)
        return apis

    def requirement(self, method: str, path: str) -> tuple[bool, Requirement | None]:
        """(matched a declared route, its requirement); HEAD falls back to GET as Starlette does."""
        for candidate in (method, "GET") if method == "HEAD" else (method,):
            for m, regex, req in self.rules:
                if m == candidate and regex.match(path):
                    return True, req
        return False, None

    def token_api(self) -> Api:
        api = Api(tags=["auth"])
        layer = self

        @api.post("/auth/token", query=TokenQuery, response=TokenOut)
        async def issue(request: Request, query: TokenQuery) -> TokenOut:
            """Trade an API key (Authorization: Bearer <key>) for a short-lived JWT."""
            p = principal(request)
            assert p is not None and layer.table is not None
            ttl = min(query.ttl or layer.settings.token_ttl, tokens.MAX_TTL)
            record = layer.table.record(p.id)
            if record is not None and record.expires_at is not None:
                ttl = min(ttl, record.expires_at - time.time())
                if ttl <= 0:
                    raise ApiError(401, f"API key {p.id} is expired")
            token = tokens.issue_token(
                layer.table.secrets[0], subject=p.id, role=p.role, name=p.name, ttl=ttl
            )
            return TokenOut(token, "Bearer", int(ttl), p.role, p.id)

        @api.get("/auth/whoami", response=WhoAmI)
        async def whoami(request: Request) -> WhoAmI:
            """The caller as this service sees it (key id, role, how it proved itself)."""
            p = principal(request)
            assert p is not None
            return WhoAmI(p.kind, p.id, p.role, p.name, p.via)

        return api

    def wrap(self, app: Any) -> Any:
        """`app` behind the middleware (or `app` itself when there is nothing to check)."""
        s = self.settings
        if not self.enabled and not s.ip_rate.enabled and not s.key_rate.enabled and not s.max_conns_per_ip:
            return app
        doc = getattr(app, "openapi", None)
        if self.enabled and isinstance(doc, dict):
            doc.setdefault("components", {})["securitySchemes"] = SECURITY_SCHEMES
        return AuthMiddleware(app, self)

    async def authenticate(self, scope: dict, receive: Callable) -> tuple[Principal, Callable]:
        """The caller's principal (AuthError if none or bad) and the receive to pass on."""
        assert self.table is not None and self.verifier is not None
        headers = {
            k.decode("latin-1"): v.decode("latin-1")
            for k, v in scope["headers"]
            if k.startswith(b"x-shoal-") or k == b"authorization"
        }
        if signing.H_SIGNATURE in headers:
            body = await read_raw_body(scope, receive, self.settings.max_signed_body)
            p = self.verifier.verify(
                scope["method"], scope["path"], scope.get("query_string", b""), headers, body
            )
            return p, replay_body(body, receive)
        auth = headers.get("authorization")
        if auth is None:
            raise AuthError(
                "authentication required: send Authorization: Bearer <API key or token>",
                headers=WWW_AUTHENTICATE,
            )
        scheme, _, credential = auth.strip().partition(" ")
        credential = credential.strip()
        if scheme.lower() != "bearer" or not credential:
            raise AuthError(
                "the Authorization header must be `Bearer <API key or token>`", headers=WWW_AUTHENTICATE
            )
        for secret, static in self.static_bearers:
            if hmac.compare_digest(credential.encode(), secret.encode()):
                return static, receive
        return self.table.verify_bearer(credential), receive


def document(ep: Endpoint, req: Requirement) -> None:
    """Record the requirement in the operation's OpenAPI (security, x-shoal-role, 401/403/429)."""
    security: list[dict[str, list]] = [{"bearerAuth": []}]
    if req.nodes and "hmac" in req.credentials:
        security.append({"nodeSignature": []})
    ep.openapi_extra["security"] = security
    ep.openapi_extra["x-shoal-role"] = req.role or NODE_ROLE
    if req.nodes:
        ep.openapi_extra["x-shoal-nodes"] = True
    ep.description = (ep.description + "\n\n" if ep.description else "") + f"Requires {req.describe()}."
    ep.extra_responses.setdefault(401, "no or invalid credentials")
    ep.extra_responses.setdefault(403, "the credential's role is not enough for this route")
    ep.extra_responses.setdefault(429, "rate limited (see Retry-After)")


class AuthMiddleware:
    """ASGI middleware applying an AuthLayer; attribute access falls through to the app."""

    def __init__(self, app: Any, layer: AuthLayer) -> None:
        self.app = app
        self.layer = layer

    def __getattr__(self, name: str) -> Any:  # app.openapi, app.state, app.metrics ...
        if name == "app":
            raise AttributeError(name)
        return getattr(self.app, name)

    async def _refuse(self, scope: dict, send: Callable, error: ApiError, label: str) -> None:
        start = time.perf_counter()
        await respond_error(send, self.layer.envelope, error)
        metrics = getattr(self.app, "metrics", None)
        if metrics is not None:
            metrics.observe(scope["method"], label, error.status, time.perf_counter() - start)

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        layer = self.layer
        matched, req = layer.requirement(scope["method"], scope["path"])
        label = "<auth>" if matched else "<unmatched>"
        client = scope.get("client")
        address = client_bucket(client[0] if client else None)
        conns = layer.conn_limiter
        if not conns.enabled:
            await self._call(scope, receive, send, layer, req, label, address)
            return
        if not conns.acquire(address):
            await self._refuse(scope, send, too_many_connections(conns.limit), label)
            return
        try:
            await self._call(scope, receive, send, layer, req, label, address)
        finally:
            conns.release(address)

    async def _call(
        self,
        scope: dict,
        receive: Callable,
        send: Callable,
        layer: AuthLayer,
        req: Requirement | None,
        label: str,
        address: str,
    ) -> None:
        wait = layer.ip_limiter.take(address)
        if wait:
            await self._refuse(scope, send, _too_many("this client address", wait), label)
            return
        p: Principal | None = None
        if req is not None and layer.enabled:
            try:
                p, receive = await layer.authenticate(scope, receive)
            except AuthError as exc:
                log.info("refused: %s", exc.message, extra={"path": scope["path"], "status": exc.status})
                code = {401: "UNAUTHORIZED", 503: "SERVICE_UNAVAILABLE"}.get(exc.status)
                await self._refuse(
                    scope, send, ApiError(exc.status, exc.message, code, headers=exc.headers), label
                )
                return
            except ApiError as exc:  # the signed body was too big or cut short
                await self._refuse(scope, send, exc, label)
                return
            except Exception:
                log.exception("authentication failed unexpectedly")
                await self._refuse(scope, send, ApiError(500, "internal error; see the service log"), label)
                return
        if p is not None and not p.is_node:
            wait = layer.key_limiter.take(p.id)
            if wait:
                await self._refuse(scope, send, _too_many(f"API key {p.id}", wait), label)
                return
        if req is not None and layer.enabled:
            assert p is not None
            if not req.allows(p):
                how = "" if p.via in req.credentials else f" with {p.via} credentials"
                message = f"this route needs {req.describe()}{how}; {p.kind} {p.id} has role {p.role}"
                await self._refuse(scope, send, ApiError(403, message, "FORBIDDEN"), label)
                return
            scope[PRINCIPAL] = p
        await self.app(scope, receive, send)


def _max_conns(value: Any, auth_dir: str | None) -> int:
    if value is not None:
        return max(0, int(value))
    return DEFAULT_MAX_CONNS_PER_IP if auth_dir else 0


def _too_many(who: str, wait: float) -> ApiError:
    return ApiError(
        429,
        f"rate limit exceeded for {who}; retry in {retry_after(wait)} s",
        "TOO_MANY_REQUESTS",
        details=None,
        headers={"Retry-After": retry_after(wait)},
    )
