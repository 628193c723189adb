"""Shoal services and a 3-member etcd placed on the hosts of a test Net.

Every argument list a service gets is built here (`serve_argv`), so the day a service needs
another flag on a non-loopback address (auth: `--insecure-dev` or `--auth-dir`) one place
changes. Ports are fixed per service: each host is its own namespace, so nothing collides.
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from shoal.testing.cluster.net import Host, Net, Proc
from shoal.testing.etcd import SERVER_ARGS, etcd_binary

PORTS = {"etcd": 2379, "etcd-peer": 2380, "kv": 8090, "state": 3004, "metadata": 8080, "storage": 8081,
         "uploader": 8084, "compute": 8070}  # fmt: skip
NO_DOCKER = "unix:///nonexistent/docker.sock"  # compute on the kvm backend only: no dockerd needed
ENV = {"SHOAL_ACCESS_LOG": "0", "PYTHONUNBUFFERED": "1"}


@functools.cache
def insecure_flags(service: str) -> tuple[str, ...]:
    """("--insecure-dev",) when `shoal serve <service>` accepts it: these tests run without an
    auth dir on non-loopback addresses, which services with auth refuse otherwise."""
    from shoal.platform.services import load_service

    parser = argparse.ArgumentParser(add_help=False)
    load_service(service).add_arguments(parser)
    return ("--insecure-dev",) if "--insecure-dev" in parser._option_string_actions else ()


def serve_argv(service: str, host: Host, data_dir: Path, *extra: str, port: int | None = None) -> list[str]:
    """`python -m shoal serve <service>` bound to the host's address (the one place for flags)."""
    return [sys.executable, "-m", "shoal", "serve", service, "--host", host.ip,
            "--port", str(port or PORTS[service]), "--data-dir", str(data_dir),
            *insecure_flags(service), *extra]  # fmt: skip


