"""Issue #22, atomic lifecycle: a failed create leaves nothing (no record, no container or VM,
the name free), a create interrupted by kill -9 is rolled back at the next start or by a delete,
bad ids and names are 400 (never 500), limits below what a backend enforces are refused, and
numbers and states read the same in get and list."""

from __future__ import annotations

import threading
from functools import partial
from pathlib import Path

import httpx
import pytest

from .conftest import API, IMAGE, TOKEN, Api, error_of, start_service, wait_for

IDLE = ["sleep", "3600"]


def ours(docker_http: httpx.Client) -> list[dict]:
    """Containers on the private dockerd carrying shoal's label."""
    rows = docker_http.get("/containers/json", params={"all": 1}).json()
    return [c for c in rows if "shoal.compute.id" in (c.get("Labels") or {})]


def assert_nothing_left(api: Api, docker_http: httpx.Client | None, name: str, backend: str) -> None:
    assert api.get("/instances").json()["total"] == 0
    error_of(api.get(f"/instances/name/{name}"), 404, "INSTANCE_NOT_FOUND")
    if docker_http is not None:
        assert ours(docker_http) == []
    # the name is free again: the same name with a good request is created
    good = {"image": IMAGE, "command": IDLE} if backend == "docker" else {"image": "tiny"}
    inst = api.create(name=name, backend=backend, config=good, start=False)
    assert api.delete(f"/instances/{inst['id']}").status_code == 204


@pytest.mark.parametrize(
    "config, resources, status, code",
    [
        ({"command": IDLE}, {"cpu": {"cores": 0.001}}, 400, "VALIDATION_ERROR"),
        ({"command": IDLE}, {"cpu": {"cores": 1e-7}}, 400, "VALIDATION_ERROR"),
        ({"command": ["/no/such/binary"]}, {}, 400, "BACKEND_ERROR"),  # fails at the start step
        ({"image": "shoal-no-such-image:1"}, {}, 400, "BACKEND_ERROR"),
        ({"command": IDLE, "networkMode": "no-such-net"}, {}, 400, "BACKEND_ERROR"),
        ({"command": IDLE, "env": ["A=x\u0000y"]}, {}, 400, "VALIDATION_ERROR"),
        ({"command": ["echo", "a\u0000b"]}, {}, 400, "VALIDATION_ERROR"),
    ],
)
def test_failed_docker_create_leaves_nothing(
    api: Api, docker_http: httpx.Client, config: dict, resources: dict, status: int, code: str
) -> None:
    body = {
        "name": "doomed",
        "backend": "docker",
        "config": {"image": IMAGE, **config},
        "resources": resources,
    }
    error_of(api.post("/instances", json=body), status, code)
    assert_nothing_left(api, docker_http, "doomed", "docker")


def kvm_files(service) -> list[Path]:
    vms = service.data_dir / "kvm" / "vms"
    return list(vms.iterdir()) if vms.is_dir() else []


@pytest.mark.parametrize(
    "config, extra, status, code",
    [
        ({"image": "no-such-template"}, {}, 400, "VALIDATION_ERROR"),
        ({"image": "tiny"}, {"metadata": {"labels": {"k": "a\u0000b"}}}, 400, "VALIDATION_ERROR"),
        ({"image": "tiny"}, {"metadata": {"labels": {"k": "bell\u0007"}}}, 400, "VALIDATION_ERROR"),
        ({"image": "tiny"}, {"resources": {"cpu": {"cores": 1e-7}}}, 400, "VALIDATION_ERROR"),
        ({"image": "tiny"}, {"resources": {"memory": {"limit": 1024}}}, 400, "VALIDATION_ERROR"),
        (
            {"image": "tiny", "diskFormat": "qcow2"},
            {"resources": {"storage": {"totalSpace": 1}}},
            400,
            "VALIDATION_ERROR",
        ),
    ],
)
def test_failed_kvm_create_leaves_nothing(
    api: Api, service, config: dict, extra: dict, status: int, code: str
) -> None:
    error_of(
        api.post("/instances", json={"name": "doomed-vm", "backend": "kvm", "config": config, **extra}),
        status,
        code,
    )
    assert kvm_files(service) == []
    assert_nothing_left(api, None, "doomed-vm", "kvm")


def test_kvm_create_failing_after_its_disk_is_made_rolls_back(api: Api, service) -> None:
    """The blank template's disk is smaller than asked to shrink to: refused after qemu-img info."""
    r = api.post(
        "/instances",
        json={
            "name": "vm-late",
            "backend": "kvm",
            "config": {"image": "blank"},
            "resources": {"storage": {"totalSpace": 1 << 20}},
        },
    )
    error_of(r, 400, "VALIDATION_ERROR")
    assert kvm_files(service) == []
    assert_nothing_left(api, None, "vm-late", "kvm")


ID_ROUTES = [
    ("GET", "/instances/{}"),
    ("PUT", "/instances/{}"),
    ("DELETE", "/instances/{}"),
    ("PUT", "/instances/{}/start"),
    ("PUT", "/instances/{}/stop"),
    ("PUT", "/instances/{}/restart"),
    ("PUT", "/instances/{}/pause"),
    ("PUT", "/instances/{}/unpause"),
    ("GET", "/instances/{}/usage"),
    ("GET", "/instances/name/{}"),
]


@pytest.mark.parametrize("bad", ["inst-%00", "%00", "a%00b", "x" * 2000, "y" * 5000, "%01abc"])
def test_bad_ids_and_names_are_400(api: Api, bad: str) -> None:
    for method, path in ID_ROUTES:
        kw = {"json": {"resources": {}}} if (method, path) == ("PUT", "/instances/{}") else {}
        r = api.http.request(method, API + path.format(bad), **kw)
        error_of(r, 400, "VALIDATION_ERROR")


