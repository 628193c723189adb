"""A process never outlives its parent: workers of a server, and every child a service spawns.

The kernel's PR_SET_PDEATHSIG sends a signal to a process when the thread that forked it ends.
Two gaps are closed around it:
- the race at fork: the parent may die before the child has asked; the child compares
  `os.getppid()` with the pid it expects and signals itself when they differ;
- a signal that is handled but does not end the process quickly (a server's graceful shutdown
  waiting on in-flight requests): `watch_parent` runs a thread that polls the parent pid and
  ends the process with os._exit once `grace` seconds have passed since the parent died.
  Everything a shoal service acknowledges is already durable, so the hard exit loses nothing.

PDEATHSIG follows the forking *thread*: long-lived children are spawned from the event loop's
thread (asyncio.create_subprocess_exec) or the main thread, never from a short-lived thread.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("shoal.runtime")

PR_SET_PDEATHSIG = 1
POLL_INTERVAL = 0.1

_libc = ctypes.CDLL(None, use_errno=True)
_prctl = _libc.prctl  # resolved once here, never after a fork
_prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
_prctl.restype = ctypes.c_int


def set_parent_death_signal(sig: int = signal.SIGTERM) -> None:
    """Ask the kernel to send `sig` to this process when its parent (thread) dies."""
    if _prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")


def watch_parent(parent_pid: int, sig: int = signal.SIGTERM, grace: float = 0.6) -> threading.Thread | None:
    """End this process when `parent_pid` is no longer its parent: `sig` at once, os._exit after
    `grace` s. Returns the watchdog thread (None when this process is `parent_pid` itself)."""
    if parent_pid == os.getpid():
        return None
    set_parent_death_signal(sig)
    if os.getppid() != parent_pid:  # the parent died before we asked: the kernel will not tell us
        _orphaned(parent_pid, sig, grace)
    thread = threading.Thread(target=_watch, args=(parent_pid, sig, grace), name="parent-watch", daemon=True)
    thread.start()
    return thread


def _watch(parent_pid: int, sig: int, grace: float) -> None:
    while os.getppid() == parent_pid:
        time.sleep(POLL_INTERVAL)
    _orphaned(parent_pid, sig, grace)


def _orphaned(parent_pid: int, sig: int, grace: float) -> None:
    log.warning("parent pid %d is gone; pid %d exits", parent_pid, os.getpid())
    os.kill(os.getpid(), sig)  # the graceful path, if it is quick
    time.sleep(grace)
    os._exit(1)


def child_preexec(sig: int = signal.SIGTERM) -> Callable[[], None]:
    """A `preexec_fn` for subprocess/asyncio: the child gets `sig` when this process dies,
    also when it died between fork and exec."""
    parent = os.getpid()

    def preexec() -> None:
        _prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        if os.getppid() != parent:
            os.kill(os.getpid(), sig)

    return preexec


def child_options(sig: int = signal.SIGTERM, new_group: bool = True) -> dict[str, Any]:
    """Keyword arguments for subprocess.Popen / asyncio.create_subprocess_exec: the child dies
    with this process and (new_group) leads its own process group, so stopping it can signal
    its whole group (os.killpg) and a Ctrl-C on our terminal does not reach it twice."""
    return {"preexec_fn": child_preexec(sig), "start_new_session": new_group}


def pdeathsig_argv(sig: int = signal.SIGTERM) -> list[str]:
    """`setpriv --pdeathsig SIG --`: a prefix for a command that must die with this process, for
    callers that cannot use a preexec_fn. A preexec_fn makes Popen fork instead of vfork, and a
    fork runs every library's pthread_atfork handlers: with gRPC loaded (the etcd client) the
    child crashed before exec now and then (compute's qemu-img, docs/compute.md). util-linux's
    setpriv sets the signal and execs the command, which keeps it. Empty without setpriv."""
    exe = shutil.which("setpriv")
    return [exe, "--pdeathsig", signal.Signals(sig).name.removeprefix("SIG"), "--"] if exe else []


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (ours or not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def kill_group(pid: int, sig: int = signal.SIGKILL) -> bool:
    """Signal the process group led by `pid` (a child started with child_options); False if gone."""
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def stop_group(proc: subprocess.Popen, timeout: float = 10.0, kill_wait: float = 10.0) -> int | None:
    """SIGTERM the process group of `proc` (started with start_new_session=True), SIGKILL it
    after `timeout`; returns the exit code. Safe to call on a process that already exited."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(kill_wait)
    return proc.returncode
