"""ChunkPaxos in one process: real Acceptors on real LMDB stores, reached through LocalTransport
(JSON round trip, no sockets). Competing proposers, failed and restarted acceptors, refusals."""

from __future__ import annotations

import asyncio
import hashlib
import random

import pytest

from shoal.kv import LmdbStore
from shoal.paxos import Ballot, Fragment, Placement, PlacementError
from shoal.paxos.acceptor import Acceptor
from shoal.paxos.messages import Accept, Prepare
from shoal.paxos.placement import fragment_id, validate
from shoal.paxos.proposer import Proposer, prepare_quorum
from shoal.paxos.transport import LocalTransport

CKS = "sha256:" + hashlib.sha256(b"chunk").hexdigest()


def url(i: int) -> str:
    return f"http://node{i}:8081"


class Node:
    """One acceptor and the pieces it 'holds' (what its chunk store would answer)."""

    def __init__(self, kv: LmdbStore) -> None:
        self.kv = kv
        self.held: dict[str, str] = {}
        self.acceptor = Acceptor(kv, self.holds)

    async def holds(self, stored_id: str, checksum: str, verify: bool) -> str | None:
        if stored_id not in self.held:
            return f"missing: {stored_id}"
        return None if self.held[stored_id] == checksum else f"checksum: {stored_id}"


@pytest.fixture
async def nodes(tmp_path):
    out = []
    for i in range(6):
        out.append(Node(await LmdbStore.open(tmp_path / f"a{i}.lmdb")))
    yield out
    for n in out:
        await n.kv.close()


def replicated(*idx: int) -> Placement:
    return Placement("replication", CKS, 5, replicas=[url(i) for i in idx])


def erasure(*idx: int, chunk: str = "c1") -> Placement:
    frags = [Fragment(k, url(i), fragment_id(chunk, k), CKS, 2) for k, i in enumerate(idx)]
    return Placement("erasure_coding", CKS, 5, fragments=frags)


def give(nodes: list[Node], p: Placement, chunk: str = "c1") -> None:
    for u in p.nodes:
        i = int(u.split("node")[1].split(":")[0])
        for sid, cks in p.assigned(chunk, u):
            nodes[i].held[sid] = cks


def transport(nodes: list[Node], n: int) -> LocalTransport:
    return LocalTransport({url(i): nodes[i].acceptor for i in range(n)})


class Jittery(LocalTransport):
    """Random delays before each message is delivered, to interleave competing proposers."""

    def __init__(self, base: LocalTransport, rng: random.Random) -> None:
        super().__init__(base.acceptors)
        self.rng = rng

    async def prepare(self, node_url, chunk_id, msg):
        await asyncio.sleep(self.rng.random() * 0.002)
        return await super().prepare(node_url, chunk_id, msg)

    async def accept(self, node_url, chunk_id, msg):
        await asyncio.sleep(self.rng.random() * 0.002)
        return await super().accept(node_url, chunk_id, msg)


async def test_single_proposer_classic_message_count(nodes):
    p = replicated(0, 1, 2)
    give(nodes, p)
    out = await Proposer("a.1", transport(nodes, 3)).propose("c1", 0, p, [url(i) for i in range(3)])
    assert out.chosen and out.own and out.value == p
    assert out.messages == 12  # 3 prepare + 3 promise + 3 accept + 3 accepted: classic 4n
    for i in range(3):
        st = await nodes[i].acceptor.state("c1")
        assert st.instances[0].accepted == Ballot(1, "a.1") and st.instances[0].value == p


async def test_erasure_five_acceptors(nodes):
    p = erasure(0, 1, 2, 3, 4)
    give(nodes, p)
    out = await Proposer("a.1", transport(nodes, 5)).propose("c1", 0, p, [url(i) for i in range(5)])
    assert out.chosen and out.messages == 20


@pytest.mark.parametrize("seed", range(12))
async def test_competing_placements_choose_one_value(nodes, seed):
    """Two proposers, placements over different node sets whose majorities do not intersect
    ({0,1} vs {3,4} are accept quorums): exactly one value is chosen, and both report it."""
    rng = random.Random(seed)
    a, b = replicated(0, 1, 2), replicated(2, 3, 4)
    give(nodes, a)
    give(nodes, b)
    cluster = [url(i) for i in range(5)]
    t = Jittery(transport(nodes, 5), rng)
    pa = Proposer("a.1", t, backoff=0.002)
    pb = Proposer("b.1", t, backoff=0.002)
    ra, rb = await asyncio.gather(pa.propose("c1", 0, a, cluster), pb.propose("c1", 0, b, cluster))
    assert ra.chosen and rb.chosen
    assert ra.value == rb.value and ra.value in (a, b)
    assert ra.own != rb.own  # exactly one of them won
    # every acceptor that accepted anything at the highest ballot holds the chosen value
    chosen = ra.value
    votes = 0
    for i in range(5):
        inst = (await nodes[i].acceptor.state("c1")).instances[0]
        if inst.value == chosen:
            votes += 1
    assert votes >= chosen.quorum


async def test_failed_acceptor_minority_and_majority(nodes):
    p = replicated(0, 1, 2)
    give(nodes, p)
    t = transport(nodes, 3)
    t.down = {url(2)}
    out = await Proposer("a.1", t).propose("c1", 0, p, [url(i) for i in range(3)])
    assert out.chosen and out.votes[url(2)] == "no answer"
    assert out.messages == 3 + 2 + 3 + 2  # requests to all, replies from two
    t.down = {url(1), url(2)}
    out = await Proposer("b.1", t).propose("c2", 0, replicated(0, 1, 2), [url(i) for i in range(3)])
    assert not out.chosen and out.kind == "unavailable"


