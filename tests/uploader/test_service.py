"""The uploader service end to end: real `shoal serve uploader`, metadata service and 5 storage
nodes on loopback, real FFmpeg. Every chunk is read back from the nodes."""

from __future__ import annotations

import hashlib
import itertools
import subprocess
from pathlib import Path

import httpx
import pytest

from shoal.testing import ServiceProcess
from shoal.testing.metadata import Cluster
from shoal.testing.uploader import post_upload, uploader_service, wait_upload
from shoal.uploader.sessions import RANGES, STATUSES

from .conftest import MAX_UPLOAD

MiB = 1024 * 1024


def get(url: str) -> bytes:
    r = httpx.get(url, timeout=10)
    assert r.status_code == 200, (url, r.status_code, r.text)
    return r.content


def manifest(cluster: Cluster, video_id: str) -> dict:
    r = httpx.get(f"{cluster.meta.url}/manifest/{video_id}", timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def chunk_bytes(chunk: dict) -> bytes:
    """The chunk read back from the nodes: every replica, or 3 of the 5 fragments decoded."""
    if chunk["redundancy_mode"] == "replication":
        copies = {get(f"{url}/chunk/{chunk['chunk_id']}") for url in chunk["replicas"]}
        assert len(copies) == 1, "replicas differ"
        return copies.pop()
    from shoal.erasure import decode

    # the manifest lists fragments as the placement holds them (index, node_url, fragment_id, ...)
    frags = {f.get("fragment_index", f.get("index")): f for f in chunk["fragments"]}
    assert sorted(frags) == [0, 1, 2, 3, 4]
    assert len({f["node_url"] for f in frags.values()}) == 5, "fragments on 5 distinct nodes"
    for f in frags.values():  # each fragment is stored intact where the manifest says
        data = get(f"{f['node_url']}/chunk/{f['fragment_id']}")
        assert "sha256:" + hashlib.sha256(data).hexdigest() == f["checksum"]
    # any 3 rebuild the chunk: use a data fragment and both parity fragments
    chosen = {i: get(f"{frags[i]['node_url']}/chunk/{frags[i]['fragment_id']}") for i in (0, 3, 4)}
    return decode(chosen)


def decode_errors(data: bytes) -> str:
    r = subprocess.run(
        ["ffmpeg", "-nostdin", "-v", "error", "-i", "-", "-f", "null", "-"], input=data, capture_output=True
    )
    return r.stderr.decode(errors="replace").strip() + ("" if r.returncode == 0 else f" rc={r.returncode}")


def remuxed(src: Path, tmp: Path) -> bytes:
    """What the uploader stores: the same remux the service runs."""
    import asyncio

    from shoal.uploader.media import remux

    out = tmp / "ref.mp4"
    asyncio.run(remux(src, out))
    return out.read_bytes()


def check_progression(seen: list[dict]) -> None:
    order = [STATUSES.index(s["status"]) for s in seen]
    assert order == sorted(order), [s["status"] for s in seen]
    progress = [s["progress"] for s in seen]
    assert progress == sorted(progress)
    for s in seen:
        if s["status"] in RANGES:
            low, high = RANGES[s["status"]]
            assert low <= s["progress"] <= high, s


@pytest.mark.parametrize(("which", "mode"), [("v720", "replication"), ("v1080", "erasure_coding")])
def test_upload_end_to_end(
    uploader: ServiceProcess, cluster: Cluster, which: str, mode: str, request, tmp_path: Path
) -> None:
    src: Path = request.getfixturevalue(which)
    r = post_upload(uploader.url, src, f"my {which}", redundancy_mode=mode)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "processing" and body["title"] == f"my {which}"
    assert body["message"] == "Video upload received and processing started"
    assert body["status_url"] == f"/upload/status/{body['upload_session_id']}"
    seen = wait_upload(uploader.url, body["upload_session_id"])
    final = seen[-1]
    assert final["status"] == "completed", final
    assert final["progress"] == 100 and final["error"] is None
    check_progression(seen)
    assert final["video_id"] == body["video_id"]
    assert final["filename"] == src.name
    assert final["redundancy_mode"] == mode

    m = manifest(cluster, body["video_id"])
    assert m["video_id"] == body["video_id"] and m["title"] == f"my {which}"
    assert m["duration_sec"] == pytest.approx(6.0 if which == "v720" else 5.0, abs=0.1)
    chunks = sorted(m["chunks"], key=lambda c: c["sequence_num"])
    assert len(chunks) == m["total_chunks"] == final["total_chunks"] >= 2
    assert [c["sequence_num"] for c in chunks] == list(range(len(chunks)))
    assert all(0 < c["size_bytes"] <= 2 * MiB for c in chunks)
    assert {c["redundancy_mode"] for c in chunks} == {mode}
    pieces = []
    for c in chunks:
        data = chunk_bytes(c)
        assert len(data) == c["size_bytes"]
        assert "sha256:" + hashlib.sha256(data).hexdigest() == c["checksum"]
        if mode == "replication":
            assert len(set(c["replicas"])) == 3
        pieces.append(data)
    whole = b"".join(pieces)
    assert whole == remuxed(src, tmp_path), "byte-exact reassembly"
    assert decode_errors(whole) == ""
    # the temporary files are gone (spec step 7)
    data_dir = uploader.data_dir
    assert list((data_dir / "incoming").iterdir()) == [] and list((data_dir / "work").iterdir()) == []


def test_default_mode_comes_from_the_metadata_service(
    uploader: ServiceProcess, cluster: Cluster, small: Path
) -> None:
    r = post_upload(uploader.url, small, "cold video")
    assert r.status_code == 200, r.text
    final = wait_upload(uploader.url, r.json()["upload_session_id"])[-1]
    rec = httpx.get(f"{cluster.meta.url}/redundancy/recommend/{r.json()['video_id']}", timeout=10).json()
    assert final["status"] == "completed", final
    assert final["redundancy_mode"] == rec["recommended_mode"]
    assert {c["redundancy_mode"] for c in manifest(cluster, r.json()["video_id"])["chunks"]} == {
        rec["recommended_mode"]
    }


def test_manifest_records_chunk_times(uploader: ServiceProcess, cluster: Cluster, v720: Path) -> None:
    r = post_upload(uploader.url, v720, "timed", redundancy_mode="replication")
    assert wait_upload(uploader.url, r.json()["upload_session_id"])[-1]["status"] == "completed"
    chunks = sorted(manifest(cluster, r.json()["video_id"])["chunks"], key=lambda c: c["sequence_num"])
    assert chunks[0]["start_sec"] == 0.0
    for a, b in itertools.pairwise(chunks):  # in order and without gaps (a split fragment is shared)
        assert a["duration_sec"] > 0
        assert a["start_sec"] <= b["start_sec"] <= a["start_sec"] + a["duration_sec"] + 1e-6
    end = chunks[-1]["start_sec"] + chunks[-1]["duration_sec"]
    assert end == pytest.approx(6.0, abs=0.1)


@pytest.mark.parametrize(
    ("content", "fields", "message"),
    [
        (b"hello, I am plain text and no video at all\n" * 50, {"title": "t"}, "not a readable video"),
        (b"", {"title": "t"}, "empty"),
        (None, {"title": "t"}, "missing form field 'video'"),
        ("video", {}, "missing form field 'title'"),
        ("video", {"title": "   "}, "title must be"),
        ("video", {"title": "t", "redundancy_mode": "raid5"}, "redundancy_mode must be"),
        ("truncated", {"title": "t"}, "truncated|damaged"),
    ],
)
def test_bad_uploads_are_400(
    uploader: ServiceProcess, small: Path, tmp_path: Path, content, fields, message
) -> None:
    path = tmp_path / "upload.mp4"
    if content == "video":
        path = small
    elif content == "truncated":
        subprocess.run(
            ["ffmpeg", "-v", "error", "-i", str(small), "-c", "copy", "-movflags", "faststart", str(path)],
            check=True,
        )
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif content is not None:
        path.write_bytes(content)
    r = post_upload(uploader.url, path if content is not None else None, fields.pop("title", None), **fields)
    assert r.status_code == 400, r.text
    detail = r.json()["detail"]
    assert isinstance(detail, str)
    import re

    assert re.search(message, detail), detail


def test_not_multipart_is_400(uploader: ServiceProcess) -> None:
    r = httpx.post(f"{uploader.url}/upload", json={"title": "x"}, timeout=10)
    assert r.status_code == 400 and "multipart/form-data" in r.json()["detail"]


def test_too_large_is_413(uploader: ServiceProcess, tmp_path: Path) -> None:
    big = tmp_path / "big.mp4"
    big.write_bytes(b"\0" * (MAX_UPLOAD + 1024))
    r = post_upload(uploader.url, big, "big")  # Content-Length is known: refused up front
    assert r.status_code == 413 and "limit" in r.json()["detail"]

    def stream():  # no Content-Length: refused while streaming
        boundary = "b0undary"
        yield f'--{boundary}\r\nContent-Disposition: form-data; name="video"; filename="x"\r\n\r\n'.encode()
        for _ in range(MAX_UPLOAD // MiB + 2):
            yield b"\0" * MiB
        yield f"\r\n--{boundary}--\r\n".encode()

    try:
        r = httpx.post(
            f"{uploader.url}/upload",
            content=stream(),
            headers={"content-type": "multipart/form-data; boundary=b0undary"},
            timeout=30,
        )
    except httpx.HTTPError:
        pytest.fail("the server should answer 413, not drop the connection")
    assert r.status_code == 413, r.text


def test_status_of_unknown_session_is_404(uploader: ServiceProcess) -> None:
    r = httpx.get(f"{uploader.url}/upload/status/no-such-session", timeout=10)
    assert r.status_code == 404 and "not found" in r.json()["detail"]


def test_health(uploader: ServiceProcess) -> None:
    body = httpx.get(f"{uploader.url}/health", timeout=10).json()
    assert body["status"] == "healthy" and body["service"] == "uploader-service"
    assert body["active_uploads"] == 0


def test_health_counts_active_uploads(cluster: Cluster, v1080: Path, tmp_path: Path) -> None:
    # one chunk at a time, so the upload is still running when we look
    with uploader_service(tmp_path / "up", cluster.meta.url, "--concurrency", "1") as up:
        r = post_upload(up.url, v1080, "busy", redundancy_mode="replication")
        active = httpx.get(f"{up.url}/health", timeout=10).json()["active_uploads"]
        final = wait_upload(up.url, r.json()["upload_session_id"])[-1]
        assert final["status"] == "completed"
        assert active == 1
        assert httpx.get(f"{up.url}/health", timeout=10).json()["active_uploads"] == 0


def test_metadata_unreachable_is_503(small: Path, tmp_path: Path) -> None:
    from shoal.testing import free_port

    with uploader_service(tmp_path / "up", f"http://127.0.0.1:{free_port()}") as up:
        r = post_upload(up.url, small, "orphan")
        assert r.status_code == 503 and "unreachable" in r.json()["detail"]
