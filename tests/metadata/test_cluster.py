"""The metadata service with real storage nodes (separate processes, loopback): commits through
ChunkPaxos over HTTP, erasure-coded placements, two competing metadata processes, failed and
restarted acceptors, kill -9 of the metadata service."""

from __future__ import annotations

import concurrent.futures
import json

import httpx
import pytest

from shoal.testing.metadata import Cluster, sha

from .conftest import blob, commit, erasure_or_skip, new_video


@pytest.fixture(scope="module")
def five(tmp_path_factory):
    with Cluster(tmp_path_factory.mktemp("five"), nodes=5) as c:
        yield c


def test_commit_replication_through_paxos(five):
    m = five.meta.url
    vid = new_video(m)
    data = blob(1)
    for u in five.urls[:3]:
        five.put(u, "rep-c0", data)
    r = commit(m, "rep-c0", vid, 0, data, five.urls[:3])
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["success"] and body["proposal_won"] and body["committed_nodes"] == five.urls[:3]
    assert body["message"] == "Chunk rep-c0 committed to 3 nodes"
    # only phase 2, to the placement's 3 members (its pinned acceptor set, pinned by this
    # proposer, which therefore owns round 0): the steady state's 2n
    assert body["messages"] == 2 * 3 and body["rounds"] == 1
    c = httpx.get(f"{m}/consensus/rep-c0").json()
    assert c["phase"] == "committed" and c["promised_ballot"] == 0 and c["accepted_ballot"] == 0
    assert json.loads(c["accepted_value"]) == five.urls[:3]
    by_node = {a["node_url"]: a for a in c["acceptors"]}
    assert all(by_node[u]["accepted"] == body["ballot"] for u in five.urls[:3])
    assert set(by_node) == set(five.urls[:3])  # the instance's acceptors: its pinned placement
    # the acceptor's own view, straight from a storage node
    st = httpx.get(f"{five.urls[0]}/paxos/rep-c0").json()
    assert st["instances"][0]["accepted"] == body["ballot"]
    # committing the same placement again answers from the store; a different one reports the winner
    again = commit(m, "rep-c0", vid, 0, data, five.urls[:3]).json()
    assert again["proposal_won"] and again["committed_nodes"] == five.urls[:3]
    other = commit(m, "rep-c0", vid, 0, data, five.urls[2:]).json()
    assert not other["proposal_won"] and other["committed_nodes"] == five.urls[:3]
    assert commit(m, "rep-c0", vid, 1, data, five.urls[:3]).status_code == 409  # another slot
    man = httpx.get(f"{m}/manifest/{vid}?status=any").json()
    assert man["total_chunks"] == 1
    assert man["chunks"][0] == man["chunks"][0] | {
        "chunk_id": "rep-c0",
        "sequence_num": 0,
        "size_bytes": len(data),
        "checksum": sha(data),
        "redundancy_mode": "replication",
        "replicas": five.urls[:3],
    }
    assert man["chunks"][0]["start_sec"] is None and man["chunks"][0]["duration_sec"] is None  # not given
    frags = httpx.get(f"{m}/chunk/rep-c0/fragments").json()
    assert frags == {"chunk_id": "rep-c0", "redundancy_mode": "replication", "fragments": []}


def test_manifest_keeps_each_chunks_time_range(five):
    m = five.meta.url
    vid = new_video(m)
    data = [blob(20 + k, 10_000) for k in range(3)]
    times = [(0.0, 2.5), (2.5, 2.0), (4.5, 1.25)]
    for k, (d, (start, duration)) in enumerate(zip(data, times, strict=True)):
        for u in five.urls[:3]:
            five.put(u, f"tr-c{k}", d)
        r = commit(m, f"tr-c{k}", vid, k, d, five.urls[:3], start_sec=start, duration_sec=duration)
        assert r.status_code == 200, r.text
    # a retried commit with other times answers from the store and keeps the first ones
    assert commit(m, "tr-c1", vid, 1, data[1], five.urls[:3], start_sec=9, duration_sec=9).status_code == 200
    chunks = httpx.get(f"{m}/manifest/{vid}?status=any").json()["chunks"]
    assert [(c["start_sec"], c["duration_sec"]) for c in chunks] == times
    # optional: null (or absent) is stored as unknown
    five.put(five.urls[0], "tr-c3", data[0])
    five.put(five.urls[1], "tr-c3", data[0])
    r = commit(m, "tr-c3", vid, 3, data[0], five.urls[:3], start_sec=None, duration_sec=None)
    assert r.status_code == 200, r.text
    last = httpx.get(f"{m}/manifest/{vid}?status=any").json()["chunks"][3]
    assert last["start_sec"] is None and last["duration_sec"] is None


