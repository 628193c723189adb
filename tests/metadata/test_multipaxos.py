"""The ChunkPaxos steady state: the pin's creator owns round 0 and skips phase 1 (2n messages),
accepts to one acceptor are batched, and safety holds when another proposer takes instances
over with higher ballots mid-stream. Real Acceptors on real LMDB stores (LocalTransport: the
JSON round trip, no sockets), and real storage nodes killed with -9 for durability."""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections import Counter, defaultdict

import httpx
import msgspec
import pytest

from shoal.kv import LmdbStore
from shoal.metadata.chunks import ChunkService, CommitFailed
from shoal.metadata.nodes import NodeRegistry
from shoal.metadata.store import MetadataStore
from shoal.paxos import Ballot, Fragment, Placement
from shoal.paxos.acceptor import Acceptor
from shoal.paxos.messages import AcceptBatch, AcceptItem, Prepare
from shoal.paxos.placement import fragment_id
from shoal.paxos.proposer import Proposer
from shoal.paxos.transport import BatchingTransport, HttpTransport, LocalTransport, Unreachable
from shoal.testing.metadata import sha
from shoal.testing.storage import storage_node


def url(i: int) -> str:
    return f"http://node{i}:8081"


def cks(tag: str) -> str:
    return "sha256:" + hashlib.sha256(tag.encode()).hexdigest()


async def holds_all(stored_id: str, checksum: str, verify: bool) -> str | None:
    return None  # every node holds every piece: only the protocol decides


class Wire(LocalTransport):
    """LocalTransport that counts every message (per instance and on the wire), records every
    acceptance, and optionally delays or drops messages at random."""

    def __init__(self, acceptors, rng: random.Random | None = None, drop: float = 0.0) -> None:
        super().__init__(acceptors)
        self.rng = rng
        self.drop = drop
        self.count: Counter[str] = Counter()
        # (chunk, epoch) -> [(acceptor, ballot, value)] for every accept answered ok
        self.accepted: dict[tuple[str, int], list[tuple[str, Ballot, Placement]]] = defaultdict(list)

    async def _jitter(self) -> None:
        if self.rng is not None:
            await asyncio.sleep(self.rng.random() * 0.003)
            if self.rng.random() < self.drop:
                raise Unreachable("dropped")

    async def prepare(self, node_url, chunk_id, msg):
        self.count["prepare"] += 1
        await self._jitter()
        out = await super().prepare(node_url, chunk_id, msg)
        self.count["promise"] += 1
        return out

    async def accept(self, node_url, chunk_id, msg):
        self.count["accept"] += 1
        self.count["wire"] += 1
        await self._jitter()
        out = await super().accept(node_url, chunk_id, msg)
        self.count["accepted"] += 1
        self.count["wire"] += 1
        if out.ok:
            self.accepted[(chunk_id, msg.epoch)].append((node_url, msg.ballot, msg.value))
        return out

    async def accept_many(self, node_url, batch):
        self.count["accept"] += len(batch.items)
        self.count["wire"] += 1
        await self._jitter()
        out = await super().accept_many(node_url, batch)
        self.count["accepted"] += len(out.results)
        self.count["wire"] += 1
        for item, res in zip(batch.items, out.results, strict=True):
            if res.ok:
                self.accepted[(item.chunk_id, item.epoch)].append((node_url, item.ballot, item.value))
        return out

    def chosen(self, key: tuple[str, int], members: list[str]) -> list[Placement]:
        """Every value a majority of `members` accepted at one ballot (at most one, if safe)."""
        by_ballot: dict[Ballot, dict[str, bytes]] = defaultdict(dict)
        values: dict[bytes, Placement] = {}
        for node, ballot, value in self.accepted[key]:
            raw = msgspec.json.encode(value)
            values[raw] = value
            by_ballot[ballot][node] = raw
        out: set[bytes] = set()
        for votes in by_ballot.values():
            for raw in set(votes.values()):
                if sum(1 for v in votes.values() if v == raw) > len(members) // 2:
                    out.add(raw)
        return [values[raw] for raw in out]


