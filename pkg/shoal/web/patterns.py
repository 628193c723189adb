"""Regular expressions for the OpenAPI documents: the same shape the servers check.

Each is anchored, valid in both Python `re` and ECMA-262 (what JSON Schema `pattern` means), and
says what a field's validator accepts, so a generated client refuses what the server would.
Use them with `msgspec.Meta(pattern=...)` when msgspec may enforce them, or with
`Meta(extra_json_schema={"pattern": ...})` when a service's own validator answers the error.
"""

from __future__ import annotations

_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_V4 = rf"(?:{_OCTET}\.){{3}}{_OCTET}"
_H = r"[0-9a-fA-F]{1,4}"
_V6 = (
    r"(?:"
    rf"(?:{_H}:){{7}}{_H}|"
    rf"(?:{_H}:){{1,7}}:|"
    rf"(?:{_H}:){{1,6}}:{_H}|"
    rf"(?:{_H}:){{1,5}}(?::{_H}){{1,2}}|"
    rf"(?:{_H}:){{1,4}}(?::{_H}){{1,3}}|"
    rf"(?:{_H}:){{1,3}}(?::{_H}){{1,4}}|"
    rf"(?:{_H}:){{1,2}}(?::{_H}){{1,5}}|"
    rf"{_H}:(?::{_H}){{1,6}}|"
    rf":(?:(?::{_H}){{1,7}}|:)|"
    rf"::(?:[fF]{{4}}:)?{_V4}|"
    rf"(?:{_H}:){{1,4}}:{_V4}"
    r")"
)
_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_HOST = rf"{_LABEL}(?:\.{_LABEL})*"
_PORT16 = r"(?:6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3}|0)"

IPV4 = rf"^{_V4}$"
IPV6 = rf"^{_V6}$"
#: a network: IPv4 or IPv6 address, "/", prefix length (the host bits must also be clear)
CIDR = rf"^(?:{_V4}/(?:3[0-2]|[12]?[0-9])|{_V6}/(?:12[0-8]|1[01][0-9]|[1-9]?[0-9]))$"
#: a DNS name of letters, digits, '-' and '_' labels; a leading '*.' (wildcard) and a trailing '.'
DOMAIN = rf"^(?:\*\.)?{_HOST}\.?$"
HOSTNAME = rf"^{_HOST}\.?$"
MX = rf"^(?:{_PORT16} )?{_HOST}\.?$"
SRV = rf"^{_PORT16} {_PORT16} {_PORT16} {_HOST}\.?$"
#: host:port, host an IPv4 address, [IPv6] or a DNS name (not all digits: that is a bad IPv4
#: address), port 1-65535
ENDPOINT = rf"^(?:{_V4}|\[{_V6}\]|(?![0-9.]+:){_HOST}):(?:6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{{2}}|6[0-4][0-9]{{3}}|[1-5][0-9]{{4}}|[1-9][0-9]{{0,3}})$"
EMAIL = rf"^[^@\s]+@{_HOST}\.?$"
ETH_ADDRESS = r"^0x[0-9a-fA-F]{40}$"
#: 32 bytes in standard base64 (Ed25519 / WireGuard keys)
BASE64_32 = r"^[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=$"
SHA256_HEX = r"^[0-9a-f]{64}$"
HTTP_URL = r"^https?://[^\s/?#]+(?:[/?#][^\s]*)?$"
#: no NUL and no bidirectional-override controls (names are shown to people)
SAFE_TEXT = "^[^\\x00\\u061c\\u200e\\u200f\\u202a-\\u202e\\u2066-\\u2069]*$"
