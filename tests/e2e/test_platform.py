"""The whole platform end to end: `shoal up`, nginx in front of it, `shoal demo` through nginx.

Everything is real: 12 `shoal serve` processes on a random port offset, nginx with the config
`shoal up --nginx-config` writes, FFmpeg, the uploader, erasure-coded chunks on five storage
nodes, the smart client inside the dashboard. Authentication is on (`shoal up` made DATA_ROOT/auth)
and every client here uses the admin key it left. dockerd and libvirtd are not started
(--no-private-daemons): the Compute API must still come up and say BACKEND_UNAVAILABLE.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from shoal.testing.platform import Nginx, Up, free_offset

pytestmark = [
    pytest.mark.timeout(420),
    pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="FFmpeg is not installed (Debian ffmpeg)"),
    pytest.mark.skipif(Nginx.binary() is None, reason="nginx is not installed (Debian nginx-light)"),
]


def shoal(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "SHOAL_ACCESS_LOG": "0"}
    return subprocess.run(
        [sys.executable, "-m", "shoal", *args], capture_output=True, text=True, timeout=timeout, env=env
    )


def remuxed(source: Path, work: Path) -> bytes:
    """What the uploader stores: FFmpeg's fMP4 remux of the source, made here independently."""
    from shoal.uploader.media import remux

    out = work / "reference.mp4"
    asyncio.run(remux(source, out))
    return out.read_bytes()


