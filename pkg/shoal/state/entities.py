"""The seven entity kinds: how each is named, keyed, validated, indexed and owned.

Everything kind-specific lives in one EntitySpec, so the store, the routes and the client
are generic over kinds (and a new kind is one entry here).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from shoal.state import models as m
from shoal.state import validate as v
from shoal.state.auth.eth import canonical_address
from shoal.state.errors import StateError, bad_request


@dataclass(frozen=True)
class EntitySpec:
    kind: str  # singular, used in kv keys: /state/<kind>/<id>
    prefix: str  # generated ids look like <prefix>-<digits>
    path: str  # HTTP collection path
    plural: str  # the list answer's array field
    id_field: str  # create/update/delete answers' id field (peer_id, ...)
    entity: type[msgspec.Struct]
    create: type[msgspec.Struct]
    update: type[msgspec.Struct]
    check: Callable[[dict], dict]  # validate and normalize a whole document (400 on bad input)
    unique: dict[str, Callable[[str], str]] = field(default_factory=dict)  # field -> index normalizer
    refs: dict[str, str] = field(default_factory=dict)  # field -> kind it must point at (counted)
    owner_field: str | None = None  # who may write it (besides admins)
    key_field: str = "id"  # how update bodies and GET name it (dns: domain)
    label: str = ""  # for messages
    addresses: tuple[str, ...] = ()  # fields stored in EIP-55 form when they hold an address

    def normalize(self, field: str, value: Any) -> Any:
        """A value as it is stored (and so as a filter must name it): addresses in EIP-55 form,
        unique fields by their index normalizer."""
        if not isinstance(value, str):
            return value
        if field in self.addresses:
            value = canonical_address(value)
        return value

    def lookup_form(self, field: str, value: str) -> str:
        """A filter value in the form documents store it (domains and CIDRs canonical); a value
        that is not a valid one is kept as given (and matches nothing)."""
        form = _LOOKUP_FORMS.get((self.kind, field))
        if form is None:
            return value
        try:
            return form(value)
        except StateError:
            return value

    @property
    def name(self) -> str:
        return self.label or self.kind


_last_tick = 0


def new_id(prefix: str) -> str:
    """'<prefix>-<16-digit tick><3 random digits>': sorted by creation time within a process
    (the tick is microseconds, bumped to stay increasing), unique across processes by the random
    digits and, should those collide, by the store's create-if-absent check."""
    global _last_tick
    _last_tick = max(time.time_ns() // 1000, _last_tick + 1)
    return f"{prefix}-{_last_tick}{secrets.randbelow(1000):03d}"


def _addresses(doc: dict, *fields: str) -> dict:
    for f in fields:
        if isinstance(doc.get(f), str):
            doc[f] = canonical_address(doc[f])
    return doc


def _peer(doc: dict) -> dict:
    doc["public_key"] = canonical_address(v.peer_public_key(doc["public_key"]))
    return doc


def _cidr(doc: dict) -> dict:
    doc["cidr"] = v.cidr(doc["cidr"])
    return _addresses(doc, "owner")


def _association(doc: dict) -> dict:
    if doc["source_cidr"] == doc["target_cidr"]:
        raise bad_request("source_cidr and target_cidr must differ", "INVALID_ASSOCIATION")
    return doc


def _dns(doc: dict) -> dict:
    doc["domain"] = v.domain(doc["domain"])
    doc["value"] = v.dns_value(doc["record_type"], doc["value"])
    return _addresses(doc, "owner")


def _instance(doc: dict) -> dict:
    return _addresses(doc, "owner")


def _node(doc: dict) -> dict:
    doc["trusted"] = bool(doc.get("trusted"))
    doc["public_key"] = v.node_public_key(doc["public_key"])
    doc["endpoint"] = v.endpoint(doc["endpoint"])
    for what in ("vcpus", "memory_mib", "disk_gb"):
        if doc.get(f"available_{what}") is None:
            doc[f"available_{what}"] = doc[f"total_{what}"]
        if doc[f"available_{what}"] > doc[f"total_{what}"]:
            raise bad_request(f"available_{what} exceeds total_{what}", "INVALID_CAPACITY")
    return _addresses(doc, "operator_id")


def _account(doc: dict) -> dict:
    doc["ethereum_address"] = canonical_address(v.eth_address(doc["ethereum_address"]))
    if doc.get("email") is not None:
        doc["email"] = v.email(doc["email"])
    return doc


def _lower_hex(key: str) -> str:
    return key.lower() if key.startswith(("0x", "0X")) else key


def _same(value: str) -> str:
    return value


_LOOKUP_FORMS: dict[tuple[str, str], Callable[[str], str]] = {
    ("dns", "domain"): v.domain,
    ("cidr", "cidr"): v.cidr,
    ("account", "email"): v.email,
}

SPECS: dict[str, EntitySpec] = {
    s.kind: s
    for s in (
        EntitySpec(
            "peer", "peer", "/peers", "peers", "peer_id", m.Peer, m.PeerCreate, m.PeerUpdate, _peer,
            unique={"public_key": _lower_hex}, addresses=("public_key",),
        ),
        EntitySpec(
            "cidr", "cidr", "/cidrs", "cidrs", "cidr_id", m.Cidr, m.CidrCreate, m.CidrUpdate, _cidr,
            unique={"cidr": _same}, owner_field="owner", label="CIDR", addresses=("owner",),
        ),
        EntitySpec(
            "association", "assoc", "/associations", "associations", "association_id",
            m.Association, m.AssociationCreate, m.AssociationUpdate, _association,
            refs={"source_cidr": "cidr", "target_cidr": "cidr"},
        ),
        EntitySpec(
            "dns", "dns", "/dns", "dns_records", "dns_id", m.DnsRecord, m.DnsCreate, m.DnsUpdate, _dns,
            unique={"domain": _same}, owner_field="owner", key_field="domain", label="DNS record",
            addresses=("owner",),
        ),
        EntitySpec(
            "instance", "instance", "/instances", "instances", "instance_id",
            m.Instance, m.InstanceCreate, m.InstanceUpdate, _instance, owner_field="owner",
            addresses=("owner",),
        ),
        EntitySpec(
            "node", "node", "/nodes", "nodes", "node_id", m.Node, m.NodeCreate, m.NodeUpdate, _node,
            unique={"public_key": _same}, owner_field="operator_id", addresses=("operator_id",),
        ),
        EntitySpec(
            "account", "account", "/accounts", "accounts", "account_id",
            m.Account, m.AccountCreate, m.AccountUpdate, _account,
            unique={"ethereum_address": str.lower}, addresses=("ethereum_address",),
        ),
    )
}  # fmt: skip


def new_document(spec: EntitySpec, body: msgspec.Struct, entity_id: str, now: int) -> dict[str, Any]:
    """A create body as a complete, validated document."""
    doc = {"id": entity_id, **msgspec.structs.asdict(body), "created_at": now, "updated_at": now}
    doc = spec.check(doc)
    # through the document type: field order and defaults exactly as GET will show them
    return msgspec.to_builtins(msgspec.convert(doc, spec.entity))


def merged_document(spec: EntitySpec, current: dict, changes: dict[str, Any], now: int) -> dict[str, Any]:
    """`current` with a partial update's fields applied, validated again as a whole."""
    doc = {**current, **changes, "updated_at": now}
    doc = spec.check(doc)
    return msgspec.to_builtins(msgspec.convert(doc, spec.entity))
