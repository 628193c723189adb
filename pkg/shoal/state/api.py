"""The State Service's routes, declared once per entity kind from its EntitySpec.

GET by id (and DNS by domain) is a raw ASGI route: it answers the stored JSON bytes as they
are, with no decoding or re-encoding, which keeps the hottest read close to a bare ASGI app.
Lists splice stored documents into the answer the same way.
"""

from __future__ import annotations

import hashlib
import time
from typing import Annotated, Any

import msgspec
import orjson
from msgspec import Meta
from starlette.requests import Request
from starlette.responses import Response

from shoal.state import models as m
from shoal.state import validate
from shoal.state.auth.eth import same_address
from shoal.state.auth.policy import check_read, may_read_account, require_auth, write_guard
from shoal.state.auth.principal import Principal
from shoal.state.entities import SPECS, EntitySpec
from shoal.state.errors import StateError, bad_request, forbidden, not_found, unauthorized
from shoal.state.models import set_fields
from shoal.state.service import StateContext
from shoal.state.store import IdempotentReplay, Write
from shoal.web import Api, JSONResponse, respond

JSON = [(b"content-type", b"application/json")]
IDEMPOTENCY_TTL = 86_400
Limit = Annotated[int, Meta(ge=0, le=1000)]
Offset = Annotated[int, Meta(ge=0, le=1 << 31)]
Int64 = Annotated[int, Meta(ge=-(2**63), le=2**63 - 1)]

# an id is any path segment except the words of the POST routes beside it (/peers/create is
# the create route, never a peer called "create")
ID_SCHEMA = {"pattern": "^(?!create$|update$)[^/]+$", "minLength": 1}

IDEMPOTENCY_PARAM = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": "A retried create with the same key and body answers the first result.",
    "schema": {"type": "string", "minLength": 1, "maxLength": 255},
}


def answer_types(spec: EntitySpec) -> tuple[type, type, type, type, type]:
    """Created, Updated, Deleted and List answers and the list query, typed for OpenAPI."""
    title = spec.entity.__name__
    created = msgspec.defstruct(
        f"{title}Created", [("success", bool), (spec.id_field, str), ("created_at", int)]
    )
    updated = msgspec.defstruct(
        f"{title}Updated", [("success", bool), (spec.id_field, str), ("updated_at", int)]
    )
    deleted = msgspec.defstruct(
        f"{title}Deleted", [("success", bool), (spec.id_field, str), ("deleted_at", int)]
    )
    listed = msgspec.defstruct(
        f"{title}List",
        [
            ("success", bool),
            (spec.plural, list[spec.entity]),
            ("total", int),
            ("limit", int),
            ("offset", int),
        ],
    )
    filters: list[Any] = [("limit", Limit, 100), ("offset", Offset, 0)]
    for f in msgspec.structs.fields(spec.entity):
        typ = Int64 if f.type is int else f.type  # what the schema declares for an integer
        filters.append((f.name, typ | None, None))
    query = msgspec.defstruct(f"{title}Query", filters, forbid_unknown_fields=True)
    return created, updated, deleted, listed, query


async def principal_of(ctx: StateContext, request_scope: dict) -> Principal:
    """The authenticated principal, with role and identities resolved; 401 if anonymous."""
    return await ctx.auth.resolve(require_auth(request_scope.get("shoal.principal")))


