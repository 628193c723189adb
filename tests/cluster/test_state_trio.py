"""Three State nodes replicating each other under partitions, delay, pauses and kill -9: every
acknowledged create and update survives, and the nodes answer the same listings once healed."""

from __future__ import annotations

import httpx
import pytest

from shoal.testing.cluster import checkers
from shoal.testing.cluster.clients import wait_equal

from .conftest import FAULTS, assert_held, run_checked, stack_fixture

pytestmark = pytest.mark.slow
state = stack_fixture("state")


@pytest.mark.parametrize("fault", FAULTS)
def test_state_trio_holds(state, fault, tmp_path):
    report = run_checked(state, fault, tmp_path)
    assert_held(report)
    assert report.counts["ok"] > 30


def test_planted_bug_a_partition_never_healed_is_reported(state):
    """While h2 stays cut off, writes on h0 cannot reach it: the equality checker must report it."""
    net, urls = state.cluster.net, [s.url for s in state.nodes]
    net.isolate(state.cluster.hosts[2])
    try:
        for i in range(5):
            r = httpx.post(
                urls[0] + "/cidrs/create", json={"cidr": f"10.250.{i}.0/24", "name": "p", "owner": "planted"}
            )
            assert r.status_code == 200, r.text
        listings = wait_equal(urls, owner="planted", timeout=3)
        diff = checkers.nodes_equal(listings)
        assert len(diff) == 5 and all("state2 has None" in d for d in diff)
    finally:
        net.heal()
    assert checkers.nodes_equal(wait_equal(urls, owner="planted", timeout=30)) == []
