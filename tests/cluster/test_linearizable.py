"""The linearizability checker on known-good and known-bad register histories, and on histories
recorded from real threads against an in-process register (one correct, one serving stale reads)."""

from __future__ import annotations

import random
import threading
import time

import pytest

from shoal.testing.cluster import linearizable
from shoal.testing.cluster.history import FAIL, OK, UNKNOWN, History, Op


def hist(*rows: tuple) -> History:
    """rows: (process, f, value, invoke, complete, outcome, result), all on key "k"."""
    return History(Op(p, f, "k", v, t0, t1, out, res) for p, f, v, t0, t1, out, res in rows)


def verdict(h: History) -> bool | None:
    return linearizable.check(h).keys["k"].ok


GOOD = {
    "sequential": hist((0, "write", "a", 0, 1, OK, 1), (0, "read", None, 2, 3, OK, ["a", 1])),
    "empty read": hist((0, "read", None, 0, 1, OK, [None, 0]), (1, "write", "a", 2, 3, OK, 1)),
    "read concurrent with write sees new": hist(
        (0, "write", "a", 0, 10, OK, 1), (1, "read", None, 1, 2, OK, ["a", 1])
    ),
    "read concurrent with write sees old": hist(
        (0, "write", "a", 0, 10, OK, 1), (1, "read", None, 1, 2, OK, [None, 0])
    ),
    "unknown write seen later": hist(
        (0, "write", "a", 0, None, UNKNOWN, None), (1, "read", None, 5, 6, OK, ["a", 1])
    ),
    "unknown write never applied": hist(
        (0, "write", "a", 0, None, UNKNOWN, None),
        (1, "write", "b", 5, 6, OK, 1),
        (1, "read", None, 7, 8, OK, ["b", 1]),
    ),
    "cas": hist(
        (0, "write", "a", 0, 1, OK, 1),
        (1, "cas", [1, "b"], 2, 3, OK, 2),
        (0, "cas", [1, "c"], 4, 5, FAIL, 2),
        (0, "read", None, 6, 7, OK, ["b", 2]),
    ),
    "unknown cas applied": hist(
        (0, "write", "a", 0, 1, OK, 1),
        (1, "cas", [1, "b"], 2, None, UNKNOWN, None),
        (0, "read", None, 6, 7, OK, ["b", 2]),
    ),
    "two concurrent writes, reads agree on an order": hist(
        (0, "write", "a", 0, 10, OK, None),
        (1, "write", "b", 0, 10, OK, None),
        (2, "read", None, 1, 2, OK, ["b", 1]),
        (2, "read", None, 3, 4, OK, ["a", 2]),
    ),
}

BAD = {
    "stale read": hist(
        (0, "write", "a", 0, 1, OK, 1), (0, "write", "b", 2, 3, OK, 2), (1, "read", None, 4, 5, OK, ["a", 1])
    ),
    "read of a value never written": hist(
        (0, "write", "a", 0, 1, OK, 1), (1, "read", None, 2, 3, OK, ["z", 1])
    ),
    "version went back after an unknown write was seen": hist(
        (0, "write", "a", 0, None, UNKNOWN, None),
        (1, "read", None, 1, 2, OK, ["a", 1]),
        (1, "read", None, 3, 4, OK, [None, 0]),
    ),
    "cas succeeded on a wrong version": hist(
        (0, "write", "a", 0, 1, OK, 1), (1, "cas", [0, "b"], 2, 3, OK, 1)
    ),
    "cas refused though the version matched": hist(
        (0, "write", "a", 0, 1, OK, 1), (1, "cas", [1, "b"], 2, 3, FAIL, 1)
    ),
    "write acknowledged with a skipped version": hist(
        (0, "write", "a", 0, 1, OK, 1), (0, "write", "b", 2, 3, OK, 3)
    ),
    "two readers see the concurrent writes in opposite orders": hist(
        (0, "write", "a", 0, 10, OK, None),
        (1, "write", "b", 0, 10, OK, None),
        (2, "read", None, 1, 2, OK, ["b", 1]),
        (2, "read", None, 3, 4, OK, ["a", 2]),
        (3, "read", None, 5, 6, OK, ["b", 1]),
    ),
}


