"""Adaptive redundancy and repair with real storage nodes: migration both ways (with its
dwell-time hysteresis and old copies deleted only after the new placement is committed),
and repair after a node is killed or reports a corrupt chunk."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from shoal.testing.metadata import Cluster, sha

from .conftest import blob, commit, erasure_or_skip, new_video


def manifest(m: str, vid: str) -> dict:
    return {
        c["chunk_id"]: c for c in httpx.get(f"{m}/manifest/{vid}?status=any", timeout=10).json()["chunks"]
    }


def run_pass(m: str) -> dict:
    r = httpx.post(f"{m}/maintenance/run", timeout=120)
    assert r.status_code == 200, r.text
    return r.json()


def status_of(node_url: str, stored_id: str) -> int:
    return httpx.get(f"{node_url}/chunk/{stored_id}", timeout=10).status_code


def test_migration_both_ways(tmp_path):
    erasure = erasure_or_skip()
    args = ("--maintenance-interval", "0", "--migrate-settle", "1.5", "--popularity-threshold", "2")
    with Cluster(tmp_path, nodes=5, meta_args=args) as c:
        m = c.meta.url
        vid = new_video(m)
        data = {f"mg-c{k}": blob(40 + k, 200_000) for k in range(3)}
        for k, (cid, d) in enumerate(data.items()):
            for u in c.urls[:3]:
                c.put(u, cid, d)
            assert (
                commit(m, cid, vid, k, d, c.urls[:3], start_sec=2.0 * k, duration_sec=2.0).status_code == 200
            )
        # 0 views -> erasure coding is recommended, but it must hold for 1.5 s first
        run_pass(m)
        assert {x["redundancy_mode"] for x in manifest(m, vid).values()} == {"replication"}
        time.sleep(1.6)
        counters = run_pass(m)
        assert counters["migrated"] == 3, counters
        chunks = manifest(m, vid)
        for cid, d in data.items():
            ch = chunks[cid]
            assert ch["redundancy_mode"] == "erasure_coding" and ch["epoch"] == 1
            assert len(set(ch["replicas"])) == 5
            frags = [httpx.get(f"{f['node_url']}/chunk/{f['fragment_id']}").content for f in ch["fragments"]]
            assert [sha(f) for f in frags] == [f["checksum"] for f in ch["fragments"]]
            assert erasure.decode(frags[2:]) == d  # any 3 fragments give the chunk back
            assert all(status_of(u, cid) == 404 for u in c.urls[:3])  # old replicas deleted
        c0 = httpx.get(f"{m}/consensus/mg-c0").json()
        assert c0["epoch"] == 1 and c0["phase"] == "committed"
        overhead = httpx.get(f"{m}/storage/overhead").json()
        assert overhead["erasure_coded_chunks"] == 3 and overhead["replication_chunks"] == 0
        assert 40 < overhead["storage_savings_percent"] < 45
        # popular now (3 views > 2): back to replication, again only after the dwell time
        for _ in range(3):
            httpx.post(f"{m}/video/{vid}/view")
        assert httpx.get(f"{m}/redundancy/recommend/{vid}").json()["recommended_mode"] == "replication"
        run_pass(m)
        assert {x["redundancy_mode"] for x in manifest(m, vid).values()} == {"erasure_coding"}
        time.sleep(1.6)
        run_pass(m)
        chunks = manifest(m, vid)
        for cid, d in data.items():
            ch = chunks[cid]
            assert ch["redundancy_mode"] == "replication" and ch["epoch"] == 2 and len(ch["replicas"]) == 3
            assert (ch["start_sec"], ch["duration_sec"]) == (2.0 * int(cid[-1]), 2.0)  # kept by every epoch
            assert all(httpx.get(f"{u}/chunk/{cid}").content == d for u in ch["replicas"])
            assert all(status_of(u, f"{cid}-frag-{i}") == 404 for i, u in enumerate(c.urls))
        # a manual override moves at once, and passes with nothing to do move nothing
        httpx.post(f"{m}/redundancy/override/{vid}", params={"mode": "erasure_coding"})
        run_pass(m)
        assert {x["redundancy_mode"] for x in manifest(m, vid).values()} == {"erasure_coding"}
        before = run_pass(m)["migrated"]
        assert run_pass(m)["migrated"] == before


def _corrupt_on_disk(node_dir: Path, data: bytes) -> None:
    """Flip one byte of the chunk's record in the node's superblock files."""
    for sb in sorted((node_dir / "superblocks").iterdir()):
        raw = sb.read_bytes()
        at = raw.find(data[:4096])
        if at >= 0:
            with open(sb, "r+b") as f:
                f.seek(at + 100)
                f.write(bytes([raw[at + 100] ^ 0xFF]))
            return
    raise AssertionError("chunk bytes not found on disk")


def wait_for(check, timeout: float = 40.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.25)
    raise AssertionError("condition not reached in time")


def place_replicated_and_erasure(c, erasure, vid: str, prefix: str, seed: int, size: int):
    """Commit `<prefix>-r0` (3 replicas on nodes 0-2, index 0) and `<prefix>-e0` (3+2 fragments on
    nodes 1-5, index 1); returns (replicated bytes, erasure-coded bytes, its fragments)."""
    m = c.meta.url
    rep = blob(seed, size)
    for u in c.urls[:3]:
        c.put(u, f"{prefix}-r0", rep)
    assert commit(m, f"{prefix}-r0", vid, 0, rep, c.urls[:3]).status_code == 200
    ec = blob(seed + 1, size)
    frags = erasure.encode(ec)
    meta = []
    for i, (u, f) in enumerate(zip(c.urls[1:], frags, strict=True)):
        c.put(u, f"{prefix}-e0-frag-{i}", f)
        meta.append({"fragment_index": i, "node_url": u, "size_bytes": len(f), "checksum": sha(f)})
    r = commit(
        m, f"{prefix}-e0", vid, 1, ec, c.urls[1:], redundancy_mode="erasure_coding", fragments_metadata=meta
    )
    assert r.status_code == 200, r.text
    return rep, ec, frags


def test_repair_after_node_killed_and_after_corruption(tmp_path):
    erasure = erasure_or_skip()
    args = (
        "--maintenance-interval", "0.5", "--degraded-after", "0.8", "--down-after", "1.5",
        "--repair-grace", "1", "--migrate-settle", "600",
    )  # fmt: skip
    with Cluster(tmp_path, nodes=6, meta_args=args, heartbeat=0.3) as c:
        m = c.meta.url
        vid = new_video(m)
        rep, ec, frags = place_replicated_and_erasure(c, erasure, vid, "rp", 50, 150_000)
        bad = blob(52, 150_000)
        for u in c.urls[2:5]:
            c.put(u, "rp-r1", bad)
        assert commit(m, "rp-r1", vid, 2, bad, c.urls[2:5]).status_code == 200

        dead = c.urls[1]
        c.nodes[1].kill()
        chunks = wait_for(
            lambda: (ch := manifest(m, vid)) and all(dead not in x["replicas"] for x in ch.values()) and ch
        )
        r0, e0 = chunks["rp-r0"], chunks["rp-e0"]
        assert r0["epoch"] == 1 and len(set(r0["replicas"])) == 3
        new_node = (set(r0["replicas"]) - set(c.urls[:3])).pop()
        assert httpx.get(f"{new_node}/chunk/rp-r0").content == rep
        assert e0["epoch"] == 1 and e0["replicas"][0] == c.urls[0]  # fragment 0 rebuilt on the spare node
        f0 = httpx.get(f"{c.urls[0]}/chunk/rp-e0-frag-0").content
        assert f0 == frags[0]  # byte-identical rebuild
        assert erasure.decode([f0, *frags[3:]]) == ec

        victim = c.urls[2]
        _corrupt_on_disk(c.nodes[2].data_dir, bad)
        assert httpx.get(f"{victim}/chunk/rp-r1").status_code == 500  # detected, never served
        r1 = wait_for(lambda: (x := manifest(m, vid)["rp-r1"]) and victim not in x["replicas"] and x)
        assert len(r1["replicas"]) == 3 and dead not in r1["replicas"]
        assert all(httpx.get(f"{u}/chunk/rp-r1").content == bad for u in r1["replicas"])
        wait_for(lambda: status_of(victim, "rp-r1") == 404)  # the corrupt copy is deleted
        assert httpx.get(f"{m}/maintenance").json()["repaired"] >= 3


def test_maintenance_route_shape(tmp_path):
    with Cluster(tmp_path, nodes=0) as c:
        body = httpx.get(c.meta.url + "/maintenance").json()
        assert set(body) == {
            "passes",
            "migrated",
            "repaired",
            "failed",
            "deleted_pieces",
            "collected",
            "orphans_collected",
            "orphans_waiting",
            "uploads_abandoned",
            "video_chunks_collected",
            "video_pieces_deleted",
            "skipped",
            "drained",
            "removed_nodes",
            "waiting_for_nodes",
            "leader",
            "lease",
            "last_error",
            "events",
        }
        assert set(body["lease"]) == {"holder", "expires_at", "self", "ttl_sec"}
        assert body["leader"] is False and body["lease"]["holder"] is None  # loop off: no lease held
        assert body["lease"]["ttl_sec"] == 30.0
        ran = httpx.post(c.meta.url + "/maintenance/run", timeout=30).json()
        assert ran["passes"] == 1  # a pass by hand takes the lease for the pass...
        assert ran["leader"] is False and ran["lease"]["holder"] is None  # ...and gives it back


def test_leftover_copies_on_a_node_back_from_the_dead_are_collected(tmp_path):
    """Kill a node, let repair rebuild its pieces elsewhere, restart it: the copies it still
    holds are deleted once their grace is over; committed copies and an upload in flight stay."""
    erasure = erasure_or_skip()
    args = (
        "--maintenance-interval", "0.5", "--degraded-after", "0.8", "--down-after", "1.5",
        "--repair-grace", "1", "--migrate-settle", "600", "--gc-grace", "1", "--gc-interval", "0",
    )  # fmt: skip
    with Cluster(tmp_path, nodes=6, meta_args=args, heartbeat=0.3) as c:
        m = c.meta.url
        vid = new_video(m)
        rep, ec, _ = place_replicated_and_erasure(c, erasure, vid, "gc", 60, 120_000)
        dead = c.urls[1]
        c.put(dead, "gc-upload", blob(62, 50_000))  # written by an upload that has not committed

        c.nodes[1].kill()
        wait_for(lambda: all(dead not in x["replicas"] for x in manifest(m, vid).values()))
        c.restart_node(1)
        assert status_of(dead, "gc-r0") == 200 and status_of(dead, "gc-e0-frag-0") == 200  # leftovers

        wait_for(lambda: status_of(dead, "gc-r0") == 404 and status_of(dead, "gc-e0-frag-0") == 404)
        assert status_of(dead, "gc-upload") == 200  # no committed record: never touched
        assert httpx.get(f"{m}/maintenance").json()["collected"] >= 2
        chunks = manifest(m, vid)
        assert all(httpx.get(f"{u}/chunk/gc-r0").content == rep for u in chunks["gc-r0"]["replicas"])
        got = [
            httpx.get(f"{f['node_url']}/chunk/{f['fragment_id']}").content
            for f in chunks["gc-e0"]["fragments"]
        ]
        assert [sha(g) for g in got] == [f["checksum"] for f in chunks["gc-e0"]["fragments"]]
        assert erasure.decode(got[:3]) == ec
        listing = httpx.get(f"{dead}/chunks").json()
        assert listing["chunk_ids"] == ["gc-upload"] and listing["next_after"] is None


def test_a_leftover_is_kept_while_the_committed_placement_is_not_whole(tmp_path):
    """Periodic scans delete a copy no placement names only when every committed piece is there,
    and never one of a chunk with a newer Paxos instance on that node."""
    args = (
        "--maintenance-interval", "0.3", "--migrate-settle", "600", "--gc-grace", "0.5",
        "--gc-interval", "0.5", "--repair-grace", "600",
    )  # fmt: skip
    with Cluster(tmp_path, nodes=4, meta_args=args, heartbeat=0.3) as c:
        m = c.meta.url
        vid = new_video(m)
        data = blob(70, 80_000)
        other = blob(71, 80_000)
        for u in c.urls:  # written to 4 nodes, committed on 3: the 4th copy is a leftover
            c.put(u, "gc-k0", data)
            c.put(u, "gc-p0", other)
        assert commit(m, "gc-k0", vid, 0, data, c.urls[1:]).status_code == 200
        assert commit(m, "gc-p0", vid, 1, other, c.urls[1:]).status_code == 200
        # node 0's acceptor sees a proposal for the next epoch of gc-p0 (say from another
        # metadata process): its value may name node 0's copy, which must then stay
        prep = {"epoch": 1, "ballot": {"round": 7, "proposer": "elsewhere.1"}}
        r = httpx.post(f"{c.urls[0]}/paxos/gc-p0/prepare", json=prep, timeout=10)
        assert r.status_code == 200 and r.json()["ok"], r.text
        assert httpx.delete(f"{c.urls[3]}/chunk/gc-k0").status_code == 204  # a committed replica lost
        before = httpx.get(f"{m}/maintenance").json()["passes"]
        wait_for(lambda: httpx.get(f"{m}/maintenance").json()["passes"] >= before + 8)  # >= 2 s of scans
        assert status_of(c.urls[0], "gc-k0") == 200  # possibly the copy repair will need: kept
        c.put(c.urls[3], "gc-k0", data)  # the placement is whole again
        wait_for(lambda: status_of(c.urls[0], "gc-k0") == 404)
        assert all(status_of(u, "gc-k0") == 200 for u in c.urls[1:])
        assert status_of(c.urls[0], "gc-p0") == 200  # a newer Paxos instance: kept