def erasure(chunk: str, tag: str, idx=range(5)) -> Placement:
    frags = [Fragment(k, url(i), fragment_id(chunk, k), cks(f"{tag}{k}"), 4) for k, i in enumerate(idx)]
    return Placement("erasure_coding", cks(tag), 10, fragments=frags)


def replicated(tag: str, idx=(0, 1, 2)) -> Placement:
    return Placement("replication", cks(tag), 10, replicas=[url(i) for i in idx])


@pytest.fixture
async def world(tmp_path):
    kvs = [await LmdbStore.open(tmp_path / f"a{i}.lmdb") for i in range(5)]
    meta_kv = await LmdbStore.open(tmp_path / "meta.lmdb")
    yield kvs, meta_kv
    for kv in kvs:
        await kv.close()
    await meta_kv.close()


async def service(meta_kv, transport, name: str, *, join: int = 0) -> ChunkService:
    """A proposer with its own store and registry view, as one metadata process on a shared store."""
    store = MetadataStore(meta_kv)
    registry = NodeRegistry(store)
    await registry.load()
    for i in range(join):
        await registry.membership.join(f"n{i}", url(i))
    return ChunkService(store, registry, Proposer(name, transport, backoff=0.002))


@pytest.mark.parametrize("n", [3, 5])
async def test_steady_state_is_2n_messages_counted_in_the_transport(world, n):
    kvs, meta_kv = world
    wire = Wire({url(i): Acceptor(kvs[i], holds_all) for i in range(5)})
    svc = await service(meta_kv, wire, "a.1", join=5)
    video = await svc.store.create_video("v", 10.0)
    for k in range(10):
        p = replicated(f"c{k}") if n == 3 else erasure(f"c{k}", f"c{k}")
        done = await svc.commit(f"c{k}", video.video_id, k, p)
        assert done.own and done.outcome is not None
        assert done.outcome.messages == 2 * n and done.outcome.rounds == 1
        assert done.record.ballot == Ballot(0, "a.1")  # round 0: the pin owner's
    assert wire.count == Counter(accept=10 * n, accepted=10 * n, wire=20 * n)  # no prepare at all
    # classic (the switch the bench uses): 4n, phase 1 included
    classic = ChunkService(svc.store, svc.registry, Proposer("b.1", wire), fast=False)
    wire.count.clear()
    p = replicated("d") if n == 3 else erasure("d", "d")
    done = await classic.commit("d", video.video_id, 99, p)
    assert done.outcome is not None and done.outcome.messages == 4 * n
    assert wire.count["prepare"] == n and wire.count["accept"] == n


async def test_concurrent_commits_share_one_accept_message_per_acceptor(world):
    """32 commits in flight over 5 acceptors: every instance still costs 2n instance messages,
    but on the wire many instances share one message (and one fsync) per acceptor."""
    kvs, meta_kv = world
    wire = Wire({url(i): Acceptor(kvs[i], holds_all) for i in range(5)})
    batcher = BatchingTransport(wire, max_inflight=1)
    svc = await service(meta_kv, batcher, "a.1", join=5)
    video = await svc.store.create_video("v", 10.0)
    results = await asyncio.gather(
        *(svc.commit(f"c{k}", video.video_id, k, erasure(f"c{k}", f"c{k}")) for k in range(32))
    )
    assert all(r.own and r.outcome is not None and r.outcome.messages == 10 for r in results)
    assert wire.count["prepare"] == 0
    assert wire.count["accept"] == wire.count["accepted"] == 32 * 5
    assert batcher.batched == 32 * 5 and batcher.batches < 32 * 5 / 2  # many instances per message
    assert wire.count["wire"] == 2 * batcher.batches
    transactions = sum(a.writer.transactions for a in wire.acceptors.values())
    assert transactions < 32 * 5 / 2  # group commit: fewer durable writes than instances
    # every record is stored, with the running sums counting each once
    totals = await svc.store.totals()
    assert totals.erasure_coded_chunks == 32 and totals.commits == 32
    assert len(await svc.store.video_chunks(video.video_id)) == 32


