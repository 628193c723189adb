"""Fixtures: real `shoal serve metadata` and `shoal serve storage` processes on loopback."""

from __future__ import annotations

import os

import httpx
import pytest

from shoal.testing.metadata import sha


def blob(seed: int, size: int = 64 * 1024) -> bytes:
    return (seed.to_bytes(4, "big") + os.urandom(16)) * (size // 20) + b"x" * (size % 20)


def new_video(meta_url: str, title: str = "v") -> str:
    r = httpx.post(meta_url + "/video", json={"title": title, "duration_sec": 60}, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()["video_id"]


def commit(meta_url: str, chunk_id: str, video_id: str, seq: int, data: bytes, nodes: list[str], **extra):
    body = {
        "node_urls": nodes,
        "checksum": sha(data),
        "size_bytes": len(data),
        "video_id": video_id,
        "sequence_num": seq,
        "redundancy_mode": "replication",
        **extra,
    }
    return httpx.post(f"{meta_url}/chunk/{chunk_id}/commit", json=body, timeout=30)


def erasure_or_skip():
    try:
        import shoal.erasure
    except ImportError:
        pytest.skip("shoal.erasure is not built yet")
    return shoal.erasure
