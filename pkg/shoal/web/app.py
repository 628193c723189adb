"""The app factory every service uses: routing, envelopes, limits, OpenAPI, health, metrics, logs."""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from shoal import __version__
from shoal.web.api import Api, Endpoint, starlette_route
from shoal.web.errors import DETAIL_ENVELOPE, ApiError, Envelope
from shoal.web.fastpath import RawRouter, respond_error
from shoal.web.jsonio import JSONResponse
from shoal.web.metrics import HttpMetrics
from shoal.web.openapi import build_openapi
from shoal.web.proxy import ROOT_PATH

log = logging.getLogger("shoal.web")
access = logging.getLogger("shoal.access")

DEFAULT_MAX_BODY = 1 << 20
MAX_TARGET = 8192  # bytes of path + query; longer is 414 here, in the service's envelope


class MethodTable:
    """Every method each documented path answers, raw routes included, for a complete `Allow`
    on 405 (Starlette's own lists only the first route that matched the path)."""

    def __init__(self, endpoints: list[Endpoint], extra: dict[str, list[str]]) -> None:
        rows = [(ep.path, ep.method, ep.path_schema) for ep in endpoints]
        rows += [(ep.path, "HEAD", ep.path_schema) for ep in endpoints if ep.method == "GET" and not ep.raw]
        rows += [(path, m, {}) for path, methods in extra.items() for m in [*methods, "HEAD"]]
        # a parameter's declared pattern narrows the path: /nodes/all is no /nodes/{node_id}
        self.rows = [
            (
                self._regex(path),
                method,
                {n: re.compile(s["pattern"]) for n, s in schema.items() if "pattern" in s},
            )
            for path, method, schema in rows
        ]

    @staticmethod
    def _regex(path: str) -> re.Pattern[str]:
        def param(m: re.Match[str]) -> str:
            return f"(?P<{m.group(1)}>{'.*' if m.group(2) == 'path' else '[^/]+'})"

        parts = re.split(r"({[a-zA-Z_]\w*(?::([a-z]+))?})", path)
        out, i = [], 0
        while i < len(parts):
            out.append(re.escape(parts[i]))
            if i + 1 < len(parts):
                out.append(param(re.match(r"{([a-zA-Z_]\w*)(?::([a-z]+))?}", parts[i + 1])))
            i += 3
        return re.compile("^" + "".join(out) + "$")

    def allowed(self, path: str) -> list[str]:
        found = set()
        for regex, method, patterns in self.rows:
            m = regex.match(path)
            if m and all(p.search(m.group(name)) for name, p in patterns.items()):
                found.add(method)
        return sorted(found)


