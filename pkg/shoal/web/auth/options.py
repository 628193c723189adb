"""The flags every service takes for auth, and the start-up check that refuses an open service.

    def add_arguments(parser):           # a service module's own hook
        add_auth_arguments(parser)
    def check_options(options):          # runs in `shoal serve` before any worker starts
        check_startup(options, "kv")

A service bound to a non-loopback address with no --auth-dir refuses to start unless
--insecure-dev is given, and then says so loudly on stderr: an unauthenticated service on a
reachable address is how issue #19's `POST /nodes/register` of an unreachable URL broke uploads.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import sys
from pathlib import Path
from typing import Any

from shoal.web.auth.ratelimit import Rate
from shoal.web.auth.store import AuthDirError, KeyTable

log = logging.getLogger("shoal.auth")


def add_auth_arguments(parser: argparse.ArgumentParser) -> None:
    """--auth-dir, --insecure-dev, --rate-limit-ip/-key, --max-conns-per-ip, --token-ttl (skips any a
    service already defines, e.g. the State Service's own --insecure-dev)."""
    have = set(parser._option_string_actions)  # argparse has no public "has option"

    def add(flag: str, **kw: Any) -> None:
        if flag not in have:
            parser.add_argument(flag, **kw)

    add("--auth-dir", default=None, help="auth dir from `shoal auth init` (cluster secret and API keys)")
    add(
        "--insecure-dev",
        action="store_true",
        help="allow serving a non-loopback address WITHOUT authentication (development only)",
    )
    add(
        "--rate-limit-ip",
        default=None,
        metavar="RATE[/BURST]",
        help="requests per second per client IP (default with --auth-dir 1000/2000; 0 = off)",
    )
    add(
        "--rate-limit-key",
        default=None,
        metavar="RATE[/BURST]",
        help="requests per second per API key or token (default with --auth-dir 500/1000; 0 = off)",
    )
    add(
        "--max-conns-per-ip",
        type=int,
        default=None,
        metavar="N",
        help="requests in flight per client IP, over it 429 (default with --auth-dir 256; 0 = off)",
    )
    add(
        "--token-ttl",
        type=float,
        default=None,
        help="lifetime of tokens from POST /auth/token (s, default 900)",
    )


def is_loopback(host: str) -> bool:
    if host in ("localhost", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name other than localhost may resolve to anything


def insecure_banner(service: str, host: str) -> str:
    return (
        f"INSECURE DEV MODE: shoal serve {service} on {host} has NO AUTHENTICATION (--insecure-dev); "
        "anyone who can reach this address can read and change everything"
    )


def check_startup(options: dict[str, Any], service: str) -> None:
    """SystemExit with the reason when the auth options cannot be served; a banner for insecure-dev."""
    for flag in ("rate_limit_ip", "rate_limit_key"):
        if options.get(flag) is not None:
            try:
                Rate.parse(options[flag])
            except ValueError as exc:
                raise SystemExit(f"shoal serve {service}: --{flag.replace('_', '-')}: {exc}") from None
    conns = options.get("max_conns_per_ip")
    if conns is not None and int(conns) < 0:
        raise SystemExit(f"shoal serve {service}: --max-conns-per-ip must be >= 0 (0 = off)")
    auth_dir = options.get("auth_dir")
    host = str(options.get("host") or "127.0.0.1")
    if auth_dir:
        if not Path(auth_dir).is_dir():
            raise SystemExit(
                f"shoal serve {service}: --auth-dir {auth_dir} does not exist; run `shoal auth init --dir {auth_dir}`"
            )
        try:
            KeyTable(auth_dir)
        except AuthDirError as exc:
            raise SystemExit(f"shoal serve {service}: {exc}") from None
        return
    if is_loopback(host):
        return
    if not options.get("insecure_dev"):
        raise SystemExit(
            f"shoal serve {service}: refusing to serve {host} without authentication. "
            f"Create credentials with `shoal auth init --dir D` and pass --auth-dir D, bind 127.0.0.1, "
            f"or pass --insecure-dev to run open anyway (development only)."
        )
    banner = insecure_banner(service, host)
    log.warning(banner)
    print(f"\n{'!' * 80}\n{banner}\n{'!' * 80}\n", file=sys.stderr, flush=True)
