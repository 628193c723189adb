"""EtcdStore on a real 3-member etcd cluster: members die and come back while the store works."""

from __future__ import annotations

import asyncio

import pytest

from shoal.kv import TransactionOp
from shoal.kv.etcd import EtcdStore
from shoal.testing.etcd import EtcdCluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = EtcdCluster(tmp_path_factory.mktemp("etcd3"), size=3).start()
    yield c
    c.stop()


@pytest.fixture
def healthy(cluster):
    """Every member up before and after the test."""
    for i in range(3):
        cluster.start_member(i)
    cluster.wait_healthy()
    yield cluster
    for i in range(3):
        cluster.start_member(i)
    cluster.wait_healthy()


async def drain(w, n: int, timeout: float = 30) -> list:
    return [await asyncio.wait_for(anext(w), timeout) for _ in range(n)]


def check_exactly_once(events: list, keys: list[str]) -> None:
    assert [e.key for e in events] == keys, "events lost, repeated or out of order"
    revs = [e.revision for e in events]
    assert revs == sorted(set(revs))


async def test_losing_a_member_keeps_reads_writes_and_watch_working(healthy: EtcdCluster):
    writers, n = 3, 60
    store = await EtcdStore.open(healthy.endpoints, namespace="failover", timeout=30.0, call_timeout=2.0)
    acked = [0]

    async def write(t: int) -> None:
        for i in range(n):
            ops = [TransactionOp.set(f"/f/{t}/{i:02d}", b"%d" % i), TransactionOp.set(f"/count/{t}", b"")]
            result = await store.transaction(ops)
            assert result.versions[1] == i + 1  # each counter moves by one per acknowledged write
            acked[0] += 1

    async def reached(count: int) -> None:
        while acked[0] < count:
            await asyncio.sleep(0.005)

    try:
        w = store.watch("/f/*")
        tasks = [asyncio.create_task(write(t)) for t in range(writers)]
        await reached(40)
        first = store._client.index
        healthy.kill_member(first)  # the member this client talks to dies with requests in flight
        await reached(80)
        assert store._client.index != first
        assert (await store.get("/f/0/00")).value == b"0"
        healthy.start_member(first)
        healthy.wait_healthy([first])
        await reached(110)
        healthy.kill_member(healthy.leader())  # then the leader: a new election under load
        await asyncio.gather(*tasks)
        for t in range(writers):
            assert (await store.get(f"/count/{t}")).version == n  # none applied twice, none lost
        expected = sorted(f"/f/{t}/{i:02d}" for t in range(writers) for i in range(n))
        assert await store.list("/f/") == expected
        got = await drain(w, writers * n)
        revs = [e.revision for e in got]
        assert revs == sorted(set(revs)) and sorted(e.key for e in got) == expected
        for t in range(writers):  # each writer's own order is kept
            mine = [e.key for e in got if e.key.startswith(f"/f/{t}/")]
            assert mine == [f"/f/{t}/{i:02d}" for i in range(n)]
        await store.flush_watches()
        assert w.pending() == []
        assert store._follower.restarts >= 1
        print(f"\nwrites resolved after a lost answer: {store.ambiguous_writes}")
    finally:
        await store.close()


async def test_watch_survives_a_member_restart(healthy: EtcdCluster):
    victim = 1
    others = [m.client_url for i, m in enumerate(healthy.members) if i != victim]
    writer = await EtcdStore.open(others, namespace="restart")
    # One watcher can only talk to the victim (it must wait for it); one starts on it and may move.
    pinned = await EtcdStore.open(healthy.members[victim].client_url, namespace="restart", timeout=60.0)
    moving = await EtcdStore.open(
        [healthy.members[victim].client_url, *others], namespace="restart", timeout=60.0
    )
    try:
        wp, wm = pinned.watch("/r/*"), moving.watch("/r/*")
        keys = []
        for phase in ("before", "down", "after"):
            if phase == "down":
                healthy.stop_member(victim)
            if phase == "after":
                healthy.start_member(victim)
                healthy.wait_healthy([victim])
            for i in range(40):
                key = f"/r/{phase}/{i:02d}"
                await writer.set(key, phase.encode())
                keys.append(key)
        check_exactly_once(await drain(wm, len(keys)), keys)
        check_exactly_once(await drain(wp, len(keys)), keys)
        for store, w in ((pinned, wp), (moving, wm)):
            await store.flush_watches()
            assert w.pending() == []
            assert store._follower.restarts >= 1
        assert (await pinned.get("/r/down/39")).value == b"down"
    finally:
        for s in (writer, pinned, moving):
            await s.close()
