"""One replica's operation DAG in memory: which ops it has, its heads, its registers, its buffer.

A Replica decides, for each incoming frame, to apply, buffer (a dependency is missing), drop
(duplicate, or buffer full) or reject it. Rejection depends only on the operation and its
causal past (author not trusted, bad signature, malformed, clock not after a dependency, a
rejected dependency, a value the application refuses), so every honest replica rejects the
same ones. The one exception is the clock check against this replica's own wall clock: an op
too far in the future is refused *for now* (not remembered as bad); it is accepted when offered
again once the clock has caught up.

Persistence is the caller's (shoal.crdt.statedb); the Replica is the pure decision logic, so the
property tests run many of them in one process.
"""

from __future__ import annotations

import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from shoal import _native
from shoal.crdt.clock import SHIFT, HybridClock
from shoal.crdt.signing import Signer, verify_op

MAX_BUFFER = 20_000  # ops waiting for a dependency, all authors
MAX_SKEW_MS = 60_000  # how far ahead of our wall clock an op's timestamp may be
BUFFER_TTL = 600.0  # seconds a buffered op waits before it is dropped (anti-entropy re-offers it)
REMEMBER_REJECTED = 100_000
# Reasons that say nothing about the op id: the signature is outside the signed bytes (anyone can
# send a genuine op with a broken signature first), and the future check depends on our clock.
TRANSIENT = frozenset({"bad signature", "clock too far ahead"})


Signatures = dict[tuple[bytes, bytes], bool]  # (op id, signature) -> does it hold


def verify_signatures(ops: Sequence[Any]) -> Signatures:
    """Ed25519 verdicts for ops, keyed by (id, signature): a pure function of the ops, so it can
    run on a worker thread while the event loop serves (`cryptography` holds the GIL for each
    ~80 us verify, so the loop gets the GIL back at the next switch interval, not after the batch)."""
    return {(op.id, op.sig): verify_op(op.author, op.id, op.sig) for op in ops}


@dataclass
class Admission:
    """What one batch did: applied ops in causal order (and which won their register)."""

    applied: list[Any] = field(default_factory=list)
    won: list[bool] = field(default_factory=list)
    buffered: int = 0
    duplicate: int = 0
    rejected: list[tuple[bytes, str]] = field(default_factory=list)
    dropped: int = 0
    missing: set[bytes] = field(default_factory=set)


