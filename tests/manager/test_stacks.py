"""The stacks against real components: moto's S3 server, litestream, JuiceFS on FUSE."""

from __future__ import annotations

import sqlite3
import time

import pytest

from shoal.manager.juicefs import mount_type

from .conftest import needs_fuse, python_child

SLEEPER = python_child("import time\nwhile True: time.sleep(1)")


def write_rows(db, *values):
    conn = sqlite3.connect(db, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE IF NOT EXISTS items (v TEXT)")
    conn.executemany("INSERT INTO items VALUES (?)", [(v,) for v in values])
    conn.commit()
    conn.close()


def rows(db):
    conn = sqlite3.connect(db, timeout=30)
    try:
        return sorted(r[0] for r in conn.execute("SELECT v FROM items"))
    finally:
        conn.close()


def caught_up(st):
    rep = st["components"].get("replication", {})
    dbs = rep.get("databases") or {}
    return rep.get("running") and dbs and all(d["caught_up"] and d["local_txid"] > 0 for d in dbs.values())


def test_db_stack_replicates_and_restores_on_a_fresh_machine(manager_factory, storage, s3_server):
    m = manager_factory(command=SLEEPER)
    with m:
        r = m.post("/config", {"storage": storage, "stacks": ["db"]})
        assert r.status_code == 200, r.text
        st = r.json()
        assert st["components"]["database"]["ok"] is True
        db = m.data_dir / "database.sqlite"
        assert db.exists() and (m.data_dir / "database.sqlite-litestream").is_dir()
        assert (m.tmp_dir / "config.json").exists()
        view = m.get("/config").json()
        assert view["storage"]["secret_key"] == "***" and view["stacks"] == ["db"]
        assert m.post("/config", {"storage": storage, "stacks": ["db"]}).status_code == 400  # already
        write_rows(db, "a", "b", "c")
        st = m.wait(caught_up, timeout=30, what="replication caught up")
        assert st["components"]["replication"]["lag_seconds"] == 0
        keys = [o["Key"] for o in s3_server.client().list_objects_v2(Bucket=storage["bucket"])["Contents"]]
        assert any(k.startswith("node1/litestream/database.sqlite/") for k in keys)
    # a fresh machine: the data directory is gone; the configuration is kept in tmp/
    import shutil

    shutil.rmtree(m.data_dir)
    with m:
        st = m.wait(lambda s: s["components"].get("database", {}).get("ok"), what="database back")
        assert rows(m.data_dir / "database.sqlite") == ["a", "b", "c"]
        assert st["components"]["replication"]["restored_from_replica"]
        assert m.get("/config").status_code == 200


def test_acknowledged_config_and_checkpoint_survive_kill_9(manager_factory, storage):
    m = manager_factory()
    with m:
        assert m.post("/config", {"storage": storage, "stacks": ["db"]}).status_code == 200
        write_rows(m.data_dir / "database.sqlite", "x")
        assert m.post("/checkpoint", {"id": "k9"}).status_code == 200
        m.kill()
    with m:
        assert m.get("/config").status_code == 200
        assert "k9" in m.status()["checkpoints"]
        assert m.post("/restore", {"id": "k9"}).status_code == 200


def test_checkpoint_errors(manager_factory, storage):
    with manager_factory() as m:
        assert m.post("/config", {"storage": storage, "stacks": ["db"]}).status_code == 200
        for bad in ("", "../x", "a/b", "..", ".hidden", "x" * 200, "a..b"):
            r = m.post("/checkpoint", {"id": bad})
            assert r.status_code == 400, (bad, r.text)
        assert m.post("/checkpoint", {"id": 5}).status_code == 400
        assert m.post("/checkpoint", {}).status_code == 400
        assert m.post("/checkpoint", {"id": "one"}).status_code == 200
        assert m.post("/checkpoint", {"id": "one"}).status_code == 409
        r = m.post("/restore", {"id": "nonexistent"})
        assert r.status_code == 404 and "not found" in r.json()["detail"]
        assert m.post("/restore", {"id": "../etc"}).status_code == 400
        r = m.post("/release-lease")  # no leaser stack: configured, holding no lease (#24)
        assert r.status_code == 200 and r.json() == {"released": False, "lease": None}


def test_checkpoint_is_consistent_while_the_app_writes(manager_factory, storage):
    """The app commits rows in a loop; every checkpoint holds a prefix of them, never a torn state."""
    with manager_factory() as m:
        assert m.post("/config", {"storage": storage, "stacks": ["db"]}).status_code == 200
    db = m.data_dir / "database.sqlite"
    writer = python_child(
        "import sqlite3, time\n"
        f"c = sqlite3.connect({str(db)!r}, timeout=30, isolation_level=None)\n"
        "c.execute('CREATE TABLE IF NOT EXISTS seq (n INTEGER PRIMARY KEY, total INTEGER)')\n"
        "n = (c.execute('SELECT max(n) FROM seq').fetchone()[0] or 0)\n"
        "while True:\n"
        "    n += 1\n"
        "    c.execute('BEGIN'); c.execute('INSERT INTO seq VALUES (?, ?)', (n, n * (n + 1) // 2)); c.execute('COMMIT')\n"
        "    time.sleep(0.001)\n"
    )
    m2 = manager_factory("m1", command=writer)
    with m2:
        time.sleep(1.0)
        for i in range(3):
            assert m2.post("/checkpoint", {"id": f"c{i}"}).status_code == 200
            time.sleep(0.3)
        for i in range(3):
            snap = sqlite3.connect(m2.tmp_dir / "checkpoints" / f"c{i}" / "database.sqlite")
            count, top = snap.execute("SELECT count(*), max(n) FROM seq").fetchone()
            assert count == top and count > 0  # rows 1..top, none missing
            assert snap.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            snap.close()


@needs_fuse
def test_full_stack_checkpoint_restore_round_trip(manager_factory, storage):
    m = manager_factory(command=SLEEPER)
    mount = m.root / "mnt"
    cfg = {"storage": storage, "stacks": ["leaser", "db", "juicefs"], "juicefs": {"mount_path": str(mount)}}
    with m:
        r = m.post("/config", cfg)
        assert r.status_code == 200, r.text
        comps = r.json()["components"]
        assert comps["filesystem"]["mounted"] is True, comps
        assert comps["lease"]["held"] is True and comps["lease"]["token"] == 1
        assert mount_type(mount) == "fuse.juicefs"
        db = m.data_dir / "database.sqlite"
        write_rows(db, "before")
        (mount / "test.txt").write_text("test")
        (mount / "dir").mkdir()
        (mount / "dir" / "nested.bin").write_bytes(b"\x00\x01" * 5000)
        (mount / "dir" / "nested.bin").chmod(0o640)
        # concurrent access: ten writers at once
        import threading

        threads = [
            threading.Thread(target=(mount / f"test{i}.txt").write_text, args=(f"test{i}",))
            for i in range(10)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(p.name for p in mount.glob("test*.txt"))[:3] == ["test.txt", "test0.txt", "test1.txt"]
        assert m.post("/checkpoint", {"id": "test2"}).status_code == 200
        cp = m.tmp_dir / "checkpoints" / "test2"
        assert (cp / "mount" / "test.txt").read_text() == "test"
        assert (cp / "database.sqlite").exists() and (cp / "metadata.json").exists()
        assert not (cp / "mount" / ".stats").exists()  # JuiceFS's own files are not data
        # change everything, then restore
        write_rows(db, "after")
        (mount / "test.txt").write_text("changed")
        (mount / "new.txt").write_text("new")
        (mount / "dir" / "nested.bin").unlink()
        pid = m.status()["process"]["pid"]
        r = m.post("/restore", {"id": "test2"})
        assert r.status_code == 200, r.text
        assert r.json()["database"] and r.json()["filesystem"]
        assert rows(db) == ["before"]
        assert (mount / "test.txt").read_text() == "test"
        assert not (mount / "new.txt").exists()
        nested = mount / "dir" / "nested.bin"
        assert nested.read_bytes() == b"\x00\x01" * 5000 and nested.stat().st_mode & 0o777 == 0o640
        st = m.wait(
            lambda s: s["process"]["running"] and s["process"]["pid"] != pid, what="process restarted"
        )
        assert st["process"]["restarts"] == 0  # an intentional stop and start, not a crash restart
        m.wait(caught_up, timeout=30, what="both databases replicated")
    # clean shutdown unmounted it; a restart mounts the same filesystem again
    assert mount_type(mount) is None
    with m:
        m.wait(lambda s: s["components"]["filesystem"]["mounted"], timeout=60, what="remount")
        assert (mount / "test.txt").read_text() == "test"


@needs_fuse
def test_interrupted_filesystem_restore_rolls_back_or_forward(manager_factory, storage):
    from shoal.manager import checkpoints

    m = manager_factory()
    mount = m.root / "mnt"
    with m:
        cfg = {"storage": storage, "stacks": ["juicefs"], "juicefs": {"mount_path": str(mount)}}
        assert m.post("/config", cfg).status_code == 200
        (mount / "f.txt").write_text("v1")
        assert m.post("/checkpoint", {"id": "v1"}).status_code == 200
        (mount / "f.txt").write_text("v2")
        # a crash while copying (no READY): the current tree stays as it was
        (mount / checkpoints.JOURNAL / "new").mkdir(parents=True)
        (mount / checkpoints.JOURNAL / "new" / "f.txt").write_text("partial")
        assert checkpoints.recover(mount) == "rolled back"
        assert (mount / "f.txt").read_text() == "v2"
        # a crash in the middle of the swap (READY, old entries moved): finishing gives v1
        journal = mount / checkpoints.JOURNAL
        (journal / "new").mkdir(parents=True)
        (journal / "new" / "f.txt").write_text("v1")
        (journal / "READY").write_text("v1")
        (journal / "old").mkdir()
        (mount / "f.txt").rename(journal / "old" / "f.txt")
        (journal / "OLD_MOVED").write_text("")
        assert checkpoints.recover(mount) == "rolled forward"
        assert (mount / "f.txt").read_text() == "v1" and not journal.exists()


@needs_fuse
def test_mount_failure_is_reported_in_status(manager_factory, storage):
    m = manager_factory()
    mount = m.root / "busy"
    mount.mkdir(parents=True)
    (mount / "existing").write_text("do not hide me")
    with m:
        cfg = {"storage": storage, "stacks": ["juicefs"], "juicefs": {"mount_path": str(mount)}}
        r = m.post("/config", cfg)
        assert r.status_code == 200
        fs = r.json()["components"]["filesystem"]
        assert fs["mounted"] is False and fs["state"] == "error" and "not empty" in fs["error"]
        assert m.post("/checkpoint", {"id": "x"}).status_code == 409


def test_second_manager_waits_for_the_lease(manager_factory, storage):
    cfg = {"storage": storage, "stacks": ["leaser", "db"], "lease": {"ttl_seconds": 3}}
    a, b = manager_factory("a"), manager_factory("b")
    with a, b:
        assert a.post("/config", cfg).status_code == 200
        assert a.status()["components"]["lease"]["role"] == "writer"
        assert b.post("/config", cfg).status_code == 200
        st = b.status()["components"]
        assert (
            st["lease"]["role"] == "standby"
            and st["lease"]["current_holder"] == a.status()["components"]["lease"]["holder"]
        )
        assert st["replication"]["running"] is False
        time.sleep(4)  # longer than the TTL: a keeps renewing, so b must still wait
        assert b.status()["components"]["lease"]["held"] is False
        write_rows(a.data_dir / "database.sqlite", "from-a")
        a.wait(caught_up, timeout=30, what="a replicated")
        r = a.post("/release-lease")
        assert r.status_code == 200 and r.json()["released"] is True
        assert a.status()["components"]["lease"]["role"] == "released"
        st = b.wait(lambda s: s["components"]["lease"]["held"], timeout=20, what="b takes over")
        assert st["components"]["lease"]["token"] == 2  # fencing token moved on
        b.wait(lambda s: s["components"].get("database", {}).get("ok"), what="b's database")
        assert rows(b.data_dir / "database.sqlite") == ["from-a"]  # restored from a's replica


def test_lease_taken_over_after_the_holder_dies(manager_factory, storage):
    cfg = {"storage": storage, "stacks": ["leaser"], "lease": {"ttl_seconds": 2}}
    a, b = manager_factory("a"), manager_factory("b")
    with a, b:
        assert a.post("/config", cfg).status_code == 200
        assert b.post("/config", cfg).status_code == 200
        assert b.status()["components"]["lease"]["held"] is False
        a.kill()
        st = b.wait(lambda s: s["components"]["lease"]["held"], timeout=20, what="takeover after expiry")
        assert st["components"]["lease"]["token"] == 2


if __name__ == "__main__":
    pytest.main([__file__])