@pytest.mark.parametrize("name", sorted(GOOD))
def test_known_good_histories_are_linearizable(name):
    assert verdict(GOOD[name]) is True


@pytest.mark.parametrize("name", sorted(BAD))
def test_known_bad_histories_are_not(name):
    result = linearizable.check(BAD[name])
    assert result.keys["k"].ok is False
    assert "NOT linearizable" in result.describe()


def test_keys_are_checked_apart_and_a_bad_key_is_named():
    ops = [Op(0, "write", "x", "1", 0, 1, OK, 1), Op(1, "read", "x", None, 2, 3, OK, ["1", 1])]
    ops += [Op(0, "write", "y", "1", 0, 1, OK, 1), Op(1, "read", "y", None, 2, 3, OK, [None, 0])]
    result = linearizable.check(History(ops))
    assert result.keys["x"].ok is True and result.keys["y"].ok is False
    assert [k.key for k in result.anomalies] == ["y"]


def test_budget_exhausted_is_undecided_not_a_pass():
    # many unknown writes then reads that pin a version nobody reached: a large search
    rows = [(i, "write", f"v{i}", 0, None, UNKNOWN, None) for i in range(14)]
    rows += [(20, "read", None, 5, 6, OK, ["nope", 99])]
    result = linearizable.check(hist(*rows), max_steps=500)
    assert result.keys["k"].ok is None and not result.ok


class Register:
    """An in-process versioned register (linearizable: one lock), optionally serving stale reads."""

    def __init__(self, stale: bool = False) -> None:
        self.lock = threading.Lock()
        self.value: str | None = None
        self.version = 0
        self.history_of_states: list[tuple[str | None, int]] = [(None, 0)]
        self.stale = stale

    def read(self, rng: random.Random) -> tuple[str | None, int]:
        with self.lock:
            if self.stale and len(self.history_of_states) > 3 and rng.random() < 0.2:
                return self.history_of_states[-3]  # a lagging replica's answer
            return (self.value, self.version)

    def write(self, v: str) -> int:
        with self.lock:
            self.value, self.version = v, self.version + 1
            self.history_of_states.append((v, self.version))
            return self.version

    def cas(self, expected: int, v: str) -> tuple[bool, int]:
        with self.lock:
            if self.version != expected:
                return False, self.version
            self.value, self.version = v, self.version + 1
            self.history_of_states.append((v, self.version))
            return True, self.version


def record(register: Register, clients: int = 4, ops: int = 150, seed: int = 7) -> History:
    h = History()

    def client(p: int) -> None:
        rng = random.Random(seed * 100 + p)
        seen = 0
        for n in range(ops):
            time.sleep(rng.random() * 0.0005)
            kind = rng.choice(("read", "write", "cas"))
            if kind == "read":
                op = h.invoke(p, "read", "k")
                v = register.read(rng)
                seen = v[1]
                h.complete(op, OK, list(v))
            elif kind == "write":
                op = h.invoke(p, "write", "k", f"{p}-{n}")
                seen = register.write(f"{p}-{n}")
                if rng.random() < 0.1:  # the answer got lost: the client only knows it may have happened
                    h.complete(op, UNKNOWN)
                    op.complete = None
                else:
                    h.complete(op, OK, seen)
            else:
                op = h.invoke(p, "cas", "k", [seen, f"{p}-{n}"])
                done, version = register.cas(seen, f"{p}-{n}")
                h.complete(op, OK if done else FAIL, version)
                seen = version

    threads = [threading.Thread(target=client, args=(p,)) for p in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return h


def test_recorded_history_of_a_correct_register_passes():
    h = record(Register())
    assert len(h) == 600
    result = linearizable.check(h)
    assert result.ok, result.describe()


def test_planted_bug_stale_reads_are_caught():
    h = record(Register(stale=True))
    result = linearizable.check(h)
    assert result.keys["k"].ok is False, result.describe()
