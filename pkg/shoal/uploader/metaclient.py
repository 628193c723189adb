"""The uploader's side of the metadata service API (spec: "Metadata Service API").

Every call retries network errors and 5xx with exponential backoff (the spec's retry rule);
a 4xx is an answer, raised at once as MetadataError with the service's {"detail"}.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx


class MetadataError(RuntimeError):
    """The metadata service refused or could not be reached; `status` 0 means unreachable."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
        return str(body.get("detail", body)) if isinstance(body, dict) else str(body)
    except ValueError:
        return response.text[:200] or response.reason_phrase


class MetadataClient:
    def __init__(
        self,
        base_url: str,
        client: httpx.AsyncClient | None = None,
        retries: int = 3,
        backoff: float = 0.2,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._own = client is None
        self.http = client or httpx.AsyncClient(timeout=httpx.Timeout(30.0, connect=3.0))
        self.retries = retries
        self.backoff = backoff

    async def aclose(self) -> None:
        if self._own:
            await self.http.aclose()

    async def call(self, method: str, path: str, **kw: Any) -> Any:
        """JSON answer of one request, retried on network errors and 5xx."""
        url = self.base_url + path
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                await asyncio.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                r = await self.http.request(method, url, **kw)
            except httpx.HTTPError as exc:
                last, status = f"metadata service unreachable at {self.base_url}: {exc!r}", 0
                continue
            if r.status_code < 400:
                return r.json() if r.content else None
            status, last = (
                r.status_code,
                f"metadata service: {method} {path} -> {r.status_code}: {_detail(r)}",
            )
            if r.status_code < 500:
                break
        raise MetadataError(status, last)

    async def create_video(self, title: str, duration_sec: float) -> str:
        body = await self.call("POST", "/video", json={"title": title, "duration_sec": duration_sec})
        return body["video_id"]

    async def redundancy_mode(self, video_id: str) -> str:
        body = await self.call("GET", f"/redundancy/recommend/{video_id}")
        return body["recommended_mode"]

    async def set_override(self, video_id: str, mode: str) -> None:
        await self.call("POST", f"/redundancy/override/{video_id}", params={"mode": mode})

    async def healthy_nodes(self) -> list[dict]:
        return await self.call("GET", "/nodes/healthy")

    async def commit(self, chunk_id: str, body: dict) -> dict:
        return await self.call("POST", f"/chunk/{chunk_id}/commit", json=body)

    async def manifest(self, video_id: str) -> dict:
        return await self.call("GET", f"/manifest/{video_id}")

    async def delete_video(self, video_id: str) -> bool:
        """Remove a failed video's record, if the service offers it (not in the spec): True if done."""
        try:
            await self.call("DELETE", f"/video/{video_id}")
        except MetadataError as exc:
            if exc.status in (404, 405):
                return False
            raise
        return True
