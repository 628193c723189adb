"""Authorization: who may read and write what.

- Anonymous: /health, /status, /openapi.json, /metrics and the sign-in routes only.
- Reads: any authenticated principal; accounts only by admins, nodes, or the account's owner.
- Writes: admins anything. A user writes what they own: an entity whose owner / operator_id is
  their address, their account id or their peer id; the peer whose public_key is their address;
  their own account (never its role); an association only between CIDRs they own.
- Nodes (Ed25519-signed requests from registered nodes) update their own node record.
"""

from __future__ import annotations

from shoal.state.auth.principal import Principal
from shoal.state.entities import EntitySpec
from shoal.state.errors import forbidden, unauthorized
from shoal.state.store import Guard, StateStore


def require_auth(principal: Principal | None) -> Principal:
    if principal is None:
        raise unauthorized("authentication required: a Bearer token or a signed request")
    return principal


def may_read_account(principal: Principal, account: dict) -> bool:
    if principal.is_admin or principal.kind == "node":
        return True
    return principal.address is not None and account.get("ethereum_address", "").lower() == principal.address


def _owned(principal: Principal, doc: dict | None, field: str) -> bool:
    return doc is None or doc.get(field) in principal.identities


def write_guard(store: StateStore, principal: Principal, spec: EntitySpec) -> Guard:
    """The check StateStore.apply runs against the current and the new document."""

    async def guard(current: dict | None, new: dict | None) -> None:
        if principal.is_admin:
            return
        what = spec.name
        if principal.kind == "node":
            if (
                spec.kind == "node"
                and current is not None
                and current["id"] == principal.node_id
                and new is not None
            ):
                if new["public_key"] != current["public_key"] or new["operator_id"] != current["operator_id"]:
                    raise forbidden("a node may not change its own public_key or operator_id")
                return
            raise forbidden(f"nodes may only update their own node record, not write a {what}")
        address = principal.address or ""
        if spec.kind == "peer":
            for doc in (current, new):
                if doc is not None and doc["public_key"].lower() != address:
                    raise forbidden("users may only write the peer whose public_key is their own address")
            return
        if spec.kind == "account":
            for doc in (current, new):
                if doc is not None and doc["ethereum_address"].lower() != address:
                    raise forbidden("users may only write their own account")
            if new is not None and new["role"] != (current["role"] if current else "user"):
                raise forbidden("only an admin may set an account's role")
            return
        if spec.kind == "association":
            for doc in (current, new):
                if doc is None:
                    continue
                for field in ("source_cidr", "target_cidr"):
                    cidr = await store.get("cidr", doc[field])
                    if cidr is not None and cidr["owner"] not in principal.identities:
                        raise forbidden(f"{field} {doc[field]!r} is not your CIDR")
            return
        if spec.owner_field:
            if not (
                _owned(principal, current, spec.owner_field) and _owned(principal, new, spec.owner_field)
            ):
                raise forbidden(
                    f"this {what}'s {spec.owner_field} must be one of your identities "
                    f"({', '.join(sorted(principal.identities))})"
                )
            return
        raise forbidden(f"only admins may write a {what}")

    return guard
