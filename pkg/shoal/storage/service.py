"""The storage node over HTTP: `shoal serve storage --port 8081 --data-dir D --node-id ID`.

Chunk GET/HEAD/PUT and HEAD /ping are raw ASGI routes (shoal.web's fast path): a GET is an
index lookup, one os.pread into one bytes object, a checksum check and one send. Errors
use the `{"detail": ...}` envelope. Other internal routes (e.g. ChunkPaxos acceptors,
next) are added as ordinary `Api` routes on the StorageNode in `make_api`.

With `--auth-dir D` (docs/security.md): chunk GET/HEAD and HEAD /ping need a viewer (or a
cluster node); chunk PUT/DELETE and the Paxos prepare/accept routes need a cluster node (a
signed request or a node JWT: no human key, not even admin); GET /chunks and GET /paxos/{id}
need an operator or a node. A signed chunk PUT is checked before its body is read and its body
hashed once (shoal.storage.nodeauth). Registration and heartbeats to --metadata-url are signed.

`--read-bandwidth BYTES/s` (default off) shares that egress budget between clients on chunk GETs
(shoal.web.auth.bandwidth): bodies go out in --read-slice pieces, granted round robin per client
(credential, else address) once the budget is used up, so one client with many readers cannot
starve one with a few.
"""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

import msgspec
from starlette.responses import Response

from shoal import _native
from shoal.paxos.acceptor_api import make_acceptor_api
from shoal.storage.compaction import Compactor
from shoal.storage.httpbits import Unsatisfiable, parse_checksum, parse_range
from shoal.storage.registration import MetadataClient
from shoal.storage.store import (
    E_LEN,
    E_SB,
    E_SHA256,
    MAX_CHUNK,
    ChunkConflict,
    ChunkCorrupt,
    ChunkNotFound,
    ChunkStore,
    StorageFull,
    StoreError,
    chunk_id_ok,
)
from shoal.web import DETAIL_ENVELOPE, Api, ApiError, header, read_raw_body, respond
from shoal.web import create_app as build_app
from shoal.web.api import Endpoint
from shoal.web.auth import NODE, Requirement, add_auth_arguments, check_startup
from shoal.web.auth.bandwidth import DEFAULT_SLICE, FairShare, respond_shared
from shoal.web.jsonio import JSONResponse
from shoal.web.tls import add_client_tls_argument, options_verify

from .nodeauth import CLAIMED, NodeCredentials, StorageAuthLayer

TITLE = "Storage node"
MAX_WORKERS = 1  # one writer owns the superblocks
# uvicorn + httptools served more 2 MiB chunks/s than granian here (granian copies each body
# into its own buffer); bench/storage/load.py measures both in the same run.
DEFAULT_SERVER = "uvicorn"

log = logging.getLogger("shoal.storage")

WARNING_PERCENT = 85.0
CRITICAL_PERCENT = 95.0
_BAD_ID = "chunk id must be 1 to 128 characters of A-Z, a-z, 0-9, '_' or '-'"
_OCTET = (b"content-type", b"application/octet-stream")
_NO_CACHE = (b"cache-control", b"no-cache")

READ = Requirement("viewer", nodes=True)  # playback: chunk GET/HEAD, latency pings
MANAGE = Requirement("operator", nodes=True)  # listings the metadata service collects by


def policy(ep: Endpoint) -> Requirement | None:
    """Who may call each storage route (docs/security.md); a new route is nodes-only until decided."""
    if ep.path == "/health":
        return None
    if ep.path in ("/chunk/{chunk_id}", "/ping"):
        return READ if ep.method in ("GET", "HEAD") else NODE
    if ep.path == "/chunks" or (ep.path.startswith("/paxos/") and ep.method == "GET"):
        return MANAGE
    return NODE


def _size(text: str) -> int:
    """'1G', '64M', '4096' -> bytes."""
    text = text.strip().upper().removesuffix("B").removesuffix("I")
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}.get(text[-1:], 1)
    return int(float(text[:-1] if mult > 1 else text) * mult)


