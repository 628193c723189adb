"""The nemesis: a fault schedule that is random but seeded, printed, and so replayable.

`schedule(seed, faults, seconds, targets)` gives the same events for the same arguments; the
runner prints them before it starts (and `describe` is in every failure message), so a failing
run is replayed with the same seed (docs/testing.md). Faults never overlap: each is applied,
held, healed, then a quiet gap follows.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from shoal.testing.cluster.services import Cluster

FAULTS = ("partition", "delay", "pause", "kill", "loss")


@dataclass
class Event:
    at: float  # seconds after the start of the run
    fault: str
    host: int  # the target host's index
    seconds: float  # how long the fault holds
    params: dict[str, Any] = field(default_factory=dict)
    applied_at: float | None = None
    healed_at: float | None = None

    def describe(self) -> str:
        extra = " ".join(f"{k}={v}" for k, v in self.params.items())
        return f"t={self.at:5.1f}s {self.fault:9} h{self.host} for {self.seconds:.1f}s {extra}".rstrip()


def schedule(seed: int, faults: Sequence[str], seconds: float, targets: Sequence[int],
             hold: tuple[float, float] = (2.0, 4.0), gap: tuple[float, float] = (1.0, 2.5),
             start: float = 1.5) -> list[Event]:  # fmt: skip
    """Events inside [start, seconds - quiet tail], each a fault from `faults` on a host of `targets`."""
    rng = random.Random(seed)
    events, t = [], start
    while True:
        hold_s = round(rng.uniform(*hold), 2)
        if t + hold_s > seconds - 1.0:
            break
        fault = rng.choice(list(faults))
        params: dict[str, Any] = {}
        if fault == "delay":
            params = {"ms": rng.choice((100, 200, 400)), "jitter_ms": rng.choice((0, 20, 50))}
        elif fault == "loss":
            params = {"fraction": rng.choice((0.1, 0.3))}
        elif fault == "partition":
            params = {"from_client": rng.random() < 0.3}
        events.append(Event(round(t, 2), fault, rng.choice(list(targets)), hold_s, params))
        t += hold_s + rng.uniform(*gap)
    return events


class Nemesis:
    """Applies events to a Cluster from the thread that owns it (restarts spawn processes)."""

    def __init__(self, cluster: Cluster, events: list[Event], log: Callable[[str], None] = print) -> None:
        self.cluster = cluster
        self.events = events
        self.log = log
        self.errors: list[str] = []
        self.t0 = 0.0  # monotonic time of the run's start (events' times are relative to it)

    def apply(self, e: Event) -> Any:
        h = self.cluster.hosts[e.host]
        if e.fault == "partition":
            self.cluster.net.isolate(h, from_client=e.params.get("from_client", False))
        elif e.fault == "delay":
            h.delay(e.params["ms"], e.params.get("jitter_ms", 0))
        elif e.fault == "loss":
            h.lose(e.params["fraction"])
        elif e.fault == "pause":
            h.pause()
        elif e.fault == "kill":
            return self.cluster.kill_host(h)
        else:
            raise ValueError(f"unknown fault {e.fault}")
        return None

    def heal(self, e: Event, token: Any) -> None:
        h = self.cluster.hosts[e.host]
        if e.fault == "kill":
            try:
                self.cluster.restart(token)
            except Exception as exc:  # a service that will not come back is a finding, not a crash
                self.errors.append(f"{e.describe()}: restart failed: {exc}")
        elif e.fault == "pause":
            h.resume()
        else:
            self.cluster.net.heal()

    def run(self, t0: float, should_stop: Callable[[], bool] = lambda: False) -> None:
        """Play the schedule relative to monotonic time t0 (blocking, in the owner thread)."""
        self.t0 = t0
        for e in self.events:
            if should_stop():
                break
            _sleep_until(t0 + e.at)
            e.applied_at = time.monotonic() - t0
            self.log(f"nemesis: {e.describe()}")
            token = self.apply(e)
            _sleep_until(t0 + e.at + e.seconds)
            self.heal(e, token)
            e.healed_at = time.monotonic() - t0

    def heal_all(self) -> None:
        self.cluster.net.heal()

    def record(self) -> list[dict[str, Any]]:
        return [asdict(e) for e in self.events]


def _sleep_until(t: float) -> None:
    delay = t - time.monotonic()
    if delay > 0:
        time.sleep(delay)
