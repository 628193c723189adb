"""Issue #19 for compute: roles per route with --auth-dir, the --token compatibility credential,
and host access (host paths, host network, privileges, devices) refused unless allowed."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from shoal.testing import ServiceProcess
from shoal.web.auth import AuthDir

from .conftest import API, IMAGE, TOKEN, Api, error_of, start_service, wait_for


@pytest.fixture(scope="module")
def creds(tmp_path_factory: pytest.TempPathFactory) -> dict:
    d = tmp_path_factory.mktemp("auth") / "auth"
    admin = AuthDir(d).init()
    _, viewer = AuthDir(d).create_key("viewer", "reader")
    _, operator = AuthDir(d).create_key("operator", "ops")
    return {"dir": d, "admin": admin, "viewer": viewer, "operator": operator}


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A host dir the secured node allows, with a file in it and a symlink pointing out of it."""
    root = tmp_path_factory.mktemp("hostshare")
    (root / "ok").mkdir()
    (root / "ok" / "hello.txt").write_text("from the host\n")
    os.symlink("/", root / "ok" / "escape")
    return root / "ok"


@pytest.fixture(scope="module")
def secured(dockerd, templates, creds, shared, tmp_path_factory) -> Iterator[ServiceProcess]:
    """Compute with --auth-dir, the legacy --token, and an allow-list (a prefix, host network)."""
    svc = start_service(
        tmp_path_factory.mktemp("compute-auth") / "data",
        dockerd.url,
        "test:///default",
        templates,
        ["--auth-dir", str(creds["dir"]), "--allow-host-path", str(shared), "--allow-host-network"],
    )
    yield svc
    svc.stop()


@pytest.fixture
def ops(secured: ServiceProcess, creds: dict) -> Iterator[Api]:
    client = Api(secured.url, creds["operator"])
    yield client
    for inst in client.get("/instances", params={"pageSize": 1000}).json().get("instances", []):
        client.delete(f"/instances/{inst['id']}", params={"force": "true"})
    client.close()


def container(name: str, **config) -> dict:
    return {"name": name, "backend": "docker", "config": {"image": IMAGE, **config}, "start": False}


def test_roles_per_route(secured: ServiceProcess, creds: dict, ops: Api) -> None:
    with httpx.Client(base_url=secured.url, timeout=60) as anon:
        r = anon.get(API + "/instances")
        error_of(r, 401, "UNAUTHORIZED")
        assert r.headers["www-authenticate"].startswith("Bearer")
        error_of(anon.post(API + "/instances", json=container("a")), 401, "UNAUTHORIZED")
        error_of(
            anon.get(API + "/instances", headers={"Authorization": "Bearer shoal_wrong"}), 401, "UNAUTHORIZED"
        )
        error_of(anon.get(API + "/v2/not-a-route"), 401, "UNAUTHORIZED")  # deny by default under /api/
        assert anon.get("/health").status_code == 200
        assert anon.get("/metrics").status_code == 200  # open, as documented
        doc = anon.get("/openapi.json").json()
    viewer = Api(secured.url, creds["viewer"])
    err = error_of(viewer.post("/instances", json=container("v")), 403, "FORBIDDEN")
    assert "operator" in err["message"]
    assert viewer.get("/instances").json()["total"] == 0  # nothing was created
    inst = ops.create(**container("made-by-ops", command=["sleep", "600"]))
    assert viewer.get(f"/instances/{inst['id']}").json()["name"] == "made-by-ops"
    assert viewer.get("/cluster/status").status_code == 200
    for method, path in (("PUT", "/start"), ("PUT", "/stop"), ("DELETE", "")):
        error_of(viewer.req(method, f"/instances/{inst['id']}{path}"), 403, "FORBIDDEN")
    # a token from the operator key works too; the legacy --token is an operator
    token = httpx.post(
        secured.url + "/auth/token", headers={"Authorization": f"Bearer {creds['operator']}"}
    ).json()["access_token"]
    assert Api(secured.url, token).put(f"/instances/{inst['id']}/start").json()["state"] == "running"
    legacy = Api(secured.url, TOKEN)
    assert legacy.put(f"/instances/{inst['id']}/stop", json={"force": True}).json()["state"] == "stopped"
    assert legacy.delete(f"/instances/{inst['id']}").status_code == 204
    ops_doc = doc["paths"][API + "/instances"]
    assert ops_doc["get"]["x-shoal-role"] == "viewer" and ops_doc["post"]["x-shoal-role"] == "operator"
    assert ops_doc["post"]["security"] == [{"bearerAuth": []}]
    assert "security" not in doc["paths"]["/health"]["get"]
    viewer.close()


