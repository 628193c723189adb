"""kv on a 3-member etcd (one member and one `shoal serve kv` per host) under partitions, delay,
host pauses and kill -9: register histories linearizable, no acknowledged write lost."""

from __future__ import annotations

import pytest

from .conftest import FAULTS, assert_held, run_checked, stack_fixture

pytestmark = pytest.mark.slow
kv = stack_fixture("kv")


@pytest.mark.parametrize("fault", FAULTS)
def test_kv_on_etcd_holds(kv, fault, tmp_path):
    report = run_checked(kv, fault, tmp_path)
    assert_held(report)
    assert report.counts["ok"] > 50


def test_planted_bug_stale_reads_are_reported(kv, tmp_path):
    """A client that answers some reads from an old cache: the linearizability checker must say so."""
    report = kv.run(["delay"], 8, 11, tmp_path, stale=True)
    print(report.describe())
    assert any(a.startswith("linearizability:") and "NOT linearizable" in a for a in report.anomalies)
