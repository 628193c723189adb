"""`shoal serve compute`: the Unified Compute API over HTTP (spec/compute-api.md).

Credentials (issue #19, docs/security.md): with `--auth-dir D` the shared auth layer
(shoal.web.auth) checks API keys and tokens: viewers read (lists, get, usage, status, logs),
operators change (create, lifecycle, update, delete, exec, snapshots). The older `--token`
(repeatable) / `--tokens-file` still work: such a token counts as an operator. With neither,
one token is generated at first start into DATA_DIR/token (mode 0600), so compute never runs
open by accident. /health, /openapi.json and /metrics stay open.

Host access (a host path in `volumes`, `networkMode: host`, `privileged`, `capAdd`, `devices`)
is refused with 403 unless allowed by `--allow-host-path PREFIX`, `--allow-host-network`,
`--allow-privileged`, `--allow-device PATH` (compute/access.py); `shoal.*` labels are reserved.

The registry of instances lives in shoal.kv: `--store lmdb` (default, DATA_DIR/registry.lmdb)
or `sqlite` for one host, or `--store etcd --etcd URL[,URL]` so that compute services on
several hosts (each with its own dockerd and libvirt) share one registry: names unique across
all of them, every instance listed everywhere, and each instance acted on only by the node
that owns it (`--node-id`, by default generated once into DATA_DIR/node-id).

/health probes both daemons at once (`--backend-timeout`, 2 s) and says `degraded`, with a
reason per backend, when one does not answer; it stays a 200 then, because `shoal up` restarts a
service whose /health fails, and restarting compute cannot fix a hung dockerd.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import re
import secrets
import socket
from collections.abc import Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from shoal import __version__
from shoal.compute.access import HostAccess
from shoal.compute.backends.docker import DockerBackend
from shoal.compute.backends.kvm import KvmBackend
from shoal.compute.errors import ComputeError, OperationNotSupported, RegistryUnavailable, ValidationFailed
from shoal.compute.health import DEFAULT_TIMEOUT
from shoal.compute.manager import ComputeManager, check_backend, check_strings
from shoal.compute.metrics import DEFAULT_TTL, InstanceMetrics
from shoal.compute.models import (
    STOP_BODY_SCHEMA,
    BackendInfo,
    ClusterStatus,
    CreateInstance,
    CreateSnapshot,
    DeleteQuery,
    EventsQuery,
    ExecRequest,
    ExecResult,
    Instance,
    InstanceList,
    ListQuery,
    LogsQuery,
    Snapshot,
    SnapshotList,
    StopRequest,
    UpdateInstance,
    Usage,
    WaitQuery,
)
from shoal.compute.nodes import NodeClaim, NodeIdInUse
from shoal.compute.registry import InstanceRegistry
from shoal.kv import StoreBusy, add_store_arguments, open_store
from shoal.web import COMPUTE_ENVELOPE, Api, ApiError, JSONResponse, read_body
from shoal.web import create_app as build
from shoal.web.auth import (
    OPERATOR,
    PRINCIPAL,
    VIEWER,
    AuthLayer,
    Principal,
    add_auth_arguments,
    by_method,
    check_startup,
)
from shoal.web.auth.middleware import SECURITY_SCHEMES, document
from shoal.web.auth.roles import AuthError
from shoal.web.fastpath import respond_error

TITLE = "Unified Compute API"
MAX_WORKERS = 1  # per-instance locks live in this process (names are claimed in the store)
NODE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
PREFIX = "/api/v1/compute"
MAX_BODY = 256 * 1024
RECOVER_TIMEOUT = 60.0
log = logging.getLogger("shoal.compute")


def add_arguments(parser: Any) -> None:
    parser.add_argument(
        "--docker-host",
        default=os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock"),
        help="dockerd address (unix:///path/docker.sock); default $DOCKER_HOST or the system socket",
    )
    parser.add_argument("--libvirt-uri", default="qemu:///system", help="libvirt connection URI")
    parser.add_argument(
        "--kvm-templates", default=None, help="VM template images (default DATA_DIR/templates)"
    )
    parser.add_argument(
        "--kvm-domain-type", default="qemu", choices=["qemu", "kvm"], help="libvirt domain type (qemu = TCG)"
    )
    parser.add_argument(
        "--token",
        action="append",
        default=[],
        help="an accepted bearer token, with the operator role (repeatable; older than --auth-dir)",
    )
    parser.add_argument(
        "--tokens-file", default=None, help="file of accepted bearer tokens (operator role), one a line"
    )
    add_auth_arguments(parser)  # --auth-dir, --insecure-dev, --rate-limit-ip/-key, --token-ttl
    parser.add_argument(
        "--allow-host-path",
        action="append",
        default=[],
        metavar="PREFIX",
        help="let containers bind-mount host paths under PREFIX (repeatable; default: none)",
    )
    parser.add_argument(
        "--allow-host-network", action="store_true", help="let containers use networkMode host"
    )
    parser.add_argument(
        "--allow-privileged", action="store_true", help="let containers be privileged or add capabilities"
    )
    parser.add_argument(
        "--allow-device",
        action="append",
        default=[],
        metavar="PATH",
        help="let containers use this host device (repeatable; default: none)",
    )
    add_store_arguments(parser)  # --store lmdb|sqlite|etcd, --etcd URL[,URL], --etcd-namespace
    parser.add_argument(
        "--node-id",
        default=None,
        help="this compute node's name in a shared registry (default: generated once into DATA_DIR/node-id); "
        "distinct for every node on one etcd namespace",
    )
    parser.add_argument(
        "--advertise-url",
        default=None,
        help="this node's Compute API URL as others should call it (shown to other nodes' clients)",
    )
    parser.add_argument(
        "--backend-timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        help="seconds a daemon (dockerd, libvirtd) may leave a probe unanswered before it counts as "
        "hung: /health says degraded, lists show the other backend, calls on it answer 503",
    )
    parser.add_argument(
        "--metrics-ttl",
        type=float,
        default=DEFAULT_TTL,
        help="seconds one per-instance sample (CPU, memory, state) serves /metrics before the daemons "
        "are asked again",
    )
    parser.add_argument(
        "--node-claim-ttl",
        type=float,
        default=30.0,
        help="seconds a node's claim on its id stays live without renewal (renewed every third of it)",
    )


def check_options(options: dict[str, Any]) -> None:
    """Refuse bad flag combinations before a worker starts (SystemExit with the reason)."""
    if options.get("store") == "etcd" and not options.get("etcd"):
        raise SystemExit("--store etcd needs --etcd http://host:2379[,http://host2:2379...]")
    node_id = options.get("node_id")
    if node_id is not None and not NODE_ID.match(node_id):
        raise SystemExit(f"--node-id {node_id!r}: 1-63 letters, digits, '_', '.', '-'")
    ttl = options.get("node_claim_ttl") or 30.0
    if not 0.3 <= ttl <= 86400:  # also refuses NaN
        raise SystemExit(f"--node-claim-ttl {ttl}: between 0.3 and 86400 seconds")
    timeout = options.get("backend_timeout") or DEFAULT_TIMEOUT
    if not 0.05 <= timeout <= 60:
        raise SystemExit(f"--backend-timeout {timeout}: between 0.05 and 60 seconds")
    metrics_ttl = options.get("metrics_ttl")
    if metrics_ttl is not None and not 0.1 <= metrics_ttl <= 3600:
        raise SystemExit(f"--metrics-ttl {metrics_ttl}: between 0.1 and 3600 seconds")
    for prefix in options.get("allow_host_path") or []:
        if not prefix.startswith("/") or "\x00" in prefix:
            raise SystemExit(f"--allow-host-path {prefix!r}: an absolute path")
    for device in options.get("allow_device") or []:
        if not device.startswith("/") or "\x00" in device:
            raise SystemExit(f"--allow-device {device!r}: an absolute path")
    # compute is never open: without --auth-dir it has tokens (given or generated), so the
    # "non-loopback without credentials" refusal of check_startup does not apply to it
    check_startup({**options, "host": "127.0.0.1"} if not options.get("auth_dir") else options, "compute")


def node_identity(options: dict[str, Any], data_dir: Path) -> dict[str, Any]:
    """Who owns the instances this process creates: --node-id, or an id kept in DATA_DIR/node-id.

    Kept in the data dir so that a restarted process (same data dir) is the same node and keeps
    acting on its instances; a second process with its own data dir is a different node.
    """
    node_id = options.get("node_id")
    if not node_id:
        path = data_dir / "node-id"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            pass
        else:
            host = re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname())[:40] or "node"
            with os.fdopen(fd, "w") as fh:
                fh.write(f"{host}-{secrets.token_hex(4)}\n")
                fh.flush()
                os.fsync(fh.fileno())
        node_id = path.read_text().strip()
        if not NODE_ID.match(node_id):
            raise SystemExit(f"{path}: {node_id!r} is not a node id (letters, digits, '_', '.', '-')")
    return {"id": node_id, "hostname": socket.gethostname(), "url": options.get("advertise_url")}


def load_tokens(options: dict[str, Any], data_dir: Path) -> list[str]:
    tokens = [t for t in options.get("token") or [] if t]
    path = options.get("tokens_file")
    if path:
        for line in Path(path).read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                tokens.append(line)
    if tokens:
        return tokens
    token_file = data_dir / "token"
    if not token_file.exists():
        fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(32) + "\n")
        log.warning("no --token given: generated one in %s", token_file)
    return [token_file.read_text().strip()]


def _api_error(exc: ComputeError) -> ApiError:
    return ApiError(exc.status, exc.message, code=exc.code, details=exc.details)


ASYNC_DOC = " Add `?async=1` or `Prefer: respond-async` for a 202 with an operation (GET /operations/{id})."
SSE_KEEPALIVE = 15.0


def wants_async(request: Request) -> bool:
    """`?async=1` or `Prefer: respond-async` (RFC 7240): answer 202 with an operation."""
    if request.query_params.get("async", "").lower() in ("1", "true", "yes"):
        return True
    return "respond-async" in request.headers.get("prefer", "").lower()


def make_api(get_manager: Callable[[], ComputeManager]) -> Api:
    api = Api(tags=["compute"])

    async def maybe_async(
        request: Request, action: str, instance_id: str | None, run: Callable[[], Any]
    ) -> Any:
        """Run `run()` now (the spec's synchronous form) or as an operation answered with 202."""
        if not wants_async(request):
            return await call(run())
        manager = get_manager()
        if instance_id is not None:
            await call(manager.local_record(instance_id, action))  # 404/409 now, not in the operation
        op = manager.operations.start(action, instance_id, run)
        return JSONResponse(op.view(), status_code=202, headers={"Location": f"{PREFIX}/operations/{op.id}"})

    async def call(coro: Any) -> Any:
        try:
            return await coro
        except ComputeError as exc:
            raise _api_error(exc) from None
        except StoreBusy as exc:  # etcd unreachable (StoreUnavailable) or a local store held too long
            err = RegistryUnavailable("the instance registry is not available", {"reason": str(exc)})
            raise _api_error(err) from None

    @api.get(f"{PREFIX}/instances", query=ListQuery, response=InstanceList, summary="List compute instances")
    async def list_instances(request: Request, query: ListQuery) -> InstanceList:
        return await call(get_manager().list(query))

    @api.post(
        f"{PREFIX}/instances",
        body=CreateInstance,
        response=Instance,
        status=201,
        summary="Create a compute instance",
        description="Either completes or leaves nothing." + ASYNC_DOC,
        extra_responses={202: "accepted: an operation (Location header)"},
    )
    async def create_instance(request: Request, body: CreateInstance) -> Any:
        return await maybe_async(request, "create", None, lambda: get_manager().create(body))

    @api.get(f"{PREFIX}/instances/name/{{name}}", response=Instance, summary="Get an instance by name")
    async def get_by_name(request: Request, name: str) -> Instance:
        return await call(get_manager().get_by_name(name))

    @api.get(f"{PREFIX}/instances/{{instance_id}}", response=Instance, summary="Get a compute instance")
    async def get_instance(request: Request, instance_id: str) -> Instance:
        return await call(get_manager().get(instance_id))

    @api.put(
        f"{PREFIX}/instances/{{instance_id}}",
        body=UpdateInstance,
        response=Instance,
        summary="Update an instance's resources (live where the backend can) and labels",
    )
    async def update_instance(request: Request, instance_id: str, body: UpdateInstance) -> Instance:
        return await call(get_manager().update(instance_id, body))

    @api.delete(
        f"{PREFIX}/instances/{{instance_id}}",
        query=DeleteQuery,
        status=204,
        summary="Delete an instance (a running one only with force=true)",
        timeout=None,
    )
    async def delete_instance(request: Request, instance_id: str, query: DeleteQuery) -> Response:
        async def run() -> None:
            await get_manager().delete(instance_id, query.force)

        result = await maybe_async(request, "delete", instance_id, run)
        return result if isinstance(result, Response) else Response(status_code=204)

    stop_doc = {
        "requestBody": {"required": False, "content": {"application/json": {"schema": STOP_BODY_SCHEMA}}}
    }

    async def stop_body(request: Request) -> StopRequest:
        raw = await read_body(request, MAX_BODY)
        if not raw.strip():
            return StopRequest()
        try:
            return msgspec.json.decode(raw, type=StopRequest)
        except msgspec.ValidationError as exc:
            raise _api_error(ValidationFailed(f"invalid body: {exc}")) from None
        except msgspec.DecodeError as exc:
            raise _api_error(ValidationFailed(f"request body is not valid JSON: {exc}")) from None

    @api.put(
        f"{PREFIX}/instances/{{instance_id}}/start",
        response=Instance,
        summary="Start an instance",
        timeout=None,
    )
    async def start(request: Request, instance_id: str) -> Any:
        return await maybe_async(request, "start", instance_id, lambda: get_manager().start(instance_id))

    @api.put(
        f"{PREFIX}/instances/{{instance_id}}/stop",
        response=Instance,
        summary="Stop an instance: graceful for `timeout` seconds, then forced",
        timeout=None,
        openapi_extra=stop_doc,
    )
    async def stop(request: Request, instance_id: str) -> Any:
        body = await stop_body(request)
        return await maybe_async(
            request, "stop", instance_id, lambda: get_manager().stop(instance_id, body.force, body.timeout)
        )

    @api.put(
        f"{PREFIX}/instances/{{instance_id}}/restart",
        response=Instance,
        summary="Restart an instance (same optional body as stop)",
        timeout=None,
        openapi_extra=stop_doc,
    )
    async def restart(request: Request, instance_id: str) -> Any:
        body = await stop_body(request)
        return await maybe_async(
            request,
            "restart",
            instance_id,
            lambda: get_manager().restart(instance_id, body.force, body.timeout),
        )

    @api.put(
        f"{PREFIX}/instances/{{instance_id}}/pause", response=Instance, summary="Pause (freeze) an instance"
    )
    async def pause(request: Request, instance_id: str) -> Instance:
        return await call(get_manager().pause(instance_id))

    @api.put(f"{PREFIX}/instances/{{instance_id}}/unpause", response=Instance, summary="Unpause an instance")
    async def unpause(request: Request, instance_id: str) -> Instance:
        return await call(get_manager().unpause(instance_id))

    @api.get(
        f"{PREFIX}/instances/{{instance_id}}/usage", response=Usage, summary="Resource usage, sampled now"
    )
    async def usage(request: Request, instance_id: str) -> Usage:
        return await call(get_manager().usage(instance_id))

    @api.get(
        f"{PREFIX}/instances/{{instance_id}}/logs",
        query=LogsQuery,
        summary="Logs: docker logs of a container, the serial console of a VM (text/plain; follow streams)",
        media_type="text/plain",
    )
    async def logs(request: Request, instance_id: str, query: LogsQuery) -> Response:
        chunks = await call(get_manager().logs(instance_id, query.tail, query.follow))

        async def body() -> Any:
            try:
                async for chunk in chunks:
                    yield chunk
            except ComputeError:  # the daemon went away mid-stream: end it
                return

        return StreamingResponse(body(), media_type="text/plain; charset=utf-8")

    @api.post(
        f"{PREFIX}/instances/{{instance_id}}/exec",
        body=ExecRequest,
        response=ExecResult,
        summary="Run a command in a running container; answers its exit code and output",
        timeout=None,
    )
    async def exec_command(request: Request, instance_id: str, body: ExecRequest) -> ExecResult:
        out = await call(get_manager().exec(instance_id, list(body.command), body.timeout))
        return ExecResult(exit_code=out["exitCode"], stdout=out["stdout"], stderr=out["stderr"])

    snap_path = f"{PREFIX}/instances/{{instance_id}}/snapshots"

    @api.get(snap_path, response=SnapshotList, summary="An instance's snapshots, oldest first")
    async def list_snapshots(request: Request, instance_id: str) -> SnapshotList:
        return await call(get_manager().snapshots(instance_id))

    @api.post(
        snap_path,
        body=CreateSnapshot,
        response=Snapshot,
        status=201,
        summary="Snapshot an instance: a container's filesystem (docker commit), a VM's disk "
        "(and memory when it runs)",
        description="See docs/compute.md (Snapshots) for what a restore brings back." + ASYNC_DOC,
        extra_responses={202: "accepted: an operation (Location header)"},
        timeout=None,
    )
    async def create_snapshot(request: Request, instance_id: str, body: CreateSnapshot) -> Any:
        return await maybe_async(
            request, "snapshot", instance_id, lambda: get_manager().snapshot(instance_id, body.name)
        )

    @api.post(
        snap_path + "/{name}/restore",
        response=Instance,
        summary="Restore an instance to a snapshot (same id, name and config)",
        description=ASYNC_DOC.strip(),
        extra_responses={202: "accepted: an operation (Location header)"},
        timeout=None,
    )
    async def restore_snapshot(request: Request, instance_id: str, name: str) -> Any:
        return await maybe_async(
            request, "restore", instance_id, lambda: get_manager().restore(instance_id, name)
        )

    @api.delete(snap_path + "/{name}", status=204, summary="Delete a snapshot", timeout=None)
    async def delete_snapshot(request: Request, instance_id: str, name: str) -> Response:
        async def run() -> None:
            await get_manager().delete_snapshot(instance_id, name)

        result = await maybe_async(request, "delete-snapshot", instance_id, run)
        return result if isinstance(result, Response) else Response(status_code=204)

    @api.get(
        f"{PREFIX}/cluster/status",
        response=ClusterStatus,
        summary="Both backends: health, instances, capacity",
    )
    async def cluster_status(request: Request) -> ClusterStatus:
        return await call(get_manager().cluster_status())

    @api.get(
        f"{PREFIX}/backends/{{backend}}/info",
        response=BackendInfo,
        summary="One backend's version and health",
    )
    async def backend_info(request: Request, backend: str) -> BackendInfo:
        try:
            check_backend(backend)
        except ComputeError as exc:
            raise _api_error(exc) from None
        return await call(get_manager().backend_info(backend))

    def operation(op_id: str) -> Any:
        op = get_manager().operations.get(op_id) if len(op_id) <= 64 else None
        if op is None:
            raise ApiError(
                404,
                f"operation {op_id[:64]!r} not found",
                code="OPERATION_NOT_FOUND",
                details={"id": op_id[:64]},
            )
        return op

    @api.get(
        f"{PREFIX}/operations", summary="Operations of this node (running, and finished in the last 5 min)"
    )
    async def list_operations(request: Request) -> dict:
        return {"operations": [op.view() for op in get_manager().operations.all()]}

    @api.get(
        f"{PREFIX}/operations/{{op_id}}",
        query=WaitQuery,
        summary="One operation; `?timeout=S` waits up to S seconds for it to finish",
        timeout=None,
    )
    async def get_operation(request: Request, op_id: str, query: WaitQuery) -> dict:
        op = operation(op_id)
        return (await get_manager().operations.wait(op, query.timeout)).view()

    @api.delete(f"{PREFIX}/operations/{{op_id}}", summary="Cancel a running operation", timeout=None)
    async def cancel_operation(request: Request, op_id: str) -> dict:
        op = operation(op_id)
        if op.status != "running":
            raise ApiError(
                409,
                f"operation {op.id} is already {op.status}",
                code="OPERATION_NOT_SUPPORTED",
                details={"id": op.id, "status": op.status},
            )
        return (await get_manager().operations.cancel(op)).view()

    @api.get(
        f"{PREFIX}/events",
        query=EventsQuery,
        summary="Server-sent events: instance lifecycle and operations (text/event-stream)",
        media_type="text/event-stream",
    )
    async def events(request: Request, query: EventsQuery) -> Response:
        wanted = {t.strip() for t in (query.type or "lifecycle,operation").split(",") if t.strip()}
        bus = get_manager().events

        async def stream() -> Any:
            async with bus.subscribe() as queue:
                yield b": connected\n\n"
                while True:
                    try:
                        event = await asyncio.wait_for(queue.get(), SSE_KEEPALIVE)
                    except TimeoutError:
                        yield b": keepalive\n\n"
                        continue
                    if event["type"] in wanted or event["type"] == "overflow":
                        data = msgspec.json.encode(event)
                        yield b"event: " + event["type"].encode() + b"\ndata: " + data + b"\n\n"

        return StreamingResponse(
            stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )

    return api


# ---- exec as a WebSocket (docs/compute.md, "Interactive exec") -------------------------------
# GET /api/v1/compute/instances/{id}/exec/ws?command=ARG&command=ARG[&timeout=S]
# in: text or binary frames -> stdin (an empty frame closes stdin); out: binary frames, first
# byte 1 = stdout, 2 = stderr, then the data; last: a text frame {"type": "exit", "exitCode": N}
# and close 1000. A refusal is a text frame {"type": "error", "error": {code, message, details}}
# and close 4000 + the HTTP status the POST would answer (4401, 4403, 4404, 4409, 4503, 4504).

EXEC_WS_PATH = f"{PREFIX}/instances/{{instance_id}}/exec/ws"
EXEC_WS_TIMEOUT = 3600.0
STDOUT, STDERR = 1, 2


async def refuse_ws(ws: WebSocket, status: int, code: str, message: str, details: dict | None = None) -> None:
    """Accept only to say why: a close before accept is a bare 403 that no client can explain."""
    if ws.client_state.name == "CONNECTING":
        await ws.accept()
    body = {"type": "error", "error": {"code": code, "message": message, "details": details or {}}}
    try:
        await ws.send_text(msgspec.json.encode(body).decode())
        await ws.close(4000 + status, message.encode()[:120].decode(errors="ignore"))
    except (WebSocketDisconnect, RuntimeError, OSError):  # the client left first
        pass


def exec_ws_request(ws: WebSocket) -> ExecRequest:
    """The query as the POST's body: `command` repeated (one argv element each), `timeout`."""
    params = ws.query_params
    raw: dict[str, Any] = {"command": params.getlist("command")}
    unknown = sorted(set(params.keys()) - {"command", "timeout"})
    if unknown:
        raise ValidationFailed(f"unknown query parameter {unknown[0]!r}", {"field": unknown[0]})
    if "timeout" in params:
        raw["timeout"] = params["timeout"]
    else:
        raw["timeout"] = EXEC_WS_TIMEOUT
    try:
        req = msgspec.convert(raw, ExecRequest, strict=False)
    except msgspec.ValidationError as exc:
        raise ValidationFailed(f"invalid query: {exc}") from None
    if req.timeout != req.timeout:  # NaN
        raise ValidationFailed("timeout must be a number of seconds", {"field": "timeout"})
    check_strings(list(req.command), "command")
    return req


def make_exec_ws(get_manager: Callable[[], ComputeManager]) -> Callable[[WebSocket], Any]:
    async def exec_ws(ws: WebSocket) -> None:
        """Attach a TTY-less docker exec to this WebSocket (the caller is already an operator)."""
        instance_id = ws.path_params["instance_id"]
        manager = get_manager()
        try:
            req = exec_ws_request(ws)
            record = await manager.local_record(instance_id, "exec")
            name = record["backend"]
            if name != "docker":
                raise OperationNotSupported(
                    "exec is for containers; a VM's console is its serial log (GET .../logs)",
                    {"backend": name, "operation": "exec"},
                )
            seen = await manager._observe_live(record)
            manager._require_present(seen, "exec in")
            if seen.state != "running":
                raise manager._conflict(seen, "exec in")
            backend = manager.backends[name]
            session = await manager.call(name, backend.exec_attach(record["backendId"], list(req.command)))  # type: ignore[attr-defined]
        except ComputeError as exc:
            await refuse_ws(ws, exc.status, exc.code, exc.message, exc.details)
            return
        except StoreBusy as exc:
            await refuse_ws(
                ws,
                503,
                "REGISTRY_UNAVAILABLE",
                "the instance registry is not available",
                {"reason": str(exc)},
            )
            return
        await ws.accept()
        try:
            await pump(ws, session, req.timeout)
        finally:
            await session.close()

    return exec_ws


async def pump(ws: WebSocket, session: Any, timeout: float) -> None:
    """Frames to stdin and output to frames until the output ends, the client leaves or time is up."""

    async def to_stdin() -> None:
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            data = message.get("bytes")
            if data is None:
                data = (message.get("text") or "").encode()
            if data:
                await session.write(data)
            else:
                session.close_stdin()

    async def to_frames() -> None:
        while (chunk := await session.read()) is not None:
            stream, data = chunk
            await ws.send_bytes(bytes([STDERR if stream == 2 else STDOUT]) + data)

    reader = asyncio.create_task(to_stdin())
    writer = asyncio.create_task(to_frames())
    try:
        done, _ = await asyncio.wait({reader, writer}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if not done:
            await refuse_ws(
                ws,
                504,
                "BACKEND_ERROR",
                f"the command did not finish within {timeout:g} s",
                {"timeout": timeout},
            )
            return
        if writer in done:
            exc = writer.exception()
            if exc is not None:
                if isinstance(exc, ComputeError):
                    await refuse_ws(ws, exc.status, exc.code, exc.message, exc.details)
                    return
                if isinstance(exc, WebSocketDisconnect | OSError):
                    return
                raise exc
            code = await session.exit_code()
            await ws.send_text(msgspec.json.encode({"type": "exit", "exitCode": code}).decode())
            await ws.close(1000)
            return
        exc = reader.exception()  # the client left (or stdin broke): nothing more to send
        if isinstance(exc, ComputeError):
            await refuse_ws(ws, exc.status, exc.code, exc.message, exc.details)
    except (WebSocketDisconnect, RuntimeError, OSError):  # the client went away mid-send
        return
    finally:
        for task in (reader, writer):
            task.cancel()
        await asyncio.gather(reader, writer, return_exceptions=True)


def make_health_api(get_manager: Callable[[], ComputeManager]) -> Api:
    """GET /health: open, and answered within the backend timeout whatever the daemons do."""
    api = Api(tags=["service"])

    @api.get("/health", summary="Service health: healthy, or degraded naming each silent backend")
    async def health(request: Request) -> dict:
        states = await get_manager().backends_health()
        backends: dict[str, dict[str, str]] = {}
        reasons = []
        for name, state in states.items():
            if state.ok:
                backends[name] = {"status": "healthy"}
            else:
                reason = f"{name}: {state.reason}"
                backends[name] = {"status": "unavailable", "reason": reason}
                reasons.append(reason)
        # degraded is still a 200: a liveness probe must not restart compute for a hung daemon
        return {
            "status": "degraded" if reasons else "healthy",
            "service": TITLE,
            "version": __version__,
            "backends": backends,
            "reasons": reasons,
        }

    return api


_BY_METHOD = by_method(read=VIEWER, write=OPERATOR)


def POLICY(ep: Any) -> Any:
    """Viewers read, operators change; /health (and what is not under /api/) stays open."""
    return _BY_METHOD(ep) if ep.path.startswith("/api/") else None


LEGACY = Principal("key", "token", "operator", name="--token", via="key")


def _route_path(scope: dict) -> str:
    """The path the app routes on: without the root path a server may have put in front."""
    path, root = scope["path"], scope.get("root_path") or ""
    return path[len(root) :] or "/" if root and path.startswith(root) else path


class ComputeAuth:
    """ASGI gate: /api/ needs a credential (deny by default, declared route or not); the rest is open.

    A `--token` is checked here and acts as an operator; anything else goes to the shared auth
    layer (API keys, tokens, rate limits, roles per route), or is a 401 without --auth-dir.
    Deny-by-default keeps the API closed however the app is mounted (a root path or a proxy
    prefix cannot make a route look public).
    """

    def __init__(
        self,
        app: Any,
        layer: AuthLayer,
        tokens: list[str],
        before_metrics: Callable[[], Any] | None = None,
    ) -> None:
        self.app = app
        self.layer = layer
        self.guarded = layer.wrap(app)
        self.tokens = [t.encode() for t in tokens]
        layer.static_bearers = [(t, LEGACY) for t in tokens]  # under --auth-dir: same limits as keys
        self.before_metrics = before_metrics  # refreshes the per-instance sample (compute/metrics.py)

    def __getattr__(self, name: str) -> Any:  # .state, .openapi, ... of the wrapped app
        if name in ("app", "guarded"):
            raise AttributeError(name)
        return getattr(self.app, name)

    def legacy(self, scope: dict) -> bool | None:
        """True: a --token; False: another bearer credential; None: no Authorization header."""
        for key, value in scope.get("headers") or []:
            if key == b"authorization":
                scheme, _, token = value.partition(b" ")
                token = token.strip()
                ok = scheme.lower() == b"bearer" and any(hmac.compare_digest(token, t) for t in self.tokens)
                return ok
        return None

    async def websocket(self, scope: dict, receive: Callable, send: Callable) -> None:
        """A WebSocket under /api/ (exec): an operator's bearer credential, checked before accept.

        The shared middleware gates http scopes only, so the same checks are made here: a
        --token, or (with --auth-dir) the layer's `authenticate`, its per-key limit and the
        operator role. Refused: close 4401 (no or bad credential), 4403 (role), 4429 (limit),
        after a text frame with the error (docs/compute.md).
        """
        ws = WebSocket(scope, receive, send)
        if self.tokens and not self.layer.enabled:
            if self.legacy(scope):
                scope[PRINCIPAL] = LEGACY
                await self.app(scope, receive, send)
                return
            await refuse_ws(
                ws, 401, "UNAUTHORIZED", "missing or wrong bearer token (Authorization: Bearer <token>)"
            )
            return
        if not self.layer.enabled:
            await refuse_ws(ws, 401, "UNAUTHORIZED", "no credentials are configured")
            return
        # only the bearer header: node signatures cover an http request's body, not a stream
        auth = [(k, v) for k, v in scope.get("headers") or [] if k == b"authorization"]
        try:
            p, _ = await self.layer.authenticate({**scope, "method": "GET", "headers": auth}, receive)
        except AuthError as exc:
            code = {401: "UNAUTHORIZED", 503: "SERVICE_UNAVAILABLE"}.get(exc.status, "UNAUTHORIZED")
            await refuse_ws(ws, exc.status, code, exc.message)
            return
        wait = self.layer.key_limiter.take(p.id) if not p.is_node else 0
        if wait:
            await refuse_ws(ws, 429, "TOO_MANY_REQUESTS", f"rate limit exceeded for API key {p.id}")
            return
        if not OPERATOR.allows(p):
            message = f"exec needs {OPERATOR.describe()}; {p.kind} {p.id} has role {p.role}"
            await refuse_ws(ws, 403, "FORBIDDEN", message)
            return
        scope[PRINCIPAL] = p
        await self.app(scope, receive, send)

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "websocket" and _route_path(scope).startswith("/api/"):
            await self.websocket(scope, receive, send)
            return
        if scope["type"] != "http" or not _route_path(scope).startswith("/api/"):
            if (
                self.before_metrics is not None
                and scope["type"] == "http"
                and _route_path(scope) == "/metrics"
            ):
                await self.before_metrics()  # bounded by the backend timeout
            await self.guarded(scope, receive, send)
            return
        if self.tokens and not self.layer.enabled and self.legacy(scope):
            scope[PRINCIPAL] = LEGACY
            await self.app(scope, receive, send)
            return
        if self.layer.enabled:
            if self.layer.requirement(scope["method"], scope["path"])[0]:
                await self.guarded(scope, receive, send)
                return
            # not a route the layer knows (a 404, or mounted under a prefix it does not see):
            # fail closed, an operator credential or nothing
            try:
                p, receive = await self.layer.authenticate(scope, receive)
            except AuthError as exc:
                code = {401: "UNAUTHORIZED"}.get(exc.status)
                await respond_error(
                    send, COMPUTE_ENVELOPE, ApiError(exc.status, exc.message, code, headers=exc.headers)
                )
                return
            if not OPERATOR.allows(p):
                message = f"this path needs {OPERATOR.describe()}; {p.kind} {p.id} has role {p.role}"
                await respond_error(send, COMPUTE_ENVELOPE, ApiError(403, message, "FORBIDDEN"))
                return
            scope[PRINCIPAL] = p
            await self.app(scope, receive, send)
            return
        body = {
            "error": {
                "code": "UNAUTHORIZED",
                "message": "missing or wrong bearer token (Authorization: Bearer <token>)",
                "details": {},
            }
        }
        response = JSONResponse(
            body, status_code=401, headers={"WWW-Authenticate": 'Bearer realm="shoal-compute"'}
        )
        await response(scope, receive, send)


def create_app(options: dict[str, Any]) -> Any:
    check_options(options)
    data_dir = Path(options["data_dir"])
    data_dir.mkdir(parents=True, exist_ok=True)
    layer = AuthLayer.from_options(options, COMPUTE_ENVELOPE)
    # --token / --tokens-file; a generated token only when there is no other credential
    tokens = load_tokens(options, data_dir) if not layer.enabled or _has_tokens(options) else []
    access = HostAccess.from_options(options)
    node = node_identity(options, data_dir)
    docker_host = options.get("docker_host") or "unix:///var/run/docker.sock"
    libvirt_uri = options.get("libvirt_uri") or "qemu:///system"
    holder: dict[str, ComputeManager] = {}

    def get_manager() -> ComputeManager:
        return holder["manager"]

    instance_metrics = InstanceMetrics(get_manager, float(options.get("metrics_ttl") or DEFAULT_TTL))

    @asynccontextmanager
    async def lifespan(app: Any) -> Any:
        store = await open_store(
            options.get("store") or "lmdb",
            data_dir,
            options.get("etcd"),
            name="compute",  # the etcd namespace unless --etcd-namespace
            namespace=options.get("etcd_namespace"),
            files={"lmdb": "registry.lmdb", "sqlite": "registry.db"},
        )
        ttl = float(options.get("node_claim_ttl") or 30.0)
        claim = NodeClaim(store, node["id"], data_dir, node.get("url"), ttl=ttl, interval=ttl / 3)
        try:
            await claim.claim()  # refuses to start as a node id another live host holds
            registry = await InstanceRegistry(store).load()
        except NodeIdInUse as exc:
            await store.close()
            log.error("%s", exc)
            raise SystemExit(f"shoal serve compute: {exc}") from None
        except BaseException:
            await claim.release()
            await store.close()
            raise
        backends = {
            "docker": DockerBackend(docker_host),
            "kvm": KvmBackend(
                libvirt_uri,
                data_dir / "kvm",
                options.get("kvm_templates"),
                options.get("kvm_domain_type") or "qemu",
            ),
        }
        endpoints = {"docker": docker_host, "kvm": libvirt_uri}
        holder["manager"] = ComputeManager(
            registry,
            backends,  # type: ignore[arg-type]
            node,
            endpoints,
            claim,
            backend_timeout=float(options.get("backend_timeout") or DEFAULT_TIMEOUT),
            access=access,
        )
        try:
            async with asyncio.timeout(RECOVER_TIMEOUT):  # a hung daemon must not hold the start
                await holder["manager"].recover()  # creates a crash interrupted: rolled back
        except TimeoutError:
            log.warning(
                "recovery of interrupted creates took over %g s; left for the next start", RECOVER_TIMEOUT
            )
        try:
            yield
        finally:
            await instance_metrics.close()
            await holder.pop("manager").close()
            await claim.release()
            await store.close()

    apis = [make_api(get_manager), make_health_api(get_manager)]
    if layer.enabled:
        apis = layer.secure(apis, POLICY)  # records each route's role and documents it
    else:
        for api in apis:  # tokens only: every /api/ route needs one (an operator), documented alike
            for ep in api.endpoints:
                if ep.path.startswith("/api/"):
                    document(ep, OPERATOR)
    app = build(
        title=TITLE,
        description="Docker containers and KVM/QEMU VMs as one kind of compute instance.",
        apis=apis,
        envelope=COMPUTE_ENVELOPE,
        max_body=MAX_BODY,
        lifespan=lifespan,
    )
    app.openapi.setdefault("components", {})["securitySchemes"] = {
        "bearerAuth": SECURITY_SCHEMES["bearerAuth"]
    }
    app.metrics.registry.register(instance_metrics)
    # the shared factory declares http routes; the exec WebSocket goes on the same router
    # (ShoalApp hands websocket scopes to Starlette, behind ComputeAuth.websocket)
    app.starlette.router.routes.append(WebSocketRoute(EXEC_WS_PATH, make_exec_ws(get_manager)))
    return ComputeAuth(app, layer, tokens, instance_metrics.refresh_if_stale)


def _has_tokens(options: dict[str, Any]) -> bool:
    return bool([t for t in options.get("token") or [] if t] or options.get("tokens_file"))
