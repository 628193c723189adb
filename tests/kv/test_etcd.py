"""EtcdStore beyond the shared contract: layout, sharing, namespaces, compaction, lost answers, outages.

Everything runs against a real etcd (Debian's etcd-server) started by the fixtures.
"""

from __future__ import annotations

import asyncio
import os
import signal
import uuid

import pytest
from aetcd import rpc

from shoal.kv import (
    Compacted,
    EventType,
    LimitExceeded,
    Limits,
    StoreUnavailable,
    TransactionOp,
    VersionConflict,
    open_store,
)
from shoal.kv.etcd import EtcdStore
from shoal.kv.etcd_client import Ambiguous, parse_endpoints
from shoal.testing.etcd import EtcdCluster

from .conftest import shared_etcd


def ns() -> str:
    return "t" + uuid.uuid4().hex[:16]


async def next_events(w, n: int, timeout: float = 10) -> list:
    return [await asyncio.wait_for(anext(w), timeout) for _ in range(n)]


async def etcd_get(store: EtcdStore, key: bytes):
    return (await store._client.call("Range", rpc.RangeRequest(key=key))).kvs


@pytest.fixture
async def etcd_url() -> str:
    return shared_etcd().url


@pytest.fixture
async def own_etcd(tmp_path):
    """An etcd of this test's own, for tests that stop or kill it."""
    cluster = EtcdCluster(tmp_path / "etcd").start()
    yield cluster
    cluster.stop()


# -- layout and sharing ----------------------------------------------------------------------------
async def test_keys_are_plain_etcd_keys_under_the_namespace(etcd_url):
    name = ns()
    async with await EtcdStore.open(etcd_url, namespace=name) as store:
        await store.set("/app/config", b"hello")
        kvs = await etcd_get(store, f"/shoal/{name}/app/config".encode())
        assert len(kvs) == 1 and kvs[0].value.endswith(b"hello")  # value behind a small envelope
        head = await etcd_get(store, f"/shoal/{name}".encode())
        assert head and head[0].mod_revision == kvs[0].mod_revision  # committed in one etcd txn


async def test_two_stores_on_one_namespace_share_writes_and_watch_events(etcd_url):
    name = ns()
    a = await EtcdStore.open(etcd_url, namespace=name)
    b = await EtcdStore.open(etcd_url, namespace=name)
    try:
        wb = b.watch("/shared/*")
        assert await a.set("/shared/x", b"from a") == 1
        assert (await b.get("/shared/x")).value == b"from a"
        assert await b.set("/shared/x", b"from b") == 2  # b's cached state is stale-safe
        assert await a.compare_and_set("/shared/x", 2, b"a again") == 3
        with pytest.raises(VersionConflict) as info:
            await b.compare_and_set("/shared/x", 2, b"late")
        assert info.value.found == 3
        got = await next_events(wb, 3)
        assert [(e.event_type, e.value, e.version) for e in got] == [
            (EventType.Created, b"from a", 1),
            (EventType.Updated, b"from b", 2),
            (EventType.Updated, b"a again", 3),
        ]
        assert await a.revision() == await b.revision() == got[-1].revision
    finally:
        await a.close()
        await b.close()


async def test_concurrent_increments_from_two_stores_never_lose_one(etcd_url):
    name = ns()
    a = await EtcdStore.open(etcd_url, namespace=name)
    b = await EtcdStore.open(etcd_url, namespace=name)

    async def increment(store: EtcdStore, n: int) -> list[int]:
        won = []
        for _ in range(n):
            while True:
                e = await store.get("/counter")
                cur = 0 if e is None else int(e.value)
                try:
                    won.append(
                        await store.compare_and_set(
                            "/counter", 0 if e is None else e.version, b"%d" % (cur + 1)
                        )
                    )
                    break
                except VersionConflict:
                    continue
        return won

    try:
        wa, wb = await asyncio.gather(increment(a, 25), increment(b, 25))
        assert sorted(wa + wb) == list(range(1, 51))  # every version won exactly once
        e = await a.get("/counter")
        assert (e.value, e.version) == (b"50", 50)
    finally:
        await a.close()
        await b.close()