@pytest.mark.parametrize("seed", range(12))
async def test_takeover_mid_stream_never_commits_two_values(world, seed):
    """A streams commits of 24 chunks (round 0 for the ones it pins first); midway B, a second
    metadata process on the same store, proposes its own (different) value for the same chunks
    in random order, some before A gets to them: B takes over A's in-flight instances with higher
    ballots and a full phase 1, A takes B's. Messages are delayed and 10% dropped. For every
    instance at most one value is ever accepted by a majority at any ballot, both proposers
    report that value, and the stored record is it."""
    kvs, meta_kv = world
    rng = random.Random(seed)
    wire = Wire({url(i): Acceptor(kvs[i], holds_all) for i in range(5)}, rng, drop=0.1)
    a = await service(meta_kv, BatchingTransport(wire), "a.1", join=5)
    b = await service(meta_kv, BatchingTransport(wire), "b.1")
    video = await a.store.create_video("v", 10.0)
    chunks = [f"c{k}" for k in range(24)]

    async def commit(svc: ChunkService, k: int, tag: str, delay: float):
        await asyncio.sleep(delay)
        cid = chunks[k]
        p = erasure(cid, f"{tag}{cid}") if k % 2 else replicated(f"{tag}{cid}", (k % 3, 3, 4))
        try:
            return await svc.commit(cid, video.video_id, k, p)
        except CommitFailed as exc:  # no quorum through the drops, or contention: never two values
            return exc

    async def stream_a():
        return await asyncio.gather(*(commit(a, k, "A", k * 0.002) for k in range(24)))

    async def stream_b():
        await asyncio.sleep(0.02)  # mid-stream
        order = list(range(24))
        rng.shuffle(order)
        return await asyncio.gather(*(commit(b, k, "B", rng.random() * 0.01) for k in order))

    ra, rb = await asyncio.gather(stream_a(), stream_b())
    rb_by_chunk = {}
    for r in rb:
        if not isinstance(r, Exception):
            rb_by_chunk[r.record.chunk_id] = r
    decided = 0
    for k, cid in enumerate(chunks):
        pin = await a.registry.membership.pinned(cid, 0)
        assert pin is not None
        chosen = wire.chosen((cid, 0), pin.members)
        assert len(chosen) <= 1, (cid, chosen)
        record = await a.store.chunk(cid)
        reports = [r for r in (ra[k], rb_by_chunk.get(cid)) if r is not None and not isinstance(r, Exception)]
        if record is None:
            assert not reports
            continue
        decided += 1
        assert chosen == [record.placement], cid  # the stored value is the one chosen
        assert all(r.record.placement == record.placement for r in reports)
        assert sum(r.own for r in reports) <= 1
        # only the pinned acceptors ever accepted anything for the instance
        assert {node for node, _, _ in wire.accepted[(cid, 0)]} <= set(pin.members)
    assert decided >= 12  # most instances decide despite the drops
    # B took over instances with ballots above round 0 (the competition really happened)
    assert any(ballot.round >= 1 for acc in wire.accepted.values() for _, ballot, _ in acc)


async def test_round_zero_loses_to_any_promise(world):
    """Round 0 is below every phase-1 ballot: an acceptor that promised round 1 refuses it, and
    the owner then finishes through classic rounds, adopting whatever was accepted."""
    kvs, _ = world
    acceptors = {url(i): Acceptor(kvs[i], holds_all) for i in range(3)}
    wire = Wire(acceptors)
    for i in range(2):
        await acceptors[url(i)].prepare("c", Prepare(epoch=0, ballot=Ballot(1, "b.1")))
    members = [url(i) for i in range(3)]
    out = await Proposer("a.1", wire).propose("c", 0, replicated("A"), members, fixed=True, fast=True)
    assert out.chosen and out.own and out.ballot is not None and out.ballot.round >= 2
    assert wire.count["prepare"] == 3  # the fallback ran phase 1
    # a value accepted at round 0 by a minority is adopted by the next proposer's phase 1
    await acceptors[url(2)].accept("d", _accept(replicated("A"), url(2), Ballot(0, "a.1")))
    wire.down = {url(2)}
    out = await Proposer("b.1", wire).propose("d", 0, replicated("B"), members, fixed=True)
    # url(2), the only one that accepted round 0, is not in b's phase-1 majority: b's value is chosen
    assert out.chosen and out.own and out.value == replicated("B")
    wire.down = set()
    out = await Proposer("c.1", wire).propose("d", 0, replicated("C"), members, fixed=True)
    assert out.value == replicated("B")  # chosen at round 1 > round 0: every later ballot keeps it


