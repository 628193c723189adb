"""Failures: the uploader killed with -9 mid-upload, storage nodes dying mid-upload, no node left.

Real processes throughout; nodes are killed with SIGKILL by PID.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from shoal.testing.metadata import Cluster
from shoal.testing.uploader import post_upload, uploader_service, wait_upload
from shoal.uploader.distribute import chunk_id_for
from shoal.uploader.sessions import INTERRUPTED

from .conftest import status, wait_for


def held(urls: list[str], stored_id: str) -> list[str]:
    return [u for u in urls if httpx.head(f"{u}/chunk/{stored_id}", timeout=5).status_code == 200]


def test_kill_9_mid_upload_reports_failed_and_cleans_up(
    cluster: Cluster, small: Path, dense: Path, tmp_path: Path
) -> None:
    up = uploader_service(tmp_path / "up", cluster.meta.url, "--concurrency", "1")
    up.start()
    try:
        done = post_upload(up.url, small, "finished before the crash").json()
        assert wait_upload(up.url, done["upload_session_id"])[-1]["status"] == "completed"

        body = post_upload(up.url, dense, "crashes midway", redundancy_mode="replication").json()
        sid = body["upload_session_id"]
        wait_for(lambda: status(up.url, sid)["chunks_uploaded"] >= 1)
        up.kill()  # SIGKILL, mid-distribution
    finally:
        up.stop()

    with uploader_service(tmp_path / "up", cluster.meta.url, port=up.port) as again:
        st = status(again.url, sid)
        assert st["status"] == "failed" and st["error"] == INTERRUPTED
        assert st["video_id"] == body["video_id"]
        assert status(again.url, done["upload_session_id"])["status"] == "completed"
        assert httpx.get(f"{again.url}/health", timeout=10).json()["active_uploads"] == 0
        st = wait_for(lambda: (s := status(again.url, sid)).get("cleanup") and s)
        assert "deleted" in st["cleanup"]
        # what was committed stays consistent with the manifest; nothing uncommitted is left
        committed = {
            c["chunk_id"]
            for c in httpx.get(
                f"{cluster.meta.url}/manifest/{body['video_id']}", params={"status": "failed"}, timeout=10
            ).json()["chunks"]
        }
        assert 1 <= len(committed) < st["total_chunks"]
        for seq in range(st["total_chunks"]):
            cid = chunk_id_for(body["video_id"], seq)
            holders = held(cluster.urls, cid)
            assert len(holders) == (3 if cid in committed else 0), (cid, holders)
        # temporary files of the killed process were removed at start-up
        assert list((again.data_dir / "incoming").iterdir()) == []


@pytest.fixture()
def fragile(tmp_path: Path):
    """4 nodes; the metadata service keeps listing dead nodes as healthy for minutes, so the
    uploader meets them as a real client would between heartbeats."""
    args = ("--maintenance-interval", "0", "--degraded-after", "300", "--down-after", "600")
    with Cluster(tmp_path / "c", nodes=4, meta_args=args) as c:
        yield c


def test_node_dies_mid_upload(fragile: Cluster, dense: Path, tmp_path: Path) -> None:
    with uploader_service(tmp_path / "up", fragile.meta.url, "--concurrency", "1") as up:
        body = post_upload(up.url, dense, "survivor", redundancy_mode="replication").json()
        sid = body["upload_session_id"]
        st = wait_for(lambda: (s := status(up.url, sid))["chunks_uploaded"] >= 1 and s)
        victim = fragile.nodes[1]
        victim.kill()
        before = st["chunks_uploaded"]
        final = wait_upload(up.url, sid)[-1]
        assert final["status"] == "completed", final
        assert before + 3 < final["total_chunks"], "the node died well before the upload finished"
    m = httpx.get(f"{fragile.meta.url}/manifest/{body['video_id']}", timeout=10).json()
    chunks = sorted(m["chunks"], key=lambda c: c["sequence_num"])
    assert len(chunks) == final["total_chunks"]
    live = [u for u in fragile.urls if u != victim.url]
    data = []
    for c in chunks:
        assert len(set(c["replicas"])) == 3
        # with --concurrency 1 at most 2 chunks are in flight (one sending, one committing):
        # any chunk after those was stored after the node died and never placed on it
        if c["sequence_num"] > before + 2:
            assert victim.url not in c["replicas"], c
        copies = {
            httpx.get(f"{u}/chunk/{c['chunk_id']}", timeout=10).content for u in c["replicas"] if u in live
        }
        assert len(copies) == 1
        data.append(copies.pop())
    from .test_service import decode_errors

    assert decode_errors(b"".join(data)) == ""


def test_no_node_left_fails_and_removes_what_was_stored(
    fragile: Cluster, dense: Path, tmp_path: Path
) -> None:
    for victim in fragile.nodes[:2]:
        victim.kill()  # 2 of 4 left: replication needs 3
    live = fragile.urls[2:]
    with uploader_service(tmp_path / "up", fragile.meta.url, "--retries", "1") as up:
        body = post_upload(up.url, dense, "doomed", redundancy_mode="replication").json()
        final = wait_upload(up.url, body["upload_session_id"])[-1]
    assert final["status"] == "failed"
    assert "no healthy node left" in final["error"], final["error"]
    assert final["cleanup"].startswith("deleted")
    assert int(final["cleanup"].split()[1]) >= 1, "pieces had reached the live nodes"
    for seq in range(final["total_chunks"]):
        assert held(live, chunk_id_for(body["video_id"], seq)) == []
    m = httpx.get(
        f"{fragile.meta.url}/manifest/{body['video_id']}", params={"status": "any"}, timeout=10
    ).json()
    assert m["chunks"] == [] and m["status"] == "failed"
