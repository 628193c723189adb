"""Authentication and authorization with real signatures (eth-account wallets, Ed25519 nodes)."""

from __future__ import annotations

import secrets
import time

import httpx
import orjson
import pytest
from eth_account import Account
from eth_account.messages import encode_defunct

from shoal.state.auth.eth import HALF_N, SECP256K1_N
from shoal.state.auth.node_identity import NodeIdentity
from shoal.state.auth.signing import request_message
from shoal.state.client import StateApiError, StateClient
from tests.state.conftest import NODE, login
from tests.state.test_api import assert_error


def user_signed(
    account, method: str, target: str, body: bytes, ts: int | None = None, nonce: str | None = None,
    audience: str = "shoal:any",
) -> dict:  # fmt: skip
    ts = int(time.time()) if ts is None else ts
    nonce = nonce or secrets.token_hex(16)
    message = request_message("user", method, target, body, ts, nonce, audience)
    sig = Account.sign_message(encode_defunct(primitive=message), account.key).signature
    return {
        "X-Shoal-Audience": audience,
        "X-Shoal-Address": account.address,
        "X-Shoal-Timestamp": str(ts),
        "X-Shoal-Nonce": nonce,
        "X-Shoal-Signature": "0x" + bytes(sig).hex(),
        "Content-Type": "application/json",
    }


def node_signed(
    identity: NodeIdentity, method: str, target: str, body: bytes, audience: str = "shoal:any"
) -> dict:
    ts, nonce = int(time.time()), secrets.token_hex(16)
    message = request_message("node", method, target, body, ts, nonce, audience)
    return {
        "X-Shoal-Audience": audience,
        "X-Shoal-Node-Key": identity.public_key,
        "X-Shoal-Timestamp": str(ts),
        "X-Shoal-Nonce": nonce,
        "X-Shoal-Node-Signature": identity.sign(message),
        "Content-Type": "application/json",
    }


async def sign_challenge(http, account, signer=None) -> tuple[dict, str]:
    ch = (await http.post("/auth/challenge", json={"address": account.address})).json()
    sig = Account.sign_message(encode_defunct(text=ch["message"]), (signer or account).key).signature
    return ch, "0x" + bytes(sig).hex()


async def test_anonymous_requests_reach_only_public_routes(service):
    http = service.http
    for path in ("/peers", "/peers/peer-1", "/dns/a.example", "/auth/whoami"):
        assert_error(await http.get(path), 401, "UNAUTHORIZED")
    assert_error(await http.post("/peers/create", json={"name": "x", "public_key": "0x" + "1" * 40}), 401)
    assert (await http.get("/health")).json() == "healthy"
    assert (await http.get("/status")).json()["auth"] == "enabled"
    assert (await http.get("/openapi.json")).status_code == 200


async def test_login_issues_a_token_with_the_right_role(service, admin):
    http = service.http
    who = (await http.get("/auth/whoami", headers=admin)).json()
    assert who["role"] == "admin" and who["address"] == service.admin.address  # EIP-55
    assert who["account_id"].startswith("account-")  # configured admin got an account at start
    user = Account.create()
    headers = await login(http, user)
    who = (await http.get("/auth/whoami", headers=headers)).json()
    assert who == {
        "kind": "user", "address": user.address, "node_id": None, "role": "user",
        "account_id": None, "peer_id": None,
    }  # fmt: skip
    assert (await http.get("/peers", headers=headers)).status_code == 200


async def test_challenge_message_is_siwe_style(service):
    user = Account.create()
    ch = (await service.http.post("/auth/challenge", json={"address": user.address.lower()})).json()
    assert f"\n{user.address}\n" in ch["message"]  # EIP-55 form
    assert f"Nonce: {ch['nonce']}" in ch["message"] and "Expiration Time:" in ch["message"]
    assert ch["expires_at"] - ch["issued_at"] == 300


async def test_wrong_signer_is_refused(service):
    alice, mallory = Account.create(), Account.create()
    ch, sig = await sign_challenge(service.http, alice, signer=mallory)
    r = await service.http.post(
        "/auth/login", json={"address": alice.address, "signature": sig, "nonce": ch["nonce"]}
    )
    assert_error(r, 401, "SIGNATURE_MISMATCH")


async def test_challenge_is_single_use(service):
    alice = Account.create()
    ch, sig = await sign_challenge(service.http, alice)
    body = {"address": alice.address, "signature": sig, "nonce": ch["nonce"]}
    assert (await service.http.post("/auth/login", json=body)).status_code == 200
    assert_error(await service.http.post("/auth/login", json=body), 401)
    assert_error(
        await service.http.post("/auth/login", json={"address": alice.address, "signature": sig}), 401
    )


