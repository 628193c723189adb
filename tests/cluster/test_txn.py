"""The multi-key (transaction) side of the linearizability checker: keys that a txn ties are
checked as one map, so a torn transaction is caught even when every key alone looks fine; on
known-good and known-bad histories, and on real threads against an in-process map (atomic, and
with torn transactions planted)."""

from __future__ import annotations

import random
import threading
import time

import pytest

from shoal.testing.cluster import checkers, linearizable
from shoal.testing.cluster.history import FAIL, OK, UNKNOWN, History, Op


def txn(p, micro, t0, t1, outcome, result):
    keys = ",".join(sorted({k for _, k, _ in micro}))
    return Op(p, "txn", keys, micro, t0, t1, outcome, result)


def read(p, key, t0, t1, state):
    return Op(p, "read", key, None, t0, t1, OK, state)


AB = [["check", "a", 0], ["check", "b", 0], ["set", "a", "a1"], ["set", "b", "b1"]]

GOOD = {
    "txn then reads": [
        txn(0, AB, 0, 1, OK, [0, 0, 1, 1]),
        read(1, "a", 2, 3, ["a1", 1]),
        read(1, "b", 4, 5, ["b1", 1]),
    ],
    "reads concurrent with the txn, both old": [
        txn(0, AB, 0, 10, OK, [0, 0, 1, 1]),
        read(1, "a", 1, 2, [None, 0]),
        read(1, "b", 3, 4, [None, 0]),
    ],
    "reads concurrent, old then new": [
        txn(0, AB, 0, 10, OK, [0, 0, 1, 1]),
        read(1, "a", 1, 2, [None, 0]),
        read(1, "b", 3, 4, ["b1", 1]),
    ],
    "snapshot after": [
        txn(0, AB, 0, 1, OK, [0, 0, 1, 1]),
        txn(1, [["check", "a", 1], ["check", "b", 1]], 2, 3, OK, [1, 1]),
    ],
    "409 on a stale check": [
        txn(0, AB, 0, 1, OK, [0, 0, 1, 1]),
        txn(1, [["check", "a", 0], ["set", "a", "x"], ["set", "b", "y"]], 2, 3, FAIL, ["a", 1]),
        read(1, "b", 4, 5, ["b1", 1]),
    ],
    "unknown txn applied later": [
        txn(0, AB, 0, None, UNKNOWN, None),
        read(1, "a", 5, 6, ["a1", 1]),
        txn(1, [["check", "a", 1], ["check", "b", 1]], 7, 8, OK, [1, 1]),
    ],
    "unknown txn never applied": [
        txn(0, AB, 0, None, UNKNOWN, None),
        Op(1, "write", "a", "w", 5, 6, OK, 1),
        read(1, "b", 7, 8, [None, 0]),
    ],
    "txn over a and a write to c: c still its own key": [
        txn(0, AB, 0, 1, OK, [0, 0, 1, 1]),
        Op(1, "write", "c", "c1", 0, 1, OK, 1),
        read(1, "c", 2, 3, ["c1", 1]),
    ],
}

BAD = {
    "torn: a new, then b old": [
        txn(0, AB, 0, 10, OK, [0, 0, 1, 1]),
        read(1, "a", 1, 2, ["a1", 1]),
        read(1, "b", 3, 4, [None, 0]),
    ],
    "torn snapshot: a new with b old": [
        txn(0, AB, 0, 10, OK, [0, 0, 1, 1]),
        txn(1, [["check", "a", 1], ["check", "b", 0]], 1, 2, OK, [1, 0]),
    ],
    "half applied after the fact": [
        txn(0, AB, 0, 1, OK, [0, 0, 1, 1]),
        read(1, "a", 2, 3, ["a1", 1]),
        read(1, "b", 4, 5, [None, 0]),
    ],
    "acked txn whose checks could not hold": [
        Op(1, "write", "a", "w", 0, 1, OK, 1),
        txn(0, AB, 2, 3, OK, [0, 0, 1, 1]),
    ],
    "409 although every check held": [
        txn(1, [["check", "a", 0], ["set", "a", "x"], ["set", "b", "y"]], 0, 1, FAIL, ["a", 0]),
    ],
    "unknown txn applied partly": [
        txn(0, AB, 0, None, UNKNOWN, None),
        read(1, "a", 5, 6, ["a1", 1]),
        read(1, "b", 7, 8, [None, 0]),
    ],
    "lost txn: snapshot after it sees nothing": [
        txn(0, AB, 0, 1, OK, [0, 0, 1, 1]),
        txn(1, [["check", "a", 0], ["check", "b", 0]], 2, 3, OK, [0, 0]),
    ],
}


