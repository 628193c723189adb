"""The end of a video's life: abandoned uploads become `failed`, failed and deleted videos lose
their chunks (pieces on the storage nodes, then the records).

Runs inside the maintenance pass (only in the holder of the maintenance lease, see
shoal.metadata.leftovers), in two steps:

- an `uploading` video with no progress (no chunk committed, no create) for `grace` seconds is
  marked `failed` (its uploader died, or gave up without saying so);
- every video queued for collection (/collect/{id}: failed or deleted) has each chunk's pieces
  deleted from its nodes (DELETE /chunk/{stored id}, a 404 counts as gone), then the chunk's
  record removed with the running sums; once no record is left the video leaves the queue.
  A piece on a node that is down cannot be deleted now: the record goes anyway once every
  reachable piece is gone, and that copy is left to the collection of never-committed copies
  (shoal.metadata.orphans) when the node returns. No new chunk can appear for a failed or
  deleted video: a commit checks the video's status in the same transaction that saves it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import httpx

from shoal.paxos.placement import pieces

from .chunks import ChunkService
from .nodes import NodeRegistry
from .records import ChunkRecord
from .store import MetadataStore, StatusConflict, UnknownVideo

log = logging.getLogger("shoal.metadata")


class VideoReaper:
    def __init__(
        self,
        store: MetadataStore,
        registry: NodeRegistry,
        chunks: ChunkService,
        client: httpx.AsyncClient,
        *,
        grace: float = 3600.0,
        allowed: Callable[[], bool] = lambda: True,
    ) -> None:
        self.store = store
        self.registry = registry
        self.chunks = chunks
        self.client = client
        self.grace = grace  # seconds without progress before an upload is abandoned
        self.allowed = allowed
        self.abandoned = 0  # uploads marked failed here
        self.pieces_deleted = 0
        self.chunks_removed = 0
        self.videos_collected = 0

    async def run(self, now: float | None = None) -> int:
        """One pass: mark abandoned uploads failed, collect queued videos; pieces deleted."""
        now = time.time() if now is None else now
        for video in await self.store.uploading():
            records = await self.store.video_chunks(video.video_id)
            last = max([video.status_at or video.created_ns / 1e9, *(r.committed_at for r in records)])
            if now - last < self.grace or not self.allowed():
                continue
            reason = f"abandoned: no progress for {now - last:.0f} s (upload grace {self.grace:g} s)"
            try:
                await self.store.fail_video(video.video_id, reason)
            except (StatusConflict, UnknownVideo):
                continue  # completed, failed or deleted meanwhile
            self.abandoned += 1
            log.info("video %s: %s", video.video_id, reason)
        before = self.pieces_deleted
        for video_id in await self.store.to_collect():
            if not self.allowed():
                break
            await self.collect(video_id)
        return self.pieces_deleted - before

    async def collect(self, video_id: str) -> bool:
        """Delete a failed or deleted video's chunks; True once none is left."""
        video = await self.store.video(video_id, deleted=True)
        if video is not None and video.status not in ("failed", "deleted"):
            await self.store.collected(video_id)  # queued by mistake (never happens): keep it
            return True
        left = 0
        for record in await self.store.video_chunks(video_id):
            if not await self._collect_chunk(record):
                left += 1
        if left:
            return False
        await self.store.collected(video_id)
        self.videos_collected += 1
        return True

    async def _collect_chunk(self, record: ChunkRecord) -> bool:
        down = self.registry.down_urls()
        async with self.chunks.lock(record.chunk_id):
            targets = [(u, s) for u, s, _ in pieces(record.placement, record.chunk_id) if u not in down]
            results = await asyncio.gather(*(self._delete(u, s) for u, s in targets))
            self.pieces_deleted += sum(1 for r in results if r == 204)
            if not all(r in (204, 404) for r in results) or not self.allowed():
                return False
            if await self.store.remove_chunk(record):
                self.chunks_removed += 1
        return True

    async def _delete(self, node_url: str, stored_id: str) -> int:
        try:
            r = await self.client.delete(f"{node_url}/chunk/{stored_id}")
        except httpx.HTTPError as exc:
            log.warning("collect %s on %s: %r", stored_id, node_url, exc)
            return 0
        return r.status_code
