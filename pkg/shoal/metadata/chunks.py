"""Committing chunk placements through ChunkPaxos, and recording what was chosen.

Epoch 0 of a chunk is its first placement (POST /chunk/{id}/commit); each migration or repair
proposes the next epoch. Every epoch is its own Paxos instance, so a placement, once chosen,
never changes; a later epoch supersedes it.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from dataclasses import dataclass

from shoal.paxos import Ballot, Placement, PlacementError
from shoal.paxos.placement import validate
from shoal.paxos.proposer import Outcome, Proposer

from .nodes import NodeRegistry
from .records import UPLOADING, ChunkRecord
from .store import MetadataStore, VideoNotWritable

MAX_SKIPS = 16  # abandoned instances a migration or repair steps over before giving up

Times = tuple[float | None, float | None]  # (start_sec, duration_sec) of a chunk, each optional


class CommitFailed(Exception):
    """No value could be chosen. status: 409 (acceptors refused the placement), 503 (no quorum)."""

    def __init__(self, status: int, message: str, outcome: Outcome | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.outcome = outcome


@dataclass
class Phase:
    epoch: int
    phase: str
    ballot: Ballot | None
    reason: str = ""
    at: float = 0.0


@dataclass
class Committed:
    record: ChunkRecord
    own: bool  # our proposal was the value chosen
    outcome: Outcome | None  # None when the answer came from the store (already decided here)


class RecordSaver:
    """Saves decided records; those that arrive while a save is being made durable go together
    in the next one (MetadataStore.save_chunks: one transaction and one fsync for many), so
    concurrent commits do not queue one fsync each behind the running sums' lock."""

    def __init__(self, store: MetadataStore) -> None:
        self.store = store
        self.pending: list[tuple[ChunkRecord, asyncio.Future[ChunkRecord | None]]] = []
        self._task: asyncio.Task | None = None
        self.batches = 0

    async def save(self, record: ChunkRecord) -> ChunkRecord | None:
        fut: asyncio.Future[ChunkRecord | None] = asyncio.get_running_loop().create_future()
        self.pending.append((record, fut))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._drain())
        return await fut

    async def _drain(self) -> None:
        while self.pending:
            batch, self.pending = self.pending, []
            self.batches += 1
            try:
                results = await self.store.save_chunks([r for r, _ in batch])
            except Exception as exc:
                results = [exc] * len(batch)
            for (_, fut), res in zip(batch, results, strict=True):
                if fut.done():
                    continue
                if isinstance(res, Exception):
                    fut.set_exception(res)
                else:
                    fut.set_result(res)