def entity_routes(api: Api, ctx: StateContext, spec: EntitySpec) -> None:
    created_t, updated_t, deleted_t, list_t, query_t = answer_types(spec)
    kind, name, id_field = spec.kind, spec.name, spec.id_field
    head = f'{{"success":true,"{spec.plural}":['.encode()
    by_id = spec.key_field == "id"

    async def locate(key: str) -> str:
        """An id from the path or update body (DNS records are named by their domain)."""
        if spec.key_field == "domain":
            try:
                domain = validate.domain(key)
            except StateError:
                raise not_found(name, key) from None
            found = await ctx.store.lookup(kind, "domain", domain)
            if found is None:
                raise not_found(name, key)
            return found
        return key

    @api.post(
        f"{spec.path}/create",
        body=spec.create,
        response=created_t,
        summary=f"Create a {name}",
        openapi_extra={"parameters": [IDEMPOTENCY_PARAM]},
    )
    async def create(request: Request, body: msgspec.Struct) -> Any:
        principal = await principal_of(ctx, request.scope)
        ctx.require_ready("writes")
        key = request.headers.get("idempotency-key")
        request_hash = hashlib.sha256(
            f"POST {spec.path}/create\n".encode() + msgspec.json.encode(body)
        ).hexdigest()
        if kind == "dns" and getattr(body, "owner", None) is None and principal.kind == "user":
            body = msgspec.structs.replace(body, owner=principal.address)
        if kind == "node" and body.trusted is None:  # type: ignore[attr-defined]
            body = msgspec.structs.replace(body, trusted=principal.is_admin)  # a user's node: untrusted
        write = Write(
            kind, "create", principal.label, body=body, guard=write_guard(ctx.store, principal, spec)
        )

        def answer(op: Any) -> dict:
            return {"success": True, id_field: op.id, "created_at": op.value["created_at"]}

        if key is not None:
            if not 1 <= len(key) <= 255:
                raise bad_request("Idempotency-Key is 1 to 255 characters", "INVALID_IDEMPOTENCY_KEY")
            scoped = f"{principal.label}\n{key}".encode("utf-8", "surrogatepass")
            write.idempotency_key = hashlib.sha256(scoped).hexdigest()  # replicated: any node answers it
            write.idempotency_record = lambda op: orjson.dumps(
                {
                    "hash": request_hash,
                    "response": answer(op),
                    "expires_at": int(time.time()) + IDEMPOTENCY_TTL,
                }
            )
        try:
            op = await ctx.store.apply(write)
        except IdempotentReplay as replay:
            record = orjson.loads(replay.record)
            if record["hash"] != request_hash:
                raise StateError(
                    422,
                    "this Idempotency-Key was used with a different request body",
                    "IDEMPOTENCY_KEY_REUSED",
                ) from None
            return JSONResponse(record["response"], headers={"Idempotent-Replayed": "true"})
        return answer(op)

    get_doc = (
        "An instance is found by its id or, as in the spec's example (GET /instances/build-123456789), "
        "by its build_id (the oldest instance of that build)."
        if kind == "instance"
        else ""
    )

    @api.raw(
        "GET",
        f"{spec.path}/{{{spec.key_field}}}",
        response=spec.entity,
        summary=f"Get a {name}",
        description=get_doc,
        path_schema={spec.key_field: ID_SCHEMA},
    )
    async def get(scope: dict, receive: Any, send: Any, **params: str) -> None:
        principal = require_auth(scope.get("shoal.principal"))
        if principal.kind == "node":
            check_read(await ctx.auth.resolve(principal), kind, params[spec.key_field])
        entity_id = params[spec.key_field] if by_id else await locate(params[spec.key_field])
        raw = await ctx.store.get_raw(kind, entity_id)
        if raw is None and kind == "instance":
            raw = await ctx.store.find_raw(kind, "build_id", entity_id)
        if raw is None:
            raise not_found(name, params[spec.key_field])
        if kind == "account":
            await ctx.auth.resolve(principal)
            if not may_read_account(principal, orjson.loads(raw)):
                raise forbidden("users may only read their own account")
        await respond(send, 200, raw, JSON)

    @api.post(
        f"{spec.path}/update", body=spec.update, response=updated_t, summary=f"Update a {name} (partial)"
    )
    async def update(request: Request, body: msgspec.Struct) -> Any:
        principal = await principal_of(ctx, request.scope)
        ctx.require_ready("writes")
        changes = set_fields(body)
        entity_id = await locate(changes.pop(spec.key_field))
        write = Write(
            kind, "update", principal.label, id=entity_id, changes=changes,
            guard=write_guard(ctx.store, principal, spec),
        )  # fmt: skip
        op = await ctx.store.apply(write)
        return {"success": True, id_field: op.id, "updated_at": op.value["updated_at"]}

    @api.delete(
        f"{spec.path}/{{{spec.key_field}}}",
        response=deleted_t,
        summary=f"Delete a {name}",
        path_schema={spec.key_field: ID_SCHEMA},
    )
    async def delete(request: Request, **params: str) -> Any:
        principal = await principal_of(ctx, request.scope)
        ctx.require_ready("writes")
        entity_id = await locate(params[spec.key_field])
        write = Write(
            kind, "delete", principal.label, id=entity_id, guard=write_guard(ctx.store, principal, spec)
        )
        op = await ctx.store.apply(write)
        return {"success": True, id_field: op.id, "deleted_at": int(op.timestamp)}

    @api.get(spec.path, query=query_t, response=list_t, summary=f"List {spec.plural} (filter by any field)")
    async def list_all(request: Request, query: msgspec.Struct) -> Response:
        principal = await principal_of(ctx, request.scope)
        check_read(principal, kind)
        ctx.require_ready("lists")
        filters = {
            k: v
            for k, v in msgspec.structs.asdict(query).items()
            if v is not None and k not in ("limit", "offset")
        }
        limit, offset = query.limit, query.offset  # type: ignore[attr-defined]
        total, docs = 0, []
        if kind == "account" and not principal.is_admin:
            asked = filters.get("ethereum_address")
            if asked is None or same_address(asked, principal.address):
                filters["ethereum_address"] = principal.address
                total, docs = await ctx.store.list(kind, filters, limit, offset)
        else:
            total, docs = await ctx.store.list(kind, filters, limit, offset)
        tail = f'],"total":{total},"limit":{limit},"offset":{offset}}}'.encode()
        return Response(head + b",".join(docs) + tail, media_type="application/json")


