"""`shoal demo` beyond the happy path: a State Service with authentication, nothing running."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import httpx
import pytest

from shoal.platform.demo import DemoError, register_nodes
from shoal.state.client import StateClient
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
