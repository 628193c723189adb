"""Every route on the kvm backend, on libvirt's test driver (fast; no guest boots).

The real libvirtd + QEMU lifecycle is in test_vm_boot.py.
"""

from __future__ import annotations

from pathlib import Path

from .conftest import Api, error_of

MiB = 1024 * 1024


def vm(api: Api, name: str = "vm1", **over) -> dict:
    body = {
        "name": name,
        "backend": "kvm",
        "config": {"image": "tiny", "diskFormat": "qcow2", "networkType": "user"},
        "resources": {
            "cpu": {"cores": 1},
            "memory": {"limit": 128 * MiB},
            "storage": {"totalSpace": 256 * MiB},
        },
        "metadata": {"labels": {"role": "db"}},
    }
    body.update(over)
    return api.create(**body)


def test_create_defines_a_domain_with_an_overlay_disk(api: Api, service) -> None:
    inst = vm(api)
    assert (inst["type"], inst["backend"], inst["state"], inst["status"]) == (
        "vm",
        "kvm",
        "running",
        "booted",
    )
    assert inst["backendId"] == inst["uuid"]  # the libvirt domain uuid is the instance uuid
    assert inst["resources"] == {
        "cpu": {"cores": 1},
        "memory": {"limit": 128 * MiB},
        "storage": {"totalSpace": 256 * MiB},
    }
    disk = Path(service.data_dir) / "kvm" / "vms" / inst["id"] / "disk.qcow2"
    assert disk.exists()
    import json
    import subprocess

    info = json.loads(
        subprocess.run(
            ["qemu-img", "info", "--output=json", str(disk)], capture_output=True, check=True
        ).stdout
    )
    assert info["virtual-size"] == 256 * MiB and info["backing-filename"].endswith("tiny/disk.qcow2")
    assert api.get("/instances/name/vm1").json()["id"] == inst["id"]
    assert api.get("/instances", params={"backend": "kvm"}).json()["total"] == 1
    assert api.get("/instances", params={"backend": "docker"}).json()["total"] == 0


def test_template_without_a_disk_gets_a_blank_one_and_raw_format(api: Api, service) -> None:
    inst = api.create(
        name="blank-raw", backend="kvm", config={"image": "blank", "diskFormat": "raw"}, start=False
    )
    assert inst["state"] == "stopped"
    disk = Path(service.data_dir) / "kvm" / "vms" / inst["id"] / "disk.raw"
    assert disk.exists() and disk.stat().st_size == 32 * MiB  # converted from the 32M qcow2 template


def test_lifecycle_on_the_test_driver(api: Api) -> None:
    inst = vm(api)
    url = f"/instances/{inst['id']}"
    assert api.put(url + "/pause").json()["state"] == "paused"
    assert api.put(url + "/pause").json()["state"] == "paused"
    error_of(api.put(url + "/start"), 409, "OPERATION_NOT_SUPPORTED")
    assert api.get("/instances", params={"state": "paused"}).json()["total"] == 1
    assert api.put(url + "/unpause").json()["state"] == "running"
    stopped = api.put(url + "/stop", json={"force": True}).json()
    assert (stopped["state"], stopped["status"]) == ("stopped", "destroyed")
    error_of(api.put(url + "/pause"), 409, "OPERATION_NOT_SUPPORTED")
    assert api.put(url + "/start").json()["state"] == "running"
    assert api.put(url + "/restart", json={"force": True}).json()["state"] == "running"
    assert api.put(url + "/restart").json()["state"] == "running"
    graceful = api.put(url + "/stop", json={"timeout": 5}).json()
    assert graceful["state"] == "stopped"
    assert api.put(url + "/restart").json()["state"] == "running"  # restart of a stopped VM starts it


def test_update_vcpus_and_memory_live_and_offline(api: Api) -> None:
    inst = vm(api)
    url = f"/instances/{inst['id']}"
    r = api.put(url, json={"resources": {"cpu": {"cores": 2}, "memory": {"limit": 64 * MiB}}})
    assert r.status_code == 200, r.text
    assert r.json()["resources"]["cpu"]["cores"] == 2 and r.json()["state"] == "running"
    usage = api.get(url + "/usage").json()
    assert usage["cpu"]["cores"] == 2 and usage["memory"]["limit"] == 64 * MiB
    # beyond the memory the VM booted with: not while it runs
    err = error_of(
        api.put(url, json={"resources": {"memory": {"limit": 256 * MiB}}}), 409, "OPERATION_NOT_SUPPORTED"
    )
    assert err["details"]["maximum"] == 128 * MiB
    api.put(url + "/stop", json={"force": True})
    assert api.put(url, json={"resources": {"memory": {"limit": 256 * MiB}}}).status_code == 200
    api.put(url + "/start")
    assert api.get(url + "/usage").json()["memory"]["limit"] == 256 * MiB
    error_of(api.put(url, json={"resources": {"cpu": {"cores": 1.5}}}), 400, "VALIDATION_ERROR")
    error_of(api.put(url, json={"resources": {"cpu": {"cores": 4096}}}), 400, "RESOURCE_LIMIT_EXCEEDED")
    error_of(
        api.put(url, json={"resources": {"storage": {"totalSpace": MiB}}}), 400, "OPERATION_NOT_SUPPORTED"
    )


