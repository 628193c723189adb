"""`shoal serve` under granian: real server, graceful SIGTERM, the CLI, and a schemathesis fuzz."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest

from shoal import _native
from shoal.testing import ServiceProcess
from shoal.testing.fuzz import run_schemathesis
from tests.conftest import native_required

PLUGIN = {"SHOAL_SERVICE_MODULES": "example=tests.web.example_service"}


@pytest.fixture
def example(tmp_path):
    svc = ServiceProcess("example", tmp_path / "data", ["--greeting", "hi", "--workers", "2"], env=PLUGIN)
    with svc:
        yield svc


def test_serves_with_service_flags(example):
    assert httpx.get(example.url + "/greeting").json() == "hi"
    r = httpx.post(example.url + "/items", json={"name": "a", "size": 1})
    assert r.status_code == 201
    assert httpx.get(example.url + "/nope").json()["code"] == "NOT_FOUND"


def test_sigterm_lets_in_flight_requests_finish(example):
    result: dict = {}

    def call() -> None:
        result["response"] = httpx.post(example.url + "/sleep/1500", timeout=10)

    t = threading.Thread(target=call)
    t.start()
    time.sleep(0.5)  # the request is in flight
    code = example.stop()
    t.join(10)
    assert result["response"].status_code == 200
    assert (example.data_dir / "done-1500").read_text() == "ok"
    assert (example.data_dir / "stopped").exists(), "lifespan shutdown did not run"
    assert code == 0


def test_fuzzing_finds_no_server_error(example):
    out = run_schemathesis(
        example.url, exclude_path_regex="^/(boom|slow|sleep)", max_examples=20, max_time=25
    )
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]


def test_fuzzing_catches_a_server_error(example):
    """The fuzz helper is not vacuous: it reports the route that answers 500."""
    out = run_schemathesis(
        example.url, max_examples=5, exclude_path_regex="^/(slow|sleep|items|blob)", max_time=10
    )
    assert out.returncode != 0
    assert "/boom" in out.stdout


def _shoal(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "shoal", *args], capture_output=True, text=True, timeout=60)


def test_cli_version_and_doctor():
    from shoal import __version__

    assert _shoal("--version").stdout.strip() == f"shoal {__version__}"
    out = _shoal("doctor")
    assert out.returncode == 0 and "scoring" in out.stdout
    report = json.loads(_shoal("doctor", "--json").stdout)
    expected = "native" if _native.native("scoring") is not None else "pure-python"
    assert report["hot_paths"]["scoring"] == expected
    if native_required():
        assert set(report["hot_paths"].values()) == {"native"}, report["hot_paths"]
        assert report["erasure"] == "isa_l_rs_vand backend, coded with isa-l"
    assert report["services"]["storage"] == "built"


def test_serve_unknown_service_fails_clearly():
    out = _shoal("serve", "nonsense")
    assert out.returncode == 2 and "invalid choice" in out.stderr


def test_a_crashed_worker_is_respawned(example):
    started = example.data_dir / "started"
    pid = int(started.read_text().split()[0])
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if (
                int(started.read_text().split()[0]) != pid
                and httpx.get(example.url + "/health").status_code == 200
            ):
                return
        except (httpx.HTTPError, ValueError, IndexError):  # the new worker may be mid-write of the file
            pass
        time.sleep(0.2)
    raise AssertionError("granian did not respawn the killed worker")


def test_bad_flag_combination_is_refused_before_any_worker_starts(tmp_path):
    out = _shoal("serve", "kv", "--store", "etcd", "--port", "1", "--data-dir", str(tmp_path))
    assert out.returncode == 1
    assert "--store etcd needs --etcd" in out.stderr
    assert "Spawning worker" not in out.stdout + out.stderr


def test_early_413_closes_the_connection_and_the_client_recovers(example):
    with httpx.Client(base_url=example.url) as client:
        for _ in range(3):
            r = client.post(
                "/items", content=b"{" + b" " * 300_000 + b"}", headers={"content-type": "application/json"}
            )
            assert r.status_code == 413 and r.headers["connection"] == "close"
            assert client.get("/health").status_code == 200  # a fresh connection, not the dropped one
