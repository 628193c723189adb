"""Merge by field: partial updates write only the fields they name, and concurrent updates of
different fields both survive, on real kv stores, compared with a sequential model."""

from __future__ import annotations

import asyncio
import random
import tempfile
from pathlib import Path

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shoal.crdt import statedb
from shoal.crdt.replica import Replica
from shoal.crdt.signing import Signer
from shoal.crdt.statedb import FIELD_SEP, StateJournal
from shoal.kv import LmdbStore
from shoal.state.models import InstanceCreate
from shoal.state.store import StateStore, Write

SIGNERS = [Signer.generate() for _ in range(3)]
TRUST = [s.public for s in SIGNERS]
FIELDS = ("name", "owner", "state", "vcpu_count")


async def open_node(path: Path, i: int) -> StateJournal:
    store = StateStore(await LmdbStore.open(path, durable=False))
    return await StateJournal.attach(store, Replica(SIGNERS[i], TRUST, statedb.validate_value))


async def exchange(nodes: list[StateJournal], pairs: list[tuple[int, int]] | None = None) -> None:
    """Deliver logs: every node's whole log to every other (or only along `pairs`)."""
    for src, dst in pairs or [(a, b) for a in range(len(nodes)) for b in range(len(nodes)) if a != b]:
        frames, _ = await nodes[src].frames_after(0, 100_000)
        await nodes[dst].apply_frames(frames)


def sequential(frames: list[bytes], core, entity_id: str) -> dict | None:
    """The model: every op of the document in (hlc, op id) order, applied one after the other."""
    ops, _ = core.parse_frames(frames)
    doc = None
    for op in sorted(ops, key=lambda o: (o.hlc, o.id)):
        if op.key == entity_id:
            doc = None if op.value is None else orjson.loads(op.value)
        elif op.key.startswith(entity_id + FIELD_SEP) and doc is not None:
            doc[op.key.partition(FIELD_SEP)[2]] = orjson.loads(op.value)["v"]
    return doc


async def create_instance(node: StateJournal) -> str:
    body = InstanceCreate(
        build_id="b-1", name="web", owner="peer-1", vcpu_count=2, mem_size_mib=512, disk_size_gb=1
    )
    op = await node.store.apply(Write("instance", "create", "test", body=body))
    return op.id


async def test_concurrent_updates_of_different_fields_both_survive(tmp_path):
    a, b = await open_node(tmp_path / "a", 0), await open_node(tmp_path / "b", 1)
    try:
        iid = await create_instance(a)
        await exchange([a, b])
        await a.store.apply(Write("instance", "update", "t", id=iid, changes={"name": "renamed"}))
        await b.store.apply(Write("instance", "update", "t", id=iid, changes={"vcpu_count": 6}))
        await exchange([a, b])
        docs = [await n.store.get("instance", iid) for n in (a, b)]
        assert docs[0] == docs[1]
        assert docs[0]["name"] == "renamed" and docs[0]["vcpu_count"] == 6
        assert (await a.store.get_raw("instance", iid)) == (await b.store.get_raw("instance", iid))
        # the same field on both: one winner, the same everywhere (last writer by (hlc, op id))
        await a.store.apply(Write("instance", "update", "t", id=iid, changes={"state": "running"}))
        await b.store.apply(Write("instance", "update", "t", id=iid, changes={"state": "stopped"}))
        await exchange([a, b])
        assert (await a.store.get("instance", iid))["state"] == (await b.store.get("instance", iid))["state"]
        # a partial update never brings back a deleted document
        await a.store.apply(Write("instance", "delete", "t", id=iid))
        await exchange([a, b])
        assert await a.store.get("instance", iid) is None and await b.store.get("instance", iid) is None
    finally:
        await a.store.close()
        await b.store.close()


async def test_a_restart_rebuilds_the_same_merged_document(tmp_path):
    a, b = await open_node(tmp_path / "a", 0), await open_node(tmp_path / "b", 1)
    iid = await create_instance(a)
    await exchange([a, b])
    await a.store.apply(Write("instance", "update", "t", id=iid, changes={"name": "x"}))
    await b.store.apply(Write("instance", "update", "t", id=iid, changes={"owner": "peer-2"}))
    await exchange([a, b])
    before = await b.store.get_raw("instance", iid)
    await b.store.close()
    b = await open_node(tmp_path / "b", 1)
    assert await b.store.get_raw("instance", iid) == before
    assert sorted(b.replica.dag.registers()) == sorted(a.replica.dag.registers())
    await a.store.close()
    await b.store.close()


action = st.one_of(
    st.tuples(st.just("update"), st.integers(0, 2), st.sampled_from(FIELDS), st.integers(0, 2)),
    st.tuples(st.just("delete"), st.integers(0, 2)),
    st.tuples(st.just("sync"), st.integers(0, 2), st.integers(0, 2)),
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(actions=st.lists(action, min_size=1, max_size=12), seed=st.integers(0, 1000))
def test_field_merge_matches_the_sequential_model(actions, seed):
    """Random updates of random fields on three nodes, random partial syncs: once everything is
    delivered, every node holds the same document, the one applying all ops in (hlc, id) order."""
    rng = random.Random(seed)

    async def run(root: Path) -> None:
        nodes = [await open_node(root / str(i), i) for i in range(3)]
        try:
            iid = await create_instance(nodes[0])
            await exchange(nodes)
            for act in actions:
                if act[0] == "update":
                    _, n, field, _ = act
                    value = _pick(field, rng)
                    node = nodes[n]
                    if await node.store.get("instance", iid) is not None:
                        await node.store.apply(
                            Write("instance", "update", "t", id=iid, changes={field: value})
                        )
                elif act[0] == "delete":
                    node = nodes[act[1]]
                    if await node.store.get("instance", iid) is not None:
                        await node.store.apply(Write("instance", "delete", "t", id=iid))
                elif act[1] != act[2]:
                    await exchange(nodes, [(act[1], act[2])])
            await exchange(nodes)
            await exchange(nodes)
            raws = [await n.store.get_raw("instance", iid) for n in nodes]
            assert raws[0] == raws[1] == raws[2]
            frames = []
            for n in nodes:
                frames += (await n.frames_after(0, 100_000))[0]
            model = sequential(frames, nodes[0].core, iid)
            got = None if raws[0] is None else orjson.loads(raws[0])
            assert got == model
        finally:
            for n in nodes:
                await n.store.close()

    with tempfile.TemporaryDirectory() as root:
        asyncio.run(run(Path(root)))


def _pick(field: str, rng: random.Random):
    return {
        "name": rng.choice(["web", "db", "cache"]),
        "vcpu_count": rng.randint(1, 8),
        "state": rng.choice(["pending", "running", "stopped"]),
        "owner": rng.choice(["peer-1", "peer-2"]),
    }[field]
