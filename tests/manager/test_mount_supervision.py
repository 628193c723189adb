"""JuiceFS supervised like the app (issue #21): a mount whose juicefs still runs but no longer
answers (SIGSTOP) is seen within seconds, the app is stopped while its files are gone, the
mount is made again and the app comes back; files written into the bare mount point while it
was unmounted are moved aside on the remount, not mounted over."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

from shoal.manager.juicefs import mount_type

from .conftest import needs_fuse, python_child

SLEEPER = python_child("import time\nwhile True: time.sleep(0.2)")


def _cfg(storage: dict, mount: Path) -> dict:
    return {"storage": storage, "stacks": ["juicefs"], "juicefs": {"mount_path": str(mount)}}


@needs_fuse
def test_stale_mount_is_detected_app_stopped_and_mount_remade(manager_factory, storage):
    m = manager_factory(command=SLEEPER, args=["--stop-timeout", "5"])
    mount = m.root / "mnt"
    stopped_pid = None
    with m:
        assert m.post("/config", _cfg(storage, mount)).status_code == 200
        st = m.wait(lambda s: s["process"]["running"], what="app running")
        fs = st["components"]["filesystem"]
        assert fs["state"] == "mounted"
        (mount / "keep.txt").write_text("kept in S3")
        os.sync()
        app_pid, jfs_pid = st["process"]["pid"], fs["pid"]
        try:
            # juicefs may serve FUSE from a child of the pid we know: stop its whole group
            os.killpg(jfs_pid, signal.SIGSTOP)
            stopped_pid = jfs_pid
            began = time.monotonic()
            st = m.wait(
                lambda s: s["components"]["filesystem"]["stale_detected"] >= 1,
                timeout=15,
                what="stale mount detected",
            )
            assert time.monotonic() - began < 10  # "within a few seconds" (probe 1 s + 2 s timeout)
            assert st["components"]["filesystem"]["last_stale"]["probe"] in ("hung", "dead")
            # the app does not run while its filesystem is gone
            st = m.wait(lambda s: s["process"]["pid"] != app_pid, timeout=30, what="app stopped")
            # juicefs is killed (never left stopped beside the new one) and the mount comes back
            st = m.wait(
                lambda s: (
                    s["components"]["filesystem"]["state"] == "mounted"
                    and s["components"]["filesystem"]["pid"] not in (None, jfs_pid)
                    and s["process"]["running"]
                ),
                timeout=60,
                what="remounted and the app running again",
            )
            assert not Path(f"/proc/{jfs_pid}").exists() or _is_zombie(jfs_pid)
            with contextlib.suppress(ProcessLookupError):  # nothing of the old group is left
                os.killpg(jfs_pid, 0)
                raise AssertionError("the stopped juicefs group still exists")
            assert st["process"]["pid"] != app_pid
            assert mount_type(mount) == "fuse.juicefs"
            assert (mount / "keep.txt").read_text() == "kept in S3"
            assert m.get("/health").json()["status"] == "healthy"
        finally:
            if stopped_pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(stopped_pid, signal.SIGCONT)
                    os.killpg(stopped_pid, signal.SIGKILL)


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True


@needs_fuse
def test_remount_moves_stray_files_aside(manager_factory, storage):
    m = manager_factory(command=SLEEPER)
    mount = m.root / "mnt"
    with m:
        assert m.post("/config", _cfg(storage, mount)).status_code == 200
        m.wait(lambda s: s["components"]["filesystem"]["state"] == "mounted", what="mounted")
        (mount / "in-juicefs.txt").write_text("mine")
    assert mount_type(mount) is None  # a clean stop unmounts
    # something wrote into the bare directory while the filesystem was not mounted
    (mount / "stray.txt").write_text("written through the mount point")
    (mount / "sub").mkdir()
    (mount / "sub" / "deep.txt").write_text("deep")
    m2 = manager_factory()  # the same directories, the saved configuration
    with m2:
        st = m2.wait(
            lambda s: s["components"]["filesystem"]["state"] == "mounted", timeout=60, what="remounted"
        )
        moved = st["components"]["filesystem"]["stray_files_moved"]
        assert len(moved) == 1 and moved[0]["count"] == 2
        assert sorted(moved[0]["entries"]) == ["stray", "sub"] or sorted(moved[0]["entries"]) == [
            "stray.txt",
            "sub",
        ]
        dest = Path(moved[0]["moved_to"])
        assert dest.parent == m2.root / "data" / "stray-files"
        assert (dest / "stray.txt").read_text() == "written through the mount point"
        assert (dest / "sub" / "deep.txt").read_text() == "deep"
        assert (mount / "in-juicefs.txt").read_text() == "mine"
        assert not (mount / "stray.txt").exists()
        assert "moved 2 entries" in m2.log_tail(200)
