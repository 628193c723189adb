"""Issue #21: one operation at a time, verified checkpoints, paths kept inside the manager.

Real `shoal serve manager` subprocesses on moto's S3 server (and JuiceFS for the filesystem
case): two concurrent restores give one 200 and one 409 and never hang what comes after; a
corrupt or incomplete checkpoint is refused with 409 before anything is stopped or changed;
checkpoints are listed and deleted; a mount path that escapes the manager's directories is 400.
"""

from __future__ import annotations

import concurrent.futures
import json
import sqlite3

from .conftest import needs_fuse, python_child
from .test_stacks import rows, write_rows

# stops slowly (2 s after SIGTERM), so a restore, which stops the app first, takes a while
SLOW_STOPPER = python_child(
    "import signal, time, sys\n"
    "signal.signal(signal.SIGTERM, lambda *a: (time.sleep(2), sys.exit(0)))\n"
    "while True: time.sleep(0.1)\n"
)


def configure_db(m, storage):
    r = m.post("/config", {"storage": storage, "stacks": ["db"]})
    assert r.status_code == 200, r.text


def test_two_concurrent_restores_one_runs_the_other_gets_409(manager_factory, storage):
    m = manager_factory(command=SLOW_STOPPER, args=["--stop-timeout", "10"])
    with m:
        configure_db(m, storage)
        db = m.data_dir / "database.sqlite"
        write_rows(db, "v1")
        assert m.post("/checkpoint", {"id": "cp"}).status_code == 200
        write_rows(db, "v2")
        m.wait(lambda s: s["process"]["running"], what="app running")
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            futures = [pool.submit(m.post, "/restore", {"id": "cp"}, 30) for _ in range(2)]
            answers = [f.result() for f in futures]
        codes = sorted(r.status_code for r in answers)
        assert codes == [200, 409], [r.text for r in answers]
        busy = next(r for r in answers if r.status_code == 409).json()["detail"]
        assert "busy" in busy and "restore" in busy
        assert rows(db) == ["v1"]
        # nothing is left stuck: the next operations run, and the app is back
        assert m.post("/checkpoint", {"id": "after"}, timeout=30).status_code == 200
        assert m.post("/restore", {"id": "after"}, timeout=30).status_code == 200
        m.wait(lambda s: s["process"]["running"], what="app running again")
        # a checkpoint while a restore runs is refused too, not queued
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            restore = pool.submit(m.post, "/restore", {"id": "cp"}, 30)
            m.wait(lambda s: s["process"]["state"] == "stopping", timeout=10, what="restore stopping the app")
            r = m.post("/checkpoint", {"id": "during"}, timeout=10)
            assert r.status_code == 409 and "restore" in r.json()["detail"]
            assert restore.result().status_code == 200


