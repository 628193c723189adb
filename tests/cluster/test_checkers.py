"""The lost-write, byte-exact and State-equality checkers, each with a planted bug it must catch."""

from __future__ import annotations

from shoal.testing.cluster import checkers
from shoal.testing.cluster.history import FAIL, OK, UNKNOWN, History, Op


def kv_history() -> History:
    return History(
        [
            Op(0, "write", "a", "1", 0, 1, OK, 1),
            Op(1, "cas", "a", [1, "2"], 2, 3, OK, 2),
            Op(0, "write", "b", "x", 0, 1, OK, 1),
            Op(1, "write", "b", "y", 2, None, UNKNOWN, None),
            Op(2, "cas", "b", [0, "z"], 2, 3, FAIL, 1),
        ]
    )


def test_no_acked_kv_write_lost():
    assert checkers.lost_kv_writes(kv_history(), {"a": ("2", 2), "b": ("y", 2)}) == []
    assert checkers.lost_kv_writes(kv_history(), {"a": ("9", 5), "b": ("x", 1)}) == []  # overwritten later


def test_planted_bug_lost_kv_write_is_caught():
    found = checkers.lost_kv_writes(kv_history(), {"a": ("1", 1), "b": ("x", 1)})
    assert len(found) == 1 and "acked cas of '2' at version 2" in found[0]
    found = checkers.lost_kv_writes(kv_history(), {"a": ("other", 2)})  # same version, other value; b gone
    assert len(found) == 2 and any(f.startswith("b:") for f in found)


def state_history() -> History:
    return History(
        [
            Op(0, "create", "", "n0", 0, 1, OK, "cidr-1"),
            Op(0, "update", "cidr-1", "n1", 2, 3, OK, None),
            Op(0, "update", "cidr-1", "n2", 4, None, UNKNOWN, None),
            Op(1, "create", "", "m0", 0, 1, OK, "cidr-2"),
            Op(1, "create", "", "m9", 2, None, UNKNOWN, None),
        ]
    )


def test_no_acked_document_lost():
    final = {"cidr-1": {"name": "n2"}, "cidr-2": {"name": "m0"}}
    assert checkers.lost_documents(state_history(), final, "name") == []
    assert checkers.lost_documents(state_history(), {**final, "cidr-1": {"name": "n1"}}, "name") == []


def test_planted_bug_lost_document_and_lost_update_are_caught():
    found = checkers.lost_documents(state_history(), {"cidr-1": {"name": "n0"}}, "name")
    assert sorted(found) == [
        "cidr-1: name='n0', last acknowledged 'n1'",
        "cidr-2: acknowledged, missing after healing",
    ]


def test_plays_exact_and_planted_corruption():
    h = History(
        [
            Op(0, "upload", "", "clip", 0, 1, OK, "vid-1"),
            Op(1, "play", "vid-1", None, 2, 3, OK, checkers.sha256(b"stream")),
            Op(1, "play", "vid-1", None, 4, 5, OK, checkers.sha256(b"stream"), node="final"),
        ]
    )
    expected = {"vid-1": checkers.sha256(b"stream")}
    assert checkers.plays_exact(h, expected) == []
    assert checkers.acked_uploads_played(h) == []
    h.ops[1].result = checkers.sha256(b"strea\x00")  # one flipped byte
    assert len(checkers.plays_exact(h, expected)) == 1
    h.ops.pop()  # the final play is gone: the acked upload does not play
    assert checkers.acked_uploads_played(h) == ["upload vid-1: acknowledged but does not play after healing"]


def test_nodes_equal_and_planted_divergence():
    a = {"cidrs": [{"id": "c1", "name": "x"}], "dns": [{"domain": "a.b", "value": "1.2.3.4"}]}
    assert checkers.nodes_equal({"n0": a, "n1": dict(a), "n2": dict(a)}) == []
    b = {"cidrs": [{"id": "c1", "name": "y"}, {"id": "c2"}], "dns": a["dns"]}
    found = checkers.nodes_equal({"n0": a, "n1": b})
    assert len(found) == 2 and found[0].startswith("cidrs/c1:")
