"""FFmpeg children of the uploader never outlive what they serve: a timed-out or cancelled run
kills the tool, and a tool whose parent is killed with -9 dies too (PDEATHSIG). Real ffmpeg."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from shoal.uploader import media

ENDLESS = (
    "-nostdin",
    "-v",
    "error",
    "-re",
    "-f",
    "lavfi",
    "-i",
    "testsrc=size=64x64:rate=5",
    "-f",
    "null",
    "-",
)


def alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return text.rsplit(")", 1)[1].split()[0] != "Z"


def ffmpeg_children(parent: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        name, rest = stat.split(" (", 1)[1].rsplit(")", 1)
        if name.startswith("ffmpeg") and int(rest.split()[1]) == parent:
            found.append(int(entry))
    return found


def wait_until(predicate, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.05)
    raise AssertionError("condition not reached")


def test_timed_out_ffmpeg_is_killed() -> None:
    async def run() -> list[int]:
        task = asyncio.create_task(media._run(media.tool("ffmpeg"), *ENDLESS, timeout=1.5))
        pids = []
        while not pids and not task.done():
            await asyncio.sleep(0.05)
            pids = ffmpeg_children(os.getpid())
        with pytest.raises(TimeoutError):
            await task
        return pids

    pids = asyncio.run(run())
    assert len(pids) == 1
    assert not alive(pids[0])


def test_cancelled_ffmpeg_is_killed() -> None:
    async def run() -> int:
        task = asyncio.create_task(media._run(media.tool("ffmpeg"), *ENDLESS, timeout=600))
        pids: list[int] = []
        while not pids:
            await asyncio.sleep(0.05)
            pids = ffmpeg_children(os.getpid())
        assert os.getpgid(pids[0]) == pids[0]  # it leads its own process group
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return pids[0]

    pid = asyncio.run(run())
    assert not alive(pid)


def test_ffmpeg_dies_with_its_parent_killed_by_sigkill() -> None:
    script = (
        "import asyncio\n"
        "from shoal.uploader import media\n"
        f"asyncio.run(media._run(media.tool('ffmpeg'), *{ENDLESS!r}, timeout=600))\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], start_new_session=True)
    pid = 0
    try:
        pid = wait_until(lambda: ffmpeg_children(parent.pid))[0]
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(10)
        wait_until(lambda: not alive(pid), timeout=10.0)
    finally:
        if parent.poll() is None:
            os.killpg(parent.pid, signal.SIGKILL)
            parent.wait(10)
        if pid and alive(pid):  # the failure this test is about: do not leave it running
            os.kill(pid, signal.SIGKILL)