async def test_expired_challenge_is_refused(service):
    alice = Account.create()
    _, sig = await sign_challenge(service.http, alice)
    service.ctx.auth.clock = lambda: time.time() + 301
    r = await service.http.post("/auth/login", json={"address": alice.address, "signature": sig})
    assert_error(r, 401, "CHALLENGE_EXPIRED")


async def test_malformed_and_high_s_signatures_are_refused(service):
    alice = Account.create()
    _, sig = await sign_challenge(service.http, alice)
    raw = bytes.fromhex(sig[2:])
    s = int.from_bytes(raw[32:64], "big")
    twin = raw[:32] + (SECP256K1_N - s).to_bytes(32, "big") + bytes([55 - raw[64]])
    assert SECP256K1_N - s > HALF_N
    r = await service.http.post(
        "/auth/login", json={"address": alice.address, "signature": "0x" + twin.hex()}
    )
    assert_error(r, 401, "INVALID_SIGNATURE")
    r = await service.http.post("/auth/login", json={"address": alice.address, "signature": "0xdeadbeef"})
    assert_error(r, 401, "INVALID_SIGNATURE")
    r = await service.http.post("/auth/login", json={"address": "0xnot-an-address", "signature": sig})
    assert_error(r, 400)
    # the real signature still works: refused attempts did not consume the challenge
    assert (
        await service.http.post("/auth/login", json={"address": alice.address, "signature": sig})
    ).status_code == 200


async def test_tokens_expire_are_revocable_and_must_be_bearer(service, admin):
    http = service.http
    assert_error(await http.get("/peers", headers={"Authorization": "Bearer nope"}), 401, "INVALID_TOKEN")
    assert_error(await http.get("/peers", headers={"Authorization": "Basic abc"}), 401, "INVALID_TOKEN")
    assert (await http.post("/auth/logout", headers=admin)).json() == {"success": True}
    assert_error(await http.get("/peers", headers=admin), 401, "INVALID_TOKEN")
    fresh = await login(http, service.admin)
    service.ctx.auth.clock = lambda: time.time() + 86_401
    assert_error(await http.get("/peers", headers=fresh), 401, "TOKEN_EXPIRED")


async def test_signed_request_works_and_cannot_be_tampered_or_replayed(service):
    http = service.http
    alice = Account.create()
    body = orjson.dumps({"name": "Alice", "public_key": alice.address})
    h = user_signed(alice, "POST", "/peers/create", body)
    r = await http.post("/peers/create", content=body, headers=h)
    assert r.status_code == 200, r.text
    assert_error(await http.post("/peers/create", content=body, headers=h), 401, "REPLAYED_NONCE")
    tampered = orjson.dumps({"name": "Mallory", "public_key": alice.address})
    h2 = user_signed(alice, "POST", "/peers/create", body)
    assert_error(await http.post("/peers/create", content=tampered, headers=h2), 401, "SIGNATURE_MISMATCH")
    h3 = user_signed(alice, "POST", "/peers/create", body)
    assert_error(await http.post("/cidrs/create", content=body, headers=h3), 401, "SIGNATURE_MISMATCH")
    old = user_signed(alice, "GET", "/peers", b"", ts=int(time.time()) - 301)
    assert_error(await http.get("/peers", headers=old), 401, "STALE_REQUEST")
    listed = await http.get("/peers?limit=5", headers=user_signed(alice, "GET", "/peers?limit=5", b""))
    assert listed.status_code == 200 and listed.json()["total"] == 1


