"""Helpers for tests and benchmarks: ports, ASGI clients, `shoal serve` subprocesses."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import httpx

from shoal.runtime.lifetime import stop_group
from shoal.web.tls import client_verify

__all__ = ["ServiceProcess", "asgi_client", "free_port", "stop_group", "wait_http"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(
    url: str, timeout: float = 20.0, proc: subprocess.Popen | None = None, verify: Any = True
) -> httpx.Response:
    """Poll `url` until it answers (any status below 500); raise with the reason otherwise.
    `verify`: httpx's TLS verification (a CA file for an https URL)."""
    deadline = time.monotonic() + timeout
    last: Exception | str = "no answer"
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
        try:
            r = httpx.get(url, timeout=2.0, verify=verify)
            if r.status_code < 500:
                return r
            last = f"status {r.status_code}"
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer within {timeout} s: {last}")


class ServiceProcess:
    """`shoal serve <service>` in a subprocess on a free port, stopped by PID at the end."""

    def __init__(
        self,
        service: str,
        data_dir: str | Path,
        args: Sequence[str] = (),
        port: int | None = None,
        env: dict[str, str] | None = None,
        health_path: str = "/health",
        log_path: str | Path | None = None,
        tls_ca: str | Path | None = None,
    ) -> None:
        self.service = service
        self.tls_ca = str(tls_ca) if tls_ca else None  # serve https (the args carry --tls-cert/--tls-key)
        self.data_dir = Path(data_dir)
        self.args = list(args)
        self.port = port or free_port()
        self.env = {**os.environ, "SHOAL_ACCESS_LOG": "0", **(env or {})}
        self.health_path = health_path
        self.log_path = Path(log_path) if log_path else self.data_dir.parent / f"{service}-{self.port}.log"
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls_ca else 'http'}://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "shoal",
            "serve",
            self.service,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--data-dir",
            str(self.data_dir),
            *self.args,
        ]

    def start(self, timeout: float = 30.0) -> ServiceProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # the child keeps its own copy
        self.proc = subprocess.Popen(
            self.command(), stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
        )
        log.close()
        try:
            wait_http(self.url + self.health_path, timeout, self.proc, verify=client_verify(self.tls_ca))
        except Exception as exc:
            self.stop()
            raise RuntimeError(f"{self.service} did not start: {exc}\n{self.log_tail()}") from exc
        return self

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def kill(self) -> None:
        """SIGKILL the whole process group (server and workers), as a crash would."""
        if self.proc and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM, then SIGKILL after `timeout`; returns the exit code."""
        if not self.proc:
            return None
        stop_group(self.proc, timeout)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # stray workers
        return self.proc.returncode

    def __enter__(self) -> ServiceProcess:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


@contextlib.asynccontextmanager
async def asgi_client(app: Any, base_url: str = "http://test") -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client bound to an ASGI app in-process, with the app's lifespan run around it."""
    startup_done: asyncio.Future = asyncio.get_running_loop().create_future()
    shutdown_done: asyncio.Future = asyncio.get_running_loop().create_future()
    inbox: asyncio.Queue = asyncio.Queue()
    await inbox.put({"type": "lifespan.startup"})

    async def receive() -> dict:
        return await inbox.get()

    async def send(message: dict) -> None:
        kind = message["type"]
        if kind.startswith("lifespan.startup"):
            startup_done.set_result(message)
        elif kind.startswith("lifespan.shutdown"):
            shutdown_done.set_result(message)

    task = asyncio.create_task(
        app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, receive, send)
    )
    result = await startup_done
    if result["type"] != "lifespan.startup.complete":
        raise RuntimeError(f"app startup failed: {result.get('message')}")
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=base_url) as client:
            yield client
    finally:
        await inbox.put({"type": "lifespan.shutdown"})
        await shutdown_done
        await task
