"""Background work: repair lost or corrupt pieces, and migrate videos between redundancy modes.

Both build the new pieces first, commit the new placement through ChunkPaxos (next epoch), and
only then delete the pieces the new placement no longer uses: a crash at any point leaves the
committed placement whole (at worst an orphan copy stays behind). Copies left on nodes that
were down at the time are collected later (shoal.metadata.leftovers). With several metadata
processes on one store, only the holder of the maintenance lease (shoal.metadata.lease) runs
a pass: two repairs of one chunk, or a repair next to a collection, would step on each other.

Decommission (DELETE /nodes/{id} marks a member `leaving`) is a repair of every piece the node
holds, read from anywhere (the leaving node included), then the node's removal from membership
once no committed placement names it. An erasure-coded chunk that cannot get 5 distinct healthy
nodes is repaired as 3 replicas instead (never two fragments of one stripe on one node), and
migrated back to the full code once 5 healthy active members exist again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field

from shoal.paxos import ERASURE, REPLICATION, REPLICATION_FACTOR, Placement, PlacementError
from shoal.paxos.placement import ERASURE_TOTAL, parse_fragment_id

from .chunks import ChunkService, CommitFailed
from .lease import Lease
from .leftovers import LeftoverCollector
from .mover import Mover, sha256_tag
from .nodes import NodeRegistry
from .records import ChunkRecord, ModeState
from .redundancy import Policy
from .store import MetadataStore

log = logging.getLogger("shoal.metadata")


@dataclass
class Counters:
    passes: int = 0
    migrated: int = 0
    repaired: int = 0
    failed: int = 0
    deleted_pieces: int = 0
    collected: int = 0  # leftover copies deleted from nodes that were down during a repair
    drained: int = 0  # chunks moved off leaving nodes
    removed_nodes: int = 0  # leaving nodes removed from membership once empty
    waiting_for_nodes: int = 0  # migrations to erasure coding put off: fewer than 5 healthy nodes
    skipped: int = 0  # loop ticks without a pass: another process holds the maintenance lease
    last_error: str = ""
    events: list[str] = field(default_factory=list)

    def note(self, text: str) -> None:
        self.events.append(f"{time.strftime('%H:%M:%S')} {text}")
        del self.events[:-50]


class NotLeader(Exception):
    """Another metadata process holds the maintenance lease."""

    def __init__(self, lease: Lease) -> None:
        cur = lease.current
        who = f"{cur.holder} (lease expires at {cur.expires_at:.1f})" if cur else "another process"
        super().__init__(f"maintenance runs in {who}; this process is {lease.holder}")


def default_lease_ttl(interval: float) -> float:
    """3 maintenance intervals (at least 1 s); 30 s when the loop is off (passes by hand)."""
    return max(3 * interval, 1.0) if interval > 0 else 30.0


class Maintenance:
    def __init__(
        self,
        store: MetadataStore,
        registry: NodeRegistry,
        chunks: ChunkService,
        mover: Mover,
        policy: Policy,
        *,
        interval: float = 10.0,
        repair_grace: float = 60.0,
        batch: int = 64,
        parallel: int = 4,
        gc_grace: float = 300.0,
        gc_interval: float = 3600.0,
        orphan_grace: float = 86400.0,
        lease_ttl: float | None = None,
    ) -> None:
        self.store = store
        self.registry = registry
        self.chunks = chunks
        self.mover = mover
        self.policy = policy
        self.interval = interval
        self.repair_grace = repair_grace
        self.batch = batch
        self.parallel = parallel
        self.counters = Counters()
        self.lease = Lease(store.kv, lease_ttl or default_lease_ttl(interval))
        self.collector = LeftoverCollector(
            store,
            registry,
            chunks,
            mover.client,
            grace=gc_grace,
            interval=gc_interval,
            orphan_grace=orphan_grace,
            allowed=self.lease.valid,
        )
        self.started = time.time()
        self._tasks: list[asyncio.Task] = []
        self._pass = asyncio.Lock()  # the loop and POST /maintenance/run never overlap

    def start(self) -> None:
        if self.interval > 0:
            self._tasks = [
                asyncio.create_task(self._keep(), name="shoal-metadata-lease"),
                asyncio.create_task(self._loop(), name="shoal-metadata-maintenance"),
            ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        async with self._pass:  # a pass by hand may still be running: let it end first
            with contextlib.suppress(Exception):  # the store may be gone; the lease then expires
                await self.lease.release()

    async def _keep(self) -> None:
        """Acquire or renew the lease every ttl/3, independent of how long a pass takes."""
        was = False
        while True:
            try:
                now = await self.lease.tick()
            except Exception as exc:  # store unreachable: our lease runs out by itself
                log.warning("maintenance lease: %s", exc)
                now = False
            if now != was:
                holder = self.lease.current.holder if self.lease.current else "nobody"
                self.counters.note(
                    "maintenance leader: this process" if now else f"maintenance led by {holder}"
                )
                was = now
            await asyncio.sleep(self.lease.ttl / 3)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            if not self.lease.valid():
                self.counters.skipped += 1
                continue
            try:
                await self.run_once()
            except NotLeader:
                self.counters.skipped += 1
            except Exception as exc:  # keep the loop alive; the next pass retries
                log.exception("maintenance pass failed")
                self.counters.last_error = f"{type(exc).__name__}: {exc}"

    async def run_once(self) -> None:
        """One pass, if this process holds (or can take) the lease; NotLeader otherwise."""
        async with self._pass:  # leftovers are judged between repairs, never during one
            if not self._tasks:  # no keeper task: take the lease for this pass only
                await self._run_by_hand()
                return
            if not self.lease.valid() and not await self.lease.tick():
                raise NotLeader(self.lease)
            await self._run_once()

    async def _run_by_hand(self) -> None:
        if not await self.lease.tick():
            raise NotLeader(self.lease)
        keeper = asyncio.create_task(self._renew_while_running())
        try:
            await self._run_once()
        finally:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper
            await self.lease.release()

    async def _renew_while_running(self) -> None:
        while True:
            await asyncio.sleep(self.lease.ttl / 3)
            with contextlib.suppress(Exception):
                await self.lease.tick()

    async def _run_once(self) -> None:
        self.counters.passes += 1
        await self.drain_pass()
        await self.repair_pass()
        await self.migrate_pass()
        if not self.lease.valid():  # lost while repairing: collection is for the holder only
            return
        collected, orphans = await self.collector.run()
        if collected:
            self.counters.collected += collected
            self.counters.note(f"deleted {collected} leftover copies")
        if orphans:
            self.counters.note(f"deleted {orphans} copies of chunks never committed")

    # -- decommission -------------------------------------------------------------------------
    async def drain_pass(self) -> None:
        """Move every piece off leaving members, then remove the empty ones from membership."""
        config = await self.registry.membership.fresh()
        sem = asyncio.Semaphore(self.parallel)
        for node_id, member in config.leaving().items():
            chunk_ids = (await self.store.chunks_on(member.node_url))[: self.batch]

            async def one(chunk_id: str, url: str = member.node_url) -> None:
                async with sem:
                    if await self.repair_chunk(chunk_id, {url}, readable={url}):
                        self.counters.drained += 1

            await asyncio.gather(*(one(c) for c in chunk_ids))
            await self.finish_leaving(node_id)

    async def finish_leaving(self, node_id: str) -> tuple[bool, int]:
        """Remove a leaving member whose pieces are all gone from committed placements; returns
        (removed, chunks still placed on it)."""
        config = await self.registry.membership.fresh()
        member = config.members.get(node_id)
        if member is None:
            return node_id in config.removed, 0
        if member.state != "leaving":
            return False, len(await self.store.chunks_on(member.node_url))
        left = len(await self.store.chunks_on(member.node_url))
        if left:
            return False, left
        await self.registry.membership.remove(node_id)
        await self.registry.forget(node_id)
        self.counters.removed_nodes += 1
        self.counters.note(
            f"node {node_id} ({member.node_url}) removed from the cluster: no piece left on it"
        )
        return True, 0

    # -- repair -------------------------------------------------------------------------------
    def _lost_nodes(self) -> set[str]:
        """Nodes down for longer than the grace period (and not within grace of our own start:
        nodes that heartbeat us get a fair chance to reach a restarted service), and removed
        nodes a placement still names (a commit that raced the removal)."""
        gone = set(self.registry.membership.config.gone)
        now = time.time()
        if now - self.started < self.registry.thresholds.down_after + self.repair_grace:
            return gone
        return gone | {
            n.node_url for n in self.registry.all() if self.registry.down_for(n, now) > self.repair_grace
        }

    async def repair_pass(self) -> None:
        work: dict[str, set[str]] = {}  # chunk id -> node URLs whose piece must be rebuilt
        for url in self._lost_nodes():
            for chunk_id in await self.store.chunks_on(url):
                work.setdefault(chunk_id, set()).add(url)
        corrupt: dict[str, list[tuple[str, str]]] = {}  # chunk id -> (node url, stored id)
        for node in self.registry.all():
            for stored_id in node.corrupt_chunks:
                chunk_id, _ = parse_fragment_id(stored_id)
                corrupt.setdefault(chunk_id, []).append((node.node_url, stored_id))
        for chunk_id, found in corrupt.items():
            record = await self.store.chunk(chunk_id)
            if record is None:
                continue
            placed = {(u, s) for u, s, _ in _pieces(record)}
            for url, stored_id in found:
                if (url, stored_id) in placed:
                    work.setdefault(chunk_id, set()).add(url)
        sem = asyncio.Semaphore(self.parallel)

        async def one(chunk_id: str, bad: set[str]) -> None:
            async with sem:
                await self.repair_chunk(chunk_id, bad)

        await asyncio.gather(*(one(c, b) for c, b in list(work.items())[: self.batch]))

    async def repair_chunk(self, chunk_id: str, bad: set[str], readable: set[str] = frozenset()) -> bool:  # type: ignore[assignment]
        """Rebuild the pieces `bad` nodes hold elsewhere (`readable`: bad nodes that may still be
        read from, a leaving node), commit the placement as the next epoch."""
        record = await self.store.chunk(chunk_id)
        if record is None:
            return False
        p = record.placement
        bad &= set(p.nodes)
        if not bad:
            return False
        targets = self.registry.placement_candidates(exclude=set(p.nodes) | bad)
        if len(targets) < len(bad):
            if p.mode == ERASURE:
                return await self._repair_as_replicas(record, bad, readable)
            self._fail(f"repair {chunk_id}: {len(bad)} pieces to rebuild, {len(targets)} spare healthy nodes")
            return False
        data = await self.mover.read_chunk(chunk_id, p, avoid=bad - readable)
        if data is None:
            self._fail(f"repair {chunk_id}: no intact copy could be read")
            return False
        swap = dict(zip(sorted(bad), targets, strict=False))
        if p.mode == REPLICATION:
            new_urls = [swap.get(u, u) for u in p.replicas]
            if not await self.mover.write_replicas(chunk_id, data, p.checksum, list(swap.values())):
                self._fail(f"repair {chunk_id}: could not write the new replicas")
                return False
            new = Placement(REPLICATION, p.checksum, p.size_bytes, replicas=new_urls)
        else:
            urls = [swap.get(f.node_url, f.node_url) for f in sorted(p.fragments, key=lambda f: f.index)]
            redo = {i for i, f in enumerate(sorted(p.fragments, key=lambda f: f.index)) if f.node_url in bad}
            fresh = await self.mover.write_fragments(chunk_id, data, p.checksum, urls, only=redo)
            if fresh is None:
                self._fail(f"repair {chunk_id}: could not write the new fragments")
                return False
            old = sorted(p.fragments, key=lambda f: f.index)
            frags = [fresh[i] if i in redo else old[i] for i in range(ERASURE_TOTAL)]
            new = Placement(ERASURE, p.checksum, p.size_bytes, fragments=frags)
        if await self._switch(record, new, "repair"):
            self.counters.repaired += 1
            return True
        return False

    async def _repair_as_replicas(self, record: ChunkRecord, bad: set[str], readable: set[str]) -> bool:
        """An erasure-coded chunk without 5 distinct healthy nodes: store it 3x replicated (the
        migration pass brings it back to 3+2 when 5 healthy members exist again)."""
        p = record.placement
        targets = self.registry.placement_candidates(exclude=bad)[:REPLICATION_FACTOR]
        if len(targets) < REPLICATION_FACTOR:
            self._fail(f"repair {record.chunk_id}: {len(targets)} healthy nodes; even replication needs 3")
            return False
        data = await self.mover.read_chunk(record.chunk_id, p, avoid=bad - readable)
        if data is None:
            self._fail(f"repair {record.chunk_id}: no intact copy could be read")
            return False
        if not await self.mover.write_replicas(record.chunk_id, data, p.checksum, targets):
            self._fail(f"repair {record.chunk_id}: could not write the replicas")
            return False
        new = Placement(REPLICATION, p.checksum, p.size_bytes, replicas=targets)
        if await self._switch(record, new, "repair (replicated: fewer than 5 healthy nodes)"):
            self.counters.repaired += 1
            return True
        return False

    # -- migration ----------------------------------------------------------------------------
    async def desired_mode(self, video_id: str, now: float) -> str | None:
        """The mode the video's chunks should be in now, or None while a change is settling."""
        views = await self.store.views(video_id)
        override = await self.store.override(video_id)
        state = await self.store.mode_state(video_id)
        target = self.policy.target(views, override, state.mode if state else None)
        if state is None or state.mode != target:
            state = ModeState(target, now)
            await self.store.set_mode_state(video_id, state)
        if override is not None or now - state.since >= self.policy.settle:
            return state.mode
        return None

    async def migrate_pass(self) -> None:
        now = time.time()
        budget = self.batch
        sem = asyncio.Semaphore(self.parallel)
        for video_id in await self.store.all_video_ids():
            if budget <= 0:
                return
            mode = await self.desired_mode(video_id, now)
            if mode is None:
                continue
            todo = [r for r in await self.store.video_chunks(video_id) if r.placement.mode != mode][:budget]
            budget -= len(todo)

            async def one(record: ChunkRecord, mode: str = mode) -> None:
                async with sem:
                    await self.migrate_chunk(record, mode)

            await asyncio.gather(*(one(r) for r in todo))

    async def migrate_chunk(self, record: ChunkRecord, mode: str) -> bool:
        p = record.placement
        if p.mode == mode:
            return False
        need = REPLICATION_FACTOR if mode == REPLICATION else ERASURE_TOTAL
        targets = self.registry.placement_candidates()[:need]
        if len(targets) < need:
            if mode == ERASURE:  # expected while nodes are down: wait for them, not an error
                self.counters.waiting_for_nodes += 1
                return False
            self._fail(f"migrate {record.chunk_id} to {mode}: {len(targets)} healthy nodes, {need} needed")
            return False
        data = await self.mover.read_chunk(record.chunk_id, p)
        if data is None or sha256_tag(data) != p.checksum:
            self._fail(f"migrate {record.chunk_id}: no intact copy could be read")
            return False
        if mode == REPLICATION:
            if not await self.mover.write_replicas(record.chunk_id, data, p.checksum, targets):
                self._fail(f"migrate {record.chunk_id}: could not write replicas")
                return False
            new = Placement(REPLICATION, p.checksum, p.size_bytes, replicas=targets)
        else:
            frags = await self.mover.write_fragments(record.chunk_id, data, p.checksum, targets)
            if frags is None:
                self._fail(f"migrate {record.chunk_id}: could not write fragments")
                return False
            new = Placement(ERASURE, p.checksum, p.size_bytes, fragments=frags)
        if await self._switch(record, new, f"migrate to {mode}"):
            self.counters.migrated += 1
            return True
        return False

    async def _switch(self, record: ChunkRecord, new: Placement, why: str) -> bool:
        """Commit `new` as the next epoch; then delete what neither it nor the chosen value uses."""
        try:
            done = await self.chunks.replace(record, new)
        except (CommitFailed, PlacementError) as exc:
            # the new pieces stay: a minority may have accepted `new`, and a later proposer that
            # adopts it must still find its data (an orphan copy is cheaper than a stuck instance)
            self._fail(f"{why} {record.chunk_id}: {exc}")
            return False
        chosen = done.record.placement
        self.counters.deleted_pieces += await self.mover.remove_unused(
            record.chunk_id, record.placement, chosen
        )
        if not done.own:  # another proposer's placement won this epoch: drop what we wrote
            await self.mover.remove_unused(record.chunk_id, new, chosen)
        self.counters.note(f"{why} {record.chunk_id}: epoch {done.record.epoch} -> {chosen.nodes}")
        return True

    def _fail(self, text: str) -> None:
        log.warning(text)
        self.counters.failed += 1
        self.counters.last_error = text
        self.counters.note(text)


def _pieces(record: ChunkRecord) -> list[tuple[str, str, str]]:
    from shoal.paxos.placement import pieces

    return list(pieces(record.placement, record.chunk_id))
