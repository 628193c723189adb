"""Stacks on network-namespace hosts, one per test module, always removed (also on failure).

Seeds: each scenario's seed is fixed (printed with its schedule); SHOAL_CLUSTER_SEED overrides
them all to replay a failure (docs/testing.md). SHOAL_CLUSTER_SECONDS changes a scenario's length.
"""

from __future__ import annotations

import os
import zlib

import pytest

from shoal.testing.cluster.net import cleanup_stale
from shoal.testing.cluster.scenario import STACKS, Stack

SECONDS = float(os.environ.get("SHOAL_CLUSTER_SECONDS", "15"))
FAULTS = ("partition", "delay", "pause", "kill")


def seed_for(name: str) -> int:
    env = os.environ.get("SHOAL_CLUSTER_SEED")
    return int(env) if env else zlib.crc32(name.encode()) % 10_000


@pytest.fixture(scope="session", autouse=True)
def _stale_namespaces():
    cleanup_stale()  # what an earlier run killed with -9 left behind
    yield


def stack_fixture(kind: str):
    @pytest.fixture(scope="module")
    def fixture(tmp_path_factory, request):
        stack: Stack = STACKS[kind](tmp_path_factory.mktemp(kind))
        request.addfinalizer(stack.destroy)  # namespaces and processes go, whatever happens
        stack.start()
        return stack

    return fixture


def run_checked(stack: Stack, fault: str, out_dir, **kw):
    seed = seed_for(f"{stack.name}-{fault}")
    report = stack.run([fault], SECONDS, seed, out_dir, **kw)
    print(report.describe())
    return report


def assert_held(report) -> None:
    assert report.events, "the schedule applied no fault"
    assert all(e.healed_at is not None for e in report.events)
    assert report.counts["ok"] > 0, report.describe()
    assert report.anomalies == [], report.describe()
