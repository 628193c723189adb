"""A real `shoal serve state` under granian: restarts, kill -9 after acknowledged writes, fuzzing."""

from __future__ import annotations

import httpx
import pytest
from eth_account import Account

from shoal.state.client import StateClient
from shoal.testing import ServiceProcess
from shoal.testing.fuzz import run_schemathesis


@pytest.mark.parametrize("store", ["lmdb", "sqlite"])
async def test_acknowledged_writes_survive_kill_9(tmp_path, store):
    admin = Account.create()
    args = ["--store", store, "--admin-address", admin.address]
    proc = ServiceProcess("state", tmp_path / "data", args).start()
    try:
        node_key = httpx.get(proc.url + "/status").json()["node_public_key"]
        async with StateClient(proc.url, account=admin) as state:
            await state.login()
            token = state.token
            peer = await state.create_peer("Alice", "0x" + "a" * 40)
            cidrs = [await state.create_cidr(f"10.{i}.0.0/16", f"net{i}", peer.id) for i in range(20)]
            await state.create_dns_record("myapp.formation.cloud", "A", "192.168.100.10")
            await state.update_peer(peer.id, name="Alice (Updated)")
            last = await state.delete_cidr(cidrs[-1].id)  # the last acknowledged write
            assert last.id == cidrs[-1].id
        proc.kill()  # SIGKILL right after the acknowledgement: no shutdown hooks run
        proc.start()
        assert httpx.get(proc.url + "/status").json()["node_public_key"] == node_key  # same identity
        async with StateClient(proc.url, token=token) as state:  # the session survived too
            assert (await state.get_peer(peer.id)).name == "Alice (Updated)"
            assert (await state.list_cidrs()).total == 19
            assert (await state.get_dns_record("myapp.formation.cloud")).value == "192.168.100.10"
            with pytest.raises(Exception, match="409"):  # unique index survived with the data
                await state.create_peer("Again", "0x" + "a" * 40)
            assert (await state.whoami()).role == "admin"
    finally:
        proc.stop()


async def test_graceful_restart_and_insecure_dev_warning(tmp_path):
    proc = ServiceProcess("state", tmp_path / "data", ["--insecure-dev"]).start()
    try:
        r = httpx.get(proc.url + "/health")
        assert r.json() == "healthy" and "DISABLED" in r.headers["x-shoal-insecure-dev"]
        async with StateClient(proc.url) as state:
            node = await state.create_node(
                "w1", "WFmc3ixj8Ue4qZEQRTH+GYKJmUFQd2H4UBW5BJdXpXE=", "10.0.0.1:51820", 4, 1024, 10, "peer-1"
            )
        assert proc.stop() is not None
        assert "INSECURE DEV MODE" in proc.log_path.read_text()
        proc.args = []  # now with authentication
        proc.start()
        assert "x-shoal-insecure-dev" not in httpx.get(proc.url + "/health").headers
        assert httpx.get(f"{proc.url}/nodes/{node.id}").status_code == 401
    finally:
        proc.stop()


def test_schemathesis_finds_no_server_errors(tmp_path):
    admin = Account.create()
    proc = ServiceProcess(
        "state", tmp_path / "data", ["--admin-address", admin.address, "--no-fsync"]
    ).start()
    try:
        import asyncio

        async def token() -> str:
            async with StateClient(proc.url, account=admin) as state:
                return (await state.login()).token

        bearer = asyncio.run(token())
        result = run_schemathesis(
            proc.url,
            headers=[f"Authorization: Bearer {bearer}"],
            max_examples=20,
            max_time=40,
            checks="not_a_server_error,response_schema_conformance,status_code_conformance",
            exclude_path_regex="/auth/logout",  # would revoke the fuzzer's own token
        )
        assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
        assert httpx.get(proc.url + "/health").json() == "healthy"
    finally:
        proc.stop()