def add_arguments(parser) -> None:
    parser.add_argument("--node-id", default=None, help="node identifier (default storage-<port>)")
    parser.add_argument(
        "--metadata-url", default=None, help="register and heartbeat with this metadata service"
    )
    parser.add_argument(
        "--node-url", default=None, help="URL this node is reached at (default http://host:port)"
    )
    parser.add_argument("--superblock-size", type=_size, default=1 << 30, help="superblock file size (1G)")
    parser.add_argument("--checksum", choices=["crc32c", "blake3"], default="crc32c", help="record checksum")
    parser.add_argument("--capacity-bytes", type=_size, default=None, help="quota; default: the whole disk")
    parser.add_argument("--compact-threshold", type=float, default=0.5, help="garbage share that triggers it")
    parser.add_argument("--compact-interval", type=float, default=30.0, help="seconds between checks")
    parser.add_argument("--heartbeat-interval", type=float, default=5.0, help="seconds between heartbeats")
    parser.add_argument(
        "--read-bandwidth",
        type=_size,
        default=0,
        metavar="BYTES/s",
        help="egress budget shared fairly between clients on chunk GETs, e.g. 100M (default 0 = off)",
    )
    parser.add_argument(
        "--read-fairness",
        choices=["client", "request"],
        default="client",
        help="turns of the shared budget: per client (fair) or per request (as a plain link; comparison)",
    )
    parser.add_argument(
        "--read-slice", type=_size, default=DEFAULT_SLICE, help="piece a shared GET body is sent in (256K)"
    )
    add_auth_arguments(parser)
    add_client_tls_argument(parser)


def check_options(options: dict[str, Any]) -> None:
    check_startup(options, "storage")
    if (options.get("read_bandwidth") or 0) < 0 or (options.get("read_slice") or DEFAULT_SLICE) < 4096:
        raise SystemExit("shoal serve storage: --read-bandwidth must be >= 0 and --read-slice >= 4K")


class Health(msgspec.Struct):
    status: str
    disk_usage: float
    chunk_count: int
    uptime: int
    node_id: str
    superblocks: int
    corrupt_chunks: int
    native: bool


class ChunkListQuery(msgspec.Struct):
    after: Annotated[str, msgspec.Meta(max_length=128)] = ""
    limit: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 10_000


class ChunkList(msgspec.Struct):
    """Live chunk ids in id order, one page; `next_after` continues the listing (null: done).

    `stored_at` (added later, so older readers ignore it): unix seconds each listed copy was
    stored, never earlier than the truth; the metadata service ages uncommitted copies by it.
    """

    node_id: str
    count: int  # live chunks on the node in all
    chunk_ids: list[str]
    next_after: str | None
    stored_at: dict[str, float] = {}


class StorageNode:
    """A ChunkStore plus what the node tells the world about it."""

    def __init__(self, options: dict[str, Any]) -> None:
        self.data_dir = Path(options.get("data_dir") or "./shoal-data/storage")
        port = options.get("port") or 8081
        host = options.get("host") or "127.0.0.1"
        self.node_id = options.get("node_id") or f"storage-{port}"
        reach = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
        self.node_url = options.get("node_url") or f"http://{reach}:{port}"
        self.options = options
        self.started = time.monotonic()
        self.store: ChunkStore | None = None
        self.compactor: Compactor | None = None
        self.metadata: MetadataClient | None = None
        self._node_id_header = (b"x-node-id", self.node_id.encode())
        rate = options.get("read_bandwidth") or 0
        self.share = (
            FairShare(
                rate, options.get("read_slice") or DEFAULT_SLICE, per=options.get("read_fairness") or "client"
            )
            if rate > 0
            else None
        )

    async def start(self) -> None:
        o = self.options
        self.store = await asyncio.to_thread(
            ChunkStore,
            self.data_dir,
            superblock_size=o.get("superblock_size") or 1 << 30,
            checksum_algo=o.get("checksum") or "crc32c",
            capacity_bytes=o.get("capacity_bytes"),
        )
        self.compactor = Compactor(
            self.store, float(o.get("compact_threshold") or 0.5), float(o.get("compact_interval") or 30.0)
        )
        self.compactor.start()
        if o.get("metadata_url"):
            creds = NodeCredentials.from_options(o, self.node_id)
            self.metadata = MetadataClient(
                o["metadata_url"],
                self.node_id,
                self.node_url,
                self.figures,
                float(o.get("heartbeat_interval") or 5),
                auth=creds.httpx_auth() if creds else None,
                verify=options_verify(o),
            )
            self.metadata.start()

    async def stop(self) -> None:
        if self.metadata is not None:
            await self.metadata.stop()
        if self.compactor is not None:
            await asyncio.to_thread(self.compactor.stop)
        if self.store is not None:
            await asyncio.to_thread(self.store.close)

    def figures(self) -> dict:
        """The heartbeat body."""
        assert self.store is not None
        return {
            "disk_usage_percent": min(100.0, self.store.disk_usage_percent()),  # a quota can be overrun
            "chunk_count": self.store.chunk_count,
            "corrupt_chunks": sorted(self.store.corrupt)[:1000],
        }

    def chunk_headers(self, chunk_id: str, entry: tuple) -> list[tuple[bytes, bytes]]:
        return [
            _OCTET,
            (b"etag", b'"' + entry[E_SHA256].hex().encode() + b'"'),
            (b"x-chunk-size", str(entry[E_LEN]).encode()),
            (b"x-superblock-id", str(entry[E_SB]).encode()),
            (b"accept-ranges", b"bytes"),
        ]

    def corrupt_error(self, exc: ChunkCorrupt) -> ApiError:
        if self.metadata is not None:
            self.metadata.poke()
        return ApiError(500, f"{exc}; not served (re-replicate it from another node)", code="CHUNK_CORRUPT")


