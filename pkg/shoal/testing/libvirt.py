"""A tiny bootable guest for tests (the private libvirtd itself: shoal.platform.libvirtd).

The guest is a Debian kernel (linux-image-cloud-amd64, from /boot) and an initramfs built here
from busybox-static, evdev.ko and button.ko: it prints a marker on the serial console when it
has booted, and busybox acpid powers it off on the ACPI power button, so graceful shutdown is
real. It boots in a few seconds under TCG.
"""

from __future__ import annotations

import contextlib
import glob
import gzip
import io
import lzma
import os
import shutil
import stat
import subprocess
from pathlib import Path

from shoal.platform import libvirtd as _daemon
from shoal.platform.dockerd import busybox_static

BOOT_MARKER = "shoal-guest: booted"
POWEROFF_MARKER = "shoal-guest: power button"
GUEST_INIT = """\
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in /lib/modules/*.ko; do insmod "$m"; done
n=0; while [ ! -e /dev/input/event0 ] && [ $n -lt 50 ]; do sleep 0.1; n=$((n+1)); done
acpid -d -c /etc/acpi > /dev/console 2>&1 &
sleep 1
echo "{marker} $(cut -d' ' -f1 /proc/uptime)" > /dev/console
exec sh -c 'while :; do sleep 3600; done'
"""

GUEST_POWEROFF = """\
#!/bin/sh
echo "{marker}, powering off" > /dev/console
sync
poweroff -f
"""


def libvirtd_available() -> str | None:
    """Why a private libvirtd + QEMU + the tiny guest cannot run here, or None when they can."""
    reason = _daemon.libvirtd_available()
    if reason is None and guest_kernel() is None:
        reason = "no kernel in /boot (Debian package linux-image-cloud-amd64)"
    return reason


def guest_kernel() -> tuple[Path, str] | None:
    """(vmlinuz, version) of the newest Debian kernel package installed in /boot."""
    kernels = sorted(glob.glob("/boot/vmlinuz-*"))
    for path in reversed(kernels):
        version = path.split("vmlinuz-", 1)[1]
        if os.access(path, os.R_OK):
            return Path(path), version
    return None


def _cpio_newc(entries: list[tuple[str, int, bytes]]) -> bytes:
    """An initramfs archive (cpio 'newc'): (path, mode, data) entries; a symlink's data is its target."""
    out = io.BytesIO()

    def pad(n: int) -> None:
        out.write(b"\0" * ((4 - n % 4) % 4))

    for ino, (name, mode, data) in enumerate([*entries, ("TRAILER!!!", 0, b"")], start=1):
        raw = name.encode() + b"\0"
        fields = [ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(raw), 0]
        header = b"070701" + b"".join(f"{f:08x}".encode() for f in fields)
        out.write(header + raw)
        pad(len(header) + len(raw))
        out.write(data)
        pad(len(data))
    return out.getvalue()


GUEST_MODULES = (
    "drivers/input/evdev.ko",
    "drivers/acpi/button.ko",
    "drivers/virtio/virtio_pci.ko",
    "drivers/virtio/virtio_balloon.ko",
)


def _module_order(version: str, wanted: tuple[str, ...]) -> list[str]:
    """`wanted` (paths under kernel/) with their dependencies first, from modules.dep."""
    deps: dict[str, list[str]] = {}
    with contextlib.suppress(OSError):
        for line in (Path("/lib/modules") / version / "modules.dep").read_text().splitlines():
            name, _, rest = line.partition(":")
            deps[_strip(name)] = [_strip(d) for d in rest.split()]
    order: list[str] = []

    def visit(rel: str) -> None:
        if rel in order:
            return
        for dep in reversed(deps.get(rel, [])):
            visit(dep)
        order.append(rel)

    for rel in wanted:
        visit(rel)
    return order


def _strip(path: str) -> str:
    path = path.removeprefix("kernel/")
    for ext in (".xz", ".gz", ".zst"):
        path = path.removesuffix(ext)
    return path


def _module(version: str, rel: str) -> bytes | None:
    base = Path("/lib/modules") / version / "kernel" / rel
    if base.exists():
        return base.read_bytes()
    for ext, opener in ((".xz", lzma.open), (".gz", gzip.open)):
        packed = Path(str(base) + ext)
        if packed.exists():
            with opener(packed) as fh:
                return fh.read()
    return None


def build_tiny_guest(dest: str | Path, disk_size: str = "64M") -> Path:
    """A VM template directory: kernel, initrd, cmdline, disk.qcow2 (see KvmBackend.template)."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    found = guest_kernel()
    busybox = busybox_static()
    if found is None or busybox is None:
        raise RuntimeError("need /boot/vmlinuz-* (linux-image-cloud-amd64) and busybox-static")
    kernel, version = found
    dirs, files = stat.S_IFDIR | 0o755, stat.S_IFREG
    entries: list[tuple[str, int, bytes]] = [
        (d, dirs, b"")
        for d in (
            "bin",
            "sbin",
            "proc",
            "sys",
            "dev",
            "tmp",
            "etc",
            "etc/acpi",
            "etc/acpi/PWRF",
            "lib",
            "lib/modules",
        )
    ]
    entries.append(("bin/busybox", files | 0o755, Path(busybox).read_bytes()))
    entries.append(("bin/sh", stat.S_IFLNK | 0o777, b"busybox"))
    entries.append(("init", files | 0o755, GUEST_INIT.format(marker=BOOT_MARKER).encode()))
    entries.append(
        ("etc/acpi/PWRF/00000080", files | 0o755, GUEST_POWEROFF.format(marker=POWEROFF_MARKER).encode())
    )
    for n, rel in enumerate(_module_order(version, GUEST_MODULES)):
        data = _module(version, rel)
        if data is not None:  # built in on some kernels
            entries.append((f"lib/modules/{n:02d}-{Path(rel).name}", files | 0o644, data))
    (dest / "initrd").write_bytes(gzip.compress(_cpio_newc(entries), compresslevel=1))
    shutil.copyfile(kernel, dest / "kernel")
    (dest / "cmdline").write_text("console=ttyS0 quiet panic=-1\n")
    disk = dest / "disk.qcow2"
    if not disk.exists():
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), disk_size], check=True)
    return dest