def test_tokens_only_service_documents_security(api: Api) -> None:
    doc = api.http.get("/openapi.json").json()
    assert doc["paths"][API + "/instances"]["get"]["security"] == [{"bearerAuth": []}]
    assert "bearerAuth" in doc["components"]["securitySchemes"]


@pytest.mark.parametrize(
    "config, field",
    [
        ({"volumes": ["/:/host"]}, "config.volumes"),
        ({"volumes": ["/etc:/etc2:ro"]}, "config.volumes"),
        ({"volumes": ["./here:/x"]}, "config.volumes"),
        ({"networkMode": "host"}, "config.networkMode"),
        ({"networkMode": "HOST"}, "config.networkMode"),
        ({"privileged": True}, "config.privileged"),
        ({"capAdd": ["SYS_ADMIN"]}, "config.capAdd"),
        ({"devices": ["/dev/kmsg"]}, "config.devices"),
    ],
)
def test_host_access_is_refused_by_default(api: Api, docker_http, config: dict, field: str) -> None:
    err = error_of(api.post("/instances", json=container("host-grab", **config)), 403, "FORBIDDEN")
    assert err["details"]["field"] == field
    assert api.get("/instances").json()["total"] == 0  # no record, name free
    assert docker_http.get("/containers/json", params={"all": 1}).json() == []  # nothing on the daemon


def test_reserved_labels(api: Api) -> None:
    body = {**container("lbl"), "metadata": {"labels": {"shoal.compute.id": "inst-000000000000"}}}
    err = error_of(api.post("/instances", json=body), 400, "VALIDATION_ERROR")
    assert err["details"]["label"] == "shoal.compute.id"
    inst = api.create(**container("lbl"))
    r = api.put(f"/instances/{inst['id']}", json={"metadata": {"labels": {"Shoal.x": "1"}}})
    error_of(r, 400, "VALIDATION_ERROR")
    assert api.put(f"/instances/{inst['id']}", json={"metadata": {"labels": {"app": "x"}}}).status_code == 200


def test_allowed_prefix_and_host_network(ops: Api, shared: Path, docker_http) -> None:
    inst = ops.create(
        **{
            **container("reader", volumes=[f"{shared}:/mnt:ro"], command=["cat", "/mnt/hello.txt"]),
            "start": True,
        }
    )
    wait_for(lambda: ops.get(f"/instances/{inst['id']}").json()["state"] == "stopped", what="cat to exit")
    logs = docker_http.get(f"/containers/{inst['backendId']}/logs", params={"stdout": 1}).content
    assert b"from the host" in logs
    # a path under the prefix is fine; one that leaves it through a symlink or '..' is not
    ops.create(**container("sub", volumes=[f"{shared}/sub-not-yet:/x"]))
    for vol in (f"{shared}/escape:/host", f"{shared}/../:/up", "/:/host"):
        error_of(ops.post("/instances", json=container("esc", volumes=[vol])), 403, "FORBIDDEN")
    ops.create(**container("named-volume", volumes=["scratch:/data"]))  # a named volume is not the host
    net = ops.create(**container("hostnet", networkMode="host"))
    assert (
        docker_http.get(f"/containers/{net['backendId']}/json").json()["HostConfig"]["NetworkMode"] == "host"
    )
    # not on the allow-list of this node
    error_of(ops.post("/instances", json=container("priv", privileged=True)), 403, "FORBIDDEN")
