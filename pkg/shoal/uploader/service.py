"""The uploader service: `shoal serve uploader --port 8084 --metadata-url URL --data-dir D`.

POST /upload streams the multipart body to disk, checks the content with ffprobe, creates the
video record and answers at once; chunking and distribution run in the background, and
GET /upload/status/{id} follows them. Sessions live in shoal.kv (SQLite) under the data dir.
One process (MAX_WORKERS = 1): the background uploads and their counters live in it.

With `--auth-dir D` (docs/security.md): POST /upload and GET /upload/status/{id} need an
uploader key (or above); /health stays open. The uploader is a cluster member: its calls to the
metadata service and its chunk PUTs/DELETEs to storage nodes are signed as node `--node-id`.

`--upload-quota BYTES/day` (default with --auth-dir 100G/day per key, off without unless given):
body bytes per API key (per client address in dev mode) per UTC day, counted in uploads.sqlite
as they arrive (shoal.web.auth.limits.UploadQuota); the upload that crosses it is cut off with a
429 (Retry-After: seconds to midnight UTC) and nothing of it is kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import msgspec
from starlette.requests import ClientDisconnect

from shoal.kv import SqliteStore
from shoal.storage.nodeauth import auth_for
from shoal.uploader.health import DependencyProbe
from shoal.uploader.media import InvalidVideo, MediaToolError
from shoal.uploader.metaclient import MetadataClient, MetadataError
from shoal.uploader.pipeline import Pipeline, Settings
from shoal.uploader.receive import receive_upload
from shoal.uploader.sessions import INTERRUPTED, SessionStore, progress_in
from shoal.web import DETAIL_ENVELOPE, Api, ApiError
from shoal.web import create_app as build_app
from shoal.web.api import Endpoint
from shoal.web.auth import UPLOADER, AuthLayer, Requirement, add_auth_arguments, check_startup, principal
from shoal.web.auth.limits import UploadQuota, parse_quota
from shoal.web.auth.ratelimit import client_bucket
from shoal.web.tls import add_client_tls_argument, options_verify

TITLE = "Uploader service"
MAX_WORKERS = 1
DEFAULT_MAX_UPLOAD = 10 * 1024**3
DEFAULT_UPLOAD_QUOTA = 100 * 1024**3  # per key per day with --auth-dir: far above `shoal demo`
MAX_TITLE = 500
MODES = ("replication", "erasure_coding")

log = logging.getLogger("shoal.uploader")
logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per chunk PUT is noise


def _size(text: str) -> int:
    text = text.strip().upper().removesuffix("B").removesuffix("I")
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}.get(text[-1:], 1)
    return int(float(text[:-1] if mult > 1 else text) * mult)


def add_arguments(parser) -> None:
    parser.add_argument("--metadata-url", default="http://127.0.0.1:8080", help="metadata service")
    parser.add_argument(
        "--max-upload-bytes", type=_size, default=DEFAULT_MAX_UPLOAD, help="largest upload (10G)"
    )
    parser.add_argument(
        "--upload-quota",
        default=None,
        metavar="BYTES/day",
        help="upload bytes per API key per UTC day, e.g. 20G/day (default with --auth-dir 100G/day; 0 = off)",
    )
    parser.add_argument("--concurrency", type=int, default=4, help="chunks stored in parallel")
    parser.add_argument("--retries", type=int, default=3, help="retries of a failed chunk PUT")
    parser.add_argument(
        "--metadata-timeout",
        type=float,
        default=5.0,
        help="deadline (s) of each call to the metadata service, retries included (commits: 30 s)",
    )
    parser.add_argument(
        "--metadata-health-timeout",
        type=float,
        default=2.0,
        help="seconds the metadata service (and the storage nodes it lists) get to answer the "
        "health check before /health says degraded",
    )
    parser.add_argument(
        "--node-id", default=None, help="this service's id in signed requests (uploader-<port>)"
    )
    add_auth_arguments(parser)
    add_client_tls_argument(parser)


def check_options(options: dict[str, Any]) -> None:
    check_startup(options, "uploader")
    upload_quota(options)


def upload_quota(options: dict[str, Any]) -> int:
    """Bytes per key per day (0 = off); SystemExit on a bad --upload-quota."""
    spec = options.get("upload_quota")
    if spec is None:
        return DEFAULT_UPLOAD_QUOTA if options.get("auth_dir") else 0
    try:
        return parse_quota(spec)
    except ValueError as exc:
        raise SystemExit(f"shoal serve uploader: --upload-quota: {exc}") from None


def quota_subject(request: Any) -> str:
    """Whose quota an upload draws on: the API key (or node) id, else the client address."""
    p = principal(request)
    if p is not None:
        return f"{p.kind}:{p.id}"
    client = request.scope.get("client")
    return "address:" + client_bucket(client[0] if client else None)


def policy(ep: Endpoint) -> Requirement | None:
    """Uploads and their status need an uploader; /health is open; anything new an operator."""
    if ep.path == "/health":
        return None
    if ep.path in ("/upload", "/upload/status/{upload_session_id}"):
        return UPLOADER
    return Requirement("operator")


class UploadAccepted(msgspec.Struct):
    video_id: str
    upload_session_id: str
    title: str
    status: str
    message: str
    status_url: str


class UploadStatus(msgspec.Struct):
    upload_session_id: str
    video_id: str | None
    title: str
    filename: str
    status: str
    progress: int
    started_at: str
    total_chunks: int | None
    error: str | None
    chunks_uploaded: int = 0
    redundancy_mode: str | None = None


class UploaderHealth(msgspec.Struct):
    status: str  # healthy | degraded (a dependency does not answer; still HTTP 200)
    service: str
    active_uploads: int
    metadata_url: str
    metadata_status: str = "healthy"
    reasons: list[str] = []


_MULTIPART_DOC = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["video", "title"],
                    "properties": {
                        "video": {"type": "string", "format": "binary"},
                        "title": {"type": "string", "minLength": 1, "maxLength": MAX_TITLE},
                        "redundancy_mode": {"type": "string", "enum": list(MODES)},
                    },
                }
            }
        },
    }
}


class Uploader:
    def __init__(self, options: dict[str, Any]) -> None:
        self.options = options
        self.data_dir = Path(options.get("data_dir") or "./shoal-data/uploader")
        self.metadata_url = str(options.get("metadata_url") or "http://127.0.0.1:8080").rstrip("/")
        self.max_upload = int(options.get("max_upload_bytes") or DEFAULT_MAX_UPLOAD)
        self.tasks: set[asyncio.Task] = set()

    async def start(self) -> None:
        incoming = self.data_dir / "incoming"
        for folder in (incoming, self.data_dir / "work"):
            folder.mkdir(parents=True, exist_ok=True)
            for leftover in folder.iterdir():  # files of uploads a killed process never finished
                leftover.unlink(missing_ok=True)
        self.incoming = incoming
        self.kv = await SqliteStore.open(self.data_dir / "uploads.sqlite", durable=False)
        self.sessions = SessionStore(self.kv)
        self.quota = UploadQuota(upload_quota(self.options), self.kv)
        node_id = self.options.get("node_id") or f"uploader-{self.options.get('port') or 8084}"
        self.http = httpx.AsyncClient(
            timeout=httpx.Timeout(30.0, connect=3.0),
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=32),
            auth=auth_for(self.options, node_id),  # signs metadata calls and chunk PUTs/DELETEs
            verify=options_verify(self.options),
        )
        self.metadata = MetadataClient(
            self.metadata_url, self.http, timeout=_positive(self.options, "metadata_timeout", 5.0)
        )
        self.probe = DependencyProbe(
            self.metadata_url, self.http, timeout=_positive(self.options, "metadata_health_timeout", 2.0)
        )
        settings = Settings(
            concurrency=max(1, int(self.options.get("concurrency") or 4)),
            retries=max(
                0, int(self.options.get("retries") if self.options.get("retries") is not None else 3)
            ),
        )
        self.pipeline = Pipeline(self.metadata, self.http, self.sessions, self.data_dir / "work", settings)
        stale = await self.sessions.recover()
        if stale:
            log.warning("%d upload(s) interrupted by a restart are now failed", len(stale))
            self.spawn(self._clean_interrupted(stale))

    async def stop(self) -> None:
        for t in list(self.tasks):
            t.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.http.aclose()
        await self.kv.close()

    def spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _clean_interrupted(self, stale: list) -> None:
        """Delete the uncommitted pieces interrupted uploads may have left (best effort)."""
        from shoal.uploader.distribute import chunk_id_for, delete_pieces, fragment_id_for

        for s in stale:
            if not s.video_id:
                continue
            try:  # the upload is over: its video is failed (the metadata service collects its chunks)
                await self.metadata.call("POST", f"/video/{s.video_id}/fail", json={"reason": INTERRUPTED})
            except MetadataError as exc:  # its --upload-grace marks it failed later
                log.warning("video %s not marked failed: %s", s.video_id, exc)
            if not s.total_chunks or not s.nodes:
                continue
            try:
                manifest = await self.metadata.call(
                    "GET", f"/manifest/{s.video_id}", params={"status": "any"}
                )
                committed = {c["chunk_id"] for c in manifest.get("chunks", [])}
            except MetadataError as exc:
                log.warning("cleanup of %s skipped: %s", s.upload_session_id, exc)
                continue
            targets = []
            for seq in range(s.total_chunks):
                cid = chunk_id_for(s.video_id, seq)
                if cid not in committed:
                    ids = [cid] + [fragment_id_for(cid, i) for i in range(5)]
                    targets += [(node, sid) for node in s.nodes for sid in ids]
            deleted = await delete_pieces(self.http, targets)
            s.cleanup = f"after restart: deleted {deleted} uncommitted piece(s)"
            await self.sessions.save(s)


def _positive(options: dict[str, Any], name: str, default: float) -> float:
    value = options.get(name)
    if value is None:
        return default
    if not float(value) > 0:  # also refuses nan
        raise SystemExit(f"--{name.replace('_', '-')} must be > 0 seconds")
    return float(value)


def make_api(u: Uploader) -> Api:
    api = Api(tags=["uploader"])

    @api.get(
        "/health",
        response=UploaderHealth,
        summary="Service health, uploads in progress, and whether the metadata service and the "
        "storage nodes it lists answer (degraded, still 200, when they do not)",
    )
    async def health(request: Any) -> UploaderHealth:
        r = await u.probe.report()
        return UploaderHealth(
            r.status, "uploader-service", u.sessions.active(), u.metadata_url, r.metadata, r.reasons
        )

    @api.post(
        "/upload",
        response=UploadAccepted,
        summary="Upload a video (multipart: video, title); processing continues in the background",
        timeout=None,
        extra_responses={
            400: "missing field, not a video in a supported format, empty or truncated file",
            413: "upload larger than --max-upload-bytes",
            429: "the key's --upload-quota for today is used up (Retry-After: seconds to midnight UTC)",
            503: "the metadata service is unreachable",
        },
        openapi_extra=_MULTIPART_DOC,
    )
    async def upload(request: Any) -> UploadAccepted:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > u.max_upload:
            raise ApiError(413, f"upload is {declared} bytes; the limit is {u.max_upload}")
        who = quota_subject(request)
        await u.quota.check(who, int(declared) if declared and declared.isdigit() else None)
        s = await u.sessions.create("", "")
        path = u.incoming / f"{s.upload_session_id}.upload"
        expected = int(declared) if declared and declared.isdigit() else 0

        async def progress(received: int) -> None:
            if expected:
                await u.sessions.update(s, progress=progress_in("uploading", received / expected))

        try:
            async with contextlib.aclosing(u.quota.meter(who, request.stream())) as body:
                got = await receive_upload(
                    body, request.headers.get("content-type"), path, u.max_upload, progress
                )
            title = got.fields.get("title", "").strip()
            if not got.has_file:
                raise ApiError(400, "missing form field 'video' (the video file)")
            if "title" not in got.fields:
                raise ApiError(400, "missing form field 'title'")
            if not title or len(title) > MAX_TITLE:
                raise ApiError(400, f"title must be 1 to {MAX_TITLE} characters")
            mode = got.fields.get("redundancy_mode") or None
            if mode is not None and mode not in MODES:
                raise ApiError(400, f"redundancy_mode must be one of {', '.join(MODES)}")
            s.title, s.filename = title, got.filename or "video"
            known = u.probe.fresh()
            if known is not None and known.metadata_unusable:  # do not send a create it may run later
                raise MetadataError(0, f"{known.reasons[0]}; try again later", timed_out=True)
            await u.pipeline.check_and_register(s, path, mode)
        except ClientDisconnect:
            await _abandon(u, s, path, "the client disconnected during the upload")
            raise ApiError(400, "the client disconnected before the whole body arrived") from None
        except InvalidVideo as exc:
            await _abandon(u, s, path, str(exc))
            raise ApiError(400, str(exc)) from None
        except ApiError as exc:
            await _abandon(u, s, path, exc.message)
            raise
        except MetadataError as exc:
            await _abandon(u, s, path, str(exc))
            raise ApiError(503 if exc.status in (0,) or exc.status >= 500 else 502, str(exc)) from None
        except MediaToolError as exc:
            await _abandon(u, s, path, str(exc))
            raise ApiError(503, str(exc)) from None
        except BaseException:
            await _abandon(u, s, path, "internal error while receiving the upload")
            raise
        assert s.video_id is not None
        u.spawn(u.pipeline.process(s, path))
        return UploadAccepted(
            video_id=s.video_id,
            upload_session_id=s.upload_session_id,
            title=s.title,
            status="processing",
            message="Video upload received and processing started",
            status_url=f"/upload/status/{s.upload_session_id}",
        )

    @api.get(
        "/upload/status/{upload_session_id}",
        response=UploadStatus,
        summary="Progress and status of an upload",
        extra_responses={404: "no such upload session"},
    )
    async def status(request: Any, upload_session_id: str) -> dict:
        s = await u.sessions.get(upload_session_id)
        if s is None:
            raise ApiError(404, f"upload session {upload_session_id} not found")
        return s.public()

    return api


async def _abandon(u: Uploader, s: Any, path: Path, reason: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    with contextlib.suppress(Exception):
        await u.sessions.finish(s, reason)


def create_app(options: dict[str, Any]) -> Any:
    for name in ("metadata_timeout", "metadata_health_timeout"):
        _positive(options, name, 1.0)  # refuse a bad flag before serving
    u = Uploader(options)

    @asynccontextmanager
    async def lifespan(app: Any):
        await u.start()
        try:
            yield
        finally:
            await u.stop()

    layer = AuthLayer.from_options(options, DETAIL_ENVELOPE)
    app = build_app(
        title=TITLE,
        apis=layer.secure([make_api(u)], policy),
        envelope=DETAIL_ENVELOPE,
        lifespan=lifespan,
        state={"uploader": u},
    )
    return layer.wrap(app)