@pytest.mark.parametrize("name", GOOD)
def test_known_good_histories(name):
    result = linearizable.check(History(GOOD[name]))
    assert result.ok, result.describe()


@pytest.mark.parametrize("name", BAD)
def test_known_bad_histories(name):
    result = linearizable.check(History(BAD[name]))
    assert not result.ok and result.anomalies, result.describe()


def test_txn_ties_keys_into_one_group_and_per_key_alone_misses_the_tear():
    h = History(BAD["torn: a new, then b old"] + [Op(2, "write", "c", "x", 0, 1, OK, 1)])
    result = linearizable.check(h)
    assert set(result.keys) == {"a+b", "c"} and result.keys["a+b"].ok is False and result.keys["c"].ok
    # each key on its own is linearizable: only the group check sees the tear
    for key in ("a", "b"):
        alone = [op for op in BAD["torn: a new, then b old"] if op.f == "read" and op.key == key]
        alone += [Op(0, "write", key, f"{key}1", 0, 10, OK, 1)]
        assert linearizable.check(History(alone)).ok


def test_lost_txn_write_is_caught():
    h = History([txn(0, AB, 0, 1, OK, [0, 0, 1, 1])])
    assert checkers.lost_kv_writes(h, {"a": ("a1", 1), "b": ("b1", 1)}) == []
    found = checkers.lost_kv_writes(h, {"a": ("a1", 1), "b": (None, 0)})
    assert len(found) == 1 and found[0].startswith("b: acked txn of 'b1' at version 1")


class Map:
    """An in-process versioned map; txns atomic under one lock, or `torn`: sets applied one by
    one with the lock released (and a pause) between them."""

    def __init__(self, torn: bool = False) -> None:
        self.lock = threading.Lock()
        self.data: dict[str, tuple[str, int]] = {}
        self.torn = torn

    def get(self, k: str) -> tuple[str | None, int]:
        with self.lock:
            return self.data.get(k, (None, 0))

    def txn(self, micro: list) -> tuple[bool, object]:
        with self.lock:
            for kind, k, v in micro:
                if kind == "check" and self.data.get(k, (None, 0))[1] != v:
                    return False, [k, self.data.get(k, (None, 0))[1]]
            if not self.torn:
                return True, [v if kind == "check" else self._set(k, v) for kind, k, v in micro]
        out = []
        for kind, k, v in micro:
            if kind == "check":
                out.append(v)
                continue
            with self.lock:
                out.append(self._set(k, v))
            time.sleep(0.002)
        return True, out

    def _set(self, k: str, v: str) -> int:
        version = self.data.get(k, (None, 0))[1] + 1
        self.data[k] = (v, version)
        return version


def record(m: Map, clients: int = 3, ops: int = 120, seed: int = 5) -> History:
    h = History()
    keys = ["a", "b", "c"]

    def client(p: int) -> None:
        rng = random.Random(seed * 100 + p)
        seen: dict[str, int] = {}
        for n in range(ops):
            time.sleep(rng.random() * 0.001)
            kind = rng.choice(("read", "txn", "snapshot"))
            if kind == "read":
                k = rng.choice(keys)
                op = h.invoke(p, "read", k)
                state = m.get(k)
                seen[k] = state[1]
                h.complete(op, OK, list(state))
                continue
            ks = sorted(rng.sample(keys, rng.choice((2, 3))))
            micro = [["check", k, seen.get(k, 0)] for k in ks if kind == "snapshot" or rng.random() < 0.5]
            if kind == "txn":
                micro += [["set", k, f"{p}-{n}-{k}"] for k in ks]
            op = h.invoke(p, "txn", ",".join(ks), micro)
            done, result = m.txn(micro)
            if done:
                h.complete(op, OK, result)
                seen.update({k: v for (_, k, _), v in zip(micro, result, strict=True)})
            else:
                h.complete(op, FAIL, result)
                seen[result[0]] = result[1]

    threads = [threading.Thread(target=client, args=(p,)) for p in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return h


def test_recorded_history_of_an_atomic_map_passes():
    h = record(Map())
    result = linearizable.check(h)
    assert list(result.keys) == ["a+b+c"] and result.ok, result.describe()
    assert sum(op.f == "txn" and op.outcome == OK for op in h) > 50


def test_planted_bug_torn_transactions_are_caught():
    result = linearizable.check(record(Map(torn=True)))
    assert result.keys["a+b+c"].ok is False, result.describe()
