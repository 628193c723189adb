"""The smart client's first chunks: a hung node listed first costs a first-byte deadline, not
the read timeout; a node the metadata service reports down is never asked; a node whose ping
failed drops to the end of every candidate list; startup downloads only what it needs to play.
Real storage nodes behind fault proxies (and a real metadata service); bytes checked exactly."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import httpx

from shoal.client import Hedging, Player, Timeouts
from shoal.client.manifest import parse_manifest
from shoal.client.monitor import NetworkMonitor, new_scores
from shoal.client.scheduler import Scheduler
from shoal.testing.metadata import metadata_service
from tests.client.conftest import build_manifest
from tests.client.test_scheduler import play, served_by, vid


async def test_first_chunk_leaves_a_hung_node_at_the_first_byte_deadline(nodes, fmp4: bytes) -> None:
    """Nothing is known yet (no ping, no download): the first attempt goes to the first replica,
    which hangs; with a 10 s read timeout the chunk still lands from the next replica within
    the first-byte deadline (0.15 s here), plus its own transfer."""
    nodes[0].proxy.hang()
    data = fmp4[: 1024 * 1024]
    m = parse_manifest(build_manifest(vid(), data, nodes, replicas=[[0, 1, 2]], chunk_size=len(data) + 1))
    timeouts = Timeouts(connect=10.0, read=10.0)
    async with aiohttp.ClientSession() as http:
        sch = Scheduler(http, new_scores(), "smart", timeouts, Hedging(first_byte_min_sec=0.15))
        t0 = time.monotonic()
        served = await asyncio.wait_for(sch.get(m.chunks[0]), 30)
        waited = time.monotonic() - t0
    assert served.data == data
    assert served.nodes == [nodes[1].url]
    assert sch.hedges == 1 and [f.reason for f in sch.failovers] == ["slow"]
    assert sch.failovers[0].failed_node == nodes[0].url
    assert waited < 1.0, waited  # the first-byte deadline, not the 10 s read timeout nor the 1.2 s cap


async def test_round_robin_waits_for_the_hung_node(nodes, fmp4: bytes) -> None:
    """The same first chunk for the naive client: it waits for the read timeout (the baseline
    the scenario table compares with), then fails over."""
    nodes[0].proxy.hang()
    data = fmp4[: 1024 * 1024]
    m = parse_manifest(build_manifest(vid(), data, nodes, replicas=[[0, 1, 2]], chunk_size=len(data) + 1))
    async with aiohttp.ClientSession() as http:
        sch = Scheduler(http, new_scores(), "round-robin", Timeouts(connect=1.0, read=1.0))
        t0 = time.monotonic()
        served = await asyncio.wait_for(sch.get(m.chunks[0]), 30)
        waited = time.monotonic() - t0
    assert served.data == data and served.nodes == [nodes[1].url]
    assert sch.hedges == 0 and [f.reason for f in sch.failovers] == ["timeout"]
    assert waited >= 1.0


async def test_headers_in_move_the_deadline_from_first_byte_to_transfer(nodes, fmp4: bytes) -> None:
    """A node that answers at once but sends slowly (4 Mbit/s, about 1.5 s for this chunk) is
    not hedged at the first-byte deadline: only the transfer deadline (capped at 1.2 s) may."""
    nodes[0].proxy.throttle(mbps=4)
    data = fmp4[: 768 * 1024]
    m = parse_manifest(build_manifest(vid(), data, nodes, replicas=[[0, 1, 2]], chunk_size=len(data) + 1))
    async with aiohttp.ClientSession() as http:
        sch = Scheduler(http, new_scores(), "smart", Timeouts(), Hedging(first_byte_min_sec=0.1))
        served = await asyncio.wait_for(sch.get(m.chunks[0]), 30)
    assert served.data == data
    # a hedge, if any, came after the answer had started: at the transfer deadline, not 0.1 s
    for f in sch.failovers:
        assert f.detected_at - f.attempt_started >= 1.0, f


async def test_node_with_a_failed_ping_is_asked_last(nodes, fmp4: bytes, tmp_path: Path) -> None:
    """Node 0 is listed first for every chunk and its proxy refuses everything (its storage node
    is stopped behind it): after its first failed ping the smart client never tries it again,
    while round robin keeps starting chunks 0, 3, 6, ... there."""
    from tests.client.conftest import Node

    dead = Node(tmp_path, 7).start()
    try:
        ring = [dead, nodes[1], nodes[2]]
        m = build_manifest(vid(), fmp4, ring, replicas=[[0, 1, 2]] * 8, chunk_size=len(fmp4) // 8 + 1)
        dead.proc.stop()
        p = await play(m, tmp_path / "smart.mp4", "smart")
        assert (tmp_path / "smart.mp4").read_bytes() == fmp4
        assert all(dead.url not in n for n in served_by(p))
        tried = p.scheduler.nodes.get(dead.url)
        assert tried is None or tried.attempts <= 1, tried  # at most the one before its ping failed
        assert p.monitor.down(dead.url)
        rr = await play(m, tmp_path / "rr.mp4", "round-robin")
        assert (tmp_path / "rr.mp4").read_bytes() == fmp4
        assert rr.scheduler.nodes[dead.url].attempts >= 2  # the baseline keeps asking it
    finally:
        dead.stop()


async def test_node_reported_down_by_the_metadata_service_is_never_asked(
    nodes, fmp4: bytes, tmp_path: Path
) -> None:
    """A live node (it answers pings and would serve) that the metadata service reports down
    (registered, then no heartbeat past --down-after): the smart client takes the report with
    the manifest and never sends it a request; round robin, which ignores it, does."""
    meta = metadata_service(tmp_path / "meta", "--down-after", "1", "--degraded-after", "0.5")
    meta.start()
    try:
        r = httpx.post(
            f"{meta.url}/nodes/register", params={"node_url": nodes[0].url, "node_id": "stale"}, timeout=10
        )
        assert r.status_code in (200, 201), r.text
        deadline = time.monotonic() + 20
        while True:
            rows = httpx.get(f"{meta.url}/nodes/all", timeout=10).json()["nodes"]
            if any(n["node_url"].rstrip("/") == nodes[0].url and n["status"] == "down" for n in rows):
                break
            assert time.monotonic() < deadline, rows
            await asyncio.sleep(0.2)
        m = build_manifest(vid(), fmp4, nodes, replicas=[[0, 1, 2]] * 6, chunk_size=len(fmp4) // 6 + 1)
        out = {}
        for strategy in ("smart", "round-robin"):
            p = Player(
                m["video_id"],
                meta.url,
                manifest=m,
                strategy=strategy,
                output=str(tmp_path / f"{strategy}.mp4"),
                record_view=False,
                speed=50.0,
                start_sec=2.0,
                refill_sec=3.0,
                target_sec=6.0,
                node_report_wait=5.0,
            )
            await asyncio.wait_for(p.play(), 120)
            assert (tmp_path / f"{strategy}.mp4").read_bytes() == fmp4
            out[strategy] = p
        smart, rr = out["smart"], out["round-robin"]
        assert smart.reported_down == {nodes[0].url}
        assert nodes[0].url not in smart.scheduler.nodes, smart.scheduler.nodes  # not one attempt
        assert smart.monitor.answered(nodes[0].url)  # alive: only the report kept it out
        assert rr.scheduler.nodes[nodes[0].url].served >= 1
    finally:
        meta.stop()


async def test_first_answer_returns_on_the_first_live_node(nodes) -> None:
    """The smart client's pre-request wait ends with the first node that answers a ping, not
    with the slowest (a hung node's ping never answers; the wait must not last its timeout)."""
    nodes[0].proxy.hang()
    urls = [n.url for n in nodes[:3]]
    mon = NetworkMonitor(new_scores(), urls, interval=30.0, timeouts=Timeouts(ping=5.0))
    await mon.start()
    try:
        t0 = time.monotonic()
        await mon.first_answer(urls, timeout=10.0)
        waited = time.monotonic() - t0
        assert any(mon.answered(u) for u in urls[1:])
        assert not mon.answered(urls[0])
        assert waited < 4.0, waited  # far from the 5 s ping timeout or the 10 s cap
        assert mon.latency_floor_ms(urls[0]) > 0.0  # its ping is still outstanding
    finally:
        await mon.stop()


async def test_startup_downloads_only_the_chunks_that_start_playback(
    nodes, fmp4: bytes, tmp_path: Path
) -> None:
    """With 1 s chunks and a 2 s start threshold, the smart client asks for chunks 0 and 1
    and nothing else until playback starts; round robin starts `parallel` (4) chunks at once."""
    m = build_manifest(vid(), fmp4, nodes, chunk_size=len(fmp4) // 12 + 1)
    before_start: dict[str, list[int]] = {}
    for strategy in ("smart", "round-robin"):
        p = await play(m, tmp_path / f"{strategy}.mp4", strategy, parallel=4)
        assert (tmp_path / f"{strategy}.mp4").read_bytes() == fmp4
        assert p.buffer.started_at is not None
        before_start[strategy] = [seq for seq, at in p.requested if at < p.buffer.started_at]
    assert before_start["smart"] == [0, 1], before_start
    assert before_start["round-robin"][:4] == [0, 1, 2, 3], before_start
