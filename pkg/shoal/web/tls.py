"""TLS for services and their clients: servers take --tls-cert/--tls-key (`shoal serve`), clients
that call other shoal services take --tls-ca and verify the server against it."""

from __future__ import annotations

import argparse
import ssl
from typing import Any


def add_client_tls_argument(parser: argparse.ArgumentParser) -> None:
    """--tls-ca for a service (or command) that calls other shoal services over HTTPS."""
    if "--tls-ca" not in parser._option_string_actions:
        parser.add_argument(
            "--tls-ca",
            default=None,
            help="CA certificate (PEM) that other services' HTTPS is verified against",
        )


def client_verify(ca: str | None) -> ssl.SSLContext | bool:
    """httpx's `verify=`: a context trusting `ca` (only it), or the system's store without one."""
    return ssl.create_default_context(cafile=ca) if ca else True


def options_verify(options: dict[str, Any]) -> ssl.SSLContext | bool:
    return client_verify(options.get("tls_ca"))
