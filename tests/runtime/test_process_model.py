"""The process model, service by service: kill -9 of the main pid leaves nothing behind, the data
dir serves one live process tree, a busy port is refused (shoal.runtime, docs/DEVELOPING.md)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from shoal.testing import ServiceProcess, free_port, stop_group, wait_http
from shoal.testing.procs import alive, descendants, refuses, wait_until

UNREACHABLE = "http://127.0.0.1:9"  # nothing listens on the discard port here
SERVICES = {
    "kv": [],
    "state": ["--insecure-dev"],
    "metadata": [],
    "storage": ["--node-id", "n1"],
    "uploader": ["--metadata-url", UNREACHABLE],
    "dashboard": ["--metadata-url", UNREACHABLE],
    "compute": ["--docker-host", "unix:///nonexistent/docker.sock", "--libvirt-uri", "test:///default"],
    "manager": [],
}
SERVICES["kv-uvicorn"] = ["--server", "uvicorn"]  # uvicorn's workers are spawned (exec), not forked
CASES = [(name, 1) for name in SERVICES] + [("kv", 2), ("kv-uvicorn", 2)]  # the rest: MAX_WORKERS = 1
GONE_WITHIN = 2.0


def wait_workers(svc: ServiceProcess, want: int) -> set[int]:
    """The main process's descendants once at least `want` of them run (granian's workers)."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        tree = descendants(svc.proc.pid)
        if len(tree) >= want:
            return tree
        time.sleep(0.05)
    raise AssertionError(
        f"{svc.service}: expected {want} worker process(es), have {descendants(svc.proc.pid)}"
    )


def service(name: str, data_dir: Path, workers: int, port: int | None = None) -> ServiceProcess:
    args = [*SERVICES[name]]
    if name == "compute":
        args += ["--token", "t0k3n"]
    if workers > 1:
        args += ["--workers", str(workers)]
    return ServiceProcess(name.split("-")[0], data_dir, args, port=port)


def run_refused(svc: ServiceProcess, port: int, data_dir: Path) -> tuple[subprocess.CompletedProcess, float]:
    cmd = service(svc.service, data_dir, 1, port).command()  # the service's defaults are enough
    t0 = time.monotonic()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=30, env=svc.env)
    return done, time.monotonic() - t0


@pytest.mark.parametrize(("name", "workers"), CASES, ids=[f"{n}-w{w}" for n, w in CASES])
def test_kill_9_of_the_main_pid_leaves_nothing(tmp_path: Path, name: str, workers: int) -> None:
    svc = service(name, tmp_path / "data", workers).start()
    try:
        main = svc.proc.pid
        in_process = name in ("storage", "kv-uvicorn") and workers == 1  # uvicorn serves in its main
        tree = wait_workers(svc, 0 if in_process else workers)

        # a second start on the live data dir is refused at once, naming the holder, touching nothing
        lock = (tmp_path / "data" / ".shoal-serve.lock").read_text()
        done, took = run_refused(svc, free_port(), tmp_path / "data")
        assert done.returncode == 1, done.stderr
        assert f"pid {main}" in done.stderr and "in use" in done.stderr, done.stderr
        assert took < GONE_WITHIN + 3, took  # Python's start-up included; the lock answers at once
        assert (tmp_path / "data" / ".shoal-serve.lock").read_text() == lock
        # ... and so is one on the live port with a data dir of its own
        done, _ = run_refused(svc, svc.port, tmp_path / "other")
        assert done.returncode == 1 and f"port {svc.port}" in done.stderr, done.stderr
        assert httpx.get(svc.url + "/health", timeout=5).status_code == 200  # the first one still serves

        os.kill(main, signal.SIGKILL)
        svc.proc.wait(5)
        took = wait_until(lambda: not any(alive(p) for p in tree) and refuses(svc.port), GONE_WITHIN)
        assert took is not None, (
            f"left running: {[p for p in tree if alive(p)]}; port refuses: {refuses(svc.port)}"
        )

        # a restart on the same data dir and port works
        again = service(name, tmp_path / "data", workers, port=svc.port).start()
        try:
            assert httpx.get(again.url + "/health", timeout=5).status_code == 200
            assert json.loads((tmp_path / "data" / ".shoal-serve.lock").read_text())["pid"] == again.proc.pid
        finally:
            again.stop()
    finally:
        svc.stop()


def test_restart_right_after_kill_9_waits_for_the_orphans(tmp_path: Path) -> None:
    """No test-side wait in between: the new start holds off until the old workers let go."""
    svc = service("kv", tmp_path / "data", 2).start()
    try:
        tree = wait_workers(svc, 2)
        os.kill(svc.proc.pid, signal.SIGKILL)
        svc.proc.wait(5)
        again = service("kv", tmp_path / "data", 1, port=svc.port).start()
        try:
            assert not any(alive(p) for p in tree)
            assert httpx.put(again.url + "/v1/kv/after", json={"value": "1"}, timeout=5).status_code < 300
        finally:
            again.stop()
    finally:
        svc.stop()


def test_play_dashboard_leaves_no_worker(tmp_path: Path) -> None:
    port = free_port()
    cmd = [sys.executable, "-m", "shoal", "play", "v1", "--metadata-url", UNREACHABLE, "--dashboard"]
    cmd += ["--dashboard-port", str(port)]
    log = open(tmp_path / "play.log", "wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    try:
        wait_http(f"http://127.0.0.1:{port}/health", 30, proc)
        tree = descendants(proc.pid)
        assert tree, "the dashboard runs in a granian worker"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(5)
        assert wait_until(lambda: not any(alive(p) for p in tree) and refuses(port), GONE_WITHIN) is not None
    finally:
        stop_group(proc)
