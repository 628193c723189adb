"""Fixtures: FFmpeg-generated videos, a real metadata service with 5 real storage nodes, and a
real `shoal serve uploader`, all on loopback. Videos are made once per session."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import httpx
import pytest

from shoal.testing.metadata import Cluster
from shoal.testing.uploader import make_video, uploader_service

MAX_UPLOAD = 24 * 1024 * 1024

needs_ffmpeg = pytest.mark.skipif(
    shutil.which("ffmpeg") is None or shutil.which("ffprobe") is None,
    reason="FFmpeg is not installed (Debian package 'ffmpeg', listed in scripts/apt-packages.txt)",
)


@pytest.fixture(scope="session")
def video_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("ffmpeg") is None:
        pytest.fail("ffmpeg is required by the uploader tests: apt-get install ffmpeg")
    return tmp_path_factory.mktemp("videos")


@pytest.fixture(scope="session")
def v720(video_dir: Path) -> Path:
    """720p at ~4 Mbit/s, 6 s: about 3 MB, more than one chunk."""
    return make_video(video_dir / "v720.mp4", size="1280x720", seconds=6, bitrate="4M")


@pytest.fixture(scope="session")
def v1080(video_dir: Path) -> Path:
    """1080p at ~8 Mbit/s, 5 s: about 5 MB (a 10 s segment at this rate would be 10 MB)."""
    return make_video(video_dir / "v1080.mp4", size="1920x1080", seconds=5, bitrate="8M")


@pytest.fixture(scope="session")
def small(video_dir: Path) -> Path:
    return make_video(video_dir / "small.mp4", size="320x240", seconds=2, bitrate="300k")


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    """`shoal serve metadata` + 5 `shoal serve storage` nodes (erasure coding needs 5)."""
    with Cluster(tmp_path_factory.mktemp("cluster"), nodes=5) as c:
        yield c


@pytest.fixture(scope="session")
def uploader(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("uploader")
    with uploader_service(root / "data", cluster.meta.url, "--max-upload-bytes", str(MAX_UPLOAD)) as up:
        yield up


@pytest.fixture(scope="module")
def dense(video_dir: Path) -> Path:
    """360p at 16 Mbit/s for 10 s: ~20 MB, about 10 chunks, quick to encode."""
    return make_video(video_dir / "dense.mp4", size="640x360", seconds=10, bitrate="16M")


def status(base: str, sid: str) -> dict:
    """An upload session's status, as the uploader reports it."""
    return httpx.get(f"{base}/upload/status/{sid}", timeout=10).json()


def wait_for(predicate, timeout: float = 60.0, every: float = 0.01):
    """The first truthy value of predicate() within `timeout` s (TimeoutError otherwise)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise TimeoutError("condition not reached")
