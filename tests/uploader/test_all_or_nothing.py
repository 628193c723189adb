"""Uploads are all or nothing: a storage node SIGKILLed in the middle of an erasure-coded upload
ends it either completed (the video active, every chunk 0..n-1 in its manifest) or failed (the
video failed, never listed or served as active, its committed chunks collected); a failed upload
that never reached chunking leaves a failed video, not an empty active one. Real processes.
"""

from __future__ import annotations

from pathlib import Path

import httpx

from shoal.testing.metadata import Cluster
from shoal.testing.uploader import post_upload, uploader_service, wait_upload
from shoal.uploader.distribute import chunk_id_for

from .conftest import status, wait_for


def check_no_partial_active(meta: str) -> None:
    """Every video the service lists as active has all of chunks 0..n-1."""
    for v in httpx.get(f"{meta}/videos", params={"limit": 1000}, timeout=10).json():
        assert v["status"] == "active"
        m = httpx.get(f"{meta}/manifest/{v['video_id']}", timeout=10).json()
        assert sorted(c["sequence_num"] for c in m["chunks"]) == list(range(m["total_chunks"])), v


def test_node_killed_mid_erasure_upload_is_complete_or_failed(dense: Path, tmp_path: Path) -> None:
    # dead nodes stay "healthy" in the registry for minutes: the uploader meets the dead node
    args = ("--maintenance-interval", "0", "--degraded-after", "300", "--down-after", "600")
    with Cluster(tmp_path / "c", nodes=5, meta_args=args) as c:
        with uploader_service(tmp_path / "up", c.meta.url, "--concurrency", "1", "--retries", "1") as up:
            body = post_upload(up.url, dense, "ec under fire", redundancy_mode="erasure_coding").json()
            vid, sid = body["video_id"], body["upload_session_id"]
            wait_for(lambda: status(up.url, sid)["chunks_uploaded"] >= 1)
            c.nodes[2].kill()
            final = wait_upload(up.url, sid)[-1]
        m = c.meta.url
        assert final["status"] in ("completed", "failed"), final
        if final["status"] == "completed":
            man = httpx.get(f"{m}/manifest/{vid}", timeout=10).json()
            assert man["status"] == "active" and man["total_chunks"] == final["total_chunks"]
            assert sorted(ch["sequence_num"] for ch in man["chunks"]) == list(range(final["total_chunks"]))
        else:
            r = httpx.get(f"{m}/manifest/{vid}", timeout=10)
            assert r.status_code == 409 and "failed" in r.json()["detail"], r.text
            assert vid not in [v["video_id"] for v in httpx.get(f"{m}/videos", timeout=10).json()]
            man = httpx.get(f"{m}/manifest/{vid}", params={"status": "failed"}, timeout=10).json()
            assert man["status"] == "failed" and man["reason"] == final["error"]
            assert "video marked failed" in final["cleanup"], final
            committed = [ch["chunk_id"] for ch in man["chunks"]]
            # the failed video's committed chunks are collected by the metadata service
            httpx.post(f"{m}/maintenance/run", timeout=60).raise_for_status()
            after = httpx.get(f"{m}/manifest/{vid}", params={"status": "failed"}, timeout=10).json()
            assert after["chunks"] == []
            live = [n.url for i, n in enumerate(c.nodes) if i != 2]
            for cid in committed:
                ids = [cid] + [f"{cid}-frag-{i}" for i in range(5)]
                held = [
                    u for u in live for s in ids if httpx.head(f"{u}/chunk/{s}", timeout=5).status_code == 200
                ]
                assert held == [], (cid, held)
        check_no_partial_active(m)


def test_failed_upload_without_chunks_is_failed_not_active(tmp_path: Path, small: Path) -> None:
    """The issue's "active videos with 0 chunks": an upload that cannot place a single chunk
    (1 node; replication needs 3) ends with its video failed."""
    with Cluster(tmp_path / "c", nodes=1) as c:
        with uploader_service(tmp_path / "up", c.meta.url, "--retries", "0") as up:
            body = post_upload(up.url, small, "nowhere to go", redundancy_mode="replication").json()
            final = wait_upload(up.url, body["upload_session_id"])[-1]
        assert final["status"] == "failed", final
        m = c.meta.url
        assert httpx.get(f"{m}/videos", timeout=10).json() == []
        failed = httpx.get(f"{m}/videos", params={"status": "failed"}, timeout=10).json()
        assert [v["video_id"] for v in failed] == [body["video_id"]]
        assert failed[0]["total_chunks"] == 0 and failed[0]["reason"] == final["error"]
        for seq in range(final.get("total_chunks") or 0):
            cid = chunk_id_for(body["video_id"], seq)
            assert httpx.head(f"{c.urls[0]}/chunk/{cid}", timeout=5).status_code == 404
