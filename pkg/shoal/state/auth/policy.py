"""Authorization: who may read and write what.

- Anonymous: /health, /status, /openapi.json, /metrics and the sign-in routes only.
- Reads: any authenticated user; accounts only by admins or the account's owner.
- Writes: admins anything. A user writes what they own: an entity whose owner / operator_id is
  their address, their account id or their peer id; the peer whose public_key is their address;
  their own account (never its role); an association only between CIDRs they own.
- Nodes (Ed25519-signed requests from registered nodes) have node rights only: they update their
  own node record (heartbeats: state and available capacity, never its key, operator or trust)
  and read it. A node whose record an admin registered or approved (`trusted: true`) also reads
  the other non-account entities. No node ever reads accounts, and only an admin sets `trusted`
  (a node registered by a user is untrusted). Replication trust is the --trust-node keys alone.
- Platform API keys (--auth-dir, shoal.state.auth.platform): admin keys are admins; operator keys
  are admins for every kind but accounts, which they neither read nor write; viewer and uploader
  keys read every kind but accounts and write nothing.
Addresses are compared in one form (EIP-55; shoal.state.auth.eth.same_address), whatever case
a client sent.
"""

from __future__ import annotations

from shoal.state.auth.eth import same_address
from shoal.state.auth.principal import Principal
from shoal.state.entities import EntitySpec
from shoal.state.errors import forbidden, unauthorized
from shoal.state.store import Guard, StateStore


def require_auth(principal: Principal | None) -> Principal:
    if principal is None:
        raise unauthorized("authentication required: a Bearer token or a signed request")
    return principal


def may_read_account(principal: Principal, account: dict) -> bool:
    if principal.kind == "key":
        return principal.accounts
    if principal.is_admin:
        return True
    if principal.kind != "user":
        return False
    return principal.address is not None and same_address(account.get("ethereum_address"), principal.address)


NODE_HEARTBEAT = frozenset(
    {
        "state",
        "available_vcpus",
        "available_memory_mib",
        "available_disk_gb",
        "endpoint",
        "name",
        "updated_at",
    }
)


def check_read(principal: Principal, kind: str, entity_id: str | None = None) -> None:
    """403 unless `principal` may read documents of `kind` (a node: see the module docstring)."""
    if principal.kind == "key":
        if kind == "account" and not principal.accounts:
            raise forbidden(
                f"a {principal.key_role} API key never reads accounts (admin keys only)", "KEY_ROLE"
            )
        return
    if principal.kind != "node":
        return
    if kind == "account":
        raise forbidden("nodes never read accounts", "NODE_RIGHTS_ONLY")
    if principal.trusted:
        return
    if kind == "node" and entity_id is not None and entity_id == principal.node_id:
        return
    raise forbidden(
        "this node was not registered or approved by an admin: it may only read and update its own "
        "node record",
        "UNTRUSTED_NODE",
    )


def _owned(principal: Principal, doc: dict | None, field: str) -> bool:
    if doc is None:
        return True
    value = doc.get(field)
    return any(same_address(value, i) for i in principal.identities)


def write_guard(store: StateStore, principal: Principal, spec: EntitySpec) -> Guard:
    """The check StateStore.apply runs against the current and the new document."""

    async def guard(current: dict | None, new: dict | None) -> None:
        if principal.kind == "key":  # platform API keys: shoal.state.auth.platform
            if not principal.is_admin:
                raise forbidden(f"a {principal.key_role} API key only reads", "KEY_ROLE")
            if spec.kind == "account" and not principal.accounts:
                raise forbidden("only an admin API key writes accounts (they carry State roles)", "KEY_ROLE")
        if principal.is_admin:
            return
        what = spec.name
        if (
            spec.kind == "node"
            and new is not None
            and new.get("trusted") != (current.get("trusted", False) if current else False)
        ):
            raise forbidden("only an admin may trust a node (trusted)", "TRUST_NEEDS_ADMIN")
        if principal.kind == "node":
            if (
                spec.kind == "node"
                and current is not None
                and current["id"] == principal.node_id
                and new is not None
            ):
                changed = {k for k in new if new[k] != current.get(k)}
                if changed - NODE_HEARTBEAT:
                    raise forbidden(
                        f"a node updates only its heartbeat fields ({', '.join(sorted(NODE_HEARTBEAT))}), "
                        f"not {', '.join(sorted(changed - NODE_HEARTBEAT))}",
                        "NODE_RIGHTS_ONLY",
                    )
                return
            raise forbidden(
                f"nodes may only update their own node record, not write a {what}", "NODE_RIGHTS_ONLY"
            )
        address = principal.address or ""
        if spec.kind == "peer":
            for doc in (current, new):
                if doc is not None and not same_address(doc["public_key"], address):
                    raise forbidden("users may only write the peer whose public_key is their own address")
            return
        if spec.kind == "account":
            for doc in (current, new):
                if doc is not None and not same_address(doc["ethereum_address"], address):
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
                    if cidr is not None and not _owned(principal, cidr, "owner"):
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