def test_commit_refused_when_nodes_do_not_hold_the_data(five):
    m = five.meta.url
    vid = new_video(m)
    data = blob(2)
    five.put(five.urls[0], "lack-c0", data)
    five.put(five.urls[1], "lack-c0", blob(3))  # different bytes under the same id
    r = commit(m, "lack-c0", vid, 0, data, five.urls[:3])
    assert r.status_code == 409
    detail = r.json()
    # round 0 goes straight to phase 2: the holder accepted, the other two refused
    assert "1 of 3 members accepted" in detail["detail"]
    assert detail["errors"][five.urls[2]] == "refused (missing: lack-c0)"
    assert detail["errors"][five.urls[1]] == "refused (checksum: lack-c0)"
    assert httpx.get(f"{m}/consensus/lack-c0").json()["phase"] == "failed"
    assert httpx.get(f"{m}/manifest/{vid}?status=any").json()["chunks"] == []
    # the instance's acceptor set is pinned to the first placement: another placement cannot be
    # proposed there; with the missing copy uploaded, it finishes the value the holder accepted
    # at round 0 (a majority, 2 of 3, now holds it), and its own placement loses
    five.put(five.urls[2], "lack-c0", data)
    r = commit(m, "lack-c0", vid, 0, data, [five.urls[0], five.urls[2], five.urls[3]])
    assert r.status_code == 200 and not r.json()["proposal_won"], r.text
    assert r.json()["committed_nodes"] == five.urls[:3]
    # the first placement's own retry reports it as won
    r = commit(m, "lack-c0", vid, 0, data, five.urls[:3])
    assert r.status_code == 200 and r.json()["committed_nodes"] == five.urls[:3]
    assert r.json()["ballot"]["round"] >= 2  # ballot 1 was spent by the refused try


def test_commit_erasure_coded_and_overhead(five):
    erasure = erasure_or_skip()
    m = five.meta.url
    vid = new_video(m)
    before = httpx.get(f"{m}/storage/overhead").json()
    data = blob(4, 300_000)
    frags = erasure.encode(data)
    meta = []
    for i, (u, f) in enumerate(zip(five.urls, frags, strict=True)):
        five.put(u, f"ec-c0-frag-{i}", f)
        meta.append({"fragment_index": i, "node_url": u, "size_bytes": len(f), "checksum": sha(f)})
    r = commit(m, "ec-c0", vid, 0, data, five.urls, redundancy_mode="erasure_coding", fragments_metadata=meta)
    assert r.status_code == 200, r.text
    assert r.json()["messages"] == 10  # placement = 5 nodes: round 0, 2n
    got = httpx.get(f"{m}/chunk/ec-c0/fragments").json()
    assert [f["fragment_id"] for f in got["fragments"]] == [f"ec-c0-frag-{i}" for i in range(5)]
    assert got["fragments"][0] == {
        "fragment_id": "ec-c0-frag-0",
        "fragment_index": 0,
        "node_url": five.urls[0],
        "size_bytes": len(frags[0]),
        "checksum": sha(frags[0]),
        "status": "active",
    }
    # the manifest lists the same fragments under the same key names (plus the older `index`)
    listed = httpx.get(f"{m}/manifest/{vid}?status=any").json()["chunks"][0]["fragments"]
    assert [f["fragment_index"] for f in listed] == [f["index"] for f in listed] == list(range(5))
    assert listed[0] == {k: v for k, v in got["fragments"][0].items() if k != "status"} | {"index": 0}
    after = httpx.get(f"{m}/storage/overhead").json()
    assert after["erasure_coded_chunks"] == before["erasure_coded_chunks"] + 1
    assert after["total_logical_bytes"] - before["total_logical_bytes"] == len(data)
    assert after["erasure_overhead_bytes"] - before["erasure_overhead_bytes"] == sum(map(len, frags))
    eff = httpx.get(f"{m}/redundancy/efficiency").json()["efficiency"]
    assert eff["measured"]["erasure_coding"]
    assert 1.66 < eff["erasure_coding_overhead_factor"] < 1.75  # 5/3 plus the fragments' framing
    stats = httpx.get(f"{m}/stats").json()
    assert stats["total_chunks"] == after["replication_chunks"] + after["erasure_coded_chunks"]
    assert stats["total_replicas"] == 3 * after["replication_chunks"] + 5 * after["erasure_coded_chunks"]


# Two metadata processes with *separate* stores racing on one chunk are no longer a supported
# set-up: the instance's acceptor set is pinned in the shared store (docs/metadata.md). Two
# proposers on one store across membership changes: tests/metadata/test_quorum_per_placement.py.


