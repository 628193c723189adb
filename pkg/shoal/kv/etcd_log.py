"""EtcdStore's change log: one etcd watch stream per store, mirrored in memory for the watch hub.

The watch hub (watch.py) reads a change log synchronously; over a network that log has to be
local. The follower keeps one etcd watch on the whole namespace and turns each etcd revision
(the key events plus the head key's commit record) into the store's events, in a mirror that
keeps `limits.history` revisions like the other backends' logs. A broken stream (member down,
leader lost) is resumed from the next revision on another endpoint, so events are neither lost
nor repeated; if etcd compacted past that point meanwhile, the mirror restarts after the
compaction and the hub fails the watchers that needed the lost revisions with Compacted.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
from collections.abc import Callable

import grpc
from aetcd import rpc

from .etcd_client import EtcdClient, describe
from .etcd_codec import record_events, unpack_record, unpack_value
from .model import Event, EventType

log = logging.getLogger(__name__)

PUT = rpc.Event.EventType.Value("PUT")


def closed_floor(rev: int, history: int) -> int:
    """The oldest revision kept once `rev` is committed: base.trim_floor applied at every revision."""
    step = max(1, min(64, history // 8))
    last = rev - rev % step
    return last - history + 1 if last > history else 0


class ChangeMirror:
    """The namespace's recent commits: revision -> (commit id, events).

    `floor` is the contract's oldest revision (the last `history` revisions, as in every backend);
    `kept_from` is where the held events really start: below the floor only while `hold()` (the
    watch hub's position) still needs them, since the follower may deliver a batch of revisions
    faster than the hub reads them.
    """

    def __init__(self, history: int, floor: int, hold: Callable[[], int]) -> None:
        self.history = history
        self.floor = floor
        self.kept_from = floor
        self.position = floor - 1  # every commit up to here has been received
        self.hold = hold
        self.revs: list[int] = []
        self.log: dict[int, tuple[bytes | None, list[Event]]] = {}
        self.txns: dict[bytes, int] = {}
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []

    def append(self, rev: int, txn: bytes | None, events: list[Event]) -> None:
        if rev <= self.position:
            return  # already had it (a resumed stream overlaps by one revision)
        self.revs.append(rev)
        self.log[rev] = (txn, events)
        if txn is not None:
            self.txns[txn] = rev
        self.position = rev
        self.floor = max(self.floor, closed_floor(rev, self.history))
        self.trim()
        self._wake()

    def restart_at(self, floor: int) -> None:
        """etcd compacted everything below `floor` before we read it: continue from there."""
        if floor > self.position + 1:
            self.position = floor - 1
        self.floor = max(self.floor, floor)
        self._drop(floor)
        self._wake()

    def trim(self) -> None:
        self._drop(min(self.floor, self.hold()))

    def _drop(self, below: int) -> None:
        if below <= self.kept_from:
            return
        self.kept_from = below
        cut = bisect.bisect_left(self.revs, below)
        for rev in self.revs[:cut]:
            txn, _ = self.log.pop(rev)
            if txn is not None:
                self.txns.pop(txn, None)
        del self.revs[:cut]

    def changes(self, after: int, upto: int) -> list[Event]:
        out: list[Event] = []
        revs = self.revs
        i = bisect.bisect_right(revs, after)
        while i < len(revs) and revs[i] <= upto:
            out.extend(self.log[revs[i]][1])
            i += 1
        return out

    async def wait(self, position: int, timeout: float) -> bool:
        """Wait until every commit up to `position` has arrived; False on timeout."""
        if self.position >= position:
            return True
        fut = asyncio.get_running_loop().create_future()
        item = (position, fut)
        self._waiters.append(item)
        try:
            async with asyncio.timeout(timeout):
                await fut
            return True
        except TimeoutError:
            return False
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(item)

    def _wake(self) -> None:
        for target, fut in self._waiters:
            if target <= self.position and not fut.done():
                fut.set_result(None)


KeySeen = Callable[[str, int, int, float], None]  # key, etcd mod_revision, version (0: gone), created_at


class Follower:
    """The task that keeps the mirror fed from an etcd watch on [prefix, prefix + "0")."""

    def __init__(
        self,
        client: EtcdClient,
        prefix: bytes,
        base: int,
        mirror: ChangeMirror,
        on_change: Callable[[], None],
        on_key: KeySeen,
        on_restart: Callable[[int], None],
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.base = base
        self.mirror = mirror
        self.on_change = on_change
        self.on_key = on_key
        self.on_restart = on_restart
        self.connected = False
        self.restarts = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="shoal.kv etcd follower")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        delay = 0.05
        while not self.client.closed:
            i = self.client.index
            try:
                if await self._stream(i):
                    delay = 0.05
            except grpc.aio.AioRpcError as err:
                if self.client.closed:
                    return
                log.info("etcd watch on %s ended (%s); resuming", self.client.targets[i], describe(err))
                self.client.rotate(i)
            except (grpc.aio.UsageError, RuntimeError):
                if self.client.closed:
                    return
                raise
            self.connected = False
            self.restarts += 1
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    async def _stream(self, index: int) -> bool:
        """One watch stream; returns when it ends (True if it delivered anything)."""
        mirror = self.mirror
        # Start one revision early: etcd accepts a start equal to its compaction point but may
        # have dropped that revision's deletes, so a compaction that reaches what we need must
        # cancel the watch (it does for start < compact revision).
        start = self.base + mirror.position
        call = rpc.WatchStub(self.client.channel(index)).Watch(metadata=(("hasleader", "true"),))
        got = False
        try:
            await call.write(
                rpc.WatchRequest(
                    create_request=rpc.WatchCreateRequest(
                        key=self.prefix, range_end=self.prefix + b"0", start_revision=start
                    )
                )
            )
            while True:
                resp = await call.read()
                if resp is grpc.aio.EOF:
                    return got
                if resp.compact_revision:
                    log.warning("etcd compacted past this store's watch position; restarting after it")
                    floor = resp.compact_revision - self.base + 1
                    mirror.restart_at(floor)
                    self.on_restart(floor)
                    return True
                if resp.canceled:
                    log.info("etcd canceled the watch: %s", resp.cancel_reason)
                    return got
                self.connected = True
                if resp.events:
                    self._apply(resp.events)
                    got = True
        finally:
            call.cancel()

    def _apply(self, events) -> None:
        """Turn etcd events (grouped by revision, in order) into store events."""
        n = len(events)
        i = 0
        changed = False
        plen = len(self.prefix)
        while i < n:
            erev = events[i].kv.mod_revision
            j = i
            record = None
            keyed: list[tuple[str, object]] = []
            while j < n and events[j].kv.mod_revision == erev:
                ev = events[j]
                j += 1
                raw = ev.kv.key
                if raw == self.prefix:
                    if ev.type == PUT:
                        record = unpack_record(ev.kv.value)
                    continue
                try:
                    key = raw[plen:].decode()
                except UnicodeDecodeError:
                    continue  # not a store key (written by another client)
                if key.startswith("/"):
                    keyed.append((key, ev))
            i = j
            rev = erev - self.base
            if rev <= self.mirror.position:
                continue
            finals: dict[str, tuple[bytes | None, int]] = {}
            derived = []
            for key, ev in keyed:
                if ev.type == PUT:
                    version, created, _, value = unpack_value(ev.kv.value, ev.kv.version)
                    finals[key] = (value, version)
                    kind = EventType.Created if version == 1 else EventType.Updated
                    derived.append(Event(kind, key, value, version, rev))
                    self.on_key(key, erev, version, created)
                else:
                    derived.append(Event(EventType.Deleted, key, None, 0, rev))
                    self.on_key(key, erev, 0, 0.0)
            if record is not None and record.events is not None:
                out = record_events(record.events, finals, rev)
            else:
                out = derived
            self.mirror.append(rev, None if record is None else record.txn, out)
            changed = True
        if changed:
            self.on_change()
