"""shoal.runtime.lifetime: children die with their parent, whatever kills it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

from shoal.testing.procs import alive, descendants, wait_until

SPAWNER = textwrap.dedent(
    """
    import subprocess, sys, time
    from shoal.runtime.lifetime import child_options
    child = subprocess.Popen(["sleep", "60"], **child_options())
    print(child.pid, flush=True)
    time.sleep(60)
    """
)


def test_a_child_dies_with_its_killed_parent() -> None:
    parent = subprocess.Popen([sys.executable, "-c", SPAWNER], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    try:
        assert alive(child)
        assert os.getpgid(child) == child  # its own group, so a stop can signal all of it
        parent.kill()
        parent.wait(5)
        assert wait_until(lambda: not alive(child), 1.0) is not None
    finally:
        if alive(child):
            os.kill(child, signal.SIGKILL)


def test_a_child_whose_parent_died_before_it_asked_ends_itself() -> None:
    """The race at fork: the preexec check sees a parent pid other than the one it expects."""
    script = textwrap.dedent(
        """
        import os, sys
        from shoal.runtime import lifetime
        preexec = lifetime.child_preexec()
        lifetime.os = type("FakeOs", (), {"getpid": os.getpid, "getppid": staticmethod(lambda: 1),
                                            "kill": os.kill})
        import subprocess
        child = subprocess.Popen(["sleep", "60"], preexec_fn=preexec)
        print(child.wait(10))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30)
    assert done.stdout.strip() == str(-signal.SIGTERM), done.stderr


def test_watch_parent_ends_a_worker_that_ignores_sigterm() -> None:
    """The watchdog's hard exit: a worker whose SIGTERM handling never ends it still ends."""
    script = textwrap.dedent(
        """
        import os, signal, sys, time
        me = os.getpid()
        worker = os.fork()
        if worker == 0:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            from shoal.runtime.lifetime import watch_parent
            watch_parent(me)
            print("watching", flush=True)
            time.sleep(60)
            os._exit(0)
        time.sleep(60)
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert parent.stdout.readline().strip() == "watching"
    (worker,) = descendants(parent.pid)
    try:
        parent.kill()
        parent.wait(5)
        assert wait_until(lambda: not alive(worker), 2.0) is not None
    finally:
        if alive(worker):
            os.kill(worker, signal.SIGKILL)
