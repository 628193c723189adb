"""Linearizability of a versioned kv history: per key where it can be, per group of keys where
transactions tie keys together.

The search is Wing & Gong's with Lowe's memoisation (the design Knossos and porcupine use):
walk the history's call/return entries in time order; at a call, try to linearize that op
now (the model accepts it and the pair (set of linearized ops, model state) was not tried
before), lift it out and start over; at a return whose op is not linearized yet, undo the last
choice. A history is linearizable when every acknowledged op is placed.

The model is the kv service's key: state (value, version), version 0 = absent.
- read ok: saw [value, version], which must equal the state;
- write ok: state becomes (v, version + 1), and the answer's version must be version + 1;
- cas ok [expected, v]: requires version == expected; state (v, expected + 1);
- cas fail (a 409, certain): requires version != expected (and == the version found);
- write / cas `unknown` (timed out, reset, 5xx): returns at infinity and may be linearized
  as applied or as nothing, at any point after its call (both are tried);
- reads that did not complete, and `fail`s that were never sent, constrain nothing: dropped.

Transactions (`f == "txn"`, POST /v1/txn) break P-compositionality: one op changes several
keys at once, so a history can be linearizable key by key and still show a torn transaction.
Keys that some txn touches together are merged into one group (union-find), and each group is
checked as one multi-register map, state = a (value, version) per key, every op atomic:
- txn value = [[kind, key, arg], ...], kind "check" (arg = the expected version, 0 = absent)
  or "set" (arg = the value), at most one set per key; every check looks at the state before
  the txn (the service evaluates all checks before any write);
- txn ok: every check holds; each set makes (arg, version + 1); the answer's versions (one per
  op: the checked version, or the new one) must be those;
- txn fail (a 409, certain): some check does not hold; if the 409 names [key, found], that
  key's version is `found` and differs from its check;
- txn unknown: applied (if its checks hold) or not; a check-only unknown txn is dropped;
- single-key ops on a group's keys use the register model on their key's slot.
Keys no txn touches are still checked one by one.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from shoal.testing.cluster.history import FAIL, OK, UNKNOWN, Op

State = tuple[Any, int]
INITIAL: State = (None, 0)


@dataclass
class KeyResult:
    key: str
    ok: bool | None  # None: the search gave up (budget) - neither proof nor anomaly
    ops: int
    steps: int
    linearized: list[int] = field(default_factory=list)  # the longest order found (op indexes)
    stuck: list[Op] = field(default_factory=list)  # ops that could not be placed after it
    state: Any = INITIAL


@dataclass
class Result:
    keys: dict[str, KeyResult]

    @property
    def ok(self) -> bool:
        return all(k.ok is True for k in self.keys.values())

    @property
    def anomalies(self) -> list[KeyResult]:
        return [k for k in self.keys.values() if k.ok is False]

    def describe(self) -> str:
        lines = []
        for k in self.keys.values():
            status = {True: "linearizable", False: "NOT linearizable", None: "undecided"}[k.ok]
            lines.append(f"{k.key}: {status} ({k.ops} ops, {k.steps} steps)")
            if k.ok is False:
                lines.append(f"  state after the longest linearizable prefix: {k.state}")
                for op in k.stuck[:5]:
                    lines.append(f"  cannot place: {op.f} {op.value} -> {op.outcome} {op.result} on {op.node}"
                                 f" [{op.invoke:.3f}, {op.complete}]")  # fmt: skip
        return "\n".join(lines)


def _relevant(op: Op) -> bool:
    if op.f == "read":
        return op.outcome == OK
    if op.f == "write":
        return op.outcome in (OK, UNKNOWN)
    if op.f == "cas":
        return op.outcome in (OK, UNKNOWN) or (op.outcome == FAIL and op.result is not None)
    return False


def step(state: State, op: Op) -> list[State]:
    """The states the model may be in after `op` (empty: it cannot happen now)."""
    value, version = state
    if op.f == "read":
        seen = tuple(op.result) if op.result is not None else INITIAL
        return [state] if (seen[0], seen[1]) == (value, version) else []
    if op.f == "write":
        new = (op.value, version + 1)
        if op.outcome == OK:
            return [new] if op.result in (None, version + 1) else []
        return [new, state]
    if op.f == "cas":
        expected, v = op.value
        if op.outcome == FAIL:  # certain: the check saw another version
            return [state] if version != expected and op.result in (None, version) else []
        if op.outcome == OK:
            return [(v, expected + 1)] if version == expected and op.result in (None, expected + 1) else []
        return [(v, expected + 1), state] if version == expected else [state]
    raise ValueError(f"not a register op: {op.f}")


class _Entry:
    __slots__ = ("call", "idx", "match", "next", "op", "prev", "time")

    def __init__(self, op: Op | None, idx: int, call: bool, time: float) -> None:
        self.op, self.idx, self.call, self.time = op, idx, call, time
        self.match: _Entry | None = None
        self.prev: _Entry | None = None
        self.next: _Entry | None = None


def check_key(key: str, ops: list[Op], max_steps: int = 2_000_000, initial: State = INITIAL) -> KeyResult:
    """One key's register ops (reads, writes, CAS)."""
    return search(key, [op for op in ops if _relevant(op)], step, initial, max_steps)