class Replica:
    """The op DAG and last-writer-wins registers of one node."""

    def __init__(
        self,
        signer: Signer,
        trusted: Iterable[bytes] = (),
        validate: Callable[[Any], str | None] | None = None,
        *,
        core: Any = None,
        clock: HybridClock | None = None,
        verify: bool = True,
        max_buffer: int = MAX_BUFFER,
        max_skew_ms: int = MAX_SKEW_MS,
    ) -> None:
        self.core = core or _native.load("crdt")
        self.signer = signer
        self.trusted = {signer.public, *trusted}
        self.validate = validate
        self.clock = clock or HybridClock()
        self.verify = verify
        self.max_buffer = max_buffer
        self.max_skew_ms = max_skew_ms
        self.dag: Any = self.core.Dag()  # applied op ids -> hlc, heads, registers (C tables natively)
        self.buffer: dict[bytes, tuple[Any, float]] = {}  # op id -> (op, buffered at)
        self.waiting_on: dict[bytes, set[bytes]] = {}  # missing dep -> buffered op ids
        self.buffered_by: Counter[bytes] = Counter()  # author -> ops in the buffer (half each at most)
        self.rejected_ids: OrderedDict[bytes, str] = OrderedDict()
        self.rejected = Counter()  # reason -> count
        self.dropped = 0

    @property
    def known(self) -> Any:
        """Applied op ids (`in`, `len`, `get(id)` -> hlc): the Dag itself."""
        return self.dag

    @property
    def heads(self) -> set[bytes]:
        return set(self.dag.heads())

    @property
    def registers(self) -> dict[tuple[str, str], tuple[int, bytes]]:
        """A copy of every register {(kind, key): (hlc, op id)} (tests, debugging)."""
        return self.dag.registers()

    def reset(self, dag: Any) -> None:
        """Adopt a Dag rebuilt elsewhere (the persisted log, a snapshot); the buffer is kept."""
        self.dag = dag
        self.clock.observe(dag.max_hlc)

    # -- local writes ---------------------------------------------------------------------
    def create(self, kind: str, key: str, actor: str, value: bytes | None) -> Any:
        """A new signed local op over the current heads (not applied yet: pass it to admit)."""
        blob = self.core.encode(
            self.signer.public, self.clock.tick(), self.dag.heads(), kind, key, actor, value
        )
        op_id = self.core.digest(blob)
        return self.core.decode(blob, self.signer.sign_op(op_id), op_id)

    # -- admission ------------------------------------------------------------------------
    def admit_frames(self, frames: Sequence[bytes]) -> Admission:
        ops, malformed = self.core.parse_frames(frames)
        return self.admit_parsed(ops, malformed)

    def admit_parsed(
        self, ops: Sequence[Any], malformed: Sequence[tuple[int, str]], signatures: Signatures | None = None
    ) -> Admission:
        """admit() for the output of core.parse_frames (malformed frames are counted)."""
        result = Admission()
        for _, reason in malformed:
            self.rejected["malformed: " + reason] += 1
            result.rejected.append((b"", "malformed: " + reason))
        return self.admit(ops, result, signatures=signatures)

    def to_verify(self, ops: Sequence[Any]) -> list[Any]:
        """The ops whose signature admit() would check now (new, from a trusted author)."""
        if not self.verify:
            return []
        seen = self.dag, self.buffer, self.rejected_ids
        return [op for op in ops if op.author in self.trusted and not any(op.id in s for s in seen)]

    def admit(
        self,
        ops: Sequence[Any],
        result: Admission | None = None,
        trusted_source: bool = False,
        signatures: Signatures | None = None,
    ) -> Admission:
        """Check and apply what can be applied; buffer what waits for a dependency.

        `signatures` holds verdicts computed beforehand off the event loop (verify_signatures);
        an op it lacks is verified here, so the outcome is the same either way."""
        result = result or Admission()
        fresh = []
        now_ms = self.clock.wall_ms()
        for op in ops:
            if op.id in self.known or op.id in self.buffer:
                result.duplicate += 1
                continue
            if op.id in self.rejected_ids:
                result.duplicate += 1
                continue
            reason = None if trusted_source else self._check(op, now_ms, signatures)
            if reason is None:
                fresh.append(op)
            elif reason in TRANSIENT:  # not a property of the op id: refused, not remembered
                self.rejected[reason] += 1
                result.rejected.append((op.id, reason))
            else:
                self._reject(op.id, reason, result)
        candidates = fresh
        while candidates:
            ready, waiting, bad = self.core.order(candidates, self.dag, self.rejected_ids)
            for op, reason in bad:
                self._unbuffer(op.id)
                self._reject(op.id, reason, result)
            won = self.dag.apply(ready)
            woken: dict[bytes, Any] = {}
            if ready:
                self.clock.observe(max(op.hlc for op in ready))
            for op in ready:
                self._unbuffer(op.id)
                for waiter in self.waiting_on.pop(op.id, ()):
                    entry = self.buffer.get(waiter)
                    if entry is not None:
                        woken[waiter] = entry[0]
            result.applied += ready
            result.won += won
            for op in waiting:
                self._buffer(op, result)
            for wid in woken:
                self._unbuffer(wid)
            candidates = list(woken.values())
        result.missing = {d for d in self.waiting_on if d not in self.known}
        return result

    def check_snapshot(
        self, records: bytes, heads: list[bytes], ops: Sequence[Any], signatures: Signatures | None = None
    ) -> tuple[Any, str | None]:
        """A Dag for a snapshot from a trusted peer, or why it is refused. Every winner op is checked
        as if new (author, signature, clock, value); what the snapshot says it covers is trusted."""
        now_ms = self.clock.wall_ms()
        regs = set()
        for op in ops:
            reason = self._check(op, now_ms, signatures)
            if reason is not None:
                return None, f"winner {op.id.hex()[:12]}: {reason}"
            if (op.kind, op.key) in regs:
                return None, "two winners for one register"
            regs.add((op.kind, op.key))
        dag = self.core.Dag()
        try:
            dag.cover(records, heads, ops)
        except (ValueError, TypeError) as exc:
            return None, str(exc)
        return dag, None

    def _check(self, op: Any, now_ms: int, signatures: Signatures | None = None) -> str | None:
        if op.author not in self.trusted:
            return "unknown author"
        if self.verify:
            ok = None if signatures is None else signatures.get((op.id, op.sig))
            if ok is None:
                ok = verify_op(op.author, op.id, op.sig)
            if not ok:
                return "bad signature"
        if (op.hlc >> SHIFT) > now_ms + self.max_skew_ms:
            return "clock too far ahead"
        if self.validate is not None:
            return self.validate(op)
        return None

    def _reject(self, op_id: bytes, reason: str, result: Admission) -> None:
        self.rejected[reason] += 1
        result.rejected.append((op_id, reason))
        if op_id:
            self.rejected_ids[op_id] = reason
            if len(self.rejected_ids) > REMEMBER_REJECTED:
                self.rejected_ids.popitem(last=False)

    def _buffer(self, op: Any, result: Admission) -> None:
        if op.id in self.buffer:
            return
        if len(self.buffer) >= self.max_buffer or self.buffered_by[op.author] >= self.max_buffer // 2:
            self.dropped += 1
            result.dropped += 1
            return
        self.buffer[op.id] = (op, time.monotonic())
        self.buffered_by[op.author] += 1
        result.buffered += 1
        for dep in op.deps:
            if dep not in self.known:
                self.waiting_on.setdefault(dep, set()).add(op.id)

    def _unbuffer(self, op_id: bytes) -> None:
        entry = self.buffer.pop(op_id, None)
        if entry is None:
            return
        self.buffered_by[entry[0].author] -= 1
        for dep in entry[0].deps:
            waiters = self.waiting_on.get(dep)
            if waiters is not None:
                waiters.discard(op_id)
                if not waiters:
                    del self.waiting_on[dep]

    def expire_buffer(self, ttl: float = BUFFER_TTL) -> int:
        """Drop buffered ops older than `ttl` seconds (a flood of ops that never resolve)."""
        cutoff = time.monotonic() - ttl
        old = [op_id for op_id, (_, at) in self.buffer.items() if at < cutoff]
        for op_id in old:
            self._unbuffer(op_id)
        self.dropped += len(old)
        return len(old)

    def missing(self, limit: int = 1000) -> list[bytes]:
        """Dependencies buffered ops wait for (to fetch by hash)."""
        out = []
        for dep in self.waiting_on:
            if dep not in self.known:
                out.append(dep)
                if len(out) >= limit:
                    break
        return out

    def restore(
        self,
        frames: Sequence[bytes],
        ids: Sequence[bytes] = (),
        base: tuple[bytes, list[bytes]] | None = None,
    ) -> None:
        """Rebuild from a persisted op log (checked when first applied): one Dag.ingest, no
        Python object per op, so a restart with a long log is quick. `base` (records, heads) is
        a snapshot or compaction point covering ops before or inside the log; the log's frames
        it covers (`ids` are the frames' op ids) only refill the registers."""
        dag = self.core.Dag()
        if base is not None:
            records, heads = base
            covered = {records[i : i + 32] for i in range(0, len(records), 40)}
            inside = [f for f, i in zip(frames, ids, strict=True) if i in covered]
            ops, malformed = self.core.parse_frames(inside)
            if malformed:
                raise RuntimeError(f"damaged operation log entries: {malformed[:3]}")
            dag.cover(records, heads, ops)
            frames = [f for f, i in zip(frames, ids, strict=True) if i not in covered]
        _, _, waiting, bad, malformed = dag.ingest(frames)
        if malformed:
            raise RuntimeError(f"damaged operation log entries: {malformed[:3]}")
        if waiting or bad:
            raise RuntimeError(f"persisted op log misses dependencies of {len(waiting) + len(bad)} ops")
        self.reset(dag)