def test_a_corrupt_or_incomplete_checkpoint_is_refused_and_nothing_changes(manager_factory, storage):
    app = python_child("import time\nwhile True: time.sleep(1)")
    m = manager_factory(command=app)
    with m:
        configure_db(m, storage)
        db = m.data_dir / "database.sqlite"
        write_rows(db, *(f"row{i}" for i in range(200)))
        for cid in ("flipped", "gone", "rewritten", "good"):
            assert m.post("/checkpoint", {"id": cid}).status_code == 200
        write_rows(db, "later")
        live = rows(db)
        pid = m.wait(lambda s: s["process"]["running"], what="app")["process"]["pid"]
        root = m.tmp_dir / "checkpoints"

        snap = root / "flipped" / "database.sqlite"
        data = bytearray(snap.read_bytes())
        data[len(data) // 2] ^= 0xFF
        snap.write_bytes(bytes(data))
        r = m.post("/restore", {"id": "flipped"})
        assert r.status_code == 409 and "checksum" in r.json()["detail"], r.text

        (root / "gone" / "database.sqlite").unlink()
        r = m.post("/restore", {"id": "gone"})
        assert r.status_code == 409 and "database.sqlite is missing" in r.json()["detail"], r.text

        # garbage that matches a rewritten manifest still fails SQLite's integrity check
        snap = root / "rewritten" / "database.sqlite"
        data = bytearray(snap.read_bytes())
        data[4096 : 4096 * 2] = b"\xa5" * 4096
        snap.write_bytes(bytes(data))
        from shoal.manager import checkpoints

        meta = json.loads((root / "rewritten" / "metadata.json").read_text())
        meta["manifest"] = checkpoints.manifest(root / "rewritten")
        (root / "rewritten" / "metadata.json").write_text(json.dumps(meta))
        r = m.post("/restore", {"id": "rewritten"})
        assert r.status_code == 409 and "integrity" in r.json()["detail"], r.text

        # the live database and the app were not touched by any refused restore
        assert rows(db) == live
        st = m.status()["process"]
        assert st["pid"] == pid and st["running"]
        assert m.post("/restore", {"id": "good"}).status_code == 200
        assert "later" not in rows(db) and len(rows(db)) == 200


def test_checkpoints_are_listed_and_deleted(manager_factory, storage):
    with manager_factory() as m:
        configure_db(m, storage)
        write_rows(m.data_dir / "database.sqlite", "x")
        for cid in ("a", "b"):
            assert m.post("/checkpoint", {"id": cid}).status_code == 200
        body = m.get("/checkpoints").json()
        assert body["checkpoints"] == ["a", "b"]
        a = body["details"][0]
        assert a["id"] == "a" and a["database"] is True and a["files"] == 1 and a["bytes"] > 0
        r = httpx_delete(m, "/checkpoints/a")
        assert r.status_code == 200 and r.json() == {"id": "a", "deleted": True}
        assert httpx_delete(m, "/checkpoints/a").status_code == 404
        assert httpx_delete(m, "/checkpoints/a..b").status_code == 400
        assert m.post("/restore", {"id": "a"}).status_code == 404
        assert m.get("/checkpoints").json()["checkpoints"] == ["b"]
        assert not any(p.name.startswith(".a.") for p in (m.tmp_dir / "checkpoints").iterdir())
        assert m.post("/checkpoint", {"id": "a"}).status_code == 200  # the id is free again


def httpx_delete(m, path):
    import httpx

    return httpx.delete(m.url + path, timeout=30)


def test_config_paths_must_stay_in_the_managers_directories(manager_factory, storage, tmp_path):
    m = manager_factory()
    with m:
        (m.tmp_dir / "evil").symlink_to("/etc")
        for field, value in (
            ("mount_path", "../../../../etc"),
            ("mount_path", "/etc"),
            ("mount_path", str(m.tmp_dir)),
            ("mount_path", str(m.tmp_dir / "checkpoints" / "x")),
            ("cache_dir", "evil/cache"),
            ("cache_dir", str(tmp_path.parent)),
        ):
            cfg = {"storage": storage, "stacks": ["juicefs"], "juicefs": {field: value}}
            r = m.post("/config", cfg)
            assert r.status_code == 400, (field, value, r.text)
            assert r.json()["errors"][0]["field"] == f"juicefs.{field}", r.text
            assert m.get("/config").status_code == 404  # nothing saved
        assert not (m.tmp_dir / "config.json").exists()
    # a saved configuration that escapes (edited by hand) is not used either
    bad = {"storage": storage, "stacks": ["db"], "juicefs": {"mount_path": "/etc"}}
    (m.tmp_dir / "config.json").write_text(json.dumps(bad))
    with m:
        st = m.status()
        assert st["configured"] is False and "outside" in st["configuration"]["error"]


@needs_fuse
def test_a_checkpoint_missing_a_file_is_refused(manager_factory, storage):
    m = manager_factory()
    mount = m.tmp_dir / "mnt"
    with m:
        cfg = {"storage": storage, "stacks": ["db", "juicefs"], "juicefs": {"mount_path": str(mount)}}
        assert m.post("/config", cfg).status_code == 200, m.log_tail()
        (mount / "keep.txt").write_text("v1")
        (mount / "d").mkdir()
        (mount / "d" / "f.bin").write_bytes(b"x" * 1000)
        assert m.post("/checkpoint", {"id": "cp"}).status_code == 200
        (mount / "keep.txt").write_text("v2")
        (m.tmp_dir / "checkpoints" / "cp" / "mount" / "d" / "f.bin").unlink()
        r = m.post("/restore", {"id": "cp"})
        assert r.status_code == 409 and "mount/d/f.bin is missing" in r.json()["detail"], r.text
        assert (mount / "keep.txt").read_text() == "v2"
        conn = sqlite3.connect(m.data_dir / "database.sqlite")
        conn.close()
