"""`--store etcd` for the metadata service and the State Service: two processes of each (as on two
machines) on one real etcd serve the same state."""

from __future__ import annotations

import concurrent.futures
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from shoal.testing import ServiceProcess
from shoal.testing.metadata import metadata_service, sha
from shoal.testing.storage import storage_node

from .conftest import shared_etcd


def etcd_args(namespace: str) -> list[str]:
    return ["--store", "etcd", "--etcd", shared_etcd().url, "--etcd-namespace", namespace]


def wait_for(check: Callable[[], Any], timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.1)
    raise TimeoutError("condition not met in time")


# -- metadata service -------------------------------------------------------------------------------


def test_two_metadata_services_on_one_etcd_serve_the_same_videos_nodes_and_manifests(tmp_path):
    ns = "meta" + uuid.uuid4().hex[:12]
    args = [*etcd_args(ns), "--maintenance-interval", "0"]
    a = metadata_service(tmp_path / "a", *args)
    b = metadata_service(tmp_path / "b", *args)
    nodes = []
    try:
        a.start()
        b.start()
        # storage nodes register and heartbeat with A only; B sees them through the shared store
        for i in range(3):
            node = storage_node(tmp_path / f"n{i}", "--metadata-url", a.url, "--heartbeat-interval", "1")
            nodes.append(node.start())
        urls = sorted(n.url for n in nodes)
        healthy_on_b = wait_for(lambda: len(httpx.get(b.url + "/nodes/healthy").json()) == 3 or None)
        assert healthy_on_b
        assert sorted(n["node_url"] for n in httpx.get(b.url + "/nodes/healthy").json()) == urls
        # heartbeats keep them healthy on B (records older than 1.5 s would not be)
        time.sleep(1.5)
        assert len(httpx.get(b.url + "/nodes/healthy").json()) == 3
        # each process is its own ChunkPaxos proposer: distinct incarnations of one persisted id
        pa, pb = (httpx.get(s.url + "/health").json()["proposer_id"] for s in (a, b))
        assert pa != pb and pa.rsplit(".", 1)[0] == pb.rsplit(".", 1)[0]

        # a video created on A is listed on B
        vid = httpx.post(a.url + "/video", json={"title": "shared", "duration_sec": 8}).json()["video_id"]
        assert [v["video_id"] for v in httpx.get(b.url + "/videos?status=any").json()] == [vid]

        # chunks committed concurrently through both services: one manifest, consistent totals
        data = [f"chunk {k} ".encode() * 5000 for k in range(8)]
        for k, d in enumerate(data):
            for u in urls:
                assert httpx.put(f"{u}/chunk/{vid}-c{k}", content=d, timeout=10).status_code in (200, 201)

        def commit(k: int) -> httpx.Response:
            body = {
                "node_urls": urls,
                "checksum": sha(data[k]),
                "size_bytes": len(data[k]),
                "video_id": vid,
                "sequence_num": k,
                "redundancy_mode": "replication",
                "start_sec": k * 1.0,
                "duration_sec": 1.0,
            }
            via = (a, b)[k % 2]
            return httpx.post(f"{via.url}/chunk/{vid}-c{k}/commit", json=body, timeout=30)

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(commit, range(len(data))))
        assert all(r.status_code == 200 and r.json()["proposal_won"] for r in answers), [
            r.text for r in answers
        ]
        manifests = [httpx.get(f"{s.url}/manifest/{vid}?status=any").json() for s in (a, b)]
        assert manifests[0] == manifests[1]
        chunks = manifests[0]["chunks"]
        assert manifests[0]["total_chunks"] == len(chunks) == len(data)
        assert [(c["chunk_id"], c["start_sec"], c["duration_sec"]) for c in chunks] == [
            (f"{vid}-c{k}", k * 1.0, 1.0) for k in range(len(data))
        ]
        assert all(c["replicas"] == urls for c in chunks)
        for s in (a, b):  # the running sums saw every commit of both processes
            stats = httpx.get(s.url + "/stats").json()
            assert stats["total_chunks"] == len(data) and stats["total_replicas"] == 3 * len(data)
            listed = httpx.get(s.url + "/videos?status=any").json()
            assert listed[0]["total_chunks"] == len(data)

        # a node registered on B is visible on A
        r = httpx.post(
            b.url + "/nodes/register", params={"node_url": "http://127.0.0.1:9", "node_id": "late"}
        )
        assert r.status_code == 200
        wait_for(lambda: "late" in {n["node_id"] for n in httpx.get(a.url + "/nodes/all").json()["nodes"]})

        # kill -9 of A loses nothing acknowledged: B serves it, and A restarted serves it again
        a.kill()
        assert httpx.get(f"{b.url}/manifest/{vid}?status=any").json() == manifests[0]
        a.start()
        assert httpx.get(f"{a.url}/manifest/{vid}?status=any").json() == manifests[0]
        assert httpx.get(a.url + "/health").json()["proposer_id"] not in (pa, pb)
    finally:
        for n in nodes:
            n.stop()
        a.stop()
        b.stop()


