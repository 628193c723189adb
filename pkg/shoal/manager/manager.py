"""The State Manager: one supervised process plus the configured stacks, and their status.

Start-up order: directories, saved configuration (a bad file -> unconfigured, logged), the
stacks (in the background, so the HTTP API answers at once), then the supervised process.
With the `leaser` stack the database replication and the filesystem (the writers) start only
once this manager holds the lease, and stop if it is lost or released.
Shutdown order: the process (SIGTERM, SIGKILL after the stop timeout), the filesystem,
replication, then the lease is released so a standby can take over at once.
Every child (the process, litestream, juicefs) dies with the manager, even by kill -9
(shoal.runtime.lifetime), so a standby that takes the lease never runs beside a leftover writer.
S3 is never waited on by the API: /health reports a bucket that does not answer as `degraded`
(shoal.manager.health), and operations that need it fail with 503 instead of hanging.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from shoal import __version__
from shoal.manager import checkpoints, database
from shoal.manager.applog import AppLog
from shoal.manager.config import Config, ConfigError, load_config, redacted, save_config
from shoal.manager.health import S3Probe
from shoal.manager.juicefs import JuiceFS
from shoal.manager.lease import ConditionalWritesUnsupported, Lease
from shoal.manager.replication import Replicated, Replication
from shoal.manager.supervisor import Supervisor, SupervisorOptions

log = logging.getLogger("shoal.manager")

MOUNT_PROBE_INTERVAL = 1.0  # with the probe's 2 s timeout a stale mount is seen within ~3 s
OPERATION_TIMEOUT = 300.0  # an API call answers within this; the operation may finish later


class ManagerError(Exception):
    def __init__(self, status: int, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.details = details


@dataclass
class ManagerOptions:
    data_dir: Path
    tmp_dir: Path
    command: list[str] = field(default_factory=list)
    restart_delay: float = 1.0
    stop_timeout: float = 90.0
    start_secs: float = 1.0
    start_retries: int = 3
    operation_timeout: float = OPERATION_TIMEOUT
    allow_paths: list[Path] = field(default_factory=list)
    app_log_max_bytes: int = 10 * 1024 * 1024  # 0: never rotate
    app_log_backups: int = 5


class Manager:
    def __init__(self, options: ManagerOptions) -> None:
        self.options = options
        self.data_dir = options.data_dir.absolute()
        self.tmp_dir = options.tmp_dir.absolute()
        self.config_path = self.tmp_dir / "config.json"
        self.db_path = self.data_dir / "database.sqlite"
        self.jfs_meta_path = self.data_dir / "juicefs-meta.sqlite"
        self.checkpoint_root = self.tmp_dir / "checkpoints"
        self.config: Config | None = None
        self.config_error: str | None = None
        self.process: Supervisor | None = None
        self.replication: Replication | None = None
        self.juicefs: JuiceFS | None = None
        self.lease: Lease | None = None
        self.db_error: str | None = None
        self.stacks_state = "none"
        self._writers_up = False
        self._lock = asyncio.Lock()  # configuration, checkpoints, restores, lease changes: one at a time
        self._tasks: list[asyncio.Task] = []
        self._components_ready = asyncio.Event()
        self._s3_probe: S3Probe | None = None
        self._busy: tuple[str, float] | None = None  # the operation holding _lock, since when
        self.mount_path: Path | None = None  # confined (shoal.manager.paths)
        self.fenced: str | None = None  # why the writers were stopped for the lease
        self.fences = 0
        self.last_fence: dict[str, Any] | None = None
        self._fence_epoch = 0
        self.cache_dir: Path | None = None
        self.app_log: AppLog | None = None

    # -- life cycle ----------------------------------------------------------------------
    async def startup(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        try:
            self.config = load_config(self.config_path)
            if self.config is not None:
                self.check_paths(self.config)
        except (ConfigError, OSError) as exc:
            self.config = None
            self.config_error = f"{self.config_path}: {exc}"
            log.error("starting unconfigured: saved configuration is unusable: %s", exc)
        if self.options.command:
            self.app_log = AppLog(
                self.tmp_dir / "logs", self.options.app_log_max_bytes, self.options.app_log_backups
            )
            self.process = Supervisor(
                SupervisorOptions(
                    self.options.command,
                    restart_delay=self.options.restart_delay,
                    stop_timeout=self.options.stop_timeout,
                    start_secs=self.options.start_secs,
                    start_retries=self.options.start_retries,
                    env=self._process_env(),
                    name="process",
                    pidfile=self.tmp_dir / "process.pid",
                    output=self.app_log,
                )
            )
        self._spawn(self._boot(), "boot")

    async def _boot(self) -> None:
        if self.config is not None:
            async with self._exclusive("start-up"):
                await self._start_stacks()
        self._start_app()  # with the leaser stack only once this manager is the writer

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.append(task)
        task.add_done_callback(self._tasks_done)

    def _tasks_done(self, task: asyncio.Task) -> None:
        if task in self._tasks:
            self._tasks.remove(task)
        if not task.cancelled() and task.exception():
            log.error("background task %s failed", task.get_name(), exc_info=task.exception())

    async def shutdown(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            try:
                await task
            except (Exception, asyncio.CancelledError):  # already logged; shutting down
                pass
        if self.process:
            await self.process.stop()
        await self._stop_writers()
        if self.lease and self.lease.held:
            try:
                await asyncio.to_thread(self.lease.release)
            except Exception as exc:
                log.warning("could not release the lease on shutdown: %s", exc)
        if self.app_log:
            self.app_log.close()
        log.info("manager stopped")

    def _process_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["SHOAL_MANAGER_DATA_DIR"] = str(self.data_dir)
        env["SHOAL_MANAGER_TMP_DIR"] = str(self.tmp_dir)
        env["SHOAL_DATABASE"] = str(self.db_path)
        if self.config and "juicefs" in self.config.stacks:
            env["SHOAL_MOUNT"] = str(self._juicefs().mount_path)
        return env

    def _refuse_busy(self) -> ManagerError:
        op, since = self._busy or ("another operation", time.monotonic())
        return ManagerError(
            409, f"busy: {op} has been running for {time.monotonic() - since:.0f} s; try again later"
        )

    @contextlib.asynccontextmanager
    async def _exclusive(self, what: str) -> AsyncIterator[None]:
        """The operations lock for an internal step (boot, lease changes): waits its turn."""
        async with self._lock:
            self._busy = (what, time.monotonic())
            try:
                yield
            finally:
                self._busy = None

    async def _operation(self, what: str, body: Any) -> Any:
        """Run an API operation (configure, checkpoint, restore, delete, release) alone.

        Another one running: 409 at once, never a queue. The operation runs as its own task
        holding the lock until it is done, so a request that gives up after
        `operation_timeout` (504) never leaves half an operation running beside the next one:
        that one gets 409 until the first has finished and left a consistent state."""
        if self._lock.locked():
            raise self._refuse_busy()
        await self._lock.acquire()
        self._busy = (what, time.monotonic())

        async def run() -> Any:
            try:
                return await body()
            finally:
                self._busy = None
                self._lock.release()

        task = asyncio.get_running_loop().create_task(run(), name=what)
        self._tasks.append(task)
        task.add_done_callback(lambda t: self._tasks.remove(t) if t in self._tasks else None)
        try:
            return await asyncio.wait_for(asyncio.shield(task), self.options.operation_timeout)
        except TimeoutError:
            raise ManagerError(
                504,
                f"{what} did not finish within {self.options.operation_timeout:g} s; it goes on "
                "in the background (GET / shows it) and other operations get 409 until it ends",
            ) from None

    def check_paths(self, cfg: Config) -> None:
        """ConfigError unless every path of `cfg` is inside the manager's directories."""
        from shoal.manager import paths

        roots = [self.data_dir, self.tmp_dir, *self.options.allow_paths]
        reserved = [self.checkpoint_root, self.config_path, self.db_path, self.jfs_meta_path]
        problems = []
        resolved = {}
        for name, default in (("mount_path", "mount"), ("cache_dir", "juicefs-cache")):
            value = getattr(cfg.juicefs, name) or str(self.tmp_dir / default)
            try:
                resolved[name] = paths.confine(value, self.tmp_dir, roots, reserved)
            except ValueError as exc:
                problems.append({"field": f"juicefs.{name}", "message": str(exc)})
        if not problems and resolved["mount_path"] == resolved["cache_dir"]:
            problems.append({"field": "juicefs.cache_dir", "message": "must differ from juicefs.mount_path"})
        if problems:
            raise ConfigError(problems)
        self.mount_path, self.cache_dir = resolved["mount_path"], resolved["cache_dir"]

    async def _s3_problem(self) -> str | None:
        cfg = self.config
        if cfg is None:
            return None
        if self._s3_probe is None:
            self._s3_probe = S3Probe(cfg.storage)
        return await self._s3_probe.check()

    # -- configuration -------------------------------------------------------------------
    async def configure(self, cfg: Config) -> dict[str, Any]:
        async def body() -> dict[str, Any]:
            if self.config is not None:
                raise ManagerError(400, "already configured; the configuration cannot be replaced")
            self.check_paths(cfg)  # ConfigError: 400 naming the field, nothing saved
            save_config(self.config_path, cfg)
            self.config = cfg
            self.config_error = None
            if self.process:
                self.process.options.env = self._process_env()  # used from the next (re)start
            await self._start_stacks()
            return self.status()

        return await self._operation("configuration", body)

    def config_view(self) -> dict[str, Any]:
        if self.config is None:
            raise ManagerError(404, "not configured")
        return redacted(self.config)

    def _require_config(self) -> Config:
        if self.config is None:
            raise ManagerError(400, "not configured: POST /config first")
        return self.config

    # -- stacks --------------------------------------------------------------------------
    def _juicefs(self) -> JuiceFS:
        if self.juicefs is None:
            assert self.config is not None
            if self.mount_path is None:
                self.check_paths(self.config)
            assert self.mount_path is not None and self.cache_dir is not None
            self.juicefs = JuiceFS(
                self.config.storage,
                self.config.juicefs,
                self.jfs_meta_path,
                self.tmp_dir,
                self.tmp_dir / "juicefs.log",
                mount_path=self.mount_path,
                cache_dir=self.cache_dir,
                stray_root=self.data_dir / "stray-files",
            )
        return self.juicefs

    def _holder_id(self) -> str:
        assert self.config is not None
        if self.config.lease.holder:
            return self.config.lease.holder
        digest = hashlib.sha256(str(self.data_dir).encode()).hexdigest()[:8]
        return f"{socket.gethostname()}:{digest}"

    async def _start_stacks(self) -> None:
        cfg = self.config
        assert cfg is not None
        self.stacks_state = "starting"
        if "juicefs" in cfg.stacks:
            self._spawn(self._mount_watch(), "mount supervision")
        if "leaser" in cfg.stacks:
            self.lease = Lease(cfg.storage, self._holder_id(), cfg.lease.ttl_seconds)
            try:
                await asyncio.to_thread(self.lease.check_conditional_writes)
            except ConditionalWritesUnsupported as exc:
                self.lease.last_error = str(exc)
                self.stacks_state = "error"
                log.error("lease disabled: %s", exc)
                return
            except Exception as exc:
                self.lease.last_error = f"cannot reach S3: {exc}"
                log.warning("lease probe failed: %s", exc)
            held = await asyncio.to_thread(self.lease.acquire_or_renew)
            self._spawn(self._renew_loop(), "lease renewal")
            self._spawn(self._fence_loop(), "fencing")
            if held and await self._start_writers():
                self._start_app()
            elif not held:
                self.stacks_state = "standby"
                log.info("lease held by another manager; standing by")
            self._spawn(self._writer_loop(), "writer")
            return
        await self._start_writers()

    def _margin(self) -> float:
        """Writers stop this long before the lease could expire (the time fencing may take)."""
        assert self.lease is not None
        return max(1.0, self.lease.ttl * 0.3)

    def _lineage_file(self) -> Path:
        return self.tmp_dir / "replica-lineage.json"

    def _lineages(self) -> dict[str, str]:
        try:
            return json.loads(self._lineage_file().read_text())
        except (OSError, ValueError):
            return {}

    def _save_lineages(self, dbs: list[Replicated]) -> None:
        data = {db.path.name: db.replica for db in dbs}
        tmp = self._lineage_file().with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, self._lineage_file())

    async def _prepare_db(self, db: Replicated, source: str | None) -> None:
        """A new holder's database: restored from the lineage the lease names unless the local
        file is provably the newest (it replicated to that very lineage and is at or past the
        replica's position)."""
        assert self.replication is not None
        if source is None:  # no holder ever published a replica: keep (or restore) as before
            return
        if db.path.exists() and self._lineages().get(db.path.name) == source:
            local = self.replication.local_position(db)
            remote = await asyncio.to_thread(self.replication.remote_position, source)
            if local >= remote > 0:
                self.replication.kept_local.append(db.path.name)
                log.info("local database is the newest", extra={"db": str(db.path), "txid": local})
                return
        info = await self.replication.restore_verified(db, source)
        self.replication.verified.append(info)
        self.replication.restored.append(str(db.path))

    async def _start_writers(self) -> bool:
        """Replication and the filesystem (and, with the leaser stack, the restore decision and
        the publication of our lineage); True when every writer runs."""
        cfg = self.config
        assert cfg is not None
        leased = "leaser" in cfg.stacks and self.lease is not None
        epoch = self._fence_epoch
        token = self.lease.token if leased and self.lease else None
        source_token = self.lease.replica if leased and self.lease else None
        names = [
            n
            for n, stack in (("database.sqlite", "db"), ("juicefs-meta.sqlite", "juicefs"))
            if stack in cfg.stacks
        ]
        paths = {"database.sqlite": self.db_path, "juicefs-meta.sqlite": self.jfs_meta_path}
        dbs = [Replicated(paths[n], self._replica_key(n, token)) for n in names]
        self._writers_up = False
        if dbs:
            self.replication = Replication(cfg.storage, dbs, self.tmp_dir / "litestream.yml")
            try:
                if leased and source_token is not None:
                    for db in dbs:
                        await self._prepare_db(db, self._replica_key(db.path.name, source_token))
                        if epoch != self._fence_epoch:
                            return False
                elif leased:
                    # no lineage published yet: restore a missing file from the legacy path
                    self.replication.dbs = [Replicated(d.path, self._replica_key(d.path.name)) for d in dbs]
                    await self.replication.restore_missing()
                    self.replication.dbs = dbs
                else:
                    await self.replication.restore_missing()
                if "db" in cfg.stacks:
                    await asyncio.to_thread(database.ensure, self.db_path)
                self.db_error = None
            except Exception as exc:
                self.db_error = str(exc)
                log.error("database: %s", exc)
                if leased:  # never start writing over a database we could not bring up to date
                    self.stacks_state = "error"
                    return False
            if "juicefs" in cfg.stacks and not self.jfs_meta_path.exists():
                try:  # format before replicating, so its metadata is in our lineage from the start
                    await self._juicefs().format()
                except (RuntimeError, OSError) as exc:
                    self._juicefs().error = str(exc)
                    log.error("juicefs: %s", exc)
            try:
                self.replication.start()
                await self.replication.wait_started()
            except OSError as exc:
                self.replication.error = str(exc)
                log.error("replication: %s", exc)
            if leased:
                assert self.lease is not None
                caught_up = await self.replication.wait_caught_up(timeout=max(10.0, self.lease.ttl * 2))
                if epoch != self._fence_epoch:
                    return False
                if not caught_up:
                    self.replication.error = "the new replica did not catch up; not taking writes yet"
                    log.warning(self.replication.error)
                    await self.replication.kill()
                    self.stacks_state = "waiting for S3"
                    return False
                self._save_lineages(dbs)
                if not await asyncio.to_thread(self.lease.publish_replica, token):
                    await self.replication.kill()
                    self.stacks_state = "standby"
                    return False
        if "juicefs" in cfg.stacks:
            await self._juicefs().start()
            if epoch != self._fence_epoch:
                return False
            if self.juicefs and self.juicefs.state == "mounted":
                await asyncio.to_thread(checkpoints.recover, self.juicefs.mount_path)
        self._writers_up = True
        self.fenced = None
        self.stacks_state = "running"
        return True

    async def _mount_watch(self) -> None:
        """Supervise the mount like the app: every MOUNT_PROBE_INTERVAL a stat with a timeout
        (JuiceFS.probe). A mount that hangs or fails (juicefs stopped, or its FUSE connection
        broken) while juicefs still runs: stop the app (its files are gone), SIGKILL juicefs,
        detach the mount and mount again (files written into the bare directory meanwhile are
        moved aside), retrying until it serves; then the app starts again. A juicefs that
        exited is restarted by its own supervisor; the app waits for it the same way."""
        paused = False  # we stopped the app because its filesystem was gone
        remount = False
        while True:
            await asyncio.sleep(MOUNT_PROBE_INTERVAL)
            jfs = self.juicefs
            if jfs is None or not self._writers_up or self.fenced:
                continue
            if remount and jfs.state != "mounted":
                if self._lock.locked():
                    continue
                async with self._exclusive("remounting the filesystem"):
                    if self._writers_up and not self.fenced:
                        log.info("remounting the filesystem", extra={"path": str(jfs.mount_path)})
                        await jfs.start()
                        if jfs.state == "mounted":
                            remount = False
                            await asyncio.to_thread(checkpoints.recover, jfs.mount_path)
                continue
            if jfs.state != "mounted":
                continue
            running = jfs.supervisor is not None and jfs.supervisor.running
            state = await jfs.probe() if running else "daemon exited"
            if state == "live":
                if paused and self._writers_up and not self.fenced:
                    paused = False
                    log.info("the filesystem serves again; starting the app")
                    self._start_app()
                continue
            if self.process and self.process.running:
                paused = True
                log.warning("the filesystem is gone (%s); stopping the app until it is back", state)
                await self.process.stop(timeout=min(self.options.stop_timeout, 5.0))
            if state in ("hung", "dead", "error") and running:
                log.error(
                    "the JuiceFS mount stopped answering (%s) while juicefs runs; remounting",
                    state,
                    extra={"path": str(jfs.mount_path), "pid": jfs.pid},
                )
                jfs.note_stale(state)
                await jfs.kill(state="remounting")
                remount = True

    def _replica_key(self, name: str, token: int | None = None) -> str:
        from shoal.manager import s3

        assert self.config is not None
        if token is None:
            return s3.key(self.config.storage, "litestream", name)
        return s3.key(self.config.storage, "litestream", f"t{token}", name)

    async def _stop_writers(self) -> None:
        if self.process and "leaser" in (self.config.stacks if self.config else []):
            await self.process.stop()  # the app writes too
        if self.juicefs:
            await self.juicefs.stop()
        if self.replication:
            await self.replication.stop()
        self._writers_up = False

    async def _fence(self, why: str) -> None:
        """Stop every writer now, without waiting for any operation: the app (SIGTERM, SIGKILL
        soon after), litestream (SIGKILL: no last write to S3), juicefs (SIGKILL, mount
        detached). Called while the lease still has `_margin()` seconds left."""
        started = time.monotonic()
        self._fence_epoch += 1
        self.fenced = why
        self.fences += 1
        self.stacks_state = "fenced"
        log.warning("fencing: %s", why)
        grace = min(self.options.stop_timeout, self._margin() / 3)
        if self.process:
            await self.process.stop(timeout=grace)
        if self.replication:
            await self.replication.kill()
        if self.juicefs:
            await self.juicefs.kill()
        self._writers_up = False
        self.last_fence = {"reason": why, "at": time.time(), "seconds": round(time.monotonic() - started, 3)}
        log.warning("fenced", extra=self.last_fence)

    def _writing(self) -> bool:
        return bool(
            self._writers_up
            or (self.process and self.process.running)
            or (self.replication and self.replication.supervisor and self.replication.supervisor.running)
            or (self.juicefs and self.juicefs.supervisor and self.juicefs.supervisor.running)
        )

    async def _fence_loop(self) -> None:
        lease = self.lease
        assert lease is not None
        while not lease.released:
            if not lease.writer_ok(self._margin()) and self._writing():
                why = lease.last_error or "the lease was not renewed in time"
                if lease.etag is None:
                    why = "the lease is lost"
                await self._fence(f"{why}; writers stopped before the lease can expire")
            await asyncio.sleep(0.05)

    async def _renew_loop(self) -> None:
        """Renew (or try to take) the lease, never waiting on an operation; renewals every
        TTL/4 leave room for one that fails before fencing kicks in."""
        lease = self.lease
        assert lease is not None
        while not lease.released:
            await asyncio.sleep(lease.ttl / 4)
            if lease.released:
                return
            try:
                await asyncio.to_thread(lease.acquire_or_renew)
            except Exception as exc:  # acquire_or_renew logs S3 errors itself
                log.warning("lease step failed: %s", exc)

    async def _writer_loop(self) -> None:
        """Start the writers once we hold the lease (and after a fence, once renewals succeed
        again); never while an operation runs."""
        lease = self.lease
        assert lease is not None
        backoff = 0.5
        while not lease.released:
            await asyncio.sleep(backoff)
            if lease.released:
                return
            if lease.writer_ok(self._margin()) and not self._writers_up:
                if self._lock.locked():
                    continue
                async with self._exclusive("taking over as the writer"):
                    if lease.released or not lease.writer_ok(self._margin()):
                        continue
                    log.info("becoming the writer", extra={"token": lease.token})
                    self.stacks_state = "starting"
                    if await self._start_writers():
                        self._start_app()
                        backoff = 0.5
                    else:
                        if self._writing() and self.fenced is None:
                            await self._fence("could not become the writer")
                        backoff = min(backoff * 2, 5.0)
            elif not lease.held and not self._writing() and self.stacks_state in ("running", "starting"):
                self.stacks_state = "standby"

    async def release_lease(self) -> dict[str, Any]:
        cfg = self._require_config()  # unconfigured: 400, as the spec says
        if "leaser" not in cfg.stacks or self.lease is None:
            return {"released": False, "lease": None}  # configured, no lease held: nothing to give up
        lease = self.lease

        async def body() -> dict[str, Any]:
            await self._stop_writers()
            try:
                held = await asyncio.to_thread(self.lease.release)
            except (BotoCoreError, ClientError, OSError) as exc:
                # the writers are stopped: we are no writer, whatever S3 says later
                self.lease.released = True
                self.stacks_state = "released"
                raise ManagerError(
                    503, f"writers stopped, but the lease could not be marked released in S3: {exc}"
                ) from None
            self.lease.released = True
            self.stacks_state = "released"
            return {"released": held, "lease": lease.status()}

        return await self._operation("a lease release", body)

    # -- checkpoints ---------------------------------------------------------------------
    def _fs_mount(self) -> Path | None:
        cfg = self.config
        if cfg is None or "juicefs" not in cfg.stacks:
            return None
        jfs = self._juicefs()
        if not jfs.ready:
            raise ManagerError(409, f"the filesystem is not mounted ({jfs.error or jfs.status()['state']})")
        return jfs.mount_path

    async def _fs_needs_s3(self) -> None:
        """A copy of the filesystem reads its data from S3: refuse it (503) while S3 does not
        answer, rather than start a copy that hangs in juicefs."""
        cfg = self.config
        if cfg is None or "juicefs" not in cfg.stacks:
            return
        problem = await self._s3_problem()
        if problem:
            raise ManagerError(503, f"the filesystem's data is in S3, which does not answer: {problem}")

    def _db(self) -> Path | None:
        cfg = self.config
        if cfg is None or "db" not in cfg.stacks:
            return None
        if not self.db_path.exists():
            raise ManagerError(409, f"the database is not available ({self.db_error or 'not created yet'})")
        return self.db_path

    async def checkpoint(self, checkpoint_id: str) -> dict[str, Any]:
        self._require_config()
        checkpoints.validate_id(checkpoint_id)
        await self._fs_needs_s3()

        async def body() -> dict[str, Any]:
            try:
                meta = await asyncio.to_thread(
                    checkpoints.create, self.checkpoint_root, checkpoint_id, self._db(), self._fs_mount()
                )
            except OSError as exc:  # the mount went away under the copy (juicefs died)
                raise ManagerError(503, f"checkpoint {checkpoint_id!r} failed: {exc}") from None
            log.info("checkpoint created", extra={"id": checkpoint_id})
            return meta

        return await self._operation(f"checkpoint {checkpoint_id!r}", body)

    async def restore(self, checkpoint_id: str) -> dict[str, Any]:
        """Verify the checkpoint (manifest, checksums, SQLite integrity) first: a corrupt or
        incomplete one is 409 and nothing is stopped or changed; then stop the app, restore,
        and start it again (if this manager may run it)."""
        cfg = self._require_config()
        checkpoints.load(self.checkpoint_root, checkpoint_id)  # 400/404 before anything else
        await self._fs_needs_s3()

        async def body() -> dict[str, Any]:
            meta = await asyncio.to_thread(checkpoints.verify, self.checkpoint_root, checkpoint_id)
            db, mount = self._db(), self._fs_mount()
            missing = [
                part
                for part, stack, live in (("database", "db", db), ("filesystem", "juicefs", mount))
                if stack in cfg.stacks and live is not None and part not in meta
            ]
            if missing:
                raise ManagerError(
                    409, f"checkpoint {checkpoint_id!r} has no {' or '.join(missing)}; nothing restored"
                )
            started = time.monotonic()
            if self.process:
                await self.process.stop()
            try:
                restored_db = db is not None and await asyncio.to_thread(
                    checkpoints.restore_database, self.checkpoint_root, checkpoint_id, db
                )
                restored_fs = mount is not None and await asyncio.to_thread(
                    checkpoints.restore_filesystem, self.checkpoint_root, checkpoint_id, mount
                )
            except OSError as exc:  # the journal finishes or undoes it at the next mount
                raise ManagerError(503, f"restore of {checkpoint_id!r} failed: {exc}") from None
            finally:
                self._start_app()
            log.info("checkpoint restored", extra={"id": checkpoint_id})
            return {
                "id": checkpoint_id,
                "restored": True,
                "database": bool(restored_db),
                "filesystem": bool(restored_fs),
                "seconds": round(time.monotonic() - started, 3),
                "checkpoint": {k: v for k, v in meta.items() if k != "manifest"},
            }

        return await self._operation(f"restore of {checkpoint_id!r}", body)

    async def delete_checkpoint(self, checkpoint_id: str) -> dict[str, Any]:
        checkpoints.validate_id(checkpoint_id)

        async def body() -> dict[str, Any]:
            await asyncio.to_thread(checkpoints.delete, self.checkpoint_root, checkpoint_id)
            log.info("checkpoint deleted", extra={"id": checkpoint_id})
            return {"id": checkpoint_id, "deleted": True}

        return await self._operation(f"deletion of checkpoint {checkpoint_id!r}", body)

    def list_checkpoints(self) -> list[str]:
        return checkpoints.list_ids(self.checkpoint_root)

    def describe_checkpoints(self) -> list[dict[str, Any]]:
        return checkpoints.describe(self.checkpoint_root)

    def _may_run_app(self) -> bool:
        """The app writes: with the leaser stack only while we are the (unfenced) writer."""
        cfg = self.config
        if cfg is None or "leaser" not in cfg.stacks:
            return True
        return self._writers_up and self.lease is not None and self.lease.held

    def _start_app(self) -> None:
        if self.process and self._may_run_app():
            self.process.start()

    # -- process control -----------------------------------------------------------------
    async def stop_process(self) -> dict[str, Any]:
        if not self.process:
            raise ManagerError(400, "no process to supervise (no COMMAND given)")
        await self.process.stop()
        return self.process.status()

    def process_logs(self, tail: int, stream: str | None) -> dict[str, Any]:
        """The app's last `tail` output lines (both streams interleaved, or one), from memory."""
        if not self.process or not self.app_log:
            raise ManagerError(400, "no process to supervise (no COMMAND given)")
        if stream not in (None, "stdout", "stderr"):
            raise ManagerError(400, "stream must be stdout or stderr")
        return {"lines": self.app_log.tail(tail, stream), "logs": self.app_log.status()}

    async def start_process(self) -> dict[str, Any]:
        if not self.process:
            raise ManagerError(400, "no process to supervise (no COMMAND given)")
        if not self._may_run_app():
            raise ManagerError(
                409,
                f"this manager is not the writer ({self.stacks_state}); the app runs only on the lease holder",
            )
        self.process.start()
        await asyncio.sleep(0)
        return self.process.status()

    # -- status --------------------------------------------------------------------------
    async def health(self) -> dict[str, Any]:
        """`healthy`, or `degraded` with the reasons: S3 not answering, the process given up
        (fatal), litestream given up, the filesystem not mounted. Never waits long on S3."""
        problems: dict[str, str] = {}
        s3_problem = await self._s3_problem()
        if s3_problem:
            problems["s3"] = s3_problem
        if self.process and self.process.state == "fatal":
            st = self.process.status()
            problems["process"] = (
                f"the supervised process failed {st['failed_starts']} starts in a row and is not "
                f"restarted (last exit: {st['last_exit'] or st['error']}); POST /process/start retries"
            )
        if self.replication and self.replication.supervisor and self.replication.supervisor.state == "fatal":
            problems["replication"] = f"litestream is not running: {self.replication.status()['error']}"
        if self.fenced:
            problems["lease"] = f"fenced: {self.fenced}"
        elif self.lease and self.lease.last_error and self.stacks_state != "standby":
            problems["lease"] = f"lease renewal failing: {self.lease.last_error}"
        if self.stacks_state == "error":
            problems["stacks"] = self.db_error or self.config_error or "the stacks failed to start"
        cfg = self.config
        if cfg is not None and "juicefs" in cfg.stacks and self._writers_up and self.juicefs:
            fs = self.juicefs.status()
            if fs["state"] != "mounted":
                problems["filesystem"] = f"the filesystem is {fs['state']}: {fs['error'] or 'not mounted'}"
        return {
            "status": "degraded" if problems else "healthy",
            "service": "state-manager",
            "version": __version__,
            "configured": cfg is not None,
            "problems": problems,
            "reason": "; ".join(f"{k}: {v}" for k, v in problems.items()) or None,
        }

    def status(self) -> dict[str, Any]:
        cfg = self.config
        components: dict[str, Any] = {}
        if cfg is not None:
            if "db" in cfg.stacks:
                components["database"] = {**database.status(self.db_path), "error": self.db_error}
            if self.replication or (cfg.stacks and {"db", "juicefs"} & set(cfg.stacks)):
                components["replication"] = (
                    self.replication.status() if self.replication else {"running": False, "state": "waiting"}
                )
            if "leaser" in cfg.stacks:
                components["lease"] = (
                    self.lease.status() if self.lease else {"held": False, "role": "starting"}
                )
            if "juicefs" in cfg.stacks:
                components["filesystem"] = self._juicefs().status()
        return {
            "configured": cfg is not None,
            "configuration": {
                "configured": cfg is not None,
                "path": str(self.config_path),
                "stacks": list(cfg.stacks) if cfg else [],
                "state": self.stacks_state,
                "error": self.config_error,
                "operation": {"name": self._busy[0], "seconds": round(time.monotonic() - self._busy[1], 3)}
                if self._busy
                else None,
                "fenced": self.fenced,
                "fences": self.fences,
                "last_fence": self.last_fence,
            },
            "process": {**self.process.status(), "logs": self.app_log.status() if self.app_log else None}
            if self.process
            else None,
            "components": components,
            "checkpoints": self.list_checkpoints(),
            "data_dir": str(self.data_dir),
            "tmp_dir": str(self.tmp_dir),
        }
