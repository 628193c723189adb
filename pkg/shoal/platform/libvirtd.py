"""A private libvirtd, for `shoal up` and the tests.

libvirtd as root keeps its state in fixed system paths (/run/libvirt, /var/lib/libvirt, ...),
so this starts it in a private mount namespace (`unshare --mount`) with those paths bind-mounted
from a directory of its own: its sockets, config, logs and QEMU state never touch the host's,
and it listens only on a unix socket under that directory. QEMU runs as root without a
security driver or cgroups, TCG only (KVM guests do not boot on these machines).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from shoal.platform.daemon import PausableDaemon
from shoal.runtime.lifetime import child_options, stop_group

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
    return None


class LibvirtDaemon(PausableDaemon):
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
                **child_options(),  # dies with its owner (shoal up, a test)
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

    def stop_domains(self) -> None:
        """Power off every running domain and keep its definition (a clean host shutdown)."""
        import libvirt

        with contextlib.suppress(libvirt.libvirtError):
            conn = libvirt.open(self.uri)
            for dom in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE):
                with contextlib.suppress(libvirt.libvirtError):
                    dom.destroy()
            conn.close()

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
