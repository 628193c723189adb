"""The kv service as the auth layer's first consumer: in-process, and as real `shoal serve kv`
processes whose workers must notice a revocation made by another process within 1 s."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import httpx
import pytest

from shoal.kv.service import create_app
from shoal.testing import ServiceProcess, asgi_client, free_port
from shoal.testing.fuzz import run_schemathesis
from shoal.web.auth import AuthDir, BearerAuth, KeyTable, SignedAuth


@pytest.fixture
def creds(tmp_path):
    d = tmp_path / "auth"
    admin = AuthDir(d).init()
    _, viewer = AuthDir(d).create_key("viewer", "reader")
    _, operator = AuthDir(d).create_key("operator", "ops")
    _, uploader = AuthDir(d).create_key("uploader", "up")
    return {"dir": d, "admin": admin, "viewer": viewer, "operator": operator, "uploader": uploader}


def shoal(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "shoal", *args], capture_output=True, text=True, timeout=60)


async def test_kv_reads_need_viewer_writes_need_operator(tmp_path, creds):
    app = create_app(
        {"store": "sqlite", "data_dir": str(tmp_path / "kv"), "durable": False, "auth_dir": str(creds["dir"])}
    )
    async with asgi_client(app) as c:
        r = await c.put("/v1/kv/a", json={"value": "1"})
        assert r.status_code == 401 and "Authorization" in r.json()["detail"]  # the kv envelope
        r = await c.get("/v1/kv/a", headers={"Authorization": "Bearer not-a-token"})
        assert r.status_code == 401 and set(r.json()) == {"detail"}
        for role in ("viewer", "uploader"):
            r = await c.put("/v1/kv/a", json={"value": "1"}, auth=BearerAuth(creds[role]))
            assert r.status_code == 403 and "operator" in r.json()["detail"], role
            r = await c.post("/v1/txn", json={"ops": []}, auth=BearerAuth(creds[role]))
            assert r.status_code == 403
        r = await c.put("/v1/kv/a", json={"value": "1"}, auth=BearerAuth(creds["operator"]))
        assert r.status_code == 200 and r.json()["version"] == 1
        r = await c.get("/v1/kv/a", auth=BearerAuth(creds["viewer"]))
        assert r.status_code == 200 and r.json()["value"] == "1"
        assert (await c.get("/v1/keys", auth=BearerAuth(creds["viewer"]))).json()["keys"] == ["/a"]
        assert (await c.get("/v1/status")).status_code == 401
        token = (await c.post("/auth/token", auth=BearerAuth(creds["operator"]))).json()["access_token"]
        r = await c.delete("/v1/kv/a", auth=BearerAuth(token))
        assert r.status_code == 200 and r.json()["deleted"] is True
        node = SignedAuth(KeyTable(creds["dir"]).secrets[0], "metadata-1")
        r = await c.put("/v1/kv/lease", json={"value": "m1"}, auth=node)
        assert r.status_code == 200
        assert (await c.get("/health")).status_code == 200
        doc = (await c.get("/openapi.json")).json()
        assert doc["paths"]["/v1/kv/{key}"]["put"]["x-shoal-role"] == "operator"
        assert doc["paths"]["/v1/kv/{key}"]["get"]["security"] == [{"bearerAuth": []}, {"nodeSignature": []}]


async def test_kv_rate_limit_is_429_in_its_envelope(tmp_path, creds):
    app = create_app(
        {
            "store": "memory",
            "data_dir": str(tmp_path / "kv"),
            "auth_dir": str(creds["dir"]),
            "rate_limit_key": "1/5",
        }
    )
    async with asgi_client(app) as c:
        codes = [(await c.get("/v1/status", auth=BearerAuth(creds["viewer"]))).status_code for _ in range(8)]
        assert codes[:5] == [200] * 5 and set(codes[5:]) == {429}
        r = await c.get("/v1/status", auth=BearerAuth(creds["viewer"]))
        assert r.status_code == 429 and r.headers["retry-after"] == "1" and "rate limit" in r.json()["detail"]


def test_without_auth_dir_kv_is_open_on_loopback_and_refuses_any_other_address(tmp_path):
    port = free_port()
    r = shoal("serve", "kv", "--host", "0.0.0.0", "--port", str(port), "--data-dir", str(tmp_path / "kv"))
    assert r.returncode == 1 and "refusing to serve 0.0.0.0 without authentication" in r.stderr
    with ServiceProcess("kv", tmp_path / "kv", ["--store", "memory"]) as svc:
        assert httpx.put(svc.url + "/v1/kv/x", json={"value": "open"}).status_code == 200


def test_revocation_reaches_every_worker_of_another_process_within_a_second(tmp_path, creds):
    init = shoal(
        "auth", "key", "create", "--dir", str(creds["dir"]), "--role", "operator", "--name", "temp", "--json"
    )
    assert init.returncode == 0, init.stderr
    key = json.loads(init.stdout)["key"]
    args = ["--workers", "2", "--store", "sqlite", "--no-durable", "--auth-dir", str(creds["dir"])]
    with ServiceProcess("kv", tmp_path / "kv", args) as svc:
        assert httpx.put(svc.url + "/v1/kv/k", json={"value": "v"}, auth=BearerAuth(key)).status_code == 200
        token = httpx.post(svc.url + "/auth/token", auth=BearerAuth(key)).json()["access_token"]
        assert httpx.get(svc.url + "/v1/kv/k", auth=BearerAuth(token)).status_code == 200
        assert httpx.get(svc.url + "/v1/kv/k").status_code == 401
        listed = shoal("auth", "key", "list", "--dir", str(creds["dir"]))
        assert "temp" in listed.stdout and "active" in listed.stdout
        revoked = shoal("auth", "key", "revoke", "--dir", str(creds["dir"]), "temp")
        assert revoked.returncode == 0, revoked.stderr
        done = time.monotonic()
        while httpx.get(svc.url + "/v1/kv/k", auth=BearerAuth(key)).status_code == 200:
            assert time.monotonic() - done < 1.0, "a revoked key still worked 1 s after revocation"
            time.sleep(0.02)
        time.sleep(max(0.0, 1.0 - (time.monotonic() - done)))
        # Every worker: a fresh connection each time, the key and its token both refused.
        for cred in [key, token] * 6:
            r = httpx.get(svc.url + "/v1/kv/k", auth=BearerAuth(cred), headers={"Connection": "close"})
            assert r.status_code == 401 and "revoked" in r.json()["detail"]
        assert httpx.get(svc.url + "/v1/kv/k", auth=BearerAuth(creds["viewer"])).status_code == 200


def test_schemathesis_with_credentials_finds_no_server_error(tmp_path, creds):
    args = ["--store", "sqlite", "--no-durable", "--auth-dir", str(creds["dir"]), "--rate-limit-ip", "0"]
    with ServiceProcess("kv", tmp_path / "kv", args) as svc:
        out = run_schemathesis(
            svc.url,
            max_examples=20,
            max_time=25,
            exclude_path_regex="^/v1/watch",
            headers=[f"Authorization: Bearer {creds['admin']}"],
        )
        assert out.returncode == 0, out.stdout[-4000:]
        # The credentials got through: writes succeeded (metrics count statuses per route).
        metrics = httpx.get(svc.url + "/metrics").text
        assert 'method="PUT",route="/v1/kv/{key}",service="KV store",status="200"' in metrics