async def test_users_write_only_what_they_own(service, admin):
    http = service.http
    alice, bob = Account.create(), Account.create()
    ha, hb = await login(http, alice), await login(http, bob)
    assert_error(
        await http.post("/peers/create", json={"name": "x", "public_key": bob.address}, headers=ha), 403
    )
    pa = (
        await http.post("/peers/create", json={"name": "alice", "public_key": alice.address}, headers=ha)
    ).json()["peer_id"]
    pb = (
        await http.post("/peers/create", json={"name": "bob", "public_key": bob.address}, headers=hb)
    ).json()["peer_id"]
    c = await http.post("/cidrs/create", json={"cidr": "10.9.0.0/16", "name": "a", "owner": pa}, headers=ha)
    assert c.status_code == 200, c.text
    cid = c.json()["cidr_id"]
    assert_error(
        await http.post("/cidrs/create", json={"cidr": "10.8.0.0/16", "name": "a", "owner": pb}, headers=ha),
        403,
    )
    assert_error(await http.post("/cidrs/update", json={"id": cid, "name": "mine now"}, headers=hb), 403)
    assert_error(await http.delete(f"/cidrs/{cid}", headers=hb), 403)
    assert_error(
        await http.post("/cidrs/update", json={"id": cid, "owner": pb}, headers=ha), 403
    )  # cannot give away
    cb = (
        await http.post("/cidrs/create", json={"cidr": "10.7.0.0/16", "name": "b", "owner": pb}, headers=hb)
    ).json()["cidr_id"]
    assoc = {"name": "x", "source_cidr": cid, "target_cidr": cb}
    assert_error(await http.post("/associations/create", json=assoc, headers=ha), 403)
    assert (await http.post("/associations/create", json=assoc, headers=admin)).status_code == 200
    # instances owned by address work too; DNS records default to the creator
    inst = {
        "build_id": "b",
        "name": "vm",
        "owner": alice.address.lower(),
        "vcpu_count": 1,
        "mem_size_mib": 64,
        "disk_size_gb": 1,
    }
    assert (await http.post("/instances/create", json=inst, headers=ha)).status_code == 200
    assert (
        await http.post(
            "/dns/create", json={"domain": "a.example", "record_type": "A", "value": "10.0.0.1"}, headers=ha
        )
    ).status_code == 200
    assert_error(await http.post("/dns/update", json={"domain": "a.example", "ttl": 5}, headers=hb), 403)
    assert_error(await http.delete("/dns/a.example", headers=hb), 403)
    assert (await http.delete("/dns/a.example", headers=ha)).status_code == 200
    assert (
        await http.post("/cidrs/update", json={"id": cid, "name": "admin was here"}, headers=admin)
    ).status_code == 200


async def test_no_route_makes_a_user_admin(service, admin):
    http = service.http
    alice = Account.create()
    ha = await login(http, alice)
    mine = {"name": "Alice", "ethereum_address": alice.address}
    assert_error(await http.post("/accounts/create", json={**mine, "role": "admin"}, headers=ha), 403)
    assert_error(
        await http.post(
            "/accounts/create", json={**mine, "ethereum_address": Account.create().address}, headers=ha
        ),
        403,
    )
    acc = (await http.post("/accounts/create", json=mine, headers=ha)).json()["account_id"]
    assert_error(await http.post("/accounts/update", json={"id": acc, "role": "admin"}, headers=ha), 403)
    assert (
        await http.post("/accounts/update", json={"id": acc, "name": "Alice S"}, headers=ha)
    ).status_code == 200
    assert (await http.get("/auth/whoami", headers=ha)).json()["role"] == "user"
    assert (
        await http.post("/accounts/update", json={"id": acc, "role": "admin"}, headers=admin)
    ).status_code == 200
    assert (await http.get("/auth/whoami", headers=ha)).json()["role"] == "admin"


async def test_users_see_only_their_own_account(service, admin):
    http = service.http
    alice = Account.create()
    ha = await login(http, alice)
    await http.post("/accounts/create", json={"name": "Alice", "ethereum_address": alice.address}, headers=ha)
    listed = (await http.get("/accounts", headers=ha)).json()
    assert listed["total"] == 1 and listed["accounts"][0]["ethereum_address"] == alice.address
    admin_id = (await http.get("/auth/whoami", headers=admin)).json()["account_id"]
    assert_error(await http.get(f"/accounts/{admin_id}", headers=ha), 403)
    assert (await http.get("/accounts", headers=admin)).json()["total"] == 2


