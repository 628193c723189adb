"""Issue #18: every child dies with the manager, and a hung S3 is visible, not contagious.

Real components: moto's S3 server, litestream, JuiceFS on FUSE, `shoal serve manager` as a
subprocess. A `kill -9` of the manager's main pid must take the app, litestream and juicefs
with it (PR_SET_PDEATHSIG), free the port and leave no mount; a SIGSTOPped S3 server must
show in /health as `degraded` (HTTP 200) while every route keeps answering.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from shoal.manager.juicefs import mount_type
from shoal.runtime import ports
from shoal.testing.s3 import S3Server

from .conftest import needs_fuse, python_child

SLEEPER = python_child("import time\nwhile True: time.sleep(1)")
DEATH_WAIT = 2.0  # the bound: everything of a killed manager is gone within 2 s


def alive(pid: int) -> bool:
    """A pid that runs (a zombie nobody reaped yet has ended: it holds no port, mount or lease)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def descendants(root: int) -> set[int]:
    """Every live process below `root` (by parent pid), whatever its session or group."""
    parents: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                stat = Path(f"/proc/{entry.name}/stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found: set[int] = set()
    frontier = {root}
    while frontier:
        frontier = {pid for pid, ppid in parents.items() if ppid in frontier} - found
        found |= frontier
    return {pid for pid in found if alive(pid)}


def in_proc_mounts(path: Path) -> bool:
    target = os.path.realpath(path)
    with open("/proc/mounts") as f:
        return any(line.split()[1] == target for line in f)


def wait_until(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)


def full_config(storage: dict, mount: Path) -> dict:
    return {
        "storage": storage,
        "stacks": ["leaser", "db", "juicefs"],
        "juicefs": {"mount_path": str(mount)},
        "lease": {"ttl_seconds": 5},
    }


def all_up(st: dict) -> bool:
    c = st["components"]
    return bool(
        st["process"]["running"]
        and c.get("replication", {}).get("running")
        and c.get("filesystem", {}).get("mounted")
        and c["filesystem"].get("pid")
        and c.get("lease", {}).get("held")
    )


def child_pids(st: dict) -> dict[str, int]:
    c = st["components"]
    return {
        "app": st["process"]["pid"],
        "litestream": c["replication"]["pid"],
        "juicefs": c["filesystem"]["pid"],
    }


@needs_fuse
@pytest.mark.parametrize("victim", ["main pid", "process group"])
def test_kill_9_of_the_manager_takes_every_child_with_it(manager_factory, storage, victim):
    """`main pid`: the worker notices its parent is gone and may still run a short shutdown;
    `process group`: the worker dies at once too (an OOM kill), only PDEATHSIG is left."""
    m = manager_factory(command=SLEEPER)
    mount = m.root / "mount"
    with m:
        assert m.post("/config", full_config(storage, mount)).status_code == 200
        st = m.wait(all_up, timeout=60, what="app, litestream, juicefs and the lease")
        pids = child_pids(st)
        (mount / "kept.txt").write_text("written before the kill")
        tree = descendants(m.proc.pid)
        assert set(pids.values()) <= tree, (pids, tree)
        assert mount_type(mount) == "fuse.juicefs"

        if victim == "main pid":
            os.kill(m.proc.pid, signal.SIGKILL)
        else:
            os.killpg(m.proc.pid, signal.SIGKILL)  # the children lead groups of their own
        m.proc.wait(10)
        gone = wait_until(
            lambda: (
                not any(alive(p) for p in tree) and not ports.listeners(m.port) and not in_proc_mounts(mount)
            ),
            DEATH_WAIT,
        )
        left = {p: Path(f"/proc/{p}/cmdline").read_bytes()[:80] for p in tree if alive(p)}
        assert gone, f"{DEATH_WAIT} s after kill -9: alive {left}, port {ports.listeners(m.port)}, " + (
            f"mounted={in_proc_mounts(mount)}\n{m.log_tail()}"
        )

    # a restart on the same data dir takes the lease back and mounts again, data intact
    with m:
        st = m.wait(all_up, timeout=60, what="everything back after the restart")
        new = child_pids(st)
        assert not set(new.values()) & set(pids.values())
        assert (mount / "kept.txt").read_text() == "written before the kill"
        assert m.get("/health").json()["status"] == "healthy"


@needs_fuse
def test_a_dead_fuse_mount_is_cleared_at_the_next_start(manager_factory, storage):
    """juicefs SIGKILLed together with its manager leaves a dead mount ("Transport endpoint is
    not connected"); the next start unmounts it and mounts afresh."""
    m = manager_factory(command=SLEEPER)
    mount = m.root / "mount"
    with m:
        assert m.post("/config", full_config(storage, mount)).status_code == 200
        st = m.wait(all_up, timeout=60, what="everything up")
        pids = child_pids(st)
        (mount / "kept.txt").write_text("flushed at close")
        worker = int(Path(f"/proc/{pids['app']}/stat").read_text().rsplit(")", 1)[1].split()[1])
        tree = descendants(m.proc.pid)
        os.kill(worker, signal.SIGSTOP)  # the manager can neither notice nor clean up
        try:
            os.killpg(pids["juicefs"], signal.SIGKILL)  # no SIGTERM: juicefs cannot unmount
            assert wait_until(lambda: not alive(pids["juicefs"]), 5)
        finally:
            m.kill()  # SIGKILL to the manager's group (a stopped worker dies too)
        assert wait_until(lambda: not any(alive(p) for p in tree), DEATH_WAIT)
        assert in_proc_mounts(mount), "the premise: a dead mount is left"
        with pytest.raises(OSError):
            os.stat(mount)

    with m:
        st = m.wait(all_up, timeout=60, what="mounted again")
        fs = st["components"]["filesystem"]
        assert fs["stale_mounts_cleared"] == 1 and fs["state"] == "mounted"
        assert (mount / "kept.txt").read_text() == "flushed at close"
        assert "left at" in m.log_tail(200)


@needs_fuse
def test_juicefs_that_dies_is_remounted(manager_factory, storage):
    m = manager_factory(command=SLEEPER)
    mount = m.root / "mount"
    with m:
        assert m.post("/config", full_config(storage, mount)).status_code == 200
        old = child_pids(m.wait(all_up, timeout=60, what="everything up"))["juicefs"]
        (mount / "a.txt").write_text("a")
        os.killpg(old, signal.SIGKILL)
        st = m.wait(
            lambda s: all_up(s) and s["components"]["filesystem"]["pid"] not in (None, old),
            timeout=30,
            what="juicefs restarted",
        )
        fs = st["components"]["filesystem"]
        assert fs["restarts"] == 1 and fs["stale_mounts_cleared"] >= 1
        assert (mount / "a.txt").read_text() == "a"


def test_a_fatal_process_is_not_healthy(manager_factory):
    fail = python_child("raise SystemExit(5)")
    with manager_factory(command=fail, args=["--restart-delay", "0.1", "--start-retries", "1"]) as m:
        m.wait(lambda s: s["process"]["state"] == "fatal", what="fatal")
        r = m.get("/health")
        assert r.status_code == 200  # degraded, not dead: `shoal up` must not restart the manager
        body = r.json()
        assert body["status"] == "degraded"
        assert "process" in body["problems"] and "code': 5" in body["problems"]["process"]


@needs_fuse
def test_a_hung_s3_shows_as_degraded_and_hangs_no_route(manager_factory, tmp_path):
    s3 = S3Server().start(tmp_path / "s3")
    try:
        storage = s3.storage_config(s3.create_bucket("hung-s3"), key_prefix="n1")
        m = manager_factory(command=SLEEPER)
        mount = m.root / "mount"
        with m:
            cfg = {"storage": storage, "stacks": ["db", "juicefs"], "juicefs": {"mount_path": str(mount)}}
            assert m.post("/config", cfg).status_code == 200
            m.wait(lambda s: s["components"]["filesystem"]["mounted"], timeout=60, what="mounted")
            health = httpx.get(m.url + "/health", timeout=2).json()
            assert health["status"] == "healthy", health

            os.kill(s3.proc.pid, signal.SIGSTOP)
            try:
                stopped = time.monotonic()
                body: dict = {}
                while time.monotonic() - stopped < 3.0:
                    body = httpx.get(m.url + "/health", timeout=2).json()  # never slower than up's probe
                    if body["status"] == "degraded":
                        break
                    time.sleep(0.1)
                assert body["status"] == "degraded", body
                assert "S3" in body["problems"]["s3"] and str(s3.port) in body["problems"]["s3"]
                # the other routes answer at once
                for path in ("/", "/config", "/checkpoints", "/health"):
                    assert httpx.get(m.url + path, timeout=2).status_code == 200, path
                # a checkpoint of a filesystem whose data is in the hung S3 fails fast and says so
                r = httpx.post(m.url + "/checkpoint", json={"id": "while-hung"}, timeout=5)
                assert r.status_code == 503 and "S3" in r.json()["detail"], r.text
            finally:
                os.kill(s3.proc.pid, signal.SIGCONT)
            assert wait_until(lambda: m.get("/health").json()["status"] == "healthy", 15), m.get(
                "/health"
            ).json()
            assert m.post("/checkpoint", {"id": "after"}).status_code == 200
    finally:
        s3.stop()