class ShoalApp:
    """A plain ASGI app: raw hot routes first, then the Starlette router, both measured."""

    def __init__(
        self,
        starlette: Starlette,
        raw: RawRouter | None,
        envelope: Envelope,
        metrics: HttpMetrics,
        openapi: dict,
        access_log: bool,
    ) -> None:
        self.starlette = starlette
        self.raw = raw
        self.envelope = envelope
        self.metrics = metrics
        self.openapi = openapi
        self.access_log = access_log

    @property
    def state(self) -> Any:
        """Per-app state (services keep their stores and clients here)."""
        return self.starlette.state

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.starlette(scope, receive, send)
            return
        start = time.perf_counter()
        status = 0

        async def send_measured(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        scope["shoal.app"] = self
        method = scope["method"]
        if len(scope.get("raw_path") or scope["path"]) + len(scope.get("query_string", b"")) > MAX_TARGET:
            await respond_error(
                send_measured,
                self.envelope,
                ApiError(
                    414, f"request target longer than {MAX_TARGET} bytes", headers={"Connection": "close"}
                ),
            )
            self.metrics.observe(method, "<too long>", status, time.perf_counter() - start)
            return
        matched = self.raw.match(method, scope["path"]) if self.raw else None
        if matched is not None:
            handler, params, label = matched
            try:
                await handler(scope, receive, send_measured, **params)
            except ApiError as exc:
                if status == 0:
                    await respond_error(send_measured, self.envelope, exc)
            except Exception:
                log.exception("unhandled error", extra={"route": label, "method": method})
                if status == 0:
                    await respond_error(
                        send_measured, self.envelope, ApiError(500, "internal error; see the service log")
                    )
        else:
            await self.starlette(scope, receive, send_measured)
            label = scope.get("shoal.route", "<unmatched>")
        elapsed = time.perf_counter() - start
        self.metrics.observe(method, label, status, elapsed)
        if self.access_log:
            access.info(
                "request",
                extra={
                    "method": method,
                    "path": scope["path"],
                    "route": label,
                    "status": status,
                    "ms": round(elapsed * 1000, 3),
                },
            )


def create_app(
    *,
    title: str,
    apis: list[Api],
    version: str = __version__,
    description: str = "",
    envelope: Envelope = DETAIL_ENVELOPE,
    max_body: int = DEFAULT_MAX_BODY,
    lifespan: Callable | None = None,
    state: dict[str, Any] | None = None,
    access_log: bool | None = None,
) -> ShoalApp:
    """Build a service. Adds GET /health (unless declared), /openapi.json and /metrics."""
    endpoints: list[Endpoint] = [ep for api in apis for ep in api.endpoints]
    builtin = Api(tags=["service"])
    if not any(ep.method == "GET" and ep.path == "/health" for ep in endpoints):

        @builtin.get("/health", summary="Service health")
        async def health(request: Request) -> dict:
            return {"status": "healthy", "service": title, "version": version}

    metrics = HttpMetrics(title)
    documented = endpoints + builtin.endpoints
    openapi = build_openapi(title, version, documented, envelope, description)

    def render(error: ApiError) -> Response:
        return JSONResponse(envelope.render(error), status_code=error.status, headers=error.headers)

    methods = MethodTable(documented, {"/openapi.json": ["GET"], "/metrics": ["GET"]})

    async def http_exception(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        status, headers = exc.status_code, dict(exc.headers or {})
        if status in (404, 405):
            allow = methods.allowed(request.url.path)
            if allow:  # the path exists: the method is what is wrong (TRACE included)
                status, headers["Allow"] = 405, ", ".join(allow)
        message = {
            404: f"no route for {request.url.path}",
            405: f"method {request.method} not allowed; allowed: {headers.get('Allow', '')}",
        }
        return render(ApiError(status, message.get(status, str(exc.detail)), headers=headers or None))

    async def openapi_route(request: Request) -> Response:
        request.scope["shoal.route"] = "/openapi.json"
        prefix = request.scope.get(ROOT_PATH)  # behind a reverse proxy (shoal.web.proxy)
        return JSONResponse({**openapi, "servers": [{"url": prefix}]} if prefix else openapi)

    async def metrics_route(request: Request) -> Response:
        request.scope["shoal.route"] = "/metrics"
        return await metrics.endpoint(request)

    routes = [starlette_route(ep, render, max_body) for ep in documented if not ep.raw]
    routes += [
        Route("/openapi.json", openapi_route, methods=["GET"], include_in_schema=False),
        Route("/metrics", metrics_route, methods=["GET"], include_in_schema=False),
    ]
    starlette = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={HTTPException: http_exception},
    )
    for key, value in (state or {}).items():
        setattr(starlette.state, key, value)
    raw_endpoints = [ep for ep in documented if ep.raw]
    if access_log is None:
        access_log = os.environ.get("SHOAL_ACCESS_LOG", "1") not in ("0", "false", "no")
    app = ShoalApp(
        starlette,
        RawRouter(raw_endpoints) if raw_endpoints else None,
        envelope,
        metrics,
        openapi,
        access_log,
    )
    starlette.state.shoal_app = app
    return app
