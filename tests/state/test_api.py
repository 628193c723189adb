"""Every documented route with the documented shapes, validation and error envelope."""

from __future__ import annotations

import pytest

from tests.state.conftest import ACCOUNT, DNS, INSTANCE, NODE, PEER

ENVELOPE_KEYS = {"success", "error", "code"}


def assert_error(r, status: int, code: str | None = None) -> None:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == ENVELOPE_KEYS and body["success"] is False
    if code:
        assert body["code"] == code, body


async def test_health_is_the_documented_string(dev):
    r = await dev.get("/health")
    assert r.status_code == 200 and r.json() == "healthy"


async def test_peer_lifecycle_matches_the_spec(dev):
    r = await dev.post("/peers/create", json=PEER)
    assert r.status_code == 200
    created = r.json()
    assert set(created) == {"success", "peer_id", "created_at"} and created["success"] is True
    pid = created["peer_id"]
    assert pid.startswith("peer-") and pid[5:].isdigit()
    got = (await dev.get(f"/peers/{pid}")).json()
    assert got == {
        **PEER,
        "id": pid,
        "created_at": created["created_at"],
        "updated_at": created["created_at"],
    }
    r = await dev.post("/peers/update", json={"id": pid, "name": "Alice (Updated)"})
    assert set(r.json()) == {"success", "peer_id", "updated_at"}
    got = (await dev.get(f"/peers/{pid}")).json()
    assert got["name"] == "Alice (Updated)" and got["peer_type"] == "user"  # partial update kept the rest
    listed = (await dev.get("/peers")).json()
    assert listed["success"] is True and listed["total"] == 1 and listed["peers"] == [got]
    r = await dev.delete(f"/peers/{pid}")
    assert set(r.json()) == {"success", "peer_id", "deleted_at"} and r.json()["peer_id"] == pid
    assert_error(await dev.get(f"/peers/{pid}"), 404, "NOT_FOUND")
    assert_error(await dev.delete(f"/peers/{pid}"), 404)
    assert_error(await dev.post("/peers/update", json={"id": pid, "name": "x"}), 404)


async def test_every_kind_round_trips(dev):
    peer = (await dev.post("/peers/create", json=PEER)).json()["peer_id"]
    c1 = (
        await dev.post("/cidrs/create", json={"cidr": "192.168.100.0/24", "name": "VM", "owner": peer})
    ).json()
    c2 = (
        await dev.post("/cidrs/create", json={"cidr": "192.168.101.0/24", "name": "Ctl", "owner": peer})
    ).json()
    assert c1["cidr_id"].startswith("cidr-")
    assoc = {
        "name": "VM to Control",
        "source_cidr": c1["cidr_id"],
        "target_cidr": c2["cidr_id"],
        "allow_bidirectional": True,
    }
    a = (await dev.post("/associations/create", json=assoc)).json()
    assert a["association_id"].startswith("assoc-")
    assert (await dev.get(f"/associations/{a['association_id']}")).json()["allow_bidirectional"] is True
    d = (await dev.post("/dns/create", json=DNS)).json()
    assert d["dns_id"].startswith("dns-")
    rec = (await dev.get("/dns/myapp.formation.cloud")).json()
    assert rec["id"] == d["dns_id"] and rec["value"] == "192.168.100.10" and rec["ttl"] == 300
    r = await dev.post(
        "/dns/update", json={"domain": "myapp.formation.cloud", "value": "192.168.100.11", "ttl": 600}
    )
    assert r.json()["dns_id"] == d["dns_id"]
    assert (await dev.get("/dns/MyApp.Formation.Cloud.")).json()["ttl"] == 600  # names compare normalized
    i = (await dev.post("/instances/create", json=INSTANCE)).json()
    inst = (await dev.get(f"/instances/{i['instance_id']}")).json()
    assert inst["state"] == "running" and inst["vcpu_count"] == 2  # the spec's example
    await dev.post(
        "/instances/update", json={"id": i["instance_id"], "name": "web-server-updated", "state": "stopped"}
    )
    assert (await dev.get(f"/instances/{i['instance_id']}")).json()["state"] == "stopped"
    n = (await dev.post("/nodes/create", json=NODE)).json()
    node = (await dev.get(f"/nodes/{n['node_id']}")).json()
    assert node["available_vcpus"] == 16 and node["state"] == "online"
    await dev.post(
        "/nodes/update", json={"id": n["node_id"], "endpoint": "203.0.113.20:51820", "state": "maintenance"}
    )
    assert (await dev.get(f"/nodes/{n['node_id']}")).json()["state"] == "maintenance"
    acc = (await dev.post("/accounts/create", json=ACCOUNT)).json()
    await dev.post(
        "/accounts/update",
        json={"id": acc["account_id"], "email": "alice.smith@example.com", "role": "admin"},
    )
    got = (await dev.get(f"/accounts/{acc['account_id']}")).json()
    assert got["email"] == "alice.smith@example.com" and got["role"] == "admin"
    assert (await dev.delete("/dns/myapp.formation.cloud")).json()["dns_id"] == d["dns_id"]
    assert_error(await dev.get("/dns/myapp.formation.cloud"), 404)


