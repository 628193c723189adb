"""An auth dir with a key per role, and a metadata service with storage nodes that run with it:
what the video stack's auth tests start from (tests/{client,uploader,metadata}/test_auth_*.py)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx

from shoal.testing import ServiceProcess
from shoal.testing.metadata import metadata_service
from shoal.testing.storage import storage_node
from shoal.web.auth import AuthDir


def auth_dir_with_keys(
    root: Path, roles: Sequence[str] = ("viewer", "uploader", "operator")
) -> tuple[str, dict]:
    """`shoal auth init` in root/auth plus one key per role: (the dir, {role: key}, admin included)."""
    d = AuthDir(root / "auth")
    keys = {"admin": d.init()}
    for role in roles:
        keys[role] = d.create_key(role, role)[1]
    return str(root / "auth"), keys


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@contextlib.contextmanager
def signed_video_cluster(
    root: Path, auth_dir: str, viewer_key: str, nodes: int = 3
) -> Iterator[tuple[ServiceProcess, list[ServiceProcess]]]:
    """A metadata service and `nodes` storage nodes on `auth_dir`, yielded once every node's
    signed registration has landed; all stopped at the end."""
    meta = metadata_service(root / "meta", "--maintenance-interval", "0", "--auth-dir", auth_dir).start()
    started: list[ServiceProcess] = []
    try:
        for i in range(nodes):
            node = storage_node(
                root / f"node{i}",
                "--metadata-url",
                meta.url,
                "--heartbeat-interval",
                "1",
                "--auth-dir",
                auth_dir,
            )
            started.append(node.start())
        deadline = time.monotonic() + 20
        healthy: list = []
        while time.monotonic() < deadline:
            healthy = httpx.get(meta.url + "/nodes/healthy", headers=bearer(viewer_key), timeout=5).json()
            if len(healthy) == nodes:
                break
            time.sleep(0.1)
        assert len(healthy) == nodes, "signed registrations did not land"
        yield meta, started
    finally:
        for node in reversed(started):
            node.stop()
        meta.stop()
