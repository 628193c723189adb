"""The metadata API in-process (its own kv store, no storage nodes): every route's shape,
status codes and error envelope, node health from heartbeats, and state across a restart."""

from __future__ import annotations

import asyncio
import json

import pytest

from shoal.metadata.service import create_app
from shoal.testing import asgi_client

CKS = "sha256:" + "ab" * 32


def options(tmp_path, **extra) -> dict:
    return {
        "data_dir": str(tmp_path / "meta"),
        "maintenance_interval": 0,
        "degraded_after": 0.6,
        "down_after": 1.2,
        **extra,
    }


@pytest.fixture(params=["lmdb", "sqlite"])
async def client(tmp_path, request):
    async with asgi_client(create_app(options(tmp_path, store=request.param))) as c:
        yield c


async def new_video(client, title="My Video", duration=600) -> str:
    r = await client.post("/video", json={"title": title, "duration_sec": duration})
    assert r.status_code == 200
    body = r.json()
    assert body["upload_url"] == f"/upload/{body['video_id']}"
    return body["video_id"]


async def test_root_health_stats(client):
    assert (await client.get("/")).json() == {"message": "V-Stack Metadata Service", "version": "1.0.0"}
    h = (await client.get("/health")).json()
    assert h["status"] == "healthy" and h["service"] == "metadata-service"
    assert h["database_status"] == "healthy" and h["total_nodes"] == 0
    s = (await client.get("/stats")).json()
    assert s == s | {"total_videos": 0, "total_chunks": 0, "total_replicas": 0, "healthy_nodes": 0}
    assert s["service_version"] == "1.0.0"


async def test_videos_pagination_and_manifest(client):
    ids = [await new_video(client, f"v{i}", i) for i in range(5)]
    assert (await client.get("/videos")).json() == []  # uploading until completed: not listed by default
    up = {"status": "uploading"}
    listed = (await client.get("/videos", params=up)).json()
    assert [v["video_id"] for v in listed] == ids  # creation order
    assert listed[0] == listed[0] | {
        "title": "v0",
        "duration_sec": 0,
        "total_chunks": 0,
        "status": "uploading",
    }
    assert listed[0]["created_at"].endswith("Z")
    page = (await client.get("/videos", params={"limit": 2, "offset": 3, **up})).json()
    assert [v["video_id"] for v in page] == ids[3:5]
    assert (await client.get("/videos", params={"limit": 0})).status_code == 400
    assert (await client.get("/videos", params={"offset": -1})).status_code == 400
    assert (await client.get("/videos", params={"limit": "x"})).status_code == 400
    assert (await client.get("/videos", params={"status": "deleted"})).status_code == 400
    assert (await client.get(f"/manifest/{ids[1]}")).status_code == 409  # not active
    m = (await client.get(f"/manifest/{ids[1]}", params=up)).json()
    assert m["video_id"] == ids[1] and m["chunks"] == [] and m["total_chunks"] == 0
    # measured from the chunks (none here), not the spec's example constants
    assert m["chunk_size_bytes"] == 0 and m["chunk_duration_sec"] is None
    r = await client.get("/manifest/nope")
    assert r.status_code == 404 and r.json() == {"detail": "video nope not found"}
    assert (
        await client.get("/manifest/a%00b")
    ).status_code == 404  # not a possible id (found by schemathesis)


