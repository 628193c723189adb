"""Time for a fresh node to sync N operations from a peer over loopback (default 100k).

    python bench/crdt/load.py [--ops N] [--bootstrap log|snapshot] [--gate]

Seeds node A's data dir with N signed operations (CIDR creates through the State Service's own
write path, in process, no fsync), starts A and an empty node B (`--peer A`) as real
`shoal serve state` processes, and measures how long B takes to hold all N operations and
serve the same listing count (`--bootstrap snapshot`: B adopts A's snapshot, verifying each
winner op, instead of replaying and verifying the whole log). Also prints how long A takes to
start with that log (its restore is one Dag.ingest). Bounded: gives up after 300 s.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from shoal.crdt.node import load_signer
from shoal.crdt.replica import Replica
from shoal.crdt.statedb import StateJournal, validate_value
from shoal.state.models import CidrCreate
from shoal.state.store import StateStore, Write
from shoal.testing import ServiceProcess, free_port


async def seed(data_dir: Path, key_dir: Path, n: int) -> float:
    store = await StateStore.open(data_dir, "lmdb", durable=False)
    await StateJournal.attach(
        store, Replica(load_signer({"node_key_dir": str(key_dir)}, key_dir), [], validate_value)
    )
    start = time.perf_counter()
    for i in range(n):
        cidr = f"10.{(i >> 8) & 255}.{i & 255}.{(i >> 16) * 16}/28"
        await store.apply(
            Write("cidr", "create", "bench", body=CidrCreate(cidr=cidr, name=f"c{i}", owner="o"))
        )
    elapsed = time.perf_counter() - start
    await store.close()
    return elapsed


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ops", type=int, default=100_000)
    ap.add_argument("--bootstrap", choices=("log", "snapshot"), default="log")
    ap.add_argument("--gate", action="store_true", help="exit 1 if the sync takes over 120 s")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        keys = [root / "keys" / "a", root / "keys" / "b"]
        for k in keys:
            k.mkdir(parents=True)
        pub = [load_signer({"node_key_dir": str(k)}, k).public_b64 for k in keys]
        seconds = asyncio.run(seed(root / "a", keys[0], args.ops))
        print(
            f"seeded {args.ops:,} ops on node A in {seconds:.1f} s ({args.ops / seconds:,.0f} local writes/s, no fsync)"
        )
        pa, pb = free_port(), free_port()
        started = time.perf_counter()
        a = ServiceProcess("state", root / "a", ["--insecure-dev", "--node-key-dir", str(keys[0]),
                                                 "--trust-node", pub[1]], port=pa).start(timeout=120)  # fmt: skip
        print(f"node A started with a {args.ops:,}-op log in {time.perf_counter() - started:.1f} s")
        b = ServiceProcess("state", root / "b", ["--insecure-dev", "--node-key-dir", str(keys[1]), "--trust-node",
                                                 pub[0], "--peer", a.url, "--bootstrap", args.bootstrap],
                           port=pb)  # fmt: skip
        try:
            start = time.perf_counter()
            b.start(timeout=60)
            ops = 0
            while time.perf_counter() - start < 300:
                ops = httpx.get(b.url + "/replication/status", timeout=30).json()["seq"]  # persisted
                if ops >= args.ops:
                    break
                time.sleep(0.2)
            elapsed = time.perf_counter() - start
            total = httpx.get(b.url + "/cidrs", params={"limit": 1}, timeout=30).json()["total"]
        finally:
            b.stop()
            a.stop()
        print(f"fresh node B (--bootstrap {args.bootstrap}) synced {ops:,} ops in {elapsed:.1f} s ({ops / elapsed:,.0f} ops/s, "
              f"start-up included); it lists {total:,} CIDRs")  # fmt: skip
        ok = ops >= args.ops and total == args.ops
        if not ok:
            print("FAILED: B did not catch up", file=sys.stderr)
        return 0 if ok or not args.gate else 1


if __name__ == "__main__":
    sys.exit(main())
