"""The metadata service and its storage nodes with --auth-dir (issue #19), as real processes.

Storage nodes register and heartbeat signed; the metadata service's Paxos messages to them are
signed (a commit only succeeds if the acceptors accepted the signatures). Roles per route,
registration that needs an operator AND a node that answers its health check, refused forged
or replayed heartbeats, and schemathesis with credentials (no 5xx).
"""

from __future__ import annotations

import time

import httpx
import pytest

from shoal.storage.nodeauth import NodeCredentials
from shoal.testing import free_port
from shoal.testing.authstack import auth_dir_with_keys, signed_video_cluster
from shoal.testing.fuzz import run_schemathesis
from shoal.testing.metadata import sha
from shoal.testing.storage import storage_node
from shoal.web.auth import KeyTable, issue_node_token, sign_request

from .conftest import blob


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    root = tmp_path_factory.mktemp("authcluster")
    auth_dir, keys = auth_dir_with_keys(root)
    with signed_video_cluster(root, auth_dir, keys["viewer"]) as (meta, nodes):
        yield {"meta": meta, "nodes": nodes, "keys": keys, "dir": auth_dir, "root": root}


def h(c, role: str) -> dict:
    return {"Authorization": f"Bearer {c['keys'][role]}"}


def test_reads_need_a_viewer_and_writes_their_role(cluster):
    url = cluster["meta"].url
    assert httpx.get(url + "/health").status_code == 200
    for path in ("/nodes/healthy", "/nodes/all", "/videos", "/stats", "/manifest/x"):
        r = httpx.get(url + path)
        assert r.status_code == 401 and "detail" in r.json(), path
    assert httpx.get(url + "/nodes/all", headers=h(cluster, "viewer")).status_code == 200
    body = {"title": "t", "duration_sec": 10}
    assert httpx.post(url + "/video", json=body).status_code == 401
    r = httpx.post(url + "/video", json=body, headers=h(cluster, "viewer"))
    assert r.status_code == 403 and "uploader" in r.json()["detail"]
    r = httpx.post(url + "/video", json=body, headers=h(cluster, "uploader"))
    assert r.status_code == 200
    video_id = r.json()["video_id"]
    assert httpx.post(f"{url}/video/{video_id}/view", headers=h(cluster, "viewer")).status_code == 200
    r = httpx.post(
        f"{url}/redundancy/override/{video_id}",
        params={"mode": "replication"},
        headers=h(cluster, "uploader"),
    )
    assert r.status_code == 403
    r = httpx.post(
        f"{url}/redundancy/override/{video_id}",
        params={"mode": "replication"},
        headers=h(cluster, "operator"),
    )
    assert r.status_code == 200
    doc = httpx.get(url + "/openapi.json").json()
    assert doc["paths"]["/chunk/{chunk_id}/commit"]["post"]["x-shoal-role"] == "node"
    assert doc["paths"]["/nodes/register"]["post"]["x-shoal-role"] == "operator"


def test_commit_runs_signed_paxos_and_needs_a_node(cluster):
    url = cluster["meta"].url
    creds = NodeCredentials(cluster["dir"], "uploader-test")
    with httpx.Client(auth=creds.httpx_auth(), timeout=30) as node:
        video_id = node.post(url + "/video", json={"title": "c", "duration_sec": 4}).json()["video_id"]
        data = blob(7)
        urls = [n.url for n in cluster["nodes"]]
        for u in urls:  # the hash-once signer: X-Chunk-Checksum is the signed hash
            r = node.put(f"{u}/chunk/{video_id}-c0", content=data, headers={"x-chunk-checksum": sha(data)})
            assert r.status_code == 201, r.text
        body = {
            "node_urls": urls,
            "checksum": sha(data),
            "size_bytes": len(data),
            "video_id": video_id,
            "sequence_num": 0,
            "redundancy_mode": "replication",
        }
        # a human key, even admin, does not commit placements
        r = httpx.post(f"{url}/chunk/{video_id}-c0/commit", json=body, headers=h(cluster, "admin"))
        assert r.status_code == 403
        r = node.post(f"{url}/chunk/{video_id}-c0/commit", json=body)
        assert r.status_code == 200, r.text  # prepare/accept reached the acceptors signed
        assert sorted(r.json()["committed_nodes"]) == sorted(urls)
    state = httpx.get(f"{urls[0]}/paxos/{video_id}-c0", headers=h(cluster, "operator")).json()
    assert state["instances"][0]["accepted"] is not None


