"""The CRDT hot path (ext/crdt.pyx) and its pure-Python twin agree, and both follow the rules."""

from __future__ import annotations

import os
import random

import pytest
from blake3 import blake3
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal import _native
from tests.conftest import both, native_required

crdt = both("crdt")
PURE = _native.pure("crdt")
NATIVE = _native.native("crdt")

ids = st.binary(min_size=32, max_size=32)
texts = st.text(min_size=1, max_size=40).filter(lambda s: len(s.encode()) <= 255)
kinds = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_", min_size=1, max_size=32)
values = st.none() | st.binary(max_size=300)
fields = st.tuples(
    ids, st.integers(0, 2**64 - 1), st.lists(ids, max_size=5), kinds, texts, st.text(max_size=20), values
)


def test_native_is_built_where_required():
    if native_required():
        assert NATIVE is not None, "ext/crdt.pyx was not built"
    if NATIVE is not None:
        assert _native.implementation("crdt") in ("native", "pure-python")


@given(fields)
def test_encode_decode_round_trip(f):
    author, hlc, deps, kind, key, actor, value = f
    blob = PURE.encode(*f)
    for mod in filter(None, (PURE, NATIVE)):
        assert mod.encode(*f) == blob
        op = mod.decode(blob)
        assert op.astuple() == (
            blake3(blob).digest(),
            author,
            hlc,
            tuple(sorted(set(deps))),
            kind,
            key,
            actor,
            value,
            b"",
            blob,
        )


@settings(max_examples=300)
@given(fields, st.data())
def test_damaged_encodings_are_judged_alike(f, data):
    """Any change to a valid blob: both implementations accept it identically or give the same reason."""
    blob = bytearray(PURE.encode(*f))
    for _ in range(data.draw(st.integers(1, 3))):
        pos = data.draw(st.integers(0, len(blob) - 1))
        action = data.draw(st.sampled_from(["flip", "cut", "grow"]))
        if action == "flip":
            blob[pos] ^= data.draw(st.integers(1, 255))
        elif action == "cut":
            del blob[pos:]
            if not blob:
                break
        else:
            blob[pos:pos] = data.draw(st.binary(min_size=1, max_size=3))
    outcomes = []
    for mod in filter(None, (PURE, NATIVE)):
        try:
            outcomes.append(("ok", mod.decode(bytes(blob)).astuple()))
        except mod.MalformedOp as exc:
            outcomes.append(("bad", str(exc)))
    assert all(o == outcomes[0] for o in outcomes)
    if outcomes[0][0] == "ok":  # whatever decodes re-encodes to the very same bytes (one encoding per op)
        _, (_, author, hlc, deps, kind, key, actor, value, _, _) = outcomes[0]
        assert PURE.encode(author, hlc, deps, kind, key, actor, value) == bytes(blob)


@pytest.mark.parametrize(
    "args, reason",
    [
        ((b"x" * 31, 1, [], "peer", "k", "", None), "author is 32 bytes"),
        ((b"x" * 32, -1, [], "peer", "k", "", None), "hlc out of range"),
        ((b"x" * 32, 1, [], "Peer", "k", "", None), "bad kind"),
        ((b"x" * 32, 1, [], "peer", "", "", None), "bad key"),
        ((b"x" * 32, 1, [], "peer", "k" * 256, "", None), "bad key"),
        ((b"x" * 32, 1, [b"d" * 31], "peer", "k", "", None), "deps are 32 bytes"),
        ((b"x" * 32, 1, [os.urandom(32) for _ in range(257)], "peer", "k", "", None), "too many deps"),
        ((b"x" * 32, 1, [], "peer", "k", "", b"v" * 65537), "value too large"),
    ],
)
def test_encode_refuses_out_of_bounds(crdt, args, reason):
    with pytest.raises(crdt.MalformedOp, match=reason):
        crdt.encode(*args)


