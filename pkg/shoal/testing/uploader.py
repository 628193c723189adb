"""Test and bench helpers for the uploader: generated videos and `shoal serve uploader`."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import httpx

from shoal.testing import ServiceProcess, free_port
from shoal.uploader.media import tool


def make_video(
    path: str | Path,
    *,
    size: str = "1280x720",
    seconds: float = 3.0,
    bitrate: str = "4M",
    rate: int = 30,
    audio: bool = True,
    codec: str = "libx264",
    extra: tuple[str, ...] = (),
) -> Path:
    """A test video from FFmpeg's testsrc at a constant bitrate (x264 CBR with filler data, so
    the bytes per second really are `bitrate`). The container follows the file extension."""
    path = Path(path)
    if path.exists():
        return path
    args = [tool("ffmpeg"), "-nostdin", "-v", "error", "-y"]
    args += ["-f", "lavfi", "-i", f"testsrc=size={size}:rate={rate}"]
    if audio:
        args += ["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000"]
    args += ["-t", str(seconds)]
    if codec == "libx264":
        args += ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-g", str(rate * 2)]
        args += ["-b:v", bitrate, "-minrate", bitrate, "-maxrate", bitrate, "-bufsize", bitrate]
        args += ["-x264-params", "nal-hrd=cbr"]
    else:
        args += ["-c:v", codec, "-b:v", bitrate]
    if audio:
        args += ["-c:a", "aac" if path.suffix not in (".webm",) else "libvorbis", "-shortest"]
    args += [*extra, str(path.with_suffix(".tmp" + path.suffix))]
    subprocess.run(args, check=True, capture_output=True, timeout=600)
    path.with_suffix(".tmp" + path.suffix).rename(path)
    return path


def uploader_service(
    data_dir: str | Path, metadata_url: str, *args: str, port: int | None = None, **kw: Any
) -> ServiceProcess:
    """`shoal serve uploader` on 127.0.0.1 (not started yet)."""
    return ServiceProcess(
        "uploader", data_dir, ["--metadata-url", metadata_url, *args], port=port or free_port(), **kw
    )


def wait_upload(base_url: str, session_id: str, timeout: float = 120.0, every: float = 0.05) -> list[dict]:
    """Poll the status until completed or failed; returns every distinct status seen, in order."""
    seen: list[dict] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = httpx.get(f"{base_url}/upload/status/{session_id}", timeout=10).json()
        if not seen or (body["status"], body["progress"]) != (seen[-1]["status"], seen[-1]["progress"]):
            seen.append(body)
        if body["status"] in ("completed", "failed"):
            return seen
        time.sleep(every)
    raise TimeoutError(f"upload {session_id} still {seen[-1] if seen else '?'} after {timeout} s")


def post_upload(
    base_url: str, path: str | Path | None, title: str | None = "test", **fields: str
) -> httpx.Response:
    """POST /upload with the file streamed from disk (httpx reads it in pieces)."""
    data = {k: v for k, v in {"title": title, **fields}.items() if v is not None}
    if path is None:
        return httpx.post(f"{base_url}/upload", data=data, files={"other": ("x", b"")}, timeout=120)
    with open(path, "rb") as f:
        return httpx.post(
            f"{base_url}/upload",
            data=data,
            files={"video": (Path(path).name, f, "application/octet-stream")},
            timeout=120,
        )
