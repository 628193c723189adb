"""The unified view: registry + backends + per-instance locks.

State is never stored: every view asks the daemon. Lifecycle calls on one instance take that
instance's asyncio lock, so two concurrent calls run one after the other and the second sees
the state the first left (no interleaved start/stop/delete against the daemon).

Several compute nodes may share one registry (`--store etcd`). Each record names the node that
created it (`node.id`), and only that node acts on it: it alone reaches the instance's daemon,
and it alone writes the record, under its lock. Other nodes list and show the instance (state
`unknown`, as they cannot observe it) and refuse changes with 409 INSTANCE_ON_OTHER_NODE,
naming the owner, rather than proxying: a refusal cannot half-apply.

Every daemon call goes through that backend's BackendHealth (compute/health.py): a daemon that
stops answering (hung, not down) costs a call `--backend-timeout` seconds, not its own 30 s
timeout, and views that ask both backends show the answering one and name the silent one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

import msgspec

from shoal.compute.access import HostAccess, check_labels
from shoal.compute.backends.base import Backend, Observed, now_iso
from shoal.compute.errors import (
    BackendUnavailable,
    ComputeError,
    InstanceNotFound,
    InstanceOnOtherNode,
    InvalidBackend,
    NameConflict,
    NodeIdTakenOver,
    OperationNotSupported,
    SnapshotExists,
    SnapshotNotFound,
    ValidationFailed,
)
from shoal.compute.events import EventBus
from shoal.compute.health import DEFAULT_TIMEOUT, BackendHealth, Health
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
    NodeOut,
    Resources,
    ResourcesOut,
    Snapshot,
    SnapshotList,
    StorageOut,
    UpdateInstance,
    Usage,
    UsedTotal,
    whole,
)
from shoal.compute.operations import Operations
from shoal.compute.registry import IdTaken, InstanceRegistry, NameTaken, new_identity

UNAVAILABLE = Observed("unknown", "backend unavailable")
MISSING = Observed("error", "missing from backend")
UNFINISHED = Observed("error", "creation did not finish")
CREATING = Observed("created", "creating")
MAX_REF = 255  # ids and names in paths: longer ones are refused (400), never looked up
ACTIVE = ("running", "paused", "restarting", "stopping")
READ_ONLY = frozenset({"usage"})  # local operations that change nothing
LEGACY_NODE: dict[str, Any] = {}  # records written before nodes existed: local by definition
T = TypeVar("T")
log = logging.getLogger("shoal.compute")


def check_ref(value: str, field: str) -> str:
    """400 for an id or name no instance can have (a NUL, a control character, over-long)."""
    if len(value) > MAX_REF or any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
        shown = value[:40] + ("..." if len(value) > 40 else "")
        raise ValidationFailed(
            f"{field} {shown!r} is not valid: at most {MAX_REF} characters, no control characters",
            {"field": field, "length": len(value)},
        )
    return value


def check_strings(value: Any, where: str) -> None:
    """400 for a NUL anywhere in a request's strings: daemons refuse them late, or truncate them."""
    if isinstance(value, str):
        if "\x00" in value:
            raise ValidationFailed(f"{where} contains a NUL character", {"field": where})
    elif isinstance(value, dict):
        for key, item in value.items():
            check_strings(key, where)
            check_strings(item, f"{where}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            check_strings(item, f"{where}[{i}]")


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
    def __init__(
        self,
        registry: InstanceRegistry,
        backends: dict[str, Backend],
        node: dict[str, Any] | None = None,
        endpoints: dict[str, str] | None = None,
        claim: Any = None,
        backend_timeout: float = DEFAULT_TIMEOUT,
        access: HostAccess | None = None,
    ) -> None:
        """node: this compute node ({"id", "hostname", "url"}); endpoints: each backend's daemon address;
        claim: its NodeClaim (compute/nodes.py), whose `conflict` stops all changes while set;
        backend_timeout: how long a daemon may leave a probe unanswered before it counts as hung;
        access: what of the host a create may reach (compute/access.py; default nothing)."""
        self.registry = registry
        self.backends = backends
        self.node: dict[str, Any] = {k: v for k, v in (node or {"id": "local"}).items() if v is not None}
        self.endpoints = dict(endpoints or {})
        self.claim = claim
        self.access = access or HostAccess()
        self.events = EventBus()
        self.operations = Operations(self.events)
        self._locks: dict[str, asyncio.Lock] = {}
        self.health = {n: BackendHealth(n, b.ping, backend_timeout) for n, b in backends.items()}

    def emit(self, action: str, record: dict[str, Any], **extra: Any) -> None:
        self.events.lifecycle(action, record, **extra)

    async def close(self) -> None:
        await self.operations.close()
        for name, backend in self.backends.items():
            await self.health[name].close()
            with contextlib.suppress(Exception):  # a hung daemon must not hold the shutdown
                async with asyncio.timeout(max(5.0, self.health[name].timeout)):
                    await backend.close()

    async def call(self, backend: str, awaitable: Awaitable[T]) -> T:
        """A daemon call, abandoned with 503 BACKEND_UNAVAILABLE once that daemon stops answering."""
        return await self.health[backend].guard(awaitable)

    async def backends_health(self) -> dict[str, Health]:
        """Every backend probed at once; takes at most the backend timeout."""
        names = list(self.health)
        return dict(zip(names, await asyncio.gather(*(self.health[n].status() for n in names)), strict=True))

    # ---- lookups -----------------------------------------------------------------------------

    def backend(self, name: str) -> Backend:
        check_backend(name)
        return self.backends[name]

    async def record(self, instance_id: str) -> dict[str, Any]:
        check_ref(instance_id, "id")
        record = await self.registry.get(instance_id)
        if record is None:
            raise InstanceNotFound(f"instance {instance_id!r} not found", {"id": instance_id})
        return record

    async def record_by_name(self, name: str) -> dict[str, Any]:
        check_ref(name, "name")
        record = await self.registry.by_name(name)
        if record is None:
            raise InstanceNotFound(f"no instance named {name!r}", {"name": name})
        return record

    def is_local(self, record: dict[str, Any]) -> bool:
        """Whether this node owns the record (and so has its daemon)."""
        node = record.get("node") or LEGACY_NODE
        return node.get("id", self.node["id"]) == self.node["id"]

    def require_claim(self, operation: str) -> None:
        """409 NODE_ID_IN_USE while another live host holds this node's id (a copy of this node)."""
        other = self.claim.conflict if self.claim is not None else None
        if other and operation not in READ_ONLY:
            raise NodeIdTakenOver(
                f"compute node id {self.node['id']!r} is now held by host {other.get('hostname')!r} "
                f"(data dir {other.get('dataDir')!r}, pid {other.get('pid')}); this process no longer "
                f"changes instances ({operation!r} refused): stop it, or give it its own --node-id",
                {"node": self.node["id"], "operation": operation, "holder": other},
            )

    def require_local(self, record: dict[str, Any], operation: str) -> dict[str, Any]:
        """The record, or 409 INSTANCE_ON_OTHER_NODE naming the owner (and its URL when it gave one)."""
        if self.is_local(record):
            self.require_claim(operation)
            return record
        owner = record["node"]
        where = f" at {owner['url']}" if owner.get("url") else ""
        raise InstanceOnOtherNode(
            f"instance {record['id']!r} belongs to compute node {owner.get('id')!r}"
            f" (host {owner.get('hostname', '?')}); send {operation!r} to that node's Compute API{where}",
            {"id": record["id"], "operation": operation, "owner": owner, "node": self.node["id"]},
        )

    async def local_record(self, instance_id: str, operation: str) -> dict[str, Any]:
        return self.require_local(await self.record(instance_id), operation)

    @contextlib.asynccontextmanager
    async def locked(self, instance_id: str, operation: str) -> AsyncIterator[dict[str, Any]]:
        """Hold the instance's lock; yields its record as it is once the lock is ours."""
        await self.local_record(instance_id, operation)
        lock = self._locks.setdefault(instance_id, asyncio.Lock())
        async with lock:
            yield await self.record(instance_id)  # it may have been deleted while we waited

    def remote(self, record: dict[str, Any]) -> Observed:
        """What a node that cannot reach the instance's daemon reports for it."""
        return Observed("unknown", f"on compute node {record['node'].get('id')}")

    async def observe(self, record: dict[str, Any]) -> Observed:
        if not self.is_local(record):
            return self.remote(record)
        if record.get("phase") == "creating":
            return CREATING
        if not record.get("backendId"):
            return UNFINISHED
        name = record["backend"]
        try:
            seen = await self.call(name, self.backends[name].observe(record["backendId"]))
        except BackendUnavailable:
            return UNAVAILABLE
        return MISSING if seen is None else seen

    async def _observe_live(self, record: dict[str, Any]) -> Observed:
        """Like observe, but a down backend is an error (an action cannot proceed)."""
        if not record.get("backendId"):
            return UNFINISHED
        name = record["backend"]
        seen = await self.call(name, self.backends[name].observe(record["backendId"]))
        return MISSING if seen is None else seen

    # ---- views -------------------------------------------------------------------------------

    @staticmethod
    def view(record: dict[str, Any], seen: Observed) -> Instance:
        res = record.get("resources") or {}
        cpu, mem, sto = res.get("cpu") or {}, res.get("memory") or {}, res.get("storage") or {}
        node = record.get("node")
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
                cpu=CpuOut(cores=whole(cpu.get("cores"))),
                memory=MemoryOut(limit=mem.get("limit")),
                storage=StorageOut(total_space=sto.get("totalSpace")),
            ),
            metadata=MetadataOut(labels=(record.get("metadata") or {}).get("labels") or {}),
            created_at=record["createdAt"],
            updated_at=record["updatedAt"],
            backend_id=record.get("backendId"),
            node=None
            if not node
            else NodeOut(
                id=node.get("id", ""),
                hostname=node.get("hostname"),
                url=node.get("url"),
                endpoint=node.get("endpoint"),
            ),
        )

    async def get(self, instance_id: str) -> Instance:
        record = await self.record(instance_id)
        return self.view(record, await self.observe(record))

    async def get_by_name(self, name: str) -> Instance:
        record = await self.record_by_name(name)
        return self.view(record, await self.observe(record))

    async def _observe_backend(self, name: str) -> dict[str, Observed] | str:
        """Every instance's state on that backend, or why the backend did not say."""
        try:
            return await self.call(name, self.backends[name].observe_all())
        except BackendUnavailable as exc:
            return str(exc.details.get("reason") or exc.message)

    async def list(self, query: ListQuery) -> InstanceList:
        if query.backend is not None:
            check_backend(query.backend)
        if query.state is not None and query.state not in STATES:
            raise ValidationFailed(
                f"state {query.state!r} is not one of: {', '.join(STATES)}",
                {"field": "state", "supported": list(STATES)},
            )
        records = [r for r in await self.registry.all() if query.backend in (None, r["backend"])]
        wanted = sorted({r["backend"] for r in records if self.is_local(r)})
        seen_by = dict(
            zip(wanted, await asyncio.gather(*(self._observe_backend(b) for b in wanted)), strict=True)
        )
        unavailable = {b: why for b, why in seen_by.items() if isinstance(why, str)}
        views = []
        for r in records:
            if not self.is_local(r):
                seen = self.remote(r)
            elif isinstance(seen_all := seen_by[r["backend"]], str):
                seen = UNAVAILABLE
            elif r.get("phase") == "creating":
                seen = CREATING
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
            unavailable_backends=unavailable,
        )

    # ---- create / update / delete -----------------------------------------------------------

    @staticmethod
    def _taken(name: str) -> NameConflict:
        return NameConflict(f"an instance named {name!r} already exists", {"name": name})

    def _new_record(self, spec: CreateInstance, backend: Backend) -> dict[str, Any]:
        instance_id, uuid = new_identity()
        stamp = now_iso()
        node = {**self.node, "endpoint": self.endpoints.get(spec.backend)}
        return {
            "id": instance_id,
            "uuid": uuid,
            "name": spec.name,
            "backend": spec.backend,
            "type": backend.instance_type,
            "backendId": None,
            "config": _builtins(spec.config),
            "resources": _builtins(spec.resources),
            "metadata": _builtins(spec.metadata),
            "node": {k: v for k, v in node.items() if v is not None},
            "createdAt": stamp,
            "updatedAt": stamp,
            "seq": time.time_ns(),  # creation order, finer than the timestamps
            # the journal: written before any backend call, cleared when the create is complete;
            # a record still "creating" at the next start is rolled back (recover())
            "phase": "creating",
        }

    async def _claim(self, spec: CreateInstance, backend: Backend) -> tuple[dict[str, Any], asyncio.Lock]:
        """Write a new record and take its name in one store transaction; returns it with its lock held.

        The transaction is what keeps names unique, here and on every node sharing the store: of
        two concurrent creates of one name (in this process or another) exactly one commits.
        """
        for _ in range(4):
            record = self._new_record(spec, backend)
            lock = self._locks.setdefault(record["id"], asyncio.Lock())
            await lock.acquire()  # before the record is visible: calls on it wait for the create
            try:
                await self.registry.claim(record)
                return record, lock
            except NameTaken:
                lock.release()
                raise self._taken(spec.name) from None
            except IdTaken:
                lock.release()
            except BaseException:
                lock.release()
                raise
        raise RuntimeError("no free instance id after 4 random draws")

    async def create(self, spec: CreateInstance) -> Instance:
        """Create (and start) an instance, or leave nothing: no record, no backend object, the name free."""
        self.require_claim("create")
        backend = self.backend(spec.backend)
        check_strings(_builtins(spec.config), "config")
        check_labels(spec.metadata)
        backend.validate(spec)
        self.access.check_create(spec)  # 403 for host paths, host network, privileges, devices
        if await self.registry.name_taken(spec.name):  # early answer; the claim below decides
            raise self._taken(spec.name)
        # Capacity first, so a refused request leaves no record behind.
        await self.call(spec.backend, backend.check_limits(spec.resources))
        record, lock = await self._claim(spec, backend)  # the journal entry: phase "creating"
        try:
            try:
                await self._build(record, spec, backend)
            except BaseException:
                # also on cancellation (a client gone, an operation cancelled): the rollback runs
                # to its end in its own task even if this one is cancelled again
                undo = asyncio.ensure_future(self._rollback(record))
                with contextlib.suppress(BaseException):
                    await asyncio.shield(undo)
                raise
        finally:
            lock.release()
        self.emit("instance-created", record)
        return await self.get(record["id"])

    async def _build(self, record: dict[str, Any], spec: CreateInstance, backend: Backend) -> None:
        name = spec.backend
        record["backendId"] = await self._backend_create(record, spec, backend)
        await self.registry.put(record)  # still "creating": a crash from here is rolled back at start
        if spec.start:
            await self.call(name, backend.start(record["backendId"]))
        record.pop("phase", None)
        record["updatedAt"] = now_iso()
        await self.registry.put(record)

    async def _backend_create(self, record: dict[str, Any], spec: CreateInstance, backend: Backend) -> str:
        """backend.create; a leftover of shoal's holding the name (a lost create) is removed first."""
        name = spec.backend
        try:
            return await self.call(name, backend.create(record, spec))
        except NameConflict:
            left = await self.call(name, backend.leftover(spec.name))
            if left is None:
                raise
            backend_id, owner = left
            if owner != record["id"] and await self.registry.get(owner) is not None:
                raise  # a live instance of shoal's (another node's registry view) holds it
            log.warning("removing %s leftover %s of lost instance %s", name, backend_id, owner)
            await self.call(name, backend.delete(backend_id, {**record, "id": owner}))
            return await self.call(name, backend.create(record, spec))

    async def _rollback(self, record: dict[str, Any], keep_unknown: bool = False) -> bool:
        """Remove what a create made (backend object, files, record); False if the backend cannot say.

        When the object exists (its backend id is known) and its daemon does not answer, the
        record stays ("creating"): a delete or the next start finishes the job. When the create
        itself never answered, the record goes: an object the daemon may still make carries
        shoal's label with no record, which the next start sweeps and a create of the name replaces.
        `keep_unknown` (recovery at start) keeps the record then too: it stays visible as `creating`
        until a delete or a later start can ask the daemon.
        """
        name = record["backend"]
        backend = self.backends[name]
        try:
            backend_id = record.get("backendId") or await self.call(name, backend.find(record))
            if backend_id:
                await self.call(name, backend.delete(backend_id, record))
        except BackendUnavailable as exc:
            if record.get("backendId") or keep_unknown:
                log.warning("rollback of %s left for a delete or the next start: %s", record["id"], exc)
                return False
        except Exception as exc:
            log.warning("rollback of %s left for later: %s", record["id"], exc)
            return False
        await self.registry.remove(record["id"])
        self._locks.pop(record["id"], None)
        return True

    async def sweep(self) -> list[str]:
        """At start: remove objects carrying shoal's label whose instance has no record (lost creates)."""
        known = {r["id"] for r in await self.registry.all()}
        removed = []
        for name, backend in self.backends.items():
            try:
                owned = await self.call(name, backend.owned())
            except ComputeError as exc:
                log.warning("could not sweep %s for leftovers: %s", name, exc.message)
                continue
            for backend_id, owner in owned.items():
                if owner in known:
                    continue
                try:
                    await self.call(name, backend.delete(backend_id, {"id": owner, "backend": name}))
                    log.warning("removed %s leftover %s of lost instance %s", name, backend_id, owner)
                    removed.append(owner)
                except ComputeError as exc:
                    log.warning("could not remove %s leftover %s: %s", name, backend_id, exc.message)
        return removed

    async def recover(self) -> list[str]:
        """At start: roll back every local create a crash interrupted (its record still "creating"),
        then sweep leftovers of creates that were abandoned before their record knew them."""
        done = []
        for record in await self.registry.all():
            if record.get("phase") != "creating" or not self.is_local(record):
                continue
            lock = self._locks.setdefault(record["id"], asyncio.Lock())
            async with lock:
                current = await self.registry.get(record["id"])
                if (
                    current is not None
                    and current.get("phase") == "creating"
                    and await self._rollback(current, keep_unknown=True)
                ):
                    log.warning("rolled back the interrupted create of %s (%s)", record["id"], record["name"])
                    done.append(record["id"])
        return done + await self.sweep()

    async def update(self, instance_id: str, body: UpdateInstance) -> Instance:
        check_labels(body.metadata)
        async with self.locked(instance_id, "update") as record:
            if body.resources is not None and body.resources != Resources():
                seen = await self._observe_live(record)
                self._require_present(seen, "update")
                name = record["backend"]
                running = seen.state in ACTIVE
                await self.call(
                    name, self.backends[name].update(record["backendId"], body.resources, running)
                )
                merged = dict(record.get("resources") or {})
                merged.update({k: v for k, v in _builtins(body.resources).items() if v})
                record = {**record, "resources": merged}
            if body.metadata is not None:
                record = {**record, "metadata": _builtins(body.metadata)}
            record["updatedAt"] = now_iso()
            await self.registry.put(record)
            self.emit("instance-updated", record)
        return await self.get(instance_id)

    async def delete(self, instance_id: str, force: bool) -> None:
        async with self.locked(instance_id, "delete") as record:
            if record.get("phase") == "creating" or not record.get("backendId"):
                # half-created (a crash, a backend that went away mid-create): remove what exists
                name = record["backend"]
                backend_id = record.get("backendId") or await self.call(
                    name, self.backends[name].find(record)
                )
                if backend_id:
                    await self.call(name, self.backends[name].delete(backend_id, record))
            elif record.get("backendId"):
                seen = await self._observe_live(record)
                if seen.state in ACTIVE and not force:
                    raise OperationNotSupported(
                        f"instance is {seen.state}; stop it first or delete with ?force=true",
                        {"state": seen.state, "operation": "delete"},
                        status=409,
                    )
                name = record["backend"]
                await self.call(name, self.backends[name].delete(record["backendId"], record))
            await self.registry.remove(instance_id)
        self._locks.pop(instance_id, None)
        self.emit("instance-deleted", record)

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

    async def _act(self, record: dict[str, Any], operation: str, *args: Any) -> None:
        """One lifecycle call (start, stop, ...) on the record's backend, guarded."""
        name = record["backend"]
        await self.call(name, getattr(self.backends[name], operation)(record["backendId"], *args))

    async def _touch(self, record: dict[str, Any], action: str | None = None) -> None:
        await self.registry.put({**record, "updatedAt": now_iso()})
        if action:
            self.emit(action, record)

    async def start(self, instance_id: str) -> Instance:
        async with self.locked(instance_id, "start") as record:
            seen = await self._observe_live(record)
            self._require_present(seen, "start")
            if seen.state == "paused":
                raise self._conflict(seen, "start", "; unpause it")
            if seen.state not in ("running", "restarting"):
                await self._act(record, "start")
                await self._touch(record, "instance-started")
        return await self.get(instance_id)

    async def stop(self, instance_id: str, force: bool, timeout: int) -> Instance:
        async with self.locked(instance_id, "stop") as record:
            seen = await self._observe_live(record)
            self._require_present(seen, "stop")
            if seen.state != "stopped":
                await self._act(record, "stop", force, timeout)
                await self._touch(record, "instance-stopped")
        return await self.get(instance_id)

    async def restart(self, instance_id: str, force: bool, timeout: int) -> Instance:
        async with self.locked(instance_id, "restart") as record:
            seen = await self._observe_live(record)
            self._require_present(seen, "restart")
            if seen.state == "paused":
                await self._act(record, "unpause")
            if seen.state == "stopped":
                await self._act(record, "start")
            else:
                await self._act(record, "restart", force, timeout)
            await self._touch(record, "instance-restarted")
        return await self.get(instance_id)

    async def pause(self, instance_id: str) -> Instance:
        async with self.locked(instance_id, "pause") as record:
            seen = await self._observe_live(record)
            self._require_present(seen, "pause")
            if seen.state == "running":
                await self._act(record, "pause")
                await self._touch(record, "instance-paused")
            elif seen.state != "paused":
                raise self._conflict(seen, "pause")
        return await self.get(instance_id)

    async def unpause(self, instance_id: str) -> Instance:
        async with self.locked(instance_id, "unpause") as record:
            seen = await self._observe_live(record)
            self._require_present(seen, "unpause")
            if seen.state == "paused":
                await self._act(record, "unpause")
                await self._touch(record, "instance-resumed")
            elif seen.state != "running":
                raise self._conflict(seen, "unpause")
        return await self.get(instance_id)

    async def usage(self, instance_id: str) -> Usage:
        record = await self.local_record(instance_id, "usage")
        seen = await self._observe_live(record)
        self._require_present(seen, "read usage of")
        name = record["backend"]
        usage = await self.call(name, self.backends[name].usage(record["backendId"], record))
        usage.cpu.cores = whole(usage.cpu.cores)
        return usage

    # ---- logs and exec -------------------------------------------------------------------------

    async def logs(self, instance_id: str, tail: int | None, follow: bool) -> Any:
        record = await self.local_record(instance_id, "usage")  # read-only
        seen = await self._observe_live(record)
        self._require_present(seen, "read logs of")
        name = record["backend"]
        return await self.call(name, self.backends[name].logs(record["backendId"], record, tail, follow))

    async def exec(self, instance_id: str, command: list[str], timeout: float) -> dict[str, Any]:
        record = await self.local_record(instance_id, "exec")
        name = record["backend"]
        if name != "docker":
            raise OperationNotSupported(
                "exec is for containers; a VM's console is its serial log (GET .../logs)",
                {"backend": name, "operation": "exec"},
            )
        check_strings(command, "command")
        seen = await self._observe_live(record)
        self._require_present(seen, "exec in")
        if seen.state != "running":
            raise self._conflict(seen, "exec in")
        return await self.call(name, self.backends[name].exec(record["backendId"], command, timeout))

    # ---- snapshots -----------------------------------------------------------------------------
    # The record lists its snapshots (name, kind, when); the backend holds them: a docker image
    # (shoal-snapshots/<id>:<name>), a libvirt snapshot in the qcow2, or a qemu-img copy.

    @staticmethod
    def _snapshot_view(snap: dict[str, Any]) -> Snapshot:
        return Snapshot(
            name=snap["name"],
            created_at=snap["createdAt"],
            kind=snap["kind"],
            stateful=bool(snap.get("stateful")),
            instance_state=snap.get("instanceState", "unknown"),
            size=snap.get("size"),
        )

    @staticmethod
    def _find_snapshot(record: dict[str, Any], name: str) -> dict[str, Any]:
        check_ref(name, "snapshot")
        for snap in record.get("snapshots") or []:
            if snap["name"] == name:
                return snap
        raise SnapshotNotFound(
            f"instance {record['id']!r} has no snapshot {name!r}", {"id": record["id"], "snapshot": name}
        )

    async def snapshots(self, instance_id: str) -> SnapshotList:
        record = await self.record(instance_id)
        return SnapshotList(snapshots=[self._snapshot_view(s) for s in record.get("snapshots") or []])

    def _ready(self, record: dict[str, Any], operation: str) -> None:
        if record.get("phase") == "creating":
            raise OperationNotSupported(
                f"cannot {operation}: the instance is still being created",
                {"operation": operation, "state": "created"},
                status=409,
            )

    async def snapshot(self, instance_id: str, name: str) -> Snapshot:
        """Take a snapshot (docker commit; a libvirt snapshot or a disk copy); 409 if the name is used."""
        async with self.locked(instance_id, "snapshot") as record:
            self._ready(record, "snapshot")
            if any(s["name"] == name for s in record.get("snapshots") or []):
                raise SnapshotExists(
                    f"instance {instance_id!r} already has a snapshot {name!r}",
                    {"id": instance_id, "snapshot": name},
                )
            seen = await self._observe_live(record)
            self._require_present(seen, "snapshot")
            backend = record["backend"]
            made = await self.call(
                backend, self.backends[backend].snapshot(record["backendId"], record, name)
            )
            snap = {"name": name, "createdAt": now_iso(), "instanceState": seen.state, **made}
            record = {**record, "snapshots": [*(record.get("snapshots") or []), snap]}
            await self._touch(record)
            self.emit("instance-snapshot-created", record, snapshot=name)
        return self._snapshot_view(snap)

    def _spec_of(self, record: dict[str, Any], image: str | None = None) -> CreateInstance:
        """The create request an instance was made from (with its later updates), for a restore."""
        config = dict(record.get("config") or {})
        if image is not None:
            config["image"] = image
        body = {
            "name": record["name"],
            "backend": record["backend"],
            "config": config,
            "resources": record.get("resources") or {},
            "metadata": record.get("metadata") or {},
            "start": False,
        }
        return msgspec.convert(body, CreateInstance)

    async def restore(self, instance_id: str, name: str) -> Instance:
        """Back to the snapshot: same id, name, config; see docs/compute.md for what comes back."""
        async with self.locked(instance_id, "restore") as record:
            self._ready(record, "restore")
            snap = self._find_snapshot(record, name)
            seen = await self._observe_live(record)
            self._require_present(seen, "restore")
            backend = record["backend"]
            spec = self._spec_of(record, snap.get("ref")) if backend == "docker" else None
            new_id = await self.call(
                backend, self.backends[backend].restore(record["backendId"], record, snap, spec)
            )
            record = {**record, "backendId": new_id, "restoredFrom": name}
            await self._touch(record)
            self.emit("instance-restored", record, snapshot=name)
        return await self.get(instance_id)

    async def delete_snapshot(self, instance_id: str, name: str) -> None:
        async with self.locked(instance_id, "delete-snapshot") as record:
            snap = self._find_snapshot(record, name)
            backend = record["backend"]
            await self.call(backend, self.backends[backend].delete_snapshot(record, snap))
            left = [s for s in record.get("snapshots") or [] if s["name"] != name]
            await self._touch({**record, "snapshots": left})
            self.emit("instance-snapshot-deleted", record, snapshot=name)

    # ---- cluster -----------------------------------------------------------------------------

    async def backend_info(self, name: str) -> BackendInfo:
        return await self.call(name, self.backend(name).info())

    async def _backend_status(self, name: str) -> BackendStatus:
        # this node's backends: their capacity, and the instances on them (not other nodes')
        records = [r for r in await self.registry.all() if r["backend"] == name and self.is_local(r)]
        backend = self.backends[name]

        async def look() -> tuple[Any, dict[str, Observed]]:
            return await backend.capacity(), await backend.observe_all()

        try:
            cap, seen = await self.call(name, look())
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
                cpu=UsedTotal(used=whole(round(cpu_used, 6)), total=cap.cpus),
                memory=UsedTotal(used=whole(mem_used), total=cap.memory),
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
