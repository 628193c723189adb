"""The playback buffer: what is downloaded ahead of the play position, and when playback runs.

A small state machine driven by a clock (seconds, monotonic). Playback starts once
`start_sec` of media are buffered (or the whole rest of the video is), a stall below the
play position is a rebuffering event that lasts until `start_sec` are buffered again, and
downloads are wanted whenever less than `refill_sec` is buffered, up to `target_sec`.
The play position advances at `speed` media seconds per clock second, so a test can play a
video 20x faster than real time with the same logic (and a test clock makes it exact).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

STARTUP = "startup"  # not started yet: filling the first start_sec
HEALTHY = "healthy"  # playing, at least refill_sec buffered
LOW = "low"  # playing, below refill_sec: refilling
REBUFFERING = "rebuffering"  # stalled mid-video, waiting for start_sec again
FINISHED = "finished"


@dataclass
class Stall:
    started: float  # clock time
    ended: float | None = None
    position: float = 0.0

    def duration(self, now: float) -> float:
        return (self.ended if self.ended is not None else now) - self.started


class Buffer:
    """Buffer accounting and the play clock for one video of known chunk time ranges."""

    def __init__(
        self,
        bounds: Sequence[tuple[float, float]],
        *,
        start_sec: float = 10.0,
        refill_sec: float = 15.0,
        target_sec: float = 30.0,
        speed: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not bounds:
            raise ValueError("a buffer needs at least one chunk")
        if not 0 < start_sec <= target_sec or not 0 < refill_sec <= target_sec or speed <= 0:
            raise ValueError("need 0 < start_sec, refill_sec <= target_sec and speed > 0")
        self.bounds = [(float(a), float(b)) for a, b in bounds]
        self.duration = max(b for _, b in self.bounds)
        self.start_sec, self.refill_sec, self.target_sec = start_sec, refill_sec, target_sec
        self.speed = speed
        self.clock = clock
        self.ready = [False] * len(self.bounds)
        self.contiguous = 0  # chunks [0, contiguous) are all here
        self.position = 0.0  # media seconds played
        self.playing = False
        self.finished = False
        self.created = clock()
        self.started_at: float | None = None
        self.finished_at: float | None = None
        self.last_tick = self.created
        self.stalls: list[Stall] = []
        self._level_sum = 0.0  # time-weighted level while playing, for the average
        self._level_time = 0.0

    # -- inputs -------------------------------------------------------------------------------
    def chunk_ready(self, seq: int) -> None:
        """Chunk `seq` is downloaded and verified."""
        self.tick()
        self.ready[seq] = True
        while self.contiguous < len(self.ready) and self.ready[self.contiguous]:
            self.contiguous += 1
        self._maybe_resume()

    def tick(self) -> None:
        """Advance the play position to the clock's now (stalling at the buffered edge)."""
        now = self.clock()
        dt = max(0.0, now - self.last_tick)
        self.last_tick = now
        if not self.playing or self.finished:
            return
        level_before = self.level
        edge = self.buffered_until
        advance = dt * self.speed
        if self.position + advance >= edge:
            # reached the buffered edge partway through dt: that is when it stopped
            used = (edge - self.position) / self.speed if self.speed else 0.0
            self._accumulate(level_before, used)
            self.position = edge
            if edge >= self.duration:
                self.playing = False
                self.finished = True
                self.finished_at = now - (dt - used)
            else:
                self.playing = False
                self.stalls.append(Stall(started=now - (dt - used), position=edge))
        else:
            self._accumulate(level_before, dt)
            self.position += advance

    def _accumulate(self, level_before: float, dt: float) -> None:
        # the level falls linearly over dt: average of its two ends
        level_after = max(0.0, level_before - dt * self.speed)
        self._level_sum += (level_before + level_after) / 2 * dt
        self._level_time += dt

    def _maybe_resume(self) -> None:
        if self.playing or self.finished:
            return
        rest = self.duration - self.position
        if self.level >= min(self.start_sec, rest) - 1e-9:
            now = self.clock()
            self.playing = True
            self.last_tick = now
            if self.started_at is None:
                self.started_at = now
            elif self.stalls and self.stalls[-1].ended is None:
                self.stalls[-1].ended = now

    # -- state --------------------------------------------------------------------------------
    @property
    def buffered_until(self) -> float:
        """Media time up to which everything is downloaded."""
        return self.bounds[self.contiguous - 1][1] if self.contiguous else 0.0

    @property
    def level(self) -> float:
        """Seconds of media buffered ahead of the play position."""
        return max(0.0, self.buffered_until - self.position)

    @property
    def state(self) -> str:
        if self.finished:
            return FINISHED
        if self.started_at is None:
            return STARTUP
        if not self.playing:
            return REBUFFERING
        return HEALTHY if self.level >= self.refill_sec or self.buffered_until >= self.duration else LOW

    @property
    def startup_latency(self) -> float | None:
        return None if self.started_at is None else self.started_at - self.created

    @property
    def rebuffer_events(self) -> int:
        return len(self.stalls)

    def stall_time(self, now: float | None = None) -> float:
        now = self.clock() if now is None else now
        return sum(s.duration(now) for s in self.stalls)

    @property
    def average_level(self) -> float:
        return self._level_sum / self._level_time if self._level_time else self.level

    def playback_duration(self) -> float:
        """Clock seconds since playback started (stalls included)."""
        if self.started_at is None:
            return 0.0
        end = self.finished_at if self.finished_at is not None else self.clock()
        return end - self.started_at

    @property
    def current_chunk(self) -> int:
        """Index of the chunk at the play position."""
        for i, (_, end) in enumerate(self.bounds):
            if self.position < end:
                return i
        return len(self.bounds) - 1

    @property
    def chunks_played(self) -> int:
        return sum(1 for _, end in self.bounds if end <= self.position + 1e-9)

    @property
    def health_percent(self) -> float:
        if self.finished:
            return 100.0
        return round(min(100.0, 100.0 * self.level / self.target_sec), 1)

    def wants(self, seq: int, refilling: bool) -> bool:
        """Should chunk `seq` be downloaded now? Keeps at most target_sec ahead of the position,
        and once the target is reached waits until the level falls below refill_sec."""
        if seq >= len(self.bounds):
            return False
        start = self.bounds[seq][0]
        return refilling and start - self.position < self.target_sec

    def needed_to_play(self, seq: int) -> bool:
        """Is chunk `seq` one of those that (re)start playback? Always true while playing;
        while starting or stalled, only the chunks that begin before position + start_sec, so
        (smart) the bandwidth goes to them and not to chunks after the start threshold."""
        if self.playing:
            return True
        return seq < len(self.bounds) and self.bounds[seq][0] < self.position + self.start_sec - 1e-9

    def refilling(self, was: bool) -> bool:
        """Hysteresis: start refilling below refill_sec, stop at target_sec."""
        if self.buffered_until >= self.duration:
            return False
        if was:
            return self.level < self.target_sec
        return self.level < self.refill_sec