async def test_lists_filter_page_and_count(dev):
    for i in range(5):
        body = {
            **INSTANCE,
            "name": f"vm{i}",
            "owner": f"peer-{i % 2}",
            "state": "running" if i < 3 else "stopped",
        }
        assert (await dev.post("/instances/create", json=body)).status_code == 200
    r = (await dev.get("/instances?owner=peer-0&state=running")).json()
    assert r["total"] == 2 and {x["name"] for x in r["instances"]} == {"vm0", "vm2"}
    r = (await dev.get("/instances?limit=2&offset=1")).json()
    assert r["total"] == 5 and [x["name"] for x in r["instances"]] == ["vm1", "vm2"]
    assert (r["limit"], r["offset"]) == (2, 1)
    r = (await dev.get("/instances?vcpu_count=2&limit=0")).json()
    assert r["total"] == 5 and r["instances"] == []
    assert_error(await dev.get("/instances?colour=blue"), 400)
    assert_error(await dev.get("/instances?limit=-1"), 400)
    assert_error(await dev.get("/instances?state=exploded"), 400)
    assert_error(await dev.get("/instances?vcpu_count=two"), 400)


@pytest.mark.parametrize(
    "path, body, code",
    [
        ("/cidrs/create", {"cidr": "192.168.100.0", "name": "n", "owner": "p"}, "INVALID_CIDR"),
        ("/cidrs/create", {"cidr": "300.1.1.0/24", "name": "n", "owner": "p"}, "INVALID_CIDR"),
        ("/cidrs/create", {"cidr": "10.0.0.1/8", "name": "n", "owner": "p"}, "INVALID_CIDR"),
        ("/dns/create", {**DNS, "value": "not-an-ip"}, "INVALID_IP"),
        ("/dns/create", {**DNS, "record_type": "AAAA", "value": "10.0.0.1"}, "INVALID_IP"),
        ("/dns/create", {**DNS, "record_type": "BOGUS"}, "VALIDATION_ERROR"),
        ("/dns/create", {**DNS, "ttl": -1}, "VALIDATION_ERROR"),
        ("/dns/create", {**DNS, "ttl": 2**31}, "VALIDATION_ERROR"),
        ("/dns/create", {**DNS, "domain": "bad..name"}, "INVALID_DOMAIN"),
        ("/dns/create", {**DNS, "record_type": "CNAME", "value": "-x.example"}, "INVALID_DOMAIN"),
        ("/accounts/create", {**ACCOUNT, "ethereum_address": "0x123"}, "VALIDATION_ERROR"),
        (
            "/accounts/create",
            {**ACCOUNT, "ethereum_address": "0x1234567890ABCDEF1234567890abcdef12345678"},
            "INVALID_ADDRESS",
        ),
        ("/accounts/create", {**ACCOUNT, "role": "superuser"}, "VALIDATION_ERROR"),
        ("/accounts/create", {**ACCOUNT, "email": "nobody"}, "INVALID_EMAIL"),
        ("/instances/create", {**INSTANCE, "disk_size_gb": -1}, "VALIDATION_ERROR"),
        ("/instances/create", {**INSTANCE, "vcpu_count": "2"}, "VALIDATION_ERROR"),
        ("/instances/create", {k: v for k, v in INSTANCE.items() if k != "owner"}, "VALIDATION_ERROR"),
        ("/instances/create", {**INSTANCE, "state": "exploded"}, "VALIDATION_ERROR"),
        ("/nodes/create", {**NODE, "total_vcpus": -16}, "VALIDATION_ERROR"),
        ("/nodes/create", {**NODE, "public_key": "not base64!"}, "INVALID_PUBLIC_KEY"),
        ("/nodes/create", {**NODE, "endpoint": "203.0.113.10"}, "INVALID_ENDPOINT"),
        ("/nodes/create", {**NODE, "endpoint": "203.0.113.10:70000"}, "INVALID_ENDPOINT"),
        ("/nodes/create", {**NODE, "available_vcpus": 17}, "INVALID_CAPACITY"),
        ("/peers/create", {**PEER, "peer_type": "robot"}, "VALIDATION_ERROR"),
        ("/peers/create", {**PEER, "surprise": 1}, "VALIDATION_ERROR"),
        ("/peers/create", {**PEER, "name": ""}, "VALIDATION_ERROR"),
        ("/peers/update", {"name": "no id"}, "VALIDATION_ERROR"),
        ("/instances/update", {"id": "instance-1", "vcpu_count": None}, "VALIDATION_ERROR"),
        (
            "/associations/create",
            {"name": "a", "source_cidr": "cidr-1", "target_cidr": "cidr-2"},
            "UNKNOWN_REFERENCE",
        ),
    ],
)
async def test_bad_input_is_400_in_the_envelope(dev, path, body, code):
    assert_error(await dev.post(path, json=body), 400, code)


