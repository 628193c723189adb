"""Raw ASGI routes that run ahead of the router, and the helpers they use to answer.

Measured here, a raw ASGI JSON answer is about 2x a Starlette route: worth it for chunk
GET/HEAD/PUT and /ping, not for the rest.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import orjson

from shoal.web.api import Endpoint, RawHandler, openapi_path
from shoal.web.errors import CLOSE, ApiError, Envelope

Headers = list[tuple[bytes, bytes]]


class RawRouter:
    """Match (method, path) against the raw endpoints with one regex each."""

    def __init__(self, endpoints: list[Endpoint]) -> None:
        self.routes: list[tuple[str, re.Pattern[str], RawHandler, str]] = []
        for ep in endpoints:
            pattern = "^" + re.sub(r"{([a-zA-Z_]\w*)(?::[a-z]+)?}", r"(?P<\1>[^/]+)", ep.path) + "$"
            self.routes.append((ep.method, re.compile(pattern), ep.handler, openapi_path(ep.path)))

    def match(self, method: str, path: str) -> tuple[RawHandler, dict[str, str], str] | None:
        for route_method, regex, handler, label in self.routes:
            if route_method == method:
                m = regex.match(path)
                if m:
                    return handler, m.groupdict(), label
        return None


async def respond(
    send: Callable,
    status: int,
    body: bytes = b"",
    headers: Headers | None = None,
    *,
    length: int | None = None,
) -> None:
    """Send a whole response. `length` overrides Content-Length (HEAD answers carry no body)."""
    hdrs = [(b"content-length", str(len(body) if length is None else length).encode())]
    if headers:
        hdrs.extend(headers)
    await send({"type": "http.response.start", "status": status, "headers": hdrs})
    await send({"type": "http.response.body", "body": body})


async def respond_json(send: Callable, status: int, obj: Any, headers: Headers | None = None) -> None:
    hdrs = [(b"content-type", b"application/json")]
    if headers:
        hdrs.extend(headers)
    await respond(send, status, orjson.dumps(obj), hdrs)


async def respond_error(send: Callable, envelope: Envelope, error: ApiError) -> None:
    extra = [(k.lower().encode(), v.encode()) for k, v in (error.headers or {}).items()]
    await respond_json(send, error.status, envelope.render(error), extra)


async def read_raw_body(scope: dict, receive: Callable, limit: int) -> bytes:
    """The whole body of a raw request; ApiError(413) past `limit` without reading it all."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                declared = int(value)
            except ValueError:
                raise ApiError(400, "Content-Length is not a number") from None
            if declared > limit:
                raise ApiError(413, f"request body is {declared} bytes; the limit is {limit}", headers=CLOSE)
            break
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ApiError(400, "client disconnected before sending the whole body")
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise ApiError(413, f"request body exceeds the limit of {limit} bytes", headers=CLOSE)
            parts.append(chunk)
        if not message.get("more_body", False):
            break
    return parts[0] if len(parts) == 1 else b"".join(parts)


def replay_body(body: bytes, receive: Callable) -> Callable:
    """A `receive` that hands the app a body already read (by an auth check), then the rest."""
    sent = False

    async def replay() -> dict:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def header(scope: dict, name: bytes) -> bytes | None:
    """A request header from a raw scope (`name` lower-case)."""
    for key, value in scope["headers"]:
        if key == name:
            return value
    return None
