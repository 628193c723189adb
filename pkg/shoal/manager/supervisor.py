"""Run one command and keep it running, supervisord-style.

- The child gets its own process group (so a stop reaches everything it spawned). Its stdout
  and stderr either go to a given fd, or are inherited, or (with `output`) go through pipes
  the manager reads into rotated log files and forwards (shoal.manager.applog).
- It dies with the manager (shoal.runtime.lifetime: PR_SET_PDEATHSIG sends it SIGTERM when
  the manager's event loop thread ends, even by kill -9), so two managers never run two copies.
  It is spawned from the event loop thread for that reason. A child that ignores SIGTERM can
  still outlive a killed manager: the pidfile lets the next start stop it.
- An exit nobody asked for is restarted after `restart_delay`. A child that dies within
  `start_secs` of starting counts as a failed start; after `start_retries` failed starts in a
  row it is left stopped in state "fatal", with a growing delay (backoff) between tries.
- `stop()` is intentional: SIGTERM to the group, SIGKILL after `stop_timeout`, wait for the
  exit, and never restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shoal.runtime import lifetime

log = logging.getLogger("shoal.manager.supervisor")


@dataclass
class SupervisorOptions:
    command: list[str]
    restart_delay: float = 1.0
    stop_timeout: float = 90.0
    start_secs: float = 1.0
    start_retries: int = 3
    backoff_max: float = 30.0
    env: dict[str, str] | None = None  # the whole environment; None inherits the manager's
    cwd: str | None = None
    name: str = "process"
    pidfile: Path | None = None  # lets a restarted manager stop the child a crashed one left
    stdout: int | None = None  # a file descriptor for stdout and stderr; None inherits the manager's
    prepare: Callable[[], Awaitable[None]] | None = None  # run before every start (stale mounts)
    output: Any = None  # a shoal.manager.applog.AppLog: stdout/stderr through pipes it reads


def describe_exit(returncode: int) -> dict[str, Any]:
    if returncode < 0:
        sig = -returncode
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = str(sig)
        return {"code": None, "signal": name}
    return {"code": returncode, "signal": None}


class Supervisor:
    """Keeps `options.command` running until `stop()`."""

    def __init__(self, options: SupervisorOptions) -> None:
        self.options = options
        self.state = "stopped"
        self.pid: int | None = None
        self.restarts = 0
        self.failed_starts = 0
        self.last_exit: dict[str, Any] | None = None
        self.started_at: float | None = None
        self.spawn_error: str | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._task: asyncio.Task | None = None
        self._stopping = asyncio.Event()
        self._eof: asyncio.Future | None = None  # both output pipes closed (with `output`)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    def status(self) -> dict[str, Any]:
        return {
            "command": self.options.command,
            "state": self.state,
            "running": self.running,
            "pid": self.pid if self.running else None,
            "restarts": self.restarts,
            "failed_starts": self.failed_starts,
            "last_exit": self.last_exit,
            "uptime_seconds": round(time.time() - self.started_at, 3)
            if self.running and self.started_at
            else None,
            "error": self.spawn_error,
        }

    def reap_orphan(self) -> int | None:
        """Kill the group of a child left running by a manager that died (kill -9); its pid.

        Only when the pidfile's process still runs our exact command line, so a recycled pid
        is never touched.
        """
        pidfile = self.options.pidfile
        if not pidfile or not pidfile.exists():
            return None
        try:
            pid = int(pidfile.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:-1]
        except (OSError, ValueError):
            return None
        if [c.decode(errors="replace") for c in cmdline] != list(self.options.command):
            return None
        log.warning(
            "%s left running by a previous manager; stopping it", self.options.name, extra={"pid": pid}
        )
        self._signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + min(self.options.stop_timeout, 10.0)
        while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
            time.sleep(0.05)
        self._signal(pid, signal.SIGKILL)
        return pid

    def start(self) -> None:
        """Begin supervising (no-op when already supervising)."""
        if self._task and not self._task.done():
            return
        self.reap_orphan()
        self._stopping = asyncio.Event()
        self.failed_starts = 0
        self.spawn_error = None
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name=f"supervise {self.options.name}"
        )

    async def _spawn(self) -> bool:
        out = self.options.stdout
        err: int | None = None if out is None else asyncio.subprocess.STDOUT
        piped: tuple[int, int] = ()  # type: ignore[assignment]
        try:
            if self.options.prepare is not None:
                await self.options.prepare()
            if self.options.output is not None:
                out, err, self._eof = await self.options.output.pipes()
                piped = (out, err)
            self._proc = await asyncio.create_subprocess_exec(
                *self.options.command,
                env=self.options.env,
                cwd=self.options.cwd,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                **lifetime.child_options(),  # own process group; SIGTERM when we die
            )
        except (OSError, RuntimeError) as exc:
            for fd in piped:
                os.close(fd)
            self.spawn_error = f"cannot start {self.options.command[0]!r}: {exc}"
            log.error("%s: %s", self.options.name, self.spawn_error)
            self._proc = None
            return False
        for fd in piped:  # the child has its copies; EOF comes when the last holder exits
            os.close(fd)
        self.spawn_error = None
        self.pid = self._proc.pid
        if self.options.pidfile:
            self.options.pidfile.write_text(str(self.pid))
        self.started_at = time.time()
        self.state = "running"
        log.info("%s started", self.options.name, extra={"pid": self.pid, "command": self.options.command})
        return True

    async def _run(self) -> None:
        opts = self.options
        while not self._stopping.is_set():
            self.state = "starting"
            began = time.monotonic()
            if await self._spawn():
                assert self._proc is not None
                rc = await self._proc.wait()
                await self._last_words()
                if self._stopping.is_set():
                    return  # stop() records the exit
                self.last_exit = {**describe_exit(rc), "at": time.time(), "expected": False}
                log.warning("%s exited unexpectedly", opts.name, extra={"pid": self.pid, **self.last_exit})
            quick = time.monotonic() - began < opts.start_secs
            if quick:
                self.failed_starts += 1
                if self.failed_starts > opts.start_retries:
                    self.state = "fatal"
                    log.error("%s failed %d starts in a row; giving up", opts.name, self.failed_starts)
                    return
                delay = min(opts.restart_delay * self.failed_starts, opts.backoff_max)
            else:
                self.failed_starts = 0
                delay = opts.restart_delay
            self.state = "backoff"
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._stopping.wait()
            if self._stopping.is_set():
                return
            self.restarts += 1

    async def stop(self, timeout: float | None = None) -> dict[str, Any] | None:
        """Intentional stop: SIGTERM the group, SIGKILL after `timeout` (default stop_timeout;
        0: SIGKILL at once, for fencing); returns the exit."""
        self._stopping.set()
        proc = self._proc
        grace = self.options.stop_timeout if timeout is None else timeout
        if proc is not None and proc.returncode is None:
            self.state = "stopping"
            self._signal(proc.pid, signal.SIGTERM if grace > 0 else signal.SIGKILL)
            try:
                async with asyncio.timeout(grace):
                    await proc.wait()
            except TimeoutError:
                log.warning(
                    "%s ignored SIGTERM for %ss; killing", self.options.name, self.options.stop_timeout
                )
                self._signal(proc.pid, signal.SIGKILL)
                await proc.wait()
            assert proc.returncode is not None
            await self._last_words()
            self.last_exit = {**describe_exit(proc.returncode), "at": time.time(), "expected": True}
        if proc is not None:
            # leftovers of the group (a child that forked and kept running)
            self._signal(proc.pid, signal.SIGKILL)
        while self._task is not None and not self._task.done():
            # a stop that came while the task was spawning did not see that child: end it too
            late = self._proc
            if late is not None and late is not proc and late.returncode is None:
                self._signal(late.pid, signal.SIGTERM if grace > 0 else signal.SIGKILL)
            done, _ = await asyncio.wait({self._task}, timeout=max(grace, 0.1))
            if not done and late is not None and late.returncode is None:
                self._signal(late.pid, signal.SIGKILL)
            proc = late if late is not None else proc
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._proc is not None and self._proc is not proc and self._proc.returncode is not None:
            self.last_exit = {**describe_exit(self._proc.returncode), "at": time.time(), "expected": True}
        self.state = "stopped"
        return self.last_exit

    async def _last_words(self, timeout: float = 1.0) -> None:
        """Let the reader take what the exited child wrote last (a crash message) before its
        exit is reported; a grandchild holding the pipe delays this by `timeout` at most."""
        if self._eof is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._eof), timeout)

    @staticmethod
    def _signal(pgid: int, sig: signal.Signals) -> None:
        lifetime.kill_group(pgid, sig)
