"""Erasure coding with a node down, with real processes (metadata service, 5 storage nodes,
uploader): uploads fall back to 3x replication with 4 healthy nodes and are migrated to 3+2
when the fifth returns; a node killed mid erasure-coded upload never leaves a partial video."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from shoal.testing.metadata import Cluster
from shoal.testing.uploader import make_video, post_upload, uploader_service, wait_upload

FAST = (
    "--maintenance-interval", "0", "--degraded-after", "1.5", "--down-after", "2.5",
    "--migrate-settle", "0",
)  # fmt: skip


def wait_for(check, timeout: float = 30.0, every: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise TimeoutError("condition not reached")


def healthy(m: str) -> int:
    return len(httpx.get(f"{m}/nodes/healthy", timeout=10).json())


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("v")
    return {
        "short": make_video(d / "short.mp4", size="640x360", seconds=4, bitrate="4M"),
        "dense": make_video(d / "dense.mp4", size="640x360", seconds=10, bitrate="16M"),
    }


def test_erasure_coded_upload_with_4_of_5_nodes_then_migrated_when_the_fifth_returns(tmp_path, videos):
    with Cluster(tmp_path, nodes=5, meta_args=FAST, heartbeat=0.3) as c:
        m = c.meta.url
        c.nodes[4].kill()
        wait_for(lambda: healthy(m) == 4)
        with uploader_service(tmp_path / "up", m) as up:
            body = post_upload(
                up.url, videos["short"], "four of five", redundancy_mode="erasure_coding"
            ).json()
            vid = body["video_id"]
            rec = httpx.get(f"{m}/redundancy/recommend/{vid}").json()
            assert rec["recommended_mode"] == "replication" and rec["preferred_mode"] == "erasure_coding"
            assert "5 healthy nodes" in rec["reason"]
            final = wait_upload(up.url, body["upload_session_id"])[-1]
            assert final["status"] == "completed", final
        man = httpx.get(f"{m}/manifest/{vid}", timeout=10).json()
        assert man["status"] == "active" and len(man["chunks"]) == final["total_chunks"] >= 1
        assert {ch["redundancy_mode"] for ch in man["chunks"]} == {"replication"}
        assert all(len(set(ch["replicas"])) == 3 for ch in man["chunks"])
        # nothing migrates while only 4 are healthy (and that is not counted as a failure)
        run = httpx.post(f"{m}/maintenance/run", timeout=120).json()
        assert run["migrated"] == 0 and run["failed"] == 0
        c.restart_node(4)
        wait_for(lambda: healthy(m) == 5)
        assert httpx.get(f"{m}/redundancy/recommend/{vid}").json()["recommended_mode"] == "erasure_coding"
        run = httpx.post(f"{m}/maintenance/run", timeout=120).json()
        assert run["migrated"] == len(man["chunks"]), run
        after = httpx.get(f"{m}/manifest/{vid}", timeout=10).json()
        for ch in after["chunks"]:
            assert ch["redundancy_mode"] == "erasure_coding" and ch["epoch"] == 1
            assert len({f["node_url"] for f in ch["fragments"]}) == 5  # one fragment per node
        # the migrated video still reads back whole: fragments decode to the committed checksum
        import hashlib

        import shoal.erasure

        for ch in after["chunks"]:
            frags = [
                httpx.get(f"{f['node_url']}/chunk/{f['fragment_id']}").content for f in ch["fragments"][:3]
            ]
            data = shoal.erasure.decode(frags)
            assert "sha256:" + hashlib.sha256(data).hexdigest() == ch["checksum"]


def test_node_killed_mid_erasure_coded_upload_ends_complete_or_failed(tmp_path, videos):
    with Cluster(tmp_path, nodes=5, meta_args=FAST, heartbeat=0.3) as c:
        m = c.meta.url
        with uploader_service(tmp_path / "up", m, "--concurrency", "1") as up:
            body = post_upload(
                up.url, videos["dense"], "killed midway", redundancy_mode="erasure_coding"
            ).json()
            sid, vid = body["upload_session_id"], body["video_id"]
            wait_for(
                lambda: httpx.get(f"{up.url}/upload/status/{sid}").json()["chunks_uploaded"] >= 1, every=0.01
            )
            c.nodes[2].kill()
            final = wait_upload(up.url, sid, timeout=180)[-1]
        video = httpx.get(f"{m}/manifest/{vid}?status=any", timeout=10).json()
        # replication could serve it (4 nodes left), so it completes: never partially active
        assert final["status"] == "completed", final
        assert video["status"] == "active"
        assert len(video["chunks"]) == final["total_chunks"] > 2
        assert [ch["sequence_num"] for ch in video["chunks"]] == list(range(final["total_chunks"]))
        modes = [ch["redundancy_mode"] for ch in video["chunks"]]
        assert modes[0] == "erasure_coding" and modes[-1] == "replication"  # fell back mid-way
        for ch in video["chunks"]:
            nodes = ch["replicas"]
            assert len(set(nodes)) == len(nodes)  # never two pieces of one chunk on one node
            if ch["redundancy_mode"] == "replication":
                assert c.nodes[2].url not in nodes
