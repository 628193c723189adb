"""What the fair read share (--read-bandwidth) costs a storage node that is not busy.

    python bench/storage/bandwidth_load.py [--duration 2] [--rounds 3] [--concurrency 1,4,16]

Two storage nodes in this run hold the same 2 MiB chunks: one without the share, one with
`--read-bandwidth` far above what this machine serves (so the bucket never runs dry and no
slice ever waits: the uncontended path, with each body sent in 256 KiB slices). wrk drives GETs
at each concurrency in interleaved rounds (bench/storage/load.py's helpers); the median round's
req/s and p99 are printed with the ratio share/no-share (~1.0 is the goal).
Contention itself is tested, not benched: tests/storage/test_bandwidth.py.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from load import GET_LUA, Proc, blobs, median, wrk

from shoal.testing import free_port, wait_http


class Node:
    def __init__(self, tmp: Path, name: str, extra: list[str]) -> None:
        self.name = name
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "shoal", "serve", "storage", "--port", str(self.port)]
        cmd += ["--data-dir", str(tmp / name), "--node-id", name, "--log-level", "warning", *extra]
        self.proc = Proc(cmd, tmp / f"{name}.log", {"SHOAL_ACCESS_LOG": "0"})
        wait_http(self.base + "/health", 30, self.proc.p)

    def load(self, data: list[bytes]) -> list[str]:
        with httpx.Client(base_url=self.base, timeout=30) as c:
            for i, b in enumerate(data):
                assert c.put(f"/chunk/blob-{i}", content=b).status_code in (200, 201)
        return [f"/chunk/blob-{i}" for i in range(len(data))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=2.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--concurrency", default="1,4,16")
    ap.add_argument("--budget", default="100G", help="--read-bandwidth of the shared node (never reached)")
    args = ap.parse_args()
    levels = [int(x) for x in args.concurrency.split(",")]
    data = blobs(16)
    with tempfile.TemporaryDirectory(prefix="shoal-bw-") as t:
        tmp = Path(t)
        script = tmp / "get.lua"
        script.write_text(GET_LUA)
        nodes = [Node(tmp, "plain", []), Node(tmp, "shared", ["--read-bandwidth", args.budget])]
        try:
            for n in nodes:
                (tmp / f"{n.name}.paths").write_text("\n".join(n.load(data)) + "\n")
            results: dict[str, dict[int, list[dict]]] = {n.name: {c: [] for c in levels} for n in nodes}
            for _ in range(args.rounds):
                for conc in levels:
                    for n in nodes:
                        res = wrk(n.base, script, [str(tmp / f"{n.name}.paths")], conc, args.duration)
                        results[n.name][conc].append(res)
        finally:
            for n in nodes:
                n.proc.stop()
    print(
        f"{'conc':>5} {'plain req/s':>12} {'shared req/s':>13} {'ratio':>6} {'plain p99':>10} {'shared p99':>11}"
    )
    for conc in levels:
        a, b = median(results["plain"][conc]), median(results["shared"][conc])
        ratio = b["rps"] / a["rps"] if a["rps"] else float("nan")
        print(
            f"{conc:>5} {a['rps']:>12.0f} {b['rps']:>13.0f} {ratio:>6.2f} {a['p99']:>8.2f}ms {b['p99']:>9.2f}ms"
            + (f"  errors: {a['errors']} / {b['errors']}" if a["errors"] or b["errors"] else "")
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
