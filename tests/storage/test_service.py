"""The storage node's HTTP API in-process: every status and header the spec documents."""

from __future__ import annotations

import hashlib
import time

import pytest

from shoal.storage.service import create_app
from shoal.testing import asgi_client

from .conftest import blob

MiB = 1 << 20


def options(tmp_path, **extra) -> dict:
    return {"data_dir": str(tmp_path / "node"), "port": 18999, "node_id": "node-t", **extra}


@pytest.fixture
async def client(tmp_path):
    async with asgi_client(create_app(options(tmp_path))) as c:
        yield c


async def test_put_new_then_same_then_different(client):
    data = blob(1, 2 * MiB)
    sha = hashlib.sha256(data).hexdigest()
    r = await client.put("/chunk/vid-1_chunk-000", content=data)
    assert r.status_code == 201
    assert r.headers["location"] == "/chunk/vid-1_chunk-000"
    assert r.headers["etag"] == f'"{sha}"'
    assert r.headers["x-chunk-size"] == str(2 * MiB)
    r = await client.put("/chunk/vid-1_chunk-000", content=data)
    assert r.status_code == 200 and r.headers["etag"] == f'"{sha}"'
    r = await client.put("/chunk/vid-1_chunk-000", content=blob(2))
    assert r.status_code == 409
    assert "different bytes" in r.json()["detail"]


async def test_put_refusals(client):
    r = await client.put("/chunk/bad.id", content=b"x")
    assert r.status_code == 400 and "chunk id" in r.json()["detail"]
    r = await client.put("/chunk/" + "x" * 129, content=b"x")
    assert r.status_code == 400
    r = await client.put("/chunk/empty", content=b"")
    assert r.status_code == 400 and r.json()["detail"] == "chunk body is empty"
    r = await client.put("/chunk/big", content=b"x" * (2 * MiB + 1))
    assert r.status_code == 413 and "detail" in r.json()
    assert (await client.get("/chunk/big")).status_code == 404


async def test_put_checksum_header(client):
    data = blob(3)
    good = "sha256:" + hashlib.sha256(data).hexdigest()
    r = await client.put("/chunk/c1", content=data, headers={"X-Chunk-Checksum": "sha256:" + "0" * 64})
    assert r.status_code == 400 and "does not match" in r.json()["detail"]
    assert (await client.head("/chunk/c1")).status_code == 404
    r = await client.put("/chunk/c1", content=data, headers={"X-Chunk-Checksum": "md5:abc"})
    assert r.status_code == 400
    r = await client.put(
        "/chunk/c1", content=data, headers={"X-Chunk-Checksum": good.upper().replace("SHA", "sha")}
    )
    assert r.status_code == 201 and r.headers["x-chunk-checksum"] == good


async def test_get_head_and_ranges(client):
    data = blob(4, 1000)
    await client.put("/chunk/g", content=data)
    r = await client.get("/chunk/g")
    assert r.status_code == 200 and r.content == data
    assert r.headers["content-length"] == "1000"
    assert r.headers["content-type"] == "application/octet-stream"
    assert r.headers["etag"] == '"' + hashlib.sha256(data).hexdigest() + '"'
    assert r.headers["x-chunk-size"] == "1000"
    assert r.headers["x-superblock-id"] == "1"
    h = await client.head("/chunk/g")
    assert h.status_code == 200 and h.content == b""
    for name in ("content-length", "etag", "x-chunk-size", "x-superblock-id"):
        assert h.headers[name] == r.headers[name]
    cases = {
        "bytes=0-9": (206, data[:10], "bytes 0-9/1000"),
        "bytes=990-": (206, data[990:], "bytes 990-999/1000"),
        "bytes=-5": (206, data[-5:], "bytes 995-999/1000"),
        "bytes=900-5000": (206, data[900:], "bytes 900-999/1000"),
        "bytes=5-1": (200, data, None),  # invalid: ignored
        "items=0-1": (200, data, None),
    }
    for header, (status, body, content_range) in cases.items():
        r = await client.get("/chunk/g", headers={"Range": header})
        assert (r.status_code, r.content) == (status, body), header
        assert r.headers.get("content-range") == content_range
    r = await client.get("/chunk/g", headers={"Range": "bytes=1000-"})
    assert r.status_code == 416 and r.headers["content-range"] == "bytes */1000"


