"""Every route on the docker backend, against a real (private) dockerd."""

from __future__ import annotations

import time

import httpx
import pytest

from .conftest import IMAGE, Api, error_of, wait_for

BUSY = ["sh", "-c", "while :; do :; done"]
IDLE = ["sleep", "3600"]


def container(docker_http: httpx.Client, backend_id: str) -> dict:
    r = docker_http.get(f"/containers/{backend_id}/json")
    assert r.status_code == 200, r.text
    return r.json()


def test_create_get_by_id_and_name(api: Api, docker_http: httpx.Client) -> None:
    body = {
        "name": "web-1",
        "backend": "docker",
        "config": {
            "image": IMAGE,
            "command": IDLE,
            "env": ["ENV=production", "EMPTY="],
            "restartPolicy": "on-failure:3",
        },
        "resources": {"cpu": {"cores": 1}, "memory": {"limit": 64 * 1024 * 1024}},
        "metadata": {"labels": {"app": "web", "env": "prod"}},
    }
    inst = api.create(**body)
    assert inst["id"].startswith("inst-") and len(inst["uuid"]) == 36
    assert (inst["name"], inst["type"], inst["backend"], inst["state"]) == (
        "web-1",
        "container",
        "docker",
        "running",
    )
    assert inst["config"]["image"] == IMAGE and inst["config"]["restartPolicy"] == "on-failure:3"
    assert inst["resources"]["cpu"]["cores"] == 1 and inst["resources"]["memory"]["limit"] == 64 * 1024 * 1024
    assert inst["metadata"]["labels"] == {"app": "web", "env": "prod"}
    assert inst["createdAt"].endswith("Z") and inst["updatedAt"] >= inst["createdAt"]

    # what dockerd actually got
    c = container(docker_http, inst["backendId"])
    assert c["Name"] == "/web-1"
    assert c["HostConfig"]["NanoCpus"] == 1_000_000_000 and c["HostConfig"]["Memory"] == 64 * 1024 * 1024
    assert c["HostConfig"]["RestartPolicy"] == {"Name": "on-failure", "MaximumRetryCount": 3}
    assert "ENV=production" in c["Config"]["Env"] and c["Config"]["Cmd"] == IDLE
    assert c["Config"]["Labels"]["shoal.compute.id"] == inst["id"] and c["Config"]["Labels"]["app"] == "web"

    got = api.get(f"/instances/{inst['id']}").json()
    assert got["uuid"] == inst["uuid"] and got["state"] == "running"
    by_name = api.get("/instances/name/web-1").json()
    assert by_name["id"] == inst["id"]


def test_create_without_start_and_volumes_ports(api: Api, docker_http: httpx.Client) -> None:
    # a named volume (host paths need --allow-host-path: test_auth.py)
    inst = api.create(
        name="vol",
        backend="docker",
        config={
            "image": IMAGE,
            "command": ["sh", "-c", "echo hi > /data/hello.txt && cat /data/hello.txt"],
            "volumes": ["shoal-test-vol:/data"],
            "ports": ["127.0.0.1:18099:80", "53/udp"],
            "networkMode": "none",
        },
        start=False,
    )
    assert inst["state"] == "stopped"
    c = container(docker_http, inst["backendId"])
    assert c["HostConfig"]["Binds"] == ["shoal-test-vol:/data"]
    assert c["HostConfig"]["PortBindings"]["80/tcp"] == [{"HostIp": "127.0.0.1", "HostPort": "18099"}]
    assert "53/udp" in c["Config"]["ExposedPorts"] and c["HostConfig"]["NetworkMode"] == "none"
    r = api.put(f"/instances/{inst['id']}/start")
    assert r.status_code == 200
    wait_for(lambda: api.get(f"/instances/{inst['id']}").json()["state"] == "stopped", what="cat to finish")
    logs = docker_http.get(f"/containers/{inst['backendId']}/logs", params={"stdout": 1}).content
    assert b"hi" in logs  # the volume was really there
    assert container(docker_http, inst["backendId"])["Mounts"][0]["Type"] == "volume"


