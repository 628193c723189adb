"""A private dockerd (for `shoal up` and the tests) and a busybox image made without a registry.

    with DockerDaemon(tmp_path / "docker") as d:
        d.import_busybox("shoal-busybox:latest")
        ... DockerBackend(d.url) ...

The daemon listens only on a unix socket under its own directory, with its own data-root,
exec-root and pidfile, `--bridge=none --iptables=false` (it never touches host networking),
and is stopped by PID. overlay2 is tried first, vfs when the kernel or filesystem refuses it.
The image is `docker import` of a root filesystem holding Debian's busybox-static.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from shoal.platform.daemon import PausableDaemon
from shoal.runtime.lifetime import child_options, stop_group

BUSYBOX_PATHS = ("/bin/busybox", "/usr/bin/busybox")


def dockerd_available() -> str | None:
    """Why a private dockerd cannot run here, or None when it can."""
    if shutil.which("dockerd") is None:
        return "dockerd is not installed (Debian package docker.io)"
    if os.geteuid() != 0:
        return "dockerd needs root"
    if busybox_static() is None:
        return "busybox is not installed (Debian package busybox-static)"
    return None


def busybox_static() -> str | None:
    """A statically linked busybox (so the image needs no libraries)."""
    for path in BUSYBOX_PATHS:
        if os.path.exists(path):
            out = (
                subprocess.run(["file", "-L", path], capture_output=True, text=True).stdout
                if shutil.which("file")
                else ""
            )
            if not out or "statically linked" in out or "static-pie" in out:
                return path
    return None


def busybox_rootfs_tar(busybox: str) -> bytes:
    """A tar of / with /bin/busybox and a symlink per applet, plus the usual empty dirs."""
    applets = subprocess.run([busybox, "--list"], capture_output=True, text=True, check=True).stdout.split()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:

        def add_dir(name: str, mode: int = 0o755) -> None:
            info = tarfile.TarInfo(name)
            info.type = tarfile.DIRTYPE
            info.mode = mode
            tar.addfile(info)

        for d in ("bin", "sbin", "etc", "proc", "sys", "dev", "root", "var", "run", "data"):
            add_dir(d)
        add_dir("tmp", 0o1777)
        tar.add(busybox, arcname="bin/busybox")
        for applet in applets:
            if applet == "busybox":
                continue
            info = tarfile.TarInfo(f"bin/{applet}")
            info.type = tarfile.SYMTYPE
            info.linkname = "busybox"
            tar.addfile(info)
        for name, text in (("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n"), ("etc/group", "root:x:0:\n")):
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def unmount_under(path: Path) -> None:
    """Lazily unmount what the daemon left mounted below `path` (dockerd makes its data-root a
    private mount of itself), deepest first, so the directory can be removed."""
    base = os.path.realpath(path)
    points = []
    with contextlib.suppress(OSError), open("/proc/self/mountinfo") as fh:
        for line in fh:
            point = line.split()[4].replace("\\040", " ")
            if point == base or point.startswith(base + "/"):
                points.append(point)
    for point in sorted(set(points), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True)


class DockerDaemon(PausableDaemon):
    """dockerd on a unix socket under `root`, started and stopped by this object."""

    def __init__(self, root: str | Path, storage_driver: str | None = None) -> None:
        self.root = Path(root)
        self.storage_driver = storage_driver
        self.proc: subprocess.Popen | None = None
        # unix socket paths are limited to ~104 bytes and containerd nests its sockets under
        # exec-root: keep sockets and exec-root in a short directory of their own
        self.run_dir = Path(tempfile.mkdtemp(prefix="shoal-dockerd-", dir="/tmp"))

    @property
    def socket(self) -> Path:
        return self.run_dir / "docker.sock"

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    @property
    def log_path(self) -> Path:
        return self.root / "dockerd.log"

    def command(self, driver: str | None) -> list[str]:
        cmd = [
            "dockerd",
            "--host",
            self.url,
            "--data-root",
            str(self.root / "data"),
            "--exec-root",
            str(self.run_dir / "exec"),
            "--pidfile",
            str(self.root / "docker.pid"),
            "--bridge=none",
            "--iptables=false",
            "--ip6tables=false",
            "--ip-forward=false",
            "--ip-masq=false",
            "--userland-proxy=false",
            "--log-level=warn",
        ]
        if driver:
            cmd.append(f"--storage-driver={driver}")
        return cmd

    def client(self, timeout: float = 30.0) -> httpx.Client:
        return httpx.Client(
            transport=httpx.HTTPTransport(uds=str(self.socket)), base_url="http://docker", timeout=timeout
        )

    def start(self, timeout: float = 60.0) -> DockerDaemon:
        reason = dockerd_available()
        if reason:
            raise RuntimeError(reason)
        for driver in [self.storage_driver] if self.storage_driver else [None, "vfs"]:
            self.root.mkdir(parents=True, exist_ok=True)
            self.run_dir.mkdir(parents=True, exist_ok=True)
            with open(self.log_path, "ab") as log:
                self.proc = subprocess.Popen(  # dies with its owner (shoal up, a test)
                    self.command(driver), stdout=log, stderr=subprocess.STDOUT, **child_options()
                )
            if self._wait_ready(timeout):
                self.storage_driver = driver or self.info().get("Driver")
                return self
            self.stop()
        raise RuntimeError(f"dockerd did not start; log:\n{self.log_tail()}")

    def _wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                return False
            if self.socket.exists():
                try:
                    with self.client(2.0) as c:
                        if c.get("/_ping").status_code == 200:
                            return True
                except httpx.HTTPError:
                    pass
            time.sleep(0.1)
        return False

    def info(self) -> dict[str, Any]:
        with self.client() as c:
            return c.get("/info").json()

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def import_busybox(self, tag: str = "shoal-busybox:latest") -> str:
        """`docker import` of a busybox-static root filesystem; returns the image id."""
        busybox = busybox_static()
        if busybox is None:
            raise RuntimeError("no static busybox (Debian package busybox-static)")
        repo, _, version = tag.partition(":")
        with self.client(120.0) as c:
            r = c.post(
                "/images/create",
                params={
                    "fromSrc": "-",
                    "repo": repo,
                    "tag": version or "latest",
                    "changes": 'CMD ["/bin/sh"]',
                },
                content=busybox_rootfs_tar(busybox),
                headers={"Content-Type": "application/x-tar"},
            )
            r.raise_for_status()
            return c.get(f"/images/{tag}/json").json()["Id"]

    def remove_all_containers(self) -> None:
        with contextlib.suppress(httpx.HTTPError), self.client() as c:
            for row in c.get("/containers/json", params={"all": "1"}).json():
                c.delete(f"/containers/{row['Id']}", params={"force": "1", "v": "1"})

    def stop(self, timeout: float = 30.0, remove_containers: bool = True) -> None:
        """SIGTERM (dockerd stops its containers), SIGKILL after `timeout`. With
        remove_containers=False the containers stay defined, as after a daemon restart."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.resume_daemon()
            if remove_containers:
                self.remove_all_containers()
            stop_group(self.proc, timeout)
        self.proc = None
        unmount_under(self.root)
        unmount_under(self.run_dir)
        shutil.rmtree(self.run_dir, ignore_errors=True)

    def __enter__(self) -> DockerDaemon:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
