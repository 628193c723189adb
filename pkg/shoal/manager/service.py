"""`shoal serve manager`: the State Manager's HTTP API (spec: state-manager-spec.md).

    shoal serve manager --port 8080 --data-dir data --tmp-dir tmp -- COMMAND [ARGS...]

One process only (MAX_WORKERS = 1): the manager owns a child process, a litestream process
and a FUSE mount, and two workers would each start their own. Errors use the `{"detail"}`
envelope (the spec names none); configuration errors add `errors: [{field, message}]`.

With `--auth-dir D` (shoal.web.auth, docs/security.md) viewers read the status, the
configuration and the checkpoint list; operators configure, checkpoint, restore, delete
checkpoints, stop/start the process and release the lease. /health and /metrics stay open (a
liveness probe and a scraper carry no key). Without it the manager serves loopback only,
unless --insecure-dev.
"""

from __future__ import annotations

import argparse
import logging
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import msgspec

from shoal.manager.checkpoints import CheckpointError
from shoal.manager.config import Config, ConfigError, parse_config
from shoal.manager.manager import Manager, ManagerError, ManagerOptions
from shoal.web import DETAIL_ENVELOPE, Api, ApiError, read_body
from shoal.web import create_app as build_app
from shoal.web.api import Endpoint
from shoal.web.auth import OPERATOR, VIEWER, AuthLayer, Requirement, add_auth_arguments, check_startup
from shoal.web.jsonio import parse_json

TITLE = "State Manager"
MAX_WORKERS = 1
log = logging.getLogger("shoal.manager")


OPEN_PATHS = frozenset({"/health"})  # the liveness probe of `shoal up` carries no key


def POLICY(ep: Endpoint) -> Requirement | None:
    """Reads need a viewer, every change an operator; /health is open."""
    if ep.path in OPEN_PATHS:
        return None
    return VIEWER if ep.method in ("GET", "HEAD") else OPERATOR


class CheckpointRequest(msgspec.Struct, forbid_unknown_fields=True):
    id: str


class LogsQuery(msgspec.Struct, forbid_unknown_fields=True):
    tail: int = 100
    stream: str | None = None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tmp-dir", default=None, help="config, checkpoints, mount (default: DATA_DIR/../tmp)"
    )
    parser.add_argument(
        "--restart-delay", type=float, default=1.0, help="seconds before a restart (default 1)"
    )
    parser.add_argument(
        "--stop-timeout", type=float, default=90.0, help="seconds between SIGTERM and SIGKILL (default 90)"
    )
    parser.add_argument(
        "--start-secs", type=float, default=1.0, help="a child must live this long to count as started"
    )
    parser.add_argument(
        "--start-retries", type=int, default=3, help="failed starts in a row before giving up"
    )
    parser.add_argument(
        "--operation-timeout",
        type=float,
        default=300.0,
        help="seconds a configure/checkpoint/restore request waits for its operation (default 300)",
    )
    parser.add_argument(
        "--allow-path",
        action="append",
        default=[],
        metavar="DIR",
        help="a directory (besides DATA_DIR and TMP_DIR) where juicefs.mount_path/cache_dir may point",
    )
    parser.add_argument(
        "--app-log-max-bytes",
        type=int,
        default=10 * 1024 * 1024,
        help="rotate TMP_DIR/logs/process.{stdout,stderr}.log past this size (default 10 MiB; 0: never)",
    )
    parser.add_argument(
        "--app-log-backups", type=int, default=5, help="rotated app log files kept per stream (default 5)"
    )
    parser.add_argument(
        "child_command", nargs=argparse.REMAINDER, metavar="COMMAND", help="-- COMMAND [ARGS...] to supervise"
    )
    add_auth_arguments(parser)
    # the server must outlive the child's stop timeout plus unmount/replication shutdown
    parser.set_defaults(shutdown_timeout=150)


def check_options(options: dict[str, Any]) -> None:
    """Refuse an open manager on a reachable address before the server starts."""
    check_startup(options, "manager")


def manager_options(options: dict[str, Any]) -> ManagerOptions:
    data_dir = Path(options.get("data_dir") or "data")
    tmp_dir = Path(options["tmp_dir"]) if options.get("tmp_dir") else data_dir.absolute().parent / "tmp"
    command = list(options.get("child_command") or [])
    if command and command[0] == "--":
        command = command[1:]
    return ManagerOptions(
        data_dir=data_dir,
        tmp_dir=tmp_dir,
        command=command,
        restart_delay=float(options.get("restart_delay", 1.0)),
        stop_timeout=float(options.get("stop_timeout", 90.0)),
        start_secs=float(options.get("start_secs", 1.0)),
        start_retries=int(options.get("start_retries", 3)),
        operation_timeout=float(options.get("operation_timeout") or 300.0),
        allow_paths=[Path(p).absolute() for p in options.get("allow_path") or []],
        app_log_max_bytes=max(0, int(options.get("app_log_max_bytes", 10 * 1024 * 1024))),
        app_log_backups=max(0, int(options.get("app_log_backups", 5))),
    )


def _api_error(exc: ManagerError | CheckpointError) -> ApiError:
    return ApiError(exc.status, str(exc), details=getattr(exc, "details", None))


