"""Test helpers for the whole platform: `shoal up` in a subprocess, and nginx in front of it."""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from shoal.platform.layout import Child, layout, settings_from
from shoal.testing import free_port, stop_group, wait_http


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_offset(attempts: int = 200) -> int:
    """A --port-offset whose every port of the default layout is free right now, kept below the
    kernel's ephemeral range (32768+) so other tests' free_port() does not hand them out."""
    ports = [c.port for c in layout(settings_from({}), check_built=False)[0]]
    low, high = min(ports), max(ports)
    for _ in range(attempts):
        offset = random.randrange(10_000 - low, 32_000 - high)
        if all(_free(p + offset) for p in ports):
            return offset
    raise RuntimeError("no free port offset found")


class Up:
    """`shoal up` with a port offset and a data root; its output is collected line by line."""

    def __init__(self, data_root: Path, offset: int, *args: str, env: dict[str, str] | None = None) -> None:
        self.data_root = Path(data_root)
        self.offset = offset
        self.args = list(args)
        self.env = {**os.environ, "SHOAL_ACCESS_LOG": "0", **(env or {})}
        self.proc: subprocess.Popen | None = None
        self.lines: list[str] = []
        self._reader: threading.Thread | None = None

    @property
    def layout_args(self) -> list[str]:
        return ["--data-root", str(self.data_root), "--port-offset", str(self.offset)]

    def children(self) -> list[Child]:
        return layout(
            settings_from({}, data_root=str(self.data_root), port_offset=self.offset), check_built=False
        )[0]

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def launch(self) -> Up:
        """Start `shoal up` and its output reader, without waiting for it to be ready."""
        cmd = [sys.executable, "-m", "shoal", "up", *self.layout_args, *self.args]
        self.proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=self.env,
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        return self

    def start(self, timeout: float = 180.0) -> Up:
        self.launch()
        try:
            self.wait_for("shoal up: ready", timeout)
        except Exception:
            self.stop()
            raise
        return self

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(text in line for line in self.lines):
                return
            if self.proc is not None and self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise TimeoutError(f"`shoal up` never said {text!r}:\n{self.output[-6000:]}\n{self.log_tails()}")

    def state(self) -> dict[str, Any]:
        """DATA_ROOT/up.json: pids, URLs and logs of the running services."""
        return json.loads((self.data_root / "up.json").read_text())

    def log_tails(self, lines: int = 15) -> str:
        out = []
        for log in sorted((self.data_root / "logs").glob("*.log")):
            tail = log.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- {log.name}\n" + "\n".join(tail))
        return "\n".join(out)

    def interrupt(self, timeout: float = 90.0) -> int:
        """Ctrl-C, as a user would; returns the exit code."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGINT)
        code = self.proc.wait(timeout)
        if self._reader is not None:
            self._reader.join(5)
        return code

    def stop(self) -> None:
        if self.proc is None:
            return
        pids: list[int] = []
        with contextlib.suppress(OSError, ValueError):
            pids = [s["pid"] for s in self.state()["services"] if s.get("pid")]
        stop_group(self.proc, timeout=60)
        for pid in pids:  # children run in their own sessions: kill strays if `shoal up` could not
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)

    def __enter__(self) -> Up:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


class Nginx:
    """nginx on 127.0.0.1:`port` with the config `shoal up --nginx-config` writes for a layout."""

    def __init__(self, workdir: Path, layout_args: list[str], port: int | None = None) -> None:
        self.workdir = Path(workdir)
        self.layout_args = layout_args
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @staticmethod
    def binary() -> str | None:
        return shutil.which("nginx") or next(
            (p for p in ("/usr/sbin/nginx", "/sbin/nginx") if os.path.exists(p)), None
        )

    def start(self) -> Nginx:
        nginx = self.binary()
        if nginx is None:
            raise RuntimeError("nginx is not installed (Debian nginx-light)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "shoal", "up", *self.layout_args, "--nginx-config"]
        generated = subprocess.run(
            [*cmd, "--nginx-listen", f"127.0.0.1:{self.port}"], capture_output=True, text=True, check=True
        )
        (self.workdir / "shoal.conf").write_text(generated.stdout)
        w = self.workdir
        user = "user root;\n" if os.geteuid() == 0 else ""  # workers read our temp dirs
        (w / "nginx.conf").write_text(
            f"{user}worker_processes 1;\ndaemon off;\npid {w}/nginx.pid;\nerror_log {w}/error.log warn;\n"
            "events { worker_connections 256; }\n"
            f"http {{\n  access_log {w}/access.log;\n  client_body_temp_path {w}/body;\n"
            f"  proxy_temp_path {w}/proxy;\n  fastcgi_temp_path {w}/fastcgi;\n  uwsgi_temp_path {w}/uwsgi;\n"
            f"  scgi_temp_path {w}/scgi;\n  include {w}/shoal.conf;\n}}\n"
        )
        with open(w / "stderr.log", "wb") as err:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                [nginx, "-p", str(w), "-c", str(w / "nginx.conf")],
                stdout=subprocess.DEVNULL,
                stderr=err,
                start_new_session=True,
            )
        try:
            wait_http(self.url + "/", 20, self.proc)
        except Exception as exc:
            self.stop()
            raise RuntimeError(
                f"nginx did not start: {exc}\n{(w / 'error.log').read_text(errors='replace')}"
            ) from exc
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop_group(self.proc, timeout=10)

    def __enter__(self) -> Nginx:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
