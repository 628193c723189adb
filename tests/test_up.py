"""`shoal up`: starts services, restarts one that crashes, stops all on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx

from shoal.testing import free_port, wait_http


def test_up_supervises_and_stops(tmp_path):
    offset = free_port() - 8000  # the plug-in service's default port is 8000
    env = {
        **os.environ,
        "SHOAL_SERVICE_MODULES": "example=tests.web.example_service",
        "SHOAL_ACCESS_LOG": "0",
    }
    cmd = [sys.executable, "-m", "shoal", "up", "--only", "example", "--data-root", str(tmp_path)]
    proc = subprocess.Popen(
        [*cmd, "--port-offset", str(offset)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{8000 + offset}"
    try:
        wait_http(url + "/health", 30, proc)
        pid, server_pid = map(int, (tmp_path / "example" / "started").read_text().split())
        os.killpg(server_pid, signal.SIGKILL)  # the service crashes: server and workers
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            started = tmp_path / "example" / "started"
            try:
                if (
                    int(started.read_text().split()[0]) != pid
                    and httpx.get(url + "/health").status_code == 200
                ):
                    break
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(0.2)
        else:
            raise AssertionError("the crashed service was not restarted")
        os.killpg(proc.pid, signal.SIGTERM)
        out, _ = proc.communicate(timeout=40)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0
    assert "example" in out and url in out
    assert "restarting" in out
    assert (tmp_path / "example" / "stopped").exists()  # graceful shutdown ran