def test_decode_refuses_unsorted_deps_and_trailing_bytes(crdt):
    a, b = sorted([os.urandom(32), os.urandom(32)])
    blob = PURE.encode(b"A" * 32, 5, [a, b], "peer", "k", "", b"{}")
    swapped = blob[:46] + b + a + blob[46 + 64 :]
    with pytest.raises(crdt.MalformedOp, match="deps not sorted"):
        crdt.decode(swapped)
    with pytest.raises(crdt.MalformedOp, match="trailing bytes"):
        crdt.decode(blob + b"\0")
    with pytest.raises(crdt.MalformedOp, match="bad magic"):
        crdt.decode(b"XOP1" + blob[4:])


@given(st.lists(st.binary(max_size=200), max_size=20), fields)
def test_parse_frames_agree(junk, f):
    good = os.urandom(64) + PURE.encode(*f)
    frames = [*junk, good, good[:70]]
    results = []
    for mod in filter(None, (PURE, NATIVE)):
        ops, errors = mod.parse_frames(frames)
        results.append(([o.astuple() for o in ops], errors))
    assert all(r == results[0] for r in results)
    ops, errors = results[0]
    assert ops[-1][0] == blake3(good[64:]).digest() and ops[-1][8] == good[:64]
    assert (len(frames) - 1, "truncated") in errors


def _dag(rng: random.Random, n: int, missing: int = 0, clock_bugs: int = 0):
    """n ops over random earlier deps (+ some unknown deps, + some with a clock not after a dep)."""
    author = b"A" * 32
    frames, made = [], []
    absent = [os.urandom(32) for _ in range(missing)]
    for i in range(n):
        deps = rng.sample(made, min(len(made), rng.randint(0, 3)))
        hlc = 1000 + i
        if absent and rng.random() < 0.1:
            deps.append(rng.choice(absent))
        if clock_bugs and deps and rng.random() < 0.1:
            hlc = 10  # before its dependencies
        blob = PURE.encode(author, hlc, deps, "peer", f"k{rng.randint(0, 9)}", "", b"%d" % i)
        made.append(blake3(blob).digest())
        frames.append(b"S" * 64 + blob)
    return frames


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32), st.integers(1, 60), st.integers(0, 3), st.integers(0, 1))
def test_order_and_merge_agree_and_do_not_depend_on_arrival(seed, n, missing, clock_bugs):
    rng = random.Random(seed)
    frames = _dag(rng, n, missing, clock_bugs)
    shuffled = frames[:]
    rng.shuffle(shuffled)
    shuffled += rng.sample(frames, min(3, n))  # duplicates
    results = []
    for mod in filter(None, (PURE, NATIVE)):
        for batch in (frames, shuffled):
            ops, _ = mod.parse_frames(batch)
            ready, waiting, bad = mod.order(ops, {})
            # each ready op follows its in-batch deps
            seen: set[bytes] = set()
            for op in ready:
                assert all(d in seen for d in op.deps)
                seen.add(op.id)
            registers: dict = {}
            won = mod.merge(registers, ready)
            assert len(won) == len(ready)
            results.append(
                (
                    {o.id for o in ready},
                    {o.id for o in waiting},
                    {(o.id, r) for o, r in bad},
                    registers,
                )
            )
    assert all(r == results[0] for r in results)
    # order of the same batch is identical between implementations (not just the same sets)
    if NATIVE is not None:
        a = [o.id for o in PURE.order(PURE.parse_frames(shuffled)[0], {})[0]]
        b = [o.id for o in NATIVE.order(NATIVE.parse_frames(shuffled)[0], {})[0]]
        assert a == b


def test_order_rules(crdt):
    author = b"A" * 32
    root = crdt.encode(author, 10, [], "peer", "k", "", b"1")
    rid = blake3(root).digest()
    child = crdt.encode(author, 11, [rid], "peer", "k", "", b"2")
    late_clock = crdt.encode(author, 10, [rid], "peer", "k", "", b"3")
    orphan = crdt.encode(author, 12, [b"\x01" * 32], "peer", "k", "", b"4")
    on_rejected = crdt.encode(author, 12, [b"\x02" * 32], "peer", "k", "", b"5")
    ops, _ = crdt.parse_frames([b"S" * 64 + b for b in (child, root, late_clock, orphan, on_rejected)])
    ready, waiting, bad = crdt.order(ops, {}, {b"\x02" * 32})
    assert [o.blob for o in ready] == [root, child]
    assert [o.blob for o in waiting] == [orphan]
    assert sorted((o.blob, r) for o, r in bad) == sorted(
        [(late_clock, "clock not after dependency"), (on_rejected, "dependency rejected")]
    )
    # known ops are dropped; a known dep's clock is checked too
    ready, waiting, bad = crdt.order(ops[:1], {rid: 11})
    assert not ready and not waiting and bad[0][1] == "clock not after dependency"