async def test_missing_and_bad_ids(client):
    r = await client.get("/chunk/nope")
    assert r.status_code == 404 and r.json() == {"detail": "chunk nope not found"}
    assert (await client.head("/chunk/nope")).status_code == 404
    assert (await client.get("/chunk/no.pe")).status_code == 400
    assert (await client.delete("/chunk/nope")).status_code == 404


async def test_delete(client):
    await client.put("/chunk/d", content=b"bye")
    r = await client.delete("/chunk/d")
    assert r.status_code == 204
    assert (await client.get("/chunk/d")).status_code == 404
    assert (await client.delete("/chunk/d")).status_code == 404
    assert (await client.put("/chunk/d", content=b"again")).status_code == 201


async def test_ping_and_health(client):
    await client.put("/chunk/p", content=b"x")
    r = await client.head("/ping")
    assert r.status_code == 200
    assert r.headers["x-node-id"] == "node-t"
    assert float(r.headers["x-disk-usage-percent"]) > 0
    assert r.headers["x-chunk-count"] == "1"
    assert float(r.headers["x-response-time"]) >= 0
    assert r.headers["cache-control"] == "no-cache"
    h = (await client.get("/health")).json()
    assert h["status"] in ("healthy", "warning")
    assert h["chunk_count"] == 1 and h["node_id"] == "node-t"
    assert isinstance(h["uptime"], int) and isinstance(h["disk_usage"], float)


def _stored_bytes(tmp_path) -> int:
    node = tmp_path / "node"
    return (
        sum(p.stat().st_size for p in (node / "superblocks").iterdir()) + (node / "index.log").stat().st_size
    )


@pytest.mark.parametrize(
    ("percent", "status", "code", "put"),
    [(50, "healthy", 200, 201), (90, "warning", 200, 201), (97, "critical", 503, 507)],
)
async def test_disk_thresholds(tmp_path, percent, status, code, put):
    async with asgi_client(create_app(options(tmp_path))) as c:
        assert (await c.put("/chunk/seed", content=blob(9, MiB))).status_code == 201
    capacity = int(_stored_bytes(tmp_path) * 100 / percent)
    async with asgi_client(create_app(options(tmp_path, capacity_bytes=capacity))) as c:
        r = await c.get("/health")
        assert r.status_code == code
        assert r.json()["status"] == status
        assert abs(r.json()["disk_usage"] - percent) < 1
        r = await c.put("/chunk/more", content=b"x")
        assert r.status_code == put
        if put == 507:
            assert "disk usage" in r.json()["detail"]
        assert (await c.get("/chunk/seed")).status_code == 200  # reads go on when full


async def test_openapi_documents_the_chunk_routes(client):
    doc = (await client.get("/openapi.json")).json()
    ops = doc["paths"]["/chunk/{chunk_id}"]
    assert set(ops) >= {"get", "put", "head", "delete"}
    assert "507" in ops["put"]["responses"] and "409" in ops["put"]["responses"]
    assert "head" in doc["paths"]["/ping"]


async def test_chunk_listing_pages_in_id_order(client):
    """GET /chunks: what the metadata service reads to collect leftover copies."""
    for k in (3, 1, 2):
        assert (await client.put(f"/chunk/ls-{k}", content=blob(k, 1000))).status_code == 201
    assert (await client.delete("/chunk/ls-2")).status_code == 204
    first = (await client.get("/chunks", params={"limit": 1})).json()
    times = first.pop("stored_at")  # added later: every older field is as it was
    assert first == {"node_id": "node-t", "count": 2, "chunk_ids": ["ls-1"], "next_after": "ls-1"}
    assert list(times) == ["ls-1"] and times["ls-1"] <= time.time()
    rest = (await client.get("/chunks", params={"after": "ls-1"})).json()
    assert rest["chunk_ids"] == ["ls-3"] and rest["next_after"] is None
    assert rest["stored_at"]["ls-3"] <= times["ls-1"]  # ls-3 was stored first
    head = await client.head("/chunk/ls-3")
    assert float(head.headers["x-stored-at"]) == rest["stored_at"]["ls-3"]
    for bad in ({"limit": 0}, {"limit": 100_001}, {"after": "x" * 129}, {"limit": "many"}):
        r = await client.get("/chunks", params=bad)
        assert r.status_code == 400 and "detail" in r.json(), bad
    assert "/chunks" in (await client.get("/openapi.json")).json()["paths"]
