"""schemathesis against the metadata service's /openapi.json: no input gives a 5xx.

Three real storage nodes are registered first; POST /nodes/register is left out of the fuzzing
so fuzzed node URLs never make the service send Paxos messages anywhere but loopback.
"""

from __future__ import annotations

from shoal.testing.fuzz import run_schemathesis
from shoal.testing.metadata import Cluster


def test_schemathesis_finds_no_server_error(tmp_path):
    with Cluster(tmp_path, nodes=3) as c:
        result = run_schemathesis(
            c.meta.url, max_examples=20, max_time=40, exclude_path_regex="^/nodes/register$"
        )
        assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
        assert "No issues found" in result.stdout
        assert len(c.wait_registered(3)) == 3
