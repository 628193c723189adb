"""End to end with every real part: metadata service, 5 storage nodes, a video uploaded with
`shoal upload`, played with `shoal play` (file output, and the dashboard in headless Chromium)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from shoal.testing import free_port, wait_http
from shoal.testing.browser import Chromium, chromium_path
from shoal.testing.metadata import Cluster
from shoal.testing.uploader import make_video

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    with Cluster(tmp_path_factory.mktemp("cluster"), nodes=5) as c:
        yield c


def upload(cluster: Cluster, video: Path, mode: str) -> str:
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "shoal",
            "upload",
            str(video),
            "--title",
            "e2e",
            "--metadata-url",
            cluster.meta.url,
            "--redundancy",
            mode,
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_video(tmp_path_factory.mktemp("v") / "clip.mp4", size="640x360", seconds=16, bitrate="2M")


def stored_stream(cluster: Cluster, video_id: str) -> bytes:
    """The reassembled stream read straight from the nodes (replicated chunks), for comparison."""
    m = httpx.get(f"{cluster.meta.url}/manifest/{video_id}", timeout=10).json()
    return b"".join(
        httpx.get(f"{c['replicas'][0]}/chunk/{c['chunk_id']}", timeout=10).content for c in m["chunks"]
    )


@pytest.mark.parametrize(
    ("mode", "strategy", "pure"), [("replication", "smart", False), ("erasure_coding", "round-robin", True)]
)
def test_shoal_play_writes_the_stream(
    cluster: Cluster, clip: Path, tmp_path: Path, mode: str, strategy: str, pure: bool
) -> None:
    video_id = upload(cluster, clip, mode)
    out = tmp_path / "out.mp4"
    env = {**os.environ, "SHOAL_PURE_PYTHON": "1" if pure else "0"}
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "shoal",
            "play",
            video_id,
            "--metadata-url",
            cluster.meta.url,
            "--output",
            str(out),
            "--speed",
            "20",
            "--strategy",
            strategy,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert (
        summary["strategy"] == strategy
        and summary["rebuffering_events"] == 0
        and summary["chunks_played"] >= 2
    )
    if mode == "replication":
        assert (
            hashlib.sha256(out.read_bytes()).digest()
            == hashlib.sha256(stored_stream(cluster, video_id)).digest()
        )
    probe = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0", str(out)],
        capture_output=True,
        text=True,
    )
    assert abs(float(probe.stdout) - 16.0) < 0.5
    views = httpx.get(f"{cluster.meta.url}/video/{video_id}/popularity", timeout=10).json()
    assert views["view_count"] == 1


def test_shoal_play_unknown_video(cluster: Cluster) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "shoal", "play", "nope", "--metadata-url", cluster.meta.url],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 1 and "not found" in r.stderr


@pytest.mark.skipif(chromium_path() is None, reason="needs Debian chromium (scripts/apt-packages.txt)")
async def test_dashboard_in_chromium(cluster: Cluster, clip: Path, tmp_path: Path) -> None:
    """The page loads with no console error, its charts redraw, and the video plays (H.264 via MSE)."""
    video_id = upload(cluster, clip, "replication")
    port = free_port()
    log = open(tmp_path / "play.log", "wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "shoal",
            "play",
            video_id,
            "--metadata-url",
            cluster.meta.url,
            "--dashboard",
            "--dashboard-port",
            str(port),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        await asyncio.to_thread(wait_http, f"http://127.0.0.1:{port}/health", 30, proc)
        async with Chromium() as browser:
            page = await browser.open(f"http://127.0.0.1:{port}/")
            mime = await page.wait_for("window.__dash.mime", timeout=30)
            assert await page.evaluate(f"MediaSource.isTypeSupported({json.dumps(mime)})"), (
                f"Chromium cannot play {mime}"
            )
            await page.wait_for("document.getElementById('player').currentTime > 3", timeout=30)
            drawn = await page.evaluate("window.__dash.chartsDrawn")
            await page.wait_for(f"window.__dash.chartsDrawn > {drawn}", timeout=10)
            assert await page.evaluate("document.getElementById('state').textContent") in (
                "healthy",
                "low",
                "finished",
            )
            rows = await page.evaluate("document.querySelectorAll('#nodes tr').length")
            assert rows == 5
            assert await page.evaluate("document.getElementById('player').error") is None
            ARTIFACTS.mkdir(exist_ok=True)
            (ARTIFACTS / "client-dashboard.png").write_bytes(await page.screenshot())
            assert page.console_errors == [], page.console_errors
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
        log.close()
