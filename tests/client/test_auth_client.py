"""The smart client and the dashboard with --auth-dir services (issue #19), real processes.

A video goes in through `shoal upload` in direct mode (signed as a node with --auth-dir), then
the Player needs a viewer key for the manifest, the pings and the chunk GETs: without one it
cannot play, with one it plays every chunk. The dashboard's /api routes need a viewer; its
player, without --api-key, uses a node token from the auth dir.
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from shoal.client.dashboard import create_app
from shoal.client.session import Player, PlayerError
from shoal.testing import asgi_client
from shoal.testing.authstack import auth_dir_with_keys, signed_video_cluster
from shoal.testing.uploader import make_video


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    root = tmp_path_factory.mktemp("authplay")
    auth_dir, keys = auth_dir_with_keys(root, ("viewer",))
    with signed_video_cluster(root, auth_dir, keys["viewer"]) as (meta, _nodes):
        video = make_video(root / "v.mp4", size="320x240", seconds=4, bitrate="1M")
        cmd = [sys.executable, "-m", "shoal", "upload", str(video), "--title", "t", "--quiet"]
        cmd += ["--metadata-url", meta.url, "--auth-dir", auth_dir]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        yield {"meta": meta, "keys": keys, "dir": auth_dir, "video_id": done.stdout.strip().splitlines()[-1]}


async def test_player_needs_a_viewer_key(stack, monkeypatch):
    monkeypatch.delenv("SHOAL_API_KEY", raising=False)
    with pytest.raises(PlayerError, match=r"401|authentication required"):
        await Player(stack["video_id"], stack["meta"].url, speed=50).play()
    summary = await Player(
        stack["video_id"], stack["meta"].url, speed=50, api_key=stack["keys"]["viewer"]
    ).play()
    assert summary["chunks_played"] >= 1
    assert summary["download_success_rate"] == 1.0
    # the same through the environment, as `shoal play` and the dashboard read it
    monkeypatch.setenv("SHOAL_API_KEY", stack["keys"]["viewer"])
    p = Player(stack["video_id"], stack["meta"].url, speed=50)
    assert (await p.prepare()).chunks


async def test_dashboard_routes_need_a_viewer_and_its_player_a_credential(stack, monkeypatch):
    monkeypatch.delenv("SHOAL_API_KEY", raising=False)
    app = create_app({"metadata_url": stack["meta"].url, "auth_dir": stack["dir"]})
    viewer = {"Authorization": f"Bearer {stack['keys']['viewer']}"}
    async with asgi_client(app) as c:
        assert (await c.get("/")).status_code == 200  # the page asks for the key itself
        assert (await c.get("/api/status")).status_code == 401
        body = {"video_id": stack["video_id"], "speed": 50}
        assert (await c.post("/api/play", json=body)).status_code == 401
        r = await c.post("/api/play", json=body, headers=viewer)
        assert r.status_code == 200, r.text  # the manifest was fetched with its node token
        deadline = time.monotonic() + 60
        stream: dict = {}
        while time.monotonic() < deadline:
            stream = (await c.get("/api/stream", headers=viewer)).json()
            if stream["finished"]:
                break
            await __import__("asyncio").sleep(0.1)
        assert stream["finished"] and stream["available"] == stream["total_chunks"]
        seg = await c.get("/api/segment/0", headers=viewer)
        assert seg.status_code == 200 and seg.content
