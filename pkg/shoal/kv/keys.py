"""Key rules, checked up front by every operation so all backends reject the same keys.

A key starts with "/", is at most 1024 bytes of UTF-8 and holds no NUL. Order is UTF-8 byte order,
which is also Python's code point order (so `sorted()` on str agrees with SQLite and LMDB).
"""

from __future__ import annotations

from types import ModuleType

from .. import _native
from .errors import InvalidKey
from .model import Entry

MAX_KEY_BYTES = 1024


def _explain(key: object) -> bytes:
    """The slow path: say exactly what is wrong with the key."""
    if type(key) is not str:
        raise InvalidKey(key, f"keys are str, got {type(key).__name__}")
    if not key.startswith("/"):
        raise InvalidKey(key, "empty key" if not key else "a key must start with '/'")
    try:
        raw = key.encode()
    except UnicodeEncodeError:
        raise InvalidKey(key, "a key must be valid UTF-8 (no lone surrogates)") from None
    if len(raw) > MAX_KEY_BYTES:
        raise InvalidKey(key[:40] + "...", f"a key is at most {MAX_KEY_BYTES} bytes, got {len(raw)}")
    if b"\0" in raw:
        raise InvalidKey(key, "a key must not contain NUL")
    return raw


_record = _native.load("kvrecord")
_record.bind(_explain, Entry)
#: check_key(key) -> the key's UTF-8 bytes, or InvalidKey saying what is wrong. It is the hot path
#: of every call, so it is native (ext/kvrecord.pyx); the twin is shoal/_pure/kvrecord.py.
check_key = _record.check_key


def record_codec() -> ModuleType:
    """The kvrecord hot path in force (native or twin), already bound to Entry and the key rules."""
    return _record


def check_prefix(prefix: object) -> bytes:
    """A list prefix: "" (every key) or the start of a key."""
    if prefix == "":
        return b""
    return check_key(prefix)


def parse_pattern(pattern: object) -> tuple[str, bool]:
    """A watch pattern as (key or prefix, is_prefix): "/a/b" is exact, "/a/*" every key under "/a/"."""
    if type(pattern) is str and pattern.endswith("*"):
        prefix = pattern[:-1]
        if prefix == "":
            raise InvalidKey(pattern, "a pattern must start with '/' (use '/*' for every key)")
        check_key(prefix)
        return prefix, True
    check_key(pattern)
    return pattern, False  # type: ignore[return-value]


def prefix_end(prefix: str) -> str | None:
    """The smallest str above every key that starts with `prefix` (None: no bound).

    Increments the last code point, skipping the surrogate block that UTF-8 cannot hold.
    """
    chars = list(prefix)
    while chars:
        code = ord(chars.pop()) + 1
        if code <= 0x10FFFF:
            if 0xD800 <= code <= 0xDFFF:
                code = 0xE000
            return "".join(chars) + chr(code)
    return None
