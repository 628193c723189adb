"""The metadata service: `shoal serve metadata --port 8080 --data-dir D [--store lmdb|sqlite|etcd]`.

Every route of the spec's "Metadata Service API", errors as {"detail"}. State is in shoal.kv
(LMDB by default, fsync per commit), so an acknowledged write survives kill -9. One process
(MAX_WORKERS = 1): the node registry and in-flight consensus phases are cached in memory.
With `--store etcd --etcd URL`, several metadata processes (on several machines) share one
store: each follows the node records the others write, and takes its own proposer incarnation.

With `--auth-dir D` (docs/security.md): reads need a viewer or a cluster node; POST /video an
uploader or a node; commits and heartbeats a node; POST /nodes/register an operator or a node,
and the node must answer its health check (also with `--registration-check on`); everything
else (overrides, maintenance, node removal) an operator. Paxos messages, repair, moves,
deletes and listings sent to storage nodes are signed with the cluster secret.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import msgspec

from shoal import __version__
from shoal.kv import KvStore, add_store_arguments, open_store
from shoal.paxos import ERASURE, REPLICATION, Fragment, Placement, PlacementError
from shoal.paxos.placement import CHUNK_ID, MODES, NODE_URL, fragment_id
from shoal.paxos.proposer import Proposer
from shoal.paxos.transport import BatchingTransport, HttpTransport, Unreachable
from shoal.storage.nodeauth import NodeCredentials
from shoal.web import DETAIL_ENVELOPE, Api, ApiError, JSONResponse
from shoal.web import create_app as build_app
from shoal.web.api import Endpoint
from shoal.web.auth import NODE, AuthLayer, Requirement, add_auth_arguments, check_startup
from shoal.web.tls import add_client_tls_argument, options_verify

from .chunks import ChunkService, CommitFailed, Times
from .maintenance import Maintenance, NotLeader
from .membership import Removed
from .models import (
    CommitBody,
    CommitResult,
    Heartbeat,
    OverrideQuery,
    Register,
    StatusFilter,
    VideoCreate,
    VideoCreated,
    VideoList,
)
from .mover import Mover
from .nodes import DEGRADED, DOWN, HEALTHY, NodeRegistry, Thresholds
from .records import ChunkRecord
from .redundancy import Policy, degraded_mode, efficiency, mode_config, overhead
from .store import ANY, MetadataStore, SlotTaken, VideoIdTaken
from .videos import chunk_summary, make_video_api, video_json

TITLE = "Metadata service"
MAX_WORKERS = 1
SERVICE_VERSION = "1.0.0"

FILES = {"lmdb": "metadata.lmdb", "sqlite": "metadata.sqlite"}  # in the data dir

log = logging.getLogger("shoal.metadata")

READ = Requirement("viewer", nodes=True)
MANAGE = Requirement("operator", nodes=True)


# what the chunk routes accept as an id (checked with its own message where a chunk id is read)
CHUNK_ID_SCHEMA = {"pattern": "^[A-Za-z0-9_-]{1,128}$"}


def policy(ep: Endpoint) -> Requirement | None:
    """Who may call each route (docs/security.md); a write not named here is for operators."""
    if ep.path in ("/health", "/"):
        return None
    if ep.method in ("GET", "HEAD") or ep.path == "/video/{video_id}/view":
        return READ
    if ep.path in ("/video", "/video/{video_id}/complete", "/video/{video_id}/fail"):
        return Requirement("uploader", nodes=True)  # the uploader service signs as a node
    if ep.path in ("/chunk/{chunk_id}/commit", "/nodes/{node_id}/heartbeat"):
        return NODE
    return MANAGE  # /nodes/register (+ the health check), overrides, maintenance, node removal


logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per Paxos message is noise


def add_arguments(parser) -> None:
    add_store_arguments(parser)  # --store lmdb|sqlite|etcd, --etcd URL[,URL], --etcd-namespace
    parser.add_argument(
        "--proposer-id", default=None, help="ChunkPaxos proposer id (default: persisted uuid)"
    )
    parser.add_argument("--degraded-after", type=float, default=10.0, help="heartbeat age (s) -> degraded")
    parser.add_argument("--down-after", type=float, default=15.0, help="heartbeat age (s) -> down")
    parser.add_argument("--repair-grace", type=float, default=60.0, help="seconds down before repair")
    parser.add_argument("--maintenance-interval", type=float, default=10.0, help="0 disables the loop")
    parser.add_argument(
        "--maintenance-lease-ttl",
        type=float,
        default=None,
        help="seconds the maintenance leader lease lasts unrenewed (default 3 intervals; 30 s if off)",
    )
    parser.add_argument(
        "--gc-grace", type=float, default=300.0, help="seconds a leftover copy waits before deletion"
    )
    parser.add_argument(
        "--gc-interval", type=float, default=3600.0, help="seconds between leftover scans of all nodes"
    )
    parser.add_argument(
        "--orphan-grace",
        type=float,
        default=86400.0,
        help="seconds a copy of a never-committed chunk waits before deletion",
    )
    parser.add_argument(
        "--upload-grace",
        type=float,
        default=3600.0,
        help="seconds an upload may go without progress before it is marked failed and collected",
    )
    parser.add_argument("--popularity-threshold", type=int, default=1000, help="views above -> replication")
    parser.add_argument("--migrate-settle", type=float, default=60.0, help="seconds a mode must hold")
    parser.add_argument("--paxos-timeout", type=float, default=2.0, help="acceptor request timeout (s)")
    parser.add_argument(
        "--paxos-batch",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="carry concurrent commits' accepts to one acceptor in one message (one fsync there)",
    )
    parser.add_argument(
        "--paxos-fast",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the pin's creator skips phase 1 (round 0: 2n messages); --no-paxos-fast: classic 4n",
    )
    parser.add_argument(
        "--store-health-timeout",
        type=float,
        default=1.0,
        help="seconds /health waits for the store before it reports degraded",
    )
    parser.add_argument(
        "--registration-check",
        choices=["auto", "on", "off"],
        default="auto",
        help="POST /nodes/register only for a node answering its /health (auto: on with --auth-dir)",
    )
    parser.add_argument(
        "--node-id", default=None, help="this service's id in signed requests (metadata-<port>)"
    )
    add_auth_arguments(parser)
    add_client_tls_argument(parser)


def check_options(options: dict[str, Any]) -> None:
    check_startup(options, "metadata")


def registration_check(options: dict[str, Any]) -> bool:
    mode = options.get("registration_check") or "auto"
    return mode == "on" or (mode == "auto" and bool(options.get("auth_dir")))


class Metadata:
    """Everything a request handler needs, built in the lifespan."""

    def __init__(self, options: dict[str, Any]) -> None:
        self.options = options
        self.data_dir = Path(options.get("data_dir") or "./shoal-data/metadata")
        self.kv: KvStore | None = None
        self.store: MetadataStore
        self.registry: NodeRegistry
        self.chunks: ChunkService
        self.maintenance: Maintenance
        self.transport: HttpTransport
        self.batcher: BatchingTransport | None = None
        self.follower: asyncio.Task | None = None
        self.policy = Policy(
            popularity_threshold=int(options.get("popularity_threshold") or 1000),
            settle=float(_opt(options, "migrate_settle", 60.0)),
        )

    async def start(self) -> None:
        o = self.options
        kind = o.get("store") or "lmdb"
        self.kv = await open_store(
            kind,
            self.data_dir,
            o.get("etcd"),
            name="metadata",
            namespace=o.get("etcd_namespace"),
            files=FILES,
        )
        self.store = MetadataStore(self.kv)
        await self.store.build_status_index()  # videos an older version wrote (once)
        self.registry = NodeRegistry(
            self.store,
            Thresholds(float(_opt(o, "degraded_after", 10.0)), float(_opt(o, "down_after", 15.0))),
        )
        await self.registry.load()
        if kind == "etcd":  # other metadata processes may share the store: see their nodes too
            self.follower = asyncio.create_task(self.registry.follow(), name="shoal-metadata-nodes")
        base, incarnation = await self.store.proposer_identity(o.get("proposer_id"))
        self.proposer_id = f"{base}.{incarnation}"
        timeout = float(_opt(o, "paxos_timeout", 2.0))
        creds = NodeCredentials.from_options(o, o.get("node_id") or f"metadata-{o.get('port') or 8080}")
        verify = options_verify(o)
        self.transport = HttpTransport(timeout=timeout, signer=creds.headers if creds else None, ssl=verify)
        wire: Any = self.transport
        if o.get("paxos_batch", True) is not False:
            wire = self.batcher = BatchingTransport(self.transport)
        self.chunks = ChunkService(
            self.store,
            self.registry,
            Proposer(self.proposer_id, wire),
            fast=o.get("paxos_fast", True) is not False,
        )
        self.http = httpx.AsyncClient(
            timeout=httpx.Timeout(10.0, connect=2.0),
            auth=creds.httpx_auth() if creds else None,
            verify=verify,
        )
        self.maintenance = Maintenance(
            self.store,
            self.registry,
            self.chunks,
            Mover(self.http),
            self.policy,
            interval=float(_opt(o, "maintenance_interval", 10.0)),
            repair_grace=float(_opt(o, "repair_grace", 60.0)),
            gc_grace=float(_opt(o, "gc_grace", 300.0)),
            gc_interval=float(_opt(o, "gc_interval", 3600.0)),
            orphan_grace=float(_opt(o, "orphan_grace", 86400.0)),
            lease_ttl=o.get("maintenance_lease_ttl"),
        )
        self.maintenance.collector.videos.grace = float(_opt(o, "upload_grace", 3600.0))
        self.maintenance.start()
        log.info("metadata service up: proposer %s, %d nodes", self.proposer_id, len(self.registry.nodes))

    async def stop(self) -> None:
        if self.follower is not None:
            self.follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.follower
        await self.maintenance.stop()
        await self.transport.aclose()
        await self.http.aclose()
        if self.kv is not None:
            await self.kv.close()


def _opt(options: dict, name: str, default: float) -> float:
    value = options.get(name)
    return default if value is None else value


_video_json = video_json  # the listing's shape lives with the life-cycle routes (videos.py)


def _ballot(b: Any) -> dict | None:
    return None if b is None else {"round": b.round, "proposer": b.proposer}


def _chunk_json(r: ChunkRecord) -> dict:
    p = r.placement
    out = {
        "chunk_id": r.chunk_id,
        "sequence_num": r.sequence_num,
        "size_bytes": p.size_bytes,
        "checksum": p.checksum,
        "redundancy_mode": p.mode,
        "replicas": p.nodes,
        "epoch": r.epoch,
        "start_sec": r.start_sec,
        "duration_sec": r.duration_sec,
    }
    if p.mode == ERASURE:
        out["fragments"] = [_fragment_json(f) for f in sorted(p.fragments, key=lambda f: f.index)]
    return out


def _fragment_json(f: Fragment) -> dict:
    """A fragment with the spec's key names (as GET /chunk/{id}/fragments), plus the older `index`."""
    return {
        "fragment_id": f.fragment_id,
        "fragment_index": f.index,
        "index": f.index,
        "node_url": f.node_url,
        "size_bytes": f.size_bytes,
        "checksum": f.checksum,
    }


