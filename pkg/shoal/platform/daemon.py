"""What the platform's private daemons (dockerd, libvirtd) share: a process that can be paused
and resumed, as a hung backend is simulated in tests and `shoal up` resumes one before stopping it."""

from __future__ import annotations

import os
import signal
import subprocess


class PausableDaemon:
    proc: subprocess.Popen | None = None

    def pause_daemon(self) -> None:
        """SIGSTOP: the daemon stops answering (tests of a hung or dead backend)."""
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGSTOP)

    def resume_daemon(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)
