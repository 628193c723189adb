"""Field checks that a JSON Schema cannot express: IP networks and addresses, domain names,
Ethereum addresses, node keys and endpoints. Each returns the normalized value or raises 400."""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re

from shoal.state.auth.eth import is_address
from shoal.state.errors import bad_request

_LABEL = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)$")
_HOSTNAME_MAX = 253
_DIGITS = re.compile(r"[0-9]{1,5}")  # str.isdigit() also takes '²', which int() refuses


def cidr(value: str) -> str:
    """A network in CIDR notation, host bits clear: '10.0.0.0/8' (returned in canonical form)."""
    if "/" not in value:
        raise bad_request(
            f"invalid CIDR {value!r}: expected address/prefix, e.g. 10.0.0.0/24", "INVALID_CIDR"
        )
    try:
        return str(ipaddress.ip_network(value, strict=True))
    except ValueError as exc:
        raise bad_request(f"invalid CIDR {value!r}: {exc}", "INVALID_CIDR") from None


def domain(value: str, *, field: str = "domain") -> str:
    """A DNS name (lower case, no trailing dot); a leading '*' label is allowed (wildcards)."""
    name = value.strip().rstrip(".").lower()
    try:
        name = name.encode("idna").decode("ascii") if not name.isascii() else name
    except UnicodeError:
        raise bad_request(
            f"invalid {field} {value!r}: not a valid internationalized name", "INVALID_DOMAIN"
        ) from None
    labels = name.split(".")
    if not name or len(name) > _HOSTNAME_MAX:
        raise bad_request(f"invalid {field} {value!r}: 1 to 253 characters", "INVALID_DOMAIN")
    for i, label in enumerate(labels):
        if label == "*" and i == 0 and len(labels) > 1:
            continue
        if not _LABEL.match(label):
            raise bad_request(
                f"invalid {field} {value!r}: label {label!r} must be 1-63 letters, digits, '-' or '_',"
                " not starting or ending with '-'",
                "INVALID_DOMAIN",
            )
    return name


def hostname(value: str, *, field: str) -> str:
    return domain(value, field=field)


def ipv4(value: str, *, field: str = "value") -> str:
    try:
        return str(ipaddress.IPv4Address(value))
    except ValueError:
        raise bad_request(
            f"invalid {field} {value!r}: an A record needs an IPv4 address", "INVALID_IP"
        ) from None


def ipv6(value: str, *, field: str = "value") -> str:
    try:
        return str(ipaddress.IPv6Address(value))
    except ValueError:
        raise bad_request(
            f"invalid {field} {value!r}: an AAAA record needs an IPv6 address", "INVALID_IP"
        ) from None


def dns_value(record_type: str, value: str) -> str:
    """The record's value checked against its type (A: IPv4, AAAA: IPv6, CNAME: a name, ...)."""
    if record_type == "A":
        return ipv4(value)
    if record_type == "AAAA":
        return ipv6(value)
    if record_type in ("CNAME", "NS", "PTR"):
        return hostname(value, field=f"{record_type} value")
    if record_type == "MX":
        parts = value.split()
        if len(parts) == 1:
            return hostname(parts[0], field="MX value")
        if len(parts) == 2 and _DIGITS.fullmatch(parts[0]) and int(parts[0]) <= 65535:
            return f"{int(parts[0])} {hostname(parts[1], field='MX value')}"
        raise bad_request(
            f"invalid MX value {value!r}: expected 'PRIORITY HOST' or 'HOST'", "INVALID_DNS_VALUE"
        )
    if record_type == "SRV":
        parts = value.split()
        if len(parts) != 4 or not all(_DIGITS.fullmatch(p) and int(p) <= 65535 for p in parts[:3]):
            raise bad_request(
                f"invalid SRV value {value!r}: expected 'PRIORITY WEIGHT PORT TARGET'", "INVALID_DNS_VALUE"
            )
        return " ".join([*(str(int(p)) for p in parts[:3]), hostname(parts[3], field="SRV target")])
    # TXT and CAA: free text, limited by the schema's length bounds
    if not value:
        raise bad_request(f"a {record_type} record needs a value", "INVALID_DNS_VALUE")
    return value


def eth_address(value: str, *, field: str = "ethereum_address") -> str:
    if not is_address(value):
        raise bad_request(
            f"invalid {field} {value!r}: expected 0x and 40 hex digits (EIP-55 checksum if mixed case)",
            "INVALID_ADDRESS",
        )
    return value


def node_public_key(value: str) -> str:
    """An Ed25519 public key: 32 bytes, standard base64 (as WireGuard prints keys)."""
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 32:
        raise bad_request(f"invalid public_key {value!r}: expected 32 bytes in base64", "INVALID_PUBLIC_KEY")
    return base64.b64encode(raw).decode()


def peer_public_key(value: str) -> str:
    """A peer's key: an Ethereum address, a 0x-hex secp256k1 key, or a 32-byte base64 key."""
    if value.startswith(("0x", "0X")):
        if is_address(value):
            return value
        body = value[2:]
        if len(body) in (66, 130) and re.fullmatch(r"[0-9a-fA-F]+", body):
            return value
        raise bad_request(
            f"invalid public_key {value!r}: an Ethereum address, a 0x-hex secp256k1 key or base64 Ed25519 key",
            "INVALID_PUBLIC_KEY",
        )
    return node_public_key(value)


def endpoint(value: str) -> str:
    """host:port, where host is an IPv4 address, [IPv6] or a DNS name and port 1..65535."""
    host, sep, port = value.rpartition(":")
    if not sep or not _DIGITS.fullmatch(port) or not 0 < int(port) <= 65535:
        raise bad_request(
            f"invalid endpoint {value!r}: expected host:port with port 1-65535", "INVALID_ENDPOINT"
        )
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise bad_request(f"invalid endpoint {value!r}: bad IPv6 address", "INVALID_ENDPOINT") from None
        return value
    try:
        ipaddress.IPv4Address(host)
        return value
    except ValueError:
        pass
    if ":" in host or host.replace(".", "").isdigit():
        raise bad_request(f"invalid endpoint {value!r}: bad host (IPv6 goes in brackets)", "INVALID_ENDPOINT")
    hostname(host, field="endpoint host")
    return value


def email(value: str) -> str:
    local, at, host = value.rpartition("@")
    if not at or not local or " " in value:
        raise bad_request(f"invalid email {value!r}", "INVALID_EMAIL")
    hostname(host, field="email domain")
    return value
