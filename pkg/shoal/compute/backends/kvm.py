"""KVM/QEMU virtual machines through libvirt-python.

libvirt calls block, so every one runs on a small thread pool of this backend's own, never on
the event loop; waits (a guest shutting down) are polled from the loop, holding no thread.
Disks are qcow2 overlays on a template image (`qemu-img create -b`), so creating a VM costs
milliseconds and the template is never written. Domains carry shoal metadata (kvm_xml.NS);
the domain uuid is the instance uuid, so the registry finds them without scanning.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from shoal.compute.backends.base import Capacity, Observed, cores_of, memory_of, now_iso, storage_of
from shoal.compute.backends.kvm_xml import NS, DomainSpec, domain_xml, instance_id_of
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
from shoal.runtime import lifetime

try:
    import libvirt

    # errors are raised as exceptions and mapped below; libvirt's default handler would also print them
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
except ImportError:  # the `kvm` extra is not installed: the backend reports itself unavailable
    libvirt = None

DOCKER_ONLY = (
    "command",
    "env",
    "volumes",
    "ports",
    "network_mode",
    "restart_policy",
    "privileged",
    "devices",
    "cap_add",
)
NETWORK_TYPES = ("user", "network", "bridge", "none")
DISK_FORMATS = ("qcow2", "raw")
DEFAULT_MEMORY = 512 * 1024 * 1024
MIN_MEMORY = 16 * 1024 * 1024
DEFAULT_BLANK_DISK = 1 << 30
CALL_TIMEOUT = 60.0
POLL = 0.2
_XML_BAD = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")  # not allowed in XML 1.0
_TEMPLATE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:+-]{0,127}$")

_STATES = {
    0: "unknown",  # NOSTATE
    1: "running",
    2: "running",  # BLOCKED (idle in the host's eyes)
    3: "paused",
    4: "stopping",  # SHUTDOWN: being shut down
    5: "stopped",
    6: "error",  # CRASHED
    7: "paused",  # PMSUSPENDED
}
_REASONS = {
    1: {0: "unknown", 1: "booted", 2: "migrated", 3: "restored", 4: "from snapshot", 5: "unpaused"},
    3: {0: "unknown", 1: "paused by user", 2: "migration", 3: "saving", 4: "dumping", 5: "I/O error"},
    5: {0: "unknown", 1: "shut down", 2: "destroyed", 3: "crashed", 4: "migrated", 5: "saved", 6: "failed"},
}


@dataclass(frozen=True)
class Template:
    name: str
    disk: Path | None
    disk_format: str
    kernel: Path | None
    initrd: Path | None
    cmdline: str | None


def _version(n: int) -> str:
    return f"{n // 1_000_000}.{n // 1000 % 1000}.{n % 1000}"


class KvmBackend:
    """One libvirt URI (qemu:///system, qemu+unix:///system?socket=..., test:///default)."""

    name = "kvm"
    instance_type = "vm"

    def __init__(
        self,
        uri: str,
        data_dir: str | Path,
        templates_dir: str | Path | None = None,
        domain_type: str = "qemu",
    ) -> None:
        self.uri = uri
        self.data_dir = Path(data_dir)
        self.templates_dir = Path(templates_dir) if templates_dir else self.data_dir / "templates"
        self.domain_type = domain_type
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="libvirt")
        # probes get a thread of their own: a hung libvirtd holds every thread that calls it,
        # and queued probes must not take the pool's threads from calls
        self._probe_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="libvirt-probe")
        self._conn: Any = None
        self._capacity: Capacity | None = None

    # ---- plumbing: every libvirt call goes through _run -------------------------------------

    def _connection(self) -> Any:
        if libvirt is None:
            raise BackendUnavailable("kvm", "libvirt-python is not installed (pip install 'shoal[kvm]')")
        conn = self._conn
        if conn is not None:
            try:
                if conn.isAlive():
                    return conn
            except libvirt.libvirtError:
                pass
            self._drop()
        try:
            self._conn = libvirt.open(self.uri)
        except libvirt.libvirtError as exc:
            raise BackendUnavailable("kvm", f"libvirt at {self.uri} not responding: {exc}") from None
        return self._conn

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def _guarded(self, fn: Any, *args: Any) -> Any:
        conn = self._connection()
        try:
            return fn(conn, *args)
        except libvirt.libvirtError as exc:
            alive = False
            with contextlib.suppress(Exception):
                alive = bool(conn.isAlive())
            if not alive:
                self._drop()
                raise BackendUnavailable("kvm", f"lost the libvirt connection: {exc}") from None
            raise self._refusal(exc) from None

    def _refusal(self, exc: Any) -> ComputeError:
        code = exc.get_error_code()
        message = exc.get_error_message() or str(exc)
        details = {"backend": "kvm", "reason": message, "libvirtCode": code}
        if code == libvirt.VIR_ERR_NO_DOMAIN:
            return InstanceNotFound("the VM behind this instance no longer exists", details)
        if code == libvirt.VIR_ERR_OPERATION_INVALID:
            return OperationNotSupported(
                f"not possible in the VM's current state: {message}", details, status=409
            )
        if code in (
            libvirt.VIR_ERR_NO_SUPPORT,
            libvirt.VIR_ERR_OPERATION_UNSUPPORTED,
            libvirt.VIR_ERR_ARGUMENT_UNSUPPORTED,
        ):
            return OperationNotSupported(f"libvirt cannot do this: {message}", details)
        if code in (
            libvirt.VIR_ERR_XML_ERROR,
            libvirt.VIR_ERR_INVALID_ARG,
            libvirt.VIR_ERR_CONFIG_UNSUPPORTED,
        ):
            return BackendError(f"libvirt refused: {message}", details, status=400)
        if code == libvirt.VIR_ERR_NO_NETWORK:
            return BackendError(f"libvirt has no such network: {message}", details, status=400)
        return BackendError(f"libvirt failed: {message}", details, status=502)

    async def _run(self, fn: Any, *args: Any, timeout: float = CALL_TIMEOUT) -> Any:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                return await loop.run_in_executor(self._pool, partial(self._guarded, fn, *args))
        except TimeoutError:
            raise BackendUnavailable("kvm", f"libvirt did not answer within {timeout:g} s") from None

    async def ping(self) -> None:
        """getLibVersion: one RPC to libvirtd (local for test:///). Bounded by the caller."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._probe_pool, partial(self._guarded, lambda c: c.getLibVersion()))

    async def close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._pool, self._drop)
        self._pool.shutdown(wait=False)
        self._probe_pool.shutdown(wait=False, cancel_futures=True)

    @staticmethod
    def _dom(conn: Any, uuid: str) -> Any:
        return conn.lookupByUUIDString(uuid)

    # ---- facts -------------------------------------------------------------------------------

    async def capacity(self) -> Capacity:
        if self._capacity is None:
            info = await self._run(lambda c: c.getInfo())
            self._capacity = Capacity(cpus=int(info[2]), memory=int(info[1]) * 1024 * 1024)
        return self._capacity

    async def info(self) -> BackendInfo:
        def facts(c: Any) -> tuple[int, int]:
            return c.getVersion(), c.getLibVersion()

        hv, lib = await self._run(facts)
        return BackendInfo(
            type="kvm",
            version=_version(hv),
            api_version=_version(lib),
            status="running",
            capabilities=["vms", "pause", "live-vcpus", "live-memory", "qcow2-overlays", "cloud-init"],
            supported_types=["vm"],
            health_check=HealthCheck(status="healthy", last_check=now_iso()),
        )

    def template(self, name: str) -> Template:
        if not _TEMPLATE.match(name):
            raise ValidationFailed(f"config.image {name!r} is not a template name", {"field": "config.image"})
        base = self.templates_dir
        for ext, fmt in ((".qcow2", "qcow2"), (".img", "raw"), (".raw", "raw")):
            if (base / f"{name}{ext}").is_file():
                return Template(name, base / f"{name}{ext}", fmt, None, None, None)
        folder = base / name
        if folder.is_dir():
            disk = next(
                (folder / d for d in ("disk.qcow2", "disk.img", "disk.raw") if (folder / d).is_file()), None
            )
            kernel = next((folder / k for k in ("kernel", "vmlinuz") if (folder / k).is_file()), None)
            initrd = folder / "initrd" if (folder / "initrd").is_file() else None
            cmdline = (folder / "cmdline").read_text().strip() if (folder / "cmdline").is_file() else None
            fmt = "qcow2" if disk is not None and disk.suffix == ".qcow2" else "raw"
            if disk is not None or kernel is not None:
                return Template(name, disk, fmt, kernel, initrd, cmdline)
        known = sorted({p.stem for p in base.glob("*")}) if base.is_dir() else []
        raise ValidationFailed(
            f"no VM template named {name!r}", {"field": "config.image", "templates": known[:50]}
        )

    # ---- create ------------------------------------------------------------------------------

    def validate(self, spec: CreateInstance) -> None:
        cfg = spec.config
        wrong = [k for k in DOCKER_ONLY if getattr(cfg, k) is not None]
        if wrong:
            names = [_camel(k) for k in wrong]
            raise ValidationFailed(
                "these config keys are for the docker backend: " + ", ".join(names), {"fields": names}
            )
        if not cfg.image:
            raise ValidationFailed(
                "config.image (a VM template) is required for a kvm instance", {"field": "config.image"}
            )
        if cfg.network_type is not None and cfg.network_type not in NETWORK_TYPES:
            raise ValidationFailed(
                f"config.networkType must be one of {', '.join(NETWORK_TYPES)}",
                {"field": "config.networkType"},
            )
        if cfg.disk_format is not None and cfg.disk_format not in DISK_FORMATS:
            raise ValidationFailed(
                f"config.diskFormat must be one of {', '.join(DISK_FORMATS)}", {"field": "config.diskFormat"}
            )
        self._check_shape(spec.resources)
        for key, value in spec.metadata.labels.items():
            if _XML_BAD.search(key) or _XML_BAD.search(value):
                raise ValidationFailed(
                    f"label {key!r}: control characters cannot be stored in a libvirt domain",
                    {"field": "metadata.labels", "label": key},
                )
        self.template(cfg.image)

    @staticmethod
    def _check_shape(resources: Resources) -> None:
        cores = cores_of(resources)
        if cores is not None and cores != int(cores):
            raise ValidationFailed("a VM needs a whole number of CPU cores", {"field": "resources.cpu.cores"})
        memory = memory_of(resources)
        if memory is not None and memory < MIN_MEMORY:
            raise ValidationFailed(
                "a VM needs at least 16 MiB of memory", {"field": "resources.memory.limit"}
            )

    async def check_limits(self, resources: Resources) -> None:
        cap = await self.capacity()
        cores, memory, storage = cores_of(resources), memory_of(resources), storage_of(resources)
        if cores is not None and cores > cap.cpus:
            raise ResourceLimitExceeded(
                f"{cores:g} vCPUs requested; this host has {cap.cpus}",
                {"resource": "cpu", "requested": cores, "available": cap.cpus},
            )
        if memory is not None and memory > cap.memory:
            raise ResourceLimitExceeded(
                f"{memory} bytes of memory requested; this host has {cap.memory}",
                {"resource": "memory", "requested": memory, "available": cap.memory},
            )
        if storage is not None:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            st = os.statvfs(self.data_dir)
            free = st.f_bavail * st.f_frsize
            if storage > free:
                raise ResourceLimitExceeded(
                    f"{storage} bytes of disk requested; {free} are free",
                    {"resource": "storage", "requested": storage, "available": free},
                )

    def instance_dir(self, instance_id: str) -> Path:
        return self.data_dir / "vms" / instance_id

    def console_log(self, instance_id: str) -> Path:
        return self.instance_dir(instance_id) / "console.log"

    async def create(self, record: dict[str, Any], spec: CreateInstance) -> str:
        self.validate(spec)
        await self.check_limits(spec.resources)
        cfg = spec.config
        tpl = self.template(cfg.image or "")
        cap = await self.capacity()
        folder = self.instance_dir(record["id"])
        folder.mkdir(parents=True, exist_ok=True)
        try:
            disk_format = cfg.disk_format or "qcow2"
            disk = folder / f"disk.{disk_format}"
            await self._make_disk(tpl, disk, disk_format, storage_of(spec.resources))
            seed = None
            if cfg.cloud_init is not None:
                seed = folder / "seed.iso"
                await asyncio.to_thread(write_seed_iso, seed, record, cfg.cloud_init)
            xml = domain_xml(
                DomainSpec(
                    name=record["name"],
                    uuid=record["uuid"],
                    instance_id=record["id"],
                    vcpus=int(cores_of(spec.resources) or 1),
                    max_vcpus=max(cap.cpus, int(cores_of(spec.resources) or 1)),
                    memory_kib=(memory_of(spec.resources) or min(DEFAULT_MEMORY, cap.memory)) // 1024,
                    disk_path=str(disk),
                    disk_format=disk_format,
                    domain_type=self.domain_type,
                    kernel=str(tpl.kernel) if tpl.kernel else None,
                    initrd=str(tpl.initrd) if tpl.initrd else None,
                    cmdline=tpl.cmdline,
                    network_type=cfg.network_type or "user",
                    network_source=cfg.network_source,
                    seed_iso=str(seed) if seed else None,
                    console_log=str(self.console_log(record["id"])),
                    labels=dict(spec.metadata.labels),
                )
            )
            try:
                await self._run(lambda c: c.defineXML(xml))
            except BackendError as exc:
                if "already exists" in exc.message:
                    raise NameConflict(
                        f"libvirt already has a domain named {record['name']!r} (not one of shoal's)",
                        {"name": record["name"], "backend": "kvm"},
                    ) from None
                raise
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return record["uuid"]

    async def _make_disk(self, tpl: Template, disk: Path, fmt: str, size: int | None) -> None:
        if tpl.disk is None:
            await _qemu_img("create", "-f", fmt, str(disk), str(size or DEFAULT_BLANK_DISK))
            return
        virtual = int((await _qemu_img_info(tpl.disk))["virtual-size"])
        if size is not None and size < virtual:
            raise ValidationFailed(
                f"resources.storage.totalSpace ({size}) is smaller than template {tpl.name!r} ({virtual})",
                {"field": "resources.storage.totalSpace", "minimum": virtual},
            )
        if fmt == "qcow2":
            args = ["create", "-f", "qcow2", "-F", tpl.disk_format, "-b", str(tpl.disk.resolve()), str(disk)]
            await _qemu_img(*args, *([str(size)] if size else []))
        else:
            await _qemu_img("convert", "-f", tpl.disk_format, "-O", "raw", str(tpl.disk), str(disk))
            if size and size > virtual:
                await _qemu_img("resize", "-f", "raw", str(disk), str(size))

    async def find(self, record: dict[str, Any]) -> str | None:
        """The domain uuid is the instance uuid; files may exist without a domain, delete removes both."""

        def look(c: Any) -> bool:
            try:
                self._dom(c, record["uuid"])
                return True
            except libvirt.libvirtError as exc:
                if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                    return False
                raise

        found = await self._run(look)
        return record["uuid"] if found or self.instance_dir(record["id"]).exists() else None

    async def owned(self) -> dict[str, str]:
        def scan(c: Any) -> dict[str, str]:
            out = {}
            for dom in c.listAllDomains(0):
                try:
                    owner = instance_id_of(dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, NS, 0))
                except libvirt.libvirtError:
                    continue  # not shoal's (no metadata of ours) or vanished mid-scan
                if owner:
                    out[dom.UUIDString()] = owner
            return out

        return await self._run(scan)

    async def leftover(self, name: str) -> tuple[str, str] | None:
        def look(c: Any) -> tuple[str, str] | None:
            try:
                dom = c.lookupByName(name)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                    return None
                raise
            try:
                meta = dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, NS, 0)
            except libvirt.libvirtError:
                return None
            owner = instance_id_of(meta)
            return (dom.UUIDString(), owner) if owner else None

        return await self._run(look)

    # ---- state -------------------------------------------------------------------------------

    @staticmethod
    def _observed(state: int, reason: int) -> Observed:
        return Observed(
            _STATES.get(state, "unknown"), _REASONS.get(state, {}).get(reason, _STATES.get(state, "unknown"))
        )

    async def observe(self, backend_id: str) -> Observed | None:
        def look(c: Any) -> tuple[int, int] | None:
            try:
                return tuple(self._dom(c, backend_id).state())
            except libvirt.libvirtError as exc:
                if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                    return None
                raise

        st = await self._run(look)
        return None if st is None else self._observed(*st)

    async def observe_all(self) -> dict[str, Observed]:
        def scan(c: Any) -> dict[str, tuple[int, int]]:
            out = {}
            for dom in c.listAllDomains(0):
                with contextlib.suppress(libvirt.libvirtError):  # vanished mid-scan
                    out[dom.UUIDString()] = tuple(dom.state())
            return out

        return {uuid: self._observed(*st) for uuid, st in (await self._run(scan)).items()}

    async def _state(self, backend_id: str) -> int:
        return await self._run(lambda c: self._dom(c, backend_id).state()[0])

    # ---- lifecycle ---------------------------------------------------------------------------

    async def start(self, backend_id: str) -> None:
        await self._run(lambda c: self._dom(c, backend_id).create())

    async def stop(self, backend_id: str, force: bool, timeout: int) -> None:
        """ACPI shutdown, wait up to `timeout` s for the guest to power off, then destroy."""
        state = await self._state(backend_id)
        if state == libvirt.VIR_DOMAIN_SHUTOFF:
            return
        if not force and timeout > 0:
            if state in (libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PMSUSPENDED):
                await self._run(lambda c: self._dom(c, backend_id).resume())
            await self._run(lambda c: self._dom(c, backend_id).shutdown())
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if await self._state(backend_id) == libvirt.VIR_DOMAIN_SHUTOFF:
                    return
                await asyncio.sleep(POLL)

        def destroy(c: Any) -> None:
            dom = self._dom(c, backend_id)
            if dom.isActive():
                dom.destroy()

        await self._run(destroy)

    async def restart(self, backend_id: str, force: bool, timeout: int) -> None:
        """Force: hard reset in place. Otherwise a clean power cycle (stop with timeout, start),
        which takes effect even when the guest ignores the ACPI reboot request."""
        if force and await self._state(backend_id) in (
            libvirt.VIR_DOMAIN_RUNNING,
            libvirt.VIR_DOMAIN_BLOCKED,
        ):
            await self._run(lambda c: self._dom(c, backend_id).reset(0))
            return
        await self.stop(backend_id, force, timeout)
        await self.start(backend_id)

    async def pause(self, backend_id: str) -> None:
        await self._run(lambda c: self._dom(c, backend_id).suspend())

    async def unpause(self, backend_id: str) -> None:
        await self._run(lambda c: self._dom(c, backend_id).resume())

    async def update(self, backend_id: str, resources: Resources, running: bool) -> None:
        self._check_shape(resources)
        await self.check_limits(resources)
        cores, memory, storage = cores_of(resources), memory_of(resources), storage_of(resources)

        def apply(c: Any) -> None:
            dom = self._dom(c, backend_id)
            active = bool(dom.isActive())
            # live first (it can refuse), then the persistent config; some drivers refuse both at once
            scopes = [libvirt.VIR_DOMAIN_AFFECT_LIVE] if active else []
            scopes.append(libvirt.VIR_DOMAIN_AFFECT_CONFIG)
            if cores is not None:
                n = int(cores)
                top = dom.vcpusFlags(libvirt.VIR_DOMAIN_AFFECT_CONFIG | libvirt.VIR_DOMAIN_VCPU_MAXIMUM)
                if n > top:
                    if active:
                        raise OperationNotSupported(
                            f"this VM was defined with at most {top} vCPUs; stop it to go beyond",
                            {"field": "resources.cpu.cores", "maximum": top},
                            status=409,
                        )
                    dom.setVcpusFlags(n, libvirt.VIR_DOMAIN_AFFECT_CONFIG | libvirt.VIR_DOMAIN_VCPU_MAXIMUM)
                for scope in scopes:
                    dom.setVcpusFlags(n, scope)
            if memory is not None:
                kib = memory // 1024
                top = dom.maxMemory()
                if kib > top:
                    if active:
                        raise OperationNotSupported(
                            f"this VM booted with at most {top * 1024} bytes of memory; stop it to go beyond",
                            {"field": "resources.memory.limit", "maximum": top * 1024},
                            status=409,
                        )
                    dom.setMemoryFlags(kib, libvirt.VIR_DOMAIN_AFFECT_CONFIG | libvirt.VIR_DOMAIN_MEM_MAXIMUM)
                for scope in scopes:
                    dom.setMemoryFlags(kib, scope)
            if storage is not None:
                capacity = dom.blockInfo("vda")[0]
                if storage < capacity:
                    raise OperationNotSupported(
                        "a VM disk can grow but not shrink",
                        {"field": "resources.storage.totalSpace", "current": capacity},
                    )
                if storage > capacity:
                    if not active:
                        raise OperationNotSupported(
                            "grow the disk of a running VM (libvirt resizes block devices live)",
                            {"field": "resources.storage.totalSpace"},
                            status=409,
                        )
                    dom.blockResize("vda", storage, libvirt.VIR_DOMAIN_BLOCK_RESIZE_BYTES)

        await self._run(apply)

    async def delete(self, backend_id: str, record: dict[str, Any]) -> None:
        def remove(c: Any) -> None:
            try:
                dom = self._dom(c, backend_id)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                    return
                raise
            if dom.isActive():
                dom.destroy()
            flags = libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
            try:
                dom.undefineFlags(flags)
            except libvirt.libvirtError:
                dom.undefine()

        await self._run(remove)
        await asyncio.to_thread(shutil.rmtree, self.instance_dir(record["id"]), True)

    # ---- snapshots ---------------------------------------------------------------------------

    def snapshot_dir(self, instance_id: str) -> Path:
        return self.instance_dir(instance_id) / "snapshots"

    async def snapshot(self, backend_id: str, record: dict[str, Any], name: str) -> dict[str, Any]:
        """A libvirt snapshot: internal to the qcow2 disk, with memory when the VM runs (so a
        restore resumes it where it was). A raw disk cannot hold one: then, with the VM stopped,
        a full qemu-img copy of the disk ("external"); a running raw-disk VM is refused (409)."""

        def make(c: Any) -> dict[str, Any]:
            dom = self._dom(c, backend_id)
            active = bool(dom.isActive())
            xml = f"<domainsnapshot><name>{name}</name><description>shoal</description></domainsnapshot>"
            try:
                dom.snapshotCreateXML(xml, 0)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() == libvirt.VIR_ERR_OPERATION_INVALID and "exists" in str(exc):
                    raise
                return {"fallback": True, "active": active, "reason": exc.get_error_message() or str(exc)}
            return {"kind": "internal", "stateful": active}

        out = await self._run(make, timeout=QEMU_IMG_TIMEOUT)
        if not out.get("fallback"):
            return out
        if out["active"]:
            raise OperationNotSupported(
                f"libvirt cannot snapshot this running VM ({out['reason']}); stop it and snapshot "
                "its disk instead",
                {"backend": "kvm", "reason": out["reason"]},
                status=409,
            )
        disk = self._disk_path(record)
        if disk is None or not disk.exists():
            raise OperationNotSupported(
                f"libvirt cannot snapshot this VM: {out['reason']}",
                {"backend": "kvm", "reason": out["reason"]},
            )
        folder = self.snapshot_dir(record["id"])
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"{name}.qcow2"
        fmt = (await _qemu_img_info(disk)).get("format", "raw")
        try:
            await _qemu_img("convert", "-f", fmt, "-O", "qcow2", str(disk), str(target))
        except BaseException:
            target.unlink(missing_ok=True)
            raise
        return {"kind": "external", "stateful": False, "size": target.stat().st_size, "format": fmt}

    def _disk_path(self, record: dict[str, Any]) -> Path | None:
        folder = self.instance_dir(record["id"])
        return next((p for p in (folder / "disk.qcow2", folder / "disk.raw") if p.exists()), None)

    async def restore(self, backend_id: str, record: dict[str, Any], snap: dict[str, Any], spec: Any) -> str:
        """Revert to the snapshot. A stateful one resumes the VM as it was then; a disk-only one
        keeps the VM's power state (a running VM is powered off, reverted and started again)."""
        if snap.get("kind") == "external":
            source = self.snapshot_dir(record["id"]) / f"{snap['name']}.qcow2"
            disk = self._disk_path(record)
            if not source.exists() or disk is None:
                raise InstanceNotFound(
                    f"the disk copy of snapshot {snap['name']!r} is gone", {"snapshot": snap["name"]}
                )
            running = await self._state(backend_id) not in (libvirt.VIR_DOMAIN_SHUTOFF,)
            if running:
                await self.stop(backend_id, True, 0)
            fmt = snap.get("format") or ("qcow2" if disk.suffix == ".qcow2" else "raw")
            partial_disk = disk.with_name(disk.name + ".restoring")
            try:
                await _qemu_img("convert", "-f", "qcow2", "-O", fmt, str(source), str(partial_disk))
                os.replace(partial_disk, disk)
            finally:
                partial_disk.unlink(missing_ok=True)
            if running:
                await self.start(backend_id)
            return backend_id

        def revert(c: Any) -> None:
            dom = self._dom(c, backend_id)
            snapshot = dom.snapshotLookupByName(snap["name"], 0)
            flags = 0
            keep_running = bool(dom.isActive()) and not snap.get("stateful")
            if keep_running:
                flags |= libvirt.VIR_DOMAIN_SNAPSHOT_REVERT_RUNNING
            try:
                dom.revertToSnapshot(snapshot, flags)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() != libvirt.VIR_ERR_SNAPSHOT_REVERT_RISKY:
                    raise
                dom.revertToSnapshot(snapshot, flags | libvirt.VIR_DOMAIN_SNAPSHOT_REVERT_FORCE)
            if keep_running and not dom.isActive():  # not every driver honours REVERT_RUNNING
                dom.create()

        await self._run(revert, timeout=QEMU_IMG_TIMEOUT)
        return backend_id

    async def delete_snapshot(self, record: dict[str, Any], snap: dict[str, Any]) -> None:
        if snap.get("kind") == "external":
            (self.snapshot_dir(record["id"]) / f"{snap['name']}.qcow2").unlink(missing_ok=True)
            return

        def remove(c: Any) -> None:
            dom = self._dom(c, record["backendId"])
            try:
                snapshot = dom.snapshotLookupByName(snap["name"], 0)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN_SNAPSHOT:
                    return
                raise
            snapshot.delete(0)

        await self._run(remove, timeout=QEMU_IMG_TIMEOUT)

    # ---- logs --------------------------------------------------------------------------------

    async def logs(self, backend_id: str, record: dict[str, Any], tail: int | None, follow: bool) -> Any:
        """The VM's serial console log (DATA_DIR/kvm/vms/<id>/console.log); follow polls it."""
        path = self.console_log(record["id"])

        async def stream() -> Any:
            data = await asyncio.to_thread(_read, path)
            if tail is not None:
                data = b"".join(data.splitlines(keepends=True)[-tail:]) if tail else b""
            if data:
                yield data
            offset = await asyncio.to_thread(_size, path)
            while follow:
                await asyncio.sleep(POLL)
                size = await asyncio.to_thread(_size, path)
                if size < offset:  # truncated (a fresh boot with append off): start over
                    offset = 0
                if size > offset:
                    chunk = await asyncio.to_thread(_read, path, offset)
                    offset += len(chunk)
                    yield chunk

        return stream()

    # ---- metrics -----------------------------------------------------------------------------

    async def metrics(self) -> dict[str, Any]:
        """State, CPU seconds (cpuTime) and memory (the QEMU process's resident set when libvirt
        has it, else the memory the guest was given) of every domain, in one scan."""

        def scan(c: Any) -> dict[str, Any]:
            out = {}
            for dom in c.listAllDomains(0):
                with contextlib.suppress(libvirt.libvirtError):  # vanished mid-scan
                    state, reason = dom.state()
                    seen = self._observed(state, reason)
                    if not dom.isActive():
                        out[dom.UUIDString()] = Seen(seen.state, None, None)
                        continue
                    info = dom.info()  # state, maxMem KiB, mem KiB, vcpus, cpuTime ns
                    memory = int(info[2]) * 1024
                    with contextlib.suppress(libvirt.libvirtError):
                        rss = dom.memoryStats().get("rss")
                        if rss:
                            memory = int(rss) * 1024
                    out[dom.UUIDString()] = Seen(seen.state, int(info[4]) / 1e9, memory)
            return out

        return await self._run(scan)

    # ---- usage -------------------------------------------------------------------------------

    async def _sample(self, backend_id: str) -> dict[str, Any]:
        def sample(c: Any) -> dict[str, Any]:
            dom = self._dom(c, backend_id)
            info = dom.info()  # state, maxMem KiB, mem KiB, vcpus, cpuTime ns
            stats: dict[str, Any] = {}
            if info[0] in (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_BLOCKED, libvirt.VIR_DOMAIN_PAUSED):
                groups = (
                    libvirt.VIR_DOMAIN_STATS_CPU_TOTAL
                    | libvirt.VIR_DOMAIN_STATS_BALLOON
                    | libvirt.VIR_DOMAIN_STATS_INTERFACE
                    | libvirt.VIR_DOMAIN_STATS_BLOCK
                )
                with contextlib.suppress(libvirt.libvirtError):
                    rows = c.domainListGetStats([dom], groups)
                    stats = dict(rows[0][1]) if rows else {}
            capacity = allocation = 0
            with contextlib.suppress(libvirt.libvirtError):
                capacity, allocation, _ = dom.blockInfo("vda")
            return {
                "info": info,
                "stats": stats,
                "capacity": capacity,
                "allocation": allocation,
                "t": time.monotonic(),
            }

        return await self._run(sample)

    async def usage(self, backend_id: str, record: dict[str, Any], interval: float = 0.5) -> Usage:
        first = await self._sample(backend_id)
        running = first["info"][0] in (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_BLOCKED)
        second = first
        if running:
            await asyncio.sleep(interval)
            second = await self._sample(backend_id)
        return usage_from_samples(first, second)


