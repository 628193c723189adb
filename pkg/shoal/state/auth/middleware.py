"""Authenticate every HTTP request before routing: the principal goes into scope["shoal.principal"].

Bearer tokens (this service's, or with --auth-dir the platform's API keys and JWTs) are
checked without touching the body; signed requests (users' X-Shoal-Signature,
nodes' X-Shoal-Node-Signature) need the body's hash, so their body is read here (within the
body limit) and handed on to the app unchanged. Bad credentials are a 401 in the State envelope;
no credentials means anonymous (None), and each route decides whether that is enough.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from shoal.state.auth import signing
from shoal.state.auth.platform import is_platform_credential
from shoal.state.auth.principal import DEV
from shoal.state.errors import unauthorized
from shoal.web import STATE_ENVELOPE, ApiError, read_raw_body, respond_error
from shoal.web.fastpath import replay_body

if TYPE_CHECKING:
    from shoal.state.service import StateContext

log = logging.getLogger("shoal.state.auth")

INSECURE_HEADER = (b"x-shoal-insecure-dev", b"authentication is DISABLED (--insecure-dev)")


class AuthMiddleware:
    """Wraps the State Service's ASGI app."""

    def __init__(self, app: Any, ctx: StateContext) -> None:
        self.app = app
        self.ctx = ctx

    @property
    def openapi(self) -> dict:
        return self.app.openapi

    @property
    def state(self) -> Any:
        return self.app.state

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refused = unsupported_media_type(scope)
        if refused is not None:
            await respond_error(send, STATE_ENVELOPE, refused)
            return
        if self.ctx.insecure:
            scope["shoal.principal"] = DEV

            async def send_marked(message: dict) -> None:
                if message["type"] == "http.response.start":
                    message = {**message, "headers": [*message.get("headers", []), INSECURE_HEADER]}
                await send(message)

            await self.app(scope, receive, send_marked)
            return
        try:
            principal, receive = await self._authenticate(scope, receive)
        except ApiError as exc:
            await respond_error(send, STATE_ENVELOPE, exc)
            return
        except Exception:
            log.exception("authentication failed unexpectedly")
            await respond_error(send, STATE_ENVELOPE, ApiError(500, "internal error; see the service log"))
            return
        scope["shoal.principal"] = principal
        await self.app(scope, receive, send)

    async def _authenticate(self, scope: dict, receive: Callable) -> tuple[Any, Callable]:
        found: dict[bytes, bytes] = {}
        for name, value in scope["headers"]:
            if name in _WANTED:
                found[name] = value
        if not found:
            return None, receive
        auth = self.ctx.auth
        if len(found) == 1 and b"authorization" in found:  # the common case: a bearer token only
            value = found[b"authorization"]
            if value[:7].lower() == b"bearer " and len(value) > 7:
                return await self._bearer(value[7:].decode("latin-1").strip()), receive

        def text(name: str) -> str | None:
            raw = found.get(name.encode())
            return None if raw is None else raw.decode("latin-1").strip()

        node_sig = text(signing.NODE_SIGNATURE)
        user_sig = text(signing.SIGNATURE)
        if node_sig is not None or user_sig is not None:
            body = await read_raw_body(scope, receive, self.ctx.max_body)
            request_target = signing.target(scope["path"], scope.get("query_string", b"").decode("latin-1"))
            if node_sig is not None:
                principal = await auth.from_node_signature(
                    scope["method"], request_target, body, text(signing.NODE_KEY), text(signing.TIMESTAMP),
                    text(signing.NONCE), node_sig, text(signing.AUDIENCE),
                )  # fmt: skip
            else:
                principal = await auth.from_user_signature(
                    scope["method"], request_target, body, text(signing.ADDRESS), text(signing.TIMESTAMP),
                    text(signing.NONCE), user_sig or "", text(signing.AUDIENCE),
                )  # fmt: skip
            return principal, replay_body(body, receive)
        header = text("authorization")
        if header is None:
            return None, receive
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise unauthorized("Authorization must be 'Bearer <token>'", "INVALID_TOKEN")
        return await self._bearer(token.strip()), receive

    async def _bearer(self, token: str) -> Any:
        """A platform API key or JWT (with --auth-dir, shoal.state.auth.platform), else a token
        from this service's sign-in."""
        platform = self.ctx.platform
        if platform is not None and is_platform_credential(token):
            return platform.principal(token)
        return await self.ctx.auth.from_token(token)


def _is_json(media_type: bytes) -> bool:
    essence = media_type.split(b";", 1)[0].strip().lower()
    return essence == b"application/json" or (
        essence.startswith(b"application/") and essence.endswith(b"+json")
    )


def unsupported_media_type(scope: dict) -> ApiError | None:
    """415 for a body sent as something other than JSON: every State route with a body takes
    JSON (the replication routes, signed by nodes, carry their own encoding). No Content-Type
    at all is read as JSON."""
    if scope["method"] not in ("POST", "PUT", "PATCH") or scope["path"].startswith("/replication/"):
        return None
    for name, value in scope["headers"]:
        if name == b"content-type":
            if _is_json(value):
                return None
            shown = value.decode("latin-1")[:100]
            return ApiError(
                415,
                f"Content-Type {shown!r} is not supported: send application/json",
                "UNSUPPORTED_MEDIA_TYPE",
            )
    return None


_WANTED = {
    b"authorization",
    signing.SIGNATURE.encode(),
    signing.NODE_SIGNATURE.encode(),
    signing.ADDRESS.encode(),
    signing.NODE_KEY.encode(),
    signing.TIMESTAMP.encode(),
    signing.NONCE.encode(),
    signing.AUDIENCE.encode(),
}
