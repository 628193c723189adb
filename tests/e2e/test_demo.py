"""`shoal demo` beyond the happy path: a State Service with authentication, nothing running."""

from __future__ import annotations

import asyncio
import io
import subprocess
import sys

import httpx
import pytest

from shoal.platform.demo import COMPUTE_IMAGE, DemoError, Out, compute_container, register_nodes
from shoal.platform.dockerd import DockerDaemon, dockerd_available
from shoal.state.client import StateClient
from shoal.testing import ServiceProcess
from shoal.testing.platform import Up, free_offset

# the example key of docs/state.md and its address
KEY = "0x4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318"
ADDRESS = "0x2c7536E3605D9C16a7a3D7b1898e529396a65c23"


def test_nodes_registered_with_admin_auth(tmp_path):
    with Up(tmp_path / "data", free_offset(), "--only", "state", "--admin-address", ADDRESS) as up:
        assert f"admin: {ADDRESS}" in up.output and "INSECURE" not in up.output
        children = up.children()
        state_url = next(c.url for c in children if c.service == "state")
        storage = [c for c in children if c.service == "storage"]
        keys = tmp_path / "keys"

        with pytest.raises(DemoError, match="--admin-key"):
            asyncio.run(register_nodes(state_url, storage, keys, None))
        assert httpx.get(state_url + "/nodes").status_code == 401  # authentication is on

        rows = asyncio.run(register_nodes(state_url, storage, keys, KEY))
        assert [r["action"] for r in rows] == ["created"] * 5
        again = asyncio.run(register_nodes(state_url, storage, keys, KEY))
        assert [r["id"] for r in again] == [r["id"] for r in rows]
        assert [r["action"] for r in again] == ["updated"] * 5

        async def listed() -> dict:
            async with StateClient(state_url, account=KEY) as state:
                await state.login()
                page = await state.list_nodes()
                return {n.name: n.endpoint for n in page.items}

        assert asyncio.run(listed()) == {c.name: f"127.0.0.1:{c.port}" for c in storage}


def test_demo_without_shoal_up_says_so(tmp_path):
    offset = free_offset()
    out = subprocess.run(
        [sys.executable, "-m", "shoal", "demo", "--data-root", str(tmp_path), "--port-offset", str(offset)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1
    assert "is `shoal up` running" in out.stderr and "Traceback" not in out.stderr


COMPUTE_TOKEN = "demo-compute-token"


def compute_on(data_dir, docker_url: str) -> ServiceProcess:
    args = ["--docker-host", docker_url, "--libvirt-uri", "test:///default", "--token", COMPUTE_TOKEN]
    return ServiceProcess("compute", data_dir, args).start()


@pytest.mark.skipif(dockerd_available() is not None, reason=str(dockerd_available()))
def test_demo_runs_a_busybox_container_through_compute(tmp_path):
    """Step 1's compute line: a container started and stopped through the Compute API, then removed."""
    daemon = DockerDaemon(tmp_path / "dockerd")
    daemon.start()
    svc = None
    try:
        daemon.import_busybox(COMPUTE_IMAGE)
        svc = compute_on(tmp_path / "compute", daemon.url)
        lines = io.StringIO()
        auth = {"Authorization": f"Bearer {COMPUTE_TOKEN}"}
        with httpx.Client(timeout=60, headers=auth) as http:
            result = compute_container(http, svc.url, Out(lines))
            text = lines.getvalue()
            assert result["states"] == ["running", "stopped"] and result["removed"], (result, text)
            assert f"container {result['id']} ({COMPUTE_IMAGE}) running" in text
            assert f"container {result['id']} stopped" in text and f"container {result['id']} removed" in text
            assert http.get(f"{svc.url}/api/v1/compute/instances").json()["total"] == 0
            with daemon.client() as docker:
                assert docker.get("/containers/json", params={"all": "1"}).json() == []

            # without credentials compute refuses: the step says why and the demo goes on
            with httpx.Client(timeout=60) as anon:
                skipped = compute_container(anon, svc.url, Out(io.StringIO()))
            assert "credentials" in skipped["skipped"]
    finally:
        if svc is not None:
            svc.stop()
        daemon.stop()


def test_demo_skips_the_container_without_docker(tmp_path):
    """No dockerd behind compute (`shoal up --no-private-daemons`): skipped, not a failure."""
    svc = compute_on(tmp_path / "compute", f"unix://{tmp_path}/no-docker.sock")
    try:
        lines = io.StringIO()
        with httpx.Client(timeout=60, headers={"Authorization": f"Bearer {COMPUTE_TOKEN}"}) as http:
            result = compute_container(http, svc.url, Out(lines))
        assert "docker backend is unavailable" in result["skipped"], result
        assert "container step skipped: the docker backend is unavailable" in lines.getvalue()
        assert "skipped" in compute_container(http, None, Out(io.StringIO()))
    finally:
        svc.stop()
