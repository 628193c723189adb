"""Per-placement quorums over pinned acceptor sets, in one process: two ChunkService proposers on
one shared metadata store (LMDB), real Acceptors on real LMDB stores reached through
LocalTransport with random delays, and membership changes racing the proposals."""

from __future__ import annotations

import asyncio
import hashlib
import random

import pytest

from shoal.kv import LmdbStore
from shoal.metadata.chunks import ChunkService, CommitFailed
from shoal.metadata.nodes import NodeRegistry
from shoal.metadata.store import MetadataStore
from shoal.paxos import Placement, PlacementError
from shoal.paxos.acceptor import Acceptor
from shoal.paxos.proposer import Proposer
from shoal.paxos.transport import LocalTransport

CKS = "sha256:" + hashlib.sha256(b"chunk").hexdigest()


def url(i: int) -> str:
    return f"http://node{i}:8081"


class Node:
    def __init__(self, kv: LmdbStore) -> None:
        self.kv = kv
        self.acceptor = Acceptor(kv, self.holds)

    async def holds(self, stored_id: str, checksum: str, verify: bool) -> str | None:
        return None  # every node holds every piece: only the protocol decides


class Jittery(LocalTransport):
    def __init__(self, acceptors, rng: random.Random) -> None:
        super().__init__(acceptors)
        self.rng = rng

    async def prepare(self, node_url, chunk_id, msg):
        await asyncio.sleep(self.rng.random() * 0.003)
        return await super().prepare(node_url, chunk_id, msg)

    async def accept(self, node_url, chunk_id, msg):
        await asyncio.sleep(self.rng.random() * 0.003)
        return await super().accept(node_url, chunk_id, msg)


def replicated(*idx: int) -> Placement:
    return Placement("replication", CKS, 5, replicas=[url(i) for i in idx])


@pytest.fixture
async def world(tmp_path):
    nodes = [Node(await LmdbStore.open(tmp_path / f"a{i}.lmdb")) for i in range(7)]
    meta_kv = await LmdbStore.open(tmp_path / "meta.lmdb")
    yield nodes, meta_kv
    for n in nodes:
        await n.kv.close()
    await meta_kv.close()


async def service(meta_kv, transport, name: str) -> ChunkService:
    """A proposer with its own registry view (as a second metadata process on the same store)."""
    store = MetadataStore(meta_kv)
    registry = NodeRegistry(store)
    await registry.load()
    return ChunkService(store, registry, Proposer(name, transport, backoff=0.002))


@pytest.mark.parametrize("seed", range(16))
async def test_competing_proposers_across_a_membership_change_choose_one_value(world, seed):
    """A proposes {0,1,2} under configuration E; meanwhile node 5 joins and node 0 starts
    leaving (E+1, E+2) and B proposes {3,4,5}, whose majorities do not meet A's: exactly one
    value is chosen for the instance, both proposers report it, and no acceptor set outside the
    pinned one ever accepted anything."""
    nodes, meta_kv = world
    rng = random.Random(seed)
    t = Jittery({url(i): nodes[i].acceptor for i in range(7)}, rng)
    a = await service(meta_kv, t, "a.1")
    for i in range(5):
        await a.registry.membership.join(f"n{i}", url(i))
    video = await a.store.create_video("v", 10.0)
    b = await service(meta_kv, t, "b.1")

    async def change_membership():
        await asyncio.sleep(rng.random() * 0.01)
        await b.registry.membership.join("n5", url(5))
        await b.registry.membership.leave("n0")

    async def propose(svc: ChunkService, p: Placement, delay: float):
        await asyncio.sleep(delay)
        try:
            return await svc.commit("c1", video.video_id, 0, p)
        except (CommitFailed, PlacementError) as exc:  # pinned by the other / node 0 left first
            return exc

    async def b_after_change():
        await change_membership()
        return await propose(b, replicated(3, 4, 5), rng.random() * 0.005)

    ra, rb = await asyncio.gather(propose(a, replicated(0, 1, 2), rng.random() * 0.01), b_after_change())
    wins = [r for r in (ra, rb) if not isinstance(r, Exception)]
    assert wins, (ra, rb)
    chosen = {tuple(r.record.placement.nodes) for r in wins}
    assert len(chosen) == 1, (ra, rb)  # one value, whoever reports it
    assert sum(r.own for r in wins) == 1, (ra, rb)
    value = wins[0].record.placement
    # the stored record agrees, and carries the configuration epoch its pin was made under
    record = await a.store.chunk("c1")
    assert record is not None and record.placement == value and record.config_epoch >= 5
    # every acceptor that accepted anything accepted the chosen value, and only pinned nodes did
    accepted = 0
    for i in range(7):
        st = await nodes[i].acceptor.state("c1")
        for inst in st.instances:
            if inst.value is not None:
                assert inst.value == value
                assert url(i) in value.nodes
                accepted += 1
    assert accepted >= value.quorum


async def test_a_placement_naming_a_leaving_or_unknown_node_is_refused(world):
    nodes, meta_kv = world
    t = LocalTransport({url(i): nodes[i].acceptor for i in range(7)})
    svc = await service(meta_kv, t, "a.1")
    for i in range(4):
        await svc.registry.membership.join(f"n{i}", url(i))
    video = await svc.store.create_video("v", 10.0)
    await svc.registry.membership.leave("n3")
    with pytest.raises(PlacementError, match="active members"):
        await svc.commit("c1", video.video_id, 0, replicated(1, 2, 3))
    with pytest.raises(PlacementError, match="active members"):
        await svc.commit("c1", video.video_id, 0, replicated(0, 1, 6))
    done = await svc.commit("c1", video.video_id, 0, replicated(0, 1, 2))
    # 2n over 3: the pin owner skips phase 1
    assert done.own and done.outcome is not None and done.outcome.messages == 6


async def test_one_acceptor_of_the_placement_down_plus_any_outside(world):
    """Quorums are the placement's: with 2 of 3 members up and every other node down, the commit
    still goes through; with 2 of 3 members down, it is a clean 'unavailable'."""
    nodes, meta_kv = world
    t = LocalTransport({url(i): nodes[i].acceptor for i in range(7)})
    svc = await service(meta_kv, t, "a.1")
    for i in range(7):
        await svc.registry.membership.join(f"n{i}", url(i))
    video = await svc.store.create_video("v", 10.0)
    t.down = {url(0), url(3), url(4), url(5), url(6)}
    done = await svc.commit("k0", video.video_id, 0, replicated(0, 1, 2))
    assert done.own
    t.down = {url(0), url(1)}
    with pytest.raises(CommitFailed) as err:
        await svc.commit("k1", video.video_id, 1, replicated(0, 1, 2))
    assert err.value.status == 503 and "1 of 3" in str(err.value)
