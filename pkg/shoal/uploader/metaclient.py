"""The uploader's side of the metadata service API (spec: "Metadata Service API").

Every call retries network errors and 5xx with exponential backoff (the spec's retry rule);
a 4xx is an answer, raised at once as MetadataError with the service's {"detail"}. Every call
also has a deadline (`timeout`, retries included): a metadata service that accepts the
connection but never answers (SIGSTOP, a deadlock) costs a caller at most that long, then
MetadataError with status 0 and `timed_out`. POST /video carries a video id the uploader chose,
so a retried create (after a timeout) is the same create, never a second video.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx

MAX_UNANSWERED = 1024  # timed-out creates remembered for a retry (oldest forgotten first)


class MetadataError(RuntimeError):
    """The metadata service refused or could not be reached; `status` 0 means unreachable
    (`timed_out`: it took the connection but gave no answer within the deadline)."""

    def __init__(self, status: int, message: str, timed_out: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.timed_out = timed_out


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
        timeout: float = 5.0,
        commit_timeout: float = 30.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._own = client is None
        self.http = client or httpx.AsyncClient(timeout=httpx.Timeout(30.0, connect=3.0))
        self.retries = retries
        self.backoff = backoff
        self.timeout = timeout
        # a commit runs ChunkPaxos against the storage nodes: it may take longer than a lookup
        self.commit_timeout = max(timeout, commit_timeout)
        # video ids whose create timed out, by (title, duration): a retried upload reuses the id,
        # so the create that may still land when the service resumes is the same video
        self._unanswered: dict[tuple[str, float], str] = {}

    async def aclose(self) -> None:
        if self._own:
            await self.http.aclose()

    async def call(self, method: str, path: str, *, deadline: float | None = None, **kw: Any) -> Any:
        """JSON answer of one request, retried on network errors and 5xx, within `deadline` s
        (default `timeout`) in all."""
        url = self.base_url + path
        limit = self.timeout if deadline is None else deadline
        loop = asyncio.get_running_loop()
        end = loop.time() + limit
        last, status, timed_out = "", 0, False
        for attempt in range(self.retries + 1):
            if attempt:
                pause = self.backoff * 2 ** (attempt - 1)
                if loop.time() + pause >= end:
                    break
                await asyncio.sleep(pause)
            remaining = end - loop.time()
            if remaining <= 0:
                break
            try:
                async with asyncio.timeout(remaining):
                    r = await self.http.request(method, url, timeout=remaining, **kw)
            except (TimeoutError, httpx.TimeoutException):
                last = f"metadata service at {self.base_url}: no answer to {method} {path} within {limit:g} s"
                status, timed_out = 0, True
                continue
            except httpx.HTTPError as exc:
                last, status = f"metadata service unreachable at {self.base_url}: {exc!r}", 0
                continue
            if r.status_code < 400:
                return r.json() if r.content else None
            status, timed_out, last = (
                r.status_code,
                False,
                f"metadata service: {method} {path} -> {r.status_code}: {_detail(r)}",
            )
            if r.status_code < 500:
                break
        raise MetadataError(status, last, timed_out)

    async def create_video(self, title: str, duration_sec: float) -> str:
        """Create the record under an id chosen here: retries (ours, or a client's retried upload
        of the same title and duration after a timeout) create it once."""
        key = (title, duration_sec)
        video_id = self._unanswered.pop(key, None) or str(uuid.uuid4())
        body = {"title": title, "duration_sec": duration_sec, "video_id": video_id}
        try:
            answer = await self.call("POST", "/video", json=body)
        except MetadataError as exc:
            if exc.status == 0:  # it may have arrived and be created when the service resumes
                self._unanswered[key] = video_id
                while len(self._unanswered) > MAX_UNANSWERED:
                    self._unanswered.pop(next(iter(self._unanswered)))
            raise
        return answer["video_id"]

    async def redundancy_mode(self, video_id: str) -> str:
        body = await self.call("GET", f"/redundancy/recommend/{video_id}")
        return body["recommended_mode"]

    async def set_override(self, video_id: str, mode: str) -> None:
        await self.call("POST", f"/redundancy/override/{video_id}", params={"mode": mode})

    async def healthy_nodes(self) -> list[dict]:
        return await self.call("GET", "/nodes/healthy")

    async def commit(self, chunk_id: str, body: dict) -> dict:
        return await self.call("POST", f"/chunk/{chunk_id}/commit", json=body, deadline=self.commit_timeout)

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
