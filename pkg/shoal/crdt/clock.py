"""Hybrid logical clock: 64-bit timestamps = wall milliseconds << 16 | a counter.

Every local operation gets a timestamp above every timestamp this replica has seen, so an
operation always sorts after the operations it depends on (replicas also refuse any that does
not), and timestamps stay close to real time for last-writer-wins to mean what users expect.
"""

from __future__ import annotations

import time
from collections.abc import Callable

SHIFT = 16


def to_seconds(hlc: int) -> float:
    return (hlc >> SHIFT) / 1000.0


def from_millis(ms: int) -> int:
    return ms << SHIFT


class HybridClock:
    def __init__(self, wall: Callable[[], float] = time.time) -> None:
        self.wall = wall
        self.last = 0

    def wall_ms(self) -> int:
        return int(self.wall() * 1000)

    def tick(self) -> int:
        """A fresh timestamp, above every one seen or issued."""
        self.last = max(self.last + 1, self.wall_ms() << SHIFT)
        return self.last

    def observe(self, hlc: int) -> None:
        if hlc > self.last:
            self.last = hlc