def test_merge_is_last_writer_wins_with_op_id_tie_break(crdt):
    a = crdt.decode(crdt.encode(b"A" * 32, 5, [], "peer", "k", "", b"a"))
    b = crdt.decode(crdt.encode(b"B" * 32, 5, [], "peer", "k", "", b"b"))
    c = crdt.decode(crdt.encode(b"C" * 32, 4, [], "peer", "k", "", None))
    hi = max(a, b, key=lambda o: o.id)
    for perm in ([a, b, c], [c, b, a], [b, c, a]):
        regs: dict = {}
        crdt.merge(regs, perm)
        assert regs == {("peer", "k"): (5, hi.id)}


@given(st.lists(ids, max_size=300, unique=True), st.lists(ids, max_size=50))
def test_bloom_filters_agree_and_never_miss(members, others):
    built = [mod.bloom_build(members) for mod in filter(None, (PURE, NATIVE))]
    assert all(b == built[0] for b in built)
    for mod in filter(None, (PURE, NATIVE)):
        assert mod.bloom_missing(built[0], members) == []  # no false negatives
        assert mod.bloom_missing(built[0], others) == PURE.bloom_missing(built[0], others)
        grown = mod.bloom_new(len(members))
        for m in members:
            mod.bloom_add(grown, m)
        assert bytes(grown) == built[0]


def test_bloom_false_positive_rate_is_near_target(crdt):
    bloom = crdt.bloom_build([os.urandom(32) for _ in range(5000)], 0.01)
    fp = 5000 - len(crdt.bloom_missing(bloom, [os.urandom(32) for _ in range(5000)]))
    assert fp < 150  # 1% target: 50 expected


@pytest.mark.parametrize("bad", [b"", b"\x00\xff", b"\x40" + b"\0" * 8])
def test_bloom_refuses_garbage(crdt, bad):
    with pytest.raises(ValueError):
        crdt.bloom_missing(bad, [b"x" * 32])


# -- Dag: the batch apply path on C tables (native) and dicts (twin) ------------------------------


def _dag_state(dag) -> tuple:
    return (dag.ids(), dag.heads(), dag.registers(), dag.max_hlc, len(dag), dag.register_count)


def test_digest_many_matches_blake3():
    msgs = [os.urandom(n) for n in [*range(0, 300), 1023, 1024, 1025, 2048, 5000, 70_000]]
    for mod in filter(None, (PURE, NATIVE)):
        assert mod.digest_many(msgs) == [blake3(m).digest() for m in msgs]
        assert mod.digest_many(msgs[10:], 7) == [blake3(m[7:]).digest() for m in msgs[10:]]


