"""The State Service's answers as its OpenAPI document and the spec promise them (#24)."""

from __future__ import annotations

import re

from tests.state.conftest import DNS, INSTANCE, PEER
from tests.state.test_api import assert_error


async def test_list_filters_normalise_like_lookups(dev):
    assert (await dev.post("/dns/create", json=DNS)).status_code == 200
    for asked in ("MyApp.Formation.Cloud", "myapp.formation.cloud.", "myapp.formation.cloud"):
        r = (await dev.get("/dns", params={"domain": asked})).json()
        assert r["total"] == 1 and r["dns_records"][0]["domain"] == "myapp.formation.cloud", asked
    assert (await dev.get("/dns", params={"domain": "other.example"})).json()["total"] == 0
    assert (await dev.get("/dns", params={"domain": "not a name!"})).json()["total"] == 0
    peer = (await dev.post("/peers/create", json=PEER)).json()["peer_id"]
    await dev.post("/cidrs/create", json={"cidr": "2001:db8::/32", "name": "v6", "owner": peer})
    r = (await dev.get("/cidrs", params={"cidr": "2001:0DB8:0000::/32"})).json()
    assert r["total"] == 1 and r["cidrs"][0]["cidr"] == "2001:db8::/32"


async def test_changing_a_record_type_revalidates_its_value(dev):
    await dev.post("/dns/create", json=DNS)
    r = await dev.post("/dns/update", json={"domain": DNS["domain"], "record_type": "AAAA"})
    assert_error(r, 400, "INVALID_IP")  # 192.168.100.10 is no IPv6 address
    r = await dev.post(
        "/dns/update", json={"domain": DNS["domain"], "record_type": "MX", "value": "10 mx.example"}
    )
    assert r.status_code == 200
    r = await dev.post("/dns/update", json={"domain": DNS["domain"], "record_type": "A"})
    assert_error(r, 400, "INVALID_IP")
    r = await dev.post("/dns/update", json={"domain": DNS["domain"], "value": "\u00b2 mx.example"})
    assert_error(r, 400, "INVALID_DNS_VALUE")  # a superscript digit is no priority (was a 500)
    assert (await dev.get(f"/dns/{DNS['domain']}")).json()["value"] == "10 mx.example"


async def test_duplicate_associations_are_409(dev):
    peer = (await dev.post("/peers/create", json=PEER)).json()["peer_id"]
    a = (await dev.post("/cidrs/create", json={"cidr": "10.1.0.0/16", "name": "a", "owner": peer})).json()
    b = (await dev.post("/cidrs/create", json={"cidr": "10.2.0.0/16", "name": "b", "owner": peer})).json()
    one = {"name": "ab", "source_cidr": a["cidr_id"], "target_cidr": b["cidr_id"]}
    assert (await dev.post("/associations/create", json=one)).status_code == 200
    assert_error(await dev.post("/associations/create", json={**one, "name": "again"}), 409, "DUPLICATE")
    back = {"name": "ba", "source_cidr": b["cidr_id"], "target_cidr": a["cidr_id"]}
    r = await dev.post("/associations/create", json=back)  # the other direction is another association
    assert r.status_code == 200
    both = await dev.post(
        "/associations/update", json={"id": r.json()["association_id"], "allow_bidirectional": True}
    )
    assert_error(both, 409, "DUPLICATE")  # both ways would include a -> b again
    assert (await dev.get("/associations")).json()["total"] == 2


async def test_nul_and_bidi_controls_are_refused_in_names(dev):
    for bad in ("evil\u202eexe.txt", "a\x00b", "x\u2066y", "\u200fname"):
        r = await dev.post("/peers/create", json={**PEER, "name": bad})
        assert_error(r, 400, "VALIDATION_ERROR")
    assert (await dev.post("/peers/create", json={**PEER, "name": "Zoë 🚀"})).status_code == 200


async def test_a_non_json_body_is_415(dev):
    r = await dev.post("/peers/create", content=b'{"name":"x"}', headers={"content-type": "text/plain"})
    assert_error(r, 415, "UNSUPPORTED_MEDIA_TYPE")
    r = await dev.post("/peers/create", data={"name": "x"})  # a form
    assert_error(r, 415)
    ok = await dev.post(
        "/peers/create", json=PEER, headers={"content-type": "application/json; charset=utf-8"}
    )
    assert ok.status_code == 200


async def test_logout_without_a_token_is_401(service):
    r = await service.http.post("/auth/logout")
    assert_error(r, 401, "NO_TOKEN")
    assert "Bearer" in r.headers["www-authenticate"]


async def test_the_spec_example_gets_an_instance_by_build_id(dev):
    created = (await dev.post("/instances/create", json=INSTANCE)).json()
    by_build = await dev.get("/instances/build-123456789")  # the spec's "Getting an Instance"
    assert by_build.status_code == 200
    got = by_build.json()
    assert got["id"] == created["instance_id"] and got["build_id"] == "build-123456789"
    assert got["state"] == "running"  # as the spec's example reads it back after a create
    assert (await dev.get(f"/instances/{created['instance_id']}")).json() == got
    assert_error(await dev.get("/instances/build-0"), 404)


async def test_security_is_declared_where_it_is_needed(service, admin):
    doc = (await service.http.get("/openapi.json")).json()
    assert "security" not in doc
    paths = doc["paths"]
    for method, path in [("get", "/health"), ("get", "/status"), ("post", "/auth/challenge")]:
        assert paths[path][method]["security"] == [], path
        assert (
            await service.http.request(method.upper(), path, json={"address": "0x" + "1" * 40})
        ).status_code == 200
    assert {"bearer": []} in paths["/peers"]["get"]["security"]
    assert (await service.http.get("/peers")).status_code == 401
    assert paths["/replication/status"]["get"]["security"] == []
    anonymous = (await service.http.get("/replication/status")).json()
    # its own public key stays (peers discover it there to name it as their audience), no other key
    assert anonymous["node_key"] and "trusted_nodes" not in anonymous
    assert all("last_error" not in p and "url" not in p and "node_key" not in p for p in anonymous["peers"])
    full = (await service.http.get("/replication/status", headers=admin)).json()
    assert full["node_key"] and "trusted_nodes" in full
    # ids never name the POST routes beside them
    pattern = paths["/peers/{id}"]["get"]["parameters"][0]["schema"]["pattern"]
    assert not re.search(pattern, "update") and re.search(pattern, "peer-1")


async def test_dns_values_are_declared_per_record_type(dev):
    schema = (await dev.get("/openapi.json")).json()["components"]["schemas"]["DnsCreate"]
    by_type = {
        t: v["properties"]["value"].get("pattern")
        for v in schema["oneOf"]
        for t in v["properties"]["record_type"]["enum"]
    }
    assert re.search(by_type["A"], "192.168.100.10") and not re.search(by_type["A"], "192.168.100.300")
    assert re.search(by_type["AAAA"], "2001:db8::1") and not re.search(by_type["AAAA"], "10.0.0.1")
    assert re.search(by_type["MX"], "10 mx.example") and by_type["TXT"] is None