def test_metadata_store_etcd_without_endpoints_is_refused():
    from shoal.metadata.service import create_app

    with pytest.raises(SystemExit, match="--etcd"):
        create_app({"store": "etcd"})


# -- State Service ----------------------------------------------------------------------------------


def state_service(data_dir, namespace: str) -> ServiceProcess:
    return ServiceProcess("state", data_dir, ["--insecure-dev", *etcd_args(namespace)])


def test_two_state_services_on_one_etcd_share_documents_and_unique_fields(tmp_path):
    ns = "state" + uuid.uuid4().hex[:12]
    with state_service(tmp_path / "a", ns) as a, state_service(tmp_path / "b", ns) as b:
        ca, cb = httpx.Client(base_url=a.url, timeout=10), httpx.Client(base_url=b.url, timeout=10)
        key = "0x" + "12" * 20
        peer = {"name": "Alice", "public_key": key, "peer_type": "user"}
        r = ca.post("/peers/create", json=peer)
        assert r.status_code == 200, r.text
        peer_id = r.json()["peer_id"]
        # B serves A's peer, by id and in its lists
        assert cb.get(f"/peers/{peer_id}").json()["public_key"] == key
        listed = cb.get("/peers").json()
        assert listed["total"] == 1 and listed["peers"][0]["id"] == peer_id
        # the peer's key is unique across both services
        r = cb.post("/peers/create", json={**peer, "name": "Mallory"})
        assert r.status_code == 409 and r.json()["code"] == "DUPLICATE", r.text
        # an update on B shows on A
        assert cb.post("/peers/update", json={"id": peer_id, "name": "Alice B."}).status_code == 200
        assert ca.get(f"/peers/{peer_id}").json()["name"] == "Alice B."

        # racing creates of one CIDR on both services: exactly one wins each round
        def create(args: tuple[httpx.Client, int]) -> int:
            client, i = args
            return client.post(
                "/cidrs/create", json={"cidr": f"10.9.{i}.0/24", "name": "n", "owner": "o"}
            ).status_code

        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            for i in range(10):
                codes = sorted(pool.map(create, [(ca, i), (cb, i), (ca, i), (cb, i)]))
                assert codes == [200, 409, 409, 409], (i, codes)
        assert ca.get("/cidrs").json()["total"] == cb.get("/cidrs").json()["total"] == 10

        # replication is off (the shared store replaces it), and says so
        status = cb.get("/replication/status").json()
        assert status["replication"].startswith("off: --store etcd") and status["seq"] == 0

        # kill -9 of A after acknowledged writes: B has them all
        ca.close()
        a.kill()
        assert cb.get(f"/peers/{peer_id}").json()["name"] == "Alice B."
        assert cb.get("/cidrs").json()["total"] == 10
        cb.close()


def test_a_logout_on_one_state_service_reaches_the_other_at_once(tmp_path):
    """Both processes cache tokens; each watches the token keys, so a logout evicts it everywhere.

    Without the watch, B would keep accepting the revoked token for its cache lifetime (5 s).
    """
    from eth_account import Account
    from eth_account.messages import encode_defunct

    admin = Account.create()
    ns = "state" + uuid.uuid4().hex[:12]
    args = ["--admin-address", admin.address, *etcd_args(ns)]
    with (
        ServiceProcess("state", tmp_path / "a", args) as a,
        ServiceProcess("state", tmp_path / "b", args) as b,
    ):
        ca, cb = httpx.Client(base_url=a.url, timeout=10), httpx.Client(base_url=b.url, timeout=10)
        ch = ca.post("/auth/challenge", json={"address": admin.address}).json()
        sig = Account.sign_message(encode_defunct(text=ch["message"]), admin.key).signature
        token = ca.post("/auth/login", json={"address": admin.address, "signature": "0x" + bytes(sig).hex()})
        headers = {"Authorization": f"Bearer {token.json()['token']}"}
        for _ in range(3):  # B has the token cached now
            r = cb.get("/auth/whoami", headers=headers)
            assert r.status_code == 200 and r.json()["role"] == "admin", r.text
        assert ca.post("/auth/logout", headers=headers).json() == {"success": True}
        wait_for(lambda: cb.get("/auth/whoami", headers=headers).status_code == 401, timeout=4.0)
        assert cb.get("/auth/whoami", headers=headers).json()["code"] == "INVALID_TOKEN"
        ca.close()
        cb.close()


def test_state_store_etcd_refuses_peers_and_missing_endpoints(tmp_path):
    from shoal.state.service import create_app

    base = {"data_dir": str(tmp_path), "store": "etcd", "insecure_dev": True}
    with pytest.raises(SystemExit, match="--etcd http"):
        create_app(base)
    with pytest.raises(SystemExit, match="cannot be combined with --peer"):
        create_app({**base, "etcd": shared_etcd().url, "peer": ["http://127.0.0.1:3005"]})
    with pytest.raises(SystemExit, match="--trust-node"):
        create_app({**base, "etcd": shared_etcd().url, "trust_node": ["AAAA"]})
