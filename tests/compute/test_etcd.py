"""`shoal serve compute --store etcd`: two compute nodes (as on two hosts) sharing one registry on a
real etcd. Each node runs libvirt's in-process `test:///default` driver, so each truly has its own
"host" that the other cannot reach, as two machines with their own libvirtd would."""

from __future__ import annotations

import concurrent.futures
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from shoal.testing import ServiceProcess
from shoal.testing.etcd import EtcdCluster

from .conftest import IMAGE, Api, error_of, start_service

NO_DOCKER = "unix:///nonexistent/docker.sock"  # the kvm tests need no dockerd
IDLE = ["sleep", "3600"]


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    root = tmp_path_factory.mktemp("etcd")
    cluster = EtcdCluster(root).start()
    yield cluster
    cluster.stop()
    shutil.rmtree(root, ignore_errors=True)


def etcd_args(etcd: EtcdCluster, namespace: str) -> list[str]:
    return ["--store", "etcd", "--etcd", etcd.url, "--etcd-namespace", namespace]


def node(root: Path, etcd: EtcdCluster, ns: str, templates: Path, docker: str = NO_DOCKER) -> ServiceProcess:
    return start_service(root, docker, "test:///default", templates, etcd_args(etcd, ns))


def vm(api: Api, name: str, **over) -> dict:
    return api.create(name=name, backend="kvm", config={"image": "tiny"}, **over)


def vm_body(name: str) -> dict:
    return {"name": name, "backend": "kvm", "config": {"image": "tiny"}, "start": False}


def test_two_nodes_share_names_and_listing_and_refuse_each_others_instances(tmp_path, etcd, templates):
    ns = "compute" + uuid.uuid4().hex[:12]
    a = node(tmp_path / "a", etcd, ns, templates)
    b = node(tmp_path / "b", etcd, ns, templates)
    api_a, api_b = Api(a.url), Api(b.url)
    try:
        web = vm(api_a, "web")
        node_a = web["node"]["id"]
        assert web["state"] == "running" and web["node"]["endpoint"] == "test:///default"
        assert (tmp_path / "a" / "node-id").read_text().strip() == node_a

        # the name is taken on B too, whatever the backend
        err = error_of(api_b.post("/instances", json=vm_body("web")), 409, "NAME_CONFLICT")
        assert err["details"] == {"name": "web"}
        err = error_of(
            api_b.post("/instances", json={"name": "web", "backend": "docker", "config": {"image": IMAGE}}),
            409,
            "NAME_CONFLICT",
        )

        # B lists and shows A's instance (it cannot observe it: state unknown, owner named)
        listed = api_b.get("/instances").json()
        assert listed["total"] == 1
        seen = listed["instances"][0]
        assert (seen["id"], seen["uuid"], seen["name"]) == (web["id"], web["uuid"], "web")
        assert (seen["state"], seen["status"]) == ("unknown", f"on compute node {node_a}")
        assert seen["node"]["id"] == node_a
        assert api_b.get(f"/instances/{web['id']}").json()["id"] == web["id"]
        assert api_b.get("/instances/name/web").json()["id"] == web["id"]
        assert api_b.get("/instances", params={"state": "unknown"}).json()["total"] == 1
        assert api_a.get("/instances/name/web").json()["state"] == "running"

        # changes on B to A's instance: a clear 409 naming the owner, and nothing happens
        url = f"/instances/{web['id']}"
        for method, path, body in (
            ("PUT", url + "/start", None),
            ("PUT", url + "/stop", {"force": True}),
            ("PUT", url + "/restart", None),
            ("PUT", url + "/pause", None),
            ("PUT", url + "/unpause", None),
            ("PUT", url, {"metadata": {"labels": {"x": "y"}}}),
            ("DELETE", url + "?force=true", None),
            ("GET", url + "/usage", None),
        ):
            err = error_of(api_b.req(method, path, json=body), 409, "INSTANCE_ON_OTHER_NODE")
            assert err["details"]["owner"]["id"] == node_a and err["details"]["node"] != node_a
            assert node_a in err["message"]
        assert api_a.get(url).json()["state"] == "running"
        assert "x" not in api_a.get(url).json()["metadata"].get("labels", {})

        # B's own instance: listed on both, in creation order; A refuses to touch it
        db = api_b.create(**vm_body("db"))
        assert db["node"]["id"] not in (None, node_a) and db["state"] == "stopped"
        assert [i["name"] for i in api_a.get("/instances").json()["instances"]] == ["web", "db"]
        error_of(api_a.put(f"/instances/{db['id']}/start"), 409, "INSTANCE_ON_OTHER_NODE")
        # each node's cluster status counts the instances on its own backends
        assert api_a.get("/cluster/status").json()["backends"]["kvm"]["instances"] == 1
        assert api_b.get("/cluster/status").json()["backends"]["kvm"]["instances"] == 1

        # the owner deletes: the name is free for B, which now owns a "web"
        assert api_a.delete(url, params={"force": "true"}).status_code == 204
        error_of(api_b.get(url), 404, "INSTANCE_NOT_FOUND")
        web_b = api_b.create(**vm_body("web"))
        assert web_b["id"] != web["id"] and web_b["node"]["id"] == db["node"]["id"]
        assert api_a.get("/instances/name/web").json()["id"] == web_b["id"]
        error_of(api_a.post("/instances", json=vm_body("web")), 409, "NAME_CONFLICT")

        # B is gone for good: a node started with B's id (anywhere) cleans up B's records
        node_b = db["node"]["id"]
        b.stop()
        api_b.close()
        b = start_service(
            tmp_path / "c",
            NO_DOCKER,
            "test:///default",
            templates,
            [*etcd_args(etcd, ns), "--node-id", node_b],
        )
        api_b = Api(b.url)
        gone = api_b.get(f"/instances/{db['id']}").json()
        assert (gone["state"], gone["status"]) == ("error", "missing from backend")
        for inst in (db, web_b):
            assert api_b.delete(f"/instances/{inst['id']}").status_code == 204
        assert api_a.get("/instances").json()["total"] == 0
        assert api_a.create(**vm_body("db"))["node"]["id"] == node_a
    finally:
        api_a.close()
        api_b.close()
        a.stop()
        b.stop()


