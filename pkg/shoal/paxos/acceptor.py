"""The acceptor: durable per-instance state, written (fsynced) before any reply leaves.

State per (chunk, epoch) lives in one shoal.kv key, so a promise or an acceptance survives
kill -9 of the node the moment the reply is sent. An acceptor accepts a value only when
it holds, intact and with the matching checksum, every piece the value assigns to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import Awaitable, Callable

import msgspec

from shoal.kv import KvStore, TransactionOp, VersionConflict

from .messages import (
    Accept,
    AcceptBatch,
    Accepted,
    AcceptedBatch,
    AcceptorState,
    InstanceState,
    Prepare,
    Promise,
)
from .placement import CHUNK_ID, Placement, PlacementError, validate

MAX_BATCH_ITEMS = 256  # instances one AcceptBatch may carry

# holds(stored_id, "sha256:<hex>", verify) -> None when held (verify: and its bytes re-checked),
# else the reason ("missing: <id>", "checksum: <id>", "corrupt: <id>")
Holds = Callable[[str, str, bool], Awaitable[str | None]]
# holds_many([(stored_id, checksum)], verify) -> {(stored_id, checksum): reason or None}: the same
# check for a whole batch in one go (one hop to a thread for every read, not one per piece)
HoldsMany = Callable[[list[tuple[str, str]], bool], Awaitable[dict[tuple[str, str], str | None]]]

_enc = msgspec.json.Encoder()
_dec = msgspec.json.Decoder(InstanceState)


def instance_key(chunk_id: str, epoch: int) -> str:
    return f"/paxos/{chunk_id}/{epoch:010d}"


class GroupCommit:
    """Writes that arrive while a transaction is being made durable share the next one: one
    fsync for many instances (each write is still a compare-and-set on its own key)."""

    MAX_BATCH = 60  # two ops per write; shoal.kv allows 128 per transaction

    def __init__(self, kv: KvStore) -> None:
        self.kv = kv
        self.pending: list[tuple[str, int, bytes, asyncio.Future[None]]] = []
        self._task: asyncio.Task | None = None
        self.transactions = 0

    async def write(self, key: str, version: int, value: bytes) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.pending.append((key, version, value, fut))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._drain())
        await fut

    async def _drain(self) -> None:
        while self.pending:
            batch, self.pending = self.pending[: self.MAX_BATCH], self.pending[self.MAX_BATCH :]
            ops = []
            for key, version, value, _ in batch:
                ops += [TransactionOp.check_version(key, version), TransactionOp.set(key, value)]
            try:
                await self.kv.transaction(ops)
                self.transactions += 1
                for *_, fut in batch:
                    fut.set_result(None)
            except VersionConflict:  # another process wrote one of the keys: settle one by one
                for key, version, value, fut in batch:
                    try:
                        await self.kv.compare_and_set(key, version, value)
                        fut.set_result(None)
                    except Exception as exc:
                        fut.set_exception(exc)
            except Exception as exc:
                for *_, fut in batch:
                    fut.set_exception(exc)


class Acceptor:
    """Answers Prepare and Accept for every chunk; one lock per instance serializes its updates."""

    def __init__(self, kv: KvStore, holds: Holds, holds_many: HoldsMany | None = None) -> None:
        self.kv = kv
        self.holds = holds
        self.holds_many = holds_many
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        self.writer = GroupCommit(kv)

    def _lock(self, key: str) -> asyncio.Lock:
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        return lock

    async def _load(self, key: str, epoch: int) -> tuple[InstanceState, int]:
        entry = await self.kv.get(key)
        if entry is None:
            return InstanceState(epoch=epoch), 0
        return _dec.decode(entry.value), entry.version

    async def _store(self, key: str, state: InstanceState, version: int) -> None:
        # compare-and-set: a second process on the same store can never interleave a write
        await self.writer.write(key, version, _enc.encode(state))

    async def prepare(self, chunk_id: str, msg: Prepare) -> Promise:
        """Promise if the ballot is above every ballot promised so far (strictly: a reissued
        ballot is refused, so a proposer can never get two values accepted at one ballot)."""
        key = instance_key(chunk_id, msg.epoch)
        async with self._lock(key):
            state, version = await self._load(key, msg.epoch)
            if state.promised is not None and msg.ballot <= state.promised:
                return Promise(ok=False, promised=state.promised)
            state.promised = msg.ballot
            await self._store(key, state, version)
            holds = None
            if msg.value is not None and msg.member is not None:
                holds = await self._check_share(chunk_id, msg.value, msg.member, verify=False) or "ok"
            return Promise(
                ok=True, promised=msg.ballot, accepted=state.accepted, value=state.value, holds=holds
            )

    async def _check_share(
        self,
        chunk_id: str,
        value: Placement,
        member: str,
        verify: bool,
        checked: dict[tuple[str, str], str | None] | None = None,
    ) -> str | None:
        try:
            validate(value, chunk_id)
        except PlacementError as exc:
            return f"invalid: {exc}"
        share = value.assigned(chunk_id, member)
        if not share:
            return "not_member"
        for stored_id, checksum in share:
            if checked is not None and (stored_id, checksum) in checked:
                problem = checked[(stored_id, checksum)]
            else:
                problem = await self.holds(stored_id, checksum, verify)
            if problem is not None:
                return problem
        return None

    async def accept(
        self, chunk_id: str, msg: Accept, checked: dict[tuple[str, str], str | None] | None = None
    ) -> Accepted:
        """Accept if no higher ballot was promised and this node holds its share of the value.
        `checked`: holdings already verified for this message (accept_many)."""
        key = instance_key(chunk_id, msg.epoch)
        async with self._lock(key):
            state, version = await self._load(key, msg.epoch)
            if state.promised is not None and msg.ballot < state.promised:
                return Accepted(ok=False, promised=state.promised, reason="ballot")
            problem = await self._check_share(chunk_id, msg.value, msg.member, True, checked)
            if problem is not None:
                return Accepted(ok=False, promised=state.promised, reason=problem)
            state.promised = msg.ballot
            state.accepted = msg.ballot
            state.value = msg.value
            await self._store(key, state, version)
            return Accepted(ok=True, promised=msg.ballot)

    async def accept_many(self, batch: AcceptBatch) -> AcceptedBatch:
        """Accept (or refuse) every item, each exactly as accept() would: their writes arrive
        together, so the group commit makes them one transaction and one fsync (up to
        GroupCommit.MAX_BATCH instances; more take a few), and every answer leaves after its
        write is durable. A malformed item is refused on its own, never the whole batch."""

        def bad(item) -> str | None:
            if not CHUNK_ID.match(item.chunk_id):
                return "invalid: chunk id"
            if item.epoch < 0 or item.ballot.round < 0 or not item.ballot.proposer:
                return "invalid: epoch or ballot"
            return None

        checked: dict[tuple[str, str], str | None] | None = None
        if self.holds_many is not None:
            wanted: dict[tuple[str, str], None] = {}
            for item in batch.items:
                if bad(item) is None:
                    with contextlib.suppress(PlacementError):
                        validate(item.value, item.chunk_id)
                        wanted.update(dict.fromkeys(item.value.assigned(item.chunk_id, item.member)))
            checked = await self.holds_many(list(wanted), True) if wanted else {}

        async def one(item) -> Accepted:
            problem = bad(item)
            if problem is not None:
                return Accepted(ok=False, reason=problem)
            msg = Accept(epoch=item.epoch, ballot=item.ballot, value=item.value, member=item.member)
            return await self.accept(item.chunk_id, msg, checked)

        return AcceptedBatch(results=list(await asyncio.gather(*(one(i) for i in batch.items))))

    async def state(self, chunk_id: str) -> AcceptorState:
        entries = await self.kv.entries(f"/paxos/{chunk_id}/")
        return AcceptorState(chunk_id=chunk_id, instances=[_dec.decode(e.value) for e in entries])