class Service:
    """One process on one host, restartable with the same command (same data dir, same port)."""

    def __init__(self, name: str, host: Host, argv: list[str], url: str, health: str = "/health") -> None:
        self.name = name
        self.host = host
        self.argv = argv
        self.url = url
        self.health = health
        self.proc: Proc | None = None

    def __repr__(self) -> str:
        return f"{self.name}@{self.host.name}"

    def start(self, wait: bool = True, timeout: float = 40.0) -> Service:
        self.proc = self.host.spawn(self.name, self.argv, env=ENV)
        if wait:
            self.wait(timeout)
        return self

    def healthy(self) -> bool:
        try:
            return httpx.get(self.url + self.health, timeout=2.0).status_code == 200
        except httpx.HTTPError:
            return False

    def wait(self, timeout: float = 40.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and not self.proc.running:
                raise RuntimeError(f"{self} exited:\n{self.proc.log_tail()}")
            if self.healthy():
                return
            time.sleep(0.1)
        raise TimeoutError(f"{self} not healthy in {timeout} s:\n{self.proc.log_tail() if self.proc else ''}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.running


class Cluster:
    """A Net plus the services placed on it; `restart_host` brings a killed host's services back."""

    def __init__(self, root: str | Path, n_hosts: int) -> None:
        self.root = Path(root)
        self.net = Net(n_hosts, self.root / "logs")
        self.services: list[Service] = []

    @property
    def hosts(self) -> list[Host]:
        return self.net.hosts

    def data_dir(self, host: Host, name: str) -> Path:
        d = self.root / "data" / host.name / name
        d.mkdir(parents=True, exist_ok=True)
        return d

    def create(self) -> Cluster:
        self.net.create()
        return self

    def destroy(self) -> None:
        self.net.destroy()

    def __enter__(self) -> Cluster:
        return self.create()

    def __exit__(self, *exc: object) -> None:
        self.destroy()

    def add(self, svc: Service, wait: bool = True) -> Service:
        self.services.append(svc)
        svc.start(wait=wait)
        return svc

    def on(self, host: Host) -> list[Service]:
        return [s for s in self.services if s.host is host]

    def kill_host(self, host: Host) -> list[Service]:
        """kill -9 every process of the host; returns the services that were running there."""
        was = [s for s in self.on(host) if s.running]
        host.kill9()
        return was

    def restart(self, services: Sequence[Service], wait: bool = True) -> None:
        """Start again (same data, same port) in placement order; etcd members first, unwaited,
        since one member alone is not healthy until it rejoins a quorum."""
        for s in services:
            s.start(wait=False)
        if wait:
            for s in services:
                s.wait()

    # --- placements
    def etcd(self, hosts: Sequence[Host], heartbeat_ms: int = 100, election_ms: int = 1000) -> list[Service]:
        """A len(hosts)-member etcd cluster, one member per host."""
        token = f"{self.net.prefix}-etcd"
        peers = ",".join(f"e{h.index}=http://{h.ip}:{PORTS['etcd-peer']}" for h in hosts)
        members = []
        for h in hosts:
            client = f"http://{h.ip}:{PORTS['etcd']}"
            argv = [etcd_binary(), "--name", f"e{h.index}", "--data-dir", str(self.data_dir(h, "etcd")),
                    "--listen-client-urls", client, "--advertise-client-urls", client,
                    "--listen-peer-urls", f"http://{h.ip}:{PORTS['etcd-peer']}",
                    "--initial-advertise-peer-urls", f"http://{h.ip}:{PORTS['etcd-peer']}",
                    "--initial-cluster", peers, "--initial-cluster-token", token,
                    "--initial-cluster-state", "new", "--heartbeat-interval", str(heartbeat_ms),
                    "--election-timeout", str(election_ms), *SERVER_ARGS]  # fmt: skip
            members.append(self.add(Service("etcd", h, argv, client), wait=False))
        for m in members:
            m.wait()
        self.etcd_members = members
        return members

    @property
    def etcd_urls(self) -> list[str]:
        return [m.url for m in self.etcd_members]

    def _etcd_flag(self, near: Host) -> str:
        urls = sorted(self.etcd_urls, key=lambda u: u != f"http://{near.ip}:{PORTS['etcd']}")
        return ",".join(urls)

    def kv(self, hosts: Sequence[Host], namespace: str = "jepsen") -> list[Service]:
        """`shoal serve kv --store etcd` on each host, each given every member (its own first)."""
        out = []
        for h in hosts:
            argv = serve_argv("kv", h, self.data_dir(h, "kv"), "--store", "etcd",
                              "--etcd", self._etcd_flag(h), "--etcd-namespace", namespace)  # fmt: skip
            out.append(self.add(Service("kv", h, argv, f"http://{h.ip}:{PORTS['kv']}")))
        return out

    def state(self, hosts: Sequence[Host], sync_interval: float = 0.3) -> list[Service]:
        """State nodes (local LMDB) that replicate with each other, each trusting the others' keys."""
        from shoal.crdt.node import load_signer

        keys = {}
        for h in hosts:
            key_dir = self.root / "keys" / h.name
            key_dir.mkdir(parents=True, exist_ok=True)
            keys[h.name] = (key_dir, load_signer({"node_key_dir": str(key_dir)}, key_dir).public_b64)
        out = []
        for h in hosts:
            args = ["--node-key-dir", str(keys[h.name][0]), "--sync-interval", str(sync_interval)]
            for o in hosts:
                if o is not h:
                    args += ["--peer", f"http://{o.ip}:{PORTS['state']}", "--trust-node", keys[o.name][1]]
            argv = serve_argv("state", h, self.data_dir(h, "state"), *args)
            out.append(self.add(Service("state", h, argv, f"http://{h.ip}:{PORTS['state']}")))
        return out

    def compute(self, hosts: Sequence[Host], token: str, namespace: str = "compute") -> list[Service]:
        """`shoal serve compute --store etcd` per host, kvm backend on libvirt's in-process
        `test:///default` driver (no daemon: each node's "hypervisor" is its own, as on separate
        machines) and no dockerd. The test driver boots nothing, so the 'tiny' template is a stub."""
        templates = self.root / "templates"
        (templates / "tiny").mkdir(parents=True, exist_ok=True)
        (templates / "tiny" / "kernel").write_bytes(b"not a kernel")
        out = []
        for h in hosts:
            argv = serve_argv("compute", h, self.data_dir(h, "compute"), "--docker-host", NO_DOCKER,
                              "--libvirt-uri", "test:///default", "--kvm-templates", str(templates),
                              "--token", token, "--store", "etcd", "--etcd", self._etcd_flag(h),
                              "--etcd-namespace", namespace)  # fmt: skip
            out.append(self.add(Service("compute", h, argv, f"http://{h.ip}:{PORTS['compute']}")))
        return out

    def video(self, meta_host: Host, storage_hosts: Sequence[Host], uploader_host: Host,
              heartbeat: float = 1.0) -> dict[str, Any]:  # fmt: skip
        """Metadata on etcd, storage nodes that heartbeat to it, and an uploader."""
        meta_url = f"http://{meta_host.ip}:{PORTS['metadata']}"
        meta = self.add(Service("metadata", meta_host, serve_argv(
            "metadata", meta_host, self.data_dir(meta_host, "metadata"), "--store", "etcd",
            "--etcd", self._etcd_flag(meta_host), "--etcd-namespace", "video",
            "--maintenance-interval", "0", "--degraded-after", "4", "--down-after", "6"), meta_url))  # fmt: skip
        nodes = []
        for h in storage_hosts:
            argv = serve_argv("storage", h, self.data_dir(h, "storage"), "--node-id", f"node-{h.name}",
                              "--metadata-url", meta_url, "--heartbeat-interval", str(heartbeat),
                              "--compact-interval", "3600")  # fmt: skip
            nodes.append(self.add(Service("storage", h, argv, f"http://{h.ip}:{PORTS['storage']}")))
        up = self.add(Service("uploader", uploader_host, serve_argv(
            "uploader", uploader_host, self.data_dir(uploader_host, "uploader"), "--metadata-url", meta_url),
            f"http://{uploader_host.ip}:{PORTS['uploader']}"))  # fmt: skip
        deadline = time.monotonic() + 30
        while len(httpx.get(meta_url + "/nodes/healthy", timeout=5).json()) < len(nodes):
            if time.monotonic() > deadline:
                raise TimeoutError("storage nodes did not register with metadata")
            time.sleep(0.2)
        return {"metadata": meta, "storage": nodes, "uploader": up}
