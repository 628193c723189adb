"""Pure-Python twin of ext/kvrecord.pyx: key validation and the LMDB record codec, same bytes."""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

MAX_KEY_BYTES = 1024
HDR = struct.Struct("<QQdd")
HDR_SIZE = HDR.size
CHG = struct.Struct("<BQH")
U64 = struct.Struct("<Q")

_explain: Callable[[object], bytes] | None = None
_entry: Any = None


def bind(explain: Callable[[object], bytes], entry_type: Any) -> None:
    """Set the slow-path key explainer (raises InvalidKey) and the Entry type (shoal.kv calls this)."""
    global _explain, _entry
    _explain = explain
    _entry = entry_type


def check_key(key: object) -> bytes:
    """The key's UTF-8 bytes; any bad key goes to the explainer, which raises InvalidKey."""
    if type(key) is str and key[:1] == "/" and "\0" not in key:
        try:
            raw = key.encode()
        except UnicodeEncodeError:
            return _explain(key)  # type: ignore[misc]
        if len(raw) <= MAX_KEY_BYTES:
            return raw
    return _explain(key)  # type: ignore[misc]


def decode_entry(key: str, buf: bytes) -> Any:
    """The Entry a stored record holds (ValueError for a record shorter than its header)."""
    if len(buf) < HDR_SIZE:
        raise ValueError(f"a kv record is at least {HDR_SIZE} bytes, got {len(buf)}")
    version, rev, created, updated = HDR.unpack_from(buf)
    return _entry(key, buf[HDR_SIZE:], version, created, updated, rev)


def record_version(buf: bytes) -> int:
    """The version field of a stored record."""
    if len(buf) < 8:
        raise ValueError("a kv record is at least 8 bytes")
    return U64.unpack_from(buf)[0]


def encode_record(version: int, revision: int, created: float, updated: float, value: bytes) -> bytes:
    """The stored record: header + value."""
    return HDR.pack(version, revision, created, updated) + value


def encode_change(code: int, version: int, raw: bytes, value: bytes | None) -> bytes:
    """A change-log record: <event u8, version u64, key length u16> + key + value (None: no value)."""
    if len(raw) > 0xFFFF:
        raise ValueError("a key in the change log is at most 65535 bytes")
    rec = CHG.pack(code, version, len(raw)) + raw
    return rec if value is None else rec + value
