"""Collect leftover copies: pieces a storage node holds that no committed placement names.

A node that was down while its pieces were repaired elsewhere (or while a video migrated)
comes back with copies the committed placement no longer uses; a failed commit, or an upload
that committed fewer nodes than it wrote to, leaves some too. They are deleted here, and only
when deleting them can never lose data or disturb a commit in progress:

- the chunk has a committed record (copies of a chunk with none are left to
  shoal.metadata.orphans, which waits a much longer grace for an upload in flight);
- the copy is not a piece the committed placement puts on that node;
- it was seen as a leftover at least `grace` seconds ago, under the same epoch, and the
  placement was committed at least `grace` seconds ago (pieces written for a migration or
  repair not yet committed are named by the placement by then);
- no proposal for the chunk is running or failed in this process, and the node's own
  acceptor holds no state for an epoch newer than the committed one (a value a minority
  accepted may still be adopted, and must find its pieces);
- every piece of the committed placement is on its node, with the recorded checksum
  (so a leftover is never the last good copy: repair runs first, collection later).

Nodes are collected when they come back (down -> healthy), while they have leftovers
waiting for their grace, and every `interval` seconds for all healthy nodes. Only the holder
of the maintenance lease collects (`allowed`, checked again before every delete).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import httpx

from shoal.paxos.placement import ERASURE_TOTAL, parse_fragment_id, pieces

from .chunks import ChunkService
from .lifecycle import VideoReaper
from .nodes import DOWN, HEALTHY, NodeRegistry
from .orphans import OrphanCollector
from .records import ChunkRecord
from .store import MetadataStore

log = logging.getLogger("shoal.metadata")

PAGE = 10_000


class LeftoverCollector:
    """Finds and deletes leftover copies on storage nodes (see the module docstring)."""

    def __init__(
        self,
        store: MetadataStore,
        registry: NodeRegistry,
        chunks: ChunkService,
        client: httpx.AsyncClient,
        *,
        grace: float = 300.0,
        interval: float = 3600.0,
        orphan_grace: float = 86400.0,
        allowed: Callable[[], bool] = lambda: True,
    ) -> None:
        self.store = store
        self.registry = registry
        self.chunks = chunks
        self.client = client
        self.grace = grace
        self.interval = interval
        self.seen: dict[tuple[str, str], tuple[float, int]] = {}  # (node, id) -> (first seen, epoch)
        self.last_status: dict[str, str] = {}
        self.last_scan: dict[str, float] = {}
        self.last_full = time.time()
        self.deleted = 0
        self.allowed = allowed
        self.orphans = OrphanCollector(store, chunks, client, grace=orphan_grace, allowed=allowed)
        # abandoned uploads -> failed; failed and deleted videos' chunks (grace: --upload-grace)
        self.videos = VideoReaper(store, registry, chunks, client, allowed=allowed)

    def due(self, now: float | None = None) -> set[str]:
        """Node URLs to collect in this pass: returned, with leftovers pending, or all if due."""
        now = now or time.time()
        healthy = set()
        returned = set()
        for node in self.registry.all():
            status = self.registry.status(node, now)
            if status == HEALTHY:
                healthy.add(node.node_url)
                if self.last_status.get(node.node_url) == DOWN:
                    returned.add(node.node_url)
            self.last_status[node.node_url] = status
        # nodes with leftovers waiting: again once their grace may be over, not every pass
        again = max(self.grace / 2, 0.0)
        pending = {url for url, _ in self.seen if now - self.last_scan.get(url, 0.0) >= again}
        again = min(max(self.orphans.grace / 4, 0.2), 600.0)  # a waiting orphan, once it may be due
        pending |= {
            url
            for (url, _), at in self.orphans.due.items()
            if at <= now and now - self.last_scan.get(url, 0.0) >= again
        }
        todo = returned | pending
        if self.interval > 0 and now - self.last_full >= self.interval:
            self.last_full = now
            todo |= healthy
        return todo & healthy

    async def run(self, now: float | None = None) -> tuple[int, int]:
        """One pass over the nodes that are due; how many leftover and orphan copies were deleted
        (the pieces of failed and deleted videos, collected first, count as leftovers)."""
        reaped = 0
        try:
            reaped = await self.videos.run(now)
        except Exception as exc:  # the store or a node failing: the next pass tries again
            log.warning("collecting failed and deleted videos: %r", exc)
        urls = sorted(self.due(now))
        orphans_before = self.orphans.deleted
        done = await asyncio.gather(*(self.collect(u) for u in urls), return_exceptions=True)
        total = 0
        for url, n in zip(urls, done, strict=True):
            if isinstance(n, BaseException):
                log.warning("collecting leftovers on %s failed: %s", url, n)
            else:
                total += n
        orphans = self.orphans.deleted - orphans_before
        return total - orphans + reaped, orphans

    async def list_ids(self, node_url: str) -> dict[str, float | None] | None:
        """Every live id on the node with its stored time (GET /chunks, paginated; None where the
        node does not report it); None if the node cannot be listed."""
        ids: dict[str, float | None] = {}
        after = ""
        while True:
            try:
                r = await self.client.get(f"{node_url}/chunks", params={"after": after, "limit": PAGE})
            except httpx.HTTPError:
                return None
            if r.status_code != 200:
                return None
            body = r.json()
            times = body.get("stored_at") or {}
            for stored_id in body["chunk_ids"]:
                ids[stored_id] = times.get(stored_id)
            if not body.get("next_after"):
                return ids
            after = body["next_after"]

    async def collect(self, node_url: str) -> int:
        """Delete the leftover copies on one node that are safe to delete now."""
        self.last_scan[node_url] = time.time()
        ids = await self.list_ids(node_url)
        if ids is None:
            return 0
        now = time.time()
        by_chunk: dict[str, list[str]] = {}
        for stored_id in ids:
            chunk_id, index = parse_fragment_id(stored_id)
            if index is None or 0 <= index < ERASURE_TOTAL:  # anything else is not a piece
                by_chunk.setdefault(chunk_id, []).append(stored_id)
        listed = set(ids)
        for key in [k for k in self.seen if k[0] == node_url and k[1] not in listed]:
            del self.seen[key]  # gone by other means
        orphans: set[str] = set()
        deleted = 0
        for chunk_id, stored in by_chunk.items():
            record = await self.store.chunk(chunk_id)
            if record is None:  # never committed (yet): an upload may be in flight
                orphans.update(stored)
                deleted += await self.orphans.collect(node_url, chunk_id, {s: ids[s] for s in stored})
                continue
            keep = {s for u, s, _ in pieces(record.placement, chunk_id) if u == node_url}
            extra = [s for s in stored if s not in keep]
            for s in keep:
                self.seen.pop((node_url, s), None)
            ready = []
            for s in extra:
                first, epoch = self.seen.get((node_url, s), (now, record.epoch))
                if epoch != record.epoch:  # the placement moved on: start the clock again
                    first, epoch = now, record.epoch
                self.seen[(node_url, s)] = (first, epoch)
                if now - first >= self.grace and now - record.committed_at >= self.grace:
                    ready.append(s)
            if not ready or not await self._safe(node_url, record):
                continue
            latest = await self.store.chunk(chunk_id)
            if latest is None or latest.epoch != record.epoch or chunk_id in self.chunks.phases:
                continue  # moved on while we checked: look again next time
            if not self.allowed():
                continue  # the maintenance lease ran out: the next holder decides
            for s in ready:
                if await self._delete(node_url, s):
                    self.seen.pop((node_url, s), None)
                    deleted += 1
                    log.info("deleted leftover %s on %s (chunk at epoch %d)", s, node_url, record.epoch)
        self.orphans.forget(node_url, orphans)
        self.deleted += deleted
        return deleted

    async def _safe(self, node_url: str, record: ChunkRecord) -> bool:
        chunk_id = record.chunk_id
        if chunk_id in self.chunks.phases or self.chunks.lock(chunk_id).locked():
            return False  # a proposal for this chunk is running here, or failed
        try:
            r = await self.client.get(f"{node_url}/paxos/{chunk_id}")
        except httpx.HTTPError:
            return False
        if r.status_code != 200:
            return False
        if any(i["epoch"] > record.epoch for i in r.json().get("instances", [])):
            return False  # a newer instance exists: its value may name this copy
        held = await asyncio.gather(*(self._holds(u, s, c) for u, s, c in pieces(record.placement, chunk_id)))
        return all(held)

    async def _holds(self, node_url: str, stored_id: str, checksum: str) -> bool:
        """Whether the node has the piece with the checksum the placement records."""
        try:
            r = await self.client.head(f"{node_url}/chunk/{stored_id}")
        except httpx.HTTPError:
            return False
        etag = r.headers.get("etag", "").strip('"')
        return r.status_code == 200 and checksum == f"sha256:{etag}"

    async def _delete(self, node_url: str, stored_id: str) -> bool:
        try:
            r = await self.client.delete(f"{node_url}/chunk/{stored_id}")
        except httpx.HTTPError:
            return False
        return r.status_code in (204, 404)