def test_list_filters_pagination_and_total(api: Api) -> None:
    ids = [
        api.create(name=f"l{i}", backend="docker", config={"image": IMAGE, "command": IDLE})["id"]
        for i in range(3)
    ]
    api.put(f"/instances/{ids[0]}/stop", json={"timeout": 0})
    page = api.get("/instances", params={"backend": "docker"}).json()
    assert page["total"] == 3 and page["page"] == 1 and page["pageSize"] == 50
    assert [i["id"] for i in page["instances"]] == ids  # oldest first
    running = api.get("/instances", params={"state": "running"}).json()
    assert running["total"] == 2 and {i["id"] for i in running["instances"]} == set(ids[1:])
    stopped = api.get("/instances", params={"state": "stopped", "backend": "docker"}).json()
    assert [i["id"] for i in stopped["instances"]] == ids[:1]
    p2 = api.get("/instances", params={"page": 2, "pageSize": 2}).json()
    assert p2["total"] == 3 and [i["id"] for i in p2["instances"]] == ids[2:] and p2["pageSize"] == 2
    assert api.get("/instances", params={"backend": "kvm"}).json()["total"] == 0


def test_unmanaged_containers_are_not_listed_or_touched(api: Api, docker_http: httpx.Client) -> None:
    r = docker_http.post(
        "/containers/create", params={"name": "outsider"}, json={"Image": IMAGE, "Cmd": IDLE}
    )
    assert r.status_code == 201, r.text
    outsider = r.json()["Id"]
    try:
        assert all(i["name"] != "outsider" for i in api.get("/instances").json()["instances"])
        error_of(api.get("/instances/name/outsider"), 404, "INSTANCE_NOT_FOUND")
        error_of(api.get(f"/instances/{outsider}"), 404, "INSTANCE_NOT_FOUND")
        error_of(api.delete(f"/instances/{outsider}", params={"force": "true"}), 404, "INSTANCE_NOT_FOUND")
        assert docker_http.get(f"/containers/{outsider}/json").status_code == 200
        # its name is taken on the daemon: creating one with that name is a conflict, not a takeover
        r = api.post("/instances", json={"name": "outsider", "backend": "docker", "config": {"image": IMAGE}})
        error_of(r, 409, "NAME_CONFLICT")
        assert docker_http.get(f"/containers/{outsider}/json").json()["Config"]["Cmd"] == IDLE
    finally:
        docker_http.delete(f"/containers/{outsider}", params={"force": 1})


def test_stop_uses_docker_grace_period_then_start_restart(api: Api, docker_http: httpx.Client) -> None:
    # PID 1 (sh) ignores SIGTERM, so only the grace period's SIGKILL stops it.
    inst = api.create(name="stubborn", backend="docker", config={"image": IMAGE, "command": IDLE})
    t0 = time.monotonic()
    r = api.put(f"/instances/{inst['id']}/stop", json={"force": False, "timeout": 1})
    elapsed = time.monotonic() - t0
    assert r.status_code == 200 and r.json()["state"] == "stopped"
    assert elapsed >= 0.9  # it waited for Docker's t before the kill
    assert container(docker_http, inst["backendId"])["State"]["ExitCode"] == 137  # SIGKILL
    # stopping a stopped instance is a no-op, not an error
    assert api.put(f"/instances/{inst['id']}/stop").json()["state"] == "stopped"

    started = api.put(f"/instances/{inst['id']}/start").json()
    assert started["state"] == "running"
    before = container(docker_http, inst["backendId"])["State"]["StartedAt"]
    r = api.put(f"/instances/{inst['id']}/restart", json={"timeout": 0})
    assert r.status_code == 200 and r.json()["state"] == "running"
    assert container(docker_http, inst["backendId"])["State"]["StartedAt"] != before
    forced = api.put(f"/instances/{inst['id']}/stop", json={"force": True})
    assert forced.json()["state"] == "stopped"


