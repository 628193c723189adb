"""A cluster of `shoal serve state` nodes on loopback that replicate with each other (tests, benches)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from shoal.crdt.node import load_signer
from shoal.testing import ServiceProcess, free_port

KINDS = ("peers", "cidrs", "associations", "dns", "instances", "nodes", "accounts")


class StateCluster:
    """N state nodes, each trusting every other's key and listing the others as peers.

    Node keys live in <root>/keys/<i>/ (outside the data dirs), so a node whose data
    directory is wiped restarts under the same, trusted, key.
    """

    def __init__(self, root: Path, n: int = 3, extra_args: tuple[str, ...] = ("--insecure-dev",),
                 sync_interval: float = 0.5, trust_extra: tuple[str, ...] = ()) -> None:  # fmt: skip
        self.root = Path(root)
        self.ports = [free_port() for _ in range(n)]
        self.keys = []
        for i in range(n):
            key_dir = self.root / "keys" / str(i)
            key_dir.mkdir(parents=True, exist_ok=True)
            self.keys.append(load_signer({"node_key_dir": str(key_dir)}, key_dir).public_b64)
        self.nodes: list[ServiceProcess] = []
        for i in range(n):
            args = [*extra_args, "--node-key-dir", str(self.root / "keys" / str(i))]
            args += ["--sync-interval", str(sync_interval)]
            for j in range(n):
                if j != i:
                    args += ["--peer", f"http://127.0.0.1:{self.ports[j]}", "--trust-node", self.keys[j]]
            for key in trust_extra:
                args += ["--trust-node", key]
            self.nodes.append(ServiceProcess("state", self.root / f"node{i}", args, port=self.ports[i]))

    def start(self, wait_ready: bool = True) -> StateCluster:
        for node in self.nodes:
            node.start()
        if wait_ready:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 30.0, nodes: list[int] | None = None) -> None:
        """Until each node says /health "healthy" (not catching_up with its peers any more)."""
        deadline = time.monotonic() + timeout
        for i in nodes if nodes is not None else range(len(self.nodes)):
            while True:
                with contextlib.suppress(httpx.HTTPError, ValueError):
                    if httpx.get(self.nodes[i].url + "/health", timeout=5).json() == "healthy":
                        break
                if time.monotonic() > deadline:
                    raise AssertionError(f"node {i} still catching up after {timeout} s")
                time.sleep(0.1)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> StateCluster:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]


def listing(url: str, headers: dict[str, str] | None = None) -> dict[str, list]:
    """Every kind's full listing on one node (what clients see)."""
    out = {}
    with httpx.Client(base_url=url, headers=headers or {}, timeout=10) as http:
        for kind in KINDS:
            r = http.get(f"/{kind}", params={"limit": 1000})
            r.raise_for_status()
            body = r.json()
            out[kind] = body[next(k for k in body if isinstance(body[k], list))]
    return out


def wait_converged(urls: list[str], timeout: float = 20.0, min_items: int = 0) -> dict[str, list]:
    """Poll until every node answers the same listings (with at least `min_items` documents)."""
    deadline = time.monotonic() + timeout
    last: list[Any] = []
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            last = [listing(u) for u in urls]
            if all(x == last[0] for x in last) and sum(map(len, last[0].values())) >= min_items:
                return last[0]
        time.sleep(0.2)
    sizes = [{k: len(v) for k, v in x.items()} for x in last]
    raise AssertionError(f"nodes did not converge within {timeout} s: {sizes}")


@contextlib.contextmanager
def cluster(root: Path, n: int = 3, **kwargs: Any) -> Iterator[StateCluster]:
    c = StateCluster(root, n, **kwargs)
    try:
        yield c.start()
    finally:
        c.stop()


def signed_post(
    url: str, path: str, message: Any, signer: Any, timeout: float = 30.0, cluster_id: str = "shoal",
    audience: str | None = None, nonce: str | None = None,
) -> httpx.Response:  # fmt: skip
    """A replication request signed with `signer` (a shoal.crdt.signing.Signer), as a node sends it
    (addressed to the node at `url`, whose key its public status names, unless `audience` is given)."""
    import secrets

    import msgspec

    from shoal.crdt.signing import (
        AUDIENCE_HEADER,
        KEY_HEADER,
        NONCE_HEADER,
        SIG_HEADER,
        TIME_HEADER,
        request_message,
    )

    body = message if isinstance(message, bytes) else msgspec.msgpack.encode(message)
    now = int(time.time())
    if audience is None:
        key = httpx.get(url + "/replication/status", timeout=timeout).json()["node_key"]
        audience = f"{cluster_id}:{key}"
    nonce = nonce or secrets.token_hex(16)
    headers = {
        KEY_HEADER: signer.public_b64,
        TIME_HEADER: str(now),
        SIG_HEADER: signer.sign(request_message("POST", path, body, now, audience, nonce)).hex(),
        AUDIENCE_HEADER: audience,
        NONCE_HEADER: nonce,
        "content-type": "application/msgpack",
    }
    return httpx.post(url + path, content=body, headers=headers, timeout=timeout)
