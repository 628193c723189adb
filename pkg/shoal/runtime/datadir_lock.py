"""One live service per data dir.

`shoal serve` takes an exclusive flock on DATA_DIR/.shoal-serve.lock before it opens anything
and keeps it for its whole life; forked workers inherit the descriptor, so the lock lasts as
long as any process of the tree. Workers started by exec (uvicorn's spawned workers) do not
inherit it: each takes a shared flock on DATA_DIR/.shoal-workers.lock instead, and a new start
needs that one exclusively too. A second start on a live data dir is refused with the holder's
pid; a start right after a kill -9 of the main process waits (up to `wait` s) for the orphaned
workers, which end within a second (shoal.runtime.lifetime), to let go.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from pathlib import Path
from typing import IO, Any

from shoal.runtime.lifetime import pid_alive

SERVE_LOCK = ".shoal-serve.lock"
WORKERS_LOCK = ".shoal-workers.lock"
WAIT = 3.0


class DataDirBusy(RuntimeError):
    """Another live process tree serves from this data dir."""


def _holder(f: IO[str]) -> dict[str, Any]:
    f.seek(0)
    try:
        info = json.loads(f.read() or "{}")
    except ValueError:
        return {}
    return info if isinstance(info, dict) else {}


def _describe(info: dict[str, Any]) -> str:
    pid = info.get("pid", "?")
    what = f"shoal serve {info['service']}" if info.get("service") else "a shoal service"
    port = f" on port {info['port']}" if info.get("port") else ""
    return f"pid {pid} ({what}{port})"


def _try_lock(f: IO[str], mode: int, until: float) -> bool:
    while True:
        try:
            fcntl.flock(f, mode | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= until:
                return False
            time.sleep(0.05)


def acquire(data_dir: str | os.PathLike, service: str, port: int | None, wait: float = WAIT) -> IO[str]:
    """Take the data dir for this process tree; the returned file must stay open (and inheritable
    by forked workers) for as long as the service runs. DataDirBusy when another tree holds it."""
    root = Path(data_dir)
    root.mkdir(parents=True, exist_ok=True)
    until = time.monotonic() + wait
    f = open(root / SERVE_LOCK, "a+")  # held for the life of the process
    try:
        if not _try_lock(f, fcntl.LOCK_EX, time.monotonic()):
            info = _holder(f)
            pid = info.get("pid")
            if isinstance(pid, int) and pid_alive(pid):
                raise DataDirBusy(f"data dir {root} is in use by {_describe(info)}; stop it first")
            # its main process is gone: orphaned workers still hold the lock for a moment
            if not _try_lock(f, fcntl.LOCK_EX, until):
                raise DataDirBusy(
                    f"data dir {root} is still held by leftover processes of {_describe(info)} "
                    f"after {wait:g} s"
                )
        with open(root / WORKERS_LOCK, "a+") as workers:
            if not _try_lock(workers, fcntl.LOCK_EX, until):
                raise DataDirBusy(f"data dir {root}: worker processes of an earlier start still run")
            fcntl.flock(workers, fcntl.LOCK_UN)
        f.seek(0)
        f.truncate()
        f.write(json.dumps({"pid": os.getpid(), "service": service, "port": port}))
        f.flush()
    except BaseException:
        f.close()
        raise
    return f


def hold_as_worker(data_dir: str | os.PathLike, wait: float = 10.0) -> IO[str] | None:
    """In a worker process: a shared lock on the workers file, so that a later start knows this
    worker is still alive even when it did not inherit the main lock. None without a data dir."""
    path = Path(data_dir) / WORKERS_LOCK
    if not path.parent.is_dir():
        return None
    f = open(path, "a+")  # held for the life of the process
    if not _try_lock(f, fcntl.LOCK_SH, time.monotonic() + wait):
        f.close()
        raise DataDirBusy(f"data dir {data_dir}: could not share the workers lock")
    return f
