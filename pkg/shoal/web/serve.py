"""Run a service under granian (default) or uvicorn, both with uvloop.

`--server` picks the server; a service module may set DEFAULT_SERVER (the storage node uses
uvicorn: for 2 MiB bodies granian copies each response into its own buffer, and uvicorn with
httptools served more chunks per second on this machine's 2 cores; bench/storage/load.py
measures both side by side).

granian starts worker processes that import `shoal.web.serve:app_factory`; the service and
its parsed options reach them through the SHOAL_SERVE environment variable, so every worker
builds the same app. granian handles SIGTERM/SIGINT: in-flight requests finish and each
worker's lifespan shutdown (flushes, closes) runs before the process exits.

The process model (shoal.runtime): before any worker starts, the main process takes the data
dir's lock (a second start on a live data dir exits 1 naming the holder) and checks the port is
not bound by another process; each worker ends within a second of its main process's death,
whatever killed it (shoal.runtime.lifetime).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import orjson

from shoal.platform.services import load_service
from shoal.runtime import datadir_lock, lifetime, ports
from shoal.web import proxy
from shoal.web.logs import setup_logging

ENV = "SHOAL_SERVE"
_held: list = []  # the data dir locks of this process, open for its whole life


def app_factory() -> Any:
    """Build the app named in SHOAL_SERVE (called once in each worker)."""
    spec = orjson.loads(os.environ[ENV])
    setup_logging(spec["options"].get("log_level"))
    lifetime.watch_parent(spec["pid"])  # no-op when the main process serves in-process
    if spec["options"].get("data_dir") and spec["pid"] != os.getpid():
        _held.append(datadir_lock.hold_as_worker(spec["options"]["data_dir"]))
    app = load_service(spec["service"]).create_app(spec["options"])
    return proxy.wrap(app, spec["options"])  # X-Forwarded-* from trusted proxies, --root-path


def serve(service: str, options: dict[str, Any]) -> None:
    """Serve `service` on options['host']:options['port'] until SIGTERM/SIGINT."""
    module = load_service(service)
    try:
        proxy.check(options)
    except ValueError as exc:
        raise SystemExit(f"shoal serve {service}: {exc}") from None
    try:
        check_tls(options)
    except ValueError as exc:
        raise SystemExit(f"shoal serve {service}: {exc}") from None
    check = getattr(module, "check_options", None)
    if check is not None:
        check(options)  # bad flag combinations end here (SystemExit), before any worker starts
    workers = int(options.get("workers") or 1)
    workers = min(workers, getattr(module, "MAX_WORKERS", workers))
    claim(service, options)
    os.environ[ENV] = orjson.dumps({"service": service, "options": options, "pid": os.getpid()}).decode()
    setup_logging(options.get("log_level"))
    server = options.get("server") or getattr(module, "DEFAULT_SERVER", "granian")
    (serve_uvicorn if server == "uvicorn" else serve_granian)(options, workers)


def check_tls(options: dict[str, Any]) -> None:
    """--tls-cert and --tls-key come together and load as a pair (ValueError with the reason)."""
    cert, key = options.get("tls_cert"), options.get("tls_key")
    if not cert and not key:
        return
    if not (cert and key):
        raise ValueError("--tls-cert and --tls-key go together")
    import ssl

    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"cannot load --tls-cert {cert} / --tls-key {key}: {exc}") from None


def claim(service: str, options: dict[str, Any]) -> None:
    """Take the data dir, then make sure the port is ours alone; SystemExit(1) with the holder."""
    try:
        if options.get("data_dir"):
            _held.append(datadir_lock.acquire(options["data_dir"], service, options.get("port")))
        ports.check_free(options["host"], int(options["port"]))
    except (datadir_lock.DataDirBusy, ports.PortInUse) as exc:
        print(f"shoal serve {service}: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None


def serve_uvicorn(options: dict[str, Any], workers: int) -> None:
    import uvicorn

    uvicorn.run(
        "shoal.web.serve:app_factory",
        factory=True,
        host=options["host"],
        port=int(options["port"]),
        workers=workers,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level=(options.get("log_level") or "info").lower(),
        timeout_graceful_shutdown=int(options.get("shutdown_timeout") or 30),
        ssl_certfile=options.get("tls_cert"),
        ssl_keyfile=options.get("tls_key"),
    )


def serve_granian(options: dict[str, Any], workers: int) -> None:
    from granian import Granian
    from granian.constants import Interfaces, Loops

    Granian(
        "shoal.web.serve:app_factory",
        address=options["host"],
        port=int(options["port"]),
        interface=Interfaces.ASGI,
        workers=workers,
        loop=Loops.uvloop,
        factory=True,
        log_access=False,
        log_level=(options.get("log_level") or "info").lower(),
        workers_kill_timeout=int(options.get("shutdown_timeout") or 30),
        respawn_failed_workers=True,
        ssl_cert=Path(options["tls_cert"]) if options.get("tls_cert") else None,
        ssl_key=Path(options["tls_key"]) if options.get("tls_key") else None,
    ).serve()
