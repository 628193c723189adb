"""A burst over --rate-limit-ip is 429 with Retry-After in each service's own envelope, on a real
`shoal serve` process per service with --auth-dir and an admin key (the limit is set low by the
flag; the defaults are far above what `shoal demo` sends)."""

from __future__ import annotations

import httpx
import pytest

from shoal.testing import ServiceProcess
from shoal.testing.authstack import bearer
from shoal.web.auth import AuthDir

UNREACHABLE = "http://127.0.0.1:9"
SERVICES = {
    "kv": ([], "/v1/kv/x"),
    "storage": (["--node-id", "n1"], "/chunk/c1"),
    "metadata": ([], "/nodes"),
    "uploader": (["--metadata-url", UNREACHABLE], "/upload/status/none"),
    "compute": (
        ["--docker-host", "unix:///nonexistent/docker.sock", "--libvirt-uri", "test:///default"],
        "/api/v1/compute/instances",
    ),
    "manager": ([], "/status"),
}


def envelope_ok(service: str, body: dict) -> bool:
    if service == "compute":
        error = body.get("error") or {}
        return (
            set(body) == {"error"}
            and error.get("code") == "TOO_MANY_REQUESTS"
            and "rate limit" in error["message"]
        )
    return set(body) == {"detail"} and "rate limit" in body["detail"]


@pytest.mark.parametrize("service", list(SERVICES))
def test_a_burst_over_the_ip_rate_is_429_in_the_service_envelope(tmp_path, service):
    args, route = SERVICES[service]
    admin = AuthDir(tmp_path / "auth").init()
    args = [*args, "--auth-dir", str(tmp_path / "auth"), "--rate-limit-ip", "1/3"]
    with ServiceProcess(service, tmp_path / service, args) as svc:
        with httpx.Client(timeout=10, headers=bearer(admin)) as c:
            answers = [c.get(svc.url + route) for _ in range(12)]
    refused = [r for r in answers if r.status_code == 429]
    assert refused, [r.status_code for r in answers]
    assert len(refused) >= 12 - 3 - 2  # burst 3, and at most ~1 token back per second of the burst
    for r in refused:
        assert int(r.headers["retry-after"]) >= 1
        assert envelope_ok(service, r.json()), r.text
    assert all(r.status_code < 500 for r in answers), [r.status_code for r in answers]


def test_compute_legacy_token_passes_the_same_limits(tmp_path):
    """Compute's --token is a credential of the shared layer: limited like an API key."""
    args, route = SERVICES["compute"]
    AuthDir(tmp_path / "auth").init()
    args = [*args, "--auth-dir", str(tmp_path / "auth"), "--token", "legacy-t0ken", "--rate-limit-key", "1/3"]
    with ServiceProcess("compute", tmp_path / "compute", args) as svc:
        with httpx.Client(timeout=10, headers=bearer("legacy-t0ken")) as c:
            answers = [c.get(svc.url + route) for _ in range(12)]
            assert c.get(svc.url + route, headers=bearer("not-the-token")).status_code == 401
    assert answers[0].status_code == 200, answers[0].text  # the token still works as an operator
    refused = [r for r in answers if r.status_code == 429]
    assert len(refused) >= 12 - 3 - 2 and all(envelope_ok("compute", r.json()) for r in refused)