def test_pause_unpause(api: Api, docker_http: httpx.Client) -> None:
    inst = api.create(name="freezer", backend="docker", config={"image": IMAGE, "command": IDLE})
    r = api.put(f"/instances/{inst['id']}/pause")
    assert r.status_code == 200 and r.json()["state"] == "paused"
    assert container(docker_http, inst["backendId"])["State"]["Paused"] is True
    assert api.put(f"/instances/{inst['id']}/pause").json()["state"] == "paused"  # idempotent
    error_of(api.put(f"/instances/{inst['id']}/start"), 409, "OPERATION_NOT_SUPPORTED")
    assert api.put(f"/instances/{inst['id']}/unpause").json()["state"] == "running"
    assert container(docker_http, inst["backendId"])["State"]["Paused"] is False
    api.put(f"/instances/{inst['id']}/stop", json={"timeout": 0})
    err = error_of(api.put(f"/instances/{inst['id']}/pause"), 409, "OPERATION_NOT_SUPPORTED")
    assert err["details"]["state"] == "stopped"
    error_of(api.put(f"/instances/{inst['id']}/unpause"), 409, "OPERATION_NOT_SUPPORTED")


def test_update_resources_live(api: Api, docker_http: httpx.Client) -> None:
    inst = api.create(
        name="grow",
        backend="docker",
        config={"image": IMAGE, "command": IDLE},
        resources={"cpu": {"cores": 1}, "memory": {"limit": 32 * 1024 * 1024}},
        metadata={"labels": {"tier": "a"}},
    )
    r = api.put(
        f"/instances/{inst['id']}",
        json={
            "resources": {"cpu": {"cores": 0.5}, "memory": {"limit": 96 * 1024 * 1024}},
            "metadata": {"labels": {"tier": "b"}},
        },
    )
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["state"] == "running"  # live: no restart
    assert out["resources"]["cpu"]["cores"] == 0.5 and out["resources"]["memory"]["limit"] == 96 * 1024 * 1024
    assert out["metadata"]["labels"] == {"tier": "b"}
    c = container(docker_http, inst["backendId"])
    assert c["HostConfig"]["NanoCpus"] == 500_000_000 and c["HostConfig"]["Memory"] == 96 * 1024 * 1024
    assert api.get(f"/instances/{inst['id']}").json()["resources"]["cpu"]["cores"] == 0.5
    err = error_of(
        api.put(f"/instances/{inst['id']}", json={"resources": {"cpu": {"cores": 4096}}}),
        400,
        "RESOURCE_LIMIT_EXCEEDED",
    )
    assert err["details"]["resource"] == "cpu"
    error_of(
        api.put(f"/instances/{inst['id']}", json={"resources": {"storage": {"totalSpace": 1 << 30}}}),
        400,
        "OPERATION_NOT_SUPPORTED",
    )


def test_usage_of_a_busy_container(api: Api) -> None:
    inst = api.create(
        name="busy",
        backend="docker",
        config={"image": IMAGE, "command": BUSY},
        resources={"cpu": {"cores": 1}, "memory": {"limit": 64 * 1024 * 1024}},
    )
    usage = api.get(f"/instances/{inst['id']}/usage").json()
    assert set(usage) == {"cpu", "memory", "storage", "network", "blockIO"}
    assert usage["cpu"]["usage"] > 5.0  # a spinning shell: well above idle
    assert usage["cpu"]["usage"] <= 100.0 * 1.05  # and capped by its one core (docker's CPU %)
    assert usage["cpu"]["cores"] == 1
    assert usage["memory"]["limit"] == 64 * 1024 * 1024
    assert 0 < usage["memory"]["used"] < usage["memory"]["limit"]
    assert usage["memory"]["percentage"] == pytest.approx(
        usage["memory"]["used"] / usage["memory"]["limit"] * 100, abs=0.01
    )
    assert set(usage["network"]) == {"rxBytes", "txBytes"}
    api.put(f"/instances/{inst['id']}/stop", json={"force": True})
    idle = api.get(f"/instances/{inst['id']}/usage").json()
    assert idle["cpu"]["usage"] == 0 and idle["memory"]["used"] == 0


