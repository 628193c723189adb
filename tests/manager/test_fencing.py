"""Issue #21: fencing and handover, against real moto S3, litestream and JuiceFS.

- A handover to a standby whose local database is stale loses no committed row: the new
  holder restores from the lineage the lease names (verified), and the replica it then writes
  (its own lineage, `litestream/t<token>/`) holds every row.
- An S3 outage longer than the lease TTL: the holder cannot renew, so it stops the app,
  litestream and juicefs before its lease could expire anywhere; when S3 returns it takes
  the lease back, mounts again and restarts the app by itself.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

from shoal.manager.config import Storage
from shoal.manager.juicefs import mount_type
from shoal.manager.replication import litestream_binary
from shoal.manager.s3 import tool_env
from shoal.testing.s3 import S3Server

from .conftest import needs_fuse
from .test_lifetime import SLEEPER, alive, all_up, child_pids, wait_until
from .test_stacks import caught_up, rows, write_rows


def replica_rows(storage: dict, key: str, out) -> list[str]:
    """Restore the replica at `key` with litestream into `out` and read its rows."""
    cfg = out.with_suffix(".yml")
    cfg.write_text(
        "dbs:\n"
        f"  - path: {out.with_name('ghost.sqlite')}\n"
        "    replicas:\n"
        "      - type: s3\n"
        f"        bucket: {storage['bucket']}\n"
        f"        path: {key}\n"
        f"        endpoint: {storage['endpoint']}\n"
        "        region: us-east-1\n"
        f"        access-key-id: {storage['access_key']}\n"
        f"        secret-access-key: {storage['secret_key']}\n"
        "        force-path-style: true\n"
    )
    env = tool_env(Storage(**storage))
    r = subprocess.run(
        [
            litestream_binary(),
            "restore",
            "-config",
            str(cfg),
            "-o",
            str(out),
            str(out.with_name("ghost.sqlite")),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    return rows(out)


def replicated_since(t: float):
    """caught up, by a measurement taken after wall-clock time `t` (not a stale one)."""

    def check(st: dict) -> bool:
        dbs = st["components"].get("replication", {}).get("databases") or {}
        return bool(caught_up(st) and all(d["measured_at"] > t for d in dbs.values()))

    return check


def lease_of(m) -> dict:
    return m.status()["components"]["lease"]


def test_handover_to_a_stale_standby_loses_no_committed_row(manager_factory, storage, tmp_path):
    cfg = {"storage": storage, "stacks": ["leaser", "db"], "lease": {"ttl_seconds": 3}}
    a, b = manager_factory("a", command=SLEEPER), manager_factory("b", command=SLEEPER)
    with a:
        assert a.post("/config", cfg).status_code == 200
        write_rows(a.data_dir / "database.sqlite", "r1")
        a.wait(replicated_since(time.time()), timeout=30, what="a replicated r1")
        with b:
            assert b.post("/config", cfg).status_code == 200
            assert lease_of(b)["role"] == "standby" and not b.status()["process"]["running"]
            assert a.post("/release-lease").status_code == 200
            st = b.wait(
                lambda s: s["components"]["lease"]["held"] and caught_up(s), timeout=30, what="b writer"
            )
            assert st["components"]["lease"]["token"] == 2 and st["process"]["running"]
            assert not a.status()["process"]["running"]  # a released: its app is stopped
            write_rows(b.data_dir / "database.sqlite", "r2")
            b.wait(replicated_since(time.time()), timeout=30, what="b replicated r2")
            # a restarts as a standby; its database still has only r1 (stale)
            a.stop()
            with a:
                assert rows(a.data_dir / "database.sqlite") == ["r1"]
                assert lease_of(a)["role"] == "standby"
                b.kill()  # the holder dies; its lease expires; a takes over
                st = a.wait(
                    lambda s: s["components"]["lease"]["held"] and caught_up(s),
                    timeout=40,
                    what="a takes over",
                )
                rep = st["components"]["replication"]
                assert rows(a.data_dir / "database.sqlite") == ["r1", "r2"]  # restored, not kept
                assert rep["verified_restores"] and rep["verified_restores"][0]["integrity"] == "ok"
                assert (a.data_dir / "database.sqlite.stale").exists()
                token = st["components"]["lease"]["token"]
                assert token == 3 and st["components"]["lease"]["replica_token"] == 3
                write_rows(a.data_dir / "database.sqlite", "r3")
                a.wait(replicated_since(time.time()), timeout=30, what="a replicated r3")
                key = rep["replicas"]["database.sqlite"]
                assert key.endswith("/t3/database.sqlite")
                assert replica_rows(storage, key, tmp_path / "check.sqlite") == ["r1", "r2", "r3"]
                # the older lineages were never written over by the new holder
                old = replica_rows(storage, key.replace("/t3/", "/t1/"), tmp_path / "t1.sqlite")
                assert old == ["r1"]


@needs_fuse
def test_s3_outage_longer_than_the_ttl_fences_in_time_and_recovers(manager_factory, tmp_path):
    ttl = 4.0
    s3 = S3Server().start(tmp_path / "s3")
    try:
        storage = s3.storage_config(s3.create_bucket("outage"), key_prefix="n1")
        m = manager_factory(command=SLEEPER)
        mount = m.root / "mount"
        cfg = {
            "storage": storage,
            "stacks": ["leaser", "db", "juicefs"],
            "juicefs": {"mount_path": str(mount)},
            "lease": {"ttl_seconds": ttl},
        }
        with m:
            assert m.post("/config", cfg).status_code == 200
            st = m.wait(all_up, timeout=60, what="everything up")
            pids = child_pids(st)
            (mount / "kept.txt").write_text("before the outage")
            os.sync()
            os.kill(s3.proc.pid, signal.SIGSTOP)
            stopped = time.monotonic()
            try:
                # no renewal can succeed from now on, so another manager could take over at
                # stopped + ttl at the earliest: every writer must be gone before that
                fenced = wait_until(
                    lambda: not any(alive(p) for p in pids.values()) and mount_type(mount) is None, ttl
                )
                elapsed = time.monotonic() - stopped
                assert fenced, (
                    {k: alive(p) for k, p in pids.items()},
                    mount_type(mount),
                    m.status()["configuration"],
                    m.log_tail(60),
                )
                assert elapsed < ttl
                st = m.status()
                assert st["configuration"]["fenced"] and st["configuration"]["state"] == "fenced"
                assert not st["process"]["running"]
                health = m.get("/health").json()
                assert health["status"] == "degraded" and "fenced" in health["problems"]["lease"]
                assert not any(mount.iterdir())  # nothing written into the bare mount point
                metrics = m.get("/metrics").text
                assert (
                    "shoal_manager_fenced 1.0" in metrics
                    and "shoal_manager_filesystem_mounted 0.0" in metrics
                )
                time.sleep(ttl)  # longer than the TTL in all
                assert not m.status()["process"]["running"]
            finally:
                os.kill(s3.proc.pid, signal.SIGCONT)
            st = m.wait(all_up, timeout=90, what="the writer back after S3 returned")
            assert (mount / "kept.txt").read_text() == "before the outage"
            assert st["configuration"]["fenced"] is None and st["configuration"]["fences"] >= 1
            metrics = m.get("/metrics").text
            for line in (
                "shoal_manager_fenced 0.0",
                "shoal_manager_lease_held 1.0",
                "shoal_manager_filesystem_mounted 1.0",
            ):
                assert line in metrics, metrics
            assert 'shoal_manager_child_running{child="litestream"} 1.0' in metrics
            assert wait_until(lambda: m.get("/health").json()["status"] == "healthy", 15), m.get(
                "/health"
            ).json()
    finally:
        s3.stop()
