"""A typed async client for the State Service: one method per endpoint, and the sign-in flow.

    async with StateClient("http://127.0.0.1:3004", account=private_key) as state:
        await state.login()                      # Sign-In with Ethereum -> bearer token
        peer = await state.create_peer("Alice", state.address)
        records = await state.list_dns_records(record_type="A")

`account` is anything that holds a secp256k1 key: an EthSigner, 32 raw bytes, a hex string, or an
eth-account LocalAccount (its `.key`). With `sign_requests=True` every request is signed on its
own (no login, no token); with `node=NodeIdentity` requests are signed as that node.
"""

from __future__ import annotations

import time
from collections.abc import Generator
from typing import Any, Generic, TypeVar

import httpx
import msgspec

from shoal.state import models as m
from shoal.state.auth import signing
from shoal.state.auth.eth import EthSigner
from shoal.state.auth.node_identity import NodeIdentity

T = TypeVar("T")


class StateApiError(Exception):
    """An error answer: HTTP status and the envelope's code and message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


class Created(msgspec.Struct):
    id: str
    created_at: int
    replayed: bool = False


class Updated(msgspec.Struct):
    id: str
    updated_at: int


class Deleted(msgspec.Struct):
    id: str
    deleted_at: int


class Page(msgspec.Struct, Generic[T]):
    items: list[T]
    total: int
    limit: int
    offset: int


def _signer(account: Any) -> EthSigner:
    if isinstance(account, EthSigner):
        return account
    if isinstance(account, bytes | str):
        return EthSigner(account)
    key = getattr(account, "key", None)
    if key is None:
        raise TypeError("account must be an EthSigner, a private key (bytes or hex) or have a .key")
    return EthSigner(bytes(key))


class _Signed(httpx.Auth):
    """Signs each request for its audience: learned once from the service's /status (its cluster
    id and node key), or `audience` as given ('<cluster id>:<node key | any>', or 'any' for any
    node of the cluster the service is in)."""

    requires_request_body = True
    requires_response_body = True
    who = "user"

    def __init__(self, audience: str | None) -> None:
        self.audience = audience if audience and audience != signing.ANY else None
        self.any = audience == signing.ANY

    def _sign(self, request: httpx.Request, audience: str) -> None:
        raise NotImplementedError

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        if self.audience is None:
            status = yield httpx.Request("GET", request.url.copy_with(path="/status", query=None))
            info = status.json()
            self.audience = f"{info['cluster_id']}:any" if self.any else info["audience"]
        self._sign(request, self.audience)
        yield request

    def _fields(self, request: httpx.Request, audience: str) -> tuple[int, str, bytes]:
        ts, nonce = int(time.time()), signing.fresh_nonce()
        target = signing.target_of_url(request.url.raw_path)
        message = signing.request_message(
            self.who, request.method, target, request.content, ts, nonce, audience
        )
        request.headers[signing.TIMESTAMP] = str(ts)
        request.headers[signing.NONCE] = nonce
        request.headers[signing.AUDIENCE] = audience
        return ts, nonce, message


class _UserSignature(_Signed):
    def __init__(self, signer: EthSigner, audience: str | None = None) -> None:
        super().__init__(audience)
        self.signer = signer

    def _sign(self, request: httpx.Request, audience: str) -> None:
        _, _, message = self._fields(request, audience)
        request.headers[signing.ADDRESS] = self.signer.address
        request.headers[signing.SIGNATURE] = self.signer.sign_message(message)


class _NodeSignature(_Signed):
    who = "node"

    def __init__(self, identity: NodeIdentity, audience: str | None = None) -> None:
        super().__init__(audience)
        self.identity = identity

    def _sign(self, request: httpx.Request, audience: str) -> None:
        _, _, message = self._fields(request, audience)
        request.headers[signing.NODE_KEY] = self.identity.public_key
        request.headers[signing.NODE_SIGNATURE] = self.identity.sign(message)


def _drop_none(fields: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in fields.items() if v is not None}


class StateClient:
    """The State Service over HTTP (httpx). Use as `async with`, or call `close()`."""

    def __init__(
        self,
        base_url: str,
        *,
        account: Any = None,
        token: str | None = None,
        node: NodeIdentity | None = None,
        sign_requests: bool = False,
        audience: str | None = None,
        timeout: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        """`audience` of signed requests: None (the node at base_url, learned from its /status),
        'any' (any node of its cluster) or '<cluster id>:<node key | any>'."""
        self.signer = _signer(account) if account is not None else None
        self.token = token
        auth: httpx.Auth | None = None
        if node is not None:
            auth = _NodeSignature(node, audience)
        elif sign_requests:
            if self.signer is None:
                raise ValueError("sign_requests needs an account")
            auth = _UserSignature(self.signer, audience)
        self._http = httpx.AsyncClient(base_url=base_url, timeout=timeout, transport=transport, auth=auth)

    @property
    def address(self) -> str | None:
        return self.signer.address if self.signer else None

    async def close(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> StateClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- transport ------------------------------------------------------------------------------
    async def _call(
        self,
        method: str,
        path: str,
        json: Any = None,
        params: dict | None = None,
        headers: dict | None = None,
    ) -> httpx.Response:
        hdrs = dict(headers or {})
        if self.token:
            hdrs["Authorization"] = f"Bearer {self.token}"
        body = None if json is None else msgspec.json.encode(json)
        if body is not None:
            hdrs["Content-Type"] = "application/json"
        r = await self._http.request(method, path, content=body, params=params, headers=hdrs)
        if r.status_code >= 400:
            try:
                data = r.json()
                raise StateApiError(r.status_code, data.get("code", "ERROR"), data.get("error", r.text))
            except ValueError:
                raise StateApiError(r.status_code, "ERROR", r.text) from None
        return r

    async def _create(self, path: str, id_field: str, body: dict, idempotency_key: str | None) -> Created:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        r = await self._call("POST", f"{path}/create", _drop_none(body), headers=headers)
        data = r.json()
        return Created(data[id_field], data["created_at"], r.headers.get("idempotent-replayed") == "true")

    async def _update(self, path: str, id_field: str, body: dict) -> Updated:
        data = (await self._call("POST", f"{path}/update", body)).json()
        return Updated(data[id_field], data["updated_at"])

    async def _delete(self, path: str, id_field: str, key: str) -> Deleted:
        data = (await self._call("DELETE", f"{path}/{key}")).json()
        return Deleted(data[id_field], data["deleted_at"])

    async def _get(self, path: str, key: str, typ: type[T]) -> T:
        return msgspec.json.decode((await self._call("GET", f"{path}/{key}")).content, type=typ)

    async def _list(
        self, path: str, plural: str, typ: type[T], limit: int, offset: int, filters: dict
    ) -> Page[T]:
        params = {"limit": limit, "offset": offset}
        for k, v in filters.items():
            if v is not None:
                params[k] = str(v).lower() if isinstance(v, bool) else v
        data = msgspec.json.decode((await self._call("GET", path, params=params)).content)
        items = msgspec.convert(data[plural], list[typ])
        return Page(items, data["total"], data["limit"], data["offset"])

    # -- service and auth -----------------------------------------------------------------------
    async def health(self) -> str:
        return (await self._call("GET", "/health")).json()

    async def status(self) -> m.Status:
        return msgspec.json.decode((await self._call("GET", "/status")).content, type=m.Status)

    async def challenge(self, address: str | None = None) -> m.Challenge:
        addr = address or self.address
        r = await self._call("POST", "/auth/challenge", {"address": addr})
        return msgspec.json.decode(r.content, type=m.Challenge)

    async def login(self) -> m.Login:
        """Sign-In with Ethereum: fetch a challenge, sign it, keep the bearer token."""
        if self.signer is None:
            raise ValueError("login needs an account")
        ch = await self.challenge()
        signature = self.signer.sign_message(ch.message)
        r = await self._call(
            "POST", "/auth/login", {"address": self.signer.address, "signature": signature, "nonce": ch.nonce}
        )
        login = msgspec.json.decode(r.content, type=m.Login)
        self.token = login.token
        return login

    async def logout(self) -> bool:
        ok = (await self._call("POST", "/auth/logout")).json()["success"]
        self.token = None
        return ok

    async def whoami(self) -> m.WhoAmI:
        return msgspec.json.decode((await self._call("GET", "/auth/whoami")).content, type=m.WhoAmI)

    # -- peers ------------------------------------------------------------------------------------
    async def create_peer(
        self, name: str, public_key: str, peer_type: str = "user", *, idempotency_key: str | None = None
    ) -> Created:
        body = {"name": name, "public_key": public_key, "peer_type": peer_type}
        return await self._create("/peers", "peer_id", body, idempotency_key)

    async def get_peer(self, peer_id: str) -> m.Peer:
        return await self._get("/peers", peer_id, m.Peer)

    async def update_peer(self, peer_id: str, **fields: Any) -> Updated:
        return await self._update("/peers", "peer_id", {"id": peer_id, **fields})

    async def delete_peer(self, peer_id: str) -> Deleted:
        return await self._delete("/peers", "peer_id", peer_id)

    async def list_peers(self, limit: int = 100, offset: int = 0, **filters: Any) -> Page[m.Peer]:
        return await self._list("/peers", "peers", m.Peer, limit, offset, filters)

    # -- CIDRs --------------------------------------------------------------------------------------
    async def create_cidr(
        self, cidr: str, name: str, owner: str, *, idempotency_key: str | None = None
    ) -> Created:
        return await self._create(
            "/cidrs", "cidr_id", {"cidr": cidr, "name": name, "owner": owner}, idempotency_key
        )

    async def get_cidr(self, cidr_id: str) -> m.Cidr:
        return await self._get("/cidrs", cidr_id, m.Cidr)

    async def update_cidr(self, cidr_id: str, **fields: Any) -> Updated:
        return await self._update("/cidrs", "cidr_id", {"id": cidr_id, **fields})

    async def delete_cidr(self, cidr_id: str) -> Deleted:
        return await self._delete("/cidrs", "cidr_id", cidr_id)

    async def list_cidrs(self, limit: int = 100, offset: int = 0, **filters: Any) -> Page[m.Cidr]:
        return await self._list("/cidrs", "cidrs", m.Cidr, limit, offset, filters)

    # -- associations -------------------------------------------------------------------------------
    async def create_association(
        self,
        name: str,
        source_cidr: str,
        target_cidr: str,
        allow_bidirectional: bool = False,
        *,
        idempotency_key: str | None = None,
    ) -> Created:
        body = {
            "name": name,
            "source_cidr": source_cidr,
            "target_cidr": target_cidr,
            "allow_bidirectional": allow_bidirectional,
        }
        return await self._create("/associations", "association_id", body, idempotency_key)

    async def get_association(self, association_id: str) -> m.Association:
        return await self._get("/associations", association_id, m.Association)

    async def update_association(self, association_id: str, **fields: Any) -> Updated:
        return await self._update("/associations", "association_id", {"id": association_id, **fields})

    async def delete_association(self, association_id: str) -> Deleted:
        return await self._delete("/associations", "association_id", association_id)

    async def list_associations(
        self, limit: int = 100, offset: int = 0, **filters: Any
    ) -> Page[m.Association]:
        return await self._list("/associations", "associations", m.Association, limit, offset, filters)

    # -- DNS records (named by domain) ---------------------------------------------------------------
    async def create_dns_record(
        self,
        domain: str,
        record_type: str,
        value: str,
        ttl: int = 300,
        owner: str | None = None,
        *,
        idempotency_key: str | None = None,
    ) -> Created:
        body = {"domain": domain, "record_type": record_type, "value": value, "ttl": ttl, "owner": owner}
        return await self._create("/dns", "dns_id", body, idempotency_key)

    async def get_dns_record(self, domain: str) -> m.DnsRecord:
        return await self._get("/dns", domain, m.DnsRecord)

    async def update_dns_record(self, domain: str, **fields: Any) -> Updated:
        return await self._update("/dns", "dns_id", {"domain": domain, **fields})

    async def delete_dns_record(self, domain: str) -> Deleted:
        return await self._delete("/dns", "dns_id", domain)

    async def list_dns_records(self, limit: int = 100, offset: int = 0, **filters: Any) -> Page[m.DnsRecord]:
        return await self._list("/dns", "dns_records", m.DnsRecord, limit, offset, filters)

    # -- instances ------------------------------------------------------------------------------------
    async def create_instance(
        self,
        build_id: str,
        name: str,
        owner: str,
        vcpu_count: int,
        mem_size_mib: int,
        disk_size_gb: int,
        state: str | None = None,
        *,
        idempotency_key: str | None = None,
    ) -> Created:
        body = {
            "build_id": build_id,
            "name": name,
            "owner": owner,
            "vcpu_count": vcpu_count,
            "mem_size_mib": mem_size_mib,
            "disk_size_gb": disk_size_gb,
            "state": state,
        }
        return await self._create("/instances", "instance_id", body, idempotency_key)

    async def get_instance(self, instance_id: str) -> m.Instance:
        return await self._get("/instances", instance_id, m.Instance)

    async def update_instance(self, instance_id: str, **fields: Any) -> Updated:
        return await self._update("/instances", "instance_id", {"id": instance_id, **fields})

    async def delete_instance(self, instance_id: str) -> Deleted:
        return await self._delete("/instances", "instance_id", instance_id)

    async def list_instances(self, limit: int = 100, offset: int = 0, **filters: Any) -> Page[m.Instance]:
        return await self._list("/instances", "instances", m.Instance, limit, offset, filters)

    # -- nodes ------------------------------------------------------------------------------------------
    async def create_node(
        self,
        name: str,
        public_key: str,
        endpoint: str,
        total_vcpus: int,
        total_memory_mib: int,
        total_disk_gb: int,
        operator_id: str,
        *,
        available_vcpus: int | None = None,
        available_memory_mib: int | None = None,
        available_disk_gb: int | None = None,
        state: str | None = None,
        idempotency_key: str | None = None,
    ) -> Created:
        body = {
            "name": name,
            "public_key": public_key,
            "endpoint": endpoint,
            "total_vcpus": total_vcpus,
            "total_memory_mib": total_memory_mib,
            "total_disk_gb": total_disk_gb,
            "operator_id": operator_id,
            "available_vcpus": available_vcpus,
            "available_memory_mib": available_memory_mib,
            "available_disk_gb": available_disk_gb,
            "state": state,
        }
        return await self._create("/nodes", "node_id", body, idempotency_key)

    async def get_node(self, node_id: str) -> m.Node:
        return await self._get("/nodes", node_id, m.Node)

    async def update_node(self, node_id: str, **fields: Any) -> Updated:
        return await self._update("/nodes", "node_id", {"id": node_id, **fields})

    async def delete_node(self, node_id: str) -> Deleted:
        return await self._delete("/nodes", "node_id", node_id)

    async def list_nodes(self, limit: int = 100, offset: int = 0, **filters: Any) -> Page[m.Node]:
        return await self._list("/nodes", "nodes", m.Node, limit, offset, filters)

    # -- accounts ----------------------------------------------------------------------------------------
    async def create_account(
        self,
        name: str,
        ethereum_address: str,
        email: str | None = None,
        role: str | None = None,
        *,
        idempotency_key: str | None = None,
    ) -> Created:
        body = {"name": name, "ethereum_address": ethereum_address, "email": email, "role": role}
        return await self._create("/accounts", "account_id", body, idempotency_key)

    async def get_account(self, account_id: str) -> m.Account:
        return await self._get("/accounts", account_id, m.Account)

    async def update_account(self, account_id: str, **fields: Any) -> Updated:
        return await self._update("/accounts", "account_id", {"id": account_id, **fields})

    async def delete_account(self, account_id: str) -> Deleted:
        return await self._delete("/accounts", "account_id", account_id)

    async def list_accounts(self, limit: int = 100, offset: int = 0, **filters: Any) -> Page[m.Account]:
        return await self._list("/accounts", "accounts", m.Account, limit, offset, filters)
