"""Docker containers through aiodocker, against a real dockerd.

Containers shoal creates carry the label `shoal.compute.id`; nothing else on the daemon is
listed or touched. Stop's grace period is Docker's own `t`, so the daemon (not an HTTP
timeout) decides when SIGTERM turns into SIGKILL.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import aiodocker
import aiohttp

from shoal.compute.backends.base import Capacity, Observed, cores_of, memory_of, now_iso, storage_of
from shoal.compute.errors import (
    BackendError,
    BackendUnavailable,
    ComputeError,
    InstanceNotFound,
    NameConflict,
    OperationNotSupported,
    ResourceLimitExceeded,
    ValidationFailed,
)
from shoal.compute.metrics import Seen
from shoal.compute.models import (
    BackendInfo,
    BlockUsage,
    CpuUsage,
    CreateInstance,
    HealthCheck,
    MemoryUsage,
    NetworkUsage,
    Resources,
    StorageUsage,
    Usage,
)

LABEL_ID = "shoal.compute.id"
LABEL_NAME = "shoal.compute.name"
LABEL_SNAPSHOT_OF = "shoal.compute.snapshot-of"  # on snapshot images: the instance they belong to
LABEL_SNAPSHOT = "shoal.compute.snapshot"  # on snapshot images: the snapshot's name
SNAPSHOT_REPO = "shoal-snapshots"
RESTORED_TAG = "_restored"  # the image a restored container runs on (never a snapshot's name)
KVM_ONLY = ("disk_format", "network_type", "network_source", "cloud_init")
MIN_MEMORY = 6 * 1024 * 1024  # dockerd refuses less
MIN_CORES = 0.01  # dockerd's smallest NanoCpus (10 ms of CPU per second); below it means no limit
CALL_TIMEOUT = 30.0
EXEC_CAP = 1 << 20

_STATES = {
    "created": "stopped",
    "running": "running",
    "paused": "paused",
    "restarting": "restarting",
    "removing": "stopping",
    "exited": "stopped",
    "dead": "error",
}
_PORT = re.compile(
    r"^(?:(?P<ip>\d{1,3}(?:\.\d{1,3}){3}|\[[0-9a-fA-F:]+\]):)?(?:(?P<host>\d{1,5}):)?(?P<cont>\d{1,5})(?:/(?P<proto>tcp|udp|sctp))?$"
)
_RESTART = re.compile(r"^(no|always|unless-stopped|on-failure(?::(\d{1,4}))?)$")
_HEALTH = re.compile(r"\((?:health: )?(healthy|unhealthy|starting)\)")
_ENV = re.compile(r"^[^=\s][^=]*=", re.S)


def parse_ports(ports: list[str]) -> tuple[dict[str, dict], dict[str, list[dict]]]:
    """'[ip:]host:container[/proto]' -> Docker's ExposedPorts and PortBindings."""
    exposed: dict[str, dict] = {}
    bindings: dict[str, list[dict]] = {}
    for spec in ports:
        m = _PORT.match(spec)
        if not m or not 0 < int(m["cont"]) < 65536 or (m["host"] and not 0 < int(m["host"]) < 65536):
            raise ValidationFailed(f"port mapping {spec!r} is not '[ip:]hostPort:containerPort[/tcp|udp]'")
        key = f"{int(m['cont'])}/{m['proto'] or 'tcp'}"
        exposed[key] = {}
        if m["host"]:
            bindings.setdefault(key, []).append(
                {"HostIp": (m["ip"] or "").strip("[]"), "HostPort": m["host"]}
            )
    return exposed, bindings


def restart_policy(text: str) -> dict[str, Any]:
    m = _RESTART.match(text)
    if not m:
        raise ValidationFailed(
            f"restartPolicy {text!r} is not one of no, always, unless-stopped, on-failure[:N]"
        )
    if text.startswith("on-failure"):
        return {"Name": "on-failure", "MaximumRetryCount": int(m.group(2) or 0)}
    return {"Name": text}


def device_mapping(text: str) -> dict[str, str]:
    """'host[:container[:rwm]]' -> Docker's DeviceMapping."""
    parts = text.split(":")
    if not 1 <= len(parts) <= 3 or not parts[0].startswith("/"):
        raise ValidationFailed(f"device {text!r} is not '/dev/host[:/dev/container[:rwm]]'")
    container = parts[1] if len(parts) > 1 and parts[1] else parts[0]
    perms = parts[2] if len(parts) > 2 else "rwm"
    if not container.startswith("/") or not perms or set(perms) - set("rwm"):
        raise ValidationFailed(f"device {text!r} is not '/dev/host[:/dev/container[:rwm]]'")
    return {"PathOnHost": parts[0], "PathInContainer": container, "CgroupPermissions": perms}