def test_concurrent_creates_of_one_name_on_two_nodes_exactly_one_wins(tmp_path, etcd, templates):
    ns = "compute" + uuid.uuid4().hex[:12]
    a = node(tmp_path / "a", etcd, ns, templates)
    b = node(tmp_path / "b", etcd, ns, templates)
    api_a, api_b = Api(a.url), Api(b.url)
    rounds = 8
    try:

        def create(args: tuple[Api, str]) -> int:
            api, name = args
            return api.post("/instances", json=vm_body(name)).status_code

        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            for i in range(rounds):
                name = f"race{i}"
                codes = sorted(pool.map(create, [(api_a, name), (api_b, name)] * 2))
                assert codes == [201, 409, 409, 409], (i, codes)
        for api in (api_a, api_b):
            listed = api.get("/instances", params={"pageSize": 100}).json()["instances"]
            assert sorted(i["name"] for i in listed) == [f"race{i}" for i in range(rounds)]
        # every winner is on exactly one node's backend: the two nodes together hold `rounds` domains
        local = [api.get("/cluster/status").json()["backends"]["kvm"]["instances"] for api in (api_a, api_b)]
        assert sum(local) == rounds
    finally:
        api_a.close()
        api_b.close()
        a.stop()
        b.stop()


def test_registry_on_etcd_survives_kill_9_and_the_node_keeps_its_instances(
    tmp_path, etcd, templates, dockerd
):
    ns = "compute" + uuid.uuid4().hex[:12]
    a = node(tmp_path / "a", etcd, ns, templates, docker=dockerd.url)
    b = node(tmp_path / "b", etcd, ns, templates)
    api_a, api_b = Api(a.url), Api(b.url)
    try:
        c = api_a.create(
            name="durable",
            backend="docker",
            config={"image": IMAGE, "command": IDLE},
            metadata={"labels": {"a": "1"}},
        )
        r = api_a.put(f"/instances/{c['id']}", json={"metadata": {"labels": {"a": "2"}}})
        assert r.status_code == 200  # acknowledged ...
        a.kill()  # ... then SIGKILL, no shutdown hooks
        # the other node still has the record and the name
        assert api_b.get(f"/instances/{c['id']}").json()["metadata"]["labels"] == {"a": "2"}
        error_of(api_b.post("/instances", json=vm_body("durable")), 409, "NAME_CONFLICT")

        a.start()  # same data dir: same node id, so it still owns (and can act on) the container
        again = api_a.get(f"/instances/{c['id']}").json()
        assert (again["uuid"], again["name"], again["backendId"]) == (c["uuid"], "durable", c["backendId"])
        assert again["metadata"]["labels"] == {"a": "2"} and again["createdAt"] == c["createdAt"]
        assert again["node"] == c["node"] and again["state"] == "running"  # read live from dockerd
        assert api_a.put(f"/instances/{c['id']}/stop", json={"force": True}).json()["state"] == "stopped"
        assert api_a.delete(f"/instances/{c['id']}").status_code == 204

        a.kill()
        a.start()
        error_of(api_a.get(f"/instances/{c['id']}"), 404, "INSTANCE_NOT_FOUND")
        assert api_b.create(**vm_body("durable"))["name"] == "durable"
    finally:
        api_a.close()
        api_b.close()
        a.stop()
        b.stop()


def test_store_flags_are_checked_before_start(tmp_path):
    from shoal.compute.service import create_app

    with pytest.raises(SystemExit, match="--etcd http"):
        create_app({"data_dir": str(tmp_path), "store": "etcd", "token": ["t"]})
    with pytest.raises(SystemExit, match="--node-id"):
        create_app({"data_dir": str(tmp_path), "node_id": "no spaces", "token": ["t"]})


