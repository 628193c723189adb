"""Metadata service figures, measured against baselines in the same run.

    python bench/run.py --only metadata        (or: pytest bench/metadata --benchmark-only -s)

Real processes on loopback: `shoal serve metadata` and 3 or 5 `shoal serve storage` nodes
(the acceptors). Groups:
- commit latency, 3 acceptors (replication) and 5 acceptors (3+2 fragments): one POST
  /chunk/{id}/commit (2 fan-out round trips, an fsync per acceptor per phase, the record's
  fsync) against the baseline POST /video (one request, one fsync on the metadata service);
- paxos in-process: the same protocol through LocalTransport on LMDB (no HTTP), 3 and 5 acceptors;
- manifest of a 1000-chunk video against the baseline GET / (smallest JSON route).
Commits per second (32 in flight) and messages per commit are printed as a table at the end.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from pathlib import Path

import httpx
import pytest
import uvloop

from shoal.kv import LmdbStore
from shoal.paxos import Fragment, Placement
from shoal.paxos.acceptor import Acceptor
from shoal.paxos.proposer import Proposer
from shoal.paxos.transport import LocalTransport
from shoal.testing.metadata import Cluster, sha

SIZE = 64 * 1024
DATA = os.urandom(SIZE)
CKS = sha(DATA)
FIGURES: dict[str, str] = {}
_ids = iter(range(10**9))


def next_id() -> str:
    return f"b{next(_ids)}"


@pytest.fixture(scope="module")
def tmp():
    with tempfile.TemporaryDirectory(prefix="bench-meta-") as d:
        yield Path(d)


@pytest.fixture(scope="module")
def clusters(tmp):
    three = Cluster(tmp / "c3", nodes=3).start()
    five = Cluster(tmp / "c5", nodes=5).start()
    yield {3: three, 5: five}
    three.stop()
    five.stop()
    print("\n== metadata figures")
    for k, v in FIGURES.items():
        print(f"  {k:<48} {v}")


def fragments_for(urls: list[str]) -> list[dict]:
    return [
        {"fragment_index": i, "node_url": u, "size_bytes": SIZE, "checksum": CKS} for i, u in enumerate(urls)
    ]


def upload(c: Cluster, chunk_id: str, mode_n: int, client: httpx.Client) -> None:
    if mode_n == 3:
        for u in c.urls:
            client.put(f"{u}/chunk/{chunk_id}", content=DATA)
    else:
        for i, u in enumerate(c.urls):
            client.put(f"{u}/chunk/{chunk_id}-frag-{i}", content=DATA)


def body(c: Cluster, n: int, chunk_id: str, vid: str, seq: int) -> dict:
    b = {"node_urls": c.urls, "checksum": CKS, "size_bytes": SIZE, "video_id": vid, "sequence_num": seq}
    if n == 5:
        b |= {"redundancy_mode": "erasure_coding", "fragments_metadata": fragments_for(c.urls)}
    return b


@pytest.mark.parametrize("n", [3, 5])
def test_commit_latency(benchmark, clusters, n):
    c = clusters[n]
    benchmark.group = f"commit latency, {n} acceptors"
    client = httpx.Client(timeout=30)
    vid = client.post(c.meta.url + "/video", json={"title": "bench"}).json()["video_id"]
    seq = iter(range(10**9))
    messages: list[int] = []

    def setup():
        cid = next_id()
        upload(c, cid, n, client)
        return (cid,), {}

    def run(cid: str):
        r = client.post(f"{c.meta.url}/chunk/{cid}/commit", json=body(c, n, cid, vid, next(seq)))
        assert r.status_code == 200, r.text
        messages.append(r.json()["messages"])

    benchmark.pedantic(run, setup=setup, rounds=60, warmup_rounds=3)
    FIGURES[f"messages per commit, {n} acceptors"] = (
        f"{sum(messages) / len(messages):.1f} (classic Paxos 4n = {4 * n}, Multi-Paxos steady state 2n = {2 * n})"
    )
    client.close()


@pytest.mark.parametrize("n", [3, 5])
def test_baseline_plain_write(benchmark, clusters, n):
    c = clusters[n]
    benchmark.group = f"commit latency, {n} acceptors"
    benchmark.extra_info["baseline"] = True
    client = httpx.Client(timeout=30)
    benchmark.pedantic(
        lambda: client.post(c.meta.url + "/video", json={"title": "x"}), rounds=60, warmup_rounds=3
    )
    client.close()


@pytest.mark.parametrize("n", [3, 5])
def test_commits_per_second(benchmark, clusters, n):
    """32 commits in flight; uploads are done before the clock starts."""
    c = clusters[n]
    benchmark.group = f"commit throughput (32 in flight), {n} acceptors"
    client = httpx.Client(timeout=30)
    vid = client.post(c.meta.url + "/video", json={"title": "tput"}).json()["video_id"]
    total = 160
    ids = [next_id() for _ in range(total)]
    for cid in ids:
        upload(c, cid, n, client)
    client.close()

    async def burst() -> float:
        sem = asyncio.Semaphore(32)
        async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=64)) as ac:

            async def one(k: int, cid: str) -> None:
                async with sem:
                    r = await ac.post(f"{c.meta.url}/chunk/{cid}/commit", json=body(c, n, cid, vid, k))
                    assert r.status_code == 200, r.text

            t0 = time.perf_counter()
            await asyncio.gather(*(one(k, cid) for k, cid in enumerate(ids)))
            return time.perf_counter() - t0

    elapsed = benchmark.pedantic(lambda: uvloop.run(burst()), rounds=1, iterations=1)
    FIGURES[f"commits per second, {n} acceptors"] = (
        f"{total / elapsed:,.0f}/s ({total} commits in {elapsed:.2f} s)"
    )


def test_manifest_1000_chunks(benchmark, clusters):
    c = clusters[3]
    benchmark.group = "manifest, 1000-chunk video"
    client = httpx.Client(timeout=60)
    vid = client.post(c.meta.url + "/video", json={"title": "long"}).json()["video_id"]

    async def fill() -> None:
        sem = asyncio.Semaphore(32)
        async with httpx.AsyncClient(timeout=60) as ac:

            async def one(k: int) -> None:
                cid = f"m{k:04d}-{vid[:8]}"
                async with sem:
                    await asyncio.gather(*(ac.put(f"{u}/chunk/{cid}", content=DATA[:1024]) for u in c.urls))
                    b = body(c, 3, cid, vid, k) | {"checksum": sha(DATA[:1024]), "size_bytes": 1024}
                    r = await ac.post(f"{c.meta.url}/chunk/{cid}/commit", json=b)
                    assert r.status_code == 200, r.text

            await asyncio.gather(*(one(k) for k in range(1000)))

    uvloop.run(fill())
    sizes = []

    def get():
        r = client.get(f"{c.meta.url}/manifest/{vid}")
        sizes.append(len(r.content))
        assert len(r.json()["chunks"]) == 1000

    benchmark.pedantic(get, rounds=40, warmup_rounds=2)
    FIGURES["manifest, 1000 chunks"] = (
        f"{benchmark.stats.stats.median * 1000:.2f} ms median, {sizes[0] / 1024:.0f} KiB"
    )
    client.close()


def test_manifest_baseline_root(benchmark, clusters):
    c = clusters[3]
    benchmark.group = "manifest, 1000-chunk video"
    benchmark.extra_info["baseline"] = True
    client = httpx.Client(timeout=30)
    benchmark.pedantic(lambda: client.get(c.meta.url + "/"), rounds=40, warmup_rounds=2)
    client.close()


@pytest.mark.parametrize("n", [3, 5])
def test_paxos_in_process(benchmark, tmp, n):
    """The protocol alone: real acceptors on durable LMDB, no HTTP."""
    benchmark.group = "paxos in-process (LMDB, fsync)"
    loop = uvloop.new_event_loop()
    stores = [loop.run_until_complete(LmdbStore.open(tmp / f"inproc{n}-{i}.lmdb")) for i in range(n)]
    urls = [f"http://n{i}" for i in range(n)]

    async def holds(sid: str, cks: str, verify: bool) -> None:
        return None

    t = LocalTransport({u: Acceptor(s, holds) for u, s in zip(urls, stores, strict=True)})
    prop = Proposer("bench.1", t)
    if n == 3:
        value = Placement("replication", CKS, SIZE, replicas=urls)
    else:
        value = Placement(
            "erasure_coding",
            CKS,
            SIZE,
            fragments=[Fragment(i, u, f"c-frag-{i}", CKS, SIZE) for i, u in enumerate(urls)],
        )

    def run():
        cid = next_id()
        if n == 5:
            v = Placement(
                "erasure_coding",
                CKS,
                SIZE,
                fragments=[Fragment(i, u, f"{cid}-frag-{i}", CKS, SIZE) for i, u in enumerate(urls)],
            )
        else:
            v = value
        out = loop.run_until_complete(prop.propose(cid, 0, v, urls))
        assert out.chosen

    benchmark.pedantic(run, rounds=200, warmup_rounds=5)
    if n == 3:
        benchmark.extra_info["baseline"] = True
    for s in stores:
        loop.run_until_complete(s.close())
    loop.close()
    FIGURES[f"paxos in-process, {n} acceptors"] = f"{benchmark.stats.stats.median * 1e6:.0f} µs median"