def test_registration_needs_an_operator_and_a_node_that_answers(cluster):
    url = cluster["meta"].url
    dead = f"http://127.0.0.1:{free_port()}"
    q = {"node_url": dead, "node_id": "ghost"}
    assert httpx.post(url + "/nodes/register", params=q).status_code == 401
    assert httpx.post(url + "/nodes/register", params=q, headers=h(cluster, "uploader")).status_code == 403
    r = httpx.post(url + "/nodes/register", params=q, headers=h(cluster, "operator"), timeout=10)
    assert r.status_code == 422 and "does not answer its health check" in r.json()["detail"]
    listed = httpx.get(url + "/nodes/all", headers=h(cluster, "viewer")).json()["nodes"]
    assert dead not in [n["node_url"] for n in listed] and "ghost" not in [n["node_id"] for n in listed]
    # a live node, registered by hand: it answers, and must answer as the id given
    with storage_node(cluster["root"] / "extra", "--auth-dir", cluster["dir"]) as extra:
        wrong = {"node_url": extra.url, "node_id": "not-its-id"}
        r = httpx.post(url + "/nodes/register", params=wrong, headers=h(cluster, "operator"), timeout=10)
        assert r.status_code == 422 and "answers as node" in r.json()["detail"]
        right = {"node_url": extra.url, "node_id": f"node-{extra.port}"}
        r = httpx.post(url + "/nodes/register", params=right, headers=h(cluster, "operator"), timeout=10)
        assert r.status_code == 200, r.text


def test_heartbeats_forged_expired_or_replayed_are_refused(cluster):
    url = cluster["meta"].url
    node_id = f"node-{cluster['nodes'][0].port}"
    path = f"/nodes/{node_id}/heartbeat"
    body = b'{"disk_usage_percent": 1.0, "chunk_count": 0}'
    ct = {"content-type": "application/json"}
    secret = KeyTable(cluster["dir"]).secrets[0]
    r = httpx.post(url + path, content=body, headers={**ct, **h(cluster, "admin")})
    assert r.status_code == 403  # heartbeats are a node's
    forged = sign_request(b"z" * 32, "POST", path, body, node_id=node_id)
    assert httpx.post(url + path, content=body, headers={**ct, **forged}).status_code == 401
    old = sign_request(secret, "POST", path, body, node_id=node_id, now=time.time() - 45)
    assert httpx.post(url + path, content=body, headers={**ct, **old}).status_code == 401
    good = sign_request(secret, "POST", path, body, node_id=node_id)
    assert httpx.post(url + path, content=body, headers={**ct, **good}).status_code == 200
    r = httpx.post(url + path, content=body, headers={**ct, **good})
    assert r.status_code == 401 and "replayed" in r.json()["detail"]


def test_schemathesis_with_credentials_finds_no_server_error(cluster):
    """As a cluster node (a node JWT opens every metadata route), then on a storage node."""
    token = issue_node_token(KeyTable(cluster["dir"]).secrets[0], "fuzzer", ttl=600)
    result = run_schemathesis(
        cluster["meta"].url,
        max_examples=15,
        max_time=40,
        exclude_path_regex="^/nodes/register$",  # fuzzed URLs would make it probe anywhere
        headers=[f"Authorization: Bearer {token}"],
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "No issues found" in result.stdout
    result = run_schemathesis(
        cluster["nodes"][1].url, max_examples=15, max_time=30, headers=[f"Authorization: Bearer {token}"]
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "No issues found" in result.stdout