def _read(path: Path, offset: int = 0) -> bytes:
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            return fh.read(8 << 20)
    except FileNotFoundError:
        return b""


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def usage_from_samples(first: dict[str, Any], second: dict[str, Any]) -> Usage:
    """CPU % of one core (as Docker reports it) from two samples; the rest from the second."""
    st, info = second["stats"], second["info"]
    vcpus = int(info[3]) or 1
    cpu = 0.0
    wall = (second["t"] - first["t"]) * 1e9
    if wall > 0:
        t0 = first["stats"].get("cpu.time", first["info"][4])
        t1 = st.get("cpu.time", info[4])
        cpu = max(0.0, min(100.0 * vcpus, (t1 - t0) / wall * 100.0))
    limit = int(st.get("balloon.current", info[2])) * 1024
    if "balloon.available" in st and "balloon.unused" in st:
        used = (int(st["balloon.available"]) - int(st["balloon.unused"])) * 1024
    else:
        used = int(st.get("balloon.rss", 0)) * 1024
    used = max(0, min(used, limit)) if limit else used
    rx = sum(int(v) for k, v in st.items() if k.startswith("net.") and k.endswith(".rx.bytes"))
    tx = sum(int(v) for k, v in st.items() if k.startswith("net.") and k.endswith(".tx.bytes"))
    rd = sum(int(v) for k, v in st.items() if k.startswith("block.") and k.endswith(".rd.bytes"))
    wr = sum(int(v) for k, v in st.items() if k.startswith("block.") and k.endswith(".wr.bytes"))
    if second["info"][0] not in (1, 2, 3):
        used = 0
    return Usage(
        cpu=CpuUsage(usage=round(cpu, 2), cores=float(vcpus)),
        memory=MemoryUsage(
            used=used, limit=limit, percentage=round(used / limit * 100.0, 2) if limit else 0.0
        ),
        storage=StorageUsage(used=int(second["allocation"]), total=int(second["capacity"])),
        network=NetworkUsage(rx_bytes=rx, tx_bytes=tx),
        block_io=BlockUsage(read_bytes=rd, write_bytes=wr),
    )


