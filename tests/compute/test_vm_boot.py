"""The whole VM lifecycle on a real libvirtd + QEMU (TCG): a Debian kernel and a busybox
initramfs boot, answer the ACPI power button, reboot, and report memory through the balloon.

One test, bounded: each boot takes a few seconds under TCG (the time is printed).
"""

from __future__ import annotations

import time
from pathlib import Path

import libvirt
import pytest

from shoal.testing.libvirt import BOOT_MARKER, POWEROFF_MARKER

from .conftest import Api, error_of, needs_libvirtd, start_service, wait_for

MiB = 1024 * 1024
BOOT_TIMEOUT = 120.0

pytestmark = [needs_libvirtd, pytest.mark.slow]


def boots(console: Path) -> int:
    try:
        return console.read_text(errors="replace").count(BOOT_MARKER)
    except FileNotFoundError:
        return 0


def test_vm_lifecycle_on_qemu(tmp_path, libvirtd, dockerd, templates) -> None:
    svc = start_service(tmp_path / "data", dockerd.url, libvirtd.uri, templates)
    api = Api(svc.url)
    conn = libvirt.open(libvirtd.uri)
    try:
        t0 = time.monotonic()
        inst = api.create(
            name="tiny-vm",
            backend="kvm",
            config={"image": "tiny", "networkType": "user"},
            resources={
                "cpu": {"cores": 1},
                "memory": {"limit": 128 * MiB},
                "storage": {"totalSpace": 128 * MiB},
            },
        )
        url = f"/instances/{inst['id']}"
        console = tmp_path / "data" / "kvm" / "vms" / inst["id"] / "console.log"
        assert inst["state"] == "running"
        wait_for(lambda: boots(console) == 1, BOOT_TIMEOUT, "the guest to boot")
        print(f"\nguest boot (create -> userspace marker): {time.monotonic() - t0:.1f} s")

        dom = conn.lookupByUUIDString(inst["uuid"])
        assert dom.name() == "tiny-vm" and dom.isActive()
        assert "urn:shoal:compute" in dom.XMLDesc(0)

        # memory as the guest reports it (virtio balloon stats), CPU from two cpu.time samples
        usage = wait_for(
            lambda: (u := api.get(url + "/usage").json())["memory"]["used"] < u["memory"]["limit"] and u,
            20,
            "balloon statistics from the guest",
        )
        assert usage["memory"]["limit"] == 128 * MiB and 1 * MiB < usage["memory"]["used"] < 128 * MiB
        assert 0 <= usage["cpu"]["usage"] <= 100 and usage["cpu"]["cores"] == 1
        assert usage["storage"]["total"] == 128 * MiB and usage["storage"]["used"] > 0

        # pause/unpause really freeze the guest
        assert api.put(url + "/pause").json()["state"] == "paused"
        assert dom.state()[0] == libvirt.VIR_DOMAIN_PAUSED
        assert api.put(url + "/unpause").json()["state"] == "running"

        # live vCPU hotplug
        r = api.put(url, json={"resources": {"cpu": {"cores": 2}}})
        assert r.status_code == 200 and dom.info()[3] == 2

        # graceful stop: the guest sees the power button and powers itself off
        stopped = api.put(url + "/stop", json={"timeout": 60}).json()
        assert (stopped["state"], stopped["status"]) == ("stopped", "shut down")
        assert POWEROFF_MARKER in console.read_text(errors="replace")
        error_of(api.put(url + "/pause"), 409, "OPERATION_NOT_SUPPORTED")

        assert api.put(url + "/start").json()["state"] == "running"
        wait_for(lambda: boots(console) == 2, BOOT_TIMEOUT, "the second boot")
        restarted = api.put(url + "/restart", json={"timeout": 60}).json()  # a clean power cycle
        assert restarted["state"] == "running"
        wait_for(lambda: boots(console) == 3, BOOT_TIMEOUT, "the boot after restart")
        assert console.read_text(errors="replace").count(POWEROFF_MARKER) == 2
        api.put(url + "/restart", json={"force": True})  # hard reset, in place
        wait_for(lambda: boots(console) == 4, BOOT_TIMEOUT, "the boot after reset")

        forced = api.put(url + "/stop", json={"force": True}).json()
        assert (forced["state"], forced["status"]) == ("stopped", "destroyed")
        assert api.delete(url).status_code == 204
        with pytest.raises(libvirt.libvirtError):
            conn.lookupByUUIDString(inst["uuid"])
        assert not console.parent.exists()
    finally:
        conn.close()
        svc.stop()
