"""StateJournal in one process over real kv stores: what a node does with a peer's operations."""

from __future__ import annotations

import threading

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
