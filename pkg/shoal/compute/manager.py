"""The unified view: registry + backends + per-instance locks.

State is never stored: every view asks the daemon. Lifecycle calls on one instance take that
instance's asyncio lock, so two concurrent calls run one after the other and the second sees
the state the first left (no interleaved start/stop/delete against the daemon).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import msgspec

from shoal.compute.backends.base import Backend, Observed, now_iso
from shoal.compute.errors import (
    BackendUnavailable,
    ComputeError,
    InstanceNotFound,
    InvalidBackend,
    NameConflict,
    OperationNotSupported,
    ValidationFailed,
)
from shoal.compute.models import (
    BACKENDS,
    STATES,
    BackendInfo,
    BackendResources,
    BackendStatus,
    ClusterStatus,
    CpuOut,
    CreateInstance,
    Instance,
    InstanceList,
    ListQuery,
    MemoryOut,
    MetadataOut,
    Resources,
    ResourcesOut,
    StorageOut,
    UpdateInstance,
    Usage,
    UsedTotal,
)
from shoal.compute.registry import InstanceRegistry, new_identity

UNAVAILABLE = Observed("unknown", "backend unavailable")
MISSING = Observed("error", "missing from backend")
UNFINISHED = Observed("error", "creation did not finish")
ACTIVE = ("running", "paused", "restarting", "stopping")


def _builtins(obj: Any) -> Any:
    return msgspec.to_builtins(obj)


def check_backend(name: str) -> str:
    if name not in BACKENDS:
        raise InvalidBackend(
            f"backend {name!r} is not one of: {', '.join(BACKENDS)}",
            {"backend": name, "supported": list(BACKENDS)},
        )
    return name


class ComputeManager:
    def __init__(self, registry: InstanceRegistry, backends: dict[str, Backend]) -> None:
        self.registry = registry
        self.backends = backends
        self._locks: dict[str, asyncio.Lock] = {}
        self._create_lock = asyncio.Lock()
        self._reserved: set[str] = set()

    async def close(self) -> None:
        for backend in self.backends.values():
            with contextlib.suppress(Exception):
                await backend.close()

    # ---- lookups -----------------------------------------------------------------------------

    def backend(self, name: str) -> Backend:
        check_backend(name)
        return self.backends[name]

    def record(self, instance_id: str) -> dict[str, Any]:
        record = self.registry.get(instance_id)
        if record is None:
            raise InstanceNotFound(f"instance {instance_id!r} not found", {"id": instance_id})
        return record

    def record_by_name(self, name: str) -> dict[str, Any]:
        record = self.registry.by_name(name)
        if record is None:
            raise InstanceNotFound(f"no instance named {name!r}", {"name": name})
        return record

    @contextlib.asynccontextmanager
    async def locked(self, instance_id: str) -> AsyncIterator[dict[str, Any]]:
        """Hold the instance's lock; yields its record as it is once the lock is ours."""
        self.record(instance_id)
        lock = self._locks.setdefault(instance_id, asyncio.Lock())
        async with lock:
            yield self.record(instance_id)  # it may have been deleted while we waited

    async def observe(self, record: dict[str, Any]) -> Observed:
        if not record.get("backendId"):
            return UNFINISHED
        backend = self.backends[record["backend"]]
        try:
            seen = await backend.observe(record["backendId"])
        except BackendUnavailable:
            return UNAVAILABLE
        return MISSING if seen is None else seen

    async def _observe_live(self, record: dict[str, Any]) -> Observed:
        """Like observe, but a down backend is an error (an action cannot proceed)."""
        if not record.get("backendId"):
            return UNFINISHED
        seen = await self.backends[record["backend"]].observe(record["backendId"])
        return MISSING if seen is None else seen

    # ---- views -------------------------------------------------------------------------------

    @staticmethod
    def view(record: dict[str, Any], seen: Observed) -> Instance:
        res = record.get("resources") or {}
        cpu, mem, sto = res.get("cpu") or {}, res.get("memory") or {}, res.get("storage") or {}
        return Instance(
            id=record["id"],
            name=record["name"],
            uuid=record["uuid"],
            type=record["type"],
            backend=record["backend"],
            state=seen.state,
            status=seen.status,
            config=record.get("config") or {},
            resources=ResourcesOut(
                cpu=CpuOut(cores=cpu.get("cores")),
                memory=MemoryOut(limit=mem.get("limit")),
                storage=StorageOut(total_space=sto.get("totalSpace")),
            ),
            metadata=MetadataOut(labels=(record.get("metadata") or {}).get("labels") or {}),
            created_at=record["createdAt"],
            updated_at=record["updatedAt"],
            backend_id=record.get("backendId"),
        )

    async def get(self, instance_id: str) -> Instance:
        record = self.record(instance_id)
        return self.view(record, await self.observe(record))

    async def get_by_name(self, name: str) -> Instance:
        record = self.record_by_name(name)
        return self.view(record, await self.observe(record))

    async def _observe_backend(self, name: str) -> dict[str, Observed] | None:
        try:
            return await self.backends[name].observe_all()
        except BackendUnavailable:
            return None

    async def list(self, query: ListQuery) -> InstanceList:
        if query.backend is not None:
            check_backend(query.backend)
        if query.state is not None and query.state not in STATES:
            raise ValidationFailed(
                f"state {query.state!r} is not one of: {', '.join(STATES)}",
                {"field": "state", "supported": list(STATES)},
            )
        records = [r for r in self.registry.all() if query.backend in (None, r["backend"])]
        wanted = sorted({r["backend"] for r in records})
        seen_by = dict(
            zip(wanted, await asyncio.gather(*(self._observe_backend(b) for b in wanted)), strict=True)
        )
        views = []
        for r in records:
            seen_all = seen_by[r["backend"]]
            if seen_all is None:
                seen = UNAVAILABLE
            elif not r.get("backendId"):
                seen = UNFINISHED
            else:
                seen = seen_all.get(r["backendId"], MISSING)
            if query.state is None or seen.state == query.state:
                views.append(self.view(r, seen))
        start = (query.page - 1) * query.page_size
        return InstanceList(
            instances=views[start : start + query.page_size],
            total=len(views),
            page=query.page,
            page_size=query.page_size,
        )

    # ---- create / update / delete -----------------------------------------------------------

    async def create(self, spec: CreateInstance) -> Instance:
        backend = self.backend(spec.backend)
        backend.validate(spec)
        async with self._create_lock:
            if self.registry.name_taken(spec.name) or spec.name in self._reserved:
                raise NameConflict(f"an instance named {spec.name!r} already exists", {"name": spec.name})
            self._reserved.add(spec.name)
        try:
            instance_id, uuid = new_identity()
            stamp = now_iso()
            record: dict[str, Any] = {
                "id": instance_id,
                "uuid": uuid,
                "name": spec.name,
                "backend": spec.backend,
                "type": backend.instance_type,
                "backendId": None,
                "config": _builtins(spec.config),
                "resources": _builtins(spec.resources),
                "metadata": _builtins(spec.metadata),
                "createdAt": stamp,
                "updatedAt": stamp,
                "seq": time.time_ns(),  # creation order, finer than the timestamps
            }
            lock = self._locks.setdefault(instance_id, asyncio.Lock())
            async with lock:
                # Capacity first, so a refused request leaves no record behind.
                await backend.check_limits(spec.resources)
                await self.registry.put(record)  # a crash from here on leaves a visible record
                try:
                    record["backendId"] = await backend.create(record, spec)
                except BaseException:
                    await self.registry.remove(instance_id)
                    raise
                await self.registry.put(record)
                if spec.start:
                    await backend.start(record["backendId"])
        finally:
            self._reserved.discard(spec.name)
        return await self.get(instance_id)

    async def update(self, instance_id: str, body: UpdateInstance) -> Instance:
        async with self.locked(instance_id) as record:
            if body.resources is not None and body.resources != Resources():
                seen = await self._observe_live(record)
                self._require_present(seen, "update")
                backend = self.backends[record["backend"]]
                await backend.update(record["backendId"], body.resources, seen.state in ACTIVE)
                merged = dict(record.get("resources") or {})
                merged.update({k: v for k, v in _builtins(body.resources).items() if v})
                record = {**record, "resources": merged}
            if body.metadata is not None:
                record = {**record, "metadata": _builtins(body.metadata)}
            record["updatedAt"] = now_iso()
            await self.registry.put(record)
        return await self.get(instance_id)

    async def delete(self, instance_id: str, force: bool) -> None:
        async with self.locked(instance_id) as record:
            if record.get("backendId"):
                seen = await self._observe_live(record)
                if seen.state in ACTIVE and not force:
                    raise OperationNotSupported(
                        f"instance is {seen.state}; stop it first or delete with ?force=true",
                        {"state": seen.state, "operation": "delete"},
                        status=409,
                    )
                await self.backends[record["backend"]].delete(record["backendId"], record)
            await self.registry.remove(instance_id)
        self._locks.pop(instance_id, None)

    # ---- lifecycle ---------------------------------------------------------------------------

    @staticmethod
    def _require_present(seen: Observed, operation: str) -> None:
        if seen is MISSING or seen is UNFINISHED:
            raise OperationNotSupported(
                f"cannot {operation}: {seen.status}; delete this instance",
                {"state": seen.state, "reason": seen.status, "operation": operation},
                status=409,
            )

    @staticmethod
    def _conflict(seen: Observed, operation: str, hint: str = "") -> ComputeError:
        return OperationNotSupported(
            f"cannot {operation} an instance that is {seen.state}{hint}",
            {"state": seen.state, "operation": operation},
            status=409,
        )

    async def _touch(self, record: dict[str, Any]) -> None:
        await self.registry.put({**record, "updatedAt": now_iso()})

    async def start(self, instance_id: str) -> Instance:
        async with self.locked(instance_id) as record:
            seen = await self._observe_live(record)
            self._require_present(seen, "start")
            if seen.state == "paused":
                raise self._conflict(seen, "start", "; unpause it")
            if seen.state not in ("running", "restarting"):
                await self.backends[record["backend"]].start(record["backendId"])
                await self._touch(record)
        return await self.get(instance_id)

    async def stop(self, instance_id: str, force: bool, timeout: int) -> Instance:
        async with self.locked(instance_id) as record:
            seen = await self._observe_live(record)
            self._require_present(seen, "stop")
            if seen.state != "stopped":
                await self.backends[record["backend"]].stop(record["backendId"], force, timeout)
                await self._touch(record)
        return await self.get(instance_id)

    async def restart(self, instance_id: str, force: bool, timeout: int) -> Instance:
        async with self.locked(instance_id) as record:
            seen = await self._observe_live(record)
            self._require_present(seen, "restart")
            backend = self.backends[record["backend"]]
            if seen.state == "paused":
                await backend.unpause(record["backendId"])
            if seen.state == "stopped":
                await backend.start(record["backendId"])
            else:
                await backend.restart(record["backendId"], force, timeout)
            await self._touch(record)
        return await self.get(instance_id)

    async def pause(self, instance_id: str) -> Instance:
        async with self.locked(instance_id) as record:
            seen = await self._observe_live(record)
            self._require_present(seen, "pause")
            if seen.state == "running":
                await self.backends[record["backend"]].pause(record["backendId"])
                await self._touch(record)
            elif seen.state != "paused":
                raise self._conflict(seen, "pause")
        return await self.get(instance_id)

    async def unpause(self, instance_id: str) -> Instance:
        async with self.locked(instance_id) as record:
            seen = await self._observe_live(record)
            self._require_present(seen, "unpause")
            if seen.state == "paused":
                await self.backends[record["backend"]].unpause(record["backendId"])
                await self._touch(record)
            elif seen.state != "running":
                raise self._conflict(seen, "unpause")
        return await self.get(instance_id)

    async def usage(self, instance_id: str) -> Usage:
        record = self.record(instance_id)
        seen = await self._observe_live(record)
        self._require_present(seen, "read usage of")
        return await self.backends[record["backend"]].usage(record["backendId"], record)

    # ---- cluster -----------------------------------------------------------------------------

    async def backend_info(self, name: str) -> BackendInfo:
        return await self.backend(name).info()

    async def _backend_status(self, name: str) -> BackendStatus:
        records = [r for r in self.registry.all() if r["backend"] == name]
        backend = self.backends[name]
        try:
            cap = await backend.capacity()
            seen = await backend.observe_all()
        except BackendUnavailable as exc:
            return BackendStatus(
                status="unavailable", instances=len(records), reason=exc.details.get("reason")
            )
        cpu_used = mem_used = 0.0
        for r in records:
            if r.get("backendId") and seen.get(r["backendId"], MISSING).state in ACTIVE:
                res = r.get("resources") or {}
                cpu_used += float((res.get("cpu") or {}).get("cores") or (1 if name == "kvm" else 0))
                mem_used += float((res.get("memory") or {}).get("limit") or 0)
        return BackendStatus(
            status="healthy",
            instances=len(records),
            resources=BackendResources(
                cpu=UsedTotal(used=cpu_used, total=cap.cpus),
                memory=UsedTotal(used=mem_used, total=cap.memory),
            ),
        )

    async def cluster_status(self) -> ClusterStatus:
        names = list(self.backends)
        statuses = dict(
            zip(names, await asyncio.gather(*(self._backend_status(n) for n in names)), strict=True)
        )
        healthy = sum(s.status == "healthy" for s in statuses.values())
        health = "healthy" if healthy == len(statuses) else ("degraded" if healthy else "unhealthy")
        return ClusterStatus(
            backends=statuses, total_instances=sum(s.instances for s in statuses.values()), health=health
        )
