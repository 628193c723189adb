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


def test_schemathesis_acceptor_routes_on_a_storage_node(tmp_path):
    """The ChunkPaxos acceptor routes a storage node serves: fuzzed ballots and placements get
    a 4xx or a refusal, never a 5xx."""
    from shoal.testing.storage import storage_node

    with storage_node(tmp_path / "node") as node:
        result = run_schemathesis(
            node.url, max_examples=20, max_time=20, exclude_path_regex="^/(chunk|ping|health)"
        )
        assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
        assert "No issues found" in result.stdout
