"""Backend-independent behaviour: auth, envelopes, names across backends, cluster and backend info."""

from __future__ import annotations

import httpx

from .conftest import API, IMAGE, TOKEN, Api, error_of


def test_bearer_token_required_but_health_open(service) -> None:
    with httpx.Client(base_url=service.url) as anon:
        assert anon.get("/health").status_code == 200
        assert anon.get("/openapi.json").status_code == 200
        for headers in (
            {},
            {"Authorization": "Bearer wrong"},
            {"Authorization": f"Basic {TOKEN}"},
            {"Authorization": TOKEN},
        ):
            r = anon.get(API + "/instances", headers=headers)
            error_of(r, 401, "UNAUTHORIZED")
            assert r.headers["www-authenticate"].startswith("Bearer")
        r = anon.post(API + "/instances", json={"name": "x", "backend": "docker", "config": {"image": IMAGE}})
        error_of(r, 401, "UNAUTHORIZED")
        assert anon.get(API + "/instances", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
        # deny by default under /api/ (declared route or not); /metrics is open, as documented
        assert anon.get("/metrics").status_code == 200
        error_of(anon.get("/api/v2/anything"), 401, "UNAUTHORIZED")


def test_auth_gate_strips_a_root_path() -> None:
    from shoal.compute.service import _route_path

    assert _route_path({"path": "/compute/health", "root_path": "/compute"}) == "/health"
    assert _route_path({"path": "/health", "root_path": ""}) == "/health"
    assert _route_path({"path": "/healthz", "root_path": "/compute"}) == "/healthz"


def test_tokens_file_and_generated_token(tmp_path, dockerd, templates) -> None:
    from shoal.testing import ServiceProcess

    (tmp_path / "tokens").write_text("# ops\nalpha\n\nbeta\n")
    svc = ServiceProcess(
        "compute",
        tmp_path / "a",
        [
            "--docker-host",
            dockerd.url,
            "--libvirt-uri",
            "test:///default",
            "--tokens-file",
            str(tmp_path / "tokens"),
        ],
    )
    with svc:
        for token, status in (("alpha", 200), ("beta", 200), ("# ops", 401), (TOKEN, 401)):
            assert Api(svc.url, token).get("/instances").status_code == status
    gen = ServiceProcess(
        "compute", tmp_path / "b", ["--docker-host", dockerd.url, "--libvirt-uri", "test:///default"]
    )
    with gen:
        token_file = tmp_path / "b" / "token"
        assert token_file.stat().st_mode & 0o077 == 0  # only the owner can read it
        token = token_file.read_text().strip()
        assert len(token) >= 32
        assert Api(gen.url, token).get("/instances").status_code == 200
        assert Api(gen.url, "guess").get("/instances").status_code == 401


def test_not_found_and_bad_backend(api: Api) -> None:
    for method, path in (
        ("GET", "/instances/inst-000000000000"),
        ("PUT", "/instances/inst-000000000000"),
        ("DELETE", "/instances/inst-000000000000"),
        ("PUT", "/instances/inst-000000000000/start"),
        ("PUT", "/instances/inst-000000000000/stop"),
        ("PUT", "/instances/inst-000000000000/restart"),
        ("PUT", "/instances/inst-000000000000/pause"),
        ("PUT", "/instances/inst-000000000000/unpause"),
        ("GET", "/instances/inst-000000000000/usage"),
        ("GET", "/instances/name/nobody"),
    ):
        kw = {"json": {"resources": {}}} if (method, path) == ("PUT", "/instances/inst-000000000000") else {}
        error_of(api.req(method, path, **kw), 404, "INSTANCE_NOT_FOUND")
    error_of(api.get("/backends/xen/info"), 400, "INVALID_BACKEND")
    error_of(api.get("/instances", params={"backend": "lxc"}), 400, "INVALID_BACKEND")
    err = error_of(
        api.post("/instances", json={"name": "x", "backend": "vmware", "config": {"image": "i"}}),
        400,
        "INVALID_BACKEND",
    )
    assert err["details"]["supported"] == ["docker", "kvm"]
    error_of(api.get("/instances", params={"state": "sleepy"}), 400, "VALIDATION_ERROR")
    error_of(api.get("/instances", params={"page": 0}), 400, "VALIDATION_ERROR")
    error_of(api.get("/instances", params={"pageSize": "many"}), 400, "VALIDATION_ERROR")


def test_request_validation_in_the_envelope(api: Api) -> None:
    good = {"name": "ok", "backend": "docker", "config": {"image": IMAGE}}
    error_of(api.post("/instances", content=b"{not json"), 400, "BAD_REQUEST")
    error_of(api.post("/instances", json={**good, "name": "bad name!"}), 400, "VALIDATION_ERROR")
    error_of(api.post("/instances", json={**good, "name": "x" * 64}), 400, "VALIDATION_ERROR")
    error_of(api.post("/instances", json={**good, "colour": "red"}), 400, "VALIDATION_ERROR")  # typo'd field
    error_of(
        api.post("/instances", json={**good, "resources": {"cpu": {"cores": "2"}}}), 400, "VALIDATION_ERROR"
    )
    error_of(
        api.post("/instances", json={**good, "resources": {"cpu": {"cores": -1}}}), 400, "VALIDATION_ERROR"
    )
    error_of(
        api.post("/instances", json={k: v for k, v in good.items() if k != "config"}), 400, "VALIDATION_ERROR"
    )
    inst = api.create(**good, start=False)
    error_of(api.put(f"/instances/{inst['id']}/stop", json={"timeout": -1}), 400, "VALIDATION_ERROR")
    error_of(api.put(f"/instances/{inst['id']}/stop", content=b"[1,2]"), 400, "VALIDATION_ERROR")
    error_of(api.put(f"/instances/{inst['id']}/stop", content=b"{"), 400, "VALIDATION_ERROR")
    assert api.put(f"/instances/{inst['id']}/stop", content=b"").status_code == 200  # the body is optional
    error_of(api.put(f"/instances/{inst['id']}", json={"resources": {"gpu": 1}}), 400, "VALIDATION_ERROR")
    r = api.post("/instances", content=b"{" + b" " * (300 * 1024) + b"}")
    assert r.status_code == 413 and "error" in r.json()


def test_names_are_unique_across_backends(api: Api) -> None:
    api.create(name="shared", backend="docker", config={"image": IMAGE}, start=False)
    err = error_of(
        api.post("/instances", json={"name": "shared", "backend": "kvm", "config": {"image": "tiny"}}),
        409,
        "NAME_CONFLICT",
    )
    assert err["details"]["name"] == "shared"
    error_of(
        api.post("/instances", json={"name": "shared", "backend": "docker", "config": {"image": IMAGE}}),
        409,
        "NAME_CONFLICT",
    )
    api.create(name="vm-only", backend="kvm", config={"image": "tiny"}, start=False)
    error_of(
        api.post("/instances", json={"name": "vm-only", "backend": "docker", "config": {"image": IMAGE}}),
        409,
        "NAME_CONFLICT",
    )
    assert api.get("/instances").json()["total"] == 2


def test_cluster_status_counts_both_backends(api: Api) -> None:
    api.create(
        name="c1",
        backend="docker",
        config={"image": IMAGE, "command": ["sleep", "600"]},
        resources={"cpu": {"cores": 1}, "memory": {"limit": 64 << 20}},
    )
    api.create(name="c2", backend="docker", config={"image": IMAGE}, start=False)
    api.create(
        name="v1",
        backend="kvm",
        config={"image": "tiny"},
        resources={"cpu": {"cores": 2}, "memory": {"limit": 256 << 20}},
    )
    st = api.get("/cluster/status").json()
    assert st["health"] == "healthy" and st["totalInstances"] == 3
    docker, kvm = st["backends"]["docker"], st["backends"]["kvm"]
    assert (docker["status"], docker["instances"], kvm["status"], kvm["instances"]) == (
        "healthy",
        2,
        "healthy",
        1,
    )
    assert (
        docker["resources"]["cpu"]["used"] == 1 and docker["resources"]["memory"]["used"] == 64 << 20
    )  # only running ones
    assert docker["resources"]["cpu"]["total"] >= 1 and docker["resources"]["memory"]["total"] > 0
    assert kvm["resources"]["cpu"]["used"] == 2 and kvm["resources"]["memory"]["used"] == 256 << 20


def test_backend_info(api: Api) -> None:
    d = api.get("/backends/docker/info").json()
    assert d["type"] == "docker" and d["status"] == "running" and d["supportedTypes"] == ["container"]
    assert d["version"].split(".")[0].isdigit() and d["apiVersion"].startswith("1.")
    assert "containers" in d["capabilities"] and d["healthCheck"]["status"] == "healthy"
    assert d["healthCheck"]["lastCheck"].endswith("Z")
    k = api.get("/backends/kvm/info").json()
    assert k["type"] == "kvm" and k["supportedTypes"] == ["vm"] and k["status"] == "running"
    assert k["apiVersion"].count(".") == 2 and "vms" in k["capabilities"]
