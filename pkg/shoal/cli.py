"""The `shoal` command (also `python -m shoal`).

shoal serve <service> --host H --port P --data-dir D [--workers N] [service flags]
shoal up [--data-root ./shoal-data] [--port-offset N] [--config FILE]   the platform, supervised
shoal status [same layout flags]          health of what `shoal up` runs
shoal demo [same layout flags]            upload and play a test video through it
shoal doctor                              native hot paths and optional components
shoal auth init|key|secret|node-token --dir D   credentials the services check (--auth-dir D)
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from shoal import __version__
from shoal.platform.services import SERVICES, load_service
from shoal.web.proxy import add_arguments as proxy_arguments


def _serve_parser(sub: argparse._SubParsersAction, selected: str | None) -> None:
    serve = sub.add_parser("serve", help="run one service under granian (uvloop)")
    services = serve.add_subparsers(dest="service", required=True, metavar="SERVICE")
    for info in SERVICES.values():
        p = services.add_parser(info.name, help=info.description)
        p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
        p.add_argument("--port", type=int, default=info.default_port, help=f"default {info.default_port}")
        p.add_argument("--data-dir", default=f"./shoal-data/{info.name}", help="where state is kept")
        p.add_argument("--workers", type=int, default=1, help="server worker processes (default 1)")
        p.add_argument(
            "--server",
            choices=["granian", "uvicorn"],
            default=None,
            help="ASGI server (default: granian; the storage node defaults to uvicorn, see bench/storage)",
        )
        p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
        p.add_argument(
            "--shutdown-timeout", type=int, default=30, help="seconds in-flight work may take on SIGTERM"
        )
        proxy_arguments(p)  # --forwarded-allow-ips, --root-path (behind a reverse proxy)
        p.add_argument(
            "--tls-cert", default=None, help="serve HTTPS with this certificate (PEM; with --tls-key)"
        )
        p.add_argument("--tls-key", default=None, help="the certificate's private key (PEM)")
        if info.name == selected:
            try:
                module = load_service(info.name)
            except ImportError as exc:
                p.set_defaults(unavailable=str(exc))
            else:
                if hasattr(module, "add_arguments"):
                    module.add_arguments(p)


def build_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="shoal", description="shoal: a small self-hosted cloud substrate")
    parser.add_argument("--version", action="version", version=f"shoal {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    selected = argv[1] if len(argv) > 1 and argv[0] == "serve" else None
    _serve_parser(sub, selected)

    from shoal.platform.up import add_status_arguments, add_up_arguments

    up = sub.add_parser("up", help="run the whole platform on this machine, supervised; Ctrl-C stops all")
    add_up_arguments(up)
    status = sub.add_parser("status", help="health of each service `shoal up` runs")
    add_status_arguments(status)
    demo = sub.add_parser("demo", help="upload and play a test video through a running `shoal up`")
    from shoal.platform.demo import add_arguments as demo_arguments

    demo_arguments(demo)

    upload = sub.add_parser("upload", help="upload a video (through an uploader, or direct)")
    from shoal.uploader.cli import add_arguments as upload_arguments

    upload_arguments(upload)

    play = sub.add_parser("play", help="play a video with the smart client (optionally with its dashboard)")
    from shoal.client.cli import add_arguments as play_arguments

    play_arguments(play)

    auth = sub.add_parser("auth", help="credentials: cluster secret, API keys (create, list, revoke)")
    from shoal.platform.auth import add_arguments as auth_arguments

    auth_arguments(auth)

    doctor = sub.add_parser("doctor", help="which hot paths are native, which components are here")
    doctor.add_argument("--json", action="store_true", help="machine-readable output")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(argv).parse_args(argv)
    if args.command == "serve":
        if getattr(args, "unavailable", None):
            print(f"shoal: service {args.service!r} is not available: {args.unavailable}", file=sys.stderr)
            return 2
        from shoal.web.serve import serve

        options = {k: v for k, v in vars(args).items() if k not in ("command", "service")}
        serve(args.service, options)
        return 0
    if args.command == "doctor":
        from shoal.platform.doctor import run_doctor

        return run_doctor(as_json=args.json)
    if args.command == "up":
        from shoal.platform.up import run_up

        return run_up(args)
    if args.command == "demo":
        from shoal.platform.demo import run_demo

        return run_demo(args)
    if args.command == "upload":
        from shoal.uploader.cli import run_upload

        return run_upload(args)
    if args.command == "play":
        from shoal.client.cli import run_play

        return run_play(args)
    if args.command == "auth":
        from shoal.platform.auth import run as run_auth

        return run_auth(args)
    if args.command == "status":
        from shoal.platform.up import run_status

        return run_status(args)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
