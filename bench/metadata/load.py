"""Commit throughput and messages per commit, steady state against classic, in one run.

    python bench/metadata/load.py [--gate] [--commits 2000] [--inflight 32] [--nodes 5]

Real processes on loopback: `shoal serve metadata` and 5 `shoal serve storage` nodes (the
acceptors), 3+2 erasure-coded placements (5 acceptors per instance). Each configuration gets a
fresh cluster; every chunk's 5 fragments are stored before the clock starts, then `--commits`
POST /chunk/{id}/commit run with `--inflight` in flight. Configurations:

- classic:  --no-paxos-fast --no-paxos-batch  (phase 1 + phase 2 per commit, one message each)
- fast:     --paxos-fast --no-paxos-batch     (round 0 owned by the pin's creator: 2n, unbatched)
- batched:  --paxos-fast --paxos-batch        (the default: 2n, accepts to one node share a message)

Prints commits/s, median and p99 latency, messages per commit (per instance, from the commit
answers) and accept messages on the wire per commit (from /stats). --gate: exit 1 when the
default configuration is below 1,000 commits/s or above 2n messages per commit. Then runs
bench/metadata/scale.py (manifest and memory at 1M chunks; --no-scale skips it).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import httpx

from shoal.testing.metadata import Cluster, sha

DATA = os.urandom(1024)
CKS = sha(DATA)
CONFIGS = {
    "classic": ("--no-paxos-fast", "--no-paxos-batch"),
    "fast": ("--paxos-fast", "--no-paxos-batch"),
    "batched": ("--paxos-fast", "--paxos-batch"),
}


async def prepare(c: Cluster, ids: list[str]) -> None:
    sem = asyncio.Semaphore(64)
    async with aiohttp.ClientSession() as s:

        async def one(cid: str) -> None:
            async with sem:
                for i, u in enumerate(c.urls):
                    async with s.put(f"{u}/chunk/{cid}-frag-{i}", data=DATA) as r:
                        assert r.status in (200, 201), await r.text()

        await asyncio.gather(*(one(cid) for cid in ids))


async def burst(c: Cluster, vid: str, ids: list[str], inflight: int) -> tuple[float, list[float], list[int]]:
    frags = [
        {"fragment_index": i, "node_url": u, "size_bytes": len(DATA), "checksum": CKS}
        for i, u in enumerate(c.urls)
    ]
    sem = asyncio.Semaphore(inflight)
    lat: list[float] = []
    msgs: list[int] = []
    conn = aiohttp.TCPConnector(limit=inflight * 2)
    async with aiohttp.ClientSession(connector=conn) as s:

        async def one(k: int, cid: str) -> None:
            body = {
                "node_urls": c.urls,
                "checksum": CKS,
                "size_bytes": len(DATA),
                "video_id": vid,
                "sequence_num": k,
                "redundancy_mode": "erasure_coding",
                "fragments_metadata": frags,
            }
            async with sem:
                t = time.perf_counter()
                async with s.post(f"{c.meta.url}/chunk/{cid}/commit", json=body) as r:
                    out = await r.json()
                    assert r.status == 200, out
                lat.append(time.perf_counter() - t)
                msgs.append(out["messages"])

        t0 = time.perf_counter()
        await asyncio.gather(*(one(k, cid) for k, cid in enumerate(ids)))
        return time.perf_counter() - t0, lat, msgs


def group_cpu(pgids: list[int]) -> dict[int, float]:
    """CPU seconds (user + system) of every process in each process group (a service and its
    workers), from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    out = dict.fromkeys(pgids, 0.0)
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = Path(f"/proc/{d}/stat").read_text()
        except OSError:
            continue
        f = stat.rsplit(")", 1)[1].split()
        pgid = int(f[2])
        if pgid in out:
            out[pgid] += (int(f[11]) + int(f[12])) / tick
    return out


def run(name: str, root: Path, commits: int, inflight: int, nodes: int) -> dict:
    args = ("--maintenance-interval", "0", *CONFIGS[name])
    with Cluster(root / name, nodes=nodes, meta_args=args) as c:
        vid = httpx.post(c.meta.url + "/video", json={"title": "tput"}).json()["video_id"]
        ids = [f"t{k:06d}" for k in range(commits)]
        asyncio.run(prepare(c, ids))
        before = httpx.get(c.meta.url + "/stats").json()
        pgids = [c.meta.proc.pid, *(n.proc.pid for n in c.nodes)]
        cpu0, self0 = group_cpu(pgids), time.process_time()
        elapsed, lat, msgs = asyncio.run(burst(c, vid, ids, inflight))
        cpu1, self1 = group_cpu(pgids), time.process_time()
        after = httpx.get(c.meta.url + "/stats").json()
    cpu = {g: cpu1[g] - cpu0[g] for g in pgids}
    meta_cpu = cpu[pgids[0]]
    nodes_cpu = sum(cpu[g] for g in pgids[1:])
    lat.sort()
    batches = after.get("paxos_accept_batches", 0) - before.get("paxos_accept_batches", 0)
    return {
        "name": name,
        "rate": commits / elapsed,
        "median_ms": statistics.median(lat) * 1000,
        "p99_ms": lat[int(len(lat) * 0.99) - 1] * 1000,
        "messages": sum(msgs) / len(msgs),
        # accept batches are one message out and one back; unbatched, every instance message is one
        "wire": (2 * batches / commits) if batches else sum(msgs) / len(msgs),
        "cpu": (meta_cpu * 1000 / commits, nodes_cpu * 1000 / commits, (self1 - self0) * 1000 / commits),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gate", action="store_true")
    ap.add_argument("--commits", type=int, default=2000)
    ap.add_argument("--inflight", type=int, default=32)
    ap.add_argument("--nodes", type=int, default=5)
    ap.add_argument("--only", nargs="*", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--no-scale", action="store_true", help="skip bench/metadata/scale.py (1M chunks)")
    a = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-commits-") as tmp:
        for name in a.only:
            rows.append(run(name, Path(tmp), a.commits, a.inflight, a.nodes))
    n = a.nodes
    print(f"\ncommits of 3+2 placements on {n} acceptors, {a.inflight} in flight, {a.commits} commits each")
    print(
        f"{'config':<9} {'commits/s':>10} {'median':>9} {'p99':>9} {'msgs/commit':>12} {'wire msgs/commit':>17}"
    )
    base = rows[0]["rate"]
    for r in rows:
        print(
            f"{r['name']:<9} {r['rate']:>10,.0f} {r['median_ms']:>7.1f}ms {r['p99_ms']:>7.1f}ms "
            f"{r['messages']:>12.1f} {r['wire']:>17.2f}   {r['rate'] / base:.2f}x {rows[0]['name']}"
        )
    print(f"(classic Paxos 4n = {4 * n}, steady state 2n = {2 * n})")
    print("CPU ms per commit: metadata service / all storage nodes / this client")
    for r in rows:
        m, s, cl = r["cpu"]
        print(f"  {r['name']:<9} {m:.2f} / {s:.2f} / {cl:.2f}")
    code = 0
    if a.gate:
        best = next((r for r in rows if r["name"] == "batched"), None)
        if best is None or best["rate"] < 1000 or best["messages"] > 2 * n:
            print("GATE FAILED: need >= 1,000 commits/s and <= 2n messages per commit (batched)")
            code = 1
    if not a.no_scale:  # scripts/bench runs load.py scripts only: the scale figures come with it
        scale = Path(__file__).with_name("scale.py")
        code |= subprocess.call([sys.executable, str(scale), *(["--gate"] if a.gate else [])])
    return code


if __name__ == "__main__":
    sys.exit(main())
