"""StateStore: the single write path over every kv backend (real stores on disk)."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from shoal.kv import LmdbStore, MemoryStore, SqliteStore
from shoal.state.errors import StateError
from shoal.state.models import AssociationCreate, CidrCreate, PeerCreate
from shoal.state.store import Operation, StateStore, Write, index_key


@pytest.fixture(params=["memory", "lmdb", "sqlite"])
async def store(request, tmp_path):
    if request.param == "memory":
        kv = MemoryStore()
    elif request.param == "lmdb":
        kv = await LmdbStore.open(tmp_path / "s.lmdb", durable=False)
    else:
        kv = await SqliteStore.open(tmp_path / "s.sqlite3", durable=False)
    s = StateStore(kv)
    yield s
    await s.close()


def peer(name: str = "A", key: str = "0x1234567890abcdef1234567890abcdef12345678") -> Write:
    return Write("peer", "create", "test", body=PeerCreate(name=name, public_key=key))


async def test_apply_produces_operation_and_stores_document(store):
    seen: list[Operation] = []
    store.listeners.append(seen.append)
    op = await store.apply(peer())
    assert op.kind == "peer" and op.id.startswith("peer-") and op.author == "test"
    assert op.value is not None and op.value["name"] == "A" and len(op.op_id) == 32
    assert seen == [op]
    raw = await store.get_raw("peer", op.id)
    assert orjson.loads(raw) == op.value
    assert list(op.value) == ["id", "name", "public_key", "peer_type", "created_at", "updated_at"]
    meta = await store.meta("peer", op.id)
    assert meta == {"ts": op.timestamp, "author": "test", "op": op.op_id, "deleted": False}
    assert await store.lookup("peer", "public_key", "0x1234567890ABCDEF1234567890abcdef12345678") == op.id


async def test_delete_leaves_a_tombstone_and_frees_the_index(store):
    op = await store.apply(peer())
    gone = await store.apply(Write("peer", "delete", "test", id=op.id))
    assert gone.value is None
    assert await store.get("peer", op.id) is None
    assert (await store.meta("peer", op.id))["deleted"] is True
    assert await store.lookup("peer", "public_key", op.value["public_key"]) is None
    again = await store.apply(peer())  # the key is free again
    assert again.id != op.id


async def test_unique_index_moves_with_updates(store):
    a = await store.apply(peer("A", "0x" + "1" * 40))
    b = await store.apply(peer("B", "0x" + "2" * 40))
    with pytest.raises(StateError) as err:
        await store.apply(Write("peer", "update", "t", id=b.id, changes={"public_key": "0x" + "1" * 40}))
    assert err.value.status == 409 and err.value.code == "DUPLICATE"
    await store.apply(Write("peer", "update", "t", id=a.id, changes={"public_key": "0x" + "3" * 40}))
    assert await store.kv.get(index_key("peer", "public_key", "0x" + "1" * 40)) is None
    await store.apply(Write("peer", "update", "t", id=b.id, changes={"public_key": "0x" + "1" * 40}))
    assert await store.lookup("peer", "public_key", "0x" + "1" * 40) == b.id


async def test_concurrent_creates_of_one_unique_value_admit_exactly_one(store):
    results = await asyncio.gather(*(store.apply(peer(f"P{i}")) for i in range(8)), return_exceptions=True)
    ok = [r for r in results if isinstance(r, Operation)]
    refused = [r for r in results if isinstance(r, StateError)]
    assert len(ok) == 1 and len(refused) == 7
    assert all(r.status == 409 for r in refused)
    assert await store.count("peer") == 1


async def test_concurrent_partial_updates_all_land(store):
    op = await store.apply(
        Write("cidr", "create", "t", body=CidrCreate(cidr="10.0.0.0/8", name="n", owner="peer-1"))
    )
    await asyncio.gather(
        store.apply(Write("cidr", "update", "t", id=op.id, changes={"name": "renamed"})),
        store.apply(Write("cidr", "update", "t", id=op.id, changes={"owner": "peer-2"})),
    )
    doc = await store.get("cidr", op.id)
    assert doc["name"] == "renamed" and doc["owner"] == "peer-2"


async def test_references_are_counted_and_block_deletes(store):
    c1 = await store.apply(
        Write("cidr", "create", "t", body=CidrCreate(cidr="10.1.0.0/16", name="a", owner="p"))
    )
    c2 = await store.apply(
        Write("cidr", "create", "t", body=CidrCreate(cidr="10.2.0.0/16", name="b", owner="p"))
    )
    c3 = await store.apply(
        Write("cidr", "create", "t", body=CidrCreate(cidr="10.3.0.0/16", name="c", owner="p"))
    )
    body = AssociationCreate(name="x", source_cidr=c1.id, target_cidr=c2.id)
    assoc = await store.apply(Write("association", "create", "t", body=body))
    with pytest.raises(StateError) as err:
        await store.apply(Write("cidr", "delete", "t", id=c2.id))
    assert err.value.status == 409 and err.value.code == "IN_USE"
    # retarget: c2 is free, c3 is now held
    await store.apply(Write("association", "update", "t", id=assoc.id, changes={"target_cidr": c3.id}))
    await store.apply(Write("cidr", "delete", "t", id=c2.id))
    with pytest.raises(StateError):
        await store.apply(Write("cidr", "delete", "t", id=c3.id))
    await store.apply(Write("association", "delete", "t", id=assoc.id))
    await store.apply(Write("cidr", "delete", "t", id=c3.id))
    await store.apply(Write("cidr", "delete", "t", id=c1.id))
    assert await store.count("cidr") == 0
    assert await store.kv.list("/state-refs/") == []


async def test_reference_to_missing_document_is_400(store):
    body = AssociationCreate(name="x", source_cidr="cidr-404", target_cidr="cidr-405")
    with pytest.raises(StateError) as err:
        await store.apply(Write("association", "create", "t", body=body))
    assert err.value.status == 400 and err.value.code == "UNKNOWN_REFERENCE"


async def test_guard_refusal_writes_nothing(store):
    async def refuse(current, new):
        raise StateError(403, "no", "FORBIDDEN")

    with pytest.raises(StateError):
        await store.apply(
            Write("peer", "create", "t", body=PeerCreate(name="A", public_key="0x" + "4" * 40), guard=refuse)
        )
    assert await store.count("peer") == 0
    assert await store.kv.list("/state-index/") == []


async def test_list_filters_and_pages(store):
    for i in range(5):
        await store.apply(
            Write(
                "cidr", "create", "t", body=CidrCreate(cidr=f"10.{i}.0.0/16", name=f"n{i}", owner=f"p{i % 2}")
            )
        )
    total, page = await store.list("cidr", None, limit=2, offset=1)
    assert total == 5 and [orjson.loads(d)["name"] for d in page] == ["n1", "n2"]
    total, page = await store.list("cidr", {"owner": "p0"}, limit=10, offset=1)
    assert total == 3 and [orjson.loads(d)["name"] for d in page] == ["n2", "n4"]
    assert await store.list("cidr", None, limit=10, offset=9) == (5, [])


async def test_lists_see_every_write_despite_the_snapshot_cache(store):
    def cidr(i: int, owner: str = "p") -> Write:
        return Write("cidr", "create", "t", body=CidrCreate(cidr=f"10.{i}.0.0/16", name=f"n{i}", owner=owner))

    a = await store.apply(cidr(1))
    assert (await store.list("cidr"))[0] == 1
    assert (await store.list("cidr", {"owner": "p"}))[0] == 1
    await store.apply(cidr(2))
    assert (await store.list("cidr"))[0] == 2
    await store.apply(Write("cidr", "update", "t", id=a.id, changes={"owner": "q"}))
    total, page = await store.list("cidr", {"owner": "q"})
    assert total == 1 and orjson.loads(page[0])["id"] == a.id
    assert (await store.list("cidr", {"owner": "p"}))[0] == 1
    await store.apply(Write("cidr", "delete", "t", id=a.id))
    assert (await store.list("cidr", {"owner": "q"}))[0] == 0
    assert (await store.list("cidr"))[0] == 1