def make_api(manager: Manager) -> Api:
    api = Api(tags=["manager"])

    @api.get(
        "/health",
        summary="healthy, or degraded (still 200) with the reasons: S3 not answering, process fatal",
    )
    async def health(request: Any) -> dict:
        # 200 either way: a dependency's fault must not get the manager killed by a liveness probe
        return await manager.health()

    @api.get("/", summary="Process, component and configuration status")
    async def status(request: Any) -> dict:
        return manager.status()

    @api.get("/config", summary="The configuration, secrets redacted (404 when unconfigured)")
    async def get_config(request: Any) -> dict:
        try:
            return manager.config_view()
        except ManagerError as exc:
            raise _api_error(exc) from None

    @api.post(
        "/config",
        summary="Configure storage and stacks (once)",
        timeout=None,
        openapi_extra={
            "requestBody": {"required": True, "content": {"application/json": {"schema": CONFIG_REF}}}
        },
    )
    async def post_config(request: Any) -> dict:
        data = parse_json(await read_body(request, 64 * 1024))
        try:
            cfg = parse_config(data)
        except ConfigError as exc:
            raise ApiError(
                400, f"invalid configuration: {exc}", code="INVALID_CONFIG", details=exc.problems
            ) from None
        try:
            return await manager.configure(cfg)
        except ConfigError as exc:  # a path outside the manager's directories
            raise ApiError(
                400, f"invalid configuration: {exc}", code="INVALID_CONFIG", details=exc.problems
            ) from None
        except ManagerError as exc:
            raise _api_error(exc) from None

    @api.post("/checkpoint", body=CheckpointRequest, timeout=None, summary="Create a checkpoint")
    async def checkpoint(request: Any, body: CheckpointRequest) -> dict:
        try:
            meta = await manager.checkpoint(body.id)
        except (ManagerError, CheckpointError) as exc:
            raise _api_error(exc) from None
        return {"id": body.id, "checkpoint": meta}

    @api.post("/restore", body=CheckpointRequest, timeout=None, summary="Restore a checkpoint")
    async def restore(request: Any, body: CheckpointRequest) -> dict:
        try:
            return await manager.restore(body.id)
        except (ManagerError, CheckpointError) as exc:
            raise _api_error(exc) from None

    @api.get("/checkpoints", summary="Checkpoint ids, and each one's time, parts and size")
    async def list_checkpoints(request: Any) -> dict:
        return {"checkpoints": manager.list_checkpoints(), "details": manager.describe_checkpoints()}

    @api.delete("/checkpoints/{checkpoint_id}", timeout=None, summary="Delete a checkpoint")
    async def delete_checkpoint(request: Any, checkpoint_id: str) -> dict:
        try:
            return await manager.delete_checkpoint(checkpoint_id)
        except (ManagerError, CheckpointError) as exc:
            raise _api_error(exc) from None

    @api.post("/release-lease", timeout=None, summary="Give up the writer lease")
    async def release_lease(request: Any) -> dict:
        try:
            return await manager.release_lease()
        except ManagerError as exc:
            raise _api_error(exc) from None

    @api.post("/process/stop", timeout=None, summary="Stop the supervised process (not restarted)")
    async def stop_process(request: Any) -> dict:
        try:
            return await manager.stop_process()
        except ManagerError as exc:
            raise _api_error(exc) from None

    @api.get(
        "/process/logs",
        query=LogsQuery,
        summary="The app's last output lines (?tail=N, at most 1000; ?stream=stdout|stderr)",
    )
    async def process_logs(request: Any, query: LogsQuery) -> dict:
        try:
            return manager.process_logs(max(0, min(query.tail, 1000)), query.stream)
        except ManagerError as exc:
            raise _api_error(exc) from None

    @api.post("/process/start", summary="Start the supervised process again")
    async def start_process(request: Any) -> dict:
        try:
            return await manager.start_process()
        except ManagerError as exc:
            raise _api_error(exc) from None

    return api


CONFIG_REF = {"$ref": "#/components/schemas/Config"}


def create_app(options: dict[str, Any]) -> Any:
    check_options(options)
    opts = manager_options(options)
    shutdown_timeout = float(options.get("shutdown_timeout") or 150)
    if shutdown_timeout < opts.stop_timeout + 30:
        log.warning(
            "--shutdown-timeout %ss is short for --stop-timeout %ss: the server may be killed "
            "before the child and the mount are stopped",
            shutdown_timeout,
            opts.stop_timeout,
        )
    manager = Manager(opts)

    @asynccontextmanager
    async def lifespan(app: Any):
        await manager.startup()
        try:
            yield
        finally:
            await manager.shutdown()

    layer = AuthLayer.from_options(options, DETAIL_ENVELOPE)
    app = build_app(
        title=TITLE,
        apis=layer.secure([make_api(manager)], POLICY),
        envelope=DETAIL_ENVELOPE,
        lifespan=lifespan,
    )
    (_, components) = msgspec.json.schema_components([Config], ref_template="#/components/schemas/{name}")
    app.openapi["components"]["schemas"].update(components)
    app.state.manager = manager
    from shoal.manager.metrics import ManagerCollector

    app.metrics.registry.register(ManagerCollector(manager))
    return layer.wrap(app)
