"""Membership by committed configuration changes, with real processes: a metadata service, real
storage nodes (`shoal serve storage`) and a real uploader; nodes are killed with SIGKILL by PID."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from shoal.testing.metadata import Cluster
from shoal.testing.uploader import make_video, post_upload, uploader_service, wait_upload

from .conftest import blob, commit, new_video

FAST = ("--maintenance-interval", "0", "--degraded-after", "1.5", "--down-after", "2.5")


def wait_for(check, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise TimeoutError("condition not reached")


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    return make_video(tmp_path_factory.mktemp("v") / "v.mp4", size="640x360", seconds=6, bitrate="4M")


def test_fake_registration_plus_a_killed_node_still_uploads(tmp_path, video):
    with Cluster(tmp_path, nodes=5, meta_args=FAST, heartbeat=0.3) as c:
        m = c.meta.url
        r = httpx.post(f"{m}/nodes/register", params={"node_url": "http://127.0.0.1:9", "node_id": "fake"})
        assert r.status_code == 200
        epoch = r.json()["membership_epoch"]
        c.nodes[1].kill()  # one real node dies too: 4 of 6 registered nodes answer
        with uploader_service(tmp_path / "up", m) as up:
            body = post_upload(up.url, video, "fake plus killed").json()
            final = wait_upload(up.url, body["upload_session_id"])[-1]
            assert final["status"] == "completed", final
            man = httpx.get(f"{m}/manifest/{body['video_id']}", timeout=10).json()
            assert man["status"] == "active" and len(man["chunks"]) == final["total_chunks"] > 1
            for chunk in man["chunks"]:
                assert "http://127.0.0.1:9" not in chunk["replicas"]
                assert c.nodes[1].url not in chunk["replicas"]
        # the fake holds nothing: DELETE removes it at once (two committed changes)
        r = httpx.delete(f"{m}/nodes/fake", timeout=10)
        assert r.status_code == 200 and r.json()["status"] == "removed", r.text
        assert r.json()["membership_epoch"] == epoch + 2  # leaving, then removed
        ms = httpx.get(f"{m}/membership").json()
        assert "fake" not in ms["members"] and "fake" in ms["removed"]
        assert "fake" not in {n["node_id"] for n in httpx.get(f"{m}/nodes/all").json()["nodes"]}
        again = httpx.post(
            f"{m}/nodes/register", params={"node_url": "http://127.0.0.1:9", "node_id": "fake"}
        )
        assert again.status_code == 409 and "rejoin" in again.json()["detail"]
        assert httpx.delete(f"{m}/nodes/nobody").status_code == 404


def test_decommission_moves_data_then_removes_the_node(tmp_path):
    with Cluster(tmp_path, nodes=4, meta_args=FAST, heartbeat=0.3) as c:
        m = c.meta.url
        vid = new_video(m)
        leaving = c.urls[0]
        node_id = next(
            n["node_id"] for n in httpx.get(f"{m}/nodes/all").json()["nodes"] if n["node_url"] == leaving
        )
        chunks = {}
        for k in range(4):
            data = chunks[f"dc-{k}"] = blob(70 + k)
            for u in c.urls[:3]:
                c.put(u, f"dc-{k}", data)
            assert commit(m, f"dc-{k}", vid, k, data, c.urls[:3]).status_code == 200
        before = httpx.get(f"{m}/membership").json()["epoch"]
        r = httpx.delete(f"{m}/nodes/{node_id}", timeout=10)
        assert r.status_code == 202 and r.json()["status"] == "leaving" and r.json()["chunks_left"] == 4
        # leaving: listed, but no longer offered for new pieces
        assert leaving not in {n["node_url"] for n in httpx.get(f"{m}/nodes/healthy").json()}
        states = {n["node_url"]: n["membership"] for n in httpx.get(f"{m}/nodes/all").json()["nodes"]}
        assert states[leaving] == "leaving"
        r = httpx.post(f"{m}/maintenance/run", timeout=120)
        assert r.status_code == 200 and r.json()["removed_nodes"] == 1, r.json()
        ms = httpx.get(f"{m}/membership").json()
        assert node_id in ms["removed"] and node_id not in ms["members"] and ms["epoch"] == before + 2
        # the data moved first: every chunk has 3 replicas, none on the removed node, all intact
        man = httpx.get(f"{m}/manifest/{vid}?status=any").json()
        for chunk in man["chunks"]:
            assert leaving not in chunk["replicas"] and len(set(chunk["replicas"])) == 3
            assert chunk["epoch"] == 1
            for u in chunk["replicas"]:
                got = httpx.get(f"{u}/chunk/{chunk['chunk_id']}", timeout=10)
                assert got.status_code == 200 and got.content == chunks[chunk["chunk_id"]]
            assert httpx.head(f"{leaving}/chunk/{chunk['chunk_id']}").status_code == 404
        # the node keeps heartbeating and re-registering: it stays out
        time.sleep(1.5)
        assert node_id not in {n["node_id"] for n in httpx.get(f"{m}/nodes/all").json()["nodes"]}
        assert httpx.get(f"{m}/membership").json()["epoch"] == before + 2