def _times(body: CommitBody) -> Times:
    """(start_sec, duration_sec) of a commit body (CommitBody checks them: >= 0 and finite)."""
    start, duration = body.start_sec, body.duration_sec
    return (None if start is None else abs(start), None if duration is None else abs(duration))  # -0.0


def placement_from(chunk_id: str, body: CommitBody) -> Placement:
    """The commit body as a Placement (checked against the mode's rules by the caller)."""
    if body.redundancy_mode not in MODES:
        raise ApiError(400, f"redundancy_mode must be one of {', '.join(MODES)}")
    if body.redundancy_mode == REPLICATION:
        if body.fragments_metadata:
            raise ApiError(400, "fragments_metadata is only for erasure_coding")
        return Placement(REPLICATION, body.checksum, body.size_bytes, replicas=list(body.node_urls))
    if not body.fragments_metadata:
        raise ApiError(400, "erasure_coding needs fragments_metadata (one entry per fragment)")
    frags = [
        Fragment(
            f.fragment_index,
            f.node_url,
            f.fragment_id or fragment_id(chunk_id, f.fragment_index),
            f.checksum,
            f.size_bytes,
        )
        for f in body.fragments_metadata
    ]
    p = Placement(ERASURE, body.checksum, body.size_bytes, fragments=frags)
    if body.node_urls and body.node_urls != p.nodes:
        raise ApiError(400, "node_urls must list the fragments' nodes in fragment index order")
    return p