def test_numbers_are_integers_and_states_agree(api: Api) -> None:
    inst = api.create(
        name="ints",
        backend="docker",
        config={"image": IMAGE, "command": IDLE},
        resources={"cpu": {"cores": 2}, "memory": {"limit": 1 << 30}},
    )
    raw = api.get(f"/instances/{inst['id']}").text
    assert '"cores":2,' in raw or '"cores":2}' in raw, raw
    assert '"limit":1073741824' in raw and "1073741824.0" not in raw
    half = api.create(
        name="half", backend="docker", config={"image": IMAGE}, resources={"cpu": {"cores": 0.5}}, start=False
    )
    assert half["resources"]["cpu"]["cores"] == 0.5
    listed = {i["id"]: i for i in api.get("/instances").json()["instances"]}
    for one in (inst, half):
        got = api.get(f"/instances/{one['id']}").json()
        assert (got["state"], got["status"]) == (listed[one["id"]]["state"], listed[one["id"]]["status"])
    assert listed[inst["id"]]["status"] == "running" and listed[half["id"]]["status"] == "created"
    status = api.get("/cluster/status").text
    assert '"used":2,' in status or '"used":2}' in status, status
    usage = api.get(f"/instances/{inst['id']}/usage").json()
    assert usage["cpu"]["cores"] == 2 and isinstance(usage["cpu"]["cores"], int)


def test_kill_9_mid_create_is_rolled_back_or_deleted(dockerd, docker_http, templates, tmp_path) -> None:
    """kill -9 while dockerd holds the create: the record is the journal ("creating").

    Round 1: restarted while dockerd is still silent, the rollback cannot run; the instance shows
    `creating`; once dockerd is back a delete removes the container the late create made.
    Round 2: restarted with dockerd answering, the start itself rolls the create back.
    """
    data = tmp_path / "data"
    for rnd in (1, 2):
        svc = start_service(data, dockerd.url, "test:///default", templates, ["--backend-timeout", "30"])
        api = Api(svc.url)
        assert api.get("/cluster/status").status_code == 200  # capacity known: the create goes straight on
        name = f"crashy{rnd}"
        done: list[httpx.Response | BaseException] = []
        body = {"name": name, "backend": "docker", "config": {"image": IMAGE, "command": IDLE}}
        dockerd.pause_daemon()
        try:
            t = threading.Thread(target=_post, args=(svc.url, body, done), daemon=True)
            t.start()
            inst = wait_for(partial(_journaled, api, name), what="the create to be journaled")
            assert (inst["state"], inst["status"]) == ("created", "creating")
            svc.kill()
            t.join(10)
            if rnd == 1:
                svc = start_service(data, dockerd.url, "test:///default", templates)
                api = Api(svc.url)
                assert api.get(f"/instances/name/{name}").json()["status"] == "creating"
        finally:
            dockerd.resume_daemon()
        # what dockerd may have done with the request it got before the kill; make sure it did
        if not [c for c in ours(docker_http) if c["Labels"]["shoal.compute.id"] == inst["id"]]:
            r = docker_http.post(
                "/containers/create",
                params={"name": name},
                json={"Image": IMAGE, "Cmd": IDLE, "Labels": {"shoal.compute.id": inst["id"]}},
            )
            assert r.status_code in (201, 409), r.text  # 409: dockerd's own late create won the race
        wait_for(partial(_labelled, docker_http, inst["id"]), what="the late container")
        if rnd == 1:
            assert api.delete(f"/instances/{inst['id']}").status_code == 204
        else:
            svc = start_service(data, dockerd.url, "test:///default", templates)
            api = Api(svc.url)
            error_of(api.get(f"/instances/{inst['id']}"), 404, "INSTANCE_NOT_FOUND")
        left = ours(docker_http)
        assert left == [], [(c["Names"], c["Labels"], c["Created"]) for c in left]
        again = api.create(name=name, backend="docker", config={"image": IMAGE}, start=False)
        assert api.delete(f"/instances/{again['id']}").status_code == 204
        svc.stop()


def test_a_leftover_with_shoals_label_does_not_block_the_name(api: Api, docker_http: httpx.Client) -> None:
    """A container labelled by shoal for an instance the registry does not know (a lost create)."""
    r = docker_http.post(
        "/containers/create",
        params={"name": "orphaned"},
        json={"Image": IMAGE, "Cmd": IDLE, "Labels": {"shoal.compute.id": "inst-0123456789ab"}},
    )
    assert r.status_code == 201
    inst = api.create(name="orphaned", backend="docker", config={"image": IMAGE, "command": IDLE})
    assert [c["Id"] for c in ours(docker_http)] == [inst["backendId"]]
    # a container that is not shoal's keeps its name
    r = docker_http.post("/containers/create", params={"name": "theirs"}, json={"Image": IMAGE, "Cmd": IDLE})
    assert r.status_code == 201
    try:
        body = {"name": "theirs", "backend": "docker", "config": {"image": IMAGE}}
        error_of(api.post("/instances", json=body), 409, "NAME_CONFLICT")
        assert api.get("/instances").json()["total"] == 1
    finally:
        docker_http.delete(f"/containers/{r.json()['Id']}", params={"force": 1})


def _labelled(docker_http: httpx.Client, instance_id: str) -> list[dict]:
    return [c for c in ours(docker_http) if c["Labels"]["shoal.compute.id"] == instance_id]


def _journaled(api: Api, name: str) -> dict | None:
    r = api.get(f"/instances/name/{name}")
    return r.json() if r.status_code == 200 else None


def _post(url: str, body: dict, done: list) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    try:
        done.append(httpx.post(url + API + "/instances", json=body, headers=headers, timeout=60))
    except BaseException as exc:
        done.append(exc)
