"""Test and bench helpers: a metadata service plus real storage nodes (`shoal serve`) on loopback."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import httpx

from shoal.testing import ServiceProcess, free_port
from shoal.testing.storage import storage_node


def metadata_service(data_dir: str | Path, *args: str, port: int | None = None, **kw: Any) -> ServiceProcess:
    """`shoal serve metadata` on 127.0.0.1 (not started yet)."""
    return ServiceProcess("metadata", data_dir, list(args), port=port or free_port(), **kw)


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Cluster:
    """One metadata service and `nodes` storage nodes that register and heartbeat with it.

    `meta_args` go to the metadata service (e.g. fast health thresholds for tests); storage
    nodes heartbeat every `heartbeat` seconds. Everything is stopped by PID on exit.
    """

    def __init__(
        self,
        root: str | Path,
        nodes: int = 3,
        meta_args: tuple[str, ...] = ("--maintenance-interval", "0"),
        heartbeat: float = 1.0,
    ) -> None:
        self.root = Path(root)
        self.meta = metadata_service(self.root / "meta", *meta_args)
        self.heartbeat = heartbeat
        self.nodes: list[ServiceProcess] = []
        self.node_count = nodes

    def start(self) -> Cluster:
        self.meta.start()
        try:
            for _ in range(self.node_count):
                self.add_node()
            self.wait_registered(self.node_count)
        except Exception:
            self.stop()
            raise
        return self

    def add_node(self) -> ServiceProcess:
        i = len(self.nodes)
        node = storage_node(
            self.root / f"node{i}",
            "--metadata-url",
            self.meta.url,
            "--heartbeat-interval",
            str(self.heartbeat),
            "--compact-interval",
            "3600",
        )
        self.nodes.append(node)
        node.start()
        return node

    def restart_node(self, i: int) -> ServiceProcess:
        """Start node i again on its port and data dir (after kill or stop)."""
        old = self.nodes[i]
        node = storage_node(old.data_dir, *old.args[2:], port=old.port)
        self.nodes[i] = node
        node.start()
        return node

    def wait_registered(self, count: int, timeout: float = 20.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            healthy = httpx.get(self.meta.url + "/nodes/healthy", timeout=5).json()
            if len(healthy) >= count:
                return healthy
            time.sleep(0.1)
        raise TimeoutError(f"{count} healthy nodes not registered within {timeout} s")

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    def put(self, node_url: str, stored_id: str, data: bytes) -> None:
        r = httpx.put(f"{node_url}/chunk/{stored_id}", content=data, timeout=10)
        assert r.status_code in (200, 201), r.text

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
        self.meta.stop()

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