def _accept(p: Placement, member: str, ballot: Ballot):
    from shoal.paxos.messages import Accept

    return Accept(epoch=0, ballot=ballot, value=p, member=member)


async def test_acceptor_killed_with_minus_9_keeps_promises_and_batched_accepts(tmp_path):
    """A real storage node: a promise and a batch of accepts answered, then kill -9 and a restart
    on the same data dir: the promise still refuses lower ballots (round 0 included), the
    accepted values are still there, and a batch item below the promise is refused on its own."""
    node = storage_node(tmp_path / "n0").start()
    t = HttpTransport(timeout=5)
    try:
        data = {f"k{i}": f"bytes of chunk {i}".encode() for i in range(4)}
        for cid, blob in data.items():
            assert httpx.put(f"{node.url}/chunk/{cid}", content=blob).status_code in (200, 201)

        def value(cid: str) -> Placement:
            return Placement(
                "replication", sha(data[cid]), len(data[cid]), replicas=[node.url, url(1), url(2)]
            )

        promise = await t.prepare(node.url, "k0", Prepare(epoch=0, ballot=Ballot(5, "x.1")))
        assert promise.ok
        items = [AcceptItem(cid, 0, Ballot(0, "a.1"), value(cid), node.url) for cid in ("k1", "k2", "k3")]
        out = await t.accept_many(node.url, AcceptBatch(items=items))
        assert [r.ok for r in out.results] == [True, True, True]
        node.kill()
        node = storage_node(tmp_path / "n0", port=node.port).start()
        await t.aclose()
        t = HttpTransport(timeout=5)
        nack = await t.prepare(node.url, "k0", Prepare(epoch=0, ballot=Ballot(4, "y.1")))
        assert not nack.ok and nack.promised == Ballot(5, "x.1")
        mixed = [
            AcceptItem("k0", 0, Ballot(0, "a.1"), value("k0"), node.url),  # below the promise
            AcceptItem("k0", 0, Ballot(5, "x.1"), value("k0"), node.url),  # at it
            AcceptItem("zz", 0, Ballot(0, "a.1"), value("k1"), node.url),  # data not held
        ]
        out = await t.accept_many(node.url, AcceptBatch(items=mixed))
        assert [r.ok for r in out.results] == [False, True, False]
        assert out.results[0].reason == "ballot" and "missing" in (out.results[2].reason or "")
        for cid in ("k1", "k2", "k3"):
            st = await t.state(node.url, cid)
            assert st.instances[0].accepted == Ballot(0, "a.1") and st.instances[0].value == value(cid)
        # a higher phase 1 on a round-0 instance reports the accepted value (what a new proposer adopts)
        p = await t.prepare(node.url, "k1", Prepare(epoch=0, ballot=Ballot(1, "b.1")))
        assert p.ok and p.accepted == Ballot(0, "a.1") and p.value == value("k1")
        # bad batches are the envelope's 4xx, never a 500
        r = httpx.post(f"{node.url}/paxos-batch/accept", json={"items": []})
        assert r.status_code == 400 and "detail" in r.json()
        r = httpx.post(f"{node.url}/paxos-batch/accept", content=b"{not json")
        assert r.status_code == 400
        r = httpx.post(f"{node.url}/paxos-batch/accept", json={"items": [{"chunk_id": "k"}]})
        assert r.status_code == 422
    finally:
        await t.aclose()
        node.stop()
