"""CRDT hot paths in pure Python: the twin of ext/crdt.pyx (same API, same results).

An operation travels as a *frame*: a 64-byte Ed25519 signature followed by the operation's
canonical encoding (the *blob*); the operation id is the BLAKE3 hash of the blob. Encoding,
all integers big-endian:

    b"SOP1" | author (32 raw Ed25519 public key bytes) | hlc u64
    | ndeps u16 | deps (32 bytes each, strictly ascending)
    | kind u8-len + ascii [a-z0-9_] | key u16-len + utf-8 | actor u8-len + utf-8
    | 0 (tombstone) or 1 + value u32-len + bytes

`decode` accepts only this exact form (sorted deps, no trailing bytes, valid utf-8), so one
operation has exactly one encoding and therefore one id.

The merge rule is last-writer-wins per register (kind, key): the greatest (hlc, op id) wins,
a total order every replica computes the same way whatever order operations arrive in.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Iterator, Sequence

from blake3 import blake3

MAGIC = b"SOP1"
ID_LEN = 32
SIG_LEN = 64
AUTHOR_LEN = 32
MAX_DEPS = 256
MAX_KIND = 32
MAX_KEY = 255
MAX_ACTOR = 255
MAX_VALUE = 1 << 16
MASK64 = (1 << 64) - 1
_KIND_CHARS = frozenset(b"abcdefghijklmnopqrstuvwxyz0123456789_")
_HEAD = struct.Struct(">4s32sQH")


class MalformedOp(ValueError):
    """An encoding that is not a canonical operation (the reason is the message)."""


class Op:
    """A decoded operation. `id` is the BLAKE3 hash of `blob`; `value` None is a tombstone."""

    __slots__ = ("actor", "author", "blob", "deps", "hlc", "id", "key", "kind", "sig", "value")

    def __init__(
        self, id: bytes, author: bytes, hlc: int, deps: tuple, kind: str, key: str, actor: str,
        value: bytes | None, sig: bytes, blob: bytes,
    ) -> None:  # fmt: skip
        self.id = id
        self.author = author
        self.hlc = hlc
        self.deps = deps
        self.kind = kind
        self.key = key
        self.actor = actor
        self.value = value
        self.sig = sig
        self.blob = blob

    def astuple(self) -> tuple:
        return (self.id, self.author, self.hlc, self.deps, self.kind, self.key, self.actor, self.value,
                self.sig, self.blob)  # fmt: skip

    def __repr__(self) -> str:
        return f"Op({self.id.hex()[:12]} {self.kind}/{self.key} hlc={self.hlc} deps={len(self.deps)})"


def digest(data: bytes) -> bytes:
    """BLAKE3-256 of `data`."""
    return blake3(data).digest()


def digest_many(frames: Sequence[bytes], offset: int = 0) -> list[bytes]:
    """BLAKE3-256 of frame[offset:] for each frame (natively: one call, SIMD across frames)."""
    out = []
    for frame in frames:
        if len(frame) < offset:
            raise ValueError("frame shorter than offset")
        out.append(blake3(bytes(frame)[offset:]).digest())
    return out


def encode(
    author: bytes, hlc: int, deps: Iterable[bytes], kind: str, key: str, actor: str, value: bytes | None
) -> bytes:
    """The canonical encoding (deps are sorted and de-duplicated here)."""
    deps = sorted(set(deps))
    if len(author) != AUTHOR_LEN:
        raise MalformedOp("author is 32 bytes")
    if not 0 <= hlc <= MASK64:
        raise MalformedOp("hlc out of range")
    if len(deps) > MAX_DEPS:
        raise MalformedOp("too many deps")
    if any(len(d) != ID_LEN for d in deps):
        raise MalformedOp("deps are 32 bytes")
    k = kind.encode()
    if not 0 < len(k) <= MAX_KIND or not set(k) <= _KIND_CHARS:
        raise MalformedOp("bad kind")
    ky = key.encode()
    if not 0 < len(ky) <= MAX_KEY:
        raise MalformedOp("bad key")
    a = actor.encode()
    if len(a) > MAX_ACTOR:
        raise MalformedOp("bad actor")
    parts = [_HEAD.pack(MAGIC, author, hlc, len(deps)), *deps, bytes((len(k),)), k]
    parts += [len(ky).to_bytes(2, "big"), ky, bytes((len(a),)), a]
    if value is None:
        parts.append(b"\x00")
    else:
        if len(value) > MAX_VALUE:
            raise MalformedOp("value too large")
        parts += [b"\x01", len(value).to_bytes(4, "big"), bytes(value)]
    return b"".join(parts)


def _text(blob: bytes, start: int, end: int, what: str) -> str:
    try:
        return blob[start:end].decode()
    except UnicodeDecodeError:
        raise MalformedOp(f"bad {what}") from None


def decode(blob: bytes, sig: bytes = b"", op_id: bytes | None = None) -> Op:
    """The operation encoded in `blob`; MalformedOp unless it is canonical."""
    n = len(blob)
    if n < _HEAD.size:
        raise MalformedOp("truncated")
    magic, author, hlc, ndeps = _HEAD.unpack_from(blob)
    if magic != MAGIC:
        raise MalformedOp("bad magic")
    if ndeps > MAX_DEPS:
        raise MalformedOp("too many deps")
    pos = _HEAD.size
    if pos + ndeps * ID_LEN + 1 > n:
        raise MalformedOp("truncated")
    deps = tuple(blob[pos + i * ID_LEN : pos + (i + 1) * ID_LEN] for i in range(ndeps))
    for i in range(1, ndeps):
        if deps[i - 1] >= deps[i]:
            raise MalformedOp("deps not sorted")
    pos += ndeps * ID_LEN
    klen = blob[pos]
    pos += 1
    if klen == 0 or klen > MAX_KIND or pos + klen + 2 > n:
        raise MalformedOp("bad kind")
    kb = blob[pos : pos + klen]
    if not set(kb) <= _KIND_CHARS:
        raise MalformedOp("bad kind")
    kind = kb.decode()
    pos += klen
    keylen = (blob[pos] << 8) | blob[pos + 1]
    pos += 2
    if keylen == 0 or keylen > MAX_KEY or pos + keylen + 1 > n:
        raise MalformedOp("bad key")
    key = _text(blob, pos, pos + keylen, "key")
    pos += keylen
    alen = blob[pos]
    pos += 1
    if pos + alen + 1 > n:
        raise MalformedOp("bad actor")
    actor = _text(blob, pos, pos + alen, "actor")
    pos += alen
    flag = blob[pos]
    pos += 1
    value: bytes | None = None
    if flag == 1:
        if pos + 4 > n:
            raise MalformedOp("truncated")
        vlen = int.from_bytes(blob[pos : pos + 4], "big")
        pos += 4
        if vlen > MAX_VALUE:
            raise MalformedOp("value too large")
        if pos + vlen > n:
            raise MalformedOp("truncated")
        value = blob[pos : pos + vlen]
        pos += vlen
    elif flag != 0:
        raise MalformedOp("bad value flag")
    if pos != n:
        raise MalformedOp("trailing bytes")
    return Op(
        op_id if op_id is not None else digest(blob), author, hlc, deps, kind, key, actor, value, sig, blob
    )


def parse_frames(frames: Sequence[bytes]) -> tuple[list[Op], list[tuple[int, str]]]:
    """Decode signed frames (signature + blob): the operations, and (index, reason) of the bad ones."""
    ops: list[Op] = []
    errors: list[tuple[int, str]] = []
    for i, frame in enumerate(frames):
        try:
            ops.append(_decode_frame(frame))
        except MalformedOp as exc:
            errors.append((i, str(exc)))
    return ops, errors


def _decode_frame(frame: bytes) -> Op:
    """One signed frame (signature + blob) as an Op, or MalformedOp ("truncated" when too short)."""
    frame = bytes(frame)
    if len(frame) <= SIG_LEN:
        raise MalformedOp("truncated")
    blob = frame[SIG_LEN:]
    return decode(blob, frame[:SIG_LEN], blake3(blob).digest())


def order(
    ops: Sequence[Op], known: dict[bytes, int], rejected: set[bytes] | frozenset = frozenset()
) -> tuple[list[Op], list[Op], list[tuple[Op, str]]]:
    """Sort a batch so every operation follows its dependencies: (ready, waiting, bad).

    `known` maps applied op ids to their hlc. Ready ops have every dependency known or earlier
    in `ready` and an hlc above each dependency's. Waiting ops miss a dependency (or depend on a
    waiting op). Bad ops (with a reason) depend on a rejected or bad op, have an hlc not above a
    dependency's, or sit in a dependency cycle. Duplicates and already known ops are dropped.
    """
    index: dict[bytes, int] = {}
    batch: list[Op] = []
    for op in ops:
        if op.id in known or op.id in index:
            continue
        index[op.id] = len(batch)
        batch.append(op)
    n = len(batch)
    indegree = [0] * n
    children: list[list[int]] = [[] for _ in range(n)]
    for i, op in enumerate(batch):
        for dep in op.deps:
            j = index.get(dep)
            if j is not None:
                indegree[i] += 1
                children[j].append(i)
    queue = [i for i in range(n) if indegree[i] == 0]
    state = [0] * n  # 0 unvisited, 1 ready, 2 waiting, 3 bad
    ready: list[Op] = []
    waiting: list[Op] = []
    bad: list[tuple[Op, str]] = []
    head = 0
    while head < len(queue):
        i = queue[head]
        head += 1
        op = batch[i]
        status, reason = 1, ""
        for dep in op.deps:
            if dep == op.id:
                status, reason = 3, "dependency cycle"
                break
            j = index.get(dep)
            if j is not None:
                s = state[j]
                if s == 3:
                    status, reason = 3, "dependency rejected"
                    break
                if s == 2:
                    status = 2
                elif batch[j].hlc >= op.hlc:
                    status, reason = 3, "clock not after dependency"
                    break
            elif dep in rejected:
                status, reason = 3, "dependency rejected"
                break
            else:
                dep_hlc = known.get(dep)
                if dep_hlc is None:
                    status = 2
                elif dep_hlc >= op.hlc:
                    status, reason = 3, "clock not after dependency"
                    break
        state[i] = status
        if status == 1:
            ready.append(op)
        elif status == 2:
            waiting.append(op)
        else:
            bad.append((op, reason))
        for c in children[i]:
            indegree[c] -= 1
            if indegree[c] == 0:
                queue.append(c)
    for i in range(n):
        if state[i] == 0:
            bad.append((batch[i], "dependency cycle"))
    return ready, waiting, bad


def merge(registers: dict, ops: Sequence[Op]) -> list[bool]:
    """Apply ops in order to last-writer-wins registers {(kind, key): (hlc, id)}; which ones won."""
    won = []
    for op in ops:
        reg = (op.kind, op.key)
        cur = registers.get(reg)
        if cur is None or (op.hlc, op.id) > cur:
            registers[reg] = (op.hlc, op.id)
            won.append(True)
        else:
            won.append(False)
    return won


def ingest(
    frames: Sequence[bytes], known: dict[bytes, int], registers: dict
) -> tuple[list[Op], list[bool], list[Op], list[tuple[Op, str]], list[tuple[int, str]]]:
    """parse_frames + order + merge (no signature checks): the replica's apply path for a batch.

    Ready ops are added to `known`. Returns (ready, won, waiting, bad, malformed).
    """
    ops, errors = parse_frames(frames)
    ready, waiting, bad = order(ops, known)
    won = merge(registers, ready)
    for op in ready:
        known[op.id] = op.hlc
    return ready, won, waiting, bad, errors


class Dag:
    """One replica's applied operations (id -> hlc), heads and last-writer-wins registers.

    Why a class: the native twin keeps these in C tables, so `ingest` applies a whole batch of
    frames without one Python object per operation; this twin keeps them in dicts and a set,
    with the same API and the same results (tests/crdt/test_core.py checks they agree).
    `get`/`in`/`len` make it usable as the `known` mapping of `order`.
    """

    __slots__ = ("_heads", "_known", "_registers", "max_hlc")

    def __init__(self) -> None:
        self._known: dict[bytes, int] = {}
        self._heads: set[bytes] = set()
        self._registers: dict[tuple[str, str], tuple[int, bytes]] = {}
        self.max_hlc = 0

    def __len__(self) -> int:
        return len(self._known)

    def __contains__(self, op_id: object) -> bool:
        return op_id in self._known

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.ids())

    def get(self, op_id: bytes, default: int | None = None) -> int | None:
        """The hlc of an applied op."""
        return self._known.get(op_id, default)

    def ids(self) -> list[bytes]:
        """Every applied op id, sorted."""
        return sorted(self._known)

    def heads(self) -> list[bytes]:
        """Applied ops no other applied op depends on, sorted."""
        return sorted(self._heads)

    @property
    def register_count(self) -> int:
        return len(self._registers)

    def register(self, kind: str, key: str) -> tuple[int, bytes] | None:
        """The (hlc, op id) holding register (kind, key)."""
        return self._registers.get((kind, key))

    def registers(self) -> dict[tuple[str, str], tuple[int, bytes]]:
        """A copy of every register: {(kind, key): (hlc, op id)}."""
        return dict(self._registers)

    def apply(self, ops: Sequence[Op]) -> list[bool]:
        """Apply ops already in causal order (see `order`); which won their register.
        An op applied before is skipped (and did not win)."""
        won = []
        registers, known, heads = self._registers, self._known, self._heads
        for op in ops:
            if op.id in known:
                won.append(False)
                continue
            reg = (op.kind, op.key)
            cur = registers.get(reg)
            if cur is None or (op.hlc, op.id) > cur:
                registers[reg] = (op.hlc, op.id)
                won.append(True)
            else:
                won.append(False)
            known[op.id] = op.hlc
            heads.difference_update(op.deps)
            heads.add(op.id)
            if op.hlc > self.max_hlc:
                self.max_hlc = op.hlc
        return won

    def export(self) -> bytes:
        """Every applied op as a 40-byte record (id, hlc u64 big-endian), sorted: a snapshot's cover."""
        return b"".join(sorted(op_id + hlc.to_bytes(8, "big") for op_id, hlc in self._known.items()))

    def cover(self, records: bytes, heads: Sequence[bytes], ops: Sequence[Op]) -> None:
        """Adopt a snapshot on an empty Dag: the `export` records are known ops, `heads` its heads,
        and `ops` (each covered, with the same hlc) fill the registers. ValueError if inconsistent
        (then discard the Dag)."""
        if self._known:
            raise ValueError("cover is for an empty Dag")
        if len(records) % 40:
            raise ValueError("records are 40 bytes each")
        known = self._known
        for at in range(0, len(records), 40):
            hlc = int.from_bytes(records[at + 32 : at + 40], "big")
            known[records[at : at + 32]] = hlc
            if hlc > self.max_hlc:
                self.max_hlc = hlc
        for head in heads:
            if head not in known:
                raise ValueError("a head is not covered")
            self._heads.add(head)
        for op in ops:
            if known.get(op.id) != op.hlc:
                raise ValueError("a register's op is not covered")
            reg = (op.kind, op.key)
            cur = self._registers.get(reg)
            if cur is None or (op.hlc, op.id) > cur:
                self._registers[reg] = (op.hlc, op.id)

    def ingest(
        self, frames: Sequence[bytes], rejected: set[bytes] | frozenset = frozenset()
    ) -> tuple[list[int], list[bool], list[int], list[tuple[int, str]], list[tuple[int, str]]]:
        """parse + hash + `order` + `apply` a batch of signed frames (no signature checks).

        Returns frame indices: (ready in apply order, won per ready op, waiting, bad with a reason,
        malformed with a reason). Duplicates and known ops are dropped, as in `order`.
        """
        ops: list[Op] = []
        first: dict[bytes, int] = {}
        malformed: list[tuple[int, str]] = []
        for i, frame in enumerate(frames):
            try:
                op = _decode_frame(frame)
            except MalformedOp as exc:
                malformed.append((i, str(exc)))
                continue
            ops.append(op)
            first.setdefault(op.id, i)
        ready, waiting, bad = order(ops, self._known, rejected)
        won = self.apply(ready)
        return (
            [first[op.id] for op in ready],
            won,
            [first[op.id] for op in waiting],
            [(first[op.id], reason) for op, reason in bad],
            malformed,
        )