@settings(max_examples=80, deadline=None)
@given(
    st.integers(0, 2**32),
    st.integers(1, 80),
    st.integers(0, 3),
    st.integers(0, 1),
    st.integers(1, 4),
    st.lists(st.binary(max_size=120), max_size=4),
)
def test_dag_ingest_agrees_in_batches_with_order_and_merge(seed, n, missing, clock_bugs, batches, junk):
    """Both Dags give identical results and states, batch after batch (known ops, duplicates,
    waiting and bad ops, malformed frames, a rejected set), and equal order + merge on a dict."""
    rng = random.Random(seed)
    frames = _dag(rng, n, missing, clock_bugs)
    shuffled = frames + rng.sample(frames, min(3, n)) + [b"S" * 64 + j for j in junk] + [b"short"]
    rng.shuffle(shuffled)
    cuts = sorted(rng.sample(range(1, len(shuffled)), min(batches - 1, len(shuffled) - 1)))
    parts = [shuffled[a:b] for a, b in zip([0, *cuts], [*cuts, len(shuffled)], strict=True)]
    rejected = {blake3(f[64:]).digest() for f in rng.sample(frames, min(2, n))}
    results = []
    for mod in filter(None, (PURE, NATIVE)):
        dag = mod.Dag()
        got = []
        for part in parts:
            got.append(dag.ingest(part, rejected))
            got.append(_dag_state(dag))
        results.append(got)
        # the same as the op-level functions, batch by batch
        known: dict = {}
        registers: dict = {}
        replay = mod.Dag()
        for k, part in enumerate(parts):
            ops, errors = mod.parse_frames(part)
            ready, waiting, bad = mod.order(ops, known, rejected)
            won = mod.merge(registers, ready)
            for op in ready:
                known[op.id] = op.hlc
            ready_i, won_i, waiting_i, bad_i, malformed_i = got[2 * k]
            assert [blake3(part[i][64:]).digest() for i in ready_i] == [o.id for o in ready]
            assert won_i == won and malformed_i == errors
            assert sorted(blake3(part[i][64:]).digest() for i in waiting_i) == sorted(o.id for o in waiting)
            assert sorted((blake3(part[i][64:]).digest(), r) for i, r in bad_i) == sorted(
                (o.id, r) for o, r in bad
            )
            assert replay.apply(ready) == won  # the checked path's apply gives the same as ingest
        assert dag.registers() == registers == replay.registers()
        assert dag.ids() == sorted(known) == replay.ids() and dag.heads() == replay.heads()
        for op_id, hlc in known.items():
            assert op_id in dag and dag.get(op_id) == hlc
        assert dag.get(b"\0" * 32) is None and b"\0" * 32 not in dag
    assert all(r == results[0] for r in results)


def test_dag_heads_registers_and_apply_skip_known(crdt):
    a = crdt.decode(crdt.encode(b"A" * 32, 5, [], "peer", "k", "", b"a"))
    b = crdt.decode(crdt.encode(b"B" * 32, 6, [a.id], "peer", "k", "", b"b"))
    c = crdt.decode(crdt.encode(b"C" * 32, 7, [a.id], "cidr", "k", "", None))
    dag = crdt.Dag()
    assert dag.apply([a]) == [True] and dag.heads() == [a.id]
    assert dag.apply([b, c, a]) == [True, True, False]  # a again: skipped
    assert dag.heads() == sorted([b.id, c.id]) and len(dag) == 3
    assert dag.register("peer", "k") == (6, b.id) and dag.register("cidr", "k") == (7, c.id)
    assert dag.register("peer", "x") is None and dag.max_hlc == 7
    assert set(dag) == {a.id, b.id, c.id}
    ready, waiting, bad = crdt.order([b], dag)  # a Dag is a `known` mapping for order
    assert ready == [] and waiting == [] and bad == []


def test_dag_grows_past_its_initial_tables(crdt):
    frames = [b"S" * 64 + PURE.encode(b"A" * 32, 10 + i, [], "peer", f"k{i}", "", b"v") for i in range(5000)]
    dag = crdt.Dag()
    ready, won, *_ = dag.ingest(frames)
    assert len(ready) == 5000 and all(won) and dag.register_count == 5000 and len(dag.heads()) == 5000
    assert dag.ingest(frames) == ([], [], [], [], [])


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32), st.integers(1, 60))
def test_dag_export_and_cover_agree_and_rebuild_the_state(seed, n):
    rng = random.Random(seed)
    frames = _dag(rng, n)
    states = []
    for mod in filter(None, (PURE, NATIVE)):
        dag = mod.Dag()
        dag.ingest(frames)
        records = dag.export()
        ops, _ = mod.parse_frames(frames)
        winners = [o for o in ops if dag.register(o.kind, o.key) == (o.hlc, o.id)]
        copy = mod.Dag()
        copy.cover(records, dag.heads(), winners)
        assert _dag_state(copy) == _dag_state(dag)
        states.append((records, _dag_state(copy)))
        with pytest.raises(ValueError):
            mod.Dag().cover(records[:-1], [], [])
        with pytest.raises(ValueError):
            mod.Dag().cover(records, [b"\1" * 32], [])
        with pytest.raises(ValueError):
            mod.Dag().cover(b"", [], winners[:1])
        with pytest.raises(ValueError):
            copy.cover(records, [], [])  # not empty
    assert all(s == states[0] for s in states)