def cpu_percent(stats: dict[str, Any]) -> float:
    """CPU % as `docker stats` shows it (100 = one core busy), from the two samples in `stats`."""
    cpu, pre = stats.get("cpu_stats") or {}, stats.get("precpu_stats") or {}
    total = (cpu.get("cpu_usage") or {}).get("total_usage", 0)
    pre_total = (pre.get("cpu_usage") or {}).get("total_usage", 0)
    system, pre_system = cpu.get("system_cpu_usage", 0), pre.get("system_cpu_usage", 0)
    online = cpu.get("online_cpus") or len((cpu.get("cpu_usage") or {}).get("percpu_usage") or []) or 1
    if not pre_system or system <= pre_system or total < pre_total:
        return 0.0
    return round((total - pre_total) / (system - pre_system) * online * 100.0, 2)


def memory_used(mem: dict[str, Any]) -> int:
    """Working set: usage minus page cache (cgroup v1 'cache', v2 'inactive_file')."""
    usage = mem.get("usage", 0)
    st = mem.get("stats") or {}
    cache = st.get("total_inactive_file", st.get("inactive_file", st.get("cache", 0)))
    return max(0, usage - cache) if cache < usage else usage


def block_bytes(blkio: dict[str, Any]) -> tuple[int, int]:
    read = write = 0
    for row in blkio.get("io_service_bytes_recursive") or []:
        op = (row.get("op") or "").lower()
        if op == "read":
            read += row.get("value", 0)
        elif op == "write":
            write += row.get("value", 0)
    return read, write


