"""What authentication costs a storage node: 2 MiB chunk PUT and GET, with and without --auth-dir.

    python bench/storage/auth_load.py [--duration 2] [--concurrency 1,4,16] [--rounds 3]

Two `shoal serve storage` nodes (the default server) on 127.0.0.1 in the same run, one open and
one with an auth dir, loaded with the same blobs. wrk drives:
- GET: open node, no header; auth node with a viewer API key, and with a viewer JWT (Bearer);
- PUT of new 2 MiB chunks with X-Chunk-Checksum: open node unsigned; auth node signed as a
  cluster node (signatures made just before each run, one nonce per request: wrk cannot HMAC).
Rounds are interleaved (a noisy neighbour hits both alike); the median round is kept. Ratios
are auth / open.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import tempfile
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from load import BLOB, GET_LUA, Proc, blobs, median, wrk

from shoal.storage.nodeauth import NodeCredentials
from shoal.testing import free_port, wait_http
from shoal.web.auth import AuthDir

GET_AUTH_LUA = GET_LUA.replace(
    'return wrk.format("GET", paths[i])', 'return wrk.format("GET", paths[i], {["Authorization"] = auth})'
).replace("  i = math.random(#paths)", "  i = math.random(#paths)\n  auth = args[2]")

# each wrk thread takes every n-th pre-signed line: line = path \t headers (k=v;k=v)
PUT_SIGNED_LUA = """
local counter = 1
setup = function(thread)
  thread:set("tid", counter)
  counter = counter + 1
end
init = function(args)
  local f = io.open(args[1], "rb")
  body = f:read("*all")
  f:close()
  threads = tonumber(args[3])
  reqs = {}
  local n = 0
  for line in io.lines(args[2]) do
    if n % threads == tid - 1 then reqs[#reqs + 1] = line end
    n = n + 1
  end
  k = 0
end
request = function()
  k = k + 1
  local line = reqs[k] or reqs[#reqs]
  local path, rest = line:match("^([^\\t]+)\\t(.*)$")
  local headers = {["Content-Type"] = "application/octet-stream"}
  for name, value in rest:gmatch("([^=;]+)=([^;]*)") do headers[name] = value end
  return wrk.format("PUT", path, headers, body)
end
"""


def node(tmp: Path, name: str, *extra: str) -> tuple[Proc, str]:
    port = free_port()
    cmd = [sys.executable, "-m", "shoal", "serve", "storage", "--port", str(port), "--log-level", "warning"]
    cmd += ["--data-dir", str(tmp / name), "--node-id", name, *extra]
    p = Proc(cmd, tmp / f"{name}.log", {"SHOAL_ACCESS_LOG": "0"})
    base = f"http://127.0.0.1:{port}"
    wait_http(base + "/health", 30, p.p)
    return p, base


def presign(creds: NodeCredentials | None, body_sha: str, prefix: str, n: int, out: Path) -> None:
    lines = []
    for i in range(n):
        path = f"/chunk/{prefix}-{i}"
        headers = {"X-Chunk-Checksum": f"sha256:{body_sha}"}
        if creds is not None:
            headers.update(creds.headers("PUT", path, body_sha256=body_sha))
        lines.append(path + "\t" + ";".join(f"{k}={v}" for k, v in headers.items()))
    out.write_text("\n".join(lines) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=2.0)
    ap.add_argument("--concurrency", default="1,4,16")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        print("wrk not found: apt-get install wrk", file=sys.stderr)
        return 2
    levels = [int(c) for c in args.concurrency.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="shoal-bench-auth-"))
    d = AuthDir(tmp / "auth")
    d.init()
    viewer = d.create_key("viewer", "bench")[1]
    creds = NodeCredentials(str(tmp / "auth"), "bench-uploader")
    (tmp / "get.lua").write_text(GET_LUA)
    (tmp / "get_auth.lua").write_text(GET_AUTH_LUA)
    (tmp / "put.lua").write_text(PUT_SIGNED_LUA)
    body = os.urandom(BLOB)
    (tmp / "body.bin").write_bytes(body)
    body_sha = hashlib.sha256(body).hexdigest()
    procs = []
    results: dict[str, dict[int, list]] = {}
    try:
        open_p, open_url = node(tmp, "open")
        auth_p, auth_url = node(tmp, "auth", "--auth-dir", str(tmp / "auth"))
        procs += [open_p, auth_p]
        data = blobs(24)
        paths = [f"/chunk/blob-{i}" for i in range(len(data))]
        with httpx.Client(timeout=30) as c:
            for p, b in zip(paths, data, strict=True):
                assert c.put(open_url + p, content=b).status_code in (200, 201)
                r = c.put(auth_url + p, content=b, auth=creds.httpx_auth())
                assert r.status_code in (200, 201), r.text
            token = c.post(auth_url + "/auth/token", headers={"Authorization": f"Bearer {viewer}"}).json()
        (tmp / "paths.txt").write_text("\n".join(paths) + "\n")
        gets = {
            "GET open": (open_url, tmp / "get.lua", [str(tmp / "paths.txt")]),
            "GET viewer key": (auth_url, tmp / "get_auth.lua", [str(tmp / "paths.txt"), f"Bearer {viewer}"]),
            "GET viewer JWT": (
                auth_url,
                tmp / "get_auth.lua",
                [str(tmp / "paths.txt"), f"Bearer {token['access_token']}"],
            ),
        }
        for url, lua, a in gets.values():
            wrk(url, lua, a, 4, 1.0)  # warm up
        run = 0
        for c in levels:
            for _ in range(args.rounds):
                for name, (url, lua, a) in gets.items():
                    results.setdefault(name, {}).setdefault(c, []).append(wrk(url, lua, a, c, args.duration))
                for name, url, signer in (("PUT open", open_url, None), ("PUT signed", auth_url, creds)):
                    run += 1
                    signed = tmp / f"put-{run}.txt"
                    presign(signer, body_sha, f"w{run}", 4000, signed)
                    threads = min(c, 2)
                    r = wrk(
                        url,
                        tmp / "put.lua",
                        [str(tmp / "body.bin"), str(signed), str(threads)],
                        c,
                        args.duration,
                    )
                    results.setdefault(name, {}).setdefault(c, []).append(r)
    finally:
        for p in procs:
            p.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    med = {n: {c: median(rs) for c, rs in by.items()} for n, by in results.items()}
    print(f"{'':16}" + "".join(f"{'c=' + str(c):>22}" for c in levels))
    for name, by in med.items():
        cells = "".join(
            f"{by[c]['rps']:>9.0f}/s p99 {by[c]['p99']:5.1f}ms" + ("!" if by[c]["non2xx"] else " ")
            for c in levels
        )
        print(f"{name:16}{cells}")
    for a, b in (("GET viewer key", "GET open"), ("GET viewer JWT", "GET open"), ("PUT signed", "PUT open")):
        ratios = "  ".join(f"c={c}: {med[a][c]['rps'] / max(med[b][c]['rps'], 1e-9):.2f}" for c in levels)
        print(f"{a} / {b}: {ratios}")
    bad = {n: sum(med[n][c]["non2xx"] for c in levels) for n in med}
    if any(bad.values()):
        print(f"non-2xx answers (a failed run): {bad}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
