"""`shoal up`: every built service on one machine, supervised, stopped together.

Each service runs as its own `shoal serve` process with data under DATA_ROOT/<name>. A
service that exits unexpectedly is restarted with backoff; Ctrl-C or SIGTERM stops all of
them (SIGTERM first, so in-flight requests finish) and waits for each.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from shoal.services import SERVICES, available, load_service

# Ports where a service's documented default collides with another's when all run together.
UP_PORTS = {"manager": 8087}


@dataclass
class Child:
    name: str
    service: str
    port: int
    args: list[str]
    proc: subprocess.Popen | None = None
    restarts: int = 0
    next_start: float = 0.0
    backoff: float = field(default=1.0)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def layout(data_root: str, host: str, only: list[str], port_offset: int = 0) -> list[Child]:
    """The processes to run: one per built service (a service may ask for several)."""
    children = []
    for name, info in SERVICES.items():
        if only and name not in only:
            continue
        if not available(name):
            continue
        module = load_service(name)
        if getattr(module, "UP", True) is False:
            continue
        port = UP_PORTS.get(name, info.default_port) + port_offset
        instances = getattr(module, "up_instances", None)
        specs = instances(port) if instances else [(name, port, [])]
        for inst_name, inst_port, extra in specs:
            data_dir = str(Path(data_root) / inst_name)
            args = ["--host", host, "--port", str(inst_port), "--data-dir", data_dir, *extra]
            children.append(Child(inst_name, name, inst_port, args))
    return children


def _start(child: Child) -> None:
    cmd = [sys.executable, "-m", "shoal", "serve", child.service, *child.args]
    child.proc = subprocess.Popen(cmd, start_new_session=True)


def _stop_all(children: list[Child], timeout: float = 30.0) -> None:
    for c in children:
        if c.proc and c.proc.poll() is None:
            os.killpg(c.proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for c in children:
        if c.proc:
            try:
                c.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(c.proc.pid, signal.SIGKILL)
                c.proc.wait()


def run_up(data_root: str, host: str, only: list[str], port_offset: int = 0) -> int:
    children = layout(data_root, host, only, port_offset)
    missing = [n for n in SERVICES if not available(n) and (not only or n in only)]
    if missing:
        print(f"shoal up: not built yet, skipped: {', '.join(missing)}", file=sys.stderr)
    if not children:
        print("shoal up: no service is built yet", file=sys.stderr)
        return 1
    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    for c in children:
        _start(c)
    _wait_healthy(children)
    print("shoal up: running (Ctrl-C stops everything)")
    for c in children:
        print(f"  {c.name:<12} {c.url}   docs {c.url}/openapi.json")
    sys.stdout.flush()
    while not stopping:
        now = time.monotonic()
        for c in children:
            if c.proc and c.proc.poll() is not None and not stopping:
                code = c.proc.returncode
                c.proc = None
                c.next_start = now + c.backoff
                print(
                    f"shoal up: {c.name} exited with {code}; restarting in {c.backoff:.0f} s", file=sys.stderr
                )
                c.backoff = min(c.backoff * 2, 30.0)
            elif c.proc is None and now >= c.next_start:
                c.restarts += 1
                _start(c)
        time.sleep(0.2)
    print("shoal up: stopping", file=sys.stderr)
    _stop_all(children)
    return 0


def _wait_healthy(children: list[Child], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    pending = list(children)
    while pending and time.monotonic() < deadline:
        for c in list(pending):
            try:
                if httpx.get(c.url + "/health", timeout=1.0).status_code < 500:
                    pending.remove(c)
            except httpx.HTTPError:
                pass
        time.sleep(0.1)
    for c in pending:
        print(f"shoal up: {c.name} is not healthy after {timeout:.0f} s", file=sys.stderr)


def run_status(host: str, port_offset: int = 0) -> int:
    bad = 0
    for c in layout("./shoal-data", host, [], port_offset):
        try:
            r = httpx.get(c.url + "/health", timeout=2.0)
            state = f"{r.status_code} {r.text[:60]}"
            bad += r.status_code >= 400
        except httpx.HTTPError as exc:
            state = f"down ({type(exc).__name__})"
            bad += 1
        print(f"{c.name:<12} {c.url:<28} {state}")
    return 1 if bad else 0
