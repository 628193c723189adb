"""Fixtures: a real fragmented MP4 made by FFmpeg, real storage nodes behind fault proxies, and
manifests built here (chunks stored with PUT /chunk), so each scenario controls placement."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from shoal import erasure
from shoal.testing.faultproxy import FaultProxy
from shoal.testing.storage import storage_node


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="session")
def fmp4(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """12 s of 640x360 test pattern + tone at ~2 Mbit/s, fragmented MP4 (about 3 MB)."""
    if shutil.which("ffmpeg") is None:
        pytest.fail("ffmpeg is required by the client tests: apt-get install ffmpeg")
    out = tmp_path_factory.mktemp("media") / "clip.mp4"
    cmd = ["ffmpeg", "-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc=size=640x360:rate=25"]
    cmd += ["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000", "-t", "12"]
    cmd += ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-g", "25", "-b:v", "2M"]
    cmd += ["-minrate", "2M", "-maxrate", "2M", "-bufsize", "2M", "-x264-params", "nal-hrd=cbr"]
    cmd += ["-c:a", "aac", "-shortest", "-movflags", "frag_keyframe+empty_moov+default_base_moof", str(out)]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    return out.read_bytes()


class Node:
    """A storage node (`shoal serve storage`) reached through its own FaultProxy."""

    def __init__(self, root: Path, i: int) -> None:
        self.proc = storage_node(root / f"node{i}")
        self.proxy: FaultProxy | None = None

    def start(self) -> Node:
        self.proc.start()
        self.proxy = FaultProxy(self.proc.port).start()
        return self

    @property
    def url(self) -> str:
        assert self.proxy is not None
        return self.proxy.url

    def put(self, stored_id: str, data: bytes) -> None:
        r = httpx.put(f"{self.proc.url}/chunk/{stored_id}", content=data, timeout=10)
        assert r.status_code in (200, 201), r.text

    def stop(self) -> None:
        if self.proxy is not None:
            self.proxy.stop()
        self.proc.stop()


@pytest.fixture(scope="session")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Node]]:
    """Five storage nodes, each behind a proxy the test can slow down or hang."""
    root = tmp_path_factory.mktemp("nodes")
    started: list[Node] = []
    try:
        for i in range(5):
            started.append(Node(root, i).start())
        yield started
    finally:
        for n in started:
            n.stop()


@pytest.fixture(autouse=True)
def healthy_proxies(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "nodes" in request.fixturenames:
        for n in request.getfixturevalue("nodes"):
            if n.proxy is not None:
                n.proxy.passthrough()


def split(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def build_manifest(
    video_id: str,
    data: bytes,
    nodes: list,
    *,
    chunk_size: int = 512 * 1024,
    seconds_per_chunk: float = 1.0,
    mode: str = "replication",
    replicas: list[list[int]] | None = None,
    skip: dict[int, set[int]] | None = None,
    unstored: set[int] = frozenset(),
) -> dict:
    """Store `data` in chunks on the nodes (PUT /chunk) and return the manifest the metadata
    service would give. `replicas[i]` lists node indexes for chunk i (default: rotating 3);
    erasure coding puts fragment j on node j; `skip[i]` are fragment indexes not stored;
    chunks in `unstored` are listed but stored nowhere."""
    chunks = []
    for seq, piece in enumerate(split(data, chunk_size)):
        chunk_id = f"{video_id}-chunk-{seq:03d}"
        entry = {
            "chunk_id": chunk_id,
            "sequence_num": seq,
            "size_bytes": len(piece),
            "checksum": sha(piece),
            "redundancy_mode": mode,
            "start_sec": seq * seconds_per_chunk,
            "duration_sec": seconds_per_chunk,
        }
        if mode == "replication":
            idx = replicas[seq] if replicas else [(seq + k) % len(nodes) for k in range(3)]
            for i in idx:
                if seq not in unstored:
                    nodes[i].put(chunk_id, piece)
            entry["replicas"] = [nodes[i].url for i in idx]
        else:
            frags = erasure.encode(piece)
            entry["fragments"] = []
            for j, frag in enumerate(frags):
                fid = f"{chunk_id}-frag-{j}"
                if j not in (skip or {}).get(seq, set()):
                    nodes[j].put(fid, frag)
                entry["fragments"].append(
                    {
                        "index": j,
                        "node_url": nodes[j].url,
                        "fragment_id": fid,
                        "checksum": sha(frag),
                        "size_bytes": len(frag),
                    }
                )
            entry["replicas"] = [nodes[j].url for j in range(5)]
        chunks.append(entry)
    return {
        "video_id": video_id,
        "title": video_id,
        "duration_sec": seconds_per_chunk * len(chunks),
        "total_chunks": len(chunks),
        "chunks": chunks,
    }
