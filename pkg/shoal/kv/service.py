"""`shoal serve kv`: the store over an etcd-like JSON API, for clients that are not Python.

Keys travel in the URL path (`/v1/kv/a/b` is key "/a/b"); values travel as UTF-8 text or base64
(`encoding`). Errors use the {"detail": ...} envelope: 400 bad key or input, 404 no such key,
409 version conflict (with expected/found), 410 watch history compacted, 413 value too large.
Several workers may share one SQLite/LMDB file; each worker's watchers see every worker's writes.
With `--store etcd --etcd URL`, services on several machines share one store the same way.

With `--auth-dir D` (shoal.web.auth, docs/security.md) every route but /health, /openapi.json
and /metrics needs a credential: reads (GET: keys, listings, status, watch) need viewer or a
cluster node, writes (PUT, DELETE, POST /v1/txn) need operator or a cluster node; 401 without
or with a bad credential, 403 for a role below that, 429 over the rate limits. Without it, on
loopback, the service is open as before; on any other address it refuses to start unless
--insecure-dev.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import contextlib
import copy
import re
import urllib.parse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
import orjson
from starlette.requests import Request
from starlette.responses import StreamingResponse

from shoal.web import DETAIL_ENVELOPE, Api, ApiError
from shoal.web import create_app as build
from shoal.web.auth import AuthLayer, Requirement, add_auth_arguments, by_method, check_startup

from . import factory
from .base import KvStore
from .errors import (
    Compacted,
    InvalidKey,
    KvError,
    LimitExceeded,
    NotFound,
    StoreBusy,
    VersionConflict,
)
from .factory import add_store_arguments
from .model import Entry, Limits, TransactionOp

TITLE = "KV store"
DEFAULTS = Limits()
KEEPALIVE = 15.0  # seconds between SSE comments on an idle watch
# Cluster services (metadata's leases, the manager) use kv as nodes; people read as viewers and
# change keys as operators.
POLICY = by_method(read=Requirement("viewer", nodes=True), write=Requirement("operator", nodes=True))

Encoding = Literal["utf8", "base64"]
Version = Annotated[int, msgspec.Meta(ge=0, le=2**62)]
# the key rules of shoal.kv.keys, as the schema and msgspec state them: a leading "/", no NUL
# (at most 1024 bytes of UTF-8 is checked by the store: a schema counts characters)
KEY_PATTERN = "^/[^\\x00]*$"
# declared, and checked by shoal.kv.keys (which says what is wrong with a key)
Key = Annotated[str, msgspec.Meta(extra_json_schema={"pattern": KEY_PATTERN, "maxLength": 1024})]
Prefix = Annotated[str, msgspec.Meta(extra_json_schema={"pattern": "^(?:/[^\\x00]*)?$", "maxLength": 1024})]
Pattern = Annotated[
    str,
    msgspec.Meta(
        extra_json_schema={"pattern": KEY_PATTERN, "maxLength": 1025},
        description='a key ("/a/b") or every key under a prefix ("/a/*", "/*")',
    ),
]
# a key in the URL path: the part after /v1/kv/ (the service adds the "/"); a newline cannot
# be routed, NUL is not a key character
PATH_KEY = {"pattern": "^[^\\x00\\n]*$", "maxLength": 1023}
BASE64 = "^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"


class PutBody(msgspec.Struct, forbid_unknown_fields=True):
    value: str
    encoding: Encoding = "utf8"
    expected_version: Version | None = None


class DeleteQuery(msgspec.Struct, forbid_unknown_fields=True):
    expected_version: Version | None = None


class ListQuery(msgspec.Struct, forbid_unknown_fields=True):
    prefix: Prefix = ""
    limit: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 100
    cursor: Key | None = None
    values: bool = False


class TxnOpIn(msgspec.Struct, forbid_unknown_fields=True):
    op: Literal["check", "set", "delete"]
    key: Key
    value: str | None = None
    encoding: Encoding = "utf8"
    version: Version | None = None


class TxnBody(msgspec.Struct, forbid_unknown_fields=True):
    ops: list[TxnOpIn]


class WatchQuery(msgspec.Struct, forbid_unknown_fields=True):
    pattern: Pattern
    from_revision: Annotated[int, msgspec.Meta(ge=1, le=2**62)] | None = None
    max_events: Annotated[int, msgspec.Meta(ge=1)] | None = None
    timeout: Annotated[float, msgspec.Meta(gt=0, le=86400)] | None = None


class EntryOut(msgspec.Struct):
    key: str
    value: str
    encoding: Encoding
    version: int
    revision: int
    created_at: float
    updated_at: float


class PutOut(msgspec.Struct):
    key: str
    version: int
    revision: int


class DeleteOut(msgspec.Struct):
    key: str
    deleted: bool
    revision: int


class ListOut(msgspec.Struct):
    keys: list[str]
    entries: list[EntryOut] | None
    next_cursor: str | None
    revision: int


class TxnOut(msgspec.Struct):
    revision: int
    versions: list[int]
    deleted: list[bool]


class StatusOut(msgspec.Struct):
    backend: str
    durable: bool
    revision: int
    oldest_revision: int


def encode_value(value: bytes | None) -> tuple[str | None, Encoding]:
    if value is None:
        return None, "utf8"
    try:
        return value.decode(), "utf8"
    except UnicodeDecodeError:
        return base64.b64encode(value).decode(), "base64"


def decode_value(value: str, encoding: Encoding) -> bytes:
    if encoding == "base64":
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise ApiError(400, "value is not valid base64") from None
    try:
        return value.encode()
    except UnicodeEncodeError:
        raise ApiError(400, "value is not valid UTF-8 text (use encoding=base64)") from None


def entry_out(e: Entry) -> EntryOut:
    value, encoding = encode_value(e.value)
    return EntryOut(e.key, value or "", encoding, e.version, e.revision, e.created_at, e.updated_at)


def api_error(err: Exception) -> ApiError:
    """The 4xx (or 503) answer for a store error."""
    if isinstance(err, InvalidKey):
        return ApiError(400, str(err), code="INVALID_KEY")
    if isinstance(err, VersionConflict):
        details = {"key": err.key, "expected": err.expected, "found": err.found}
        return ApiError(409, str(err), code="VERSION_CONFLICT", details=details)
    if isinstance(err, NotFound):
        return ApiError(404, str(err), code="NOT_FOUND")
    if isinstance(err, LimitExceeded):
        status = 413 if "value" in err.what else 400
        return ApiError(
            status, str(err), code="LIMIT_EXCEEDED", details={"limit": err.limit, "actual": err.actual}
        )
    if isinstance(err, Compacted):
        return ApiError(410, str(err), code="COMPACTED", details={"oldest_revision": err.oldest})
    if isinstance(err, StoreBusy):
        return ApiError(503, str(err), code="BUSY")
    if isinstance(err, ValueError | TypeError):
        return ApiError(400, str(err))
    return ApiError(503, f"store error: {err}", code="STORE_ERROR")


@contextlib.contextmanager
def store_errors():
    try:
        yield
    except (KvError, ValueError, TypeError) as err:
        raise api_error(err) from None


_PERCENT = re.compile(rb"%(?![0-9A-Fa-f]{2})")


def path_key(key: str, request: Request | None = None) -> str:
    """The key of a /v1/kv/<key> URL. Checked on the raw bytes of the path: the server decodes
    invalid percent-encoding or UTF-8 as U+FFFD, and such a key would be stored mangled."""
    raw = request.scope.get("raw_path") if request is not None else None
    if raw is not None:
        _, sep, encoded = raw.partition(b"/v1/kv/")
        if sep:
            if _PERCENT.search(encoded):
                raise ApiError(400, "the key has invalid percent-encoding (% must start %XX)")
            try:
                key = urllib.parse.unquote_to_bytes(encoded).decode("utf-8")
            except UnicodeDecodeError:
                raise ApiError(400, "the key is not valid UTF-8 once percent-decoded") from None
    return "/" + key


def make_api(get_store) -> Api:
    api = Api(tags=["kv"])

    @api.get(
        "/v1/kv/{key:path}",
        path_schema={"key": PATH_KEY},
        response=EntryOut,
        extra_responses={404: "no such key"},
    )
    async def get_key(request: Request, key: str) -> EntryOut:
        """Read one key."""
        with store_errors():
            return entry_out(await get_store().require(path_key(key, request)))

    @api.put(
        "/v1/kv/{key:path}",
        path_schema={"key": PATH_KEY},
        body=PutBody,
        response=PutOut,
        extra_responses={409: "version conflict"},
    )
    async def put_key(request: Request, key: str, body: PutBody) -> PutOut:
        """Create or replace one key; with expected_version, only if the key is at that version (0: absent)."""
        value = decode_value(body.value, body.encoding)
        with store_errors():
            k = path_key(key, request)
            ops = [TransactionOp.set(k, value)]
            if body.expected_version is not None:
                ops.insert(0, TransactionOp.check_version(k, body.expected_version))
            result = await get_store().transaction(ops)
        return PutOut(k, result.versions[-1], result.revision)

    @api.delete("/v1/kv/{key:path}", path_schema={"key": PATH_KEY}, query=DeleteQuery, response=DeleteOut)
    async def delete_key(request: Request, key: str, query: DeleteQuery) -> DeleteOut:
        """Delete one key (deleted=false if it was absent); with expected_version, only at that version."""
        store = get_store()
        with store_errors():
            k = path_key(key, request)
            ops = [TransactionOp.delete(k)]
            if query.expected_version is not None:
                ops.insert(0, TransactionOp.check_version(k, query.expected_version))
            result = await store.transaction(ops)
        return DeleteOut(k, result.deleted[-1], result.revision)

    @api.get("/v1/keys", query=ListQuery, response=ListOut)
    async def list_keys(request: Request, query: ListQuery) -> ListOut:
        """Keys under a prefix in key order, a page at a time (pass next_cursor back as cursor)."""
        store = get_store()
        with store_errors():
            revision = await store.revision()
            if query.values:
                entries = await store.entries(query.prefix, start_after=query.cursor, limit=query.limit)
                keys = [e.key for e in entries]
                out = [entry_out(e) for e in entries]
            else:
                keys = await store.list(query.prefix, start_after=query.cursor, limit=query.limit)
                out = None
        cursor = keys[-1] if len(keys) == query.limit else None
        return ListOut(keys, out, cursor, revision)

    @api.post("/v1/txn", body=TxnBody, response=TxnOut, extra_responses={409: "a check failed"})
    async def txn(request: Request, body: TxnBody) -> TxnOut:
        """Apply every op or none; every check is evaluated before any write."""
        ops = []
        for i, op in enumerate(body.ops):
            if op.op == "check":
                if op.version is None:
                    raise ApiError(400, f"ops[{i}]: a check needs a version (0: absent)")
                ops.append(TransactionOp.check_version(op.key, op.version))
            elif op.op == "set":
                if op.value is None:
                    raise ApiError(400, f"ops[{i}]: a set needs a value")
                ops.append(TransactionOp.set(op.key, decode_value(op.value, op.encoding)))
            else:
                ops.append(TransactionOp.delete(op.key))
        with store_errors():
            result = await get_store().transaction(ops)
        return TxnOut(result.revision, result.versions, result.deleted)

    @api.get("/v1/status", response=StatusOut)
    async def status(request: Request) -> StatusOut:
        """Store revision and the oldest revision a watch can start from."""
        store = get_store()
        with store_errors():
            return StatusOut(
                type(store).__name__,
                bool(getattr(store, "durable", False)),
                await store.revision(),
                store._oldest_revision(),
            )

    @api.get(
        "/v1/watch",
        query=WatchQuery,
        media_type="text/event-stream",
        timeout=None,
        extra_responses={410: "from_revision is older than the retained history"},
    )
    async def watch(request: Request, query: WatchQuery) -> StreamingResponse:
        """Server-Sent Events for a key or a prefix pattern ("/a/*"), live or from a revision.

        Each event: `id` = revision, `event` = Created|Updated|Deleted, `data` = JSON
        {key, value, encoding, version, revision}. Ends after max_events or timeout seconds if given.
        """
        with store_errors():
            w = get_store().watch(query.pattern, from_revision=query.from_revision)
        return StreamingResponse(sse(w, query.max_events, query.timeout), media_type="text/event-stream")

    return api


async def sse(w, max_events: int | None, timeout: float | None) -> AsyncIterator[bytes]:
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    sent = 0
    try:
        yield b": watching\n\n"
        while max_events is None or sent < max_events:
            wait = KEEPALIVE if deadline is None else min(KEEPALIVE, deadline - loop.time())
            if wait <= 0:
                return
            try:
                ev = await asyncio.wait_for(anext(w), wait)
            except TimeoutError:
                yield b": keepalive\n\n"
                continue
            except StopAsyncIteration:
                return
            except KvError as err:
                yield b"event: error\ndata: " + orjson.dumps({"detail": str(err)}) + b"\n\n"
                return
            value, encoding = encode_value(ev.value)
            data = {
                "key": ev.key,
                "value": value,
                "encoding": encoding,
                "version": ev.version,
                "revision": ev.revision,
            }
            yield b"id: %d\nevent: %s\ndata: %s\n\n" % (
                ev.revision,
                ev.event_type.value.encode(),
                orjson.dumps(data),
            )
            sent += 1
    finally:
        w.close()


def add_arguments(parser) -> None:
    add_store_arguments(parser, default="lmdb", kinds=["memory", "sqlite", "lmdb", "etcd"])
    parser.add_argument(
        "--durable",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="fsync every commit (default); --no-durable survives a process crash but not an OS crash",
    )
    parser.add_argument("--max-value-bytes", type=int, default=DEFAULTS.max_value_bytes)
    parser.add_argument("--max-txn-ops", type=int, default=DEFAULTS.max_txn_ops)
    parser.add_argument(
        "--history", type=int, default=DEFAULTS.history, help="revisions kept for watch replay"
    )
    parser.add_argument(
        "--etcd-compact",
        action="store_true",
        help="with --store etcd: compact etcd to --history (cluster-wide: drops every client's history)",
    )
    add_auth_arguments(parser)


async def open_store(options: dict[str, Any]) -> KvStore:
    limits = Limits(
        max_value_bytes=int(options.get("max_value_bytes") or DEFAULTS.max_value_bytes),
        max_txn_ops=int(options.get("max_txn_ops") or DEFAULTS.max_txn_ops),
        history=int(options.get("history") or DEFAULTS.history),
    )
    return await factory.open_store(
        options.get("store") or "lmdb",
        Path(options.get("data_dir") or "./shoal-data/kv"),
        options.get("etcd"),
        name="kv",
        namespace=options.get("etcd_namespace"),
        durable=bool(options.get("durable", True)),
        limits=limits,
        **({"compact": True} if options.get("etcd_compact") else {}),
    )


def check_options(options: dict[str, Any]) -> None:
    """Refuse bad flag combinations before the server starts (see shoal.platform.services)."""
    if options.get("store") == "memory" and int(options.get("workers") or 1) > 1:
        raise SystemExit("--store memory cannot be shared by several workers; use sqlite or lmdb")
    if options.get("store") == "etcd" and not options.get("etcd"):
        raise SystemExit("--store etcd needs --etcd http://host:2379[,http://host2:2379...]")
    check_startup(options, "kv")


def create_app(options: dict[str, Any]):
    check_options(options)
    if options.get("store") not in ("memory", "etcd"):
        Path(options.get("data_dir") or "./shoal-data/kv").mkdir(parents=True, exist_ok=True)
    holder: dict[str, KvStore] = {}

    def get_store() -> KvStore:
        store = holder.get("store")
        if store is None:
            raise ApiError(503, "the store is not open (service starting or stopping)")
        return store

    @asynccontextmanager
    async def lifespan(app):
        holder["store"] = await open_store(options)
        try:
            yield
        finally:
            await holder.pop("store").close()

    max_value = int(options.get("max_value_bytes") or DEFAULTS.max_value_bytes)
    layer = AuthLayer.from_options(options, DETAIL_ENVELOPE)
    app = build(
        title=TITLE,
        description=__doc__ or "",
        apis=layer.secure([make_api(get_store)], POLICY),
        envelope=DETAIL_ENVELOPE,
        max_body=max_value * 4 // 3 + (1 << 16),  # one base64 value plus the JSON around it
        lifespan=lifespan,
    )
    document_bodies(app.openapi)
    return layer.wrap(app)


def _value_variants(schema: dict, required: list[str]) -> list[dict]:
    """A body whose value is text (utf8) or base64, as two variants of `schema`."""
    out = []
    for encoding, value in (("utf8", {"type": "string"}), ("base64", {"type": "string", "pattern": BASE64})):
        v = copy.deepcopy(schema)
        v["properties"]["encoding"] = {"enum": [encoding]} if encoding == "base64" else {"enum": ["utf8"]}
        v["properties"]["value"] = value
        v["required"] = sorted({*v.get("required", []), *required})
        if encoding == "base64":
            v["required"] = sorted({*v["required"], "encoding"})
        out.append(v)
    return out


def document_bodies(doc: dict) -> None:
    """What the schema cannot say from the Structs alone: base64 values are base64, a
    transaction's `set` needs a value and its `check` a version."""
    schemas = doc["components"]["schemas"]
    put = schemas["PutBody"]
    schemas["PutBody"] = {"title": "PutBody", "oneOf": _value_variants(put, ["value"])}
    op = schemas["TxnOpIn"]
    variants = []
    for name, required in (("check", ["version"]), ("delete", [])):
        v = copy.deepcopy(op)
        v["properties"]["op"] = {"enum": [name]}
        v["required"] = sorted({*v.get("required", []), *required})
        if name == "check":
            v["properties"]["version"] = copy.deepcopy(op["properties"]["version"]["anyOf"][0])
        variants.append(v)
    for v in _value_variants(op, ["value"]):
        v["properties"]["op"] = {"enum": ["set"]}
        variants.append(v)
    schemas["TxnOpIn"] = {"title": "TxnOpIn", "oneOf": variants}