def _store_name(m: Metadata) -> str:
    """The store backend's name, for health reasons."""
    return str(m.options.get("store") or "lmdb")


async def check_node_answers(http: httpx.AsyncClient, url: str, node_id: str, timeout: float = 2.0) -> None:
    """ApiError(422) with the reason unless `url` answers GET /health as storage node `node_id`:
    an unreachable URL in the registry makes every later upload pick a dead node."""
    try:
        r = await http.get(f"{url}/health", timeout=timeout)
    except httpx.HTTPError as exc:
        raise ApiError(
            422, f"not registered: {url} does not answer its health check ({type(exc).__name__}: {exc})"
        ) from None
    try:
        body = r.json()
    except ValueError:
        body = None
    if r.status_code not in (200, 503) or not isinstance(body, dict):  # 503: a full node still answers
        raise ApiError(422, f"not registered: GET {url}/health answered {r.status_code}, not a storage node")
    if body.get("node_id") not in (None, node_id):
        raise ApiError(422, f"not registered: {url} answers as node {body.get('node_id')!r}, not {node_id!r}")


def make_api(m: Metadata) -> Api:
    api = Api(tags=["metadata"])

    async def video_or_404(video_id: str) -> Any:
        ok = len(video_id) <= 128 and "\0" not in video_id  # anything else cannot be a kv key
        video = await m.store.video(video_id) if ok else None
        if video is None:
            raise ApiError(404, f"video {video_id} not found")
        return video

    def chunk_id_ok(chunk_id: str) -> None:
        if not CHUNK_ID.match(chunk_id):
            raise ApiError(400, "chunk id must be 1 to 128 characters of A-Z, a-z, 0-9, '_' or '-'")

    # -- health and status ------------------------------------------------------------------
    @api.get("/health", summary="Service health, with node counts and the database's state")
    async def health(request: Any) -> dict:
        """Always answers within --store-health-timeout (and 200: a hung store is the store's
        fault, so a liveness probe must not restart this process for it); `reasons` says why
        the status is degraded."""
        limit = float(_opt(m.options, "store_health_timeout", 1.0))
        reasons = []
        try:
            async with asyncio.timeout(limit):
                await m.store.kv.revision()
            db = "healthy"
        except TimeoutError:
            db = f"unhealthy: no answer within {limit:g} s"
        except Exception as exc:  # the store itself failing is exactly what this reports
            db = f"unhealthy: {exc}"
        if db != "healthy":
            reasons.append(f"{_store_name(m)} store: {db.removeprefix('unhealthy: ')}")
        now = time.time()
        counts = {HEALTHY: 0, DEGRADED: 0, DOWN: 0}
        for n in m.registry.all():
            counts[m.registry.status(n, now)] += 1
        return {
            "status": "healthy" if db == "healthy" else "degraded",
            "service": "metadata-service",
            "healthy_nodes": counts[HEALTHY],
            "degraded_nodes": counts[DEGRADED],
            "down_nodes": counts[DOWN],
            "total_nodes": len(m.registry.nodes),
            "database_status": db,
            "reasons": reasons,
            "proposer_id": m.proposer_id,
        }

    @api.get("/", summary="Service information")
    async def root(request: Any) -> dict:
        return {"message": "V-Stack Metadata Service", "version": SERVICE_VERSION}

    @api.get("/stats", summary="Totals over what is committed")
    async def stats(request: Any) -> dict:
        t = await m.store.totals()
        return {
            "total_videos": await m.store.count_videos(),  # active ones (the others below)
            "total_chunks": t.replication_chunks + t.erasure_coded_chunks,
            "total_replicas": t.members,
            "healthy_nodes": len(m.registry.with_status(HEALTHY)),
            "service_version": SERVICE_VERSION,
            # persisted with the placements (shoal.kv), so a restart does not reset them
            "commits": t.commits,
            "paxos_messages": t.paxos_messages,
            # this process since its start: accept batches on the wire and the instances they carried
            "paxos_accept_batches": m.batcher.batches if m.batcher else 0,
            "paxos_batched_accepts": m.batcher.batched if m.batcher else 0,
            "uploading_videos": await m.store.count_videos("uploading"),
            "failed_videos": await m.store.count_videos("failed"),
        }

    # -- videos ---------------------------------------------------------------------------------
    @api.post(
        "/video",
        body=VideoCreate,
        response=VideoCreated,
        summary="Create a video record (an optional caller-chosen video_id makes a retry idempotent)",
        extra_responses={409: "video_id exists with another title or duration"},
    )
    async def create_video(request: Any, body: VideoCreate) -> VideoCreated:
        try:
            video = await m.store.create_video(body.title, body.duration_sec, body.video_id)
        except VideoIdTaken as exc:
            raise ApiError(409, f"video {exc}") from None
        return VideoCreated(video.video_id, f"/upload/{video.video_id}")

    @api.get(
        "/videos", query=VideoList, summary="Videos in creation order, paginated (?status=, default active)"
    )
    async def list_videos(request: Any, query: VideoList) -> list:
        return [
            _video_json(v, await m.store.total_chunks(v.video_id))
            for v in await m.store.videos(query.limit, query.offset, query.status)
        ]

    @api.get(
        "/manifest/{video_id}",
        query=StatusFilter,
        summary="A video and where each chunk lives (active videos; ?status= for others)",
        extra_responses={404: "no such video", 409: "the video is not active (its status in detail)"},
    )
    async def manifest(request: Any, video_id: str, query: StatusFilter) -> dict:
        video = await video_or_404(video_id)
        if query.status not in (ANY, video.status):
            why = f": {video.reason}" if video.reason else ""
            raise ApiError(
                409,
                f"video {video_id} is {video.status}, not {query.status}{why}",
                details={"status": video.status},
            )
        chunks = await m.store.video_chunks(video_id)
        out = _video_json(video, len(chunks))
        out.update(chunk_summary(chunks))
        out["chunks"] = [_chunk_json(r) for r in chunks]
        return out

    @api.get("/video/{video_id}/popularity", summary="View count", extra_responses={404: "no such video"})
    async def popularity(request: Any, video_id: str) -> dict:
        await video_or_404(video_id)
        return {"video_id": video_id, "view_count": await m.store.views(video_id)}

    @api.post("/video/{video_id}/view", summary="Count one view", extra_responses={404: "no such video"})
    async def view(request: Any, video_id: str) -> dict:
        await video_or_404(video_id)
        count = await m.store.add_view(video_id)
        return {"status": "ok", "message": f"View count incremented for {video_id}", "view_count": count}

    # -- chunks -----------------------------------------------------------------------------------
    @api.post(
        "/chunk/{chunk_id}/commit",
        path_schema={"chunk_id": CHUNK_ID_SCHEMA},
        body=CommitBody,
        response=CommitResult,
        summary="Commit a chunk's placement through ChunkPaxos (majority of the placement must hold it)",
        extra_responses={
            400: "placement breaks the mode's rules (3 replicas, or 5 fragments for 3+2)",
            404: "no such video",
            409: "acceptors refused (data missing or checksum mismatch), or the slot is taken",
            503: "not enough acceptors answered",
        },
    )
    async def commit(request: Any, chunk_id: str, body: CommitBody) -> CommitResult:
        chunk_id_ok(chunk_id)
        await video_or_404(body.video_id)
        placement = placement_from(chunk_id, body)
        try:
            done = await m.chunks.commit(chunk_id, body.video_id, body.sequence_num, placement, _times(body))
        except PlacementError as exc:
            raise ApiError(400, str(exc)) from None
        except CommitFailed as exc:
            details = exc.outcome.votes if exc.outcome else None
            raise ApiError(exc.status, str(exc), details=details) from None
        except SlotTaken as exc:
            raise ApiError(409, str(exc)) from None
        r = done.record
        nodes = r.placement.nodes
        if done.own:
            message = f"Chunk {chunk_id} committed to {len(nodes)} nodes"
        else:
            message = f"Chunk {chunk_id} was already committed to a different placement, which stands"
        return CommitResult(
            success=True,
            committed_nodes=nodes,
            message=message,
            proposal_won=done.own,
            redundancy_mode=r.placement.mode,
            epoch=r.epoch,
            ballot=_ballot(r.ballot) or {},
            messages=done.outcome.messages if done.outcome else 0,
            rounds=done.outcome.rounds if done.outcome else 0,
        )

    @api.get(
        "/chunk/{chunk_id}/fragments",
        path_schema={"chunk_id": CHUNK_ID_SCHEMA},
        summary="Fragments of an erasure-coded chunk",
        extra_responses={404: "no such chunk"},
    )
    async def fragments(request: Any, chunk_id: str) -> dict:
        chunk_id_ok(chunk_id)
        r = await m.store.chunk(chunk_id)
        if r is None:
            raise ApiError(404, f"chunk {chunk_id} not found")
        frags = sorted(r.placement.fragments, key=lambda f: f.index)
        return {
            "chunk_id": chunk_id,
            "redundancy_mode": r.placement.mode,
            "fragments": [
                {
                    "fragment_id": f.fragment_id,
                    "fragment_index": f.index,
                    "node_url": f.node_url,
                    "size_bytes": f.size_bytes,
                    "checksum": f.checksum,
                    "status": "active" if f.node_url not in m.registry.down_urls() else "unavailable",
                }
                for f in frags
            ],
        }

    @api.get(
        "/consensus/{chunk_id}",
        path_schema={"chunk_id": CHUNK_ID_SCHEMA},
        summary="ChunkPaxos state of a chunk: the decision and each acceptor's durable ballots",
        extra_responses={404: "no consensus ever ran for this chunk here"},
    )
    async def consensus(request: Any, chunk_id: str) -> dict:
        chunk_id_ok(chunk_id)
        record = await m.store.chunk(chunk_id)
        inflight = m.chunks.phases.get(chunk_id)
        if record is None and inflight is None:
            raise ApiError(404, f"no consensus state for chunk {chunk_id}")
        epoch = inflight.epoch if inflight else record.epoch  # type: ignore[union-attr]
        acceptors = []
        down = m.registry.down_urls()
        promised = None
        accepted = None
        pin = await m.registry.membership.pinned(chunk_id, epoch)
        members = pin.members if pin else (record.placement.nodes if record else [])
        for url in members:
            item: dict = {"node_url": url, "reachable": False}
            if url not in down:
                try:
                    st = await m.transport.state(url, chunk_id)
                    item["reachable"] = True
                    inst = next((i for i in st.instances if i.epoch == epoch), None)
                    item["promised"] = _ballot(inst.promised) if inst else None
                    item["accepted"] = _ballot(inst.accepted) if inst else None
                    item["accepted_value"] = inst.value.nodes if inst and inst.value else None
                    if inst and inst.promised and (promised is None or inst.promised > promised):
                        promised = inst.promised
                    if inst and inst.accepted and (accepted is None or inst.accepted > accepted):
                        accepted = inst.accepted
                except Unreachable as exc:
                    item["error"] = str(exc)
            acceptors.append(item)
        if record is not None and (inflight is None or inflight.epoch == record.epoch):
            phase, chosen = "committed", record.ballot
            value = record.placement.nodes
        else:
            assert inflight is not None
            phase, chosen, value = inflight.phase, None, None
        return {
            "chunk_id": chunk_id,
            "epoch": epoch,
            "promised_ballot": promised.round if promised else 0,
            "accepted_ballot": (chosen or accepted).round if (chosen or accepted) else 0,
            "accepted_value": msgspec.json.encode(value).decode() if value is not None else None,
            "phase": phase,
            "ballots": {
                "promised": _ballot(promised),
                "accepted": _ballot(accepted),
                "chosen": _ballot(chosen),
            },
            "reason": inflight.reason if inflight else "",
            "messages": record.messages if record and phase == "committed" else None,
            "acceptors": acceptors,
        }

    # -- nodes ----------------------------------------------------------------------------------
    @api.get("/nodes/healthy", summary="Healthy storage nodes that take new pieces (active members)")
    async def nodes_healthy(request: Any) -> list:
        now = time.time()
        return [m.registry.describe(n, now) for n in m.registry.eligible(HEALTHY)]

    @api.get("/nodes/all", summary="Every registered storage node with its status")
    async def nodes_all(request: Any) -> dict:
        now = time.time()
        return {"nodes": [m.registry.describe(n, now) for n in m.registry.all()]}

    @api.get("/nodes/health-summary", summary="How many nodes are healthy, degraded, down")
    async def health_summary(request: Any) -> dict:
        now = time.time()
        counts = {HEALTHY: 0, DEGRADED: 0, DOWN: 0}
        for n in m.registry.all():
            counts[m.registry.status(n, now)] += 1
        return {
            **counts,
            "thresholds": {
                "degraded_after_sec": m.registry.thresholds.degraded_after,
                "down_after_sec": m.registry.thresholds.down_after,
            },
        }

    @api.post("/nodes/register", query=Register, summary="Register (or re-register) a storage node")
    async def register(request: Any, query: Register) -> dict:
        url = query.node_url.rstrip("/")
        if not NODE_URL.match(url):
            raise ApiError(400, "node_url must be an http(s) URL")
        other = m.registry.by_url(url)
        if other is not None and other.node_id != query.node_id:
            raise ApiError(409, f"{url} is registered as node {other.node_id}")
        if registration_check(m.options):
            await check_node_answers(m.http, url, query.node_id)
        try:  # a committed configuration change (epoch + 1) when the node is new or moved
            config = await m.registry.membership.join(query.node_id, url, rejoin=query.rejoin)
        except Removed as exc:
            raise ApiError(409, f"{exc}; register with rejoin=true to join again") from None
        await m.registry.register(query.node_id, url, query.version)
        return {
            "status": "registered",
            "node_id": query.node_id,
            "node_url": url,
            "membership_epoch": config.epoch,
        }

    @api.delete(
        "/nodes/{node_id}",
        # /nodes/healthy, /nodes/all, /nodes/health-summary are read routes, not node ids
        path_schema={"node_id": {"pattern": "^(?!healthy$|all$|health-summary$|register$)[^/]+$"}},
        summary="Decommission a node: no new pieces, its pieces moved off, then removed from membership",
        extra_responses={404: "no such node", 202: "leaving: pieces are being moved off"},
    )
    async def remove_node(request: Any, node_id: str) -> Any:
        """Removal is two committed configuration changes: `leaving` now, removal once no
        committed placement names the node (at once for a node holding nothing, e.g. a
        registration of a URL that never answered); the maintenance pass moves the pieces."""
        config = await m.registry.membership.fresh()
        if node_id not in config.members and node_id not in m.registry.nodes:
            if node_id in config.removed:
                return {"status": "removed", "node_id": node_id, "membership_epoch": config.epoch}
            raise ApiError(404, f"node {node_id} is not registered")
        if node_id not in config.members:  # a record without membership (should not happen)
            await m.registry.forget(node_id)
            return {"status": "removed", "node_id": node_id, "membership_epoch": config.epoch}
        await m.registry.membership.leave(node_id)
        removed, left = await m.maintenance.finish_leaving(node_id)
        epoch = m.registry.membership.config.epoch
        if removed:
            return {"status": "removed", "node_id": node_id, "membership_epoch": epoch}
        return JSONResponse(
            {
                "status": "leaving",
                "node_id": node_id,
                "chunks_left": left,
                "membership_epoch": epoch,
                "message": f"moving {left} chunk(s) off {node_id}; it is removed when none is left "
                "(each maintenance pass; POST /maintenance/run to go now)",
            },
            status_code=202,
        )

    @api.get("/membership", summary="The committed cluster configuration: epoch, members and their state")
    async def membership(request: Any) -> dict:
        await m.registry.membership.fresh()
        return m.registry.membership.describe()

    @api.post(
        "/nodes/{node_id}/heartbeat",
        body=Heartbeat,
        summary="A storage node's heartbeat (disk usage, chunk count, corrupt chunk ids)",
        extra_responses={404: "node not registered: register again"},
    )
    async def heartbeat(request: Any, node_id: str, body: Heartbeat) -> dict:
        node = await m.registry.heartbeat(
            node_id, body.disk_usage_percent, body.chunk_count, body.corrupt_chunks
        )
        if node is None:
            raise ApiError(404, f"node {node_id} is not registered")
        return {"status": "ok", "message": f"Heartbeat updated for node {node_id}"}

    # -- redundancy -----------------------------------------------------------------------------
    @api.get("/redundancy/recommend/{video_id}", summary="Recommended redundancy mode (popularity rule)")
    async def recommend(request: Any, video_id: str) -> dict:
        await video_or_404(video_id)
        views = await m.store.views(video_id)
        override = await m.store.override(video_id)
        preferred = m.policy.recommend(views, override)
        healthy = len(m.registry.eligible(HEALTHY))
        mode, reason = degraded_mode(preferred, healthy)
        state = await m.store.mode_state(video_id)
        return {
            "video_id": video_id,
            "view_count": views,
            "recommended_mode": mode,
            "override": override,
            "migration_target": state.mode if state else None,
            "config": mode_config(mode),
            # beyond the spec: the popularity rule's choice, and why it is not recommended now
            "preferred_mode": preferred,
            "healthy_nodes": healthy,
            "reason": reason,
        }

    @api.post("/redundancy/override/{video_id}", query=OverrideQuery, summary="Force a redundancy mode")
    async def set_override(request: Any, video_id: str, query: OverrideQuery) -> dict:
        await video_or_404(video_id)
        if query.mode not in MODES:
            raise ApiError(400, f"mode must be one of {', '.join(MODES)}")
        await m.store.set_override(video_id, query.mode)
        return {
            "status": "ok",
            "video_id": video_id,
            "override_mode": query.mode,
            "message": f"Manual override set to {query.mode}",
        }

    @api.delete("/redundancy/override/{video_id}", summary="Clear a manual override")
    async def clear_override(request: Any, video_id: str) -> dict:
        await video_or_404(video_id)
        await m.store.set_override(video_id, None)
        return {"status": "ok", "video_id": video_id, "message": "Manual override cleared"}

    @api.get("/redundancy/efficiency", summary="Overhead of each mode, measured from committed placements")
    async def redundancy_efficiency(request: Any) -> dict:
        return efficiency(await m.store.totals())

    @api.get("/redundancy/config", summary="Redundancy policy settings")
    async def redundancy_config(request: Any) -> dict:
        return m.policy.config()

    @api.get("/storage/overhead", summary="Logical vs physical bytes over every committed chunk")
    async def storage_overhead(request: Any) -> dict:
        return overhead(await m.store.totals())

    # -- maintenance (beyond the spec: observe and trigger repair / migration) --------------------
    @api.get("/maintenance", summary="Repair and migration counters, the leader lease, recent events")
    async def maintenance(request: Any) -> dict:
        mt = m.maintenance
        c = mt.counters
        return {
            "passes": c.passes,
            "migrated": c.migrated,
            "repaired": c.repaired,
            "failed": c.failed,
            "deleted_pieces": c.deleted_pieces,
            "collected": c.collected,
            "orphans_collected": mt.collector.orphans.deleted,
            "orphans_waiting": mt.collector.orphans.waiting(),
            "uploads_abandoned": mt.collector.videos.abandoned,
            "video_chunks_collected": mt.collector.videos.chunks_removed,
            "video_pieces_deleted": mt.collector.videos.pieces_deleted,
            "skipped": c.skipped,
            "drained": c.drained,  # chunks moved off leaving nodes
            "removed_nodes": c.removed_nodes,
            "waiting_for_nodes": c.waiting_for_nodes,  # migrations to 3+2 waiting for 5 healthy nodes
            "leader": mt.lease.valid(),
            "lease": mt.lease.describe(),
            "last_error": c.last_error,
            "events": c.events,
        }

    @api.post(
        "/maintenance/run",
        summary="Run one repair + migration + leftover collection pass now (lease holder only)",
        timeout=300,
        extra_responses={409: "another metadata process holds the maintenance lease (named in detail)"},
    )
    async def maintenance_run(request: Any) -> dict:
        try:
            await m.maintenance.run_once()
        except NotLeader as exc:
            raise ApiError(409, str(exc)) from None
        return await maintenance(request)

    return api


def create_app(options: dict[str, Any]) -> Any:
    if options.get("store") == "etcd" and not options.get("etcd"):
        raise SystemExit("--store etcd needs --etcd http://host:2379[,http://host2:2379...]")
    for name in ("maintenance_lease_ttl", "orphan_grace", "gc_grace", "upload_grace"):
        value = options.get(name)
        if value is not None and not value >= 0:  # also refuses nan
            raise SystemExit(f"--{name.replace('_', '-')} must be >= 0 seconds")
    value = options.get("store_health_timeout")
    if value is not None and not value > 0:
        raise SystemExit("--store-health-timeout must be > 0 seconds")
    m = Metadata(options)

    @asynccontextmanager
    async def lifespan(app: Any):
        await m.start()
        try:
            yield
        finally:
            await m.stop()

    layer = AuthLayer.from_options(options, DETAIL_ENVELOPE)
    app = build_app(
        title=TITLE,
        version=__version__,
        apis=layer.secure([make_api(m), make_video_api(m)], policy),
        envelope=DETAIL_ENVELOPE,
        lifespan=lifespan,
        state={"metadata": m},
    )
    return layer.wrap(app)
