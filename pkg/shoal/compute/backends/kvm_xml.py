"""libvirt domain XML for a shoal VM, built with ElementTree (so names and paths are escaped).

The <metadata> element marks the domain as shoal's (namespace NS), which is how shoal tells
its own domains from ones created by hand on the same libvirt.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

NS = "urn:shoal:compute"
NS_PREFIX = "shoal"


@dataclass
class DomainSpec:
    name: str
    uuid: str
    instance_id: str
    vcpus: int
    max_vcpus: int
    memory_kib: int
    disk_path: str
    disk_format: str = "qcow2"
    domain_type: str = "qemu"
    kernel: str | None = None
    initrd: str | None = None
    cmdline: str | None = None
    network_type: str = "user"  # user | network | bridge | none
    network_source: str | None = None
    seed_iso: str | None = None
    console_log: str | None = None
    labels: dict[str, str] = field(default_factory=dict)


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    el = ET.SubElement(parent, tag, {k.rstrip("_"): v for k, v in attrs.items()})
    if text is not None:
        el.text = text
    return el


def domain_xml(spec: DomainSpec) -> str:
    dom = ET.Element("domain", {"type": spec.domain_type})
    _sub(dom, "name", spec.name)
    _sub(dom, "uuid", spec.uuid)
    meta = _sub(dom, "metadata")
    mine = ET.SubElement(meta, f"{{{NS}}}instance")
    ET.SubElement(mine, f"{{{NS}}}id").text = spec.instance_id
    for key, value in spec.labels.items():
        ET.SubElement(mine, f"{{{NS}}}label", {"key": key}).text = value
    _sub(dom, "memory", str(spec.memory_kib), unit="KiB")
    _sub(dom, "currentMemory", str(spec.memory_kib), unit="KiB")
    _sub(dom, "vcpu", str(spec.max_vcpus), placement="static", current=str(spec.vcpus))
    os_ = _sub(dom, "os")
    _sub(os_, "type", "hvm", arch="x86_64")
    if spec.kernel:
        _sub(os_, "kernel", spec.kernel)
        if spec.initrd:
            _sub(os_, "initrd", spec.initrd)
        if spec.cmdline:
            _sub(os_, "cmdline", spec.cmdline)
    else:
        _sub(os_, "boot", dev="hd")
    features = _sub(dom, "features")
    _sub(features, "acpi")
    _sub(features, "apic")
    _sub(dom, "on_poweroff", "destroy")
    _sub(dom, "on_reboot", "restart")
    _sub(dom, "on_crash", "destroy")
    dev = _sub(dom, "devices")
    disk = _sub(dev, "disk", type="file", device="disk")
    _sub(disk, "driver", name="qemu", type=spec.disk_format)
    _sub(disk, "source", file=spec.disk_path)
    _sub(disk, "target", dev="vda", bus="virtio")
    if spec.seed_iso:
        cd = _sub(dev, "disk", type="file", device="cdrom")
        _sub(cd, "driver", name="qemu", type="raw")
        _sub(cd, "source", file=spec.seed_iso)
        _sub(cd, "target", dev="sda", bus="sata")
        _sub(cd, "readonly")
    if spec.network_type == "user":
        nic = _sub(dev, "interface", type="user")
        _sub(nic, "model", type="virtio")
    elif spec.network_type == "network":
        nic = _sub(dev, "interface", type="network")
        _sub(nic, "source", network=spec.network_source or "default")
        _sub(nic, "model", type="virtio")
    elif spec.network_type == "bridge":
        nic = _sub(dev, "interface", type="bridge")
        _sub(nic, "source", bridge=spec.network_source or "br0")
        _sub(nic, "model", type="virtio")
    if spec.console_log:
        serial = _sub(dev, "serial", type="file")
        _sub(serial, "source", path=spec.console_log, append="on")
        _sub(serial, "target", port="0")
    balloon = _sub(dev, "memballoon", model="virtio")
    _sub(balloon, "stats", period="2")  # the guest reports free memory: usage shows what it uses
    ET.register_namespace(NS_PREFIX, NS)
    return ET.tostring(dom, encoding="unicode")


def instance_id_of(metadata_xml: str) -> str | None:
    """The shoal instance id in a domain's <metadata> element (as libvirt returns it)."""
    try:
        root = ET.fromstring(metadata_xml)
    except ET.ParseError:
        return None
    for el in root.iter():
        if el.tag.rsplit("}", 1)[-1] == "id" and el.text:
            return el.text.strip()
    return None
