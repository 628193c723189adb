"""Scheduling against real storage nodes: which node serves what, failover, hangs, erasure reads,
corrupt replicas. Every run must deliver the exact bytes, in order, with no gap."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest

from shoal.client import Hedging, Player, Timeouts
from tests.client.conftest import build_manifest


def vid() -> str:
    return "v" + uuid.uuid4().hex[:12]


def reasons(player: Player, url: str) -> dict[str, int]:
    c = player.scheduler.nodes.get(url)
    return dict(c.reasons) if c else {}


def served_by(player: Player) -> list[list[str]]:
    return [a["nodes"] for a in sorted(player.arrivals, key=lambda a: a["seq"])]


async def play(manifest: dict, out: Path, strategy: str, **kw) -> Player:
    kw.setdefault("speed", 50.0)
    kw.setdefault("start_sec", 2.0)
    kw.setdefault("refill_sec", 3.0)
    kw.setdefault("target_sec", 6.0)
    p = Player(
        manifest["video_id"], manifest=manifest, strategy=strategy, output=str(out), record_view=False, **kw
    )
    await asyncio.wait_for(p.play(), 120)
    return p


@pytest.mark.parametrize("strategy", ["smart", "round-robin"])
async def test_throttled_node(strategy: str, nodes, fmp4: bytes, tmp_path: Path) -> None:
    """Every chunk on nodes 0, 1, 2; node 0 is slow (+30 ms each way, 16 Mbit/s)."""
    nodes[0].proxy.throttle(delay=0.03, mbps=16)
    m = build_manifest(vid(), fmp4, nodes, replicas=[[0, 1, 2]] * 6, chunk_size=len(fmp4) // 6 + 1)
    p = await play(m, tmp_path / "out.mp4", strategy)
    assert (tmp_path / "out.mp4").read_bytes() == fmp4
    slow = sum(1 for nodes_ in served_by(p) if nodes_ == [nodes[0].url])
    if strategy == "smart":
        assert slow == 0, served_by(p)  # its ping already shows the delay
        assert p.stats()["nodes"][nodes[0].url]["score"] < p.stats()["nodes"][nodes[1].url]["score"]
    else:
        assert slow == 2  # chunks 0 and 3 start at replica 0, and nothing makes it look elsewhere


@pytest.mark.parametrize("strategy", ["smart", "round-robin"])
async def test_node_killed_during_playback(strategy: str, nodes, fmp4: bytes, tmp_path: Path) -> None:
    """A storage node dies (SIGKILL) mid-playback: every chunk still lands, from the others."""
    from tests.client.conftest import Node

    extra = Node(tmp_path, 9).start()
    try:
        ring = [extra, nodes[1], nodes[2]]
        m = build_manifest(vid(), fmp4, ring, chunk_size=128 * 1024, seconds_per_chunk=0.5)
        p = Player(
            m["video_id"],
            manifest=m,
            strategy=strategy,
            output=str(tmp_path / "out.mp4"),
            record_view=False,
            speed=4.0,
            start_sec=1.0,
            refill_sec=1.5,
            target_sec=2.0,
        )
        task = p.start()
        while len(p.arrivals) < 4:
            await asyncio.sleep(0.01)
        extra.proc.kill()
        killed_at = len(p.arrivals)
        await asyncio.wait_for(task, 120)
    finally:
        extra.stop()
    assert (tmp_path / "out.mp4").read_bytes() == fmp4
    after = served_by(p)[killed_at + 4 :]  # later chunks: none from the dead node
    assert after and all(extra.url not in n for n in after)
    events = p.scheduler.failovers
    assert all(e.failed_node == extra.url for e in events)
    if strategy == "round-robin":
        assert events, "the naive order keeps starting at the dead node every third chunk"
        assert {e.reason for e in events} <= {"error", "connect"}
    assert p.buffer.finished and p.buffer.chunks_played == len(m["chunks"])


@pytest.mark.parametrize("strategy", ["smart", "round-robin"])
async def test_node_that_never_answers(strategy: str, nodes, fmp4: bytes, tmp_path: Path) -> None:
    """Node 0 accepts connections and reads requests but never answers (pings included)."""
    nodes[0].proxy.hang()
    m = build_manifest(vid(), fmp4, nodes, replicas=[[0, 1, 2]] * 6, chunk_size=len(fmp4) // 6 + 1)
    p = await play(m, tmp_path / "out.mp4", strategy, timeouts=Timeouts(connect=1.0, read=1.0, ping=0.5))
    assert (tmp_path / "out.mp4").read_bytes() == fmp4
    assert all(nodes[0].url not in n for n in served_by(p))
    scores = p.status()["node_scores"]
    assert scores[nodes[0].url] < min(scores[nodes[1].url], scores[nodes[2].url])  # silent to pings
    if strategy == "round-robin":
        # chunks 0 and 3 start at the hung node and wait for the read timeout
        assert [e.reason for e in p.scheduler.failovers] == ["timeout", "timeout"]
        assert all(e.served_at - e.attempt_started >= 1.0 for e in p.scheduler.failovers)
    else:
        # never tried, or abandoned by a hedge long before the read timeout
        assert all(e.reason == "slow" for e in p.scheduler.failovers)


@pytest.mark.parametrize("strategy", ["smart", "round-robin"])
async def test_erasure_coded_with_two_fragments_missing(
    strategy: str, nodes, fmp4: bytes, tmp_path: Path
) -> None:
    """3+2 chunks with fragments 0 and 1 (both data fragments) missing everywhere: decoded from 2, 3, 4."""
    m = build_manifest(vid(), fmp4, nodes, mode="erasure_coding", skip={i: {0, 1} for i in range(8)})
    p = await play(m, tmp_path / "out.mp4", strategy)
    assert (tmp_path / "out.mp4").read_bytes() == fmp4
    assert all(sorted(n) == sorted(f"{nodes[j].url}" for j in (2, 3, 4)) for n in served_by(p))
    missing = [reasons(p, nodes[j].url).get("status", 0) for j in (0, 1)]
    if strategy == "round-robin":
        assert missing == [len(m["chunks"])] * 2  # asked for data fragments first, got 404s
    assert p.stats()["downloads"]["successful"] == 3 * len(m["chunks"])


async def test_erasure_coded_reads_fastest_three(nodes, fmp4: bytes, tmp_path: Path) -> None:
    """All 5 fragments present, fragment 0's node slowed: the smart client decodes from the other 4's best 3."""
    nodes[0].proxy.throttle(delay=0.05, mbps=8)
    m = build_manifest(vid(), fmp4, nodes, mode="erasure_coding")
    p = await play(m, tmp_path / "out.mp4", "smart")
    assert (tmp_path / "out.mp4").read_bytes() == fmp4
    assert all(nodes[0].url not in n for n in served_by(p))


@pytest.mark.parametrize("strategy", ["smart", "round-robin"])
async def test_hash_mismatch_refetches_elsewhere(strategy: str, nodes, fmp4: bytes, tmp_path: Path) -> None:
    """Replica A holds corrupt bytes under the right id (and looks fastest): the SHA-256 check
    rejects them and the chunk comes from B."""
    m = build_manifest(vid(), fmp4, nodes, replicas=[[4]] * 2, chunk_size=len(fmp4) // 2 + 1)
    for c in m["chunks"]:
        nodes[3].put(c["chunk_id"], b"x" * c["size_bytes"])  # same id and size, wrong bytes
        c["replicas"].insert(0, nodes[3].url)
    nodes[4].proxy.throttle(delay=0.02)
    p = await play(m, tmp_path / "out.mp4", strategy, hedging=Hedging(min_sec=5, max_sec=5))
    assert (tmp_path / "out.mp4").read_bytes() == fmp4
    assert served_by(p) == [[nodes[4].url], [nodes[4].url]]
    assert reasons(p, nodes[3].url).get("checksum", 0) >= 1
    checksum_failovers = [e for e in p.scheduler.failovers if e.reason == "checksum"]
    assert checksum_failovers and all(e.served_by == nodes[4].url for e in checksum_failovers)
    if strategy == "round-robin":
        assert len(checksum_failovers) == 1  # chunk 0 starts at A; chunk 1 starts at B


async def test_chunk_missing_everywhere_is_retried_until_it_lands(nodes, fmp4: bytes, tmp_path: Path) -> None:
    """No replica holds chunk 1 at first; the player waits (rebuffering, no gap) and gets it once stored."""
    m = build_manifest(
        vid(), fmp4, nodes, replicas=[[0, 1, 2]] * 3, chunk_size=len(fmp4) // 3 + 1, unstored={1}
    )
    lost = m["chunks"][1]
    data = fmp4[lost["size_bytes"] : 2 * lost["size_bytes"]]
    for i in (0, 1):
        nodes[i].put(lost["chunk_id"], b"stale")  # wrong bytes on two replicas, nothing on the third
    p = Player(
        m["video_id"],
        manifest=m,
        output=str(tmp_path / "out.mp4"),
        record_view=False,
        speed=10,
        start_sec=1,
        refill_sec=2,
        target_sec=3,
    )
    task = p.start()
    while p.scheduler is None or p.scheduler.retry_rounds < 2:
        await asyncio.sleep(0.02)
    assert not task.done() and p.buffer.contiguous <= 1
    nodes[2].put(lost["chunk_id"], data)  # repaired
    await asyncio.wait_for(task, 60)
    assert (tmp_path / "out.mp4").read_bytes() == fmp4
    assert p.buffer.finished
