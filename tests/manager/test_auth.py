"""Issue #19 for the State Manager: viewers read, operators change, nobody else gets in.

A real `shoal serve manager --auth-dir` subprocess against moto's S3 server: no credentials is
401, a viewer changing anything is 403, the right role works; the OpenAPI declares it all.
"""

from __future__ import annotations

import pytest

from shoal.manager.service import check_options
from shoal.web.auth import AuthDir, BearerAuth


@pytest.fixture
def creds(tmp_path):
    d = tmp_path / "auth"
    admin = AuthDir(d).init()
    _, viewer = AuthDir(d).create_key("viewer", "reader")
    _, operator = AuthDir(d).create_key("operator", "ops")
    return {"dir": d, "admin": admin, "viewer": BearerAuth(viewer), "operator": BearerAuth(operator)}


def test_viewers_read_operators_change(manager_factory, storage, creds):
    viewer, operator = creds["viewer"], creds["operator"]
    with manager_factory(args=["--auth-dir", str(creds["dir"])]) as m:
        assert m.get("/health").status_code == 200  # the liveness probe carries no key
        for path in ("/", "/config", "/checkpoints"):
            r = m.get(path)
            assert r.status_code == 401 and "Authorization" in r.json()["detail"], path
        r = m.post("/config", {"storage": storage, "stacks": ["db"]}, auth=viewer)
        assert r.status_code == 403 and "operator" in r.json()["detail"]
        assert m.get("/config", auth=viewer).status_code == 404  # still unconfigured
        r = m.post("/config", {"storage": storage, "stacks": ["db"]}, auth=operator)
        assert r.status_code == 200, r.text
        assert m.get("/", auth=viewer).json()["configured"] is True
        assert m.get("/config", auth=viewer).json()["storage"]["secret_key"] == "***"
        for path, body in (
            ("/checkpoint", {"id": "c1"}),
            ("/restore", {"id": "c1"}),
            ("/release-lease", None),
        ):
            assert m.post(path, body).status_code == 401, path
            assert m.post(path, body, auth=viewer).status_code == 403, path
        assert m.post("/process/stop", auth=viewer).status_code == 403
        assert m.post("/checkpoint", {"id": "c1"}, auth=operator).status_code == 200
        assert m.get("/checkpoints", auth=viewer).json()["checkpoints"] == ["c1"]
        assert m.post("/restore", {"id": "c1"}, auth=operator).status_code == 200
        r = m.post("/release-lease", auth=operator)  # works; no leaser stack, so nothing released
        assert r.status_code == 200 and r.json()["released"] is False
        token = m.post("/auth/token", auth=operator).json()["access_token"]
        assert m.post("/checkpoint", {"id": "c2"}, auth=BearerAuth(token)).status_code == 200
        doc = m.get("/openapi.json").json()
        paths = doc["paths"]
        assert paths["/"]["get"]["x-shoal-role"] == "viewer"
        assert paths["/checkpoints"]["get"]["security"] == [{"bearerAuth": []}]
        for path in ("/config", "/checkpoint", "/restore", "/release-lease", "/process/stop"):
            assert paths[path]["post"]["x-shoal-role"] == "operator", path
            assert paths[path]["post"]["security"] == [{"bearerAuth": []}], path
        assert "security" not in paths["/health"]["get"]
        assert "bearerAuth" in doc["components"]["securitySchemes"]


def test_an_open_manager_on_a_reachable_address_refuses_to_start():
    with pytest.raises(SystemExit, match="without authentication"):
        check_options({"host": "0.0.0.0"})
    check_options({"host": "0.0.0.0", "insecure_dev": True})  # loudly, but it may
    check_options({"host": "127.0.0.1"})
