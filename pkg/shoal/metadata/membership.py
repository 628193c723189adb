"""Cluster membership by committed configuration changes, and the acceptor set of each instance.

Membership is one versioned record in shoal.kv, `/membership`, changed only by compare-and-set
on the version read (so two metadata processes sharing a store never both apply a change on the
same base): every change (a node joins, starts leaving, is removed) makes configuration epoch
E + 1. A node is `active` (new placements may use it) or `leaving` (decommission: its pieces are
being moved off, nothing new goes there); removal drops it and keeps a tombstone, so a removed
node's own re-registration is refused unless it asks to rejoin.

Each ChunkPaxos instance (chunk, epoch) has a *pinned* acceptor set: `/pin/{chunk}/{epoch}`,
created once with create-if-absent by the first proposer, naming the nodes of its placement and
the configuration epoch they were checked under (all active members then). Every proposer of
the instance runs Paxos over exactly the pinned nodes, with majority quorums of them; a proposer
whose placement names other nodes may only adopt what the instance accepted. So each instance
is classic Paxos over a fixed set, whatever happens to membership later; see docs/metadata.md.
"""

from __future__ import annotations

import asyncio
import time

import msgspec

from shoal.kv import KvStore, VersionConflict

KEY = "/membership"
ACTIVE, LEAVING = "active", "leaving"
MAX_TOMBSTONES = 1000


class Member(msgspec.Struct):
    node_url: str
    state: str = ACTIVE
    since_epoch: int = 0  # configuration epoch of the last change to this member


class Config(msgspec.Struct):
    """One configuration: its epoch, the members by node id, and removed node ids (-> epoch)."""

    epoch: int = 0
    members: dict[str, Member] = {}
    removed: dict[str, int] = {}
    gone: dict[str, int] = {}  # URLs of removed nodes -> epoch: pieces still placed there are lost
    changed_at: float = 0.0

    def active_urls(self) -> set[str]:
        return {m.node_url for m in self.members.values() if m.state == ACTIVE}

    def leaving(self) -> dict[str, Member]:
        return {i: m for i, m in self.members.items() if m.state == LEAVING}

    def by_url(self, url: str) -> tuple[str, Member] | None:
        for node_id, m in self.members.items():
            if m.node_url == url:
                return node_id, m
        return None


class Pin(msgspec.Struct):
    """The acceptor set of one instance, fixed by its first proposer."""

    members: list[str]
    config_epoch: int
    proposer: str = ""
    at: float = 0.0


class Removed(Exception):
    """The node id was removed from the cluster; it rejoins only when asked explicitly."""


_enc = msgspec.json.Encoder()
_config = msgspec.json.Decoder(Config)
_pin = msgspec.json.Decoder(Pin)


def pin_key(chunk_id: str, epoch: int) -> str:
    return f"/pin/{chunk_id}/{epoch:010d}"


