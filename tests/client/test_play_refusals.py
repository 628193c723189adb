"""`shoal play` never plays part of a video as if it were whole, and never waits without end:
a SIGSTOPped metadata service is a clear reason within 10 s, a video that is not active or
whose manifest lacks a chunk exits 1 naming it, and a chunk no node serves ends the playback
with the chunk's id after --give-up. Real processes (metadata service, storage nodes)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from shoal.client import Player
from shoal.client.manifest import ManifestError, parse_manifest
from shoal.client.session import PlayerError
from shoal.testing import free_port
from shoal.testing.metadata import metadata_service

from ..uploader.test_hung_metadata import frozen
from .conftest import build_manifest


def play(meta_url: str, video_id: str, *extra: str, timeout: float = 60) -> tuple[int, str, float]:
    t0 = time.monotonic()
    r = subprocess.run(
        [sys.executable, "-m", "shoal", "play", video_id, "--metadata-url", meta_url, "--quiet", *extra],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return r.returncode, r.stderr, time.monotonic() - t0


@pytest.fixture(scope="module")
def meta(tmp_path_factory: pytest.TempPathFactory):
    with metadata_service(tmp_path_factory.mktemp("meta"), "--maintenance-interval", "0") as m:
        yield m


def test_hung_metadata_service_is_a_reason_within_10_s(meta) -> None:
    with frozen(meta):
        code, err, took = play(meta.url, "any-video-id-123")
    assert code == 1, err
    assert took < 10, f"shoal play took {took:.1f} s to give up"
    assert "no answer to GET /manifest/any-video-id-123 within 5 s" in err, err


def test_unreachable_metadata_service_is_a_reason(tmp_path: Path) -> None:
    code, err, took = play(f"http://127.0.0.1:{free_port()}", "any-video-id-123", "--metadata-timeout", "2")
    assert code == 1 and "unreachable" in err and "ClientConnectorError" in err, err
    assert took < 10


def test_video_not_active_exits_1_with_its_status(meta) -> None:
    vid = httpx.post(meta.url + "/video", json={"title": "half", "duration_sec": 60}, timeout=10).json()[
        "video_id"
    ]
    code, err, _ = play(meta.url, vid)
    assert code == 1 and f"video {vid} is uploading, not active" in err, err
    httpx.post(f"{meta.url}/video/{vid}/fail", json={"reason": "storage node died"}, timeout=10)
    code, err, _ = play(meta.url, vid)
    assert code == 1 and "is failed, not active: storage node died" in err, err
    code, err, _ = play(meta.url, "no-such-video-1")
    assert code == 1 and "not found" in err, err


def manifest(chunks: list[tuple[int, float]], duration: float, total: int | None = None, **extra) -> dict:
    return {
        "video_id": "vid-manifest",
        "duration_sec": duration,
        "total_chunks": len(chunks) if total is None else total,
        "chunks": [
            {
                "chunk_id": f"c{seq}",
                "sequence_num": seq,
                "size_bytes": 10,
                "checksum": "sha256:" + "0" * 64,
                "replicas": ["http://127.0.0.1:1"],
                "start_sec": 3.0 * seq,
                "duration_sec": d,
            }
            for seq, d in chunks
        ],
        **extra,
    }


def test_manifest_missing_a_chunk_is_refused() -> None:
    whole = parse_manifest(manifest([(0, 3.0), (1, 3.0), (2, 3.0)], 9.0, status="active"))
    assert [c.sequence_num for c in whole.chunks] == [0, 1, 2]
    with pytest.raises(ManifestError, match=r"chunk\(s\) \[1\] missing from the manifest \(2 of 3 listed\)"):
        parse_manifest(manifest([(0, 3.0), (2, 3.0)], 9.0))
    # the case: 10 of 61 chunks listed, total_chunks saying 61
    with pytest.raises(ManifestError, match=r"\(10 of 61 listed\)"):
        parse_manifest(manifest([(i, 1.0) for i in range(10)], 60.0, total=61))
    # ...or an older service that counts only what it has: the times cover 9.9 s of 60 s
    with pytest.raises(ManifestError, match=r"cover 9.9 s of its 60.0 s"):
        parse_manifest(manifest([(i, 0.99) for i in range(10)], 60.0))
    with pytest.raises(ManifestError, match="is uploading, not active"):
        parse_manifest(manifest([(0, 3.0)], 3.0, status="uploading"))
    with pytest.raises(ManifestError, match="missing from the manifest"):
        Player(None, manifest=manifest([(1, 3.0)], 3.0))


async def test_chunk_no_node_serves_ends_playback_after_give_up(nodes, fmp4: bytes, tmp_path: Path) -> None:
    m = build_manifest(
        "giveup-v1", fmp4, nodes, replicas=[[0, 1, 2]] * 3, chunk_size=len(fmp4) // 3 + 1, unstored={1}
    )
    p = Player(m["video_id"], manifest=m, record_view=False, speed=20, give_up_sec=1.5, start_sec=1)
    t0 = time.monotonic()
    with pytest.raises(PlayerError) as info:
        await p.play()
    assert time.monotonic() - t0 < 10
    text = str(info.value)
    assert "chunk 1 (giveup-v1-chunk-001) could not be read from any of its 3 nodes" in text, text
    assert "HTTP 404" in text, text
