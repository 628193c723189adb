"""The manager's own Prometheus metrics, read from its live state at scrape time.

A collector rather than counters updated everywhere: the state (restarts, lease, lag, mount)
already lives in the supervisors and components, so a scrape can never disagree with GET /.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector


class ManagerCollector(Collector):
    def __init__(self, manager: Any) -> None:
        self.manager = manager

    def collect(self) -> Iterator[GaugeMetricFamily]:
        m = self.manager
        restarts = GaugeMetricFamily(
            "shoal_manager_restarts", "Unrequested restarts of a supervised child", labels=["child"]
        )
        running = GaugeMetricFamily("shoal_manager_child_running", "1 while the child runs", labels=["child"])
        fatal = GaugeMetricFamily(
            "shoal_manager_child_fatal", "1 once the child is given up", labels=["child"]
        )
        children = {"process": m.process}
        if m.replication:
            children["litestream"] = m.replication.supervisor
        if m.juicefs:
            children["juicefs"] = m.juicefs.supervisor
        for name, sup in children.items():
            if sup is None:
                continue
            restarts.add_metric([name], sup.restarts)
            running.add_metric([name], 1 if sup.running else 0)
            fatal.add_metric([name], 1 if sup.state == "fatal" else 0)
        yield from (restarts, running, fatal)
        lease = m.lease
        held = GaugeMetricFamily("shoal_manager_lease_held", "1 while this manager holds the writer lease")
        token = GaugeMetricFamily("shoal_manager_lease_token", "Fencing token of the held lease")
        expires = GaugeMetricFamily("shoal_manager_lease_expires_in_seconds", "Time left on the held lease")
        held.add_metric([], 1 if lease and lease.held else 0)
        if lease and lease.held:
            token.add_metric([], lease.token)
            st = lease.status()
            expires.add_metric([], st["expires_in"] or 0)
        yield from (held, token, expires)
        fenced = GaugeMetricFamily("shoal_manager_fenced", "1 while the writers are stopped by fencing")
        fenced.add_metric([], 1 if m.fenced else 0)
        fences = GaugeMetricFamily("shoal_manager_fences", "Times the writers were fenced")
        fences.add_metric([], m.fences)
        yield from (fenced, fences)
        lag = GaugeMetricFamily(
            "shoal_manager_replication_lag_seconds",
            "Age of the oldest change not in the replica (absent when unknown)",
            labels=["database"],
        )
        caught = GaugeMetricFamily(
            "shoal_manager_replication_caught_up",
            "1 when the replica holds the local position",
            labels=["database"],
        )
        if m.replication:
            for name, entry in m.replication.lag.items():
                if entry.get("lag_seconds") is not None:
                    lag.add_metric([name], entry["lag_seconds"])
                caught.add_metric([name], 1 if entry.get("caught_up") else 0)
        yield from (lag, caught)
        mounted = GaugeMetricFamily("shoal_manager_filesystem_mounted", "1 while the JuiceFS mount is served")
        if m.juicefs:
            mounted.add_metric([], 1 if m.juicefs.ready else 0)
            yield mounted
