"""Compute on a 3-member etcd across hosts: a compute node on h0 and on h1 (kvm backend on
libvirt's test driver, no dockerd), clients creating instances with names they choose through
both nodes, under partition, delay, pause and kill -9: no name exists twice, no acknowledged
create is lost, both nodes list the same instances after healing."""

from __future__ import annotations

import pytest

from .conftest import FAULTS, assert_held, run_checked, stack_fixture

pytestmark = pytest.mark.slow
compute = stack_fixture("compute")


@pytest.mark.parametrize("fault", FAULTS)  # kill last: the test driver forgets domains on kill -9
def test_compute_on_etcd_holds(compute, fault, tmp_path):
    report = run_checked(compute, fault, tmp_path)
    assert_held(report)
    creates = next(n for n in report.notes if n.startswith("creates:"))
    assert int(creates.split()[1]) > 5, creates


def test_planted_bug_double_create_is_reported(compute, tmp_path):
    """A client that, after an acknowledged create, writes a second registry record of the same
    name (a node skipping the name claim): the checker must find the name twice. (Last: the
    twins stay in the registry.)"""
    report = compute.run(["delay"], 6, 13, tmp_path, double=True)
    print(report.describe())
    assert any("exists 2 times" in a for a in report.anomalies), report.describe()
