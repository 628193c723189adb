"""`shoal upload`, as a user runs it: a subprocess, through the service or direct."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from shoal.testing import ServiceProcess
from shoal.testing.metadata import Cluster


def shoal(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "shoal", "upload", *args], capture_output=True, text=True, timeout=180
    )


@pytest.mark.parametrize("how", ["service", "direct"])
def test_upload_prints_the_video_id(how: str, uploader: ServiceProcess, cluster: Cluster, v720: Path) -> None:
    target = ["--uploader-url", uploader.url] if how == "service" else ["--metadata-url", cluster.meta.url]
    r = shoal(str(v720), "--title", f"cli {how}", "--redundancy", "replication", *target)
    assert r.returncode == 0, r.stderr
    video_id = r.stdout.strip().splitlines()[-1]
    assert "completed" in r.stderr and "100%" in r.stderr  # the progress lines
    m = httpx.get(f"{cluster.meta.url}/manifest/{video_id}", timeout=10).json()
    assert m["title"] == f"cli {how}"
    assert m["total_chunks"] >= 2 and len(m["chunks"]) == m["total_chunks"]


@pytest.mark.parametrize("how", ["service", "direct"])
def test_bad_file_exits_nonzero_with_the_reason(
    how: str, uploader: ServiceProcess, cluster: Cluster, tmp_path: Path
) -> None:
    junk = tmp_path / "junk.mp4"
    junk.write_text("not a video\n" * 10)
    target = ["--uploader-url", uploader.url] if how == "service" else ["--metadata-url", cluster.meta.url]
    r = shoal(str(junk), "--title", "x", "--quiet", *target)
    assert r.returncode == 1
    assert r.stdout == ""
    assert "not a readable video" in r.stderr


def test_missing_file() -> None:
    r = shoal("/nonexistent.mp4", "--title", "x", "--uploader-url", "http://127.0.0.1:9")
    assert r.returncode == 2 and "no such file" in r.stderr