def search(name: str, ops: list[Op], step: Callable[[Any, Op], list[Any]], initial: Any,
           max_steps: int = 2_000_000) -> KeyResult:  # fmt: skip
    """Wing-Gong/Lowe over `ops` (already filtered) with the model `step` from state `initial`."""
    key = name
    events: list[_Entry] = []
    for i, op in enumerate(ops):
        c = _Entry(op, i, True, op.invoke)
        end = op.complete if op.outcome != UNKNOWN and op.complete is not None else math.inf
        r = _Entry(op, i, False, end)
        c.match = r
        events += [c, r]
    # calls before returns at equal times: such ops count as concurrent (the permissive choice)
    events.sort(key=lambda e: (e.time, 0 if e.call else 1))
    head = _Entry(None, -1, True, -math.inf)
    prev = head
    for e in events:
        prev.next, e.prev = e, prev
        prev = e
    definite = sum(1 for op in ops if op.outcome != UNKNOWN)

    def lift(e: _Entry) -> None:
        for x in (e, e.match):
            x.prev.next = x.next
            if x.next is not None:
                x.next.prev = x.prev

    def unlift(e: _Entry) -> None:
        for x in (e.match, e):
            x.prev.next = x
            if x.next is not None:
                x.next.prev = x

    cache: set[tuple[int, Any]] = set()
    stack: list[tuple[_Entry, Any, int]] = []
    state, linearized, placed_definite = initial, 0, 0
    best: tuple[int, list[int], Any] = (-1, [], initial)
    entry, alt, steps = head.next, 0, 0
    while True:
        if placed_definite == definite:
            return KeyResult(key, True, len(ops), steps)
        steps += 1
        if steps > max_steps:
            return KeyResult(key, None, len(ops), steps)
        assert entry is not None
        if entry.call:
            options = step(state, entry.op)
            moved = False
            for k in range(alt, len(options)):
                bits = linearized | (1 << entry.idx)
                if (bits, options[k]) in cache:
                    continue
                cache.add((bits, options[k]))
                stack.append((entry, state, k))
                state, linearized = options[k], bits
                placed_definite += entry.op.outcome != UNKNOWN
                lift(entry)
                if len(stack) > best[0]:
                    best = (len(stack), [s[0].op.index for s in stack], state)
                entry, moved = head.next, True
                break
            alt = 0
            if not moved:
                entry = entry.next
        else:  # an op returned before we could place it: undo the last choice
            if not stack:
                placed = set(best[1])
                stuck = sorted((op for op in ops if op.index not in placed and op.outcome != UNKNOWN),
                               key=lambda o: o.invoke)  # fmt: skip
                return KeyResult(key, False, len(ops), steps, best[1], stuck, best[2])
            entry, state, alt = stack.pop()
            linearized &= ~(1 << entry.idx)
            placed_definite -= entry.op.outcome != UNKNOWN
            unlift(entry)
            alt += 1


