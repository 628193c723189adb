"""A private libvirtd and a tiny bootable guest for tests.

libvirtd as root keeps its state in fixed system paths (/run/libvirt, /var/lib/libvirt, ...),
so this starts it in a private mount namespace (`unshare --mount`) with those paths bind-mounted
from a temporary directory: its sockets, config, logs and QEMU state never touch the host's,
and it listens only on a unix socket under that directory. QEMU runs as root without a
security driver or cgroups (there are no such things to rely on in a test container), TCG only.

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
import signal
import stat
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from shoal.testing import stop_group
from shoal.testing.docker import busybox_static

BOOT_MARKER = "shoal-guest: booted"
POWEROFF_MARKER = "shoal-guest: power button"
STATE_DIRS = {
    "etc": "/etc/libvirt",
    "run": "/run/libvirt",
    "lib": "/var/lib/libvirt",
    "log": "/var/log/libvirt",
    "cache": "/var/cache/libvirt",
}

LIBVIRTD_CONF = """\
unix_sock_dir = "{sock}"
unix_sock_group = "root"
unix_sock_rw_perms = "0700"
auth_unix_rw = "none"
auth_unix_ro = "none"
log_outputs = "3:file:{log}"
"""

QEMU_CONF = """\
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
namespaces = []
cgroup_controllers = []
stdio_handler = "file"
"""

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
    """Why a private libvirtd + QEMU cannot run here, or None when it can."""
    for tool, package in (
        ("libvirtd", "libvirt-daemon-system"),
        ("qemu-system-x86_64", "qemu-system-x86"),
        ("qemu-img", "qemu-utils"),
        ("unshare", "util-linux"),
    ):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (Debian package {package})"
    if os.geteuid() != 0:
        return "a private system libvirtd needs root"
    try:
        import libvirt  # noqa: F401
    except ImportError:
        return "libvirt-python is not installed (pip install 'shoal[kvm]')"
    if guest_kernel() is None:
        return "no kernel in /boot (Debian package linux-image-cloud-amd64)"
    return None


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


class LibvirtDaemon:
    """libvirtd in a private mount namespace, state under `root`, reachable at `self.uri`."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.proc: subprocess.Popen | None = None
        self.sock_dir = Path(
            tempfile.mkdtemp(prefix="shoal-libvirtd-", dir="/tmp")
        )  # short: socket path limit

    @property
    def socket(self) -> Path:
        return self.sock_dir / "libvirt-sock"

    @property
    def uri(self) -> str:
        return f"qemu:///system?socket={self.socket}"

    @property
    def log_path(self) -> Path:
        return self.root / "libvirtd.log"

    def _write_config(self) -> None:
        for name in STATE_DIRS:
            (self.root / name).mkdir(parents=True, exist_ok=True)
        self.sock_dir.mkdir(parents=True, exist_ok=True)
        etc = self.root / "etc"
        (etc / "libvirtd.conf").write_text(LIBVIRTD_CONF.format(sock=self.sock_dir, log=self.log_path))
        (etc / "qemu.conf").write_text(QEMU_CONF)
        (etc / "libvirt.conf").write_text("")

    def start(self, timeout: float = 30.0) -> LibvirtDaemon:
        self._write_config()
        mounts = []
        for name, target in STATE_DIRS.items():
            os.makedirs(target, exist_ok=True)  # the mount point (empty) must exist on the host
            mounts.append(f"mount --bind {self.root / name} {target}")
        script = " && ".join([*mounts, f"exec libvirtd --pid-file {self.root / 'libvirtd.pid'}"])
        with open(self.root / "stderr.log", "ab") as log:
            self.proc = subprocess.Popen(
                ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        import libvirt

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"libvirtd exited with {self.proc.returncode}:\n{self.log_tail()}")
            if self.socket.exists():
                with contextlib.suppress(libvirt.libvirtError):
                    libvirt.open(self.uri).close()
                    return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"libvirtd did not answer within {timeout} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        text = ""
        for path in (self.root / "stderr.log", self.log_path):
            with contextlib.suppress(OSError):
                text += "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) + "\n"
        return text

    def qemu_pids(self) -> list[int]:
        pids = []
        for pidfile in (self.root / "run" / "qemu").glob("*.pid"):
            with contextlib.suppress(OSError, ValueError):
                pids.append(int(pidfile.read_text().strip()))
        return pids

    def destroy_all(self) -> None:
        """Destroy and undefine every domain of this daemon (QEMU processes outlive libvirtd)."""
        import libvirt

        with contextlib.suppress(libvirt.libvirtError):
            conn = libvirt.open(self.uri)
            for dom in conn.listAllDomains(0):
                with contextlib.suppress(libvirt.libvirtError):
                    if dom.isActive():
                        dom.destroy()
                with contextlib.suppress(libvirt.libvirtError):
                    dom.undefine()
            conn.close()

    def pause_daemon(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGSTOP)

    def resume_daemon(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)

    def stop(self, timeout: float = 20.0, keep_domains: bool = False) -> None:
        """Destroy and undefine every domain, then SIGTERM libvirtd (SIGKILL after `timeout`).
        keep_domains=True only stops the daemon, as an outage would: definitions persist."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.resume_daemon()
            if not keep_domains:
                self.destroy_all()
            leftover = self.qemu_pids()
            stop_group(self.proc, timeout)
            for pid in [] if keep_domains else leftover:  # QEMUs it started and could not destroy
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        self.proc = None
        shutil.rmtree(self.sock_dir, ignore_errors=True)

    def __enter__(self) -> LibvirtDaemon:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