async def test_namespaces_are_isolated_and_revisions_may_have_gaps(etcd_url):
    a = await EtcdStore.open(etcd_url, namespace=ns())
    b = await EtcdStore.open(etcd_url, namespace=ns())
    try:
        w = a.watch("/*")
        await a.set("/k", b"a1")
        for i in range(5):
            await b.set(f"/k{i}", b"b")  # another namespace moves etcd's revision
        await a.set("/k", b"a2")
        assert await a.list("") == ["/k"]
        assert await b.list("") == [f"/k{i}" for i in range(5)]
        got = await next_events(w, 2)
        assert [e.value for e in got] == [b"a1", b"a2"]
        assert got[1].revision == got[0].revision + 6  # a gap where b wrote
        assert (await a.get("/k")).revision == got[1].revision
        replay = a.watch("/*", from_revision=got[0].revision + 1)  # starts inside the gap
        assert [e.value for e in await next_events(replay, 1)] == [b"a2"]
        await a.flush_watches()
        assert w.pending() == [] and replay.pending() == []
    finally:
        await a.close()
        await b.close()


async def test_namespace_names_are_checked(etcd_url):
    for bad in ["", "a/b", "a-b", "a.b", "x" * 65]:
        with pytest.raises(ValueError, match="namespace"):
            await EtcdStore.open(etcd_url, namespace=bad)


def test_endpoints_are_parsed_and_checked():
    assert parse_endpoints("http://127.0.0.1:2379, 10.0.0.2:2380") == ["127.0.0.1:2379", "10.0.0.2:2380"]
    assert parse_endpoints(["http://h1", "http://[::1]:2379"]) == ["h1:2379", "[::1]:2379"]
    for bad in ["", "https://h:2379", "http://h:2379/v3", "http://h:99999", " , "]:
        with pytest.raises(ValueError):
            parse_endpoints(bad)


async def test_open_store_helper_needs_endpoints_for_etcd(etcd_url, tmp_path):
    with pytest.raises(ValueError, match="--etcd"):
        await open_store("etcd", tmp_path, None)
    store = await open_store("etcd", None, etcd_url, name="helper", namespace=ns())
    async with store:
        assert isinstance(store, EtcdStore)
        assert await store.set("/a", b"1") == 1


# -- limits of the etcd server ---------------------------------------------------------------------
async def test_etcd_server_limits_are_checked_before_sending(etcd_url):
    limits = Limits(max_value_bytes=1 << 20, max_txn_ops=128)
    async with await EtcdStore.open(etcd_url, namespace=ns(), limits=limits) as store:  # etcd defaults
        ops = [TransactionOp.set(f"/k{i}", b"") for i in range(128)]  # 128 keys + the commit record
        with pytest.raises(LimitExceeded, match="max-txn-ops") as info:
            await store.transaction(ops)
        assert (info.value.limit, info.value.actual) == (128, 129)
        await store.transaction(ops[:127])
        big = [TransactionOp.set("/a", b"x" * 900_000), TransactionOp.set("/b", b"x" * 900_000)]
        with pytest.raises(LimitExceeded, match="max-request-bytes"):
            await store.transaction(big)
        assert await store.version("/a") == 0
        assert await store.set("/a", b"x" * (1 << 20)) == 1  # one full-size value fits


# -- history and compaction ------------------------------------------------------------------------
async def test_compaction_by_someone_else_is_reported_on_reopen(etcd_url):
    name = ns()
    async with await EtcdStore.open(etcd_url, namespace=name, compact=False) as store:
        for i in range(6):
            await store.set("/h", b"%d" % i)
        # An operator (or etcd's auto-compaction) compacts up to store revision 4.
        await store._client.call("Compact", rpc.CompactionRequest(revision=store.base + 4))
    async with await EtcdStore.open(etcd_url, namespace=name) as store:
        w = store.watch("/h", from_revision=5)  # revision 5 onward is complete in etcd
        assert [e.value for e in await next_events(w, 2)] == [b"4", b"5"]
        await store.flush_watches()
        with pytest.raises(Compacted) as info:
            store.watch("/h", from_revision=2)
        assert info.value.oldest == 5


async def test_the_store_compacts_etcd_to_its_history(etcd_url):
    async with await EtcdStore.open(
        etcd_url, namespace=ns(), limits=Limits(history=8), compact=True
    ) as store:
        for i in range(20):
            await store.set("/c", b"%d" % i)
            await store.flush_watches()
        await store._compact_task  # the compaction request runs in the background
        with pytest.raises(Exception, match="compacted"):  # etcd itself dropped old revisions
            await store._client.call("Range", rpc.RangeRequest(key=b"/", revision=store.base + 5))
        with pytest.raises(Compacted):
            store.watch("/c", from_revision=5)


# -- answers lost in flight (fault injected: a lost reply cannot be produced on demand) -------------
def lose_answers(store: EtcdStore, *, applied: bool, times: int = 1) -> list[int]:
    """The next `times` writes raise Ambiguous; with applied=True etcd really commits them first."""
    real = store._client.call
    lost = [0]

    async def call(method, request, *, write=False):
        if write and lost[0] < times:
            lost[0] += 1
            if applied:
                await real(method, request, write=write)
            raise Ambiguous("reply lost (injected)")
        return await real(method, request, write=write)

    store._client.call = call
    return lost