def auth_routes(api: Api, ctx: StateContext) -> None:
    @api.post("/auth/challenge", body=m.ChallengeRequest, response=m.Challenge, summary="Start a sign-in")
    async def challenge(request: Request, body: m.ChallengeRequest) -> dict:
        """A Sign-In with Ethereum message to sign with personal_sign; single use, expires. Its
        domain and URI are the service's --public-url, never the request's Host header."""
        ctx.limit(request, "challenge")
        address = validate.eth_address(body.address, field="address")
        return await ctx.auth.challenge(address, ctx.siwe_domain, ctx.public_url)

    @api.post("/auth/login", body=m.LoginRequest, response=m.Login, summary="Finish a sign-in: get a token")
    async def login(request: Request, body: m.LoginRequest) -> dict:
        ctx.limit(request, "login")
        address = validate.eth_address(body.address, field="address")
        return await ctx.auth.login(address, body.signature, body.nonce)

    @api.post("/auth/logout", response=m.Logout, summary="Revoke the bearer token this request carries")
    async def logout(request: Request) -> dict:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise unauthorized("logout needs the Bearer token to revoke", "NO_TOKEN")
        return {"success": await ctx.auth.logout(token.strip())}

    @api.get("/auth/whoami", response=m.WhoAmI, summary="Who this request is authenticated as")
    async def whoami(request: Request) -> dict:
        p = await principal_of(ctx, request.scope)
        return {
            "kind": p.kind,
            "address": p.address,
            "node_id": p.node_id,
            "role": p.role,
            "account_id": p.account_id,
            "peer_id": p.peer_id,
        }


def service_routes(api: Api, ctx: StateContext) -> None:
    @api.get("/health", response=str | m.CatchingUp, summary="Service health (catching_up after a start)")
    async def health(request: Request) -> Any:
        """'healthy', or while this node has not caught up with its peers after starting:
        {"status": "catching_up", "progress": ...} (HTTP 200: it is alive; it refuses writes and
        lists with 503 until then)."""
        if ctx.ready:
            return "healthy"
        return {"status": "catching_up", "progress": ctx.replication.progress()}

    @api.get("/status", response=m.Status, summary="Health plus configuration: auth mode, store, node key")
    async def status(request: Request) -> dict:
        return {
            "status": "healthy" if ctx.ready else "catching_up",
            "auth": "disabled" if ctx.insecure else "enabled",
            "store": ctx.backend,
            "node_public_key": ctx.identity.public_key,
            "warning": "INSECURE DEV MODE: authentication is disabled" if ctx.insecure else None,
            "cluster_id": ctx.cluster_id,
            "audience": f"{ctx.cluster_id}:{ctx.identity.public_key}",
            "public_url": ctx.public_url,
        }


def build_api(ctx: StateContext) -> Api:
    api = Api(tags=["state"])
    service_routes(api, ctx)
    auth_routes(api, ctx)
    for spec in SPECS.values():
        entity_routes(api, ctx, spec)
    return api