TXN_FS = ("read", "write", "cas", "txn")


def txn_keys(op: Op) -> list[str]:
    return sorted({k for _, k, _ in op.value})


def _relevant_txn(op: Op) -> bool:
    if op.outcome == OK:
        return True
    if op.outcome == FAIL:
        return op.result is not None  # a 409 naming the key and the version found
    return op.outcome == UNKNOWN and any(kind == "set" for kind, _, _ in op.value)


def step_txn(slots: dict[str, int], state: tuple[State, ...], op: Op) -> list[tuple[State, ...]]:
    """The multi-register model: `state[slots[key]]` is that key's (value, version)."""
    if op.f != "txn":
        i = slots[op.key]
        return [(*state[:i], s, *state[i + 1 :]) for s in step(state[i], op)]
    holds = all(state[slots[k]][1] == arg for kind, k, arg in op.value if kind == "check")
    if op.outcome == FAIL:
        if holds:
            return []
        key, found = op.result
        if key not in slots:
            return []
        checked = [arg for kind, k, arg in op.value if kind == "check" and k == key]
        now = state[slots[key]][1]
        return [state] if now == found and all(now != c for c in checked) else []
    if not holds:
        return [] if op.outcome == OK else [state]
    new = list(state)
    versions = []
    for kind, k, arg in op.value:
        i = slots[k]
        if kind == "set":
            new[i] = (arg, new[i][1] + 1)
            versions.append(new[i][1])
        else:
            versions.append(arg)
    after = tuple(new)
    if op.outcome == OK:
        return [after] if op.result is None or list(op.result) == versions else []
    return [after, state]


def key_groups(ops: Iterable[Op]) -> dict[str, list[str]]:
    """Union-find of keys over the txns that touch several: root key -> the group's keys."""
    parent: dict[str, str] = {}

    def find(k: str) -> str:
        while parent.setdefault(k, k) != k:
            parent[k] = parent[parent[k]]
            k = parent[k]
        return k

    for op in ops:
        keys = txn_keys(op) if op.f == "txn" else [op.key]
        for k in keys[1:]:
            a, b = find(keys[0]), find(k)
            if a != b:
                parent[max(a, b)] = min(a, b)
        find(keys[0])
    groups: dict[str, list[str]] = defaultdict(list)
    for k in sorted(parent):
        groups[find(k)].append(k)
    return groups


def check_group(keys: list[str], ops: list[Op], max_steps: int = 2_000_000) -> KeyResult:
    """Several keys as one map (some txn ties them): every op atomic on the whole state."""
    slots = {k: i for i, k in enumerate(keys)}
    ops = [op for op in ops if (_relevant_txn(op) if op.f == "txn" else _relevant(op))]
    initial = tuple(INITIAL for _ in keys)
    return search("+".join(keys), ops, lambda st, op: step_txn(slots, st, op), initial, max_steps)


def check(history: Iterable[Op], max_steps: int = 2_000_000) -> Result:
    """Each key's register ops on their own (P-compositionality: linearizable per key iff
    linearizable as a whole), except keys tied by transactions: each such group as one map."""
    ops = [op for op in history if op.f in TXN_FS]
    groups = key_groups(ops)
    group_of = {k: root for root, keys in groups.items() for k in keys}
    by_group: dict[str, list[Op]] = defaultdict(list)
    for op in ops:
        by_group[group_of[txn_keys(op)[0] if op.f == "txn" else op.key]].append(op)
    out = {}
    for root, group_ops in sorted(by_group.items()):
        keys = groups[root]
        if len(keys) == 1 and not any(op.f == "txn" for op in group_ops):
            out[root] = check_key(root, group_ops, max_steps)
        else:
            r = check_group(keys, group_ops, max_steps)
            out[r.key] = r
    return Result(out)