def test_up_demo_through_nginx(tmp_path):
    up = Up(tmp_path / "data", free_offset(), "--forwarded-allow-ips", "127.0.0.1", "--no-private-daemons")
    with up, Nginx(tmp_path / "nginx", up.layout_args) as nginx, httpx.Client(timeout=30) as http:
        children = up.children()
        assert len(children) == 12 and sum(c.service == "storage" for c in children) == 5

        # -- the start-up summary: every service healthy; missing daemons reported, not fatal
        summary = up.output
        for c in children:
            assert c.url in summary
        # the State Service takes the platform's keys: authenticated, and the summary says how
        assert "INSECURE DEV MODE" not in summary
        assert "authenticated: Bearer <API key> (admin: " in summary
        assert "5 storage node(s) registered and healthy" in summary
        assert (
            f"`shoal demo --data-root {up.data_root} --port-offset {up.offset}`" in summary
        )  # copy-paste ready

        # -- every service, direct and through nginx; OpenAPI names the prefix only behind nginx
        for c in children:
            direct = http.get(c.url + "/health")
            proxied = http.get(nginx.url + c.prefix + "/health")
            assert direct.status_code == 200 and proxied.status_code == 200, c.name
            assert direct.json() == proxied.json() or c.service == "storage"  # uptime ticks
            doc = http.get(nginx.url + c.prefix + "/openapi.json").json()
            assert doc["servers"] == [{"url": c.prefix}], c.name
            assert doc["paths"] and "servers" not in http.get(c.url + "/openapi.json").json()
        assert http.get(nginx.url + "/state").status_code == 301

        # the State Service's sign-in message names the service's configured address, never the
        # Host a client sent (not even through a trusted proxy: issue #25)
        state = next(c for c in children if c.service == "state")
        challenge = http.post(
            nginx.url + "/state/auth/challenge",
            json={"address": "0x2c7536E3605D9C16a7a3D7b1898e529396a65c23"},
        )
        assert challenge.status_code == 200, challenge.text
        message = challenge.json()["message"]
        assert message.startswith(state.url.removeprefix("http://") + " wants you to sign in"), message
        assert f"127.0.0.1:{nginx.port}" not in message

        # -- compute without dockerd/libvirtd: up, and honest about it
        key = (tmp_path / "data" / "auth" / "admin.key").read_text().strip()
        auth = {"Authorization": f"Bearer {key}"}
        assert "Credentials: admin API key in" in summary
        cluster = http.get(nginx.url + "/compute/api/v1/compute/cluster/status", headers=auth)
        assert cluster.status_code == 200
        for name, backend in cluster.json()["backends"].items():
            if backend["status"] != "healthy":
                assert f"{name}: BACKEND_UNAVAILABLE" in summary
                info = http.get(nginx.url + f"/compute/api/v1/compute/backends/{name}/info", headers=auth)
                assert info.status_code == 503 and info.json()["error"]["code"] == "BACKEND_UNAVAILABLE"
        assert http.get(nginx.url + "/compute/api/v1/compute/instances").status_code == 401

        # -- the demo, every request through nginx
        results = tmp_path / "demo.json"
        demo = shoal(
            "demo", *up.layout_args, "--proxy-url", nginx.url, "--redundancy", "erasure_coding",
            "--seconds", "6", "--speed", "10", "--json", str(results),
        )  # fmt: skip
        assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
        for step in ("[1/7]", "[3/7]", "[5/7]", "[7/7]", "byte-exact", "decodes without errors"):
            assert step in demo.stdout
        assert "100% completed" in demo.stdout  # the progress bar reached the end
        r = json.loads(results.read_text())
        assert r["upload"]["redundancy_mode"] == "erasure_coding"
        chunks = r["upload"]["total_chunks"]
        assert chunks >= 2  # 6 s at 4 Mbit/s is about 3 MB: more than one 2 MiB chunk
        perf = r["performance"]
        assert perf["chunks_played"] == chunks and perf["download_success_rate"] == 1.0
        assert perf["startup_latency_sec"] is not None and perf["average_throughput_mbps"] > 0
        assert r["dashboard"] == nginx.url + "/dashboard"
        assert f"dashboard         {nginx.url}/dashboard/" in demo.stdout

        # -- the played stream, checked here on our own: byte-exact and clean to decode
        reference = remuxed(Path(r["source"]), tmp_path)
        assert Path(r["played"]).read_bytes() == reference
        stream = http.get(nginx.url + "/dashboard/api/stream", headers=auth).json()
        assert stream["finished"] and stream["total_chunks"] == chunks and stream["video_id"] == r["video_id"]
        segments = [
            http.get(f"{nginx.url}/dashboard/api/segment/{n}", headers=auth).content for n in range(chunks)
        ]
        assert b"".join(segments) == reference
        from shoal.uploader.media import decode_errors

        assert asyncio.run(decode_errors(r["played"])) == ""

        # -- the storage nodes are State Service nodes now
        assert http.get(nginx.url + "/state/nodes").status_code == 401  # authenticated
        nodes = http.get(nginx.url + "/state/nodes", params={"limit": 100}, headers=auth).json()["nodes"]
        storage = {c.name: c for c in children if c.service == "storage"}
        assert {n["name"]: n["endpoint"] for n in nodes} == {
            name: f"127.0.0.1:{c.port}" for name, c in storage.items()
        }
        assert all(n["trusted"] for n in nodes)  # registered with the platform's admin key
        again = shoal("demo", *up.layout_args, "--seconds", "6", "--speed", "20")
        assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
        assert again.stdout.count("(updated)") == 5  # a second run updates, never duplicates
        assert http.get(nginx.url + "/state/nodes", headers=auth).json()["total"] == 5

        # -- shoal status agrees
        status = shoal("status", *up.layout_args, "--json")
        assert status.returncode == 0, status.stdout + status.stderr
        rows = {row["name"]: row for row in json.loads(status.stdout)}
        assert set(rows) == {c.name for c in children} and all(row["healthy"] for row in rows.values())
        assert rows["metadata"]["nodes"]["healthy"] == 5 and rows["state"]["auth"] == "enabled"

        # -- a crashed service is restarted
        victim = next(s for s in up.state()["services"] if s["name"] == "storage-2")
        os.killpg(victim["pid"], signal.SIGKILL)
        up.wait_for("storage-2 exited with -9", 30)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            now = next(s for s in up.state()["services"] if s["name"] == "storage-2")
            try:
                if (
                    now["pid"] != victim["pid"]
                    and http.get(storage["storage-2"].url + "/health").status_code == 200
                ):
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        else:
            raise AssertionError("storage-2 was not restarted\n" + up.output[-3000:])

        # -- Ctrl-C stops everything, and nothing is left running
        pids = [s["pid"] for s in up.state()["services"]]
        assert up.interrupt() == 0
        assert "shoal up: stopped" in up.output
        for pid in pids:
            with pytest.raises(ProcessLookupError):
                os.killpg(pid, 0)
        assert not (up.data_root / "up.json").exists()


def test_dashboard_page_works_behind_a_prefix(tmp_path):
    import re
    from urllib.parse import urljoin

    up = Up(tmp_path / "data", free_offset(), "--only", "dashboard", "--forwarded-allow-ips", "127.0.0.1")
    with up, Nginx(tmp_path / "nginx", up.layout_args) as nginx, httpx.Client(timeout=10) as http:
        page_url = nginx.url + "/dashboard/"
        page = http.get(page_url)
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        scripts = re.findall(r'<script src="([^"]+)"', page.text)
        assert scripts
        for src in scripts:
            script = http.get(urljoin(page_url, src))
            assert script.status_code == 200, f"{src} -> {script.url}: {script.status_code}"
            assert not re.search(r"[\"'](/api/)", script.text), "the script calls /api/... outside the prefix"
