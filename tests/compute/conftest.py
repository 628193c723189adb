"""Fixtures: a private dockerd with a busybox image, a private libvirtd with a tiny guest,
and `shoal serve compute` subprocesses on free ports, all stopped by PID at the end.

Fast tests use libvirt's `test:///default` driver (in the service process); the VM boot test
uses the real libvirtd + QEMU (TCG).
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from shoal.platform.dockerd import DockerDaemon, dockerd_available
from shoal.platform.libvirtd import LibvirtDaemon
from shoal.testing import ServiceProcess
from shoal.testing.libvirt import build_tiny_guest, libvirtd_available

TOKEN = "test-token-1"
IMAGE = "shoal-busybox:latest"
API = "/api/v1/compute"

needs_docker = pytest.mark.skipif(dockerd_available() is not None, reason=str(dockerd_available()))
needs_libvirtd = pytest.mark.skipif(libvirtd_available() is not None, reason=str(libvirtd_available()))


class Api:
    """A small httpx wrapper: the bearer token and the API prefix, nothing hidden."""

    def __init__(self, base: str, token: str = TOKEN, timeout: float = 120.0) -> None:
        self.http = httpx.Client(base_url=base, timeout=timeout, headers={"Authorization": f"Bearer {token}"})

    def req(self, method: str, path: str, **kw: Any) -> httpx.Response:
        return self.http.request(method, API + path, **kw)

    def get(self, path: str, **kw: Any) -> httpx.Response:
        return self.req("GET", path, **kw)

    def post(self, path: str, **kw: Any) -> httpx.Response:
        return self.req("POST", path, **kw)

    def put(self, path: str, **kw: Any) -> httpx.Response:
        return self.req("PUT", path, **kw)

    def delete(self, path: str, **kw: Any) -> httpx.Response:
        return self.req("DELETE", path, **kw)

    def create(self, **body: Any) -> dict[str, Any]:
        r = self.post("/instances", json=body)
        assert r.status_code == 201, r.text
        return r.json()

    def close(self) -> None:
        self.http.close()


def error_of(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """Assert the documented envelope with this status and code; return the error object."""
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"}, body
    assert body["error"]["code"] == code, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert isinstance(body["error"]["details"], dict)
    return body["error"]


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@pytest.fixture(scope="session")
def dockerd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DockerDaemon]:
    reason = dockerd_available()
    if reason:
        pytest.skip(reason)
    daemon = DockerDaemon(tmp_path_factory.mktemp("dockerd"))
    daemon.start()
    daemon.import_busybox(IMAGE)
    yield daemon
    daemon.stop()


@pytest.fixture(scope="session")
def templates(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """VM templates: 'tiny' (kernel + busybox initramfs + empty qcow2) and 'blank' (a disk only)."""
    root = tmp_path_factory.mktemp("templates")
    try:
        build_tiny_guest(root / "tiny")
    except RuntimeError:  # no kernel here: fine for the test driver, which boots nothing
        (root / "tiny").mkdir()
        (root / "tiny" / "kernel").write_bytes(b"not a kernel")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(root / "blank.qcow2"), "32M"], check=True)
    return root


@pytest.fixture(scope="session")
def libvirtd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LibvirtDaemon]:
    reason = libvirtd_available()
    if reason:
        pytest.skip(reason)
    daemon = LibvirtDaemon(tmp_path_factory.mktemp("libvirtd"))
    daemon.start()
    yield daemon
    daemon.stop()


def start_service(
    data_dir: Path, docker_url: str, libvirt_uri: str, templates: Path, extra: list[str] | None = None
) -> ServiceProcess:
    args = [
        "--docker-host",
        docker_url,
        "--libvirt-uri",
        libvirt_uri,
        "--kvm-templates",
        str(templates),
        "--token",
        TOKEN,
        *(extra or []),
    ]
    return ServiceProcess("compute", data_dir, args).start()


@pytest.fixture(scope="module")
def service(
    dockerd: DockerDaemon, templates: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    """The compute service on the private dockerd and libvirt's test driver."""
    svc = start_service(
        tmp_path_factory.mktemp("compute") / "data", dockerd.url, "test:///default", templates
    )
    yield svc
    svc.stop()


@pytest.fixture
def api(service: ServiceProcess) -> Iterator[Api]:
    client = Api(service.url)
    yield client
    # every test cleans up what it made, so tests stay independent
    for inst in client.get("/instances", params={"pageSize": 1000}).json().get("instances", []):
        client.delete(f"/instances/{inst['id']}", params={"force": "true"})
    client.close()


@pytest.fixture
def docker_http(dockerd: DockerDaemon) -> Iterator[httpx.Client]:
    """Straight to the daemon, to check what the API did (or did not) do."""
    with dockerd.client() as c:
        yield c
