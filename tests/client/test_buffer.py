"""The buffer state machine on a test clock (exact), and on an accelerated real clock with real nodes."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from shoal.client import Buffer, Player
from shoal.client.buffer import FINISHED, HEALTHY, LOW, REBUFFERING, STARTUP
from tests.client.conftest import build_manifest


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


def ten_chunks(clock: Clock, speed: float = 1.0) -> Buffer:
    """Ten 5-second chunks: 50 s of video."""
    return Buffer([(5.0 * i, 5.0 * (i + 1)) for i in range(10)], clock=clock, speed=speed)


def test_starts_once_ten_seconds_are_buffered() -> None:
    clock = Clock()
    b = ten_chunks(clock)
    assert b.state == STARTUP and not b.playing
    b.chunk_ready(1)  # out of order: not contiguous, does not count
    assert b.level == 0.0 and b.state == STARTUP
    clock.advance(0.7)
    b.chunk_ready(0)
    assert b.level == 10.0  # chunks 0 and 1 are contiguous now
    assert b.playing and b.state == LOW  # playing, but below the 15 s refill mark
    assert b.startup_latency == pytest.approx(0.7)


def test_refill_hysteresis_and_window() -> None:
    clock = Clock()
    b = ten_chunks(clock)
    assert b.refilling(True) and b.wants(5, True) and not b.wants(6, True)  # 30 s window from position 0
    for i in range(6):
        b.chunk_ready(i)
    assert b.level == 30.0 and b.state == HEALTHY
    assert not b.refilling(True)  # target reached: stop
    clock.advance(10)
    b.tick()
    assert b.level == pytest.approx(20.0)
    assert not b.refilling(False)  # 20 s is above the 15 s refill mark: stay idle
    clock.advance(6)
    b.tick()
    assert b.level == pytest.approx(14.0) and b.state == LOW
    assert b.refilling(False)  # below 15 s: refill again
    assert b.wants(9, True)  # position 16: window reaches 46 s


def test_stall_is_a_rebuffering_event_with_its_duration() -> None:
    clock = Clock()
    b = ten_chunks(clock)
    b.chunk_ready(0)
    b.chunk_ready(1)
    clock.advance(12)  # 10 s of media, then 2 s stalled
    b.tick()
    assert b.state == REBUFFERING and b.position == 10.0 and b.rebuffer_events == 1
    assert b.stall_time() == pytest.approx(2.0)
    b.chunk_ready(2)  # 5 s: not enough to resume (needs 10 s)
    assert b.state == REBUFFERING
    clock.advance(1.5)
    b.chunk_ready(3)  # 10 s: resume
    assert b.playing and b.stall_time() == pytest.approx(3.5)
    clock.advance(100)
    b.tick()
    assert b.rebuffer_events == 2 and b.position == 20.0  # stalled again at the edge


def test_plays_to_the_end_and_finishes() -> None:
    clock = Clock()
    b = ten_chunks(clock, speed=10.0)  # 10 media seconds per clock second
    for i in range(10):
        b.chunk_ready(i)
    clock.advance(4.0)
    b.tick()
    assert b.position == pytest.approx(40.0) and b.state == HEALTHY  # the rest is all here
    clock.advance(2.0)
    b.tick()
    assert b.state == FINISHED and b.finished and b.rebuffer_events == 0
    assert b.playback_duration() == pytest.approx(5.0)  # 50 s of media at 10x
    assert b.chunks_played == 10 and b.health_percent == 100.0
    assert b.average_level == pytest.approx(25.0)  # falls linearly from 50 to 0


def test_short_video_starts_with_everything_buffered() -> None:
    clock = Clock()
    b = Buffer([(0.0, 3.0), (3.0, 6.0)], clock=clock)
    b.chunk_ready(0)
    assert not b.playing
    b.chunk_ready(1)
    assert b.playing  # 6 s is the whole video: no reason to wait for 10


def test_rejects_nonsense_settings() -> None:
    with pytest.raises(ValueError):
        Buffer([])
    with pytest.raises(ValueError):
        Buffer([(0, 1)], start_sec=40, target_sec=30)
    with pytest.raises(ValueError):
        Buffer([(0, 1)], speed=0)


async def test_rebuffering_counted_on_an_accelerated_clock(nodes, fmp4: bytes, tmp_path: Path) -> None:
    """Real downloads through a 4 Mbit/s proxy, played at 8x: the buffer runs dry and the
    stalls are counted, yet every byte arrives in order."""
    for n in nodes[:3]:
        n.proxy.throttle(mbps=4)
    m = build_manifest("bufv", fmp4, nodes[:3], chunk_size=256 * 1024, seconds_per_chunk=1.0)
    p = Player(
        "bufv",
        manifest=m,
        output=str(tmp_path / "o.mp4"),
        record_view=False,
        speed=8.0,
        start_sec=2.0,
        refill_sec=3.0,
        target_sec=4.0,
    )
    await asyncio.wait_for(p.play(), 120)
    assert (tmp_path / "o.mp4").read_bytes() == fmp4
    perf = p.performance()
    assert perf["rebuffering_events"] >= 1 and perf["total_stall_sec"] > 0
    assert perf["chunks_played"] == len(m["chunks"])
    levels = [pt["level"] for pt in p.metrics()["buffer_history"]]
    assert max(levels) <= 4.0 + 1.0  # never far above the target