@pytest.mark.parametrize("applied", [True, False], ids=["applied", "not-applied"])
async def test_a_write_whose_answer_was_lost_is_applied_exactly_once(etcd_url, applied):
    async with await EtcdStore.open(etcd_url, namespace=ns()) as store:
        w = store.watch("/x")
        lost = lose_answers(store, applied=applied, times=3)
        assert await store.set("/x", b"1") == 1
        assert await store.compare_and_set("/x", 1, b"2") == 2  # not a conflict with itself
        result = await store.transaction(
            [TransactionOp.check_version("/x", 2), TransactionOp.set("/x", b"3")]
        )
        assert result.versions == [2, 3]
        assert lost[0] == 3
        e = await store.get("/x")
        assert (e.value, e.version, e.revision) == (b"3", 3, result.revision)
        assert [ev.version for ev in await next_events(w, 3)] == [1, 2, 3]
        await store.flush_watches()
        assert w.pending() == []


# -- etcd down, restarted, killed ------------------------------------------------------------------
async def test_outage_raises_unavailable_then_recovers_and_watch_resumes(own_etcd):
    store = await EtcdStore.open(own_etcd.url, namespace="outage", timeout=1.0, call_timeout=0.5)
    try:
        w = store.watch("/o/*")
        for i in range(3):
            await store.set(f"/o/{i}", b"before")
        own_etcd.stop_member(0)
        with pytest.raises(StoreUnavailable, match="unavailable"):
            await store.set("/o/x", b"during")
        with pytest.raises(StoreUnavailable):
            await store.get("/o/0")
        own_etcd.start_member(0)
        own_etcd.wait_healthy()
        for i in range(3, 6):
            await store.set(f"/o/{i}", b"after")
        got = await next_events(w, 6, timeout=20)
        assert [e.key for e in got] == [f"/o/{i}" for i in range(6)]  # none lost, none twice
        assert [e.revision for e in got] == sorted({e.revision for e in got})
        assert store._follower.restarts >= 1
        await store.flush_watches()
        assert w.pending() == []
    finally:
        await store.close()


async def test_acknowledged_writes_survive_kill_9_of_etcd(own_etcd):
    store = await EtcdStore.open(own_etcd.url, namespace="crash", timeout=2.0, call_timeout=1.0)
    acked = 0

    async def writer() -> None:
        nonlocal acked
        while True:
            await store.transaction(
                [
                    TransactionOp.set(f"/crash/{acked}/a", b"%d" % acked),
                    TransactionOp.set(f"/crash/{acked}/b", b"x"),
                ]
            )
            acked += 1

    task = asyncio.create_task(writer())
    while acked < 100:
        await asyncio.sleep(0.01)
    os.killpg(own_etcd.members[0].proc.pid, signal.SIGKILL)  # mid-load
    with pytest.raises(StoreUnavailable):
        await task
    await store.close()
    own_etcd.members[0].proc.wait(10)
    own_etcd.start_member(0)
    own_etcd.wait_healthy()
    async with await EtcdStore.open(own_etcd.url, namespace="crash") as store:
        keys = await store.list("/crash/")
        pairs = {k.rsplit("/", 1)[0] for k in keys}
        assert len(keys) == 2 * len(pairs)  # never half a transaction
        assert len(pairs) >= acked  # every acknowledged one (and maybe the one in flight)
        for n in range(acked):
            assert (await store.get(f"/crash/{n}/a")).value == b"%d" % n


async def test_compaction_is_off_by_default(etcd_url):
    """etcd compaction is cluster-wide: a store must not drop other clients' history unasked."""
    async with await EtcdStore.open(etcd_url, namespace=ns(), limits=Limits(history=8)) as store:
        for i in range(20):
            await store.set("/c", b"%d" % i)
        await store.flush_watches()
        assert store._compact_task is None
        old = await store._client.call("Range", rpc.RangeRequest(key=b"/", revision=store.base + 5))
        assert old.header.revision > 0  # still readable at that revision


async def test_many_writers_of_one_key_in_one_process_all_succeed(etcd_url):
    """More concurrent writers than optimistic attempts (64): they queue per key, none is StoreBusy."""
    async with await EtcdStore.open(etcd_url, namespace=ns()) as store:
        results = await asyncio.gather(*(store.set("/hot", b"%d" % i) for i in range(150)))
        assert sorted(results) == list(range(1, 151))  # every write got its own version
        entry = await store.get("/hot")
        assert entry is not None and entry.version == 150
