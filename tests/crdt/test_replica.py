"""Replicas in one process: any delivery order, with duplicates and delays, gives one final state."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal import _native
from shoal.crdt.clock import HybridClock
from shoal.crdt.replica import Replica
from shoal.crdt.signing import Signer
from tests.conftest import both

crdt = both("crdt")
IMPLS = [m for m in (_native.native("crdt"), _native.pure("crdt")) if m is not None]
SIGNERS = [Signer.generate() for _ in range(4)]


def make_replicas(core, n: int, seed: int) -> list[Replica]:
    keys = [s.public for s in SIGNERS[:n]]
    # skewed wall clocks: last-writer-wins must still agree everywhere
    clocks = [HybridClock(lambda i=i: 1_700_000_000 + i * 0.003) for i in range(n)]
    return [Replica(SIGNERS[i], keys, core=core, clock=clocks[i], verify=(seed % 4 == 0)) for i in range(n)]


def model(ops: dict[bytes, object]) -> dict:
    """The sequential model: per register, the value of the greatest (hlc, id)."""
    best: dict = {}
    for op in ops.values():
        reg = (op.kind, op.key)
        if reg not in best or (op.hlc, op.id) > (best[reg].hlc, best[reg].id):
            best[reg] = op
    return {reg: op.value for reg, op in best.items()}


def values(replica: Replica, ops: dict[bytes, object]) -> dict:
    return {reg: ops[op_id].value for reg, (_, op_id) in replica.registers.items()}


@pytest.mark.parametrize("impl", IMPLS, ids=lambda m: m.__name__.split(".")[1])
@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32), st.integers(2, 4), st.integers(1, 60))
def test_random_delivery_converges_to_the_sequential_model(impl, seed, n, steps):
    crdt = impl
    rng = random.Random(seed)
    replicas = make_replicas(crdt, n, seed)
    inbox: list[list[bytes]] = [[] for _ in range(n)]
    every: dict[bytes, object] = {}
    for _ in range(steps):
        i = rng.randrange(n)
        r = replicas[i]
        if rng.random() < 0.7:  # a local write
            value = None if rng.random() < 0.2 else b"%d" % rng.randrange(1000)
            op = r.create("peer", f"k{rng.randrange(5)}", f"user{i}", value)
            assert r.admit([op]).applied == [op]
            every[op.id] = op
            for j in range(n):
                if j != i:
                    inbox[j].append(op.sig + op.blob)
        if inbox[i] and rng.random() < 0.6:  # deliver a random part of the inbox, out of order
            rng.shuffle(inbox[i])
            k = rng.randint(1, len(inbox[i]))
            batch, inbox[i] = inbox[i][:k], inbox[i][k:]
            batch += rng.sample(batch, min(2, len(batch)))  # duplicates
            r.admit_frames(batch)
    for i, r in enumerate(replicas):  # everything still in flight arrives eventually
        rng.shuffle(inbox[i])
        r.admit_frames(inbox[i] + inbox[i][:3])
    expected = model(every)
    for r in replicas:
        assert not r.buffer and not r.missing()
        assert set(r.known) == set(every)
        assert values(r, every) == expected
        assert r.registers == replicas[0].registers
        assert r.heads == replicas[0].heads


def test_buffered_ops_wait_for_their_dependencies(crdt):
    a, b = make_replicas(crdt, 2, 0)
    first = a.create("peer", "k", "", b"1")
    a.admit([first])
    second = a.create("peer", "k", "", b"2")
    a.admit([second])
    got = b.admit_frames([second.sig + second.blob])
    assert not got.applied and got.buffered == 1 and got.missing == {first.id}
    got = b.admit_frames([first.sig + first.blob])
    assert [o.id for o in got.applied] == [first.id, second.id] and b.registers == a.registers


def test_invalid_operations_are_rejected_with_their_descendants(crdt):
    honest, other = make_replicas(crdt, 2, 0)
    outsider = Replica(Signer.generate(), [], core=crdt)
    op = outsider.create("peer", "k", "", b"x")
    outsider.admit([op])
    child = outsider.create("peer", "k", "", b"y")  # built on the untrusted op
    got = honest.admit_frames([op.sig + op.blob, child.sig + child.blob])
    assert not got.applied and honest.rejected["unknown author"] == 2

    honest.validate = lambda op: "malformed value" if op.value == b"bad" else None
    bad = other.create("peer", "k", "", b"bad")
    other.admit([bad])
    after_bad = other.create("peer", "j", "", b"fine")  # valid itself, but its past is not
    got = honest.admit_frames([after_bad.sig + after_bad.blob, bad.sig + bad.blob])
    assert not got.applied
    assert honest.rejected["malformed value"] == 1 and honest.rejected["dependency rejected"] == 1
    honest.validate = None

    good = other.create("peer", "k", "", b"z")
    forged = bytes(64) + good.blob  # right author, wrong signature
    got = honest.admit_frames([forged])
    assert not got.applied and honest.rejected["bad signature"] == 1

    got = honest.admit_frames([good.sig + good.blob[:-1] + b"!"])  # changed after signing
    assert not got.applied and honest.rejected["bad signature"] == 2
    got = honest.admit_frames([b"\0" * 64 + b"X" * 60])
    assert honest.rejected["malformed: bad magic"] == 1


def test_future_timestamps_are_refused_until_the_clock_catches_up(crdt):
    now = [1_700_000_000.0]
    a = Replica(SIGNERS[0], [SIGNERS[1].public], core=crdt, clock=HybridClock(lambda: now[0]))
    b = Replica(SIGNERS[1], [SIGNERS[0].public], core=crdt, clock=HybridClock(lambda: now[0] + 3600))
    op = b.create("peer", "k", "", b"from the future")
    assert not a.admit_frames([op.sig + op.blob]).applied
    assert a.rejected["clock too far ahead"] == 1 and op.id not in a.rejected_ids
    now[0] += 3600
    assert a.admit_frames([op.sig + op.blob]).applied


def test_buffer_is_bounded_per_author(crdt):
    honest, byz = make_replicas(crdt, 2, 0)
    honest.max_buffer = 100
    frames = []
    for i in range(200):
        blob = crdt.encode(byz.signer.public, 10 + i, [bytes([i % 256]) * 32], "peer", "k", "", b"x")
        op_id = crdt.digest(blob)
        frames.append(byz.signer.sign_op(op_id) + blob)
    got = honest.admit_frames(frames)
    assert got.buffered == 50 and got.dropped == 150 and len(honest.buffer) == 50
    mine = honest.create("peer", "j", "", b"1")  # the honest node's own ops still apply
    assert honest.admit([mine]).applied


def test_node_key_command_creates_once_and_prints_the_same_key(tmp_path):
    import subprocess
    import sys

    run = [sys.executable, "-m", "shoal.crdt", "node-key", "--dir", str(tmp_path / "k")]
    first = subprocess.run(run, capture_output=True, text=True, check=True).stdout.strip()
    second = subprocess.run(run, capture_output=True, text=True, check=True).stdout.strip()
    assert first == second and len(first) == 44 and (tmp_path / "k" / "node_identity.pem").exists()


@pytest.mark.parametrize("impl", IMPLS, ids=lambda m: m.__name__.split(".")[1])
@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**32), st.integers(1, 30), st.floats(0, 1))
def test_signatures_checked_beforehand_give_the_same_admission(impl, seed, n, share):
    """Verdicts from verify_signatures (off the loop), whole or partial, change nothing."""
    from shoal.crdt.replica import verify_signatures

    rng = random.Random(seed)
    writer = make_replicas(impl, 2, 4)[0]
    frames = []
    for i in range(n):
        op = writer.create("peer", f"k{rng.randrange(4)}", "", b"%d" % i)
        writer.admit([op])
        frames.append(op.sig + op.blob)
        if rng.random() < 0.3:
            frames.append(bytes(64) + op.blob)  # forged copy
        if rng.random() < 0.2:
            frames.append(op.sig[:-1] + bytes([op.sig[-1] ^ 1]) + op.blob)
    rng.shuffle(frames)
    outcomes = []
    for mode in ("inline", "beforehand"):
        r = make_replicas(impl, 2, 4)[1]
        ops, malformed = impl.parse_frames(frames)
        signatures = None
        if mode == "beforehand":
            todo = r.to_verify(ops)
            signatures = verify_signatures(rng.sample(todo, int(len(todo) * share)))
        got = r.admit_parsed(ops, malformed, signatures)
        outcomes.append(([o.id for o in got.applied], got.rejected, dict(r.rejected), r.registers, r.heads))
    assert outcomes[0] == outcomes[1]