class ChunkService:
    def __init__(
        self, store: MetadataStore, registry: NodeRegistry, proposer: Proposer, *, fast: bool = True
    ) -> None:
        self.store = store
        self.fast = fast  # round 0 without phase 1 for instances this process pins first
        self.registry = registry
        self.proposer = proposer
        self.phases: dict[str, Phase] = {}
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        self.commits = 0
        self.messages = 0
        self.saver = RecordSaver(store)

    def lock(self, chunk_id: str) -> asyncio.Lock:
        lock = self._locks.get(chunk_id)
        if lock is None:
            lock = self._locks[chunk_id] = asyncio.Lock()
        return lock

    async def commit(
        self,
        chunk_id: str,
        video_id: str,
        seq: int,
        placement: Placement,
        times: Times = (None, None),
    ) -> Committed:
        """Choose epoch 0's placement (or report the one already chosen).

        times: the chunk's (start_sec, duration_sec) in the video, kept with the record; a
        chunk that is already committed keeps the times of its first commit.
        """
        validate(placement, chunk_id)
        async with self.lock(chunk_id):
            existing = await self.store.chunk(chunk_id)
            if existing is not None:
                if existing.video_id != video_id or existing.sequence_num != seq:
                    raise CommitFailed(
                        409,
                        f"chunk {chunk_id} is already committed as sequence {existing.sequence_num} "
                        f"of video {existing.video_id}",
                    )
                return Committed(existing, existing.placement == placement, None)
            taken = await self.store.chunk_at(video_id, seq)
            if taken is not None:
                raise CommitFailed(409, f"sequence {seq} of video {video_id} holds chunk {taken.chunk_id}")
            video = await self.store.video(video_id)
            if video is None or video.status != UPLOADING:
                what = "not found" if video is None else f"{video.status}: it takes no new chunks"
                raise CommitFailed(409, f"video {video_id} is {what}")
            return await self._decide(chunk_id, video_id, seq, 0, placement, times)

    async def replace(self, current: ChunkRecord, placement: Placement) -> Committed:
        """Propose `placement` as the chunk's next epoch (migration, repair)."""
        validate(placement, current.chunk_id)
        async with self.lock(current.chunk_id):
            latest = await self.store.chunk(current.chunk_id)
            if latest is not None and latest.epoch != current.epoch:
                raise CommitFailed(409, f"chunk {current.chunk_id} moved on to epoch {latest.epoch}")
            return await self._decide(
                current.chunk_id,
                current.video_id,
                current.sequence_num,
                current.epoch + 1,
                placement,
                (current.start_sec, current.duration_sec),
                may_skip=True,
            )

    async def _decide(
        self,
        chunk_id: str,
        video_id: str,
        seq: int,
        epoch: int,
        placement: Placement,
        times: Times,
        may_skip: bool = False,
    ) -> Committed:
        outcome, epoch, config_epoch = await self._consensus(chunk_id, epoch, placement, may_skip)
        self.messages += outcome.messages
        if not outcome.chosen or outcome.value is None:
            self.phases[chunk_id] = Phase(epoch, "failed", outcome.ballot, outcome.reason, time.time())
            await self.store.count_messages(outcome.messages)
            status = 409 if outcome.kind in ("refused", "contention", "empty") else 503
            raise CommitFailed(status, f"consensus on chunk {chunk_id} failed: {outcome.reason}", outcome)
        assert outcome.ballot is not None
        record = ChunkRecord(
            chunk_id=chunk_id,
            video_id=video_id,
            sequence_num=seq,
            epoch=epoch,
            placement=outcome.value,
            ballot=outcome.ballot,
            committed_at=time.time(),
            messages=outcome.messages,
            rounds=outcome.rounds,
            start_sec=times[0],
            duration_sec=times[1],
            config_epoch=config_epoch,
        )
        try:
            stored = await self.saver.save(record)
        except VideoNotWritable as exc:  # failed or deleted while the proposal ran
            self.phases.pop(chunk_id, None)
            await self.store.count_messages(outcome.messages)
            raise CommitFailed(409, str(exc), outcome) from None
        self.phases.pop(chunk_id, None)
        self.commits += 1
        if stored is not None and stored.epoch >= record.epoch:
            # a later epoch was stored first (our instance was abandoned, then finished late):
            # the stored record is the chunk's placement, ours is superseded
            # (or another process stored the same decision first: then it is still ours if it won)
            return Committed(stored, outcome.own and stored.placement == record.placement, outcome)
        return Committed(record, outcome.own, outcome)

    async def _consensus(
        self, chunk_id: str, epoch: int, placement: Placement, may_skip: bool
    ) -> tuple[Outcome, int, int]:
        """Run instance (chunk, epoch) over its pinned acceptor set; returns (outcome, the epoch
        decided, the configuration epoch of the pin).

        The pin is ours when we are first (our placement's nodes, all active members of the
        configuration read now). A pin naming other nodes means another proposer got there
        first: we learn or adopt what it accepted, never propose our own value there. With
        `may_skip` (migration, repair) an instance where nothing was accepted is abandoned and
        the next epoch tried: each instance still decides at most one value, and the store
        keeps the highest epoch decided."""
        membership = self.registry.membership
        for _ in range(MAX_SKIPS):
            config = await membership.fresh()
            active = config.active_urls()
            strangers = [u for u in placement.nodes if u not in active]
            if strangers:
                raise PlacementError(
                    "placement names nodes that are not registered as active members of the cluster "
                    f"(configuration epoch {config.epoch}): {', '.join(strangers)}"
                )
            pin, first = await membership.pin_first(
                chunk_id, epoch, placement.nodes, config.epoch, self.proposer.proposer_id
            )

            def on_phase(phase: str, ballot: Ballot, epoch: int = epoch) -> None:
                self.phases[chunk_id] = Phase(epoch, phase, ballot, at=time.time())

            down = self.registry.down_urls()
            if set(pin.members) == set(placement.nodes):
                # the pin's creator owns round 0: phase 2 at once (2n messages); it made the pin
                # just now with this very placement, so round 0 carries one value only
                outcome = await self.proposer.propose(
                    chunk_id,
                    epoch,
                    placement,
                    pin.members,
                    skip=down,
                    on_phase=on_phase,
                    fixed=True,
                    fast=first and self.fast,
                )
                return outcome, epoch, pin.config_epoch
            outcome = await self._adopt(chunk_id, epoch, pin.members, down, on_phase, 1 if may_skip else 8)
            if outcome.kind != "empty":
                return outcome, epoch, pin.config_epoch
            outcome.reason = (
                f"instance {epoch} of {chunk_id} is pinned to {pin.members} by proposer {pin.proposer} "
                f"(configuration epoch {pin.config_epoch}) and nothing was accepted there yet"
            )
            if not may_skip:
                return outcome, epoch, pin.config_epoch
            epoch += 1  # an abandoned instance: move on to the next one
        raise CommitFailed(503, f"chunk {chunk_id}: {MAX_SKIPS} instances in a row are pinned by others")

    async def _adopt(
        self, chunk_id: str, epoch: int, members: list[str], down: set[str], on_phase, patience: int
    ) -> Outcome:
        """Learn (read-only) what another proposer got chosen, waiting up to `patience` reads for
        it; then run phase 1 without a value of our own to finish what was accepted."""
        delay = 0.02
        for attempt in range(patience):
            learned = await self.proposer.learn(chunk_id, epoch, members)
            if learned is not None:
                ballot, value = learned
                return Outcome(True, value, ballot, False, 0, 0, "learned from the acceptors")
            if attempt + 1 < patience:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.5)
        return await self.proposer.propose(
            chunk_id, epoch, None, members, skip=down, on_phase=on_phase, fixed=True
        )
