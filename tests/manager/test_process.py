"""`shoal serve manager` as a real process: unconfigured start, supervision, signals, forwarding."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import httpx

from shoal.testing import free_port, wait_http

from .conftest import python_child

SLEEPER = python_child("import time\nwhile True: time.sleep(1)")


def test_unconfigured_start(manager_factory):
    m = manager_factory(command=SLEEPER)
    assert not m.tmp_dir.exists()
    with m:
        r = m.get("/")
        assert r.status_code == 200
        st = r.json()
        assert st["configured"] is False and st["components"] == {} and st["checkpoints"] == []
        assert m.get("/config").status_code == 404
        assert m.get("/config").json() == {"detail": "not configured"}
        assert m.data_dir.is_dir() and m.tmp_dir.is_dir()
        # operations that need a configuration are refused with 400, in the {"detail"} envelope
        for path, body in (("/checkpoint", {"id": "a"}), ("/restore", {"id": "a"}), ("/release-lease", None)):
            r = m.post(path, body)
            assert r.status_code == 400, (path, r.text)
            assert "not configured" in r.json()["detail"]


def test_invalid_configuration_is_rejected_and_not_saved(manager_factory, storage):
    with manager_factory() as m:
        r = m.post("/config", {"invalid": True})
        assert r.status_code == 400
        body = r.json()
        assert body["detail"].startswith("invalid configuration")
        assert body["errors"] and body["errors"][0]["field"] == ""
        bad = {"storage": {**storage, "endpoint": "nope"}, "stacks": ["db", "db", "x"]}
        r = m.post("/config", bad)
        assert r.status_code == 400
        assert {e["field"] for e in r.json()["errors"]} == {"storage.endpoint", "stacks[1]", "stacks[2]"}
        for raw in (b"", b"{", b"[]", b"null"):
            r = httpx.post(m.url + "/config", content=raw)
            assert r.status_code == 400, raw
        assert not (m.tmp_dir / "config.json").exists()
        assert m.get("/config").status_code == 404
        assert m.status()["configured"] is False


def test_killed_child_is_restarted_after_the_delay(manager_factory):
    with manager_factory(command=SLEEPER, args=["--restart-delay", "1", "--start-secs", "0.2"]) as m:
        st = m.wait(lambda s: s["process"]["running"], what="child running")
        pid = st["process"]["pid"]
        assert pid and st["process"]["restarts"] == 0
        time.sleep(0.5)
        os.kill(pid, signal.SIGTERM)  # the spec's `kill <PID>`
        killed = time.monotonic()
        st = m.wait(lambda s: s["process"]["running"] and s["process"]["pid"] != pid, what="restart")
        assert time.monotonic() - killed >= 0.9
        assert st["process"]["restarts"] == 1
        assert st["process"]["last_exit"]["signal"] == "SIGTERM"
        assert st["process"]["last_exit"]["expected"] is False


def test_intentional_stop_is_not_restarted_and_start_resumes(manager_factory):
    with manager_factory(command=SLEEPER, args=["--restart-delay", "0.2"]) as m:
        st = m.wait(lambda s: s["process"]["running"])
        pid = st["process"]["pid"]
        r = m.post("/process/stop")
        assert r.status_code == 200 and r.json()["running"] is False
        time.sleep(1.0)
        st = m.status()["process"]
        assert st["running"] is False and st["restarts"] == 0 and st["state"] == "stopped"
        assert st["last_exit"]["expected"] is True
        with_pid_gone = True
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            pass
        else:
            with_pid_gone = False
        assert with_pid_gone
        assert m.post("/process/start").status_code == 200
        m.wait(lambda s: s["process"]["running"] and s["process"]["pid"] != pid)


def test_failing_command_backs_off_then_gives_up(manager_factory):
    fail = python_child("import sys; print('failing', file=sys.stderr); sys.exit(7)")
    with manager_factory(command=fail, args=["--restart-delay", "0.1", "--start-retries", "2"]) as m:
        st = m.wait(lambda s: s["process"]["state"] == "fatal", what="fatal state")
        assert st["process"]["last_exit"]["code"] == 7
        assert st["process"]["restarts"] == 2
        assert m.log_tail(200).splitlines().count("failing") == 3  # each start forwarded its stderr


def _spawn_manager(tmp_path, command, *args):
    """A manager with separate stdout/stderr files, to check forwarding stream by stream."""
    port = free_port()
    out, err = tmp_path / "out.log", tmp_path / "err.log"
    cmd = [sys.executable, "-m", "shoal", "serve", "manager", "--port", str(port), "--data-dir",
           str(tmp_path / "data"), "--tmp-dir", str(tmp_path / "tmp"), *args, "--", *command]  # fmt: skip
    with open(out, "wb") as o, open(err, "wb") as e:
        proc = subprocess.Popen(cmd, stdout=o, stderr=e, start_new_session=True,
                                env={**os.environ, "SHOAL_ACCESS_LOG": "0"})  # fmt: skip
    wait_http(f"http://127.0.0.1:{port}/health", 30, proc)
    return proc, port, out, err


def _wait_file(path, text, timeout=15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text(errors="replace").splitlines():
            return
        time.sleep(0.05)
    raise AssertionError(
        f"{text!r} never appeared in {path}: {path.read_text(errors='replace') if path.exists() else ''}"
    )


def test_stdout_and_stderr_forwarded_and_sigterm_reaches_the_child(tmp_path):
    marker = tmp_path / "child-got-sigterm"
    code = (
        "import signal, sys, time\n"
        f"def bye(*_):\n    open({str(marker)!r}, 'w').write('yes'); sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, bye)\n"
        "print('to-stdout', flush=True); print('to-stderr', file=sys.stderr, flush=True)\n"
        "while True: time.sleep(0.1)\n"
    )
    proc, port, out, err = _spawn_manager(tmp_path, python_child(code))
    try:
        _wait_file(out, "to-stdout")
        _wait_file(err, "to-stderr")
        assert "to-stderr" not in out.read_text().splitlines()
        assert "to-stdout" not in err.read_text().splitlines()
        pid = httpx.get(f"http://127.0.0.1:{port}/").json()["process"]["pid"]
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(30) == 0
        assert marker.read_text() == "yes"
        try:
            os.kill(pid, 0)
            raise AssertionError("child still alive after the manager stopped")
        except ProcessLookupError:
            pass
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def test_sigterm_ignoring_child_is_killed_after_the_stop_timeout(tmp_path):
    code = "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint('ignoring', flush=True)\nwhile True: time.sleep(0.1)\n"
    proc, port, out, _err = _spawn_manager(tmp_path, python_child(code), "--stop-timeout", "2")
    try:
        _wait_file(out, "ignoring")
        pid = httpx.get(f"http://127.0.0.1:{port}/").json()["process"]["pid"]
        began = time.monotonic()
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(30)
        took = time.monotonic() - began
        assert took >= 2.0, took
        try:
            os.kill(pid, 0)
            raise AssertionError("SIGTERM-ignoring child survived")
        except ProcessLookupError:
            pass
        assert "ignored SIGTERM" in _err.read_text()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def test_unreadable_config_file_starts_unconfigured(manager_factory):
    m = manager_factory()
    m.tmp_dir.mkdir(parents=True)
    (m.tmp_dir / "config.json").write_text(json.dumps({"storage": {"bucket": "x"}, "stacks": ["db"]}))
    with m:
        st = m.status()
        assert st["configured"] is False
        assert "config.json" in st["configuration"]["error"]
        assert m.get("/config").status_code == 404
    assert "starting unconfigured" in m.log_tail(100)


def test_child_left_by_a_killed_manager_is_stopped_on_restart(manager_factory):
    # a child dies with its manager (SIGTERM by PR_SET_PDEATHSIG, tests/manager/test_lifetime.py);
    # one that ignores SIGTERM outlives a kill -9 and is stopped by the next start (pidfile)
    stubborn = python_child(
        "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nwhile True: time.sleep(1)"
    )
    m = manager_factory(command=stubborn, args=["--stop-timeout", "1"])
    with m:
        old = m.wait(lambda s: s["process"]["running"])["process"]["pid"]
        time.sleep(0.5)  # let it install the handler
        m.kill()  # kill -9 of the manager
        time.sleep(0.5)
        os.kill(old, 0)  # still running: it ignored the parent-death SIGTERM
    with m:
        new = m.wait(lambda s: s["process"]["running"])["process"]["pid"]
        assert new != old
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.kill(old, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        else:
            raise AssertionError("the orphaned child is still running next to the new one")