QEMU_IMG_TIMEOUT = 600.0  # a raw copy of a large template takes a while; a hung one is killed


async def _exited(proc: subprocess.Popen) -> int:
    """Wait for `proc` to end without holding a thread: its pidfd becomes readable at exit."""
    loop = asyncio.get_running_loop()
    fd = os.pidfd_open(proc.pid)
    try:
        done = loop.create_future()
        loop.add_reader(fd, lambda: done.done() or done.set_result(None))
        try:
            await done
        finally:
            loop.remove_reader(fd)
    finally:
        os.close(fd)
    return proc.wait()  # reaps at once: it has exited


async def _qemu_img(*args: str, timeout: float = QEMU_IMG_TIMEOUT) -> str:
    """Run qemu-img from the event loop's thread; it dies with the service, and is killed
    (its whole process group) on timeout or when the request is cancelled.

    Spawned by the stdlib's Popen (vfork + exec), not asyncio.create_subprocess_exec: under
    uvloop a child is made with fork(), which runs the pthread_atfork handlers of every library
    loaded; with gRPC loaded (the etcd registry) the child then dies now and then with SIGSEGV
    before it can exec (2-3 in 400 spawns here, with or without a preexec_fn; a preexec_fn
    such as lifetime.child_options() also makes the stdlib fork instead of vfork). So the
    parent-death signal comes from setpriv (lifetime.pdeathsig_argv) and the process group from
    start_new_session; the exit is awaited on a pidfd, so no thread is held either.
    """
    if shutil.which("qemu-img") is None:
        raise BackendUnavailable("kvm", "qemu-img is not installed (Debian package qemu-utils)")
    argv = [*lifetime.pdeathsig_argv(signal.SIGKILL), "qemu-img", *args]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        # vfork + exec: returns as soon as the child has exec'd, the loop is not held
        proc = subprocess.Popen(  # noqa: ASYNC220
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, start_new_session=True
        )
        try:
            async with asyncio.timeout(timeout):
                code = await _exited(proc)
        except TimeoutError:
            raise BackendError(
                f"qemu-img {args[0]} did not finish within {timeout:g} s (killed)",
                {"backend": "kvm", "timeout": timeout},
                status=504,
            ) from None
        finally:
            if proc.returncode is None:  # timed out or cancelled: take its group down with it
                lifetime.kill_group(proc.pid, signal.SIGKILL)
                proc.wait()  # SIGKILL is not refused: this returns at once
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if code != 0:
        reason = stderr.decode(errors="replace").strip() or f"exit status {code}"
        raise BackendError(f"qemu-img {args[0]} failed: {reason}", {"backend": "kvm"})
    return stdout.decode()


