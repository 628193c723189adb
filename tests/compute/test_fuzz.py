"""schemathesis against /openapi.json of the running service: no input gives a 5xx.

Both backends are up (private dockerd, libvirt test driver), so a 5xx would be a bug, not an
outage. Fuzzed creates name images and templates that do not exist, so nothing real is run.
"""

from __future__ import annotations

from shoal.testing.fuzz import run_schemathesis

from .conftest import TOKEN, Api


def test_schemathesis_finds_no_server_error(service) -> None:
    result = run_schemathesis(
        service.url, max_examples=15, max_time=40, headers=[f"Authorization: Bearer {TOKEN}"]
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "No issues found" in result.stdout
    api = Api(service.url)
    for inst in api.get("/instances", params={"pageSize": 1000}).json()["instances"]:
        api.delete(f"/instances/{inst['id']}", params={"force": "true"})
    api.close()