# -- Bloom filters of op ids (anti-entropy) --------------------------------------------------
# Layout: one byte k (hash count), then the bit array. Bit positions come from the id itself
# (ids are BLAKE3 outputs): h1, h2 = the first two little-endian u64s, position i is
# (h1 + i * (h2 | 1)) mod 2^64 mod m.


def bloom_new(capacity: int, fp_rate: float = 0.01) -> bytearray:
    """An empty filter sized for `capacity` ids at false-positive rate `fp_rate`."""
    capacity = max(1, capacity)
    if not 0.0 < fp_rate < 1.0:
        raise ValueError("fp_rate is between 0 and 1")
    m = max(64, math.ceil(-capacity * math.log(fp_rate) / (math.log(2) ** 2)))
    m = (m + 7) // 8 * 8
    k = min(16, max(1, round(m / capacity * math.log(2))))
    out = bytearray(1 + m // 8)
    out[0] = k
    return out


def _bloom_shape(bloom: bytes | bytearray) -> tuple[int, int]:
    if len(bloom) < 2 or not 1 <= bloom[0] <= 32:
        raise ValueError("not a bloom filter")
    return bloom[0], (len(bloom) - 1) * 8


def _positions(op_id: bytes, k: int, m: int) -> Iterable[int]:
    if len(op_id) != ID_LEN:
        raise ValueError("ids are 32 bytes")
    h1 = int.from_bytes(op_id[0:8], "little")
    h2 = int.from_bytes(op_id[8:16], "little") | 1
    for i in range(k):
        yield ((h1 + i * h2) & MASK64) % m


def bloom_add(bloom: bytearray, op_id: bytes) -> None:
    k, m = _bloom_shape(bloom)
    for p in _positions(op_id, k, m):
        bloom[1 + (p >> 3)] |= 1 << (p & 7)


def bloom_has(bloom: bytes | bytearray, op_id: bytes) -> bool:
    k, m = _bloom_shape(bloom)
    return all(bloom[1 + (p >> 3)] & (1 << (p & 7)) for p in _positions(op_id, k, m))


def bloom_build(ids: Sequence[bytes], fp_rate: float = 0.01) -> bytes:
    bloom = bloom_new(len(ids), fp_rate)
    for op_id in ids:
        bloom_add(bloom, op_id)
    return bytes(bloom)


def bloom_missing(bloom: bytes | bytearray, ids: Sequence[bytes]) -> list[int]:
    """Indices of the ids the filter certainly does not hold."""
    _bloom_shape(bloom)
    return [i for i, op_id in enumerate(ids) if not bloom_has(bloom, op_id)]
