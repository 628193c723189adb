"""What the manager needs from a backend, and the small value types they exchange."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, Protocol

from shoal.compute.models import BackendInfo, CreateInstance, Resources, Usage


@dataclass(frozen=True)
class Observed:
    """The live state of one instance as its daemon reports it."""

    state: str  # one of models.STATES
    status: str  # the backend's own words ("Up 3 seconds", "booted", ...)


@dataclass(frozen=True)
class Capacity:
    cpus: int
    memory: int  # bytes


class Backend(Protocol):
    """A daemon that runs instances. Every method raises BackendUnavailable when it is down."""

    name: str
    instance_type: str

    async def close(self) -> None: ...

    async def ping(self) -> None:
        """One cheap round trip to the daemon (health probes); BackendUnavailable when refused.
        No timeout of its own: the caller decides how long silence may last."""

    async def capacity(self) -> Capacity: ...

    async def info(self) -> BackendInfo: ...

    def validate(self, spec: CreateInstance) -> None:
        """Refuse (4xx) a request this backend can never run; no daemon call."""

    async def check_limits(self, resources: Resources) -> None:
        """RESOURCE_LIMIT_EXCEEDED when the request is more than this host has."""

    async def create(self, record: dict[str, Any], spec: CreateInstance) -> str:
        """Create the instance; returns the backend's id for it."""

    async def find(self, record: dict[str, Any]) -> str | None:
        """The backend id of what a half-finished create of `record` left (by shoal's label), if any."""

    async def leftover(self, name: str) -> tuple[str, str] | None:
        """(backend id, shoal instance id) of a shoal-labelled object holding `name`, if any."""

    async def owned(self) -> dict[str, str]:
        """Every object carrying shoal's label: backend id -> shoal instance id."""

    async def observe(self, backend_id: str) -> Observed | None:
        """Live state; None when the daemon no longer has it."""

    async def observe_all(self) -> dict[str, Observed]:
        """Live state of every instance shoal created there, by backend id."""

    async def start(self, backend_id: str) -> None: ...

    async def stop(self, backend_id: str, force: bool, timeout: int) -> None: ...

    async def restart(self, backend_id: str, force: bool, timeout: int) -> None: ...

    async def pause(self, backend_id: str) -> None: ...

    async def unpause(self, backend_id: str) -> None: ...

    async def update(self, backend_id: str, resources: Resources, running: bool) -> None: ...

    async def delete(self, backend_id: str, record: dict[str, Any]) -> None:
        """Remove the instance and what shoal made for it (disks); it is stopped by then."""

    async def usage(self, backend_id: str, record: dict[str, Any]) -> Usage: ...

    async def metrics(self) -> dict[str, Any]:
        """backend id -> metrics.Seen (state, CPU seconds, memory bytes) of every instance, in
        as few daemon calls as the backend allows (scraped every few seconds)."""

    async def snapshot(self, backend_id: str, record: dict[str, Any], name: str) -> dict[str, Any]:
        """Take snapshot `name`; what the record keeps of it (kind, stateful, the backend's ref)."""

    async def restore(self, backend_id: str, record: dict[str, Any], snap: dict[str, Any], spec: Any) -> str:
        """Back to `snap`; returns the backend id afterwards (a container is recreated)."""

    async def delete_snapshot(self, record: dict[str, Any], snap: dict[str, Any]) -> None: ...


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def cores_of(resources: Resources) -> float | None:
    return resources.cpu.cores if resources.cpu else None


def memory_of(resources: Resources) -> int | None:
    return resources.memory.limit if resources.memory else None


def storage_of(resources: Resources) -> int | None:
    return resources.storage.total_space if resources.storage else None
