"""EtcdStore next to raw etcd v3 gRPC calls (the same stubs, the same channel settings), one run.

A real single-member etcd on 127.0.0.1 (Debian etcd-server; it fsyncs every commit). Each call of
a benchmark runs a batch of operations on a uvloop loop. The raw baseline does the least etcd
work for the same effect: Range for get, Put for set, a one-compare Txn for compare-and-set,
a 10-put Txn for the transaction. The store's extra cost is the value envelope, the commit
record put in the same Txn, the guard compares and its watch follower.
`python bench/run.py --only etcd` prints the ratios.
"""

from __future__ import annotations

import tempfile

import grpc
import pytest
import uvloop
from aetcd import rpc

from shoal.kv import TransactionOp
from shoal.kv.etcd import EtcdStore
from shoal.kv.etcd_client import CHANNEL_OPTIONS
from shoal.testing.etcd import EtcdCluster

N = 100  # operations per benchmark call
VALUE = b"v" * 100
KEYS = [f"/bench/{i:03d}" for i in range(100)]
VERSION = rpc.Compare.CompareTarget.Value("VERSION")
EQUAL = rpc.Compare.CompareResult.Value("EQUAL")


@pytest.fixture(scope="module")
def loop():
    lp = uvloop.new_event_loop()
    yield lp
    lp.close()


@pytest.fixture(scope="module")
def etcd():
    with tempfile.TemporaryDirectory(prefix="bench-etcd-") as d:
        cluster = EtcdCluster(d).start()
        yield cluster
        cluster.stop()


@pytest.fixture(scope="module")
def store(loop, etcd):
    s = loop.run_until_complete(EtcdStore.open(etcd.url, namespace="bench"))
    loop.run_until_complete(s.transaction([TransactionOp.set(k, VALUE) for k in KEYS]))
    yield s
    loop.run_until_complete(s.close())


@pytest.fixture(scope="module")
def kv(loop, etcd):
    """The raw client: a KV stub on its own channel."""

    async def make():
        return grpc.aio.insecure_channel(etcd.endpoints[0].removeprefix("http://"), options=CHANNEL_OPTIONS)

    channel = loop.run_until_complete(make())
    stub = rpc.KVStub(channel)
    loop.run_until_complete(
        stub.Txn(rpc.TxnRequest(success=[_put(b"/raw" + k.encode(), VALUE) for k in KEYS]))
    )
    yield stub
    loop.run_until_complete(channel.close())


def _put(key: bytes, value: bytes) -> rpc.RequestOp:
    return rpc.RequestOp(request_put=rpc.PutRequest(key=key, value=value))


def run(benchmark, loop, group: str, batch, baseline: bool) -> None:
    benchmark.group = group
    benchmark.extra_info["baseline"] = baseline
    benchmark.extra_info["ops_per_call"] = N
    benchmark(lambda: loop.run_until_complete(batch()))


def test_get_store(benchmark, loop, store):
    async def batch():
        for i in range(N):
            await store.get(KEYS[i % 100])

    run(benchmark, loop, "etcd get", batch, False)


def test_get_raw(benchmark, loop, kv):
    async def batch():
        for i in range(N):
            await kv.Range(rpc.RangeRequest(key=b"/raw" + KEYS[i % 100].encode()))

    run(benchmark, loop, "etcd get", batch, True)


def test_set_store(benchmark, loop, store):
    async def batch():
        for i in range(N):
            await store.set(KEYS[i % 100], VALUE)

    run(benchmark, loop, "etcd set", batch, False)


def test_set_raw(benchmark, loop, kv):
    async def batch():
        for i in range(N):
            await kv.Put(rpc.PutRequest(key=b"/raw" + KEYS[i % 100].encode(), value=VALUE))

    run(benchmark, loop, "etcd set", batch, True)


def test_compare_and_set_store(benchmark, loop, store):
    async def batch():
        version = await store.version("/cas")
        for _ in range(N):
            version = await store.compare_and_set("/cas", version, VALUE)

    run(benchmark, loop, "etcd compare_and_set", batch, False)


def test_compare_and_set_raw(benchmark, loop, kv):
    key = b"/raw/cas"

    async def batch():
        r = await kv.Range(rpc.RangeRequest(key=key))
        version = r.kvs[0].version if r.kvs else 0
        for _ in range(N):
            cmp = rpc.Compare(key=key, target=VERSION, result=EQUAL, version=version)
            resp = await kv.Txn(rpc.TxnRequest(compare=[cmp], success=[_put(key, VALUE)]))
            assert resp.succeeded
            version += 1

    run(benchmark, loop, "etcd compare_and_set", batch, True)


def test_txn10_store(benchmark, loop, store):
    async def batch():
        for i in range(0, N, 10):
            await store.transaction([TransactionOp.set(k, VALUE) for k in KEYS[i : i + 10]])

    run(benchmark, loop, "etcd transaction of 10 sets", batch, False)


def test_txn10_raw(benchmark, loop, kv):
    async def batch():
        for i in range(0, N, 10):
            await kv.Txn(
                rpc.TxnRequest(success=[_put(b"/raw" + k.encode(), VALUE) for k in KEYS[i : i + 10]])
            )

    run(benchmark, loop, "etcd transaction of 10 sets", batch, True)