class Membership:
    """The membership record, cached; every change is a CAS on the stored version."""

    def __init__(self, kv: KvStore) -> None:
        self.kv = kv
        self.config = Config()
        self.version = 0
        self._lock = asyncio.Lock()

    async def load(self, bootstrap: dict[str, str] | None = None) -> Config:
        """Read the record; with none stored, start from `bootstrap` (node id -> url: the nodes
        registered before membership existed), as configuration epoch 1."""
        entry = await self.kv.get(KEY)
        if entry is None and bootstrap:
            members = {i: Member(u, ACTIVE, 1) for i, u in bootstrap.items()}
            await self.kv.create_if_not_exists(KEY, _enc.encode(Config(1, members, {}, time.time())))
            entry = await self.kv.get(KEY)
        if entry is not None:
            self.config, self.version = _config.decode(entry.value), entry.version
        return self.config

    async def fresh(self) -> Config:
        """The stored configuration now (another metadata process may have changed it)."""
        entry = await self.kv.get(KEY)
        if entry is not None and entry.version != self.version:
            self.config, self.version = _config.decode(entry.value), entry.version
        return self.config

    async def _change(self, edit) -> Config:
        """Apply `edit(config) -> Config | None` (None: nothing to change) as epoch + 1, by CAS."""
        async with self._lock:
            while True:
                entry = await self.kv.get(KEY)
                cur = Config() if entry is None else _config.decode(entry.value)
                version = 0 if entry is None else entry.version
                new = edit(
                    msgspec.structs.replace(
                        cur, members=dict(cur.members), removed=dict(cur.removed), gone=dict(cur.gone)
                    )
                )
                if new is None:
                    self.config, self.version = cur, version
                    return cur
                new.epoch = cur.epoch + 1
                new.changed_at = time.time()
                for member in new.members.values():
                    if member.since_epoch == -1:
                        member.since_epoch = new.epoch
                try:
                    self.version = await self.kv.compare_and_set(KEY, version, _enc.encode(new))
                except VersionConflict:
                    continue  # another process changed membership first: re-apply on its result
                self.config = new
                return new

    async def join(self, node_id: str, node_url: str, rejoin: bool = False) -> Config:
        """Add (or re-address) a node as active. Removed (tombstoned) ids need `rejoin`."""
        refused: list[int] = []

        def edit(c: Config) -> Config | None:
            m = c.members.get(node_id)
            if m is not None and m.node_url == node_url:
                return None  # a re-registration: nothing changes
            if node_id in c.removed and not rejoin:
                refused.append(c.removed[node_id])
                return None
            c.removed.pop(node_id, None)
            c.gone.pop(node_url, None)
            c.members[node_id] = Member(node_url, m.state if m else ACTIVE, -1)
            return c

        out = await self._change(edit)
        if refused:
            raise Removed(f"node {node_id} was removed from the cluster in configuration epoch {refused[0]}")
        return out

    async def leave(self, node_id: str) -> Config:
        """Mark a member leaving: no new pieces go there; maintenance moves its pieces off."""

        def edit(c: Config) -> Config | None:
            m = c.members.get(node_id)
            if m is None or m.state == LEAVING:
                return None
            c.members[node_id] = Member(m.node_url, LEAVING, -1)
            return c

        return await self._change(edit)

    async def remove(self, node_id: str) -> Config:
        """Drop a member (its pieces are gone from every committed placement) and tombstone it."""

        def edit(c: Config) -> Config | None:
            if node_id not in c.members:
                return None
            gone = c.members.pop(node_id)
            c.removed[node_id] = c.gone[gone.node_url] = c.epoch + 1
            for tombs in (c.removed, c.gone):
                while len(tombs) > MAX_TOMBSTONES:
                    tombs.pop(next(iter(tombs)))
            return c

        return await self._change(edit)

    def describe(self) -> dict:
        c = self.config
        return {
            "epoch": c.epoch,
            "changed_at": c.changed_at,
            "members": {
                i: {"node_url": m.node_url, "state": m.state, "since_epoch": m.since_epoch}
                for i, m in sorted(c.members.items())
            },
            "removed": dict(c.removed),
            "removed_urls": dict(c.gone),
        }

    # -- the acceptor set of each instance --------------------------------------------------------
    async def pin(
        self, chunk_id: str, epoch: int, members: list[str], config_epoch: int, proposer: str
    ) -> Pin:
        """The instance's pinned acceptor set: ours if we are first, else the one already there."""
        return (await self.pin_first(chunk_id, epoch, members, config_epoch, proposer))[0]

    async def pin_first(
        self, chunk_id: str, epoch: int, members: list[str], config_epoch: int, proposer: str
    ) -> tuple[Pin, bool]:
        """pin(), and whether this call created it: the creator alone owns round 0 of the
        instance (phase 2 without phase 1, shoal.paxos.proposer `fast`)."""
        key = pin_key(chunk_id, epoch)
        mine = Pin(list(members), config_epoch, proposer, time.time())
        if await self.kv.create_if_not_exists(key, _enc.encode(mine)):
            return mine, True
        entry = await self.kv.get(key)
        assert entry is not None  # pins are never deleted
        return _pin.decode(entry.value), False

    async def pinned(self, chunk_id: str, epoch: int) -> Pin | None:
        entry = await self.kv.get(pin_key(chunk_id, epoch))
        return None if entry is None else _pin.decode(entry.value)
