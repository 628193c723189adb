"""Log capture of the supervised app: rotated files that together hold its output in order,
forwarding still stream by stream, GET /process/logs, and an app that is never blocked by a
reader of the manager's output that does not read."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from shoal.testing import free_port, wait_http

from .conftest import python_child

LINES = 20000


def _log_files(tmp: Path, stream: str) -> list[Path]:
    """Oldest first: .N … .1, then the current file."""
    base = tmp / "logs" / f"process.{stream}.log"
    backups = sorted(base.parent.glob(base.name + ".*"), key=lambda p: -int(p.suffix[1:]))
    return [*backups, base]


def _printer(n: int, stream: str = "stdout") -> list[str]:
    return python_child(
        "import sys, time\n"
        f"out = sys.{stream}\n"
        f"for i in range({n}): out.write(f'line {{i:06d}} ' + 'x' * 40 + '\\n')\n"
        "out.write('done\\n'); out.flush()\n"
        "while True: time.sleep(1)\n"
    )


def _wait_done(m, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = m.get("/process/logs", params={"tail": 1})
        if r.status_code == 200 and [e["line"] for e in r.json()["lines"]] == ["done"]:
            return
        time.sleep(0.1)
    raise AssertionError(f"the app's last line never arrived: {m.get('/process/logs').text}")


def test_output_rotates_into_files_that_hold_every_line_in_order(manager_factory):
    max_bytes, backups = 64 * 1024, 30  # ~1.1 MB of output fits in 31 files
    m = manager_factory(command=_printer(LINES), args=["--app-log-max-bytes", str(max_bytes),
                                                       "--app-log-backups", str(backups)])  # fmt: skip
    with m:
        _wait_done(m)
        time.sleep(0.5)  # the file writer thread trails the reader by a moment
        files = _log_files(m.tmp_dir, "stdout")
        assert len(files) > 10, files  # it rotated
        assert len(files) <= backups + 1
        for f in files:
            assert f.stat().st_size <= max_bytes, (f, f.stat().st_size)
        text = b"".join(f.read_bytes() for f in files).decode()
        expected = [f"line {i:06d} " + "x" * 40 for i in range(LINES)] + ["done"]
        assert text.splitlines() == expected  # nothing lost, nothing doubled, in order
        for f in files:  # rotation at line boundaries
            assert f.read_bytes().endswith(b"\n")
        assert files[-1].read_text().splitlines()[-1] == "done"  # the newest file has the latest
        st = m.status()["process"]["logs"]["stdout"]
        assert st["rotations"] == len(files) - 1
        assert st["dropped_bytes"] == 0
        tail = m.get("/process/logs", params={"tail": 3, "stream": "stdout"}).json()["lines"]
        assert [e["line"] for e in tail] == [expected[-3], expected[-2], "done"]
        assert all(e["stream"] == "stdout" for e in tail)


def test_old_files_beyond_the_backups_are_dropped_the_rest_is_contiguous(manager_factory):
    max_bytes, backups = 32 * 1024, 3
    m = manager_factory(command=_printer(LINES, "stderr"), args=["--app-log-max-bytes", str(max_bytes),
                                                                 "--app-log-backups", str(backups)])  # fmt: skip
    with m:
        _wait_done(m)
        time.sleep(0.5)
        files = _log_files(m.tmp_dir, "stderr")
        assert [f.name for f in files] == [
            "process.stderr.log.3",
            "process.stderr.log.2",
            "process.stderr.log.1",
            "process.stderr.log",
        ]
        lines = b"".join(f.read_bytes() for f in files).decode().splitlines()
        assert lines[-1] == "done"
        numbers = [int(line.split()[1]) for line in lines[:-1]]
        assert numbers == list(range(numbers[0], LINES))  # a contiguous suffix ending at the last
        assert len(lines) > 3 * (max_bytes // 60)
        assert not (m.tmp_dir / "logs" / "process.stdout.log.1").exists()  # stdout stayed small


def test_a_manager_stdout_nobody_reads_never_blocks_the_app(tmp_path):
    """The manager's stdout is a pipe we never read: forwarding drops, the log file gets all."""
    port = free_port()
    app = python_child(
        "import sys, time\n"
        f"for i in range({LINES * 3}): print(f'line {{i:06d}} ' + 'y' * 60)\n"
        "print('finished', flush=True)\n"
        "while True: time.sleep(1)\n"
    )
    cmd = [sys.executable, "-m", "shoal", "serve", "manager", "--port", str(port),
           "--data-dir", str(tmp_path / "data"), "--tmp-dir", str(tmp_path / "tmp"),
           "--app-log-max-bytes", "0", "--", *app]  # fmt: skip
    err = open(tmp_path / "err.log", "wb")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, start_new_session=True,
                            env={**os.environ, "SHOAL_ACCESS_LOG": "0"})  # fmt: skip
    try:
        wait_http(f"http://127.0.0.1:{port}/health", 30, proc)
        deadline = time.monotonic() + 60
        lines: list[str] = []
        while time.monotonic() < deadline:
            lines = [
                e["line"] for e in httpx.get(f"http://127.0.0.1:{port}/process/logs?tail=1").json()["lines"]
            ]
            if lines == ["finished"]:
                break
            time.sleep(0.2)
        assert lines == ["finished"], "the app was blocked by the unread manager stdout"
        time.sleep(0.5)
        logfile = tmp_path / "tmp" / "logs" / "process.stdout.log"
        got = logfile.read_text().splitlines()
        assert len(got) == LINES * 3 + 1 and got[-1] == "finished"
        st = httpx.get(f"http://127.0.0.1:{port}/").json()["process"]["logs"]["stdout"]
        assert st["forward_dropped_bytes"] > 0  # 4 MiB queue + 64 KiB pipe could not take ~4.6 MB
        assert st["dropped_bytes"] == 0
    finally:
        os.killpg(proc.pid, 9)
        proc.wait(10)
        err.close()


def test_logs_route_validates_and_without_a_command_is_400(manager_factory):
    with manager_factory(command=python_child("print('hi', flush=True)\nimport time\ntime.sleep(60)")) as m:
        m.wait(lambda s: s["process"]["running"], what="running")
        assert m.get("/process/logs", params={"stream": "both"}).status_code == 400
        assert m.get("/process/logs", params={"tail": "x"}).status_code == 400
    with manager_factory("m2") as m2:
        r = m2.get("/process/logs")
        assert r.status_code == 400 and "detail" in r.json()
