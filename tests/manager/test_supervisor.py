"""The supervisor with real child processes: restart, intentional stop, SIGTERM then SIGKILL, backoff."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time

from shoal.manager.supervisor import Supervisor, SupervisorOptions


def opts(code: str, **kw) -> SupervisorOptions:
    return SupervisorOptions([sys.executable, "-c", code], **kw)


async def wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not reached")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_killed_child_is_restarted_after_the_delay():
    sup = Supervisor(opts("import time; time.sleep(60)", restart_delay=0.5, start_secs=0.2))
    sup.start()
    await wait_for(lambda: sup.running)
    first = sup.pid
    await asyncio.sleep(0.3)  # past start_secs: a normal run, not a failed start
    killed_at = time.monotonic()
    os.kill(first, signal.SIGKILL)
    await wait_for(lambda: sup.running and sup.pid != first)
    assert time.monotonic() - killed_at >= 0.5
    assert sup.restarts == 1
    assert sup.last_exit["signal"] == "SIGKILL" and sup.last_exit["expected"] is False
    await sup.stop()
    assert not alive(sup.pid)


async def test_intentional_stop_is_not_restarted():
    sup = Supervisor(opts("import time; time.sleep(60)", restart_delay=0.1))
    sup.start()
    await wait_for(lambda: sup.running)
    pid = sup.pid
    exit_info = await sup.stop()
    assert exit_info["signal"] == "SIGTERM" and exit_info["expected"] is True
    await asyncio.sleep(0.5)
    assert not sup.running and sup.pid == pid and sup.restarts == 0
    assert sup.status()["state"] == "stopped"


async def test_sigterm_ignoring_child_is_killed_after_the_timeout():
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(60)"
    sup = Supervisor(opts(code, stop_timeout=1.0))
    sup.start()
    await wait_for(lambda: sup.running)
    await asyncio.sleep(0.3)  # let it install the handler
    began = time.monotonic()
    exit_info = await sup.stop()
    took = time.monotonic() - began
    assert exit_info["signal"] == "SIGKILL"
    assert took >= 1.0
    assert not alive(sup.pid)


async def test_stop_reaches_the_whole_process_group(tmp_path):
    marker = tmp_path / "grandchild.pid"
    code = (
        "import subprocess, sys, time; p = subprocess.Popen(['sleep', '60']);"
        f"open({str(marker)!r}, 'w').write(str(p.pid)); time.sleep(60)"
    )
    sup = Supervisor(opts(code))
    sup.start()
    await wait_for(lambda: marker.exists() and marker.read_text().strip() != "")
    grandchild = int(marker.read_text())
    await sup.stop()
    await wait_for(lambda: not alive(grandchild), timeout=5)


async def test_a_command_that_dies_at_once_backs_off_then_gives_up():
    sup = Supervisor(opts("raise SystemExit(3)", restart_delay=0.1, start_secs=1.0, start_retries=2))
    began = time.monotonic()
    sup.start()
    await wait_for(lambda: sup.state == "fatal", timeout=15)
    # delays grow: 0.1 after the 1st failure, 0.2 after the 2nd; gives up after the 3rd
    assert time.monotonic() - began >= 0.3
    assert sup.failed_starts == 3 and sup.restarts == 2
    assert sup.last_exit["code"] == 3
    await sup.stop()


async def test_missing_executable_is_reported_not_raised():
    sup = Supervisor(SupervisorOptions(["/nonexistent/cmd"], restart_delay=0.05, start_retries=1))
    sup.start()
    await wait_for(lambda: sup.state == "fatal")
    assert "cannot start" in sup.status()["error"]
    await sup.stop()


async def test_a_stop_while_the_child_is_being_spawned_ends_that_child_too():
    """Found by schemathesis: POST /process/stop during a start hung, as stop() saw no child yet
    and then waited for a supervision task whose fresh child nobody signalled."""

    async def slow_prepare() -> None:
        await asyncio.sleep(0.3)  # e.g. clearing a stale mount before the start

    sup = Supervisor(opts("import time; time.sleep(60)", prepare=slow_prepare, stop_timeout=2.0))
    sup.start()
    await asyncio.sleep(0.05)  # inside prepare: no child yet
    began = time.monotonic()
    await asyncio.wait_for(sup.stop(), 10)
    assert time.monotonic() - began < 5
    assert sup.state == "stopped" and not sup.running
    assert sup.pid is None or not alive(sup.pid)
