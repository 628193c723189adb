"""Behind a reverse proxy: X-Forwarded-* headers, honoured only from proxies you trust.

    shoal serve state --forwarded-allow-ips 127.0.0.1 [--root-path /state]

When the TCP peer is in --forwarded-allow-ips (addresses or networks, comma-separated; `*`
trusts everyone, which is only sane when nothing but the proxy can reach the port):

- X-Forwarded-For: the client becomes the right-most address that is not itself a trusted proxy
- X-Forwarded-Proto: the scheme (`http`/`https`), so absolute URLs built by a service are right
- X-Forwarded-Host: the Host header (the State Service's sign-in message names this host)
- X-Forwarded-Prefix: the path prefix the proxy strips (`/state`), for the URLs a service documents

From any other peer these headers have no effect: anyone can send them, so believing them
from an untrusted peer would let a client pick its own address or host.

The request path is never rewritten: the proxy strips the prefix and the routes stay as they
are. The prefix (X-Forwarded-Prefix, else --root-path) goes to scope["shoal.root_path"] and
/openapi.json then answers `servers: [{"url": prefix}]`. It deliberately is not the ASGI
`root_path`: Starlette treats that as part of `path` and would strip it from any route that
happens to start with it (`/kv/...` behind `/kv`), and services' own middleware matches on
the stripped path.
"""

from __future__ import annotations

import argparse
import ipaddress
import re
from collections.abc import Callable
from typing import Any

ROOT_PATH = "shoal.root_path"
_PREFIX = re.compile(r"^(/[A-Za-z0-9._~!$&'()*+,;=:@%-]+)+$")
_SCHEMES = {"http", "https"}

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags every `shoal serve <service>` takes (see the module docstring)."""
    parser.add_argument(
        "--forwarded-allow-ips",
        default="",
        help="proxies whose X-Forwarded-For/-Proto/-Host/-Prefix are believed (addresses or CIDRs, "
        "comma-separated; default: none)",
    )
    parser.add_argument(
        "--root-path",
        default="",
        help="path prefix a reverse proxy strips (e.g. /state), for documented URLs",
    )


def parse_trusted(spec: str | list[str]) -> list[Network] | None:
    """'127.0.0.1, 10.0.0.0/8' -> networks; '*' -> None (trust every peer). ValueError if malformed."""
    items = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    if "*" in items:
        return None
    networks = []
    for item in items:
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ValueError(f"--forwarded-allow-ips: {item!r} is not an IP address or network") from None
    return networks


def normalize_prefix(prefix: str) -> str:
    """'/state/' -> '/state'; '' or '/' -> ''. ValueError for anything that is not a plain path."""
    prefix = prefix.strip().rstrip("/")
    if prefix and (not _PREFIX.match(prefix) or "/../" in prefix + "/" or "/./" in prefix + "/"):
        raise ValueError(f"root path {prefix!r} must be a path such as /state")
    return prefix


class ProxyHeaders:
    """ASGI middleware applying the rules above; outermost, so every layer below sees the result."""

    def __init__(self, app: Any, trusted: str | list[str] = "", root_path: str = "") -> None:
        self.app = app
        self.trusted = parse_trusted(trusted)
        self.root_path = normalize_prefix(root_path)

    def __getattr__(self, name: str) -> Any:  # app.openapi, app.state, ... of the wrapped app
        if name == "app":
            raise AttributeError(name)
        return getattr(self.app, name)

    def is_trusted(self, host: str | None) -> bool:
        if self.trusted is None:
            return True
        if not host:
            return False
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(ip in net for net in self.trusted)

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] in ("http", "websocket"):
            if self.root_path:
                scope[ROOT_PATH] = self.root_path
            client = scope.get("client")
            if (self.trusted is None or self.trusted) and self.is_trusted(client[0] if client else None):
                self.apply(scope)
        await self.app(scope, receive, send)

    def apply(self, scope: dict) -> None:
        found: dict[bytes, list[str]] = {}
        for name, value in scope["headers"]:
            if name.startswith(b"x-forwarded-"):
                found.setdefault(name, []).append(value.decode("latin-1"))
        if not found:
            return
        hops = _items(found.get(b"x-forwarded-for"))
        if hops:
            client = next((h for h in reversed(hops) if not self.is_trusted(h)), hops[0])
            scope["client"] = (client, 0)
        proto = _last(found.get(b"x-forwarded-proto"))
        if proto and proto.lower() in _SCHEMES:
            proto = proto.lower()
            scope["scheme"] = proto if scope["type"] == "http" else proto.replace("http", "ws")
        host = _last(found.get(b"x-forwarded-host"))
        if host and _valid_host(host):
            scope["headers"] = [(k, v) for k, v in scope["headers"] if k != b"host"]
            scope["headers"].append((b"host", host.encode("latin-1")))
        prefix = _last(found.get(b"x-forwarded-prefix"))
        if prefix is not None:
            try:
                scope[ROOT_PATH] = normalize_prefix(prefix)
            except ValueError:
                pass  # a malformed prefix is ignored, like a header from an untrusted peer


def check(options: dict[str, Any]) -> None:
    """ValueError when --forwarded-allow-ips or --root-path is malformed (before workers start)."""
    parse_trusted(options.get("forwarded_allow_ips") or "")
    normalize_prefix(options.get("root_path") or "")


def wrap(app: Any, options: dict[str, Any]) -> Any:
    """`app` behind ProxyHeaders when the options ask for it (`shoal serve` calls this)."""
    trusted = options.get("forwarded_allow_ips") or ""
    root_path = options.get("root_path") or ""
    if not trusted and not root_path:
        return app
    return ProxyHeaders(app, trusted, root_path)


def _items(values: list[str] | None) -> list[str]:
    return [item.strip() for v in values or () for item in v.split(",") if item.strip()]


def _last(values: list[str] | None) -> str | None:
    items = _items(values)
    return items[-1] if items else None


_HOST = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(:[0-9]{1,5})?$")


def _valid_host(host: str) -> bool:
    return len(host) <= 255 and bool(_HOST.match(host))
