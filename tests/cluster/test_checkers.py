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


def compute_history() -> History:
    return History(
        [
            Op(0, "create", "c-1", "c-1", 0, 1, OK, {"id": "i1", "node": "A"}),
            Op(1, "create", "c-1", "c-1", 0, 1, FAIL, None, error="409"),
            Op(2, "create", "c-2", "c-2", 0, None, UNKNOWN, None),
            Op(2, "create", "c-2", "c-2", 2, 3, FAIL, None, error="409"),  # the retry elsewhere
            Op(0, "create", "c-3", "c-3", 4, None, UNKNOWN, None),
        ]
    )


def listing(*rows: tuple) -> list[dict]:
    return [{"id": i, "name": n, "node": {"id": node}} for i, n, node in rows]


def test_instances_once_holds_with_unknown_creates_landed_or_not():
    every = listing(("i1", "c-1", "A"), ("i2", "c-2", "B"), ("x9", "other-run", "B"))
    assert checkers.instances_once(compute_history(), {"n0": every, "n1": list(every)}, "c-") == []


def test_planted_bug_instance_created_twice_is_caught():
    twice = listing(("i1", "c-1", "A"), ("i1d", "c-1", "A"))  # a second record holding the name
    found = checkers.instances_once(compute_history(), {"n0": twice, "n1": twice}, "c-")
    assert found == [
        "c-1: exists 2 times on n0 (ids ['i1', 'i1d'])",
        "c-1: exists 2 times on n1 (ids ['i1', 'i1d'])",
    ]
    h = compute_history()
    h.ops[1].outcome, h.ops[1].result = OK, {"id": "i7", "node": "B"}  # two 201s for one name
    found = checkers.instances_once(h, {"n0": listing(("i1", "c-1", "A"))}, "c-")
    assert found[0] == "c-1: created twice, acknowledged 2 times (ids ['i1', 'i7'])"


def test_planted_bug_lost_create_unasked_instance_and_divergent_nodes_are_caught():
    found = checkers.instances_once(compute_history(), {"n0": listing(("i2", "c-2", "B"))}, "c-")
    assert found == ["c-1: acknowledged create (id i1, op 0) lost; n0 lists nothing"]
    found = checkers.instances_once(
        compute_history(), {"n0": listing(("i1", "c-1", "A"), ("i5", "c-5", "A"))}, "c-"
    )
    assert found == ["c-5: listed on n0 but no create of it was ok or unknown"]
    a, b = listing(("i1", "c-1", "A")), listing(("i1", "c-1", "A"), ("i2", "c-2", "B"))
    found = checkers.instances_once(compute_history(), {"n0": a, "n1": b}, "c-")
    assert found == ["n0 and n1 list different instances: [('i2', 'c-2', 'B')]"]
