"""The platform's API keys in the State Service (`--auth-dir`, issue #19): each shoal role gets
the State rights docs/state.md gives it, beside the Ethereum credentials, which work as before;
a revoked key (and its JWT) is refused within 1 s by a real `shoal serve state` process."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from eth_account import Account

from shoal.platform.demo import register_nodes
from shoal.platform.layout import Child
from shoal.state.auth.node_identity import NodeIdentity
from shoal.state.client import StateClient
from shoal.state.service import check_options, create_app
from shoal.testing import ServiceProcess, asgi_client
from shoal.web.auth import AuthDir, KeyTable, issue_node_token, issue_token
from tests.state.conftest import ACCOUNT, NODE, PEER, login
from tests.state.test_api import assert_error
from tests.state.test_auth import node_signed


@dataclass
class Platform:
    http: httpx.AsyncClient
    auth_dir: Path
    keys: dict[str, str]  # role -> API key
    ids: dict[str, str]  # role -> key id
    admin_account: Any  # the --admin-address wallet

    def bearer(self, role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[role]}"}


@pytest.fixture
async def platform(tmp_path: Path) -> AsyncIterator[Platform]:
    auth_dir = tmp_path / "auth"
    directory = AuthDir(auth_dir)
    keys = {"admin": directory.init()}
    ids = {"admin": directory.keys()[0].id}
    for role in ("operator", "uploader", "viewer"):
        record, keys[role] = directory.create_key(role, f"state-{role}")
        ids[role] = record.id
    admin_account = Account.create()
    app = create_app(
        {
            "data_dir": str(tmp_path / "state"),
            "auth_dir": str(auth_dir),
            "admin_address": admin_account.address,
            "no_fsync": True,
        }
    )
    async with asgi_client(app) as http:
        yield Platform(http, auth_dir, keys, ids, admin_account)


def node_body(key: str | None = None, name: str = "Worker-1") -> dict:
    return {**NODE, "name": name, "public_key": key or NodeIdentity.generate().public_key}


async def test_admin_key_is_a_state_admin(platform):
    http, admin = platform.http, platform.bearer("admin")
    who = (await http.get("/auth/whoami", headers=admin)).json()
    assert who["kind"] == "key" and who["role"] == "admin" and who["address"] is None
    r = await http.post("/nodes/create", json=node_body(), headers=admin)
    assert r.status_code == 200, r.text
    node = (await http.get(f"/nodes/{r.json()['node_id']}", headers=admin)).json()
    assert node["trusted"] is True  # registered by an admin
    r = await http.post("/accounts/create", json=ACCOUNT, headers=admin)
    assert r.status_code == 200, r.text
    account_id = r.json()["account_id"]
    assert (await http.get(f"/accounts/{account_id}", headers=admin)).status_code == 200
    accounts = (await http.get("/accounts", headers=admin)).json()
    assert accounts["total"] == 2  # ACCOUNT and the --admin-address account
    promoted = await http.post("/accounts/update", json={"id": account_id, "role": "admin"}, headers=admin)
    assert promoted.status_code == 200, promoted.text


async def test_operator_runs_the_platform_but_never_touches_accounts(platform):
    http, op, admin = platform.http, platform.bearer("operator"), platform.bearer("admin")
    r = await http.post("/nodes/create", json=node_body(), headers=op)
    assert r.status_code == 200, r.text
    node_id = r.json()["node_id"]
    assert (await http.get(f"/nodes/{node_id}", headers=op)).json()["trusted"] is True
    r = await http.post("/nodes/update", json={"id": node_id, "state": "offline"}, headers=op)
    assert r.status_code == 200, r.text
    assert (await http.post("/peers/create", json=PEER, headers=op)).status_code == 200
    assert (await http.delete(f"/nodes/{node_id}", headers=op)).status_code == 200

    account_id = (await http.post("/accounts/create", json=ACCOUNT, headers=admin)).json()["account_id"]
    assert_error(await http.get("/accounts", headers=op), 403, "KEY_ROLE")
    assert_error(await http.get(f"/accounts/{account_id}", headers=op), 403)
    other = {**ACCOUNT, "ethereum_address": Account.create().address, "role": "admin"}
    assert_error(await http.post("/accounts/create", json=other, headers=op), 403, "KEY_ROLE")
    update = {"id": account_id, "role": "admin"}
    assert_error(await http.post("/accounts/update", json=update, headers=op), 403, "KEY_ROLE")
    assert_error(await http.delete(f"/accounts/{account_id}", headers=op), 403, "KEY_ROLE")
    assert (await http.get(f"/accounts/{account_id}", headers=admin)).json()["role"] == "user"


@pytest.mark.parametrize("role", ["viewer", "uploader"])
async def test_viewer_and_uploader_keys_read_everything_but_accounts(platform, role):
    http, key, admin = platform.http, platform.bearer(role), platform.bearer("admin")
    node_id = (await http.post("/nodes/create", json=node_body(), headers=admin)).json()["node_id"]
    peer_id = (await http.post("/peers/create", json=PEER, headers=admin)).json()["peer_id"]
    account_id = (await http.post("/accounts/create", json=ACCOUNT, headers=admin)).json()["account_id"]

    # what an anonymous caller may not read, this key reads
    for path in (
        "/nodes",
        f"/nodes/{node_id}",
        "/peers",
        f"/peers/{peer_id}",
        "/cidrs",
        "/dns",
        "/instances",
    ):
        assert (await http.get(path)).status_code == 401, path
        r = await http.get(path, headers=key)
        assert r.status_code == 200, (path, r.text)
    assert (await http.get("/nodes", headers=key)).json()["total"] == 1
    full = (await http.get("/replication/status", headers=key)).json()
    assert "node_key" in full  # the member view, not the anonymous counters

    # never accounts, however asked
    assert_error(await http.get("/accounts", headers=key), 403, "KEY_ROLE")
    asked = {"ethereum_address": ACCOUNT["ethereum_address"]}
    assert_error(await http.get("/accounts", params=asked, headers=key), 403, "KEY_ROLE")
    assert_error(await http.get(f"/accounts/{account_id}", headers=key), 403)

    # and no writes
    writes = [
        ("POST", "/nodes/create", node_body()),
        ("POST", "/nodes/update", {"id": node_id, "state": "offline"}),
        ("POST", "/peers/create", {**PEER, "public_key": Account.create().address}),
        ("POST", "/dns/create", {"domain": "a.example", "record_type": "A", "value": "10.0.0.1"}),
        ("POST", "/accounts/create", {**ACCOUNT, "ethereum_address": Account.create().address}),
        ("DELETE", f"/nodes/{node_id}", None),
        ("DELETE", f"/peers/{peer_id}", None),
    ]
    for method, path, body in writes:
        r = await http.request(method, path, json=body, headers=key)
        assert_error(r, 403, "KEY_ROLE")
    assert (await http.get(f"/nodes/{node_id}", headers=admin)).json()["state"] != "offline"
    who = (await http.get("/auth/whoami", headers=key)).json()
    assert who["kind"] == "key" and who["role"] == "user"


async def test_jwts_of_the_auth_dir_are_accepted_and_checked(platform):
    http = platform.http
    secret = KeyTable(platform.auth_dir).secrets[0]
    viewer = issue_token(secret, subject=platform.ids["viewer"], role="viewer", ttl=60)
    headers = {"Authorization": f"Bearer {viewer}"}
    assert (await http.get("/nodes", headers=headers)).status_code == 200
    assert_error(await http.post("/peers/create", json=PEER, headers=headers), 403, "KEY_ROLE")
    # a token claiming more than its key has, one from another secret, a node token: 401
    forged = issue_token(secret, subject=platform.ids["viewer"], role="admin", ttl=60)
    assert_error(await http.get("/nodes", headers={"Authorization": f"Bearer {forged}"}), 401)
    alien = issue_token(b"x" * 32, subject=platform.ids["admin"], role="admin", ttl=60)
    assert_error(await http.get("/nodes", headers={"Authorization": f"Bearer {alien}"}), 401)
    node = issue_node_token(secret, "storage-1")
    r = await http.get("/nodes", headers={"Authorization": f"Bearer {node}"})
    assert_error(r, 401, "NODE_TOKEN_REFUSED")
    expired = issue_token(secret, subject=platform.ids["admin"], role="admin", ttl=1, now=time.time() - 60)
    assert_error(await http.get("/nodes", headers={"Authorization": f"Bearer {expired}"}), 401)
    # logging out does not revoke a platform credential (revoke its key), and is no error
    r = await http.post("/auth/logout", headers=headers)
    assert r.status_code == 200 and r.json()["success"] is False
    assert (await http.get("/nodes", headers=headers)).status_code == 200


async def test_bad_keys_are_a_401_in_the_state_envelope(platform):
    http = platform.http
    wrong = platform.keys["viewer"][:-4] + "AAAA"
    for token in (wrong, "shoal_0123456789abcdef_" + "A" * 43, "shoal_nonsense", "a.b.c"):
        r = await http.get("/nodes", headers={"Authorization": f"Bearer {token}"})
        assert_error(r, 401)
        assert r.headers["www-authenticate"].startswith("Bearer")


async def test_ethereum_credentials_work_as_before_beside_the_keys(platform):
    http = platform.http
    admin = await login(http, platform.admin_account)
    who = (await http.get("/auth/whoami", headers=admin)).json()
    assert who["kind"] == "user" and who["role"] == "admin"
    identity = NodeIdentity.generate()
    r = await http.post("/nodes/create", json=node_body(identity.public_key), headers=admin)
    assert r.status_code == 200, r.text
    node_id = r.json()["node_id"]
    assert (await http.get("/accounts", headers=admin)).json()["total"] == 1
    # a registered node signs its requests, with node rights only
    path = f"/nodes/{node_id}"
    r = await http.get(path, headers=node_signed(identity, "GET", path, b""))
    assert r.status_code == 200, r.text
    assert_error(await http.get("/accounts", headers=node_signed(identity, "GET", "/accounts", b"")), 403)
    # a user signed in with a wallet is a user, whatever keys exist
    user = await login(http, Account.create())
    assert (await http.get("/auth/whoami", headers=user)).json()["role"] == "user"
    assert_error(await http.post("/nodes/create", json=node_body(), headers=user), 403)
    assert (await http.post("/auth/logout", headers=user)).json()["success"] is True
    assert_error(await http.get("/nodes", headers=user), 401)


def test_the_auth_dir_is_checked_before_the_service_starts(tmp_path):
    with pytest.raises(SystemExit, match="shoal auth init"):
        check_options({"auth_dir": str(tmp_path / "none")})
    AuthDir(tmp_path / "auth").init()
    check_options({"auth_dir": str(tmp_path / "auth")})
    with pytest.raises(SystemExit, match="--insecure-dev"):
        check_options({"auth_dir": str(tmp_path / "auth"), "insecure_dev": True})


def test_a_revoked_key_and_its_token_stop_working_within_a_second(tmp_path):
    """A real `shoal serve state --auth-dir D`: `shoal auth key revoke` (AuthDir.revoke) ends the
    key and the JWT traded for it, and the demo's node registration uses the admin key."""
    auth_dir = tmp_path / "auth"
    directory = AuthDir(auth_dir)
    admin_key = directory.init()
    record, viewer = directory.create_key("viewer", "dashboard")
    token = issue_token(KeyTable(auth_dir).secrets[0], subject=record.id, role="viewer", ttl=300)
    args = ["--auth-dir", str(auth_dir), "--no-fsync"]
    with ServiceProcess("state", tmp_path / "state", args) as state, httpx.Client(timeout=5) as http:
        status = http.get(state.url + "/status").json()
        assert status["auth"] == "enabled" and status["warning"] is None
        assert "x-shoal-insecure-dev" not in http.get(state.url + "/health").headers
        assert http.get(state.url + "/nodes").status_code == 401

        # shoal demo's step 4 with the platform's admin key (no Ethereum key anywhere)
        storage = [
            Child(f"storage-{i}", "storage", 9000 + i, [], "", f"http://127.0.0.1:{9000 + i}", "")
            for i in (1, 2)
        ]
        rows = asyncio.run(register_nodes(state.url, storage, tmp_path / "keys", None, admin_key))
        assert [r["action"] for r in rows] == ["created", "created"]
        again = asyncio.run(register_nodes(state.url, storage, tmp_path / "keys", None, admin_key))
        assert [r["action"] for r in again] == ["updated", "updated"]

        async def trusted() -> list[bool]:
            async with StateClient(state.url, token=admin_key) as client:
                return [n.trusted for n in (await client.list_nodes()).items]

        assert asyncio.run(trusted()) == [True, True]

        for credential in (viewer, token):
            r = http.get(state.url + "/nodes", headers={"Authorization": f"Bearer {credential}"})
            assert r.status_code == 200 and r.json()["total"] == 2, r.text
        directory.revoke("dashboard")
        revoked_at = time.monotonic()
        refused: dict[str, float] = {}
        while len(refused) < 2 and time.monotonic() - revoked_at < 3:
            for name, credential in (("key", viewer), ("jwt", token)):
                if name not in refused:
                    r = http.get(state.url + "/nodes", headers={"Authorization": f"Bearer {credential}"})
                    if r.status_code == 401:
                        assert r.json()["code"] == "INVALID_API_KEY"
                        refused[name] = time.monotonic() - revoked_at
            time.sleep(0.02)
        assert set(refused) == {"key", "jwt"}, refused
        assert max(refused.values()) < 1.0, refused  # the issue's bound on noticing a revocation
        assert (
            http.get(state.url + "/nodes", headers={"Authorization": f"Bearer {admin_key}"}).status_code
            == 200
        )


@pytest.mark.parametrize("role", ["admin", "viewer"])
def test_schemathesis_with_platform_keys_finds_no_server_errors(tmp_path, role):
    """Every route fuzzed with an admin and a viewer API key: no 5xx, answers as documented
    (GET /auth/whoami says kind "key"). /auth/logout is fuzzed too: it never revokes a key."""
    from shoal.testing.fuzz import run_schemathesis

    directory = AuthDir(tmp_path / "auth")
    admin = directory.init()
    key = admin if role == "admin" else directory.create_key(role, "fuzz")[1]
    args = ["--auth-dir", str(tmp_path / "auth"), "--no-fsync"]
    with ServiceProcess("state", tmp_path / "state", args) as state:
        result = run_schemathesis(
            state.url,
            headers=[f"Authorization: Bearer {key}"],
            max_examples=10,
            max_time=30,
            checks="not_a_server_error,response_schema_conformance,status_code_conformance",
        )
        assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
        assert httpx.get(state.url + "/health").json() == "healthy"
        who = httpx.get(state.url + "/auth/whoami", headers={"Authorization": f"Bearer {key}"}).json()
        assert who["kind"] == "key" and who["role"] == ("admin" if role == "admin" else "user")
