"""Typed route declarations: the one place a service says what it accepts and returns.

    api = Api(tags=["peers"])

    @api.post("/peers/create", body=PeerCreate, response=PeerCreated)
    async def create_peer(request, body: PeerCreate) -> PeerCreated: ...

The same declaration drives validation (msgspec), the JSON encoding (orjson), the error
envelope and the OpenAPI document. `Api.raw` declares a hot route served as plain ASGI,
ahead of the router, still documented in OpenAPI.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from shoal.web.errors import CLOSE, ApiError
from shoal.web.jsonio import JSONResponse, convert, parse_json

log = logging.getLogger("shoal.web")

Handler = Callable[..., Awaitable[Any]]
RawHandler = Callable[..., Awaitable[None]]

_PARAM = re.compile(r"{([a-zA-Z_][a-zA-Z0-9_]*)(?::[a-z]+)?}")


def openapi_path(path: str) -> str:
    """'/x/{id:int}' -> '/x/{id}': Starlette convertors are not part of the public path."""
    return _PARAM.sub(lambda m: "{" + m.group(1) + "}", path)


def path_params(path: str) -> list[str]:
    return _PARAM.findall(path)


@dataclass
class Endpoint:
    """One documented operation."""

    method: str
    path: str
    handler: Handler
    body: Any = None
    query: Any = None
    response: Any = None
    status: int = 200
    summary: str = ""
    description: str = ""
    tags: list[str] = field(default_factory=list)
    max_body: int | None = None
    timeout: float | None = 30.0
    media_type: str = "application/json"
    request_media_type: str | None = None
    extra_responses: dict[int, str] = field(default_factory=dict)
    raw: bool = False
    openapi_extra: dict = field(default_factory=dict)
    path_schema: dict[str, dict] = field(default_factory=dict)  # path parameter -> JSON Schema

    @property
    def doc(self) -> str:
        return self.summary or (self.handler.__doc__ or "").strip().split("\n")[0]


async def read_body(request: Request, limit: int) -> bytes:
    """The whole request body, refusing (413) anything over `limit` bytes before reading it all."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise ApiError(413, f"request body is {declared} bytes; the limit is {limit}", headers=CLOSE)
        except ValueError:
            raise ApiError(400, "Content-Length is not a number") from None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"request body exceeds the limit of {limit} bytes", headers=CLOSE)
        chunks.append(chunk)
    return b"".join(chunks)


class Api:
    """A group of endpoints; `create_app(apis=[...])` serves them."""

    def __init__(self, tags: list[str] | None = None) -> None:
        self.endpoints: list[Endpoint] = []
        self.tags = tags or []

    def route(self, method: str, path: str, **options: Any) -> Callable[[Handler], Handler]:
        def decorate(handler: Handler) -> Handler:
            options.setdefault("tags", self.tags)
            self.endpoints.append(Endpoint(method.upper(), path, handler, **options))
            return handler

        return decorate

    def get(self, path: str, **options: Any) -> Callable[[Handler], Handler]:
        return self.route("GET", path, **options)

    def post(self, path: str, **options: Any) -> Callable[[Handler], Handler]:
        return self.route("POST", path, **options)

    def put(self, path: str, **options: Any) -> Callable[[Handler], Handler]:
        return self.route("PUT", path, **options)

    def patch(self, path: str, **options: Any) -> Callable[[Handler], Handler]:
        return self.route("PATCH", path, **options)

    def delete(self, path: str, **options: Any) -> Callable[[Handler], Handler]:
        return self.route("DELETE", path, **options)

    def raw(self, method: str, path: str, **options: Any) -> Callable[[RawHandler], RawHandler]:
        """A plain-ASGI hot route: `async def h(scope, receive, send, **path_params)`.

        It is matched before the router and skips request parsing; it must send its own
        response (shoal.web.fastpath has helpers). It still appears in /openapi.json.
        """
        return self.route(method, path, raw=True, **options)


def single_values(request: Request) -> dict[str, str]:
    """The query as one value per name: a name given twice is a 400, not "the last one wins"
    (no query field of a shoal service is a list, and the OpenAPI says so)."""
    items = request.query_params.multi_items()
    out = dict(items)
    if len(out) != len(items):
        seen: set[str] = set()
        twice = sorted({k for k, _ in items if k in seen or seen.add(k)})
        raise ApiError(400, f"query parameter(s) given more than once: {', '.join(twice)}")
    return out


def starlette_route(ep: Endpoint, envelope_render: Callable[[ApiError], Response], max_body: int) -> Route:
    """Wrap a typed handler into a Starlette route that validates, encodes and renders errors."""
    limit = ep.max_body if ep.max_body is not None else max_body
    wants_body = ep.body is not None
    wants_query = ep.query is not None
    label = openapi_path(ep.path)

    async def endpoint(request: Request) -> Response:
        request.scope["shoal.route"] = label
        try:
            kwargs: dict[str, Any] = dict(request.path_params)
            if wants_query:
                kwargs["query"] = convert(single_values(request), ep.query, where="query")
            if wants_body:
                kwargs["body"] = convert(parse_json(await read_body(request, limit)), ep.body)
            if ep.timeout is None:
                result = await ep.handler(request, **kwargs)
            else:
                try:
                    async with asyncio.timeout(ep.timeout):
                        result = await ep.handler(request, **kwargs)
                except TimeoutError:
                    raise ApiError(504, f"request took longer than {ep.timeout:g} s") from None
        except ApiError as exc:
            return envelope_render(exc)
        except Exception:
            log.exception("unhandled error", extra={"route": label, "method": ep.method})
            return envelope_render(ApiError(500, "internal error; see the service log"))
        if isinstance(result, Response):
            return result
        return JSONResponse(result, status_code=ep.status)

    return Route(ep.path, endpoint, methods=[ep.method], name=f"{ep.method} {label}")
