"""A hung backend (dockerd SIGSTOPped: it accepts connections and never answers) is visible in
/health and never blocks the other backend; qemu-img is bounded and dies with its service.

The waits below are bounds on how long we wait for the fault to be noticed (issue #18: a hung
dockerd made every list and cluster status answer 504 after 30 s, and /health said healthy).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest

from shoal.compute.errors import BackendError

from .conftest import IMAGE, Api, error_of, needs_docker, start_service, wait_for

IDLE = ["sleep", "3600"]
TIMEOUT = 2.0  # the default --backend-timeout
PROMPT = 5.0  # how long a view may take while docker is hung


def health(http: httpx.Client) -> dict:
    r = http.get("/health")
    assert r.status_code == 200, r.text  # degraded too: `shoal up` must not restart compute for it
    return r.json()


def timed(fn, *args, **kw):
    start = time.monotonic()
    result = fn(*args, **kw)
    return result, time.monotonic() - start


@needs_docker
def test_hung_dockerd_is_degraded_and_kvm_keeps_answering(tmp_path, dockerd, templates) -> None:
    svc = start_service(tmp_path / "data", dockerd.url, "test:///default", templates)
    api = Api(svc.url, timeout=PROMPT)  # a call that waits longer than PROMPT fails the test
    anon = httpx.Client(base_url=svc.url, timeout=PROMPT)
    box = vm = None
    try:
        box = api.create(name="hung-box", backend="docker", config={"image": IMAGE, "command": IDLE})
        vm = api.create(name="hung-vm", backend="kvm", config={"image": "tiny"})
        body = health(anon)
        assert body["status"] == "healthy" and body["reasons"] == []
        assert body["backends"] == {"docker": {"status": "healthy"}, "kvm": {"status": "healthy"}}
        assert "unavailableBackends" not in api.get("/instances").json()  # the documented shape

        dockerd.pause_daemon()  # SIGSTOP by the pid the fixture started
        try:
            body = wait_for(
                lambda: (b := health(anon))["status"] == "degraded" and b, timeout=10, what="/health degraded"
            )
            reason = f"docker: no answer within {TIMEOUT:g} s"
            assert body["reasons"] == [reason]
            assert body["backends"]["docker"] == {"status": "unavailable", "reason": reason}
            assert body["backends"]["kvm"] == {"status": "healthy"}

            r, took = timed(api.get, "/instances")
            assert r.status_code == 200 and took < PROMPT, (r.status_code, took)
            listing = r.json()
            assert listing["unavailableBackends"] == {"docker": f"no answer within {TIMEOUT:g} s"}
            seen = {i["name"]: i for i in listing["instances"]}
            assert seen["hung-vm"]["state"] == "running"
            assert (seen["hung-box"]["state"], seen["hung-box"]["status"]) == (
                "unknown",
                "backend unavailable",
            )
            assert listing["total"] == 2
            only_kvm = api.get("/instances", params={"backend": "kvm"}).json()
            assert [i["name"] for i in only_kvm["instances"]] == ["hung-vm"]
            assert "unavailableBackends" not in only_kvm  # docker was not asked

            r, took = timed(api.get, "/cluster/status")
            assert r.status_code == 200 and took < PROMPT, (r.status_code, took)
            st = r.json()
            assert st["health"] == "degraded"
            assert st["backends"]["docker"]["status"] == "unavailable"
            assert st["backends"]["docker"]["reason"] == f"no answer within {TIMEOUT:g} s"
            assert st["backends"]["kvm"]["status"] == "healthy" and st["totalInstances"] == 2

            # an instance on the hung backend: shown as unknown, changes refused with 503
            assert api.get(f"/instances/{box['id']}").json()["state"] == "unknown"
            for method, path in (
                ("PUT", f"/instances/{box['id']}/stop"),
                ("PUT", f"/instances/{box['id']}/pause"),
                ("GET", f"/instances/{box['id']}/usage"),
                ("DELETE", f"/instances/{box['id']}?force=true"),
                ("GET", "/backends/docker/info"),
            ):
                r, took = timed(api.req, method, path)
                err = error_of(r, 503, "BACKEND_UNAVAILABLE")
                assert err["details"] == {"backend": "docker", "reason": f"no answer within {TIMEOUT:g} s"}
                assert took < PROMPT, (method, path, took)
            r = api.post(
                "/instances", json={"name": "hung-new", "backend": "docker", "config": {"image": IMAGE}}
            )
            error_of(r, 503, "BACKEND_UNAVAILABLE")

            # the other backend is untouched
            assert api.put(f"/instances/{vm['id']}/stop", json={"force": True}).json()["state"] == "stopped"
            assert api.put(f"/instances/{vm['id']}/start").json()["state"] == "running"
            assert api.get("/backends/kvm/info").status_code == 200
        finally:
            dockerd.resume_daemon()  # SIGCONT, whatever happened above

        body = wait_for(
            lambda: (b := health(anon))["status"] == "healthy" and b, timeout=15, what="/health healthy again"
        )
        assert body["backends"]["docker"] == {"status": "healthy"} and body["reasons"] == []
        st = wait_for(
            lambda: (s := api.get("/cluster/status").json())["health"] == "healthy" and s,
            timeout=15,
            what="cluster status healthy again",
        )
        assert st["backends"]["docker"]["status"] == "healthy"
        listing = api.get("/instances").json()
        assert "unavailableBackends" not in listing
        assert {i["name"]: i["state"] for i in listing["instances"]} == {
            "hung-box": "running",
            "hung-vm": "running",
        }
        assert [i["name"] for i in listing["instances"]].count(
            "hung-new"
        ) == 0  # the refused create left nothing
    finally:
        dockerd.resume_daemon()
        for inst in (box, vm):
            if inst is not None:
                api.delete(f"/instances/{inst['id']}", params={"force": "true"})
        anon.close()
        api.close()
        svc.stop()


def test_backend_timeout_flag_is_checked(tmp_path) -> None:
    from shoal.compute.service import check_options

    for bad in (0.0001, 1000.0, float("nan")):
        with pytest.raises(SystemExit, match="--backend-timeout"):
            check_options({"backend_timeout": bad})
    check_options({"backend_timeout": 0.5})


# ---- qemu-img -------------------------------------------------------------------------------


def qemu_img_children(marker: str) -> list[int]:
    """Pids of live qemu-img processes whose command line names `marker`."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if cmd and cmd[0].endswith(b"qemu-img") and marker.encode() in b" ".join(cmd) and state != "Z":
            pids.append(int(entry.name))
    return pids


