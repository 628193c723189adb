"""StateJournal in one process over real kv stores: what a node does with a peer's operations."""

from __future__ import annotations

import threading

import orjson
import pytest

from shoal.crdt import statedb
from shoal.crdt.replica import Replica, verify_signatures
from shoal.crdt.signing import Signer
from shoal.crdt.statedb import StateJournal
from shoal.kv import LmdbStore
from shoal.state.models import CidrCreate
from shoal.state.store import StateStore, Write

SIGNERS = [Signer.generate() for _ in range(2)]
TRUST = [s.public for s in SIGNERS]


async def open_node(path, i: int) -> StateJournal:
    store = StateStore(await LmdbStore.open(path, durable=False))
    replica = Replica(SIGNERS[i], TRUST, statedb.validate_value)
    return await StateJournal.attach(store, replica)


async def write_cidrs(journal: StateJournal, n: int, prefix: int = 1) -> None:
    for j in range(n):
        body = CidrCreate(cidr=f"10.{prefix}.{j}.0/24", name=f"c{j}", owner="o")
        await journal.store.apply(Write("cidr", "create", "test", body=body))


@pytest.fixture
async def pair(tmp_path):
    a, b = await open_node(tmp_path / "a.lmdb", 0), await open_node(tmp_path / "b.lmdb", 1)
    yield a, b
    await a.store.close()
    await b.store.close()


async def test_signatures_are_verified_off_the_event_loop(pair, monkeypatch):
    a, b = pair
    await write_cidrs(a, 40)
    frames, _ = await a.frames_after(0, 1000)
    threads = []

    def spy(ops):
        threads.append(threading.get_ident())
        return verify_signatures(ops)

    monkeypatch.setattr(statedb, "verify_signatures", spy)
    good = frames[5]
    forged = bytes(64) + good[64:]  # a forged copy first must not block the genuine op
    got = await b.apply_frames([forged, *frames])
    assert threads and all(t != threading.get_ident() for t in threads)
    assert len(got.applied) == 40 and b.replica.rejected["bad signature"] == 1
    assert sorted(b.replica.dag.registers()) == sorted(a.replica.dag.registers())
    assert await b.store.list("cidr", limit=1000) == await a.store.list("cidr", limit=1000)


async def test_snapshot_adoption_then_the_log_after_it(pair, tmp_path):
    a, b = pair
    await write_cidrs(a, 30)
    listed = (await a.store.list("cidr", limit=1000))[1]
    first = orjson.loads(listed[0])["id"]
    await a.store.apply(Write("cidr", "update", "test", id=first, changes={"name": "renamed"}))
    await a.store.apply(Write("cidr", "delete", "test", id=orjson.loads(listed[1])["id"]))
    records, heads, winners, upto = await a.snapshot()
    # the update is one op per field it names (name, updated_at): 33 ops, 30 + 2 registers held
    assert len(records) == 33 * 40 and len(winners) == 32 and upto == 33
    frames = await a.frames_by_id(winners)

    forged = [bytes(64) + frames[0][64:], *frames[1:]]
    assert "bad signature" in await b.adopt_snapshot(records, heads, forged, "a", upto)
    assert b.seq == 0 and len(b.replica.dag) == 0
    recs = [records[i : i + 40] for i in range(0, len(records), 40)]
    short = b"".join(r for r in recs if r[:32] != winners[0])  # a winner it does not cover
    assert "not covered" in await b.adopt_snapshot(short, heads, frames, "a", upto)
    assert b.seq == 0 and len(b.replica.dag) == 0

    assert await b.adopt_snapshot(records, heads, frames, "a", upto) is None
    assert b.replica.dag.registers() == a.replica.dag.registers() and b.replica.heads == a.replica.heads
    assert await b.store.list("cidr", limit=1000) == await a.store.list("cidr", limit=1000)
    assert await b.adopt_snapshot(records, heads, frames, "a", upto) == "this node is not empty any more"

    await write_cidrs(a, 5, prefix=2)  # ops after the snapshot, built on what it covers
    after, _ = await a.frames_after(upto, 1000)
    got = await b.apply_frames(after)
    assert len(got.applied) == 5 and not got.buffered
    assert await b.store.list("cidr", limit=1000) == await a.store.list("cidr", limit=1000)

    await b.store.close()  # a restart rebuilds from the base and the log
    b2 = await open_node(tmp_path / "b.lmdb", 1)
    try:
        assert b2.base is not None and b2.base["winners"] == 32
        assert b2.replica.dag.registers() == a.replica.dag.registers()
        assert len(b2.replica.dag) == len(a.replica.dag) == 38 and b2.seq == 37
        assert await b2.store.list("cidr", limit=1000) == await a.store.list("cidr", limit=1000)
    finally:
        await b2.store.close()
    pair[1].store = b2.store  # closed already; the fixture's close is harmless


async def test_an_interrupted_adoption_is_wiped_at_start(pair, tmp_path):
    a, b = pair
    await write_cidrs(a, 10)
    records, heads, winners, upto = await a.snapshot()
    assert await b.adopt_snapshot(records, heads, await a.frames_by_id(winners), "a", upto) is None
    await b.kv.set(statedb.BASE_PENDING, b"")  # as if it died before the base record was written
    await b.store.close()
    b2 = await open_node(tmp_path / "b.lmdb", 1)
    try:
        assert b2.seq == 0 and len(b2.replica.dag) == 0 and b2.base is None
        assert (await b2.store.list("cidr"))[0] == 0
    finally:
        await b2.store.close()


async def test_compaction_drops_superseded_ops_and_keeps_state(pair, tmp_path):
    a, b = pair
    await write_cidrs(a, 20)
    ids = [orjson.loads(d)["id"] for d in (await a.store.list("cidr", limit=1000))[1]]
    for i in ids[:8]:
        await a.store.apply(Write("cidr", "update", "test", id=i, changes={"name": f"n-{i}"}))
    await a.store.apply(Write("cidr", "delete", "test", id=ids[9]))
    before = await a.store.list("cidr", limit=1000)
    registers, known = a.replica.dag.registers(), len(a.replica.dag)
    assert await a.compact(stable_seq=5) <= 5  # only what every peer has
    assert await a.compact(stable_seq=a.seq) > 0
    assert await a.compact(stable_seq=a.seq) == 0
    frames, _ = await a.frames_after(0, 1000)
    assert len(frames) == 36  # one winner per register (the tombstone, 8 x name and updated_at included)
    assert a.ids_after(0) == [a.core.digest(f[64:]) for f in frames]
    await write_cidrs(a, 3, prefix=3)  # it goes on writing after compaction
    assert a.seq == 40 and len((await a.frames_after(0, 1000))[0]) == 39
    await a.store.close()
    a2 = await open_node(tmp_path / "a.lmdb", 0)  # restart: base + compacted log
    try:
        assert a2.seq == 40 and len(a2.replica.dag) == known + 3
        assert {k: v for k, v in a2.replica.dag.registers().items() if k in registers} == registers
        assert len((await a2.store.list("cidr", limit=1000))[1]) == len(before[1]) + 3
        # a compacted node still serves a snapshot an empty node can adopt
        records, heads, winners, upto = await a2.snapshot()
        assert await b.adopt_snapshot(records, heads, await a2.frames_by_id(winners), "a", upto) is None
        assert await b.store.list("cidr", limit=1000) == await a2.store.list("cidr", limit=1000)
        assert b.replica.dag.registers() == a2.replica.dag.registers()
    finally:
        await a2.store.close()