@pytest.fixture
def three(tmp_path):
    args = ("--maintenance-interval", "0", "--degraded-after", "1.5", "--down-after", "2.5")
    with Cluster(tmp_path, nodes=3, meta_args=args, heartbeat=0.3) as c:
        yield c


def test_failed_acceptor_then_restarted_acceptor_keeps_promises(three):
    m = three.meta.url
    vid = new_video(m)
    data = blob(20)
    for u in three.urls:
        three.put(u, "f-c0", data)
        three.put(u, "f-c1", data)
    # an outside proposer's promise and acceptance on node 0, before it is killed
    b7 = {"round": 7, "proposer": "outsider.1"}
    value = {"mode": "replication", "checksum": sha(data), "size_bytes": len(data), "replicas": three.urls}
    r = httpx.post(f"{three.urls[0]}/paxos/probe/prepare", json={"epoch": 0, "ballot": b7})
    assert r.json()["ok"]
    three.put(three.urls[0], "probe", data)
    r = httpx.post(
        f"{three.urls[0]}/paxos/probe/accept",
        json={"epoch": 0, "ballot": b7, "value": value, "member": three.urls[0]},
    )
    assert r.json() == {"ok": True, "promised": b7, "reason": None}
    three.nodes[0].kill()  # kill -9
    # one acceptor of three down: 2 promises and 2 accepts still choose
    r = commit(m, "f-c0", vid, 0, data, three.urls)
    assert r.status_code == 200, r.text
    c = httpx.get(f"{m}/consensus/f-c0").json()
    assert c["phase"] == "committed"
    assert [a["reachable"] for a in c["acceptors"] if a["node_url"] == three.urls[0]] == [False]
    three.restart_node(0)
    st = httpx.get(f"{three.urls[0]}/paxos/probe").json()["instances"][0]
    assert st["promised"] == b7 and st["accepted"] == b7 and st["value"]["replicas"] == three.urls
    r = httpx.post(
        f"{three.urls[0]}/paxos/probe/prepare", json={"epoch": 0, "ballot": {"round": 6, "proposer": "z"}}
    )
    assert r.json()["ok"] is False and r.json()["promised"] == b7
    # two of three down: no quorum, a clear 503
    three.nodes[1].kill()
    three.nodes[2].kill()
    r = commit(m, "f-c1", vid, 1, data, three.urls)
    assert r.status_code == 503 and "promised" in r.json()["detail"]


def test_metadata_kill9_keeps_acknowledged_commits(three):
    m = three.meta.url
    vid = new_video(m)
    for k in range(5):
        data = blob(30 + k)
        for u in three.urls:
            three.put(u, f"k-c{k}", data)
        assert commit(m, f"k-c{k}", vid, k, data, three.urls).status_code == 200
    httpx.post(f"{m}/video/{vid}/view")
    three.meta.kill()
    three.meta.start()
    man = httpx.get(f"{m}/manifest/{vid}?status=any").json()
    assert [c["chunk_id"] for c in man["chunks"]] == [f"k-c{k}" for k in range(5)]
    assert httpx.get(f"{m}/video/{vid}/popularity").json()["view_count"] == 1
    assert httpx.get(f"{m}/consensus/k-c3").json()["phase"] == "committed"
    assert httpx.get(f"{m}/stats").json()["total_chunks"] == 5


def test_node_health_from_real_heartbeats_under_load(three):
    """Live nodes stay healthy while the service is busy; a killed node is down within the
    threshold (2.5 s here, 15 s by default)."""
    import time

    m = three.meta.url
    vid = new_video(m)
    statuses: list[dict] = []

    def hammer(n: int) -> None:
        with httpx.Client(timeout=10) as c:
            for _ in range(n):
                c.post(f"{m}/video/{vid}/view")
                c.get(f"{m}/manifest/{vid}?status=any")

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        jobs = [pool.submit(hammer, 300) for _ in range(3)]
        while not all(j.done() for j in jobs):
            statuses.append(httpx.get(f"{m}/nodes/health-summary", timeout=10).json())
            time.sleep(0.2)
        for j in jobs:
            j.result()
    assert statuses and all(s["healthy"] == 3 for s in statuses), statuses
    three.nodes[2].kill()
    killed = time.monotonic()
    while httpx.get(f"{m}/nodes/health-summary").json()["down"] == 0:
        assert time.monotonic() - killed < 10
        time.sleep(0.1)
    by_url = {n["node_url"]: n["status"] for n in httpx.get(f"{m}/nodes/all").json()["nodes"]}
    assert by_url[three.urls[2]] == "down" and by_url[three.urls[0]] == by_url[three.urls[1]] == "healthy"
