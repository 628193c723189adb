"""State Service HTTP throughput next to a raw-ASGI JSON hello, same granian settings, same run.

    python bench/state/load.py [--gate] [--seconds 3] [--rounds 3] [--connections 32] [--store lmdb|sqlite]

Starts `shoal serve state` (one worker, bearer-token auth) and the hello baseline
(bench/state/hello_service.py), seeds documents, then drives each URL with wrk (or, without wrk,
a small asyncio keep-alive load generator in a separate process) and prints requests/s and the
ratio to hello. Targets: GET by id and a 20-item list each at least 0.5x hello (--gate exits 1
when either is missed). Unique-create latency on three nodes: bench/state/unique_create.py.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from eth_account import Account  # noqa: E402

from shoal.state.client import StateClient  # noqa: E402
from shoal.testing import ServiceProcess  # noqa: E402

TARGET = 0.5


def run_wrk(url: str, seconds: float, connections: int, headers: dict[str, str]) -> float:
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s"]
    for k, v in headers.items():
        cmd += ["-H", f"{k}: {v}"]
    out = subprocess.run([*cmd, url], capture_output=True, text=True, check=True).stdout
    if "Non-2xx" in out:
        raise RuntimeError(f"non-2xx answers from {url}:\n{out}")
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))


GEN = r"""
import asyncio, sys, time
host, port, path, seconds, conns, auth = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
req = f"GET {path} HTTP/1.1\r\nHost: {host}\r\n" + (f"Authorization: {auth}\r\n" if auth else "") + "\r\n"
req = req.encode()
async def worker(deadline, counts):
    r, w = await asyncio.open_connection(host, port)
    while time.monotonic() < deadline:
        w.write(req)
        head = await r.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise SystemExit(head.decode())
        length = int(next(l.split(b":")[1] for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")))
        await r.readexactly(length)
        counts[0] += 1
    w.close()
async def main():
    counts = [0]
    start = time.monotonic()
    await asyncio.gather(*(worker(start + seconds, counts) for _ in range(conns)))
    print(counts[0] / (time.monotonic() - start))
asyncio.run(main())
"""


def run_python_load(url: str, seconds: float, connections: int, headers: dict[str, str]) -> float:
    rest = url.split("://", 1)[1]
    hostport, _, path = rest.partition("/")
    host, port = hostport.split(":")
    auth = headers.get("Authorization", "")
    out = subprocess.run(
        [sys.executable, "-c", GEN, host, port, "/" + path, str(seconds), str(connections), auth],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return float(out.stdout.strip())


async def seed(url: str, admin) -> tuple[str, str]:
    async with StateClient(url, account=admin) as state:
        token = (await state.login()).token
        ids = [(await state.create_peer(f"peer {i}", "0x" + f"{i:040x}")).id for i in range(200)]
        await state.create_dns_record("bench.formation.cloud", "A", "10.0.0.1")
    return token, ids[100]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gate", action="store_true")
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--store", default="lmdb", choices=["lmdb", "sqlite"])
    ap.add_argument(
        "--python-load", action="store_true", help="use the asyncio generator even if wrk is here"
    )
    args = ap.parse_args()
    load = run_wrk if shutil.which("wrk") and not args.python_load else run_python_load
    env = {
        "SHOAL_SERVICE_MODULES": "hello=bench.state.hello_service",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "SHOAL_LOG_LEVEL": "WARNING",
    }
    admin = Account.create()
    with tempfile.TemporaryDirectory() as tmp:
        hello = ServiceProcess("hello", Path(tmp) / "hello", env=env).start()
        state = ServiceProcess(
            "state", Path(tmp) / "state", ["--store", args.store, "--admin-address", admin.address], env=env
        ).start()
        try:
            token, peer_id = asyncio.run(seed(state.url, admin))
            auth = {"Authorization": f"Bearer {token}"}
            cases = [
                ("raw ASGI hello (baseline)", hello.url + "/", {}),
                ("GET /peers/{id}", f"{state.url}/peers/{peer_id}", auth),
                ("GET /dns/{domain}", f"{state.url}/dns/bench.formation.cloud", auth),
                ("GET /peers?limit=20 (of 200)", f"{state.url}/peers?limit=20", auth),
                ("GET /peers?peer_type=user&limit=20", f"{state.url}/peers?peer_type=user&limit=20", auth),
            ]
            tool = "wrk" if load is run_wrk else "asyncio load generator"
            print(
                f"load: {tool}, {args.connections} connections, best of {args.rounds} rounds x {args.seconds:g} s;"
                f" store {args.store}"
            )
            rates: dict[str, float] = {}
            for _label, url, headers in cases:
                load(url, 1.0, args.connections, headers)  # warm up
            # interleaved rounds, best of each: other load on the machine only ever lowers a rate
            for _ in range(args.rounds):
                for label, url, headers in cases:
                    rates[label] = max(
                        rates.get(label, 0.0), load(url, args.seconds, args.connections, headers)
                    )
                    time.sleep(0.1)
        finally:
            state.stop()
            hello.stop()
    base = rates["raw ASGI hello (baseline)"]
    print(f"{'route':<40} {'req/s':>10} {'x hello':>9}")
    for label, rate in rates.items():
        print(f"{label:<40} {rate:>10,.0f} {rate / base:>8.2f}x")
    missed = False
    for label, what in (("GET /peers/{id}", "GET by id"), ("GET /peers?limit=20 (of 200)", "20-item list")):
        ratio = rates[label] / base
        verdict = "met" if ratio >= TARGET else "MISSED"
        missed |= ratio < TARGET
        print(f"{what} / hello = {ratio:.2f} (target >= {TARGET}): {verdict}")
    return 1 if args.gate and missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
