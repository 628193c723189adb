"""The storage node registry and node health, from heartbeats the nodes push.

Status is computed from the age of the last heartbeat received (wall clock, so it survives a
restart of this service) against two thresholds:

    healthy   heartbeat within `degraded_after` (10 s: two 5 s heartbeat intervals) and disk < 90%
    degraded  heartbeat late (10-15 s), or disk usage >= 90%
    down      no heartbeat for more than `down_after` (15 s)

A node that keeps heartbeating is therefore never down, and one missed heartbeat (load, a
GC pause) does not make a healthy node flap: it takes two before it is even degraded.

Which nodes belong to the cluster is not this registry's call but the membership record's
(shoal.metadata.membership): new pieces go only to healthy *active* members.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from .membership import ACTIVE, Membership
from .records import NodeRecord
from .store import MetadataStore, iso

log = logging.getLogger("shoal.metadata")

HEALTHY, DEGRADED, DOWN = "healthy", "degraded", "down"
DISK_DEGRADED_PERCENT = 90.0


@dataclass(frozen=True)
class Thresholds:
    degraded_after: float = 10.0
    down_after: float = 15.0


class NodeRegistry:
    """Registered nodes, cached in memory and written through to the store."""

    def __init__(self, store: MetadataStore, thresholds: Thresholds | None = None) -> None:
        self.store = store
        self.thresholds = thresholds or Thresholds()
        self.nodes: dict[str, NodeRecord] = {}
        self.versions: dict[str, int] = {}  # kv version of each cached record
        self._lock = asyncio.Lock()
        self.membership = Membership(store.kv)

    async def load(self) -> None:
        async with self._lock:
            pairs = await self.store.node_versions()
            self.nodes = {n.node_id: n for n, _ in pairs}
            self.versions = {n.node_id: v for n, v in pairs}
        # nodes registered before membership existed become the first configuration
        await self.membership.load({n.node_id: n.node_url for n in self.nodes.values()})

    async def forget(self, node_id: str) -> None:
        """Drop a removed node's record (after membership removed it)."""
        async with self._lock:
            await self.store.kv.delete(f"/node/{node_id}")
            self.nodes.pop(node_id, None)
            self.versions.pop(node_id, None)

    def _put(self, node: NodeRecord, version: int) -> None:
        """Cache a record unless a newer one is cached already (another process wrote later)."""
        if version > self.versions.get(node.node_id, 0):
            self.nodes[node.node_id] = node
            self.versions[node.node_id] = version

    async def follow(self) -> None:
        """Keep the cache in step with records other metadata processes write to a shared store
        (--store etcd): a node heartbeats one of them, and every one must see it."""
        while True:
            try:
                async with self.store.kv.watch("/node/*") as events:
                    await self.load()  # after the watch opened, so no write falls in between
                    async for event in events:
                        if event.value is not None:
                            self._put(self.store.decode_node(event.value), event.version)
                        else:  # removed by another process
                            self.nodes.pop(event.key.rsplit("/", 1)[-1], None)
                        await self.membership.fresh()
            except asyncio.CancelledError:
                raise
            except Exception:  # a compacted or broken watch: reload and watch again
                log.exception("following node records failed; reloading")
                await asyncio.sleep(1.0)

    async def register(self, node_id: str, node_url: str, version: str) -> NodeRecord:
        async with self._lock:
            now = time.time()
            old = self.nodes.get(node_id)
            node = NodeRecord(
                node_id=node_id,
                node_url=node_url,
                version=version,
                registered_at=old.registered_at if old and old.node_url == node_url else now,
                last_heartbeat=now,
                disk_usage_percent=old.disk_usage_percent if old else 0.0,
                chunk_count=old.chunk_count if old else 0,
                heartbeats=old.heartbeats if old else 0,
            )
            self._put(node, await self.store.save_node(node))
            return node

    async def heartbeat(
        self, node_id: str, disk_usage_percent: float, chunk_count: int, corrupt: list[str]
    ) -> NodeRecord | None:
        """Record a heartbeat; None when the node is not registered (it will register again)."""
        async with self._lock:
            node = self.nodes.get(node_id)
            if node is None:
                return None
            node = NodeRecord(
                node_id=node.node_id,
                node_url=node.node_url,
                version=node.version,
                registered_at=node.registered_at,
                last_heartbeat=time.time(),
                disk_usage_percent=disk_usage_percent,
                chunk_count=chunk_count,
                corrupt_chunks=corrupt[:1000],
                heartbeats=node.heartbeats + 1,
            )
            self._put(node, await self.store.save_node(node))
            return node

    def status(self, node: NodeRecord, now: float | None = None) -> str:
        age = (now or time.time()) - node.last_heartbeat
        if age > self.thresholds.down_after:
            return DOWN
        if age > self.thresholds.degraded_after or node.disk_usage_percent >= DISK_DEGRADED_PERCENT:
            return DEGRADED
        return HEALTHY

    def down_for(self, node: NodeRecord, now: float | None = None) -> float:
        """Seconds since the node became down (0 if it is not)."""
        return max(0.0, (now or time.time()) - node.last_heartbeat - self.thresholds.down_after)

    def all(self) -> list[NodeRecord]:
        return sorted(self.nodes.values(), key=lambda n: n.node_id)

    def urls(self) -> list[str]:
        """The cluster: every registered node's URL (ChunkPaxos's phase-1 universe)."""
        return sorted({n.node_url for n in self.nodes.values()})

    def with_status(self, *statuses: str) -> list[NodeRecord]:
        now = time.time()
        return [n for n in self.all() if self.status(n, now) in statuses]

    def down_urls(self) -> set[str]:
        return {n.node_url for n in self.with_status(DOWN)}

    def by_url(self, url: str) -> NodeRecord | None:
        for n in self.nodes.values():
            if n.node_url == url:
                return n
        return None

    def member_state(self, node: NodeRecord) -> str | None:
        """'active', 'leaving', or None (not a member of the configuration this process knows)."""
        m = self.membership.config.members.get(node.node_id)
        return m.state if m is not None and m.node_url == node.node_url else None

    def eligible(self, *statuses: str) -> list[NodeRecord]:
        """Nodes with one of `statuses` that are active members: where new pieces may go."""
        return [n for n in self.with_status(*statuses) if self.member_state(n) == ACTIVE]

    def placement_candidates(self, exclude: set[str] = frozenset()) -> list[str]:  # type: ignore[assignment]
        """Healthy active-member node URLs for new pieces, least loaded first."""
        nodes = [n for n in self.eligible(HEALTHY) if n.node_url not in exclude]
        nodes.sort(key=lambda n: (n.chunk_count, n.disk_usage_percent, n.node_id))
        return [n.node_url for n in nodes]

    def describe(self, node: NodeRecord, now: float | None = None) -> dict:
        return {
            "node_url": node.node_url,
            "node_id": node.node_id,
            "status": self.status(node, now),
            "last_heartbeat": iso(node.last_heartbeat),
            "disk_usage_percent": node.disk_usage_percent,
            "chunk_count": node.chunk_count,
            "version": node.version,
            "seconds_since_heartbeat": round((now or time.time()) - node.last_heartbeat, 3),
            "corrupt_chunks": len(node.corrupt_chunks),
            "membership": self.member_state(node),
        }