async def test_bad_video_bodies(client):
    for body in (
        {},
        {"title": ""},
        {"title": 5},
        {"title": "x", "duration_sec": -1},
        {"title": "x", "extra": 1},
    ):
        r = await client.post("/video", json=body)
        assert r.status_code == 400 and "detail" in r.json(), body
    r = await client.post("/video", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["detail"]


async def test_views_and_recommendation(client):
    vid = await new_video(client)
    assert (await client.get(f"/video/{vid}/popularity")).json() == {"video_id": vid, "view_count": 0}
    rec = (await client.get(f"/redundancy/recommend/{vid}")).json()
    assert rec["preferred_mode"] == "erasure_coding" and rec["view_count"] == 0
    # no healthy node registered here: 3+2 needs 5, so replication is what new chunks get now
    assert rec["recommended_mode"] == "replication" and rec["healthy_nodes"] == 0
    assert "needs 5 healthy nodes" in rec["reason"] and rec["config"]["total_shards"] == 3
    await asyncio.gather(*(client.post(f"/video/{vid}/view") for _ in range(50)))
    r = await client.post(f"/video/{vid}/view")
    assert r.json() == r.json() | {"status": "ok", "message": f"View count incremented for {vid}"}
    assert (await client.get(f"/video/{vid}/popularity")).json()["view_count"] == 51
    assert (await client.post("/video/nope/view")).status_code == 404
    assert (await client.get("/video/nope/popularity")).status_code == 404


async def test_popularity_threshold_and_override(tmp_path):
    async with asgi_client(create_app(options(tmp_path, popularity_threshold=3))) as client:
        vid = await new_video(client)
        for _ in range(3):
            await client.post(f"/video/{vid}/view")
        assert (await client.get(f"/redundancy/recommend/{vid}")).json()["preferred_mode"] == "erasure_coding"
        await client.post(f"/video/{vid}/view")  # 4 > 3
        rec = (await client.get(f"/redundancy/recommend/{vid}")).json()
        assert rec["recommended_mode"] == "replication" and rec["config"]["total_shards"] == 3
        r = await client.post(f"/redundancy/override/{vid}", params={"mode": "erasure_coding"})
        assert r.json() == {
            "status": "ok",
            "video_id": vid,
            "override_mode": "erasure_coding",
            "message": "Manual override set to erasure_coding",
        }
        assert (await client.get(f"/redundancy/recommend/{vid}")).json()[
            "preferred_mode"
        ] == "erasure_coding"  # (recommended: replication, no 5 healthy nodes here)
        r = await client.delete(f"/redundancy/override/{vid}")
        assert r.json() == {"status": "ok", "video_id": vid, "message": "Manual override cleared"}
        assert (await client.get(f"/redundancy/recommend/{vid}")).json()["recommended_mode"] == "replication"
        assert (await client.post(f"/redundancy/override/{vid}", params={"mode": "raid"})).status_code == 400
        assert (await client.post(f"/redundancy/override/{vid}")).status_code == 400
        assert (
            await client.post("/redundancy/override/nope", params={"mode": "replication"})
        ).status_code == 404
        assert (await client.get("/redundancy/config")).json() == (
            await client.get("/redundancy/config")
        ).json() | {
            "popularity_threshold": 3,
            "replication_factor": 3,
            "erasure_data_shards": 3,
            "erasure_parity_shards": 2,
            "erasure_total_shards": 5,
        }


async def test_efficiency_and_overhead_with_nothing_stored(client):
    e = (await client.get("/redundancy/efficiency")).json()
    assert e["efficiency"]["replication_overhead_factor"] == 3.0
    assert e["efficiency"]["erasure_coding_overhead_factor"] == 1.667
    assert e["efficiency"]["storage_savings_percent"] == 44.4
    assert e["mode_comparison"]["replication"] == {
        "storage_per_chunk_mb": 6.0,
        "nodes_required": 3,
        "failures_tolerated": 2,
    }
    assert e["mode_comparison"]["erasure_coding"]["storage_per_chunk_mb"] == 3.33
    o = (await client.get("/storage/overhead")).json()
    assert o == {
        "replication_chunks": 0,
        "erasure_coded_chunks": 0,
        "total_logical_bytes": 0,
        "total_physical_bytes": 0,
        "storage_savings_percent": 0.0,
        "replication_overhead_bytes": 0,
        "erasure_overhead_bytes": 0,
    }


async def test_node_registration_heartbeat_and_health(client):
    r = await client.post("/nodes/register", params={"node_url": "http://127.0.0.1:9101", "node_id": "n1"})
    assert r.json() == {
        "status": "registered",
        "node_id": "n1",
        "node_url": "http://127.0.0.1:9101",
        "membership_epoch": 1,  # a committed configuration change
    }
    await client.post(
        "/nodes/register", params={"node_url": "http://127.0.0.1:9102/", "node_id": "n2", "version": "2"}
    )
    r = await client.post("/nodes/n1/heartbeat", json={"disk_usage_percent": 45.2, "chunk_count": 1250})
    assert r.json() == {"status": "ok", "message": "Heartbeat updated for node n1"}
    healthy = (await client.get("/nodes/healthy")).json()
    assert {n["node_id"] for n in healthy} == {"n1", "n2"}
    n1 = next(n for n in healthy if n["node_id"] == "n1")
    assert n1 == n1 | {"node_url": "http://127.0.0.1:9101", "disk_usage_percent": 45.2, "chunk_count": 1250}
    assert n1["status"] == "healthy" and n1["last_heartbeat"].endswith("Z") and n1["version"] == "1.0.0"
    all_nodes = (await client.get("/nodes/all")).json()["nodes"]
    assert [n["node_id"] for n in all_nodes] == ["n1", "n2"] and all_nodes[1]["version"] == "2"
    s = (await client.get("/nodes/health-summary")).json()
    assert (s["healthy"], s["degraded"], s["down"]) == (2, 0, 0)
    # n1 keeps heartbeating, n2 falls silent: degraded after 0.6 s, down after 1.2 s
    seen = set()
    for _ in range(20):
        await asyncio.sleep(0.1)
        await client.post("/nodes/n1/heartbeat", json={"disk_usage_percent": 1, "chunk_count": 1})
        nodes = {n["node_id"]: n["status"] for n in (await client.get("/nodes/all")).json()["nodes"]}
        assert nodes["n1"] == "healthy"  # never anything else while it heartbeats
        seen.add(nodes["n2"])
    assert seen == {"healthy", "degraded", "down"}
    s = (await client.get("/nodes/health-summary")).json()
    assert (s["healthy"], s["degraded"], s["down"]) == (1, 0, 1)
    assert [n["node_id"] for n in (await client.get("/nodes/healthy")).json()] == ["n1"]
    # a full disk degrades a node even when it heartbeats
    await client.post("/nodes/n1/heartbeat", json={"disk_usage_percent": 93, "chunk_count": 1})
    assert (await client.get("/nodes/health-summary")).json()["degraded"] == 1


async def test_node_route_errors(client):
    r = await client.post("/nodes/ghost/heartbeat", json={"disk_usage_percent": 1, "chunk_count": 1})
    assert r.status_code == 404 and "not registered" in r.json()["detail"]
    assert (await client.post("/nodes/register", params={"node_id": "x"})).status_code == 400
    r = await client.post("/nodes/register", params={"node_url": "not a url", "node_id": "x"})
    assert r.status_code == 400
    r = await client.post("/nodes/register", params={"node_url": "http://a:1", "node_id": "bad id!"})
    assert r.status_code == 400
    await client.post("/nodes/register", params={"node_url": "http://a:1", "node_id": "x"})
    r = await client.post("/nodes/register", params={"node_url": "http://a:1", "node_id": "y"})
    assert r.status_code == 409
    r = await client.post("/nodes/x/heartbeat", json={"disk_usage_percent": 101, "chunk_count": 1})
    assert r.status_code == 400
    r = await client.post("/nodes/x/heartbeat", json={"disk_usage_percent": "a"})
    assert r.status_code == 400


def commit_body(vid: str, nodes: list[str], **extra) -> dict:
    return {
        "node_urls": nodes,
        "checksum": CKS,
        "size_bytes": 1000,
        "video_id": vid,
        "sequence_num": 0,
        "redundancy_mode": "replication",
        "fragments_metadata": None,
        **extra,
    }


async def test_commit_refusals(client):
    vid = await new_video(client)
    three = [f"http://127.0.0.1:{9100 + i}" for i in range(3)]
    r = await client.post("/chunk/c1/commit", json=commit_body(vid, three[:2]))
    assert r.status_code == 400 and "exactly 3 nodes" in r.json()["detail"]
    r = await client.post("/chunk/c1/commit", json=commit_body("nope", three))
    assert r.status_code == 404
    r = await client.post("/chunk/bad.id/commit", json=commit_body(vid, three))
    assert r.status_code == 400
    r = await client.post("/chunk/c1/commit", json=commit_body(vid, three, checksum="md5:1"))
    assert r.status_code == 400 and "checksum" in r.json()["detail"]
    r = await client.post("/chunk/c1/commit", json=commit_body(vid, three, redundancy_mode="raid"))
    assert r.status_code == 400
    r = await client.post("/chunk/c1/commit", json=commit_body(vid, three, redundancy_mode="erasure_coding"))
    assert r.status_code == 400 and "fragments_metadata" in r.json()["detail"]
    frags = [
        {"fragment_index": i, "node_url": f"http://127.0.0.1:{9100 + i}", "size_bytes": 10, "checksum": CKS}
        for i in range(4)
    ]
    body = commit_body(vid, [], redundancy_mode="erasure_coding", fragments_metadata=frags)
    r = await client.post("/chunk/c1/commit", json=body)
    assert r.status_code == 400 and "exactly 5 fragments" in r.json()["detail"]
    # a valid placement over nodes nobody registered: refused, not a 500
    r = await client.post("/chunk/c1/commit", json=commit_body(vid, three))
    assert r.status_code == 400 and "registered" in r.json()["detail"]
    assert (await client.post("/chunk/c1/commit", json={"checksum": CKS})).status_code == 400
    # a chunk's time range: optional, each a non-negative finite number of seconds
    bad_times = ({"start_sec": -1}, {"duration_sec": -0.5}, {"start_sec": "0"}, {"duration_sec": True})
    for times in (*bad_times, {"start_sec": 1e300}):
        r = await client.post("/chunk/c1/commit", json=commit_body(vid, three, **times))
        assert r.status_code == 400 and "_sec" in r.json()["detail"], (times, r.text)
    raw = json.dumps(commit_body(vid, three)).replace('"sequence_num"', '"start_sec": 1e999, "sequence_num"')
    r = await client.post("/chunk/c1/commit", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 400 and "infinity" in r.json()["detail"], r.text
    assert (await client.get("/chunk/c1/fragments")).status_code == 404
    assert (await client.get("/consensus/c1")).status_code == 404
    assert (await client.get("/consensus/bad.id")).status_code == 400


async def test_commit_with_registered_but_dead_nodes_is_503(client):
    vid = await new_video(client)
    three = [f"http://127.0.0.1:{1 + i}" for i in range(3)]  # nothing listens on ports 1-3
    for i, u in enumerate(three):
        await client.post("/nodes/register", params={"node_url": u, "node_id": f"d{i}"})
    r = await client.post("/chunk/c1/commit", json=commit_body(vid, three))
    assert r.status_code == 503 and "promised" in r.json()["detail"]
    assert r.json()["errors"] == {u: "no answer" for u in three}
    c = (await client.get("/consensus/c1")).json()
    assert c["phase"] == "failed" and not any(a["reachable"] for a in c["acceptors"])


async def test_state_survives_restart(tmp_path):
    async with asgi_client(create_app(options(tmp_path))) as client:
        vid = await new_video(client, "kept")
        await client.post(f"/video/{vid}/view")
        await client.post("/nodes/register", params={"node_url": "http://a:1", "node_id": "x"})
        await client.post(f"/redundancy/override/{vid}", params={"mode": "replication"})
        first = (await client.get("/health")).json()["proposer_id"]
    async with asgi_client(create_app(options(tmp_path))) as client:
        listed = (await client.get("/videos", params={"status": "uploading"})).json()
        assert listed[0]["title"] == "kept"
        assert (await client.get(f"/video/{vid}/popularity")).json()["view_count"] == 1
        assert (await client.get("/nodes/all")).json()["nodes"][0]["node_id"] == "x"
        assert (await client.get(f"/redundancy/recommend/{vid}")).json()["override"] == "replication"
        second = (await client.get("/health")).json()["proposer_id"]
    base1, inc1 = first.rsplit(".", 1)
    base2, inc2 = second.rsplit(".", 1)
    assert base1 == base2 and int(inc2) == int(inc1) + 1  # a new incarnation: ballots never reused


async def test_unknown_route_and_method_in_envelope(client):
    r = await client.get("/nope")
    assert r.status_code == 404 and "detail" in r.json()
    r = await client.put("/video")
    assert r.status_code == 405 and "detail" in r.json()