def test_delete_running_needs_force(api: Api, docker_http: httpx.Client) -> None:
    inst = api.create(name="doomed", backend="docker", config={"image": IMAGE, "command": IDLE})
    err = error_of(api.delete(f"/instances/{inst['id']}"), 409, "OPERATION_NOT_SUPPORTED")
    assert err["details"]["state"] == "running"
    assert container(docker_http, inst["backendId"])["State"]["Running"] is True
    r = api.delete(f"/instances/{inst['id']}", params={"force": "true"})
    assert r.status_code == 204
    assert docker_http.get(f"/containers/{inst['backendId']}/json").status_code == 404
    error_of(api.get(f"/instances/{inst['id']}"), 404, "INSTANCE_NOT_FOUND")
    # the name is free again
    again = api.create(name="doomed", backend="docker", config={"image": IMAGE}, start=False)
    assert again["id"] != inst["id"]
    assert api.delete(f"/instances/{again['id']}").status_code == 204  # stopped: no force needed


def test_container_removed_behind_our_back(api: Api, docker_http: httpx.Client) -> None:
    inst = api.create(name="ghost", backend="docker", config={"image": IMAGE, "command": IDLE})
    docker_http.delete(f"/containers/{inst['backendId']}", params={"force": 1})
    got = api.get(f"/instances/{inst['id']}").json()
    assert (got["state"], got["status"]) == ("error", "missing from backend")
    error_of(api.put(f"/instances/{inst['id']}/start"), 409, "OPERATION_NOT_SUPPORTED")
    assert api.delete(f"/instances/{inst['id']}").status_code == 204


def test_docker_errors(api: Api) -> None:
    base = {"name": "bad", "backend": "docker", "config": {"image": IMAGE}}
    error_of(
        api.post("/instances", json={**base, "config": {"image": "no-such-image:1"}}), 400, "BACKEND_ERROR"
    )
    err = error_of(
        api.post("/instances", json={**base, "config": {"image": IMAGE, "diskFormat": "qcow2"}}),
        400,
        "VALIDATION_ERROR",
    )
    assert err["details"]["fields"] == ["diskFormat"]
    error_of(api.post("/instances", json={**base, "config": {"command": IDLE}}), 400, "VALIDATION_ERROR")
    error_of(
        api.post("/instances", json={**base, "config": {"image": IMAGE, "ports": ["99999:80"]}}),
        400,
        "VALIDATION_ERROR",
    )
    error_of(
        api.post("/instances", json={**base, "config": {"image": IMAGE, "env": ["NOEQUALS"]}}),
        400,
        "VALIDATION_ERROR",
    )
    error_of(
        api.post("/instances", json={**base, "config": {"image": IMAGE, "restartPolicy": "sometimes"}}),
        400,
        "VALIDATION_ERROR",
    )
    err = error_of(
        api.post("/instances", json={**base, "resources": {"memory": {"limit": 1 << 49}}}),
        400,
        "RESOURCE_LIMIT_EXCEEDED",
    )
    assert err["details"]["resource"] == "memory"
    error_of(
        api.post("/instances", json={**base, "resources": {"cpu": {"cores": 64}}}),
        400,
        "RESOURCE_LIMIT_EXCEEDED",
    )
    error_of(
        api.post("/instances", json={**base, "resources": {"memory": {"limit": 1024}}}),
        400,
        "VALIDATION_ERROR",
    )
    error_of(
        api.post("/instances", json={**base, "resources": {"storage": {"totalSpace": 1 << 30}}}),
        400,
        "OPERATION_NOT_SUPPORTED",
    )
    assert api.get("/instances").json()["total"] == 0  # nothing refused left a record behind