def test_qemu_img_is_killed_at_its_timeout(tmp_path) -> None:
    """`qemu-img info` of a FIFO blocks in open() until a writer comes: a hung qemu-img."""
    import asyncio

    from shoal.compute.backends.kvm import _qemu_img

    fifo = tmp_path / "hang.fifo"
    os.mkfifo(fifo)
    with pytest.raises(BackendError) as caught:
        asyncio.run(_qemu_img("info", str(fifo), timeout=0.5))
    assert caught.value.status == 504 and "did not finish within 0.5 s" in caught.value.message
    assert qemu_img_children(str(fifo)) == []


def test_qemu_img_dies_with_the_service(tmp_path) -> None:
    """kill -9 of the process running qemu-img (under uvloop, as the service does) takes it along."""
    fifo = tmp_path / "orphan.fifo"
    os.mkfifo(fifo)
    script = textwrap.dedent(
        f"""
        import uvloop
        from shoal.compute.backends.kvm import _qemu_img
        uvloop.run(_qemu_img("info", {str(fifo)!r}, timeout=600))
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", script], start_new_session=True)
    try:
        pids = wait_for(lambda: qemu_img_children(str(fifo)), timeout=20, what="qemu-img to start")
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(10)
        wait_for(lambda: qemu_img_children(str(fifo)) == [], timeout=10, what=f"qemu-img {pids} to die")
    finally:
        if parent.poll() is None:
            os.kill(parent.pid, signal.SIGKILL)
            parent.wait(10)
        for pid in qemu_img_children(str(fifo)):  # only ours: the command line names our fifo
            os.kill(pid, signal.SIGKILL)