async def _qemu_img_info(path: Path) -> dict[str, Any]:
    return json.loads(await _qemu_img("info", "--output=json", str(path)))


def write_seed_iso(path: Path, record: dict[str, Any], cloud_init: Any) -> None:
    """A NoCloud seed (ISO 9660 labelled 'cidata' with user-data and meta-data), via pycdlib."""
    try:
        import pycdlib
    except ImportError:
        raise OperationNotSupported(
            "cloud-init needs pycdlib (pip install 'shoal[kvm]')", {"field": "config.cloudInit"}
        ) from None
    meta = cloud_init.meta_data or f"instance-id: {record['id']}\nlocal-hostname: {record['name']}\n"
    files = {"user-data": cloud_init.user_data or "#cloud-config\n{}\n", "meta-data": meta}
    if cloud_init.network_config:
        files["network-config"] = cloud_init.network_config
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, joliet=3, rock_ridge="1.09", vol_ident="cidata")
    for name, text in files.items():
        data = text.encode()
        short = "/" + name.replace("-", "").upper()[:8] + ".;1"
        iso.add_fp(io.BytesIO(data), len(data), short, rr_name=name, joliet_path="/" + name)
    iso.write(str(path))
    iso.close()


def _camel(snake: str) -> str:
    head, *rest = snake.split("_")
    return head + "".join(p.title() for p in rest)