def test_usage_shape(api: Api) -> None:
    inst = vm(api)
    usage = api.get(f"/instances/{inst['id']}/usage").json()
    assert set(usage) == {"cpu", "memory", "storage", "network", "blockIO"}
    assert usage["cpu"]["cores"] == 1 and 0 <= usage["cpu"]["usage"] <= 100
    assert usage["memory"]["limit"] == 128 * MiB and 0 <= usage["memory"]["percentage"] <= 100


def test_delete_removes_domain_and_disk(api: Api, service) -> None:
    inst = vm(api)
    folder = Path(service.data_dir) / "kvm" / "vms" / inst["id"]
    assert folder.is_dir()
    error_of(api.delete(f"/instances/{inst['id']}"), 409, "OPERATION_NOT_SUPPORTED")
    assert api.delete(f"/instances/{inst['id']}", params={"force": "true"}).status_code == 204
    assert not folder.exists()
    error_of(api.get(f"/instances/{inst['id']}"), 404, "INSTANCE_NOT_FOUND")
    # the same name (and so the same libvirt domain name) can be used again
    assert vm(api)["name"] == "vm1"


def test_cloud_init_seed(api: Api, service) -> None:
    inst = vm(
        api, "ci", config={"image": "tiny", "cloudInit": {"userData": "#cloud-config\npackages: [nginx]\n"}}
    )
    seed = Path(service.data_dir) / "kvm" / "vms" / inst["id"] / "seed.iso"
    import io

    import pycdlib

    iso = pycdlib.PyCdlib()
    iso.open(str(seed))
    out = io.BytesIO()
    iso.get_file_from_iso_fp(out, joliet_path="/user-data")
    meta = io.BytesIO()
    iso.get_file_from_iso_fp(meta, joliet_path="/meta-data")
    assert iso.pvd.volume_identifier.strip() == b"cidata"
    iso.close()
    assert out.getvalue() == b"#cloud-config\npackages: [nginx]\n"
    assert f"instance-id: {inst['id']}".encode() in meta.getvalue()


def test_kvm_errors(api: Api) -> None:
    base = {"name": "bad", "backend": "kvm", "config": {"image": "tiny"}}
    err = error_of(
        api.post("/instances", json={**base, "config": {"image": "nope"}}), 400, "VALIDATION_ERROR"
    )
    assert "tiny" in err["details"]["templates"]
    error_of(api.post("/instances", json={**base, "config": {"image": "../etc"}}), 400, "VALIDATION_ERROR")
    err = error_of(
        api.post("/instances", json={**base, "config": {"image": "tiny", "ports": ["80:80"]}}),
        400,
        "VALIDATION_ERROR",
    )
    assert err["details"]["fields"] == ["ports"]
    error_of(
        api.post("/instances", json={**base, "config": {"image": "tiny", "networkType": "magic"}}),
        400,
        "VALIDATION_ERROR",
    )
    error_of(
        api.post("/instances", json={**base, "config": {"image": "tiny", "diskFormat": "vmdk"}}),
        400,
        "VALIDATION_ERROR",
    )
    error_of(
        api.post("/instances", json={**base, "resources": {"cpu": {"cores": 0.5}}}), 400, "VALIDATION_ERROR"
    )
    error_of(
        api.post("/instances", json={**base, "resources": {"cpu": {"cores": 4096}}}),
        400,
        "RESOURCE_LIMIT_EXCEEDED",
    )
    error_of(
        api.post("/instances", json={**base, "resources": {"memory": {"limit": 1 << 49}}}),
        400,
        "RESOURCE_LIMIT_EXCEEDED",
    )
    error_of(
        api.post("/instances", json={**base, "resources": {"storage": {"totalSpace": 1 << 49}}}),
        400,
        "RESOURCE_LIMIT_EXCEEDED",
    )
    error_of(
        api.post("/instances", json={**base, "resources": {"storage": {"totalSpace": MiB}}}),
        400,
        "VALIDATION_ERROR",
    )
    assert api.get("/instances").json()["total"] == 0