def make_api(node: StorageNode) -> Api:
    """The storage routes; new internal routes belong here."""
    api = Api(tags=["storage"])

    def chunk_doc() -> dict:  # one dict per route: the auth layer writes each one's security
        return {"parameters": [_chunk_param()]}

    @api.raw(
        "PUT",
        "/chunk/{chunk_id}",
        status=201,
        media_type="application/octet-stream",
        request_media_type="application/octet-stream",
        summary="Store a chunk (up to 2 MiB); durable before the answer",
        extra_responses={
            200: "the same bytes were already stored",
            400: "bad chunk id, empty body, or X-Chunk-Checksum mismatch",
            409: "different bytes are stored under this id",
            413: "body over 2 MiB",
            507: "disk usage over 95%",
        },
        openapi_extra=chunk_doc(),
    )
    async def put_chunk(scope: dict, receive: Any, send: Any, chunk_id: str) -> None:
        store = node.store
        assert store is not None
        if not chunk_id_ok(chunk_id):
            raise ApiError(400, _BAD_ID)
        want = header(scope, b"x-chunk-checksum")
        expected = None
        if want is not None:
            try:
                expected = parse_checksum(want.decode("latin-1"))
            except ValueError as exc:
                raise ApiError(400, str(exc)) from None
        data = await read_raw_body(scope, receive, MAX_CHUNK)
        if not data:
            raise ApiError(400, "chunk body is empty")
        if store.disk_usage_percent() > CRITICAL_PERCENT:
            raise ApiError(507, f"disk usage is over {CRITICAL_PERCENT:g}%; not accepting chunks")
        sha256, cks = await store.digest_async(data)
        claimed = scope.get(CLAIMED)  # a signed PUT: its signature covered this hash, not the body
        if claimed is not None and claimed != sha256.hex():
            raise ApiError(401, "the body does not match its signed hash", "UNAUTHORIZED")
        if expected is not None and expected != sha256:
            raise ApiError(400, f"X-Chunk-Checksum does not match the body (sha256 {sha256.hex()})")
        try:
            result = await asyncio.wrap_future(store.submit_put(chunk_id, data, sha256, cks))
        except ChunkConflict as exc:
            raise ApiError(409, str(exc)) from None
        except StorageFull as exc:
            raise ApiError(507, str(exc)) from None
        except StoreError as exc:
            raise ApiError(500, str(exc)) from None
        headers = node.chunk_headers(chunk_id, result.entry)
        headers[0] = (b"location", f"/chunk/{chunk_id}".encode())
        headers.append((b"x-chunk-checksum", b"sha256:" + sha256.hex().encode()))
        await respond(send, 201 if result.created else 200, b"", headers)

    @api.raw(
        "GET",
        "/chunk/{chunk_id}",
        media_type="application/octet-stream",
        summary="Read a chunk (checksum verified); Range gives 206",
        extra_responses={
            206: "the requested byte range",
            404: "no such chunk",
            416: "range not satisfiable",
            500: "the stored bytes are corrupt (not served)",
        },
        openapi_extra=chunk_doc(),
    )
    async def get_chunk(scope: dict, receive: Any, send: Any, chunk_id: str) -> None:
        store = node.store
        assert store is not None
        if not chunk_id_ok(chunk_id):
            raise ApiError(400, _BAD_ID)
        try:
            data, entry = store.read(chunk_id)
        except ChunkNotFound:
            raise ApiError(404, f"chunk {chunk_id} not found") from None
        except ChunkCorrupt as exc:
            raise node.corrupt_error(exc) from None
        except StoreError as exc:
            raise ApiError(500, str(exc)) from None
        headers = node.chunk_headers(chunk_id, entry)
        rng = header(scope, b"range")
        share = node.share
        if rng is None:
            if share is None:
                await respond(send, 200, data, headers)
            else:
                await respond_shared(send, share, scope, 200, data, headers)
            return
        size = len(data)
        try:
            part = parse_range(rng.decode("latin-1"), size)
        except Unsatisfiable:
            raise ApiError(
                416, f"range not satisfiable for {size} bytes", headers={"content-range": f"bytes */{size}"}
            ) from None
        if part is None:
            await respond_shared(send, share, scope, 200, data, headers)
            return
        start, end = part
        headers.append((b"content-range", f"bytes {start}-{end - 1}/{size}".encode()))
        await respond_shared(send, share, scope, 206, data[start:end], headers)

    @api.raw(
        "HEAD",
        "/chunk/{chunk_id}",
        media_type="application/octet-stream",
        summary="Whether a chunk is here, with GET's headers and no body",
        extra_responses={404: "no such chunk", 500: "the chunk is known to be corrupt"},
        openapi_extra=chunk_doc(),
    )
    async def head_chunk(scope: dict, receive: Any, send: Any, chunk_id: str) -> None:
        store = node.store
        assert store is not None
        if not chunk_id_ok(chunk_id):
            raise ApiError(400, _BAD_ID)
        entry = store.stat(chunk_id)
        if entry is None:
            raise ApiError(404, f"chunk {chunk_id} not found")
        if chunk_id in store.corrupt:
            raise ApiError(500, f"chunk {chunk_id} is corrupt on this node", code="CHUNK_CORRUPT")
        headers = node.chunk_headers(chunk_id, entry)
        stored = store.stored_times([chunk_id]).get(chunk_id)
        if stored is not None:  # not on GET: the hot path stays as it is
            headers.append((b"x-stored-at", repr(stored).encode()))
        await respond(send, 200, b"", headers, length=entry[E_LEN])

    @api.delete(
        "/chunk/{chunk_id}",
        status=204,
        media_type="application/octet-stream",
        summary="Delete a chunk (a durable tombstone; space comes back on compaction)",
        extra_responses={404: "no such chunk"},
    )
    async def delete_chunk(request: Any, chunk_id: str) -> Response:
        store = node.store
        assert store is not None
        if not chunk_id_ok(chunk_id):
            raise ApiError(400, _BAD_ID)
        try:
            await asyncio.wrap_future(store.submit_delete(chunk_id))
        except ChunkNotFound:
            raise ApiError(404, f"chunk {chunk_id} not found") from None
        except StoreError as exc:
            raise ApiError(500, str(exc)) from None
        return Response(status_code=204)

    @api.get(
        "/chunks",
        query=ChunkListQuery,
        response=ChunkList,
        summary="Live chunk and fragment ids here, in id order, paginated (after=, limit=)",
        description=(
            "For the metadata service's collection of leftover copies: after a repair or a "
            "migration a node that was down still holds pieces no committed placement names. "
            "`stored_at` gives each listed copy's stored time (unix s), by which copies of "
            "uploads that never committed are aged."
        ),
    )
    async def list_chunks(request: Any, query: ChunkListQuery) -> ChunkList:
        store = node.store
        assert store is not None
        ids = sorted(k for k in list(store.live) if k > query.after)
        page = ids[: query.limit]
        more = len(ids) > query.limit
        times = store.stored_times(page)
        return ChunkList(node.node_id, store.chunk_count, page, page[-1] if more else None, times)

    @api.raw("HEAD", "/ping", media_type="text/plain", summary="Latency probe: node figures in headers")
    async def ping(scope: dict, receive: Any, send: Any) -> None:
        start = time.perf_counter()
        store = node.store
        assert store is not None
        headers = [
            node._node_id_header,
            (b"x-disk-usage-percent", str(store.disk_usage_percent()).encode()),
            (b"x-chunk-count", str(store.chunk_count).encode()),
            _NO_CACHE,
            (b"x-response-time", f"{(time.perf_counter() - start) * 1000:.3f}".encode()),
        ]
        await respond(send, 200, b"", headers)

    @api.get(
        "/health",
        response=Health,
        summary="Node health: healthy < 85% disk, warning 85-95%, critical > 95% (503)",
        extra_responses={503: "critical: disk usage over 95%"},
    )
    async def health(request: Any) -> Any:
        store = node.store
        assert store is not None
        usage = store.disk_usage_percent()
        status = (
            "healthy" if usage < WARNING_PERCENT else "warning" if usage <= CRITICAL_PERCENT else "critical"
        )
        body = Health(
            status=status,
            disk_usage=usage,
            chunk_count=store.chunk_count,
            uptime=int(time.monotonic() - node.started),
            node_id=node.node_id,
            superblocks=len(store.files),
            corrupt_chunks=len(store.corrupt),
            native=_native.implementation("superblock") == "native",
        )
        if status == "critical":
            return JSONResponse(msgspec.to_builtins(body), status_code=503)
        return body

    return api


def _chunk_param() -> dict:
    return {
        "name": "chunk_id",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,128}$"},
    }


def create_app(options: dict[str, Any]) -> Any:
    node = StorageNode(options)

    @asynccontextmanager
    async def lifespan(app: Any):
        await node.start()
        try:
            yield
        finally:
            await node.stop()

    layer = StorageAuthLayer.from_options(options, DETAIL_ENVELOPE)
    app = build_app(
        title=TITLE,
        apis=layer.secure([make_api(node), make_acceptor_api(node)], policy),
        envelope=DETAIL_ENVELOPE,
        max_body=MAX_CHUNK,
        lifespan=lifespan,
        state={"node": node},
    )
    return layer.wrap(app)
