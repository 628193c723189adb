"""Random operation sequences (with transactions and watches) on every backend: identical results.

MemoryStore is the reference; a small model of versions checks the reference itself.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from shoal.kv import Entry, KvError, Limits, TransactionOp, TxnResult

from .conftest import KINDS, open_store

LIMITS = Limits(max_value_bytes=8, max_txn_ops=5, history=24)  # trims every 3 revisions
KEYS = ["/a", "/a/b", "/a/c", "/a/b/c", "/a%", "/a_", "/A", "/b", "/é"]
keys = st.sampled_from(KEYS) | st.sampled_from(["", "x", "/bad\0", "/" + "k" * 1100])
values = st.binary(max_size=10)
prefixes = st.sampled_from(["", "/", "/a", "/a/", "/a/b", "/A", "/a%", "/é", "/z"])
patterns = st.sampled_from(["/a", "/a/*", "/*", "/b", "/a/b*", "/é"])
ops = st.one_of(
    st.builds(TransactionOp.check_version, keys, st.integers(0, 4)),
    st.builds(TransactionOp.set, keys, values),
    st.builds(TransactionOp.delete, keys),
)


def norm(result):
    """Comparable form: timestamps differ between stores, everything else must not."""
    if isinstance(result, Entry):
        return ("entry", result.key, result.value, result.version, result.revision)
    if isinstance(result, TxnResult):
        return ("txn", result.revision, result.versions, result.deleted)
    if isinstance(result, list):
        return [norm(r) for r in result]
    return result


def outcome(exc: BaseException) -> tuple:
    attrs = {k: v for k, v in vars(exc).items() if not k.startswith("_")}
    return ("error", type(exc).__name__, sorted(attrs.items(), key=str))


class SameResults(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.dir = Path(tempfile.mkdtemp(prefix="kv-stateful-"))
        self.stores = {}
        for kind in KINDS:
            (self.dir / kind).mkdir()
            self.stores[kind] = self.loop.run_until_complete(open_store(kind, self.dir / kind, LIMITS))
        self.watches: list[dict] = []
        self.model: dict[str, int] = {}
        self.last_revision = 0

    def teardown(self) -> None:
        for s in self.stores.values():
            self.loop.run_until_complete(s.close())
        self.loop.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def run(self, call) -> object:
        """Run `call(store)` on every store; all must agree; returns the reference result."""
        results = {}
        for kind, store in self.stores.items():
            try:
                results[kind] = norm(self.loop.run_until_complete(call(store)))
            except (KvError, TypeError, ValueError) as exc:
                results[kind] = outcome(exc)
        ref = results["memory"]
        for kind, got in results.items():
            assert got == ref, f"{kind} differs from memory: {got!r} != {ref!r}"
        return ref

    @rule(key=keys)
    def get(self, key):
        ref = self.run(lambda s: s.get(key))
        if key in KEYS:
            assert (ref[3] if ref else 0) == self.model.get(key, 0)

    @rule(key=keys)
    def version(self, key):
        self.run(lambda s: s.version(key))

    @rule(key=keys, value=values)
    def set(self, key, value):
        ref = self.run(lambda s: s.set(key, value))
        if isinstance(ref, int):
            self.model[key] = self.model.get(key, 0) + 1
            assert ref == self.model[key]

    @rule(key=keys)
    def delete(self, key):
        if self.run(lambda s: s.delete(key)) is True:
            self.model.pop(key)

    @rule(key=keys, expected=st.integers(0, 4), value=values)
    def compare_and_set(self, key, expected, value):
        ref = self.run(lambda s: s.compare_and_set(key, expected, value))
        if isinstance(ref, int):
            self.model[key] = ref

    @rule(key=keys, value=values)
    def create_if_not_exists(self, key, value):
        if self.run(lambda s: s.create_if_not_exists(key, value)) is True:
            self.model[key] = 1

    @rule(txn=st.lists(ops, max_size=6))
    def transaction(self, txn):
        ref = self.run(lambda s: s.transaction(txn))
        if ref[0] == "txn":
            for op, version in zip(txn, ref[2], strict=True):
                if op.kind != "check":
                    self.model[op.key] = version
            self.model = {k: v for k, v in self.model.items() if v}

    @rule(prefix=prefixes, limit=st.none() | st.integers(0, 4), after=st.none() | st.sampled_from(KEYS))
    def list(self, prefix, limit, after):
        ref = self.run(lambda s: s.list(prefix, start_after=after, limit=limit))
        self.run(lambda s: s.entries(prefix, start_after=after, limit=limit))
        if isinstance(ref, list) and limit is None and after is None:
            assert ref == sorted(k for k in self.model if k.startswith(prefix))

    @precondition(lambda self: len(self.watches) < 4)
    @rule(pattern=patterns, back=st.none() | st.integers(0, 30))
    def watch(self, pattern, back):
        rev = self.last_revision
        start = None if back is None else max(1, rev + 1 - back)
        made, errors = {}, {}
        for kind, store in self.stores.items():
            try:
                made[kind] = store.watch(pattern, from_revision=start)
            except KvError as exc:
                errors[kind] = outcome(exc)
        assert not made or not errors, f"watch created on {sorted(made)} but failed on {errors}"
        assert len(set(map(str, errors.values()))) <= 1, errors
        if made:
            self.watches.append(made)

    @precondition(lambda self: self.watches)
    @rule(data=st.data())
    def drain(self, data):
        i = data.draw(st.integers(0, len(self.watches) - 1))
        got = {}
        for kind, w in self.watches[i].items():
            self.loop.run_until_complete(self.stores[kind].flush_watches())
            try:
                got[kind] = [(e.event_type, e.key, e.value, e.version, e.revision) for e in w.pending()]
            except KvError as exc:
                got[kind] = outcome(exc)
        for kind, events in got.items():
            assert events == got["memory"], f"{kind} watch differs: {events} != {got['memory']}"
        revs = [e[4] for e in got["memory"]] if isinstance(got["memory"], list) else []
        assert revs == sorted(revs)

    @invariant()
    def revision_agrees(self):
        rev = self.run(lambda s: s.revision())
        assert rev >= self.last_revision
        self.last_revision = rev


SameResults.TestCase.settings = settings(
    max_examples=60,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_backends_agree = SameResults.TestCase
