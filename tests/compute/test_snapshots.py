"""Snapshots and restore (issue #22): a container's filesystem through docker commit, a VM's
disk through libvirt snapshots (the test driver here; a real QEMU guest's disk in
test_snapshot_vm_disk_on_qemu), synchronous and as operations; snapshots go with their instance.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx
import libvirt
import pytest

from .conftest import IMAGE, Api, error_of, needs_libvirtd, start_service, wait_for


def sh(api: Api, inst: dict, script: str) -> dict:
    r = api.post(f"/instances/{inst['id']}/exec", json={"command": ["sh", "-c", script]})
    assert r.status_code == 200, r.text
    return r.json()


def snapshot_images(docker_http: httpx.Client, instance_id: str) -> list[dict]:
    label = f'{{"label":["shoal.compute.snapshot-of={instance_id}"]}}'
    r = docker_http.get("/images/json", params={"all": "1", "filters": label})
    assert r.status_code == 200, r.text
    return r.json()


def test_container_snapshot_restore_brings_the_file_back(api: Api, docker_http: httpx.Client) -> None:
    inst = api.create(
        name="snappy",
        backend="docker",
        config={"image": IMAGE, "command": ["sleep", "3600"], "env": ["WHO=shoal"]},
        metadata={"labels": {"team": "a"}},
    )
    url = f"/instances/{inst['id']}"
    sh(api, inst, "echo one > /data.txt; echo keep > /gone.txt")

    r = api.post(url + "/snapshots", json={"name": "s1"})
    assert r.status_code == 201, r.text
    snap = r.json()
    assert snap["name"] == "s1" and snap["kind"] == "image" and snap["stateful"] is False
    assert snap["instanceState"] == "running"
    images = snapshot_images(docker_http, inst["id"])
    assert [img["RepoTags"] for img in images] == [[f"shoal-snapshots/{inst['id']}:s1"]]

    error_of(api.post(url + "/snapshots", json={"name": "s1"}), 409, "SNAPSHOT_EXISTS")
    error_of(api.post(url + "/snapshots", json={"name": "bad name"}), 400, "VALIDATION_ERROR")
    error_of(api.post(url + "/snapshots/nope/restore"), 404, "SNAPSHOT_NOT_FOUND")
    error_of(api.post("/instances/inst-none/snapshots", json={"name": "x"}), 404, "INSTANCE_NOT_FOUND")

    sh(api, inst, "echo two > /data.txt; rm /gone.txt; echo new > /later.txt")
    assert sh(api, inst, "cat /data.txt")["stdout"] == "two\n"

    r = api.post(url + "/snapshots/s1/restore")
    assert r.status_code == 200, r.text
    restored = r.json()
    # same instance: id, name, config, labels; a new container (processes start afresh), running again
    assert (restored["id"], restored["name"], restored["state"]) == (inst["id"], "snappy", "running")
    assert restored["config"] == inst["config"] and restored["metadata"]["labels"] == {"team": "a"}
    assert restored["backendId"] != inst["backendId"]
    out = sh(api, inst, "cat /data.txt /gone.txt; ls /later.txt 2>&1; echo $WHO")
    assert out["stdout"].startswith("one\nkeep\n") and "No such file" in out["stdout"], out
    assert out["stdout"].endswith("shoal\n")
    # the old container is gone; the new one carries shoal's labels and the instance's name
    r = docker_http.get("/containers/json", params={"all": "1"})
    mine = [c for c in r.json() if (c.get("Labels") or {}).get("shoal.compute.id") == inst["id"]]
    assert [c["Id"] for c in mine] == [restored["backendId"]]
    assert mine[0]["Names"] == ["/snappy"] and mine[0]["Labels"]["team"] == "a"

    listed = api.get(url + "/snapshots").json()["snapshots"]
    assert [s["name"] for s in listed] == ["s1"]

    # a stopped container restores stopped
    api.put(url + "/stop", json={"force": True})
    assert api.post(url + "/snapshots/s1/restore").json()["state"] == "stopped"

    # deleting the snapshot untags its image (the restored container still stands on it) ...
    assert api.delete(url + "/snapshots/s1").status_code == 204
    assert api.get(url + "/snapshots").json() == {"snapshots": []}
    error_of(api.delete(url + "/snapshots/s1"), 404, "SNAPSHOT_NOT_FOUND")
    tags = [img["RepoTags"] for img in snapshot_images(docker_http, inst["id"])]
    assert tags == [[f"shoal-snapshots/{inst['id']}:_restored"]]
    assert api.put(url + "/start").json()["state"] == "running"  # its base is still there
    # ... and deleting the instance removes every snapshot image
    r = api.post(url + "/snapshots", json={"name": "s2"})
    assert r.status_code == 201, r.text
    assert api.delete(url, params={"force": "true"}).status_code == 204
    assert snapshot_images(docker_http, inst["id"]) == []


def test_snapshot_and_restore_as_operations(api: Api) -> None:
    inst = api.create(name="snap-op", backend="docker", config={"image": IMAGE, "command": ["sleep", "3600"]})
    url = f"/instances/{inst['id']}"
    sh(api, inst, "echo before > /f")
    r = api.post(url + "/snapshots", params={"async": "1"}, json={"name": "op1"})
    assert r.status_code == 202, r.text
    op = api.get(f"/operations/{r.json()['id']}", params={"timeout": 60}).json()
    assert (op["action"], op["status"]) == ("snapshot", "success"), op
    assert op["result"]["name"] == "op1"
    sh(api, inst, "echo after > /f")
    r = api.post(url + "/snapshots/op1/restore", headers={"Prefer": "respond-async"})
    assert r.status_code == 202, r.text
    op = api.get(r.headers["Location"].removeprefix("/api/v1/compute"), params={"timeout": 60}).json()
    assert (op["action"], op["status"]) == ("restore", "success"), op
    assert sh(api, inst, "cat /f")["stdout"] == "before\n"


def test_vm_snapshots_on_the_libvirt_test_driver(api: Api) -> None:
    vm = api.create(name="snap-vm", backend="kvm", config={"image": "tiny"})
    url = f"/instances/{vm['id']}"
    conn = libvirt.open("test:///default")  # the service's own connection is another test driver
    try:
        r = api.post(url + "/snapshots", json={"name": "live"})
        assert r.status_code == 201, r.text
        assert r.json()["kind"] == "internal" and r.json()["stateful"] is True  # running: with memory
        api.put(url + "/stop", json={"force": True})
        r = api.post(url + "/snapshots", json={"name": "cold"})
        assert r.status_code == 201 and r.json()["stateful"] is False, r.text
        assert [s["name"] for s in api.get(url + "/snapshots").json()["snapshots"]] == ["live", "cold"]

        # a memory snapshot resumes the VM as it was: running
        assert api.post(url + "/snapshots/live/restore").json()["state"] == "running"
        # a disk-only one keeps the power state
        assert api.post(url + "/snapshots/cold/restore").json()["state"] == "running"
        api.put(url + "/stop", json={"force": True})
        assert api.post(url + "/snapshots/cold/restore").json()["state"] == "stopped"

        assert api.delete(url + "/snapshots/live").status_code == 204
        assert [s["name"] for s in api.get(url + "/snapshots").json()["snapshots"]] == ["cold"]
        assert api.delete(url).status_code == 204
        error_of(api.get(url + "/snapshots"), 404, "INSTANCE_NOT_FOUND")
    finally:
        conn.close()


def qemu_io(disk: Path, command: str) -> subprocess.CompletedProcess:
    return subprocess.run(["qemu-io", "-c", command, str(disk)], capture_output=True, text=True, timeout=60)


@needs_libvirtd
@pytest.mark.slow
def test_snapshot_vm_disk_on_qemu(tmp_path, libvirtd, dockerd, templates) -> None:
    """A real qcow2 disk under the real libvirtd: bytes written, snapshot, overwritten, restored."""
    svc = start_service(tmp_path / "data", dockerd.url, libvirtd.uri, templates)
    api = Api(svc.url)
    try:
        vm = api.create(name="disk-vm", backend="kvm", config={"image": "blank"}, start=False)
        url = f"/instances/{vm['id']}"
        disk = tmp_path / "data" / "kvm" / "vms" / vm["id"] / "disk.qcow2"
        assert qemu_io(disk, "write -P 0xab 0 64k").returncode == 0
        r = api.post(url + "/snapshots", json={"name": "d1"})
        assert r.status_code == 201, r.text
        assert (r.json()["kind"], r.json()["stateful"]) == ("internal", False)
        assert qemu_io(disk, "write -P 0xcd 0 64k").returncode == 0
        assert qemu_io(disk, "read -P 0xab 0 64k").returncode != 0 or "Pattern verification failed" in (
            qemu_io(disk, "read -P 0xab 0 64k").stdout
        )
        r = api.post(url + "/snapshots/d1/restore")
        assert r.status_code == 200 and r.json()["state"] == "stopped", r.text
        check = qemu_io(disk, "read -P 0xab 0 64k")
        assert check.returncode == 0 and "Pattern verification failed" not in check.stdout, check.stdout
        assert api.delete(url + "/snapshots/d1").status_code == 204
        info = subprocess.run(["qemu-img", "snapshot", "-l", str(disk)], capture_output=True, text=True)
        assert "d1" not in info.stdout
        assert api.delete(url).status_code == 204

        # a raw disk cannot hold an internal snapshot: a stopped VM gets a qemu-img copy
        raw = api.create(
            name="raw-vm", backend="kvm", config={"image": "blank", "diskFormat": "raw"}, start=False
        )
        url = f"/instances/{raw['id']}"
        folder = tmp_path / "data" / "kvm" / "vms" / raw["id"]
        disk = folder / "disk.raw"
        assert qemu_io_raw(disk, "write -P 0x11 4096 4k").returncode == 0
        r = api.post(url + "/snapshots", json={"name": "copy"})
        assert r.status_code == 201, r.text
        assert (r.json()["kind"], r.json()["stateful"]) == ("external", False)
        assert (folder / "snapshots" / "copy.qcow2").is_file()
        assert qemu_io_raw(disk, "write -P 0x22 4096 4k").returncode == 0
        assert api.post(url + "/snapshots/copy/restore").status_code == 200
        check = qemu_io_raw(disk, "read -P 0x11 4096 4k")
        assert check.returncode == 0 and "Pattern verification failed" not in check.stdout, check.stdout
        assert api.delete(url + "/snapshots/copy").status_code == 204
        assert not (folder / "snapshots" / "copy.qcow2").exists()
        assert api.delete(url).status_code == 204 and not folder.exists()
    finally:
        api.close()
        svc.stop()


def qemu_io_raw(disk: Path, command: str) -> subprocess.CompletedProcess:
    argv = ["qemu-io", "-f", "raw", "-c", command, str(disk)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


@needs_libvirtd
@pytest.mark.slow
def test_running_vm_snapshot_keeps_memory_on_qemu(tmp_path, libvirtd, dockerd, templates) -> None:
    """A running TCG guest: the libvirt snapshot holds memory, so a restore resumes it (no boot)."""
    from shoal.testing.libvirt import BOOT_MARKER

    svc = start_service(tmp_path / "data", dockerd.url, libvirtd.uri, templates)
    api = Api(svc.url)
    try:
        vm = api.create(
            name="warm-vm",
            backend="kvm",
            config={"image": "tiny", "networkType": "none"},
            resources={"cpu": {"cores": 1}, "memory": {"limit": 128 * 1024 * 1024}},
        )
        url = f"/instances/{vm['id']}"
        console = tmp_path / "data" / "kvm" / "vms" / vm["id"] / "console.log"

        def boots() -> int:
            return console.read_text(errors="replace").count(BOOT_MARKER) if console.exists() else 0

        wait_for(lambda: boots() == 1, 120, "the guest to boot")
        r = api.post(url + "/snapshots", json={"name": "warm"})
        assert r.status_code == 201, r.text
        assert (r.json()["kind"], r.json()["stateful"], r.json()["instanceState"]) == (
            "internal",
            True,
            "running",
        )
        api.put(url + "/stop", json={"force": True})
        restored = api.post(url + "/snapshots/warm/restore")
        assert restored.status_code == 200 and restored.json()["state"] == "running", restored.text
        assert boots() == 1  # resumed from memory, not booted again
        assert api.delete(url, params={"force": "true"}).status_code == 204
    finally:
        api.close()
        svc.stop()
