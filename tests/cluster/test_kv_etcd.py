"""kv on a 3-member etcd (one member and one `shoal serve kv` per host) under partitions, delay,
loss, host pauses and kill -9: register and multi-key transaction histories linearizable, no
acknowledged write lost; a client inside a minority host gets no acknowledgement while cut off."""

from __future__ import annotations

import pytest

from .conftest import FAULTS, SECONDS, assert_held, run_checked, seed_for, stack_fixture

pytestmark = pytest.mark.slow
kv = stack_fixture("kv")


@pytest.mark.parametrize("fault", [*FAULTS, "loss"])
def test_kv_on_etcd_holds(kv, fault, tmp_path):
    report = run_checked(kv, fault, tmp_path)
    assert_held(report)
    assert report.counts["ok"] > 50
    txns = [n for n in report.notes if n.startswith("txns:")]
    assert txns and int(txns[0].split()[1]) > 5, report.notes  # multi-key txns were acknowledged


def test_client_inside_a_minority_partition_gets_no_ok(kv, tmp_path):
    """Partitions of h2 only; clients inside h2 talk to h2's kv alone: while h2 is cut off their
    ops fail or are unknown, and every op of theirs is in the linearizability check."""
    report = kv.run(["partition"], SECONDS, seed_for("kv-minority"), tmp_path, targets=(2,), inside=2)
    print(report.describe())
    assert_held(report)
    inside = next(n for n in report.notes if n.startswith("inside-h2"))
    assert " 0 invoked while cut off" not in inside, inside  # the check had ops to judge


def test_planted_bug_stale_reads_are_reported(kv, tmp_path):
    """A client that answers some reads from an old cache: the linearizability checker must say so."""
    report = kv.run(["delay"], 8, 11, tmp_path, stale=True)
    print(report.describe())
    assert any(a.startswith("linearizability:") and "NOT linearizable" in a for a in report.anomalies)


def test_planted_bug_torn_transactions_are_reported(kv, tmp_path):
    """Clients that apply a txn's sets as separate PUTs and call it one txn: the multi-key check
    must find a state no atomic order explains."""
    report = kv.run(["pause"], 8, 12, tmp_path, torn=True, registers=False)
    print(report.describe())
    assert any(a.startswith("linearizability:") and "NOT linearizable" in a and "/t" in a
               for a in report.anomalies), report.describe()  # fmt: skip
