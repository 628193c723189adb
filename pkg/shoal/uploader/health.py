"""What the uploader's /health says about its dependencies: the metadata service and the
storage nodes the metadata service lists as healthy.

A dependency that accepts connections but never answers (SIGSTOP, a deadlock) must show up as
`degraded` with a reason, and must not make /health itself hang: `shoal up` probes /health with
a 2 s timeout and restarts what does not answer, and the uploader is not at fault. So one probe
runs at a time, bounded by `timeout` s in all; its result is reused for `ttl` s, and while the
next one runs the previous one (if under STALE_MAX s old) answers at once. Without a recent
result /health waits at most WAIT_MAX s and then says the metadata service has not answered yet.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import httpx

HEALTHY = "healthy"
DEGRADED = "degraded"
STALE_MAX = 10.0  # seconds a previous report may answer while a new probe runs
WAIT_MAX = 1.0  # seconds /health waits for a probe when it has no recent report


@dataclass
class Report:
    status: str  # healthy | degraded
    metadata: str  # healthy | degraded | no answer | unreachable | error
    reasons: list[str] = field(default_factory=list)
    at: float = 0.0  # time.monotonic() when the probe finished

    @property
    def metadata_unusable(self) -> bool:
        """The metadata service would not take a write now (no answer, or its store is down)."""
        return self.metadata in ("no answer", "unreachable", DEGRADED)


class DependencyProbe:
    def __init__(
        self, metadata_url: str, http: httpx.AsyncClient, timeout: float = 2.0, ttl: float = 1.0
    ) -> None:
        self.metadata_url = metadata_url.rstrip("/")
        self.http = http
        self.timeout = timeout
        self.ttl = ttl
        self.last: Report | None = None
        self._running: asyncio.Task | None = None

    def fresh(self) -> Report | None:
        """The last report if it is at most `ttl` s old."""
        last = self.last
        return last if last is not None and time.monotonic() - last.at <= self.ttl else None

    async def report(self) -> Report:
        """The newest report; starts a probe when it is over `ttl` s old, and waits for it at
        most WAIT_MAX s, only when there is no report under STALE_MAX s old."""
        cached = self.fresh()
        if cached is not None:
            return cached
        if self._running is None or self._running.done():
            self._running = asyncio.create_task(self._probe(), name="shoal-uploader-health")
        last = self.last
        if last is not None and time.monotonic() - last.at <= STALE_MAX:
            return last
        wait = min(self.timeout, WAIT_MAX)
        try:
            async with asyncio.timeout(wait):
                return await asyncio.shield(self._running)
        except TimeoutError:
            why = f"metadata service: no answer within {wait:g} s yet ({self.metadata_url})"
            return Report(DEGRADED, "no answer", [why], time.monotonic())

    async def _probe(self) -> Report:
        loop = asyncio.get_running_loop()
        end = loop.time() + self.timeout
        reasons: list[str] = []
        try:
            state, nodes = await self._metadata(reasons)
            remaining = end - loop.time()
            if nodes and remaining > 0.05:
                reasons += await self._nodes(nodes, remaining)
        except Exception as exc:  # a probe that fails is a degraded report, never a 500
            state = "error"
            reasons.append(f"dependency check failed: {exc!r}")
        report = Report(HEALTHY if not reasons else DEGRADED, state, reasons, time.monotonic())
        self.last = report
        return report

    async def _metadata(self, reasons: list[str]) -> tuple[str, list[str]]:
        """The metadata service's state and the nodes it lists as healthy."""
        base = self.metadata_url
        try:
            async with asyncio.timeout(self.timeout):
                health, listed = await asyncio.gather(
                    self.http.get(base + "/health", timeout=self.timeout),
                    self.http.get(base + "/nodes/healthy", timeout=self.timeout),
                )
        except (TimeoutError, httpx.TimeoutException):
            reasons.append(f"metadata service: no answer within {self.timeout:g} s ({base})")
            return "no answer", []
        except httpx.HTTPError as exc:
            reasons.append(f"metadata service: unreachable at {base}: {type(exc).__name__}")
            return "unreachable", []
        if health.status_code != 200:
            reasons.append(f"metadata service: /health answered {health.status_code}")
            return "error", []
        try:
            body = health.json()
            urls = [str(n["node_url"]) for n in listed.json()] if listed.status_code == 200 else []
        except (ValueError, KeyError, TypeError):
            reasons.append("metadata service: /health answered something that is not its JSON")
            return "error", []
        if body.get("status") != HEALTHY:
            why = "; ".join(body.get("reasons") or []) or str(body.get("database_status", ""))
            reasons.append(f"metadata service: {body.get('status')}" + (f" ({why})" if why else ""))
            return DEGRADED, urls
        return HEALTHY, urls

    async def _nodes(self, urls: list[str], budget: float) -> list[str]:
        """Reasons for the listed-healthy storage nodes that do not answer /health in `budget` s."""

        async def one(url: str) -> str | None:
            try:
                async with asyncio.timeout(budget):
                    r = await self.http.get(url.rstrip("/") + "/health", timeout=budget)
            except (TimeoutError, httpx.TimeoutException):
                return f"storage node {url}: no answer within {budget:.1f} s (the metadata service lists it healthy)"
            except httpx.HTTPError as exc:
                return f"storage node {url}: unreachable ({type(exc).__name__}; the metadata service lists it healthy)"
            return None if r.status_code == 200 else f"storage node {url}: /health answered {r.status_code}"

        return [r for r in await asyncio.gather(*(one(u) for u in urls)) if r]