class DockerBackend:
    """One dockerd, reached at `url` (unix:///path/docker.sock or tcp://127.0.0.1:port)."""

    name = "docker"
    instance_type = "container"

    def __init__(self, url: str) -> None:
        self.url = url
        self._client: aiodocker.Docker | None = None
        self._last_check = ""
        self._capacity: Capacity | None = None

    # ---- plumbing ----------------------------------------------------------------------------

    def client(self) -> aiodocker.Docker:
        if self._client is None:
            self._client = aiodocker.Docker(url=self.url)
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def ping(self) -> None:
        """GET /version: the daemon's cheapest answer. Bounded by the caller (health.py)."""
        await self._call(self.client().version, timeout=None)

    async def _call(self, coro_fn, *args: Any, timeout: float | None = CALL_TIMEOUT, **kwargs: Any) -> Any:
        """Run one daemon call; a dead daemon becomes BackendUnavailable, a refusal BackendError."""
        try:
            if timeout is None:
                return await coro_fn(*args, **kwargs)
            async with asyncio.timeout(timeout):
                return await coro_fn(*args, **kwargs)
        except aiodocker.DockerError as exc:
            if exc.status >= 900:  # aiodocker's "cannot connect"
                await self._reset()
                raise BackendUnavailable("docker", "Docker daemon not responding") from None
            raise self._refusal(exc) from None
        except (aiohttp.ClientError, OSError) as exc:
            await self._reset()
            raise BackendUnavailable("docker", f"Docker daemon not responding: {exc}") from None
        except TimeoutError:
            raise BackendUnavailable("docker", "Docker daemon did not answer in time") from None

    async def _reset(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                await client.close()
            except Exception:  # closing a broken session must not hide the real error
                pass

    def _refusal(self, exc: aiodocker.DockerError) -> ComputeError:
        details = {"backend": "docker", "reason": exc.message, "backendStatus": exc.status}
        if "storage-opt" in exc.message:
            return OperationNotSupported(f"Docker cannot limit storage here: {exc.message}", details)
        if exc.status == 404:
            return BackendError(f"Docker: {exc.message}", details, status=404)
        if exc.status in (400, 409):
            return BackendError(f"Docker refused: {exc.message}", details, status=exc.status)
        if exc.status == 304:
            return BackendError("Docker: nothing to do", details, status=409)
        return BackendError(f"Docker failed: {exc.message}", details, status=502)

    def container(self, backend_id: str) -> aiodocker.containers.DockerContainer:
        return self.client().containers.container(backend_id)

    async def inspect(self, backend_id: str, size: bool = False) -> dict[str, Any] | None:
        try:
            if size:
                return await self._call(self.container(backend_id).show, size=1)
            return await self._call(self.container(backend_id).show)
        except BackendError as exc:
            if exc.status == 404:
                return None
            raise

    async def _must_inspect(self, backend_id: str, size: bool = False) -> dict[str, Any]:
        data = await self.inspect(backend_id, size)
        if data is None:
            raise InstanceNotFound(
                "the container behind this instance no longer exists", {"backendId": backend_id}
            )
        return data

    # ---- facts -------------------------------------------------------------------------------

    async def capacity(self) -> Capacity:
        if self._capacity is None:
            info = await self._call(self.client().system.info)
            self._capacity = Capacity(cpus=int(info.get("NCPU") or 1), memory=int(info.get("MemTotal") or 0))
        return self._capacity

    async def info(self) -> BackendInfo:
        version = await self._call(self.client().version)
        self._last_check = now_iso()
        return BackendInfo(
            type="docker",
            version=str(version.get("Version", "")),
            api_version=str(version.get("ApiVersion", "")),
            status="running",
            capabilities=["containers", "images", "networks", "volumes", "pause", "live-resources"],
            supported_types=["container"],
            health_check=HealthCheck(status="healthy", last_check=self._last_check),
        )

    # ---- create ------------------------------------------------------------------------------

    def validate(self, spec: CreateInstance) -> None:
        cfg = spec.config
        wrong = [k for k in KVM_ONLY if getattr(cfg, k) is not None]
        if wrong:
            raise ValidationFailed(
                "these config keys are for the kvm backend: " + ", ".join(_camel(k) for k in wrong),
                {"fields": [_camel(k) for k in wrong]},
            )
        if not cfg.image:
            raise ValidationFailed(
                "config.image is required for a docker instance", {"field": "config.image"}
            )
        for item in cfg.env or []:
            if not _ENV.match(item):
                raise ValidationFailed(f"env entry {item!r} is not KEY=value", {"field": "config.env"})
        for vol in cfg.volumes or []:
            if ":" not in vol or vol.startswith(":"):
                raise ValidationFailed(
                    f"volume {vol!r} is not 'source:/container/path[:ro]'", {"field": "config.volumes"}
                )
        parse_ports(cfg.ports or [])
        for dev in cfg.devices or []:
            device_mapping(dev)
        if cfg.restart_policy:
            restart_policy(cfg.restart_policy)
        self._check_floor(spec.resources)

    @staticmethod
    def _check_floor(resources: Resources) -> None:
        """What dockerd can enforce: at least 0.01 cores (less would round to 'no limit'), 6 MiB."""
        cores, memory = cores_of(resources), memory_of(resources)
        if cores is not None and cores < MIN_CORES:
            raise ValidationFailed(
                f"Docker's smallest CPU limit is {MIN_CORES} cores ({cores:g} requested)",
                {"field": "resources.cpu.cores", "minimum": MIN_CORES},
            )
        if memory is not None and memory < MIN_MEMORY:
            raise ValidationFailed(
                "Docker needs a memory limit of at least 6 MiB",
                {"field": "resources.memory.limit", "minimum": MIN_MEMORY},
            )

    async def check_limits(self, resources: Resources) -> None:
        self._check_floor(resources)
        cap = await self.capacity()
        cores, memory = cores_of(resources), memory_of(resources)
        if cores is not None and cores > cap.cpus:
            raise ResourceLimitExceeded(
                f"{cores:g} CPU cores requested; this host has {cap.cpus}",
                {"resource": "cpu", "requested": cores, "available": cap.cpus},
            )
        if memory is not None and cap.memory and memory > cap.memory:
            raise ResourceLimitExceeded(
                f"{memory} bytes of memory requested; this host has {cap.memory}",
                {"resource": "memory", "requested": memory, "available": cap.memory},
            )
        if memory is not None and memory < MIN_MEMORY:
            raise ValidationFailed(
                "Docker needs a memory limit of at least 6 MiB", {"field": "resources.memory.limit"}
            )

    async def create(self, record: dict[str, Any], spec: CreateInstance) -> str:
        await self.check_limits(spec.resources)
        cfg = spec.config
        exposed, bindings = parse_ports(cfg.ports or [])
        host: dict[str, Any] = {"Binds": list(cfg.volumes or []), "PortBindings": bindings}
        host.update(self._limits(spec.resources))
        if cfg.network_mode:
            host["NetworkMode"] = cfg.network_mode
        if cfg.restart_policy:
            host["RestartPolicy"] = restart_policy(cfg.restart_policy)
        # host access below was allowed by the node's allow-list (compute/access.py) before we got here
        if cfg.privileged:
            host["Privileged"] = True
        if cfg.cap_add:
            host["CapAdd"] = list(cfg.cap_add)
        if cfg.devices:
            host["Devices"] = [device_mapping(d) for d in cfg.devices]
        if storage_of(spec.resources) is not None:
            host["StorageOpt"] = {"size": str(storage_of(spec.resources))}
        labels = {**spec.metadata.labels, LABEL_ID: record["id"], LABEL_NAME: record["name"]}
        config: dict[str, Any] = {
            "Image": cfg.image,
            "Env": list(cfg.env or []),
            "Labels": labels,
            "ExposedPorts": exposed,
            "HostConfig": host,
        }
        if cfg.command is not None:
            config["Cmd"] = list(cfg.command)
        try:
            container = await self._call(self.client().containers.create, config, name=record["name"])
        except BackendError as exc:
            if exc.status == 404 and "network" in exc.message.lower():
                raise BackendError(
                    f"Docker has no network {cfg.network_mode!r}",
                    {**exc.details, "field": "config.networkMode"},
                    status=400,
                ) from None
            if exc.status == 404:  # the image
                raise BackendError(
                    f"Docker has no image {cfg.image!r}", {**exc.details, "image": cfg.image}, status=400
                ) from None
            if exc.status == 409 and "already in use" in exc.message:
                raise NameConflict(
                    f"Docker already has a container named {record['name']!r} (not one of shoal's)",
                    {"name": record["name"], "backend": "docker"},
                ) from None
            raise
        return container.id

    @staticmethod
    def _limits(resources: Resources) -> dict[str, Any]:
        out: dict[str, Any] = {}
        cores, memory = cores_of(resources), memory_of(resources)
        if cores is not None:
            out["NanoCpus"] = round(cores * 1e9)
        if memory is not None:
            out["Memory"] = memory
            out["MemorySwap"] = -1
        return out

    async def find(self, record: dict[str, Any]) -> str | None:
        rows = await self._call(
            self.client().containers.list, all=True, filters={"label": [f"{LABEL_ID}={record['id']}"]}
        )
        return rows[0]._container["Id"] if rows else None

    async def owned(self) -> dict[str, str]:
        rows = await self._call(self.client().containers.list, all=True, filters={"label": [LABEL_ID]})
        return {c._container["Id"]: (c._container.get("Labels") or {}).get(LABEL_ID, "") for c in rows}

    async def leftover(self, name: str) -> tuple[str, str] | None:
        data = await self.inspect(name)
        owner = ((data or {}).get("Config") or {}).get("Labels") or {}
        return (data["Id"], owner[LABEL_ID]) if data and owner.get(LABEL_ID) else None

    # ---- state -------------------------------------------------------------------------------

    async def observe(self, backend_id: str) -> Observed | None:
        data = await self.inspect(backend_id)
        if data is None:
            return None
        st = data.get("State") or {}
        status = st.get("Status", "unknown")
        health = (st.get("Health") or {}).get("Status")
        return Observed(_STATES.get(status, "unknown"), health or status)

    async def observe_all(self) -> dict[str, Observed]:
        rows = await self._call(self.client().containers.list, all=True, filters={"label": [LABEL_ID]})
        out = {}
        for c in rows:
            raw = c._container
            state = raw.get("State", "") or "unknown"
            # the same words as observe(): Docker's state, or its health check's verdict when it has one
            health = _HEALTH.search(raw.get("Status") or "")
            out[raw["Id"]] = Observed(_STATES.get(state, "unknown"), health.group(1) if health else state)
        return out

    # ---- lifecycle ---------------------------------------------------------------------------

    async def start(self, backend_id: str) -> None:
        try:
            await self._call(self.container(backend_id).start)
        except BackendError as exc:
            if exc.status == 404 and "network" in exc.message.lower():  # the container is there
                raise BackendError(
                    f"Docker cannot start it: {exc.details.get('reason')}",
                    {**exc.details, "field": "config.networkMode"},
                    status=400,
                ) from None
            raise

    async def stop(self, backend_id: str, force: bool, timeout: int) -> None:
        c = self.container(backend_id)
        if force:
            await self._call(c.kill, signal="SIGKILL")
            await self._call(c.wait, timeout=CALL_TIMEOUT)
        else:
            # Docker's `t` is the grace period; the call itself may take that long.
            await self._call(c.stop, t=timeout, timeout=timeout + CALL_TIMEOUT)

    async def restart(self, backend_id: str, force: bool, timeout: int) -> None:
        t = 0 if force else timeout
        await self._call(self.container(backend_id).restart, t=t, timeout=t + CALL_TIMEOUT)

    async def pause(self, backend_id: str) -> None:
        await self._call(self.container(backend_id).pause)

    async def unpause(self, backend_id: str) -> None:
        await self._call(self.container(backend_id).unpause)

    async def update(self, backend_id: str, resources: Resources, running: bool) -> None:
        if storage_of(resources) is not None:
            raise OperationNotSupported(
                "Docker cannot change a container's storage limit after creation",
                {"backend": "docker", "field": "resources.storage"},
            )
        await self.check_limits(resources)
        body = self._limits(resources)
        if body:
            await self._call(
                self.client()._query_json, f"containers/{backend_id}/update", method="POST", data=body
            )

    async def delete(self, backend_id: str, record: dict[str, Any]) -> None:
        """The container, then its snapshot images (tagged or not: a restored container's base)."""
        try:
            await self._call(self.container(backend_id).delete, force=True, v=True)
        except BackendError as exc:
            if exc.status != 404:
                raise
        if record.get("id"):
            await self._remove_snapshot_images(record["id"])

    async def _remove_snapshot_images(self, instance_id: str) -> None:
        rows = await self._call(
            self.client().images.list, all=True, filters={"label": [f"{LABEL_SNAPSHOT_OF}={instance_id}"]}
        )
        for row in rows:
            try:
                await self._call(self.client().images.delete, row["Id"], force=True)
            except BackendError as exc:
                if exc.status not in (404, 409):  # gone already; a layer another image still uses
                    raise

    # ---- snapshots ---------------------------------------------------------------------------

    @staticmethod
    def snapshot_ref(instance_id: str, name: str) -> str:
        """The image a snapshot is committed to: shoal-snapshots/<instance id>:<snapshot name>."""
        repo = re.sub(r"[^a-z0-9_.-]", "-", instance_id.lower()).strip(".-_") or "instance"
        return f"{SNAPSHOT_REPO}/{repo}:{name}"

    async def snapshot(self, backend_id: str, record: dict[str, Any], name: str) -> dict[str, Any]:
        """docker commit (the container paused meanwhile): its filesystem, not its processes."""
        await self._must_inspect(backend_id)
        ref = self.snapshot_ref(record["id"], name)
        repo, tag = ref.rsplit(":", 1)
        changes = [f"LABEL {LABEL_SNAPSHOT_OF}={record['id']} {LABEL_SNAPSHOT}={name}"]
        out = await self._call(
            self.container(backend_id).commit,
            repository=repo,
            tag=tag,
            message=f"shoal snapshot {name} of {record['id']}",
            changes=changes,
            pause=True,
            timeout=None,
        )
        image = await self._call(self.client().images.inspect, out["Id"])
        return {
            "ref": ref,
            "imageId": out["Id"],
            "kind": "image",
            "stateful": False,
            "size": image.get("Size"),
        }

    async def restore(self, backend_id: str, record: dict[str, Any], snap: dict[str, Any], spec: Any) -> str:
        """A new container from the snapshot's image, with the instance's name, labels and config;
        the old one is kept (renamed) until the new one exists, and put back if it cannot be made.
        Returns the new container's id."""
        old = await self._must_inspect(backend_id)
        was_running = bool((old.get("State") or {}).get("Running"))
        await self._call(self.client().images.inspect, snap["imageId"])  # 404 before anything changes
        if was_running:
            await self.stop(backend_id, False, 10)
        aside = f"{record['name']}.shoal-restore-{backend_id[:12]}"
        await self._call(self.container(backend_id).rename, aside)
        new_id = None
        try:
            new_id = await self.create(record, spec)
            # the container's base keeps a tag of its own, so deleting the snapshot only untags
            repo = snap["ref"].rsplit(":", 1)[0]
            await self._call(self.client().images.tag, snap["imageId"], repo, tag=RESTORED_TAG)
            if was_running:
                await self.start(new_id)
        except BaseException:
            if new_id is not None:
                await asyncio.shield(self.delete(new_id, {}))
            await asyncio.shield(self._call(self.container(backend_id).rename, record["name"]))
            if was_running:
                await asyncio.shield(self.start(backend_id))
            raise
        await self.delete(backend_id, {})  # not the images: the new container stands on one
        return new_id

    async def delete_snapshot(self, record: dict[str, Any], snap: dict[str, Any]) -> None:
        """Remove the snapshot's tag: the image goes unless a restored container stands on it
        (then it keeps its `_restored` tag, and goes with the instance)."""
        try:
            await self._call(self.client().images.delete, snap["ref"])
        except BackendError as exc:
            if exc.status != 404:
                raise

    # ---- logs and exec -----------------------------------------------------------------------

    async def logs(self, backend_id: str, record: dict[str, Any], tail: int | None, follow: bool) -> Any:
        """docker logs (stdout and stderr, as the container wrote them); an async iterator of bytes."""
        container = self.container(backend_id)
        kwargs: dict[str, Any] = {
            "stdout": True,
            "stderr": True,
            "tail": str(tail) if tail is not None else "all",
        }
        if not follow:
            lines = await self._call(container.log, **kwargs)

            async def once() -> Any:
                yield "".join(lines).encode()

            return once()

        async def stream() -> Any:
            async for line in container.log(follow=True, **kwargs):
                yield line.encode()

        return stream()

    async def exec(self, backend_id: str, command: list[str], timeout: float) -> dict[str, Any]:
        """Run `command` in the running container; its exit code and output (each capped at 1 MiB)."""
        container = self.container(backend_id)
        ex = await self._call(container.exec, command, stdout=True, stderr=True)
        out, err = bytearray(), bytearray()

        async def collect() -> None:
            async with ex.start(detach=False) as stream:
                while (msg := await stream.read_out()) is not None:
                    buf = out if msg.stream == 1 else err
                    if len(buf) < EXEC_CAP:
                        buf += msg.data[: EXEC_CAP - len(buf)]

        try:
            await self._call(collect, timeout=timeout)
        except BackendUnavailable:
            raise BackendError(
                f"the command did not finish within {timeout:g} s", {"timeout": timeout}, status=504
            ) from None
        info = await self._call(ex.inspect)
        return {
            "exitCode": info.get("ExitCode"),
            "stdout": out.decode(errors="replace"),
            "stderr": err.decode(errors="replace"),
        }

    async def exec_attach(self, backend_id: str, command: list[str]) -> ExecSession:
        """Start `command` with stdin attached and no TTY (stdout and stderr stay apart).

        For the exec WebSocket: the caller pumps frames both ways and asks for the exit code
        once the output has ended. The attach itself has the usual call deadline.
        """
        container = self.container(backend_id)
        ex = await self._call(container.exec, command, stdout=True, stderr=True, stdin=True)
        stream = ex.start(detach=False)
        await self._call(stream.__aenter__)  # POST /exec/{id}/start, upgraded to a raw stream
        return ExecSession(self, ex, stream)

    # ---- metrics -----------------------------------------------------------------------------

    async def metrics(self) -> dict[str, Any]:
        """State, CPU seconds and working-set memory of every shoal container: one list, then
        one-shot stats (a single sample, no 1 s wait) of the running ones, a few at a time."""
        states = await self.observe_all()
        gate = asyncio.Semaphore(8)

        async def stats(backend_id: str) -> dict[str, Any]:
            async with gate:
                try:
                    return await self._call(
                        self.client()._query_json,
                        f"containers/{backend_id}/stats",
                        params={"stream": "false", "one-shot": "true"},
                    )
                except BackendError:  # stopped or removed meanwhile
                    return {}

        running = [b for b, seen in states.items() if seen.state in ("running", "paused")]
        rows = dict(zip(running, await asyncio.gather(*(stats(b) for b in running)), strict=True))
        out = {}
        for backend_id, seen in states.items():
            st = rows.get(backend_id) or {}
            total = ((st.get("cpu_stats") or {}).get("cpu_usage") or {}).get("total_usage")
            mem = st.get("memory_stats") or {}
            out[backend_id] = Seen(
                seen.state,
                total / 1e9 if total is not None else None,
                memory_used(mem) if mem.get("usage") is not None else None,
            )
        return out

    # ---- usage -------------------------------------------------------------------------------

    async def usage(self, backend_id: str, record: dict[str, Any]) -> Usage:
        data = await self._must_inspect(backend_id, size=True)
        hostcfg = data.get("HostConfig") or {}
        cap = await self.capacity()
        running = (data.get("State") or {}).get("Status") in ("running", "paused")
        stats: dict[str, Any] = {}
        if running:
            # stream=0 makes dockerd take two samples (about a second apart): CPU % needs both.
            rows = await self._call(self.container(backend_id).stats, stream=False, timeout=CALL_TIMEOUT)
            stats = rows[0] if rows else {}
        mem = stats.get("memory_stats") or {}
        limit = hostcfg.get("Memory") or mem.get("limit") or cap.memory
        used = memory_used(mem) if mem else 0
        nets = stats.get("networks") or {}
        rx = sum(n.get("rx_bytes", 0) for n in nets.values())
        tx = sum(n.get("tx_bytes", 0) for n in nets.values())
        read, write = block_bytes(stats.get("blkio_stats") or {})
        cores = (hostcfg.get("NanoCpus") or 0) / 1e9 or float(cap.cpus)
        size_rw = int(data.get("SizeRw") or 0)
        total = ((record.get("resources") or {}).get("storage") or {}).get("totalSpace") or 0
        return Usage(
            cpu=CpuUsage(usage=cpu_percent(stats) if stats else 0.0, cores=cores),
            memory=MemoryUsage(
                used=used, limit=limit, percentage=round(used / limit * 100.0, 2) if limit else 0.0
            ),
            storage=StorageUsage(used=size_rw, total=total),
            network=NetworkUsage(rx_bytes=rx, tx_bytes=tx),
            block_io=BlockUsage(read_bytes=read, write_bytes=write),
        )


def _camel(snake: str) -> str:
    head, *rest = snake.split("_")
    return head + "".join(p.title() for p in rest)


class ExecSession:
    """One attached docker exec: bytes to its stdin, (stream, bytes) from its stdout/stderr."""

    def __init__(self, backend: DockerBackend, ex: Any, stream: Any) -> None:
        self.backend = backend
        self.ex = ex
        self.stream = stream
        self.stdin_open = True

    async def read(self) -> tuple[int, bytes] | None:
        """The next chunk as (1 = stdout or 2 = stderr, data); None once the command's output ended."""
        try:
            msg = await self.stream.read_out()
        except (aiohttp.ClientError, OSError) as exc:
            raise BackendUnavailable("docker", f"the exec stream broke: {exc}") from None
        return None if msg is None else (msg.stream, msg.data)

    async def write(self, data: bytes) -> None:
        """Write to the command's stdin (ignored once stdin is closed)."""
        if not self.stdin_open or not data:
            return
        try:
            async with asyncio.timeout(CALL_TIMEOUT):  # a stalled reader must not hold us forever
                await self.stream.write_in(data)
        except (aiohttp.ClientError, OSError, RuntimeError, TimeoutError) as exc:
            raise BackendUnavailable("docker", f"cannot write to the command's stdin: {exc}") from None

    def close_stdin(self) -> None:
        """Half-close the hijacked connection: dockerd closes the command's stdin (EOF for `cat`).

        aiodocker's Stream.close() would also drop the read side, so the write end is shut here.
        """
        if not self.stdin_open:
            return
        self.stdin_open = False
        resp = self.stream._resp
        transport = resp.connection.transport if resp is not None and resp.connection else None
        if transport is not None and transport.can_write_eof():
            transport.write_eof()

    async def exit_code(self, wait: float = 5.0) -> int | None:
        """The exit code, once dockerd reports the command ended (it may lag the stream's end)."""
        deadline = asyncio.get_running_loop().time() + wait
        while True:
            info = await self.backend._call(self.ex.inspect)
            if not info.get("Running") or asyncio.get_running_loop().time() >= deadline:
                return info.get("ExitCode") if not info.get("Running") else None
            await asyncio.sleep(0.05)

    async def close(self) -> None:
        try:
            await self.stream.close()
        except Exception:  # the connection may already be gone; nothing left to release
            pass
