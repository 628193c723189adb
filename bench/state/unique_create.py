"""Create latency with and without a reservation round: one node, and three replicating nodes.

    python bench/state/unique_create.py [--n 200] [--concurrency 1]

On three nodes a create of a unique value (a DNS domain) is acknowledged only once a majority of
the trusted nodes accepted a claim on it (shoal.crdt.reserve): one round trip to each peer, in
parallel, before the local commit. A create without unique fields (an instance) skips the round.
Prints p50 / p90 / p99 in milliseconds for each case, measured in one run (docs/state.md).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from shoal.testing import ServiceProcess  # noqa: E402
from shoal.testing.crdt import StateCluster  # noqa: E402

INSTANCE = {
    "build_id": "b-1",
    "name": "bench",
    "owner": "o",
    "vcpu_count": 1,
    "mem_size_mib": 64,
    "disk_size_gb": 1,
}


def measure(url: str, n: int, concurrency: int, unique: bool, tag: str) -> list[float]:
    def one(i: int) -> float:
        if unique:
            path, body = (
                "/dns/create",
                {"domain": f"{tag}{i}.bench.example", "record_type": "A", "value": "192.0.2.1"},
            )
        else:
            path, body = "/instances/create", INSTANCE
        start = time.perf_counter()
        r = http.post(path, json=body)
        took = time.perf_counter() - start
        if r.status_code != 200:
            raise RuntimeError(f"{path}: {r.status_code} {r.text}")
        return took * 1000

    with httpx.Client(base_url=url, timeout=30) as http:
        for i in range(10):  # warm up
            one(-1 - i) if not unique else one(10_000_000 + i)
        with ThreadPoolExecutor(concurrency) as pool:
            return list(pool.map(one, range(n)))


def summary(ms: list[float]) -> str:
    q = statistics.quantiles(ms, n=100)
    return f"p50 {q[49]:7.2f}  p90 {q[89]:7.2f}  p99 {q[98]:7.2f}  (n={len(ms)})"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--concurrency", type=int, default=1)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        single = ServiceProcess("state", Path(tmp) / "single", ["--insecure-dev"]).start()
        try:
            rows.append(("1 node, unique (DNS)", measure(single.url, args.n, args.concurrency, True, "s")))
            rows.append(
                ("1 node, no unique field", measure(single.url, args.n, args.concurrency, False, "s"))
            )
        finally:
            single.stop()
        with StateCluster(Path(tmp) / "trio", 3) as trio:
            url = trio.urls()[0]
            rows.append(("3 nodes, unique (DNS)", measure(url, args.n, args.concurrency, True, "t")))
            rows.append(("3 nodes, no unique field", measure(url, args.n, args.concurrency, False, "t")))
    print(f"create latency in ms, concurrency {args.concurrency}")
    for label, ms in rows:
        print(f"{label:<28} {summary(ms)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