async def test_restarted_acceptor_keeps_its_promise(nodes, tmp_path):
    n = nodes[0]
    assert (await n.acceptor.prepare("c9", Prepare(epoch=0, ballot=Ballot(5, "x.1")))).ok
    await n.kv.close()
    n.kv = await LmdbStore.open(tmp_path / "a0.lmdb")  # what a restart reads back
    n.acceptor = Acceptor(n.kv, n.holds)
    nack = await n.acceptor.prepare("c9", Prepare(epoch=0, ballot=Ballot(4, "y.1")))
    assert not nack.ok and nack.promised == Ballot(5, "x.1")
    again = await n.acceptor.prepare("c9", Prepare(epoch=0, ballot=Ballot(5, "x.1")))
    assert not again.ok  # a ballot is never promised twice
    p = replicated(0, 1, 2)
    give(nodes, p, "c9")
    refused = await n.acceptor.accept("c9", Accept(epoch=0, ballot=Ballot(4, "y.1"), value=p, member=url(0)))
    assert not refused.ok and refused.reason == "ballot"


async def test_placement_without_data_is_refused_before_phase_two(nodes):
    p = replicated(0, 1, 2)
    nodes[0].held["c1"] = CKS  # only one of three holds the chunk
    nodes[1].held["c1"] = "sha256:" + "0" * 64  # another holds different bytes
    out = await Proposer("a.1", transport(nodes, 3)).propose("c1", 0, p, [url(i) for i in range(3)])
    assert not out.chosen and out.kind == "refused"
    assert "1 of 3 members hold" in out.reason and "checksum: c1" in out.reason
    for i in range(3):  # nothing was accepted anywhere, so a corrected placement can still win
        assert (await nodes[i].acceptor.state("c1")).instances[0].accepted is None
    nodes[1].held["c1"] = CKS
    out = await Proposer("a.1", transport(nodes, 3)).propose("c1", 0, p, [url(i) for i in range(3)])
    assert out.chosen


async def test_acceptor_checks_its_share_itself(nodes):
    p = replicated(0, 1, 2)
    acc = nodes[0].acceptor
    await acc.prepare("c1", Prepare(epoch=0, ballot=Ballot(1, "a.1")))
    r = await acc.accept("c1", Accept(epoch=0, ballot=Ballot(1, "a.1"), value=p, member=url(0)))
    assert not r.ok and r.reason == "missing: c1"
    r = await acc.accept("c1", Accept(epoch=0, ballot=Ballot(1, "a.1"), value=p, member=url(5)))
    assert not r.ok and r.reason == "not_member"
    short = Placement("replication", CKS, 5, replicas=[url(0), url(1)])
    r = await acc.accept("c1", Accept(epoch=0, ballot=Ballot(1, "a.1"), value=short, member=url(0)))
    assert not r.ok and r.reason.startswith("invalid: replication needs exactly 3")


async def test_fewer_nodes_or_unregistered_nodes_refused(nodes):
    prop = Proposer("a.1", transport(nodes, 3))
    with pytest.raises(PlacementError, match="exactly 3"):
        await prop.propose("c1", 0, replicated(0, 1), [url(i) for i in range(3)])
    with pytest.raises(PlacementError, match="exactly 5 fragments"):
        await prop.propose("c1", 0, erasure(0, 1, 2, 3), [url(i) for i in range(5)])
    with pytest.raises(PlacementError, match="not registered"):
        await prop.propose("c1", 0, replicated(0, 1, 5), [url(i) for i in range(3)])


async def test_chunks_commit_in_parallel_and_epochs_are_independent(nodes):
    cluster = [url(i) for i in range(3)]
    p = replicated(0, 1, 2)
    for k in range(20):
        give(nodes, p, f"k{k}")
    prop = Proposer("a.1", transport(nodes, 3))
    outs = await asyncio.gather(*(prop.propose(f"k{k}", 0, p, cluster) for k in range(20)))
    assert all(o.chosen and o.rounds == 1 for o in outs)
    q = replicated(2, 1, 0)
    out = await prop.propose("k0", 1, q, cluster)  # the next epoch is a fresh instance
    assert out.chosen and out.value == q
    st = await nodes[0].acceptor.state("k0")
    assert [i.epoch for i in st.instances] == [0, 1]


def test_quorum_sizes():
    assert prepare_quorum(3) == 2 and prepare_quorum(5) == 4 and prepare_quorum(4) == 3
    assert replicated(0, 1, 2).quorum == 2 and erasure(0, 1, 2, 3, 4).quorum == 3


@pytest.mark.parametrize(
    "placement,error",
    [
        (Placement("mirror", CKS, 5, replicas=[url(0), url(1), url(2)]), "redundancy mode"),
        (Placement("replication", "md5:x", 5, replicas=[url(0), url(1), url(2)]), "checksum"),
        (Placement("replication", CKS, 0, replicas=[url(0), url(1), url(2)]), "size_bytes"),
        (Placement("replication", CKS, 5, replicas=[url(0), url(0), url(2)]), "each node once"),
        (Placement("replication", CKS, 5, replicas=["ftp://x", url(0), url(2)]), "not an http"),
        (
            Placement(
                "erasure_coding",
                CKS,
                5,
                fragments=[Fragment(0, url(i), f"c1-frag-{i}", CKS, 1) for i in range(5)],
            ),
            "indexes",
        ),
    ],
)
def test_validation(placement, error):
    with pytest.raises(PlacementError, match=error):
        validate(placement, "c1")
    validate(replicated(0, 1, 2), "c1")
    validate(erasure(0, 1, 2, 3, 4), "c1")
