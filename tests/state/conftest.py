"""State Service fixtures: an in-process app (real kv on disk, real signatures from eth-account)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from eth_account import Account
from eth_account.messages import encode_defunct

from shoal.state.auth.eth import to_checksum_address
from shoal.state.service import create_app
from shoal.testing import asgi_client


@dataclass
class Service:
    app: Any
    http: httpx.AsyncClient
    admin: Any  # eth-account LocalAccount named by --admin-address

    @property
    def ctx(self) -> Any:
        return self.app.state.ctx


async def login(http: httpx.AsyncClient, account: Any) -> dict[str, str]:
    """Sign in with a real eth-account signature; the Authorization header to use."""
    ch = (await http.post("/auth/challenge", json={"address": account.address})).json()
    signature = Account.sign_message(encode_defunct(text=ch["message"]), account.key).signature.hex()
    r = await http.post(
        "/auth/login", json={"address": account.address, "signature": "0x" + signature.removeprefix("0x")}
    )
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['token']}"}


@pytest.fixture
def admin_account() -> Any:
    return Account.create()


@pytest.fixture(params=["lmdb", "sqlite"])
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
async def service(tmp_path, admin_account) -> AsyncIterator[Service]:
    app = create_app(
        {"data_dir": str(tmp_path / "state"), "admin_address": admin_account.address, "no_fsync": True}
    )
    async with asgi_client(app) as http:
        yield Service(app, http, admin_account)


@pytest.fixture
async def admin(service: Service) -> dict[str, str]:
    """Headers of the configured admin, signed in."""
    return await login(service.http, service.admin)


@pytest.fixture
async def dev(tmp_path) -> AsyncIterator[httpx.AsyncClient]:
    """An --insecure-dev service: every request is an admin (for shape and validation tests)."""
    app = create_app({"data_dir": str(tmp_path / "dev"), "insecure_dev": True, "no_fsync": True})
    async with asgi_client(app) as http:
        yield http


# addresses in the EIP-55 form the service stores them in (whatever case a client sends)
ADDRESS = to_checksum_address("0x1234567890abcdef1234567890abcdef12345678")
PEER = {"name": "Alice", "public_key": ADDRESS, "peer_type": "user"}
NODE = {
    "name": "Worker-1",
    "public_key": "WFmc3ixj8Ue4qZEQRTH+GYKJmUFQd2H4UBW5BJdXpXE=",
    "endpoint": "203.0.113.10:51820",
    "total_vcpus": 16,
    "total_memory_mib": 32768,
    "total_disk_gb": 1000,
    "operator_id": "peer-123456789",
}
INSTANCE = {
    "build_id": "build-123456789",
    "name": "web-server",
    "owner": "peer-123456789",
    "vcpu_count": 2,
    "mem_size_mib": 2048,
    "disk_size_gb": 10,
}
DNS = {"domain": "myapp.formation.cloud", "record_type": "A", "value": "192.168.100.10", "ttl": 300}
ACCOUNT = {
    "name": "Alice",
    "ethereum_address": ADDRESS,
    "email": "alice@example.com",
    "role": "user",
}
