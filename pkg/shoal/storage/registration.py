"""The storage node's side of the metadata service: register, then heartbeat.

Per spec: POST /nodes/register?node_url=&node_id=&version=, then POST /nodes/{id}/heartbeat
with {"disk_usage_percent", "chunk_count"} every few seconds. The heartbeat also carries
"corrupt_chunks" (ids whose stored bytes failed their checksum) so the metadata service can
re-replicate them; a corruption found by a read triggers a heartbeat at once. The metadata
service may be down or not started yet: failures are logged, retried with backoff, and never
affect serving chunks. A 404 on heartbeat (the service forgot us) leads to registering again.

With an auth dir both calls are signed as this node (`auth`); the metadata service checks
that the node answers its health check before it registers it, so a refused registration
(the node was not listening yet) is retried within a second rather than after an interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable

import httpx

from shoal import __version__

log = logging.getLogger("shoal.storage")


class MetadataClient:
    def __init__(
        self,
        metadata_url: str,
        node_id: str,
        node_url: str,
        figures: Callable[[], dict],
        interval: float = 5.0,
        *,
        auth: httpx.Auth | None = None,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        self.metadata_url = metadata_url.rstrip("/")
        self.node_id = node_id
        self.node_url = node_url
        self.figures = figures
        self.interval = interval
        self.registered = False
        self.heartbeats_sent = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._client: httpx.AsyncClient | None = None
        self._auth = auth
        self._failures = 0
        self._verify = verify

    def start(self) -> None:
        self._client = httpx.AsyncClient(timeout=5.0, auth=self._auth, verify=self._verify)
        self._task = asyncio.create_task(self._run(), name="shoal-storage-heartbeat")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._client is not None:
            await self._client.aclose()

    def _backoff(self, delay: float) -> float:
        self._failures += 1
        if not self.registered:  # not registered yet: first retries come fast (0.25, 0.5, 1 s ...)
            return min(0.25 * 2 ** (self._failures - 1), 30.0)
        return min(max(delay * 2, 1.0), 30.0)

    def poke(self) -> None:
        """Send a heartbeat now (e.g. a corruption was just found)."""
        self._wake.set()

    async def _run(self) -> None:
        delay = self.interval
        while True:
            try:
                if not self.registered:
                    await self._register()
                await self._heartbeat()
                delay = self.interval
                self._failures = 0
            except (httpx.HTTPError, OSError) as exc:
                log.warning("metadata service %s unreachable: %s", self.metadata_url, exc)
                delay = self._backoff(delay)
            except _Rejected as exc:
                log.warning("metadata service answered %s", exc)
                delay = self._backoff(delay)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)

    async def _register(self) -> None:
        assert self._client is not None
        r = await self._client.post(
            f"{self.metadata_url}/nodes/register",
            params={"node_url": self.node_url, "node_id": self.node_id, "version": __version__},
        )
        if r.status_code >= 300:
            raise _Rejected(f"{r.status_code} to register: {r.text[:200]}")
        self.registered = True
        log.info("registered with metadata service %s as %s", self.metadata_url, self.node_id)

    async def _heartbeat(self) -> None:
        assert self._client is not None
        r = await self._client.post(
            f"{self.metadata_url}/nodes/{self.node_id}/heartbeat", json=self.figures()
        )
        if r.status_code == 404:
            self.registered = False
            raise _Rejected("404 to heartbeat; registering again")
        if r.status_code >= 300:
            raise _Rejected(f"{r.status_code} to heartbeat: {r.text[:200]}")
        self.heartbeats_sent += 1


class _Rejected(Exception):
    pass