async def test_registered_nodes_sign_requests(service, admin):
    http = service.http
    me, other, stranger = NodeIdentity.generate(), NodeIdentity.generate(), NodeIdentity.generate()
    mine = (
        await http.post("/nodes/create", json={**NODE, "public_key": me.public_key}, headers=admin)
    ).json()["node_id"]
    theirs = (
        await http.post(
            "/nodes/create", json={**NODE, "name": "w2", "public_key": other.public_key}, headers=admin
        )
    ).json()["node_id"]
    r = await http.get("/peers", headers=node_signed(me, "GET", "/peers", b""))
    assert r.status_code == 200
    body = orjson.dumps({"id": mine, "state": "maintenance", "available_vcpus": 3})
    r = await http.post("/nodes/update", content=body, headers=node_signed(me, "POST", "/nodes/update", body))
    assert r.status_code == 200, r.text
    assert (await http.get(f"/nodes/{mine}", headers=admin)).json()["available_vcpus"] == 3
    body = orjson.dumps({"id": theirs, "state": "offline"})
    assert_error(
        await http.post(
            "/nodes/update", content=body, headers=node_signed(me, "POST", "/nodes/update", body)
        ),
        403,
    )
    body = orjson.dumps({"name": "p", "public_key": "0x" + "5" * 40})
    assert_error(
        await http.post(
            "/peers/create", content=body, headers=node_signed(me, "POST", "/peers/create", body)
        ),
        403,
    )
    assert_error(
        await http.get("/peers", headers=node_signed(stranger, "GET", "/peers", b"")), 401, "UNKNOWN_NODE"
    )
    forged = node_signed(stranger, "GET", "/peers", b"")
    forged["X-Shoal-Node-Key"] = me.public_key
    assert_error(await http.get("/peers", headers=forged), 401, "SIGNATURE_MISMATCH")


async def test_client_login_and_signed_modes(service):
    transport = httpx.ASGITransport(app=service.app)
    alice = Account.create()
    async with StateClient("http://test", account=alice, transport=transport) as state:
        with pytest.raises(StateApiError) as err:
            await state.list_peers()
        assert err.value.status == 401
        login_answer = await state.login()
        assert login_answer.role == "user" and login_answer.address == alice.address
        created = await state.create_peer("Alice", alice.address)
        assert (await state.get_peer(created.id)).public_key == alice.address
        assert (await state.whoami()).peer_id == created.id
    async with StateClient(
        "http://test", account=alice.key, sign_requests=True, transport=transport
    ) as state:
        page = await state.list_peers(public_key=alice.address)
        assert page.total == 1 and page.items[0].name == "Alice"
        await state.update_peer(created.id, name="Alice 2")
        assert (await state.get_peer(created.id)).name == "Alice 2"


async def test_insecure_dev_says_so(dev):
    r = await dev.get("/health")
    assert r.json() == "healthy" and "DISABLED" in r.headers["x-shoal-insecure-dev"]
    status = (await dev.get("/status")).json()
    assert status["auth"] == "disabled" and "INSECURE" in status["warning"]
    assert (await dev.get("/auth/whoami")).json()["kind"] == "dev"


async def test_client_signs_as_a_node(service, admin):
    identity = NodeIdentity.generate()
    body = {**NODE, "public_key": identity.public_key}
    node_id = (await service.http.post("/nodes/create", json=body, headers=admin)).json()["node_id"]
    transport = httpx.ASGITransport(app=service.app)
    async with StateClient("http://test", node=identity, transport=transport) as state:
        assert (await state.whoami()).node_id == node_id
        await state.update_node(node_id, available_memory_mib=1024)
        assert (await state.get_node(node_id)).available_memory_mib == 1024
        with pytest.raises(StateApiError) as err:
            await state.create_peer("p", "0x" + "6" * 40)
        assert err.value.status == 403


def test_node_identity_is_kept_in_the_data_dir(tmp_path):
    first = NodeIdentity.load_or_create(tmp_path)
    assert (tmp_path / "node_identity.pem").stat().st_mode & 0o777 == 0o600
    assert NodeIdentity.load_or_create(tmp_path).public_key == first.public_key


async def test_signatures_name_their_audience(service):
    http = service.http
    alice = Account.create()
    own = service.ctx.identity.public_key
    for audience in ("shoal:any", f"shoal:{own}"):
        h = user_signed(alice, "GET", "/peers", b"", audience=audience)
        assert (await http.get("/peers", headers=h)).status_code == 200
    other = NodeIdentity.generate().public_key
    for audience, code in ((f"shoal:{other}", "WRONG_AUDIENCE"), ("elsewhere:any", "WRONG_AUDIENCE")):
        assert_error(
            await http.get("/peers", headers=user_signed(alice, "GET", "/peers", b"", audience=audience)),
            401,
            code,
        )
    h = user_signed(alice, "GET", "/peers", b"")
    h["X-Shoal-Audience"] = f"shoal:{own}"  # the audience is signed: changing it breaks the signature
    assert_error(await http.get("/peers", headers=h), 401, "SIGNATURE_MISMATCH")
    h = user_signed(alice, "GET", "/peers", b"")
    del h["X-Shoal-Audience"]
    assert_error(await http.get("/peers", headers=h), 401, "MISSING_AUDIENCE")
    status = (await http.get("/status")).json()
    assert status["audience"] == f"shoal:{own}" and status["cluster_id"] == "shoal"


