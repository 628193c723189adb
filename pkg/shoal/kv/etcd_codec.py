"""How EtcdStore lays a namespace out in etcd: key mapping, the value envelope, the commit record.

A namespace `ns` owns every etcd key in ["/shoal/ns", "/shoal/ns0"): the store key "/a/b" is the
etcd key "/shoal/ns/a/b" (readable with etcdctl), and "/shoal/ns" itself is the head key.

Values carry a small envelope: the store's own version and timestamps. etcd has no timestamps, and
its per-key version cannot express a transaction that writes one key twice (etcd allows one write
per key per txn), so the store's version lives here while etcd's mod_revision guards every write.

Every write transaction also puts the head key, with a commit record: a random transaction id (so a
write whose answer was lost can be recognised) and, only when the transaction wrote some key more
than once, the full event list (etcd keeps just the last write of each key). The head key's
create_revision is the namespace's base revision: store revision = etcd revision - base.
"""

from __future__ import annotations

import re
import struct

import msgspec

from .model import EVENT_CODES, EVENT_TYPES, Event, EventType

ROOT = b"/shoal/"
NAMESPACE = re.compile(r"[A-Za-z0-9_]{1,64}")  # no byte below "0": namespaces never nest
MAGIC = b"\xffK\x01"  # UTF-8 text never starts with 0xFF
HEADER = struct.Struct("<Qdd")  # version, created_at, updated_at
HEADER_SIZE = len(MAGIC) + HEADER.size

# One event of a commit record: (key, event code, version, inline value). The value is None for a
# delete and for the last write of a key in the transaction (it is the key's own etcd value).
RecordEvent = tuple[str, int, int, bytes | None]


class Record(msgspec.Struct, array_like=True, frozen=True):
    txn: bytes
    events: list[RecordEvent] | None = None


_encode = msgspec.msgpack.Encoder().encode
_decode_record = msgspec.msgpack.Decoder(Record).decode


def namespace_prefix(namespace: str) -> bytes:
    """The head key of a namespace; its keys are this plus the store key."""
    if type(namespace) is not str or not NAMESPACE.fullmatch(namespace):
        raise ValueError(f"an etcd namespace is 1-64 of [A-Za-z0-9_], got {namespace!r}")
    return ROOT + namespace.encode()


def prefix_end(prefix: bytes) -> bytes:
    """The first byte string above every key that starts with `prefix` (etcd's range_end rule)."""
    p = bytearray(prefix)
    while p:
        if p[-1] < 0xFF:
            p[-1] += 1
            return bytes(p)
        p.pop()
    return b"\0"  # every key


def pack_value(version: int, created: float, updated: float, value: bytes) -> bytes:
    return MAGIC + HEADER.pack(version, created, updated) + value


def unpack_value(raw: bytes, etcd_version: int) -> tuple[int, float, float, bytes]:
    """(version, created_at, updated_at, value); a value written by another etcd client is taken as is."""
    if raw[:3] == MAGIC and len(raw) >= HEADER_SIZE:
        version, created, updated = HEADER.unpack_from(raw, 3)
        return version, created, updated, raw[HEADER_SIZE:]
    return etcd_version, 0.0, 0.0, raw


def pack_record(txn: bytes, events: list[RecordEvent] | None) -> bytes:
    return _encode(Record(txn, events))


def unpack_record(raw: bytes) -> Record | None:
    try:
        return _decode_record(raw)
    except msgspec.DecodeError:
        return None


def record_events(
    events: list[RecordEvent], finals: dict[str, tuple[bytes | None, int]], revision: int
) -> list[Event]:
    """A commit record's events, taking each key's last value from its etcd event (`finals`)."""
    out = []
    for key, code, version, inline in events:
        kind = EVENT_TYPES[code]
        value = None
        if kind is not EventType.Deleted:
            value = inline if inline is not None else finals.get(key, (b"", 0))[0]
        out.append(Event(kind, key, value, version, revision))
    return out


def event_code(kind: EventType) -> int:
    return EVENT_CODES[kind]
