"""Per-instance metrics on /metrics: CPU seconds, memory bytes and state of every local instance.

A scrape must neither hammer the daemons nor wait on a hung one. So one sample (every backend
asked at once, one call each: a container list plus one-shot stats, one libvirt scan) is kept
for `ttl` seconds and shared by every scrape meanwhile; a scrape of a stale sample starts a
new one and waits for it at most the backend timeout, then answers with what it has. A backend
whose daemon is already known silent (compute/health.py) is not asked at all: its instances
show state `unknown` and `shoal_compute_instance_metrics_backend_up{backend} 0`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from shoal.compute.errors import ComputeError

DEFAULT_TTL = 5.0
LABELS = ["id", "name", "backend"]
log = logging.getLogger("shoal.compute")


@dataclass(frozen=True)
class Seen:
    """One instance as its backend reported it for metrics."""

    state: str
    cpu_seconds: float | None = None
    memory_bytes: int | None = None


@dataclass
class Sample:
    rows: list[tuple[dict[str, Any], Seen]] = field(default_factory=list)
    backend_up: dict[str, bool] = field(default_factory=dict)
    at: float = 0.0  # time.monotonic() when taken; 0: never


class InstanceMetrics(Collector):
    """The cached sample and the Prometheus collector that renders it (see the module docstring)."""

    def __init__(self, get_manager: Callable[[], Any], ttl: float = DEFAULT_TTL) -> None:
        self.get_manager = get_manager
        self.ttl = ttl
        self.sample = Sample()
        self.samples_taken = 0
        self._task: asyncio.Task | None = None

    async def refresh_if_stale(self) -> None:
        """Start a new sample when the cached one is older than `ttl`; wait for it at most the
        backend timeout (a slow sample finishes in the background and serves the next scrape)."""
        try:
            manager = self.get_manager()
        except KeyError:  # not started yet, or shutting down
            return
        if self.sample.at and time.monotonic() - self.sample.at < self.ttl:
            return
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._take(manager), name="instance-metrics")
        wait = max(h.timeout for h in manager.health.values()) if manager.health else 1.0
        await asyncio.wait({self._task}, timeout=wait)

    async def _take(self, manager: Any) -> None:
        try:
            records = [r for r in await manager.registry.all() if manager.is_local(r)]
            names = sorted({r["backend"] for r in records} & set(manager.backends))
            found = await asyncio.gather(*(self._backend(manager, n) for n in names))
            by_backend = dict(zip(names, found, strict=True))
            rows = []
            for r in records:
                seen = by_backend.get(r["backend"])
                if r.get("phase") == "creating":
                    row = Seen("created")
                elif seen is None:
                    row = Seen("unknown")
                else:
                    row = seen.get(r.get("backendId") or "", Seen("error"))  # gone from its daemon
                rows.append((r, row))
            self.sample = Sample(rows, {n: by_backend[n] is not None for n in names}, at=time.monotonic())
            self.samples_taken += 1
        except Exception as exc:  # a sample that fails keeps the last one; /metrics still answers
            log.warning("instance metrics not sampled: %s", exc)
        finally:
            self._task = None

    @staticmethod
    async def _backend(manager: Any, name: str) -> dict[str, Seen] | None:
        """Every instance on that backend, or None when its daemon is silent or refuses."""
        if manager.health[name].silent_now() is not None:
            return None
        try:
            return await manager.call(name, manager.backends[name].metrics())
        except ComputeError:
            return None

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task

    def collect(self) -> Iterator[Any]:
        sample = self.sample
        cpu = CounterMetricFamily(
            "shoal_compute_instance_cpu_seconds", "CPU time the instance has used", labels=LABELS
        )
        mem = GaugeMetricFamily(
            "shoal_compute_instance_memory_bytes",
            "Memory in use: a container's working set, a VM's resident memory",
            labels=LABELS,
        )
        state = GaugeMetricFamily(
            "shoal_compute_instance_state",
            "1 for the instance's current state (unknown while its backend does not answer)",
            labels=[*LABELS, "state"],
        )
        for record, seen in sample.rows:
            key = [record["id"], record["name"], record["backend"]]
            state.add_metric([*key, seen.state], 1)
            if seen.cpu_seconds is not None:
                cpu.add_metric(key, seen.cpu_seconds)
            if seen.memory_bytes is not None:
                mem.add_metric(key, seen.memory_bytes)
        up = GaugeMetricFamily(
            "shoal_compute_instance_metrics_backend_up",
            "Whether the last sample reached the backend's daemon",
            labels=["backend"],
        )
        for name, ok in sorted(sample.backend_up.items()):
            up.add_metric([name], 1 if ok else 0)
        age = GaugeMetricFamily(
            "shoal_compute_instance_metrics_age_seconds", "Age of the per-instance sample shown"
        )
        age.add_metric([], round(time.monotonic() - sample.at, 3) if sample.at else -1)
        taken = CounterMetricFamily(
            "shoal_compute_instance_metrics_samples", "Per-instance samples taken from the daemons"
        )
        taken.add_metric([], self.samples_taken)
        yield from (cpu, mem, state, up, age, taken)
