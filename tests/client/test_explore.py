"""The smart client explores: a healthy node no download has measured yet is scored with the
best throughput measured elsewhere, so it gets a share (and a measurement) as soon as the
measured nodes are busy; a node whose pings are slow is still left alone. Real storage nodes
behind fault proxies; the output is checked byte for byte."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from tests.client.conftest import build_manifest
from tests.client.test_scheduler import play, served_by, vid


async def test_every_healthy_node_is_used_and_a_slow_one_is_not(nodes, fmp4: bytes, tmp_path: Path) -> None:
    everywhere = list(range(5))
    m = build_manifest(vid(), fmp4, nodes, replicas=[everywhere] * 24, chunk_size=len(fmp4) // 24 + 1)
    nodes[4].proxy.throttle(delay=0.05, mbps=8)  # answers pings in ~100 ms
    p = await play(
        m, tmp_path / "out.mp4", "smart", parallel=4, start_sec=4.0, refill_sec=6.0, target_sec=12.0
    )
    assert (tmp_path / "out.mp4").read_bytes() == fmp4
    counts = Counter(n for served in served_by(p) for n in served)
    healthy = [n.url for n in nodes[:4]]
    assert all(counts[u] >= 1 for u in healthy), counts  # none of the 4 healthy nodes left unmeasured
    assert counts[nodes[4].url] == 0, counts
    assert all(p.scores.stats(u)["samples"] >= 1 for u in healthy)