@pytest.mark.parametrize("raw", [b"", b"{", b"[]", b'"x"', b"null"])
async def test_non_object_bodies_are_400(dev, raw):
    assert_error(
        await dev.post("/peers/create", content=raw, headers={"content-type": "application/json"}), 400
    )


async def test_update_validates_the_merged_document(dev):
    await dev.post("/dns/create", json=DNS)
    # switching an A record to AAAA without a new value leaves an IPv4 value: refused, nothing changed
    assert_error(
        await dev.post("/dns/update", json={"domain": DNS["domain"], "record_type": "AAAA"}),
        400,
        "INVALID_IP",
    )
    assert (await dev.get(f"/dns/{DNS['domain']}")).json()["record_type"] == "A"
    n = (await dev.post("/nodes/create", json=NODE)).json()["node_id"]
    assert_error(await dev.post("/nodes/update", json={"id": n, "total_vcpus": 8}), 400, "INVALID_CAPACITY")


@pytest.mark.parametrize(
    "path, first, second",
    [
        (
            "/peers/create",
            PEER,
            {**PEER, "name": "Bob", "public_key": PEER["public_key"].upper().replace("0X", "0x")},
        ),
        ("/accounts/create", ACCOUNT, {**ACCOUNT, "name": "Bob"}),
        ("/nodes/create", NODE, {**NODE, "name": "Worker-2"}),
        ("/dns/create", DNS, {**DNS, "domain": "MYAPP.formation.cloud."}),
        (
            "/cidrs/create",
            {"cidr": "10.0.0.0/8", "name": "a", "owner": "p"},
            {"cidr": "10.0.0.0/8", "name": "b", "owner": "q"},
        ),
    ],
)
async def test_unique_identifiers_collide_with_409(dev, path, first, second):
    assert (await dev.post(path, json=first)).status_code == 200
    assert_error(await dev.post(path, json=second), 409, "DUPLICATE")


async def test_deleting_a_referenced_cidr_is_409(dev):
    c1 = (await dev.post("/cidrs/create", json={"cidr": "10.1.0.0/16", "name": "a", "owner": "p"})).json()[
        "cidr_id"
    ]
    c2 = (await dev.post("/cidrs/create", json={"cidr": "10.2.0.0/16", "name": "b", "owner": "p"})).json()[
        "cidr_id"
    ]
    a = (
        await dev.post("/associations/create", json={"name": "x", "source_cidr": c1, "target_cidr": c2})
    ).json()
    assert_error(await dev.delete(f"/cidrs/{c1}"), 409, "IN_USE")
    await dev.delete(f"/associations/{a['association_id']}")
    assert (await dev.delete(f"/cidrs/{c1}")).status_code == 200


async def test_idempotency_key_replays_the_first_answer(dev):
    h = {"Idempotency-Key": "create-alice-1"}
    first = await dev.post("/accounts/create", json=ACCOUNT, headers=h)
    again = await dev.post("/accounts/create", json=ACCOUNT, headers=h)
    assert first.status_code == again.status_code == 200
    assert again.json() == first.json() and again.headers["idempotent-replayed"] == "true"
    assert (await dev.get("/accounts")).json()["total"] == 1
    assert_error(
        await dev.post("/accounts/create", json={**ACCOUNT, "name": "Other"}, headers=h),
        422,
        "IDEMPOTENCY_KEY_REUSED",
    )
    # without the key, the same body is a duplicate
    assert_error(await dev.post("/accounts/create", json=ACCOUNT), 409)


async def test_unknown_routes_and_methods_use_the_envelope(dev):
    assert_error(await dev.get("/nope"), 404)
    assert_error(await dev.put("/peers/create", json={}), 405)
    assert_error(await dev.get("/peers/no%00such"), 404)


async def test_openapi_documents_every_route(dev):
    doc = (await dev.get("/openapi.json")).json()
    for base in ("/peers", "/cidrs", "/associations", "/instances", "/nodes", "/accounts"):
        assert {"get"} <= set(doc["paths"][base])
        assert "post" in doc["paths"][f"{base}/create"] and "post" in doc["paths"][f"{base}/update"]
        assert {"get", "delete"} <= set(doc["paths"][base + "/{id}"])
    assert {"get", "delete"} <= set(doc["paths"]["/dns/{domain}"])
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"


async def test_long_unicode_idempotency_keys_are_fine(dev):
    key = "ключ-" * 24  # 216 bytes of UTF-8: percent-encoded it would not fit a kv key
    h = {"Idempotency-Key": key.encode()}
    first = await dev.post("/peers/create", json={"name": "x", "public_key": "0x" + "7" * 40}, headers=h)
    again = await dev.post("/peers/create", json={"name": "x", "public_key": "0x" + "7" * 40}, headers=h)
    assert first.status_code == again.status_code == 200 and first.json() == again.json()
    assert_error(await dev.post("/peers/create", json=PEER, headers={"Idempotency-Key": "k" * 256}), 400)