def test_sqlite_store_and_given_node_id(tmp_path, templates):
    svc = start_service(
        tmp_path / "d", NO_DOCKER, "test:///default", templates, ["--store", "sqlite", "--node-id", "host-7"]
    )
    api = Api(svc.url)
    try:
        inst = vm(api, "lite", start=False)
        assert inst["node"]["id"] == "host-7"
        svc.kill()
        svc.start()
        assert api.get("/instances/name/lite").json()["id"] == inst["id"]
        assert (tmp_path / "d" / "registry.db").exists() and not (tmp_path / "d" / "registry.lmdb").exists()
        error_of(api.post("/instances", json=vm_body("lite")), 409, "NAME_CONFLICT")
    finally:
        api.close()
        svc.stop()


async def test_registry_claims_the_names_of_records_from_before_name_keys() -> None:
    """A registry written by an older version (records only) gets its name keys at load."""
    import orjson

    from shoal.compute.registry import NAMES, PREFIX, InstanceRegistry, NameTaken
    from shoal.kv import MemoryStore

    store = MemoryStore()
    old = {"id": "inst-000000000001", "name": "old", "backend": "kvm", "uuid": "u"}
    await store.set(PREFIX + old["id"], orjson.dumps(old))
    registry = await InstanceRegistry(store).load()
    assert orjson.loads((await store.get(NAMES + "old")).value) == {"id": old["id"]}
    assert (await registry.by_name("old"))["id"] == old["id"]
    with pytest.raises(NameTaken):
        await registry.claim({**old, "id": "inst-000000000002"})
    await registry.remove(old["id"])
    assert await store.get(NAMES + "old") is None and await registry.all() == []


def test_a_node_id_held_by_another_live_node_is_refused_at_start(tmp_path, etcd, templates):
    """Two hosts with one node id would both act on its instances: the second is refused.

    "Another host" is another data dir here (one machine); a restart of the same data dir after
    kill -9 is the same node and starts at once; a clean stop frees the id at once.
    """
    ns = "compute" + uuid.uuid4().hex[:12]
    same_id = [*etcd_args(etcd, ns), "--node-id", "twin-host"]
    a = start_service(tmp_path / "a", NO_DOCKER, "test:///default", templates, same_id)
    api_a = Api(a.url)
    try:
        vm(api_a, "owned", start=False)
        with pytest.raises(RuntimeError, match="did not start") as refused:
            start_service(tmp_path / "b", NO_DOCKER, "test:///default", templates, same_id)
        message = str(refused.value)
        assert (
            "compute node id 'twin-host' is in use" in message and str((tmp_path / "a").resolve()) in message
        )

        a.kill()  # its claim still looks live, but this is the same node (same host, same data dir)
        a.start()
        assert api_a.get("/instances/name/owned").status_code == 200

        a.stop()  # a clean stop releases the id: the other data dir may now take it over
        b = start_service(tmp_path / "b", NO_DOCKER, "test:///default", templates, same_id)
        api_b = Api(b.url)
        try:
            owned = api_b.get("/instances/name/owned").json()
            assert owned["node"]["id"] == "twin-host"
            assert api_b.delete(f"/instances/{owned['id']}").status_code == 204  # it now acts as that node
        finally:
            api_b.close()
            b.stop()
    finally:
        api_a.close()
        a.stop()


def test_a_node_whose_id_was_taken_over_while_it_was_frozen_stops_changing_instances(
    tmp_path, etcd, templates
):
    """A frozen node's claim lapses and another host takes the id; thawed, it must not act (409)."""
    import os
    import signal
    import time

    ns = "compute" + uuid.uuid4().hex[:12]
    args = [*etcd_args(etcd, ns), "--node-id", "frozen-host", "--node-claim-ttl", "1.5"]
    a = start_service(tmp_path / "a", NO_DOCKER, "test:///default", templates, args)
    api_a = Api(a.url)
    b = None
    try:
        inst = vm(api_a, "kept", start=False)
        os.killpg(a.proc.pid, signal.SIGSTOP)  # a long GC pause, a suspended VM, a partition
        time.sleep(2.5)
        try:
            b = start_service(tmp_path / "b", NO_DOCKER, "test:///default", templates, args)
        finally:
            os.killpg(a.proc.pid, signal.SIGCONT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # A's next renewal finds B's live claim
            r = api_a.post("/instances", json=vm_body("refused"))
            if r.status_code == 409:
                break
            api_a.delete(f"/instances/{r.json()['id']}")
            time.sleep(0.2)
        err = error_of(r, 409, "NODE_ID_IN_USE")
        assert "frozen-host" in err["message"] and str((tmp_path / "b").resolve()) in err["message"]
        error_of(api_a.put(f"/instances/{inst['id']}/start"), 409, "NODE_ID_IN_USE")
        assert api_a.get(f"/instances/{inst['id']}").status_code == 200  # reads still answer

        api_b = Api(b.url)
        try:  # the holder acts as that node
            assert vm(api_b, "by-b", start=False)["node"]["id"] == "frozen-host"
        finally:
            api_b.close()
        b.stop()  # released: A takes its id back at its next renewal and may act again
        b = None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            r = api_a.put(f"/instances/{inst['id']}/stop", json={"force": True})
            if r.status_code == 200:
                break
            time.sleep(0.2)
        assert r.status_code == 200 and r.json()["state"] == "stopped"
    finally:
        api_a.close()
        if b is not None:
            b.stop()
        a.stop()