async def test_sign_in_domain_comes_from_configuration_not_the_host_header(service):
    alice = Account.create()
    r = await service.http.post(
        "/auth/challenge", json={"address": alice.address}, headers={"Host": "evil.example"}
    )
    assert r.status_code == 200
    message = r.json()["message"]
    assert "evil.example" not in message
    assert message.startswith(f"{service.ctx.siwe_domain} wants you to sign in")
    assert f"URI: {service.ctx.public_url}\n" in message


async def test_challenges_are_rate_limited_per_client(service):
    alice = Account.create()
    codes = [
        (await service.http.post("/auth/challenge", json={"address": alice.address})).status_code
        for _ in range(40)
    ]
    assert 429 in codes and codes[0] == 200
    r = await service.http.post("/auth/challenge", json={"address": alice.address})
    assert_error(r, 429, "RATE_LIMITED")
    assert int(r.headers["retry-after"]) >= 1


async def test_a_users_node_has_node_rights_only(service, admin):
    http = service.http
    mallory = Account.create()
    headers = await login(http, mallory)
    key = NodeIdentity.generate()
    body = {**NODE, "public_key": key.public_key, "operator_id": mallory.address}
    r = await http.post("/nodes/create", json=body, headers=headers)
    assert r.status_code == 200, r.text
    node_id = r.json()["node_id"]
    assert (await http.get(f"/nodes/{node_id}", headers=headers)).json()["trusted"] is False
    await http.post(
        "/accounts/create", json={"name": "a", "ethereum_address": Account.create().address}, headers=admin
    )
    for path in ("/accounts", "/peers"):
        r = await http.get(path, headers=node_signed(key, "GET", path, b""))
        assert r.status_code == 403, r.text
    r = await http.get(f"/nodes/{node_id}", headers=node_signed(key, "GET", f"/nodes/{node_id}", b""))
    assert r.status_code == 200  # its own record
    beat = orjson.dumps({"id": node_id, "state": "maintenance", "available_vcpus": 2})
    r = await http.post(
        "/nodes/update", content=beat, headers=node_signed(key, "POST", "/nodes/update", beat)
    )
    assert r.status_code == 200, r.text
    for change in ({"trusted": True}, {"operator_id": "peer-1"}):
        b = orjson.dumps({"id": node_id, **change})
        assert_error(
            await http.post("/nodes/update", content=b, headers=node_signed(key, "POST", "/nodes/update", b)),
            403,
        )
    assert_error(
        await http.post("/nodes/update", json={"id": node_id, "trusted": True}, headers=headers),
        403,
        "TRUST_NEEDS_ADMIN",
    )
    r = await http.post("/nodes/update", json={"id": node_id, "trusted": True}, headers=admin)
    assert r.status_code == 200
    r = await http.get("/peers", headers=node_signed(key, "GET", "/peers", b""))
    assert r.status_code == 200  # trusted by an admin: reads the non-account entities
    r = await http.get("/accounts", headers=node_signed(key, "GET", "/accounts", b""))
    assert_error(r, 403, "NODE_RIGHTS_ONLY")  # never accounts


async def test_owner_addresses_match_in_any_case(service, admin):
    http = service.http
    alice = Account.create()
    headers = await login(http, alice)
    lower = alice.address.lower()
    r = await http.post("/instances/create", json={**INSTANCE_OF(lower)}, headers=headers)
    assert r.status_code == 200, r.text
    r2 = await http.post("/instances/create", json={**INSTANCE_OF(alice.address)}, headers=headers)
    assert r2.status_code == 200
    got = (await http.get(f"/instances/{r.json()['instance_id']}", headers=headers)).json()
    assert got["owner"] == alice.address  # stored in EIP-55 form
    upd = await http.post("/instances/update", json={"id": got["id"], "name": "x"}, headers=headers)
    assert upd.status_code == 200, upd.text
    for asked in (lower, alice.address, "0x" + alice.address[2:].upper()):
        listed = (await http.get("/instances", params={"owner": asked}, headers=headers)).json()
        assert listed["total"] == 2, asked
    mine = (await http.get("/accounts", params={"ethereum_address": lower}, headers=headers)).json()
    assert mine["success"] is True


def INSTANCE_OF(owner: str) -> dict:
    from tests.state.conftest import INSTANCE

    return {**INSTANCE, "owner": owner}
