"""Request and response shapes of the Compute API (camelCase on the wire, as documented).

msgspec validates requests strictly (a string is never a number) and generates the JSON
Schema served in /openapi.json.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from msgspec import Meta, Struct

BACKENDS = ("docker", "kvm")
STATES = ("created", "running", "paused", "stopping", "stopped", "restarting", "error", "unknown")
INSTANCE_TYPES = {"docker": "container", "kvm": "vm"}

Name = Annotated[
    str,
    Meta(
        pattern=r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$",
        description="1-63 characters: letters, digits, '_', '.', '-'; unique across backends",
    ),
]
Bytes = Annotated[int, Meta(ge=0, le=1 << 62)]
Cores = Annotated[float, Meta(gt=0, le=4096)]
Text = Annotated[str, Meta(max_length=4096)]
Short = Annotated[str, Meta(min_length=1, max_length=255)]


class Camel(Struct, rename="camel", omit_defaults=True, forbid_unknown_fields=True):
    """Base: camelCase on the wire, unknown fields refused (a typo is an error, not a no-op)."""


class CpuSpec(Camel):
    cores: Cores | None = None


class MemorySpec(Camel):
    limit: Annotated[int, Meta(ge=1, le=1 << 50)] | None = None


class StorageSpec(Camel):
    total_space: Annotated[int, Meta(ge=1, le=1 << 50)] | None = None


class Resources(Camel):
    cpu: CpuSpec | None = None
    memory: MemorySpec | None = None
    storage: StorageSpec | None = None


class CloudInit(Camel):
    user_data: Annotated[str, Meta(max_length=65536)] | None = None
    meta_data: Annotated[str, Meta(max_length=65536)] | None = None
    network_config: Annotated[str, Meta(max_length=65536)] | None = None


class InstanceConfig(Camel):
    """Union of the Docker and KVM configuration keys; each backend refuses the other's keys."""

    image: Short | None = None
    # docker
    command: Annotated[list[Text], Meta(max_length=256)] | None = None
    env: Annotated[list[Text], Meta(max_length=1024)] | None = None
    volumes: Annotated[list[Text], Meta(max_length=256)] | None = None
    ports: Annotated[list[Short], Meta(max_length=256)] | None = None
    network_mode: Short | None = None
    restart_policy: Short | None = None
    # docker, host access: refused (403) unless the node allows it (compute/access.py)
    privileged: bool | None = None
    devices: Annotated[list[Text], Meta(max_length=64)] | None = None
    cap_add: Annotated[list[Short], Meta(max_length=64)] | None = None
    # kvm
    disk_format: Short | None = None
    network_type: Short | None = None
    network_source: Short | None = None
    cloud_init: CloudInit | None = None


class Metadata(Camel):
    labels: Annotated[
        dict[Annotated[str, Meta(min_length=1, max_length=253)], Text], Meta(max_length=256)
    ] = {}


class CreateInstance(Camel):
    name: Name
    backend: Annotated[str, Meta(description="'docker' or 'kvm'", max_length=64)]
    config: InstanceConfig
    resources: Resources = msgspec.field(default_factory=Resources)
    metadata: Metadata = msgspec.field(default_factory=Metadata)
    start: bool = True


class UpdateInstance(Camel):
    resources: Resources | None = None
    metadata: Metadata | None = None


class StopRequest(Camel):
    force: bool = False
    timeout: Annotated[int, Meta(ge=0, le=3600)] = 30


STOP_BODY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "force": {"type": "boolean", "default": False},
        "timeout": {"type": "integer", "minimum": 0, "maximum": 3600, "default": 30},
    },
}


class ListQuery(Camel):
    backend: Annotated[str, Meta(max_length=64)] | None = None
    state: Annotated[str, Meta(max_length=64)] | None = None
    page: Annotated[int, Meta(ge=1, le=1_000_000)] = 1
    page_size: Annotated[int, Meta(ge=1, le=1000)] = 50


class DeleteQuery(Camel):
    force: bool = False
    async_: bool = msgspec.field(default=False, name="async")


class LogsQuery(Camel):
    follow: bool = False
    tail: Annotated[int, Meta(ge=0, le=1_000_000)] | None = None


