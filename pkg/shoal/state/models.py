"""The State Service's documents, request bodies and answers, as msgspec Structs.

The same types validate requests (strict JSON types, bounds, enums, unknown fields refused),
shape the stored JSON documents (stored exactly as GET returns them) and generate the OpenAPI
schemas. Checks a schema cannot express (CIDR notation, IPs by record type, Ethereum
checksums) live in shoal.state.validate.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import UNSET, Meta, UnsetType

from shoal.web import patterns as P


def _shape(pattern: str, description: str) -> Meta:
    """A pattern the schema declares and shoal.state.validate checks (with its own error codes)."""
    return Meta(extra_json_schema={"pattern": pattern, "description": description})


# NUL and bidirectional controls are refused in names (they would mislead whoever reads them)
Name = Annotated[str, Meta(min_length=1, max_length=256, pattern=P.SAFE_TEXT)]
Ref = Annotated[str, Meta(min_length=1, max_length=128, pattern=P.SAFE_TEXT)]
PEER_KEY = rf"^(?:0[xX](?:[0-9a-fA-F]{{40}}|[0-9a-fA-F]{{66}}|[0-9a-fA-F]{{130}})|{P.BASE64_32[1:-1]})$"
Key = Annotated[
    str,
    Meta(min_length=1, max_length=256),
    _shape(PEER_KEY, "an Ethereum address, a 0x-hex secp256k1 key or a base64 Ed25519 key"),
]
NodeKey = Annotated[
    str,
    Meta(min_length=1, max_length=256),
    _shape(P.BASE64_32, "an Ed25519 key: 32 bytes in base64 (44 characters)"),
]
Domain = Annotated[
    str, Meta(min_length=1, max_length=253), _shape(P.DOMAIN, "a DNS name; '*.' for a wildcard")
]
DnsValue = Annotated[str, Meta(min_length=1, max_length=2048)]
Email = Annotated[str, Meta(min_length=3, max_length=254), _shape(P.EMAIL, "an email address")]
Address = Annotated[
    str,
    Meta(
        min_length=42,
        max_length=42,
        pattern=P.ETH_ADDRESS,
        description="0x and 40 hex digits; mixed case must carry the EIP-55 checksum",
    ),
]
CidrText = Annotated[
    str,
    Meta(min_length=1, max_length=64),
    _shape(P.CIDR, "a network in CIDR notation with its host bits clear, e.g. 10.0.0.0/24"),
]
Endpoint = Annotated[
    str, Meta(min_length=3, max_length=300), _shape(P.ENDPOINT, "host:port (IPv6 in brackets)")
]
Ttl = Annotated[int, Meta(ge=0, le=2_147_483_647)]
Vcpus = Annotated[int, Meta(ge=1, le=65_536)]
Size = Annotated[int, Meta(ge=0, le=1 << 40)]
Timestamp = int

PeerType = Literal["user", "service", "node"]
Role = Literal["user", "admin"]
RecordType = Literal["A", "AAAA", "CNAME", "MX", "TXT", "NS", "SRV", "CAA", "PTR"]
InstanceState = Literal["pending", "starting", "running", "stopping", "stopped", "failed"]
NodeState = Literal["online", "offline", "maintenance"]

_BODY = {"forbid_unknown_fields": True}


# -- documents (what GET returns, and what is stored) -------------------------------------------
class Peer(msgspec.Struct):
    id: str
    name: str
    public_key: str
    peer_type: PeerType
    created_at: Timestamp
    updated_at: Timestamp


class Cidr(msgspec.Struct):
    id: str
    cidr: str
    name: str
    owner: str
    created_at: Timestamp
    updated_at: Timestamp


class Association(msgspec.Struct):
    id: str
    name: str
    source_cidr: str
    target_cidr: str
    allow_bidirectional: bool
    created_at: Timestamp
    updated_at: Timestamp


class DnsRecord(msgspec.Struct):
    id: str
    domain: str
    record_type: RecordType
    value: str
    ttl: int
    created_at: Timestamp
    updated_at: Timestamp
    owner: str | None = None


class Instance(msgspec.Struct):
    id: str
    build_id: str
    name: str
    owner: str
    vcpu_count: int
    mem_size_mib: int
    disk_size_gb: int
    state: InstanceState
    created_at: Timestamp
    updated_at: Timestamp


class Node(msgspec.Struct):
    id: str
    name: str
    public_key: str
    endpoint: str
    total_vcpus: int
    total_memory_mib: int
    total_disk_gb: int
    available_vcpus: int
    available_memory_mib: int
    available_disk_gb: int
    operator_id: str
    state: NodeState
    created_at: Timestamp
    updated_at: Timestamp
    trusted: bool = False  # registered or approved by an admin (only an admin sets it)


class Account(msgspec.Struct):
    id: str
    name: str
    ethereum_address: str
    role: Role
    created_at: Timestamp
    updated_at: Timestamp
    email: str | None = None


# -- create bodies ------------------------------------------------------------------------------
class PeerCreate(msgspec.Struct, **_BODY):
    name: Name
    public_key: Key
    peer_type: PeerType = "user"


class CidrCreate(msgspec.Struct, **_BODY):
    cidr: CidrText
    name: Name
    owner: Ref


class AssociationCreate(msgspec.Struct, **_BODY):
    name: Name
    source_cidr: Ref
    target_cidr: Ref
    allow_bidirectional: bool = False


class DnsCreate(msgspec.Struct, **_BODY):
    domain: Domain
    record_type: RecordType
    value: DnsValue
    ttl: Ttl = 300
    owner: Ref | None = None


class InstanceCreate(msgspec.Struct, **_BODY):
    build_id: Ref
    name: Name
    owner: Ref
    vcpu_count: Vcpus
    mem_size_mib: Annotated[int, Meta(ge=1, le=1 << 40)]
    disk_size_gb: Size
    state: InstanceState = "running"  # the spec's example: a new instance reads back as running


class NodeCreate(msgspec.Struct, **_BODY):
    name: Name
    public_key: NodeKey
    endpoint: Endpoint
    total_vcpus: Size
    total_memory_mib: Size
    total_disk_gb: Size
    operator_id: Ref
    available_vcpus: Size | None = None
    available_memory_mib: Size | None = None
    available_disk_gb: Size | None = None
    state: NodeState = "online"
    trusted: bool | None = None  # default: true when an admin registers it, else false


class AccountCreate(msgspec.Struct, **_BODY):
    name: Name
    ethereum_address: Address
    email: Email | None = None
    role: Role = "user"


# -- update bodies (partial: absent fields keep their value) ---------------------------------------
class PeerUpdate(msgspec.Struct, **_BODY):
    id: Ref
    name: Name | UnsetType = UNSET
    public_key: Key | UnsetType = UNSET
    peer_type: PeerType | UnsetType = UNSET


class CidrUpdate(msgspec.Struct, **_BODY):
    id: Ref
    cidr: CidrText | UnsetType = UNSET
    name: Name | UnsetType = UNSET
    owner: Ref | UnsetType = UNSET


class AssociationUpdate(msgspec.Struct, **_BODY):
    id: Ref
    name: Name | UnsetType = UNSET
    source_cidr: Ref | UnsetType = UNSET
    target_cidr: Ref | UnsetType = UNSET
    allow_bidirectional: bool | UnsetType = UNSET


class DnsUpdate(msgspec.Struct, **_BODY):
    domain: Domain
    record_type: RecordType | UnsetType = UNSET
    value: DnsValue | UnsetType = UNSET
    ttl: Ttl | UnsetType = UNSET
    owner: Ref | UnsetType | None = UNSET


class InstanceUpdate(msgspec.Struct, **_BODY):
    id: Ref
    build_id: Ref | UnsetType = UNSET
    name: Name | UnsetType = UNSET
    owner: Ref | UnsetType = UNSET
    vcpu_count: Vcpus | UnsetType = UNSET
    mem_size_mib: Annotated[int, Meta(ge=1, le=1 << 40)] | UnsetType = UNSET
    disk_size_gb: Size | UnsetType = UNSET
    state: InstanceState | UnsetType = UNSET


class NodeUpdate(msgspec.Struct, **_BODY):
    id: Ref
    name: Name | UnsetType = UNSET
    public_key: NodeKey | UnsetType = UNSET
    endpoint: Endpoint | UnsetType = UNSET
    total_vcpus: Size | UnsetType = UNSET
    total_memory_mib: Size | UnsetType = UNSET
    total_disk_gb: Size | UnsetType = UNSET
    available_vcpus: Size | UnsetType = UNSET
    available_memory_mib: Size | UnsetType = UNSET
    available_disk_gb: Size | UnsetType = UNSET
    operator_id: Ref | UnsetType = UNSET
    state: NodeState | UnsetType = UNSET
    trusted: bool | UnsetType = UNSET


class AccountUpdate(msgspec.Struct, **_BODY):
    id: Ref
    name: Name | UnsetType = UNSET
    email: Email | UnsetType | None = UNSET
    role: Role | UnsetType = UNSET


def set_fields(body: msgspec.Struct) -> dict:
    """The fields a partial update actually carries."""
    return {k: v for k, v in msgspec.structs.asdict(body).items() if v is not UNSET}


# -- auth ---------------------------------------------------------------------------------------
class ChallengeRequest(msgspec.Struct, **_BODY):
    address: Address


class Challenge(msgspec.Struct):
    success: bool
    address: str
    nonce: str
    message: str
    issued_at: int
    expires_at: int


class LoginRequest(msgspec.Struct, **_BODY):
    address: Address
    signature: Annotated[str, Meta(min_length=1, max_length=200)]
    nonce: Annotated[str, Meta(min_length=1, max_length=128)] | None = None


class Login(msgspec.Struct):
    success: bool
    token: str
    token_type: str
    address: str
    role: Role
    expires_at: int


class Logout(msgspec.Struct):
    success: bool


class CatchingUp(msgspec.Struct):
    status: Literal["catching_up"]
    progress: dict


class Status(msgspec.Struct):
    status: str
    auth: Literal["enabled", "disabled"]
    store: str
    node_public_key: str
    warning: str | None = None
    cluster_id: str = "shoal"
    audience: str = ""  # what a signed request for this node names ('<cluster id>:<node key>')
    public_url: str = ""


class WhoAmI(msgspec.Struct):
    kind: Literal["user", "node", "key", "dev"]  # key: a platform API key (--auth-dir)
    address: str | None
    node_id: str | None
    role: Role
    account_id: str | None
    peer_id: str | None
