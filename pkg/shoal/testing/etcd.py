"""Real etcd for tests and benches: one member or a cluster on 127.0.0.1, stopped by PID.

Debian's `etcd-server` (3.4) provides the binary. Each member gets a temp data dir and random
client/peer ports; members can be killed, stopped and restarted on the same data to test failover.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx

from . import free_port

# Generous server limits so the contract's limits (128 ops, 1 MiB values) are what tests hit.
SERVER_ARGS = ["--max-txn-ops", "1024", "--max-request-bytes", str(8 << 20), "--logger", "zap"]


def etcd_binary() -> str:
    exe = shutil.which("etcd") or ("/usr/bin/etcd" if os.path.exists("/usr/bin/etcd") else None)
    if exe is None:
        raise RuntimeError(
            "etcd is not installed (apt-get install etcd-server; see scripts/apt-packages.txt)"
        )
    return exe


class EtcdMember:
    def __init__(self, name: str, root: Path) -> None:
        self.name = name
        self.data_dir = root / name
        self.client_port = free_port()
        self.peer_port = free_port()
        self.log_path = root / f"{name}.log"
        self.proc: subprocess.Popen | None = None

    @property
    def client_url(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class EtcdCluster:
    """`size` etcd members on 127.0.0.1; `endpoints` is what EtcdStore.open takes."""

    def __init__(self, root: str | Path, size: int = 1, extra_args: list[str] | None = None) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.members = [EtcdMember(f"m{i}", self.root) for i in range(size)]
        self.extra_args = list(extra_args or [])
        self.token = f"shoal-test-{os.getpid()}-{free_port()}"

    @property
    def endpoints(self) -> list[str]:
        return [m.client_url for m in self.members]

    @property
    def url(self) -> str:
        """All members' client URLs, comma-separated (the --etcd flag's form)."""
        return ",".join(self.endpoints)

    def command(self, m: EtcdMember) -> list[str]:
        cluster = ",".join(f"{x.name}={x.peer_url}" for x in self.members)
        return [
            etcd_binary(),
            "--name", m.name,
            "--data-dir", str(m.data_dir),
            "--listen-client-urls", m.client_url,
            "--advertise-client-urls", m.client_url,
            "--listen-peer-urls", m.peer_url,
            "--initial-advertise-peer-urls", m.peer_url,
            "--initial-cluster", cluster,
            "--initial-cluster-token", self.token,
            "--initial-cluster-state", "new",
            "--heartbeat-interval", "50",
            "--election-timeout", "500",
            *SERVER_ARGS,
            *self.extra_args,
        ]  # fmt: skip

    def start_member(self, i: int) -> None:
        """Start (or restart on its data dir) member i without waiting."""
        m = self.members[i]
        if m.running:
            return
        log = open(m.log_path, "ab")
        m.proc = subprocess.Popen(
            self.command(m), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()

    def start(self, timeout: float = 30.0) -> EtcdCluster:
        for i in range(len(self.members)):
            self.start_member(i)
        try:
            self.wait_healthy(timeout=timeout)
        except Exception:
            self.stop()
            raise
        return self

    def wait_healthy(self, members: list[int] | None = None, timeout: float = 30.0) -> None:
        """Until every given member (default: all running) answers /health with a leader."""
        idx = members if members is not None else [i for i, m in enumerate(self.members) if m.running]
        deadline = time.monotonic() + timeout
        for i in idx:
            m = self.members[i]
            last = "no answer"
            while True:
                if m.proc is not None and m.proc.poll() is not None:
                    raise RuntimeError(f"etcd {m.name} exited with {m.proc.returncode}:\n{m.log_tail()}")
                try:
                    r = httpx.get(m.client_url + "/health", timeout=2.0)
                    if r.status_code == 200 and r.json().get("health") == "true":
                        break
                    last = r.text
                except httpx.HTTPError as exc:
                    last = str(exc)
                if time.monotonic() > deadline:
                    raise TimeoutError(f"etcd {m.name} not healthy in {timeout}s: {last}\n{m.log_tail()}")
                time.sleep(0.05)

    def status(self, i: int) -> dict[str, Any]:
        """Member i's /v3/maintenance/status (member id, leader id, revision) via the JSON gateway."""
        r = httpx.post(self.members[i].client_url + "/v3/maintenance/status", json={}, timeout=5.0)
        r.raise_for_status()
        return r.json()

    def leader(self) -> int:
        """The index of the current leader, asked of any running member."""
        for i, m in enumerate(self.members):
            if not m.running:
                continue
            with contextlib.suppress(httpx.HTTPError):
                leader_id = self.status(i)["leader"]
                for j, x in enumerate(self.members):
                    if x.running and self.status(j)["header"]["member_id"] == leader_id:
                        return j
        raise RuntimeError("no etcd leader")

    def kill_member(self, i: int) -> None:
        """SIGKILL member i, as a crash would."""
        self._signal(i, signal.SIGKILL)

    def stop_member(self, i: int, timeout: float = 10.0) -> None:
        """SIGTERM member i (SIGKILL after `timeout`)."""
        self._signal(i, signal.SIGTERM, timeout)

    def _signal(self, i: int, sig: int, timeout: float = 10.0) -> None:
        m = self.members[i]
        if m.proc is None:
            return
        if m.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(m.proc.pid, sig)
            try:
                m.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(m.proc.pid, signal.SIGKILL)
                m.proc.wait(10)

    def stop(self) -> None:
        for i in range(len(self.members)):
            self.stop_member(i)

    def __enter__(self) -> EtcdCluster:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