class ExecRequest(Camel):
    command: Annotated[list[Text], Meta(min_length=1, max_length=256)]
    timeout: Annotated[float, Meta(gt=0, le=3600)] = 60


SnapshotName = Annotated[
    str,
    Meta(
        pattern=r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$",
        description="1-63 characters: letters, digits, '_', '.', '-'; unique per instance",
    ),
]


class CreateSnapshot(Camel):
    name: SnapshotName


class AsyncQuery(Camel):
    async_: bool = msgspec.field(default=False, name="async")


class WaitQuery(Camel):
    timeout: Annotated[float, Meta(ge=0, le=600)] = 0


class EventsQuery(Camel):
    type: Annotated[str, Meta(max_length=64)] | None = None  # lifecycle, operation (comma-separated)


# ---- responses -------------------------------------------------------------------------------


class Out(Struct, rename="camel", omit_defaults=True):
    pass


Number = int | float


def whole(value: float | int | None) -> Number | None:
    """A float with no fraction as an int: `cores: 2`, not `2.0` (JSON clients compare them)."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**63:
        return int(value)
    return value


class ExecResult(Out):
    exit_code: int | None
    stdout: str
    stderr: str


class CpuOut(Out):
    cores: Number | None = None


class MemoryOut(Out):
    limit: int | None = None
    used: int | None = None


class StorageOut(Out):
    total_space: int | None = None


class ResourcesOut(Out):
    cpu: CpuOut = msgspec.field(default_factory=CpuOut)
    memory: MemoryOut = msgspec.field(default_factory=MemoryOut)
    storage: StorageOut = msgspec.field(default_factory=StorageOut)


class MetadataOut(Out):
    labels: dict[str, str] = {}


class NodeOut(Out):
    """The compute node that owns an instance: the only one that can act on it (an addition to the spec)."""

    id: str
    hostname: str | None = None
    url: str | None = None
    endpoint: str | None = None  # the daemon it runs on, as that node addresses it


class Instance(Out):
    id: str
    name: str
    uuid: str
    type: str
    backend: str
    state: str
    status: str
    config: dict[str, Any]
    resources: ResourcesOut
    metadata: MetadataOut
    created_at: str
    updated_at: str
    backend_id: str | None = None
    node: NodeOut | None = None


class InstanceList(Out):
    instances: list[Instance]
    total: int
    page: int
    page_size: int
    # backend -> why it did not answer; its instances are listed with state `unknown`
    # (left out of the body when every backend answered, so the documented shape is unchanged)
    unavailable_backends: dict[str, str] = {}


class Snapshot(Out):
    """A point an instance can be restored to (see docs/compute.md, Snapshots, for what it holds)."""

    name: str
    created_at: str
    kind: str  # image (docker commit), internal (libvirt, in the qcow2), external (a qemu-img copy)
    stateful: bool  # memory and processes too (a running VM's libvirt snapshot); else the disk only
    instance_state: str  # the instance's state when it was taken
    size: int | None = None  # bytes, when the backend says


class SnapshotList(Out):
    snapshots: list[Snapshot]


class CpuUsage(Out):
    usage: float
    cores: Number


class MemoryUsage(Out):
    used: int
    limit: int
    percentage: float


class StorageUsage(Out):
    used: int
    total: int


class NetworkUsage(Out):
    rx_bytes: int
    tx_bytes: int


class BlockUsage(Out):
    read_bytes: int
    write_bytes: int


class Usage(Out):
    cpu: CpuUsage
    memory: MemoryUsage
    storage: StorageUsage
    network: NetworkUsage
    block_io: BlockUsage = msgspec.field(name="blockIO")


class UsedTotal(Out):
    used: Number
    total: Number


class BackendResources(Out):
    cpu: UsedTotal
    memory: UsedTotal


class BackendStatus(Out):
    status: str
    instances: int
    resources: BackendResources | None = None
    reason: str | None = None


class ClusterStatus(Out):
    backends: dict[str, BackendStatus]
    total_instances: int
    health: str


class HealthCheck(Out):
    status: str
    last_check: str


class BackendInfo(Out):
    type: str
    version: str
    api_version: str
    status: str
    capabilities: list[str]
    supported_types: list[str]
    health_check: HealthCheck
